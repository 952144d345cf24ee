"""Cycles per frame of the Tucker-2 engine vs ideal, and vs the dense engine, in Amaranth simulation.

For ResNet-20-shaped Tucker-2 layers on 8x8 inputs (random weights from
artifact.synth; the trained model's layers have the same shapes) and a set of
multiplier budgets, this builds the planner-chosen Tucker-2 engine and the dense
3x3 engine of the same layer at the same budget, streams ``--frames`` random frames
back to back through each (no bubbles, no back-pressure) and prints per layer:

* MACs per frame (Tucker-2 and dense) and the FLOPs reduction (dense / Tucker-2);
* multipliers used of the budget, planned and measured cycles per frame (steady
  state: spacing of the last beats of consecutive frames);
* utilisation = ideal / measured, ideal = total MACs / multipliers used;
* dense engine cycles per frame at the same multipliers (its budget = the
  multipliers the Tucker-2 engine uses), the speed-up (dense / Tucker-2 cycles) and
  the target 0.9 x FLOPs reduction; and, for reference, the dense engine given the
  whole nominal budget (which the Tucker-2 planner may not be able to use in full);
* whether both engines matched the golden model bit for bit; the machine.

Usage: python bench/hw_cycles.py [--budgets 64 128 256] [--frames 3] [--quick] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import amaranth  # noqa: E402

from artifact.synth import random_conv, random_tucker2  # noqa: E402
from hw.engine import build_engine  # noqa: E402
from hw.simulate import simulate_layer  # noqa: E402
from host import cpu_model  # noqa: E402  (bench/host.py)

# (label, tucker2 kwargs, extra "balanced" budgets for layers whose stage ratio 64/128/256 cannot balance)
LAYERS = [
    ("stage1 16->16 r8/8 8x8", dict(channels=16, out_channels=16, ranks=(8, 8), height=8, width=8), ()),
    ("stage2 32->32 r16/16 4x4", dict(channels=32, out_channels=32, ranks=(16, 16), height=4, width=4), ()),
    ("stage3 64->64 r32/32 2x2", dict(channels=64, out_channels=64, ranks=(32, 32), height=2, width=2), ()),
    ("down2 16->32 s2 r8/16 8x8", dict(channels=16, out_channels=32, ranks=(8, 16), height=8, width=8, stride=2),
     (68, 136)),
    ("down3 32->64 s2 r16/32 4x4", dict(channels=32, out_channels=64, ranks=(16, 32), height=4, width=4, stride=2),
     (68, 136)),
]


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, amaranth {amaranth.__version__} (pysim)")


def measure(label: str, kw: dict, budget: int, frames: int, seed: int = 0) -> dict:
    t2 = random_tucker2(seed, kernel=3, in_bits=8, weight_bits=8, act_bits=8, **kw)
    dense_kw = {k: v for k, v in kw.items() if k != "ranks"}
    dn = random_conv(seed, kernel=3, in_bits=8, weight_bits=8, act_bits=8, **dense_kw)
    t0 = time.time()
    eng = build_engine(t2, "t2", budget)
    run = simulate_layer(eng, t2, "t2", frames=frames, seed=seed)
    plan = eng.plan
    deng = build_engine(dn, "conv", plan.multipliers)           # same multipliers as the Tucker-2 engine
    drun = simulate_layer(deng, dn, "conv", frames=frames, seed=seed)
    dplan = deng.plan
    if plan.multipliers == budget:
        neng, nrun = deng, drun
    else:                                                       # dense engine with the full nominal budget
        neng = build_engine(dn, "conv", budget)
        nrun = simulate_layer(neng, dn, "conv", frames=frames, seed=seed)
    reduction = dplan.macs / plan.macs
    speedup = drun.cycles_per_frame / run.cycles_per_frame
    return {
        "layer": label, "budget": budget, "macs": plan.macs, "dense_macs": dplan.macs,
        "flops_reduction": reduction, "multipliers": plan.multipliers,
        "folding": [(f.pe, f.simd) for f in plan.stages],
        "planned_cycles": plan.cycles_per_frame, "ideal_cycles": plan.ideal_cycles,
        "measured_cycles": run.cycles_per_frame, "utilisation": plan.ideal_cycles / run.cycles_per_frame,
        "dense_multipliers": dplan.multipliers, "dense_folding": [(f.pe, f.simd) for f in dplan.stages],
        "dense_planned_cycles": dplan.cycles_per_frame, "dense_cycles": drun.cycles_per_frame,
        "speedup": speedup, "target_speedup": 0.9 * reduction,
        "dense_budget_multipliers": neng.plan.multipliers, "dense_budget_cycles": nrun.cycles_per_frame,
        "speedup_vs_dense_budget": nrun.cycles_per_frame / run.cycles_per_frame,
        "exact": run.exact and drun.exact and nrun.exact, "sim_seconds": time.time() - t0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="first layer, first budget only")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"measured in Amaranth simulation, {args.frames} frames back to back, no bubbles/back-pressure; "
          f"cycles/frame = steady-state spacing of frame ends")
    hdr = (f"{'layer':28s} {'budget':>6s} {'MACs':>7s} {'mult':>5s} {'planned':>8s} {'measured':>9s} "
           f"{'ideal':>8s} {'util':>6s} {'dense':>7s} {'d.mult':>6s} {'speedup':>8s} {'0.9xred':>8s} "
           f"{'dense@B':>8s} {'mult':>5s} {'spd@B':>6s} {'exact':>5s}")
    print(hdr)
    rows = []
    layers = LAYERS[:1] if args.quick else LAYERS
    for label, kw, extra in layers:
        budgets = args.budgets[:1] if args.quick else list(args.budgets) + list(extra)
        for budget in budgets:
            r = measure(label, kw, budget, args.frames)
            rows.append(r)
            print(f"{label:28s} {budget:6d} {r['macs']:7d} {r['multipliers']:5d} {r['planned_cycles']:8d} "
                  f"{r['measured_cycles']:9.1f} {r['ideal_cycles']:8.1f} {r['utilisation']:6.3f} "
                  f"{r['dense_cycles']:7.1f} {r['dense_multipliers']:6d} {r['speedup']:8.2f} "
                  f"{r['target_speedup']:8.2f} {r['dense_budget_cycles']:8.1f} {r['dense_budget_multipliers']:5d} "
                  f"{r['speedup_vs_dense_budget']:6.2f} {str(r['exact']):>5s}", flush=True)
    ok_util = sum(r["utilisation"] >= 0.95 for r in rows)
    ok_speed = sum(r["speedup"] >= r["target_speedup"] for r in rows)
    print(f"utilisation >= 0.95: {ok_util}/{len(rows)}; speed-up >= 0.9 x FLOPs reduction: {ok_speed}/{len(rows)}; "
          f"bit-exact: {sum(r['exact'] for r in rows)}/{len(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
