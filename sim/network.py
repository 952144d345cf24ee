"""Whole-network verification under cocotb + Verilator: the golden model is the oracle.

:func:`run_network` plans and builds the network engine of an artifact (or a segment),
wraps it in :class:`sim.harness.NetworkHarness`, builds it under Verilator once, runs
:mod:`sim.tb_network` and compares, element by element on integers:

* every output value of every image with the golden model (``clean`` phase, frames
  back to back: this also gives the steady-state cycles per frame and the latency);
* under random input bubbles and output back-pressure, the outputs of a subset of the
  images and every layer's output stream on the first ``tap_frames`` of them;
* after a reset in the middle of a frame, the outputs of the clean frames that follow.

It writes ``network.json`` (see :func:`run_network`) and ``outputs.npy`` (int64,
``(images, output values)``: what the RTL produced in the clean phase) into ``out``.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from artifact import check_input_array, golden, int_range
from artifact.files import atomic_save_npy, atomic_write_text

from .regress import RTL_MARKER, check_rtl_folder
from .vectors import pack_frame, unpack_beat

__all__ = ["run_network", "golden_segment", "random_images", "random_networks", "check_network", "network_line",
           "network_passed", "NETWORK_REPORT"]

NETWORK_REPORT = "network.json"
#: Probability (out of 256) of an input bubble / of output back-pressure in the stress phase.
STRESS_LEVEL = 77


def random_images(artifact, n: int, seed: int, record: dict | None = None) -> np.ndarray:
    """``n`` seeded random integer images in the range of the input record."""
    rec = record or artifact.manifest["input"]
    lo, hi = int_range(rec["bits"], rec["signed"])
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(n, *rec["shape"]), dtype=np.int64)


def random_networks(seed: int, count: int, images: int) -> list[dict]:
    """``count`` small random residual networks (:func:`artifact.synth.random_resnet`: stem,
    Tucker-2 blocks with identity and strided shortcuts, pooling, classifier) for the
    regression, each with ``images`` seeded random images."""
    from artifact.synth import random_resnet
    nets = []
    for k in range(count):
        art = random_resnet(seed + k, channels=(1, 4), height=(4, 6), width=(4, 6))
        nets.append({"name": f"network{k}", "artifact": art, "inputs": random_images(art, images, seed + k),
                     "labels": None})
    return nets


def check_network(artifact, multipliers: int | None = None, dsps: int | None = None):
    """Plan the whole network before anything is built (HwError, one line, for an op the
    hardware cannot build or a budget below one multiplier per MAC stage); return the plan."""
    from hw.engine import check_engine
    from hw.network import plan_network, select_layers
    from hw.planner import fixed_folding
    seg, _, _ = select_layers(artifact)
    plan = plan_network(artifact, seg, multipliers, dsps=dsps)
    for name, specs in plan.specs.items():      # each layer engine's geometry, without building it
        if specs:
            check_engine(specs, fixed_folding(specs, [f.key for f in plan.folds[name]]))
    return plan


def network_passed(report: dict) -> bool:
    """Every comparison made and exact, with every phase finished."""
    return not report.get("error") and report["mismatches"] == 0 and report["elements"] > 0 \
        and report.get("classes_identical", False)


def network_line(name: str, report: dict) -> str:
    """One summary line of a network report."""
    if report.get("error"):
        return f"{name}: FAIL ({report['error']})"
    acc = ""
    if "accuracy" in report:
        qat = f", QAT {100 * report['qat_accuracy']:.2f}%" if report.get("qat_accuracy") is not None else ""
        acc = (f", RTL accuracy {100 * report['accuracy']:.2f}% (integer model {100 * report['golden_accuracy']:.2f}%"
               f"{qat})")
    measured = report.get("cycles_per_frame_measured")
    return (f"{name}: {'PASS' if network_passed(report) else 'FAIL'} {report['images']} image(s), "
            f"{report['mismatches']} of {report['elements']} values differ, classes "
            f"{'identical' if report.get('classes_identical') else 'DIFFER'}{acc}; "
            f"{measured if measured is not None else '-'} cycles/frame (expected {report['cycles_per_frame_expected']}, "
            f"ideal {report['ideal_cycles_per_frame']:.0f}), {report['multipliers']} multipliers; "
            f"build {report['build_s']:.0f} s, simulation {report['sim_s']:.0f} s"
            f"{_rate(report)}")


def _rate(report: dict) -> str:
    cycles, seconds = report.get("sim_cycles"), report.get("sim_s")
    return f" ({cycles / seconds / 1000:.0f}k cycles/s)" if cycles and seconds else ""


def golden_segment(artifact, layers: list[dict], entry: str, x: np.ndarray) -> dict:
    """Every tensor of the segment (the entry's and each layer's output) for input ``x``."""
    values = {entry: np.asarray(x, dtype=np.int64)}
    for layer in layers:
        values[layer["name"]], _ = golden.run_layer(layer, [values[t] for t in layer["inputs"]], artifact.tensors)
    return values


def _frames_of(arr: np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, C) -> (N, C, H, W)."""
    return arr if arr.ndim == 4 else arr.reshape(arr.shape[0], arr.shape[1], 1, 1)


def _decode(beats: list[str], record: dict, frames: int) -> np.ndarray:
    """Hex beats (raster order, frames back to back) -> (frames, C, H, W) int64."""
    shape = record["shape"] if len(record["shape"]) == 3 else [record["shape"][0], 1, 1]
    c, h, w = shape
    vals = np.stack([unpack_beat(int(b, 16), c, record["bits"], record["signed"]) for b in beats]) \
        if beats else np.zeros((0, c), dtype=np.int64)
    return vals.reshape(frames, h, w, c).transpose(0, 3, 1, 2)


def _mismatches(got: np.ndarray, want: np.ndarray) -> int:
    if got.shape != want.shape:
        return int(want.size)
    return int((got != want).sum())


def run_network(artifact, out, *, inputs: np.ndarray | None = None, images: int = 8, seed: int = 0,
                multipliers: int | None = None, first: str | None = None, last: str | None = None,
                stress_frames: int = 8, tap_frames: int = 2, labels: np.ndarray | None = None,
                inject: str | None = None, optimise: bool = True, dsps: int | None = None,
                progress=print) -> dict:
    """Verify the network engine of ``artifact`` on ``inputs`` (or ``images`` seeded random
    images) in Verilator; write ``out/network.json`` and ``out/outputs.npy``; return the report.

    Report fields: ``images``, ``elements`` (output values compared), ``mismatches``
    (over every comparison: clean outputs, stress outputs, taps, post-reset outputs),
    ``classes_identical`` (argmax of RTL and golden outputs agree on every image),
    ``cycles_per_frame_measured`` (steady state, clean phase), ``cycles_per_frame_expected``
    (the planner's), ``ideal_cycles_per_frame`` (MACs / multipliers used), ``multipliers``,
    ``latency_cycles`` (first input beat to the last output beat of the first frame),
    ``sim_cycles`` (clock cycles the phases ran, loading and reading back not counted),
    ``outputs`` (path of the int64 ``.npy``), ``phases`` (per phase: frames, mismatches,
    bubble/stall), ``taps`` (per layer: beats and mismatches), ``accuracy`` (with
    ``labels``), ``build_s`` / ``sim_s``. ``inject="weight"`` builds the RTL from an
    artifact with one weight changed (the comparison must then fail). ``dsps``: the part's
    DSP multipliers (:func:`hw.network.plan_network`): the products beyond them are built in
    logic, as in a bitstream for that part.
    """
    from amaranth.back import verilog

    from hw.network import NetworkEngine, plan_network, rtl_name, select_layers

    from . import runner
    from .harness import NetworkHarness

    out = Path(out)
    seg, entry, entry_rec = select_layers(artifact, first, last)
    x = check_input_array({"input": entry_rec}, inputs) if inputs is not None else \
        random_images(artifact, images, seed, entry_rec)
    n = x.shape[0]
    hw_art = _inject_weight(artifact, seg, x) if inject == "weight" else artifact
    plan = plan_network(hw_art, seg, multipliers, dsps=dsps)   # the stage specs carry the weights the RTL is built from
    net = NetworkEngine(hw_art, plan, first, last)
    out_rec = seg[-1]["out"]
    beats_in = int(np.prod(entry_rec["shape"][1:])) if len(entry_rec["shape"]) == 3 else 1
    beats_out = int(np.prod(out_rec["shape"][1:])) if len(out_rec["shape"]) == 3 else 1
    taps = [(u.name, u.component.o) for u in net.units if u.name != net.output]
    tap_depth = max([tap_frames * _beats(u.layer["out"]) for u in net.units] + [1])
    probes = stream_probes(net)
    stress = min(stress_frames, n)
    harness = NetworkHarness(net, n * beats_in, n * beats_out, taps, tap_depth, probes)
    rtl = out / "rtl"
    if check_rtl_folder(rtl):           # an earlier run's RTL (never a folder this tool did not write)
        shutil.rmtree(rtl)
    rtl.mkdir(parents=True)
    (rtl / RTL_MARKER).write_text("written by sim.network; replaced on the next run\n")
    top = "elrt_network_tb"
    t0 = time.monotonic()
    text = verilog.convert(harness, name=top, emit_src=False)
    atomic_write_text(rtl / f"{top}.v", text)
    progress(f"sim network: {len(seg)} layers, {plan.multipliers} multipliers, "
             f"{plan.cycles_per_frame} cycles/frame expected; Verilator build ...")
    build_s = runner.build({"sources": [str(rtl / f"{top}.v")], "top": top}, out / "sim_build", internals=False, optimise=optimise,
                           log_file=str(out / "build.log"))
    words = [w for f in _frames_of(x) for w in pack_frame(f, entry_rec["bits"])]
    (out / "test").mkdir(exist_ok=True)
    stim = out / "test" / "stimulus.hex"
    atomic_write_text(stim, "\n".join(format(w, "x") for w in words) + "\n")
    per_frame = plan.cycles_per_frame + 20 * (beats_in + beats_out) + 2000
    phases = [{"kind": "clean", "frames": n, "probes": True, "max_cycles": 4 * (n + 2) * per_frame}]
    if stress:
        phases.append({"kind": "stress", "frames": stress, "bubble": STRESS_LEVEL, "stall": STRESS_LEVEL,
                       "taps": True, "max_cycles": 8 * (stress + 2) * per_frame})
    if n >= 3:
        phases.append({"kind": "reset", "frames": 2, "first_frame": 0, "max_cycles": 8 * 4 * per_frame})
    tb_plan = {"name": "network", "seed": seed, "stimulus": str(stim.resolve()), "beats_in": beats_in,
               "beats_out": beats_out, "phases": phases, "taps": [name for name, _ in taps],
               "probes": [name for name, _ in probes],
               "design": {"top": top}}
    t1 = time.monotonic()
    progress(f"sim network: built in {build_s:.0f} s; simulating {n} image(s) ...")
    results = runner.run_module(tb_plan, out / "sim_build", out / "test", "sim.tb_network",
                                log_file=str(out / "test" / "sim.log"))
    sim_s = time.monotonic() - t1
    want = golden_segment(artifact, seg, entry, x)
    report = _score(results, want, seg, entry, out_rec, plan, n, beats_out, tap_frames, labels)
    if labels is not None:
        report["qat_accuracy"] = artifact.manifest.get("model", {}).get("test_acc")
    report.update({"artifact": str(artifact.path) if artifact.path is not None else None,
                   "segment": [seg[0]["name"], seg[-1]["name"]], "seed": seed, "build_s": round(build_s, 1),
                   "sim_s": round(sim_s, 1), "generate_s": round(t1 - t0 - build_s, 1), "inject": inject,
                   "sim_cycles": sum(int(r.get("cycles", 0)) for r in results.values()),
                   "skip_fifos": {f"{a}[{i}]": d for (a, i), d in net.skip_depth.items()},
                   "rtl_names": {u.name: rtl_name(u.name) for u in net.units}})
    clean = results.get("clean")
    if clean is not None and not clean.get("timeout"):
        got = _decode(clean["outputs"], out_rec, n).reshape(n, -1)
        atomic_save_npy(out / "outputs.npy", got.astype(np.int64))
        report["outputs"] = str((out / "outputs.npy").resolve())
    atomic_write_text(out / NETWORK_REPORT, json.dumps(report, indent=2) + "\n")
    return report


def stream_probes(net) -> list[tuple[str, object]]:
    """Every stream of ``net`` worth counting, in stream order, as ``(name, interface)``:
    the input, each skip FIFO's input, each unit's inputs (``UNIT.PORT``, after the fork or
    skip FIFO) and output (``UNIT``), and inside a layer engine each stage's window
    (``UNIT.STAGE.window``) and output (``UNIT.STAGE``; the last stage's is ``UNIT``)."""
    from hw.engine import LayerEngine
    from hw.network import _lowering
    from hw.units import RawStreamAdapter

    probes = [("pix_in", net.pix_in)]
    for (add, k), fifo in net.skip_fifos.items():
        probes.append((f"skip:{add}[{k}]", fifo.i))
    for u in net.units:
        comp = u.component
        probes += [(f"{u.name}.{port}", getattr(comp, port)) for port in _lowering(u.layer).in_ports]
        inner = comp.inner if isinstance(comp, RawStreamAdapter) else None
        if isinstance(inner, LayerEngine):
            for i, (spec, (swg, mvu)) in enumerate(zip(inner.stages, inner.units)):
                if swg is not None:
                    probes.append((f"{u.name}.{spec.name}.window", swg.win_out))
                if i < len(inner.units) - 1:
                    probes.append((f"{u.name}.{spec.name}", mvu.pix_out))
        probes.append((u.name, comp.o))
    return probes


def stream_profile(counts: dict, window: int) -> dict:
    """Per probed stream, over ``window`` cycles (first input beat to last output beat of
    the clean phase): ``transfer`` (cycles a beat moved), ``wait`` (its producer waited on
    its consumer) and ``empty`` (no beat offered), each a fraction of the window."""
    out = {}
    for name, (fire, wait) in counts.items():
        out[name] = {"transfers": fire, "wait": round(wait / window, 4) if window else 0.0,
                     "transfer": round(fire / window, 4) if window else 0.0,
                     "empty": round(max(0, window - fire - wait) / window, 4) if window else 0.0}
    return out


def _beats(record: dict) -> int:
    return int(np.prod(record["shape"][1:])) if len(record["shape"]) == 3 else 1


def _score(results: dict, want: dict, seg, entry, out_rec, plan, n, beats_out, tap_frames, labels) -> dict:
    """Compare every recorded phase and tap with the golden tensors; the report fields."""
    final = want[seg[-1]["name"]]
    final4 = _frames_of(final)
    report = {"images": n, "elements": 0, "mismatches": 0, "phases": {}, "taps": {},
              "cycles_per_frame_expected": plan.cycles_per_frame, "ideal_cycles_per_frame": plan.ideal_cycles,
              "multipliers": plan.multipliers, "multiplier_budget": plan.budget, "bottleneck": plan.bottleneck}
    timed_out = [k for k, r in results.items() if r.get("timeout")]
    if not results or timed_out:
        report.update({"mismatches": int(final.size), "classes_identical": False,
                       "error": f"phases timed out: {timed_out}" if timed_out else "the testbench wrote no results"})
        return report
    for kind, r in results.items():
        f0, frames = r["first_frame"], r["frames"]
        got = _decode(r["outputs"], out_rec, len(r["outputs"]) // beats_out) if r["outputs"] else None
        ref = final4[f0:f0 + frames]
        bad = _mismatches(got, ref) if got is not None else int(ref.size)
        report["phases"][kind] = {"frames": frames, "first_frame": f0, "mismatches": bad, "elements": int(ref.size)}
        report["elements"] += int(ref.size)
        report["mismatches"] += bad
        if kind == "clean":
            times = r["times"]
            ends = [times[(f + 1) * beats_out - 1] for f in range(frames)] if len(times) == frames * beats_out else []
            warm = min(max(1, frames // 10), frames - 2) if frames >= 3 else 0
            if len(ends) >= 2:
                report["cycles_per_frame_measured"] = (ends[-1] - ends[warm]) / (frames - 1 - warm)
            if ends:
                report["latency_cycles"] = ends[0] - r["first_in_cycle"]
            if ends and r.get("probes"):
                report["streams"] = stream_profile(r["probes"], ends[-1] - r["first_in_cycle"])
            if got is not None and got.shape == ref.shape:
                g, w = got.reshape(frames, -1), ref.reshape(frames, -1)
                report["classes_identical"] = bool((g.argmax(1) == w.argmax(1)).all())
                if labels is not None:
                    report["accuracy"] = float((g.argmax(1) == np.asarray(labels)[:frames]).mean())
                    report["golden_accuracy"] = float((w.argmax(1) == np.asarray(labels)[:frames]).mean())
        if kind == "stress":
            for name, beats in (r.get("taps") or {}).items():
                rec = next(l for l in seg if l["name"] == name)["out"]
                tf = min(tap_frames, frames)
                ref_t = _frames_of(want[name])[f0:f0 + tf]
                got_t = _decode(beats[:tf * _beats(rec)], rec, tf) if len(beats) >= tf * _beats(rec) else None
                bad_t = _mismatches(got_t, ref_t) if got_t is not None else int(ref_t.size)
                report["taps"][name] = {"frames": tf, "mismatches": bad_t, "elements": int(ref_t.size)}
                report["elements"] += int(ref_t.size)
                report["mismatches"] += bad_t
    report.setdefault("classes_identical", False)
    return report


def _inject_weight(artifact, seg, x):
    """A copy of the artifact with one weight of the last MAC layer set to 0: of the first
    output channel's weights (at the kernel centre), the one whose product with its input
    channel is largest on these images, so the fault reaches the outputs (a fault the
    comparison must find). Zeroing never widens the accumulator bound (rule 10)."""
    from artifact import Artifact
    mac = [l for l in seg if l.get("weight") or l.get("stages")]
    if not mac:
        return artifact
    layer = mac[-1]
    stage = layer if layer.get("weight") else layer["stages"][0]
    entry = seg[0]["inputs"][0]
    values = golden_segment(artifact, seg, entry, x)
    feed = values[layer["inputs"][0]]
    tensors = dict(artifact.tensors)
    w = tensors[stage["weight"]].copy()
    centre = (w.ndim - 2) * (int(stage.get("kernel", 1)) // 2,)
    magnitude = np.abs(feed).reshape(feed.shape[0], feed.shape[1], -1).sum(axis=(0, 2))
    row = np.abs(w[(0, slice(None)) + centre].astype(np.int64))
    index = (0, int((magnitude * row).argmax())) + centre
    w[index] = 0
    tensors[stage["weight"]] = w
    return Artifact(artifact.manifest, tensors, artifact.path)
