"""Cycles per frame of the whole-network engine in Verilator vs the planner, vs ideal, and vs a dense twin.

For the default network (``--artifact``, default tests/fixtures/resnet20_digits) at each
multiplier budget (``--budgets``, default 64 128 156) this plans the network
(:func:`hw.network.plan_network`), builds it under Verilator and streams ``--images``
seeded random images back to back through it (:func:`sim.network.run_network`: no
bubbles, no back-pressure, no stress phase; every output compared with the golden
model) and prints per budget:

* multipliers used of the budget, the planner's expected cycles per frame, the measured
  steady state (spacing of frame ends) and measured / expected;
* ideal = total MACs / multipliers used, and the expected utilisation ideal / expected;
* the bottleneck unit (the slowest unit, which sets the frame) and whether the run was
  bit-exact.

Then the dense twin (:func:`artifact.synth.dense_twin`: every Tucker-2 / low-rank layer a
dense layer of the same shape) at the same nominal budgets: its multipliers used (the
planner may use fewer than the budget, and not as many as the Tucker-2 plan), its
measured cycles per frame and the ratio dense / Tucker-2 measured cycles beside the
FLOPs reduction (dense / Tucker-2 MACs) and the target 0.9 x reduction; and, from the
planner only, the dense twin planned at the Tucker-2 plan's multipliers used as its
budget (equal multipliers).

``--plan-only`` builds and simulates nothing: planner figures only (a second or two).

Usage: python bench/network_cycles.py [--artifact DIR] [--budgets 64 128 156] [--images 4]
       [--plan-only] [--json FILE]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from artifact import ArtifactError, load_artifact  # noqa: E402
from artifact.cli import Parser, UsageError, check_out_file, fail, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402
from artifact.synth import dense_twin  # noqa: E402
from hw.network import plan_network, select_layers  # noqa: E402
from host import cpu_model, machine, tool_versions  # noqa: E402  (bench/host.py)

DEFAULT_ARTIFACT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "resnet20_digits"
DEFAULT_BUDGETS = (64, 128, 156)
#: Measured cycles within this fraction of the planner's expectation (issue 14 item 7).
MEASURED_TOLERANCE = 0.05
#: Dense / Tucker-2 cycles at least this fraction of the FLOPs reduction.
SPEEDUP_FRACTION = 0.9
TOOLS = ("amaranth", "verilator", "cocotb", "numpy")


def _plan(artifact, budget: int):
    seg, _, _ = select_layers(artifact)
    return plan_network(artifact, seg, budget)


def _measure(artifact, budget: int, images: int, work: Path) -> dict:
    """One Verilator run of the whole network: the report's figures."""
    from sim.network import network_passed, run_network
    report = run_network(artifact, work, images=images, multipliers=budget, stress_frames=0,
                         progress=lambda line: print(f"  {line}", flush=True))
    shutil.rmtree(work)             # a build is about 200 MB; only the figures are kept
    return {"measured_cycles": report.get("cycles_per_frame_measured"), "exact": network_passed(report),
            "mismatches": report["mismatches"], "elements": report["elements"], "build_s": report["build_s"],
            "sim_s": report["sim_s"], "error": report.get("error")}


def _row(plan, measured: dict | None) -> dict:
    row = {"budget": plan.budget, "multipliers": plan.multipliers, "macs": plan.macs,
           "expected_cycles": plan.cycles_per_frame, "ideal_cycles": plan.ideal_cycles,
           "utilisation": plan.utilisation, "bottleneck": plan.bottleneck}
    if measured is not None:
        row.update(measured)
        m = measured["measured_cycles"]
        row["measured_over_expected"] = m / plan.cycles_per_frame if m is not None else None
    return row


def _cycles(row: dict) -> float:
    """Measured cycles per frame where measured, else the planner's."""
    return row["measured_cycles"] if row.get("measured_cycles") is not None else row["expected_cycles"]


def _fmt(value, width: int, spec: str) -> str:
    return "-".rjust(width) if value is None else format(value, f"{width}{spec}")


def _yes(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def main(argv=None) -> int:
    prog = "bench/network_cycles.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="the network (default: the trained fixture)")
    ap.add_argument("--budgets", type=int_range(1, 100_000), nargs="+", default=list(DEFAULT_BUDGETS),
                    help="multiplier budgets (each 1..100,000, at least one per MAC stage; default 64 128 156)")
    ap.add_argument("--images", type=int_range(3, 1000), default=4,
                    help="images back to back per run (3..1000: the steady state is measured after the first "
                         "frame; default 4)")
    ap.add_argument("--plan-only", action="store_true", help="planner figures only: no Verilator build")
    ap.add_argument("--json", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    try:                                            # bad input fails before any build
        if args.json is not None:
            check_out_file(args.json, None, "--json")
        art = load_artifact(args.artifact)
        twin = dense_twin(art)
        plans = [(_plan(art, b), _plan(twin, b)) for b in args.budgets]
        equal = [_plan(twin, tucker.multipliers) for tucker, _ in plans]
        if not args.plan_only:
            from sim.toolchain import ToolError, check_cocotb, verilator_env
            try:
                verilator_env()
                check_cocotb()
            except ToolError as e:
                raise UsageError(str(e)) from None
    except (UsageError, ArtifactError, OSError) as e:
        return fail(prog, e)
    tools = tool_versions(TOOLS)
    print(f"machine: {machine()}")
    print("tools: " + ", ".join(f"{k} {v or 'absent'}" for k, v in tools.items()))
    print(f"network: {args.artifact}; dense twin: artifact.synth.dense_twin (random weights, same shapes)")
    if args.plan_only:
        print("planner figures only (--plan-only): nothing built or simulated")
    else:
        print(f"measured in Verilator: {args.images} seeded random images back to back, no bubbles/back-pressure; "
              f"cycles/frame = steady-state spacing of frame ends")
    rows, dense_rows = [], []
    with tempfile.TemporaryDirectory(prefix="network_cycles-") as tmp:
        for k, ((tucker, dense), same) in enumerate(zip(plans, equal)):
            runs = (None, None) if args.plan_only else \
                (_measure(art, tucker.budget, args.images, Path(tmp) / f"tucker2-{k}"),
                 _measure(twin, dense.budget, args.images, Path(tmp) / f"dense-{k}"))
            row, drow = _row(tucker, runs[0]), _row(dense, runs[1])
            reduction = dense.macs / tucker.macs
            drow.update({"flops_reduction": reduction, "target_speedup": SPEEDUP_FRACTION * reduction,
                         "speedup": _cycles(drow) / _cycles(row),
                         "equal_multipliers": {"budget": same.budget, "multipliers": same.multipliers,
                                               "expected_cycles": same.cycles_per_frame,
                                               "speedup_expected": same.cycles_per_frame / tucker.cycles_per_frame}})
            rows.append(row)
            dense_rows.append(drow)
    print()
    print("Tucker-2 network")
    print(f"{'budget':>6s} {'used':>5s} {'expected':>9s} {'measured':>9s} {'meas/exp':>8s} {'ideal':>8s} "
          f"{'util':>5s} {'exact':>5s}  bottleneck")
    for r in rows:
        print(f"{r['budget']:6d} {r['multipliers']:5d} {r['expected_cycles']:9d} {_fmt(r.get('measured_cycles'), 9, '.1f')} "
              f"{_fmt(r.get('measured_over_expected'), 8, '.3f')} {r['ideal_cycles']:8.0f} {r['utilisation']:5.2f} "
              f"{_yes(r.get('exact')):>5s}  {r['bottleneck']}")
    print()
    print("dense twin at the same nominal budget (used: its own multipliers), and planned at the Tucker-2 "
          "plan's multipliers used")
    print(f"{'budget':>6s} {'used':>5s} {'expected':>9s} {'measured':>9s} {'exact':>5s} {'dense/T2':>8s} "
          f"{'FLOPs red':>9s} {'0.9xred':>7s} {'met':>4s} | {'budget':>6s} {'used':>5s} {'expected':>9s} "
          f"{'dense/T2':>8s}")
    for d in dense_rows:
        e = d["equal_multipliers"]
        print(f"{d['budget']:6d} {d['multipliers']:5d} {d['expected_cycles']:9d} {_fmt(d.get('measured_cycles'), 9, '.1f')} "
              f"{_yes(d.get('exact')):>5s} {d['speedup']:8.3f} {d['flops_reduction']:9.4f} "
              f"{d['target_speedup']:7.3f} {_yes(d['speedup'] >= d['target_speedup']):>4s} | "
              f"{e['budget']:6d} {e['multipliers']:5d} {e['expected_cycles']:9d} {e['speedup_expected']:8.3f}")
    basis = "expected (planner)" if args.plan_only else "measured"
    print(f"dense/T2: dense cycles / Tucker-2 cycles, {basis}; the equal-multiplier column is the planner's")
    if not args.plan_only:
        within = sum(r["measured_cycles"] is not None
                     and abs(r["measured_over_expected"] - 1) <= MEASURED_TOLERANCE for r in rows + dense_rows)
        print(f"measured within {100 * MEASURED_TOLERANCE:.0f}% of expected: {within}/{len(rows) + len(dense_rows)}; "
              f"bit-exact: {sum(r['exact'] for r in rows + dense_rows)}/{len(rows) + len(dense_rows)}")
    if args.json:
        report = {"machine": machine(), "cpu": cpu_model(), "cpus": os.cpu_count(), "tools": tools,
                  "artifact": str(args.artifact), "images": None if args.plan_only else args.images,
                  "plan_only": args.plan_only, "rows": rows, "dense_rows": dense_rows}
        try:
            atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        except OSError as e:
            return fail(prog, e)
    if not args.plan_only and not all(r["exact"] for r in rows + dense_rows):
        print("FAIL: a run was not bit-exact against the golden model (its figures are not trustworthy)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
