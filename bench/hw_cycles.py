"""Cycles per frame of the Tucker-2 engine vs ideal, and vs the dense engine, in Amaranth simulation.

By default the layers are the Tucker-2 layers of the default trained model
(``--artifact``, default tests/fixtures/resnet20_digits; layers with the same shape
and ranks, whose cycles are the same, are measured once); ``--synthetic`` uses ResNet-20-shaped random
layers with power-of-two ranks instead. For each layer and multiplier budget this
builds the planner-chosen Tucker-2 engine (``--min-utilisation``, default the
planner's: cycles within 5% of ideal) and the dense 3x3 engine of the same layer
shape (random weights, artifact.synth.random_conv), streams ``--frames`` random
frames back to back through each (no bubbles, no back-pressure) and prints per layer:

* MACs per frame (Tucker-2 and dense) and the FLOPs reduction (dense / Tucker-2);
* multipliers used of the budget, planned and measured cycles per frame (steady
  state: spacing of the last beats of consecutive frames);
* utilisation = ideal / measured, ideal = total MACs / multipliers used;
* dense engine cycles per frame at the same multipliers (its budget = the
  multipliers the Tucker-2 engine uses), the speed-up (dense / Tucker-2 cycles) and
  the target 0.9 x FLOPs reduction; and, for reference, the dense engine given the
  whole nominal budget (which a balanced Tucker-2 plan may leave partly unused);
* whether both engines matched the golden model bit for bit; the machine.

Usage: python bench/hw_cycles.py [--artifact DIR | --synthetic] [--budgets 32 64 128]
       [--min-utilisation U] [--frames 3] [--quick] [--json FILE]
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))     # bench/host.py, also when imported as bench.hw_cycles

import amaranth  # noqa: E402

from artifact import ArtifactError, load_artifact  # noqa: E402
from artifact.cli import Parser, UsageError, check_out_file, fail, int_range, unit_float  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402
from artifact.synth import random_conv, random_tucker2  # noqa: E402
from hw.engine import build_engine  # noqa: E402
from hw.simulate import simulate_layer  # noqa: E402
from host import cpu_model  # noqa: E402  (bench/host.py)

DEFAULT_ARTIFACT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "resnet20_digits"

# --synthetic: (label, random_tucker2 kwargs)
SYNTHETIC = [
    ("stage1 16->16 r8/8 8x8", dict(channels=16, out_channels=16, ranks=(8, 8), height=8, width=8)),
    ("stage2 32->32 r16/16 4x4", dict(channels=32, out_channels=32, ranks=(16, 16), height=4, width=4)),
    ("stage3 64->64 r32/32 2x2", dict(channels=64, out_channels=64, ranks=(32, 32), height=2, width=2)),
    ("down2 16->32 s2 r8/16 8x8", dict(channels=16, out_channels=32, ranks=(8, 16), height=8, width=8, stride=2)),
    ("down3 32->64 s2 r16/32 4x4", dict(channels=32, out_channels=64, ranks=(16, 32), height=4, width=4, stride=2)),
]


def trained_layers(artifact_dir) -> list[tuple[str, object, str, dict]]:
    """(label, artifact, layer name, dense conv kwargs) for the first Tucker-2 layer of each shape."""
    art = load_artifact(artifact_dir)
    out, seen = [], set()
    for layer in art.manifest["layers"]:
        if layer["op"] != "tucker2":
            continue
        (c, h, w), m = layer["in"]["shape"], layer["out"]["shape"][0]
        key = (c, h, w, m, tuple(layer["rank"]), layer["kernel"], layer["stride"], layer["padding"])
        if key in seen:
            continue
        seen.add(key)
        r1, r2 = layer["rank"]
        label = f"{layer['name']} {c}->{m} r{r1}/{r2}{' s2' if layer['stride'] == 2 else ''} {h}x{w}"
        dense = dict(channels=c, out_channels=m, height=h, width=w, kernel=layer["kernel"], stride=layer["stride"],
                     padding=layer["padding"], in_bits=layer["in"]["bits"], in_signed=layer["in"]["signed"],
                     act_bits=layer["out"]["bits"], out_signed=layer["out"]["signed"])
        out.append((label, art, layer["name"], dense))
    return out


def synthetic_layers() -> list[tuple[str, object, str, dict]]:
    out = []
    for label, kw in SYNTHETIC:
        art = random_tucker2(0, kernel=3, in_bits=8, weight_bits=8, act_bits=8, **kw)
        dense = {k: v for k, v in kw.items() if k != "ranks"} | dict(kernel=3, in_bits=8, act_bits=8)
        out.append((label, art, "t2", dense))
    return out


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, amaranth {amaranth.__version__} (pysim)")


def measure(label: str, art, layer: str, dense_kw: dict, budget: int, frames: int,
            min_utilisation: float | None = None, seed: int = 0) -> dict:
    dn = random_conv(seed, weight_bits=8, **dense_kw)
    t0 = time.time()
    eng = build_engine(art, layer, budget, min_utilisation=min_utilisation)
    run = simulate_layer(eng, art, layer, frames=frames, seed=seed)
    plan = eng.plan
    deng = build_engine(dn, "conv", plan.multipliers, min_utilisation=min_utilisation)   # same multipliers
    drun = simulate_layer(deng, dn, "conv", frames=frames, seed=seed)
    dplan = deng.plan
    if plan.multipliers == budget:
        neng, nrun = deng, drun
    else:                                                       # dense engine with the full nominal budget
        neng = build_engine(dn, "conv", budget, min_utilisation=min_utilisation)
        nrun = simulate_layer(neng, dn, "conv", frames=frames, seed=seed)
    reduction = dplan.macs / plan.macs
    speedup = drun.cycles_per_frame / run.cycles_per_frame
    return {
        "layer": label, "budget": budget, "macs": plan.macs, "dense_macs": dplan.macs,
        "flops_reduction": reduction, "multipliers": plan.multipliers,
        "folding": [f.key for f in plan.stages],
        "planned_cycles": plan.cycles_per_frame, "ideal_cycles": plan.ideal_cycles,
        "measured_cycles": run.cycles_per_frame, "utilisation": plan.ideal_cycles / run.cycles_per_frame,
        "dense_multipliers": dplan.multipliers, "dense_folding": [f.key for f in dplan.stages],
        "dense_planned_cycles": dplan.cycles_per_frame, "dense_cycles": drun.cycles_per_frame,
        "speedup": speedup, "target_speedup": 0.9 * reduction,
        "dense_budget_multipliers": neng.plan.multipliers, "dense_budget_cycles": nrun.cycles_per_frame,
        "speedup_vs_dense_budget": nrun.cycles_per_frame / run.cycles_per_frame,
        "exact": run.exact and drun.exact and nrun.exact, "sim_seconds": time.time() - t0,
    }


def main(argv=None) -> int:
    prog = "bench/hw_cycles.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="trained artifact whose Tucker-2 layers to run")
    src.add_argument("--synthetic", action="store_true", help="random ResNet-20-shaped layers instead")
    ap.add_argument("--budgets", type=int_range(1, 100_000), nargs="+", default=[32, 64, 128],
                    help="multiplier budgets (each 1..100,000; default 32 64 128)")
    ap.add_argument("--min-utilisation", type=unit_float, default=None,
                    help="planner floor, 0..1 (default: the planner's)")
    ap.add_argument("--frames", type=int_range(2, 100), default=3,
                    help="frames back to back (2..100: the steady state is measured between frames; default 3)")
    ap.add_argument("--quick", action="store_true", help="first layer, first budget only")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    try:                                            # bad input fails before any simulation
        if args.json is not None:
            if check_out_file(args.json, None, "--json").exists() and not Path(args.json).is_file():
                raise UsageError(f"--json {args.json} is not a regular file; choose another path")
        layers = synthetic_layers() if args.synthetic else trained_layers(args.artifact)
        if not layers:
            raise UsageError(f"{args.artifact} has no Tucker-2 layer to measure")
        from hw.engine import check_engine
        from hw.planner import plan_folding
        from hw.spec import layer_stages
        for _, art, layer, _ in (layers[:1] if args.quick else layers):
            stages = layer_stages(art, layer)
            for budget in (args.budgets[:1] if args.quick else args.budgets):
                check_engine(stages, plan_folding(stages, budget, min_utilisation=args.min_utilisation))
    except (UsageError, ArtifactError, OSError) as e:
        return fail(prog, e)
    print(f"machine: {machine()}")
    print(f"layers: {'synthetic (random weights)' if args.synthetic else args.artifact}; "
          f"planner min_utilisation: {'default' if args.min_utilisation is None else args.min_utilisation}")
    print(f"measured in Amaranth simulation, {args.frames} frames back to back, no bubbles/back-pressure; "
          f"cycles/frame = steady-state spacing of frame ends")
    hdr = (f"{'layer':36s} {'budget':>6s} {'MACs':>7s} {'mult':>5s} {'planned':>8s} {'measured':>9s} "
           f"{'ideal':>8s} {'util':>6s} {'dense':>7s} {'d.mult':>6s} {'speedup':>8s} {'0.9xred':>8s} "
           f"{'dense@B':>8s} {'mult':>5s} {'spd@B':>6s} {'exact':>5s}")
    print(hdr)
    rows = []
    for label, art, layer, dense_kw in (layers[:1] if args.quick else layers):
        for budget in (args.budgets[:1] if args.quick else args.budgets):
            r = measure(label, art, layer, dense_kw, budget, args.frames, args.min_utilisation)
            rows.append(r)
            print(f"{label:36s} {budget:6d} {r['macs']:7d} {r['multipliers']:5d} {r['planned_cycles']:8d} "
                  f"{r['measured_cycles']:9.1f} {r['ideal_cycles']:8.1f} {r['utilisation']:6.3f} "
                  f"{r['dense_cycles']:7.1f} {r['dense_multipliers']:6d} {r['speedup']:8.2f} "
                  f"{r['target_speedup']:8.2f} {r['dense_budget_cycles']:8.1f} {r['dense_budget_multipliers']:5d} "
                  f"{r['speedup_vs_dense_budget']:6.2f} {str(r['exact']):>5s}", flush=True)
    ok_util = sum(r["measured_cycles"] <= 1.05 * r["ideal_cycles"] for r in rows)
    ok_speed = sum(r["speedup"] >= r["target_speedup"] for r in rows)
    ok_speed_b = sum(r["speedup_vs_dense_budget"] >= r["target_speedup"] for r in rows)
    print(f"cycles within 5% of ideal: {ok_util}/{len(rows)}; speed-up >= 0.9 x FLOPs reduction at equal "
          f"multipliers: {ok_speed}/{len(rows)}, at the nominal budget: {ok_speed_b}/{len(rows)}; "
          f"bit-exact: {sum(r['exact'] for r in rows)}/{len(rows)}")
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
        except OSError as e:
            return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
