"""FPGA build of every Tucker-2 layer of a model: Fmax, resources and build time per layer.

    python bench/fpga_layers.py [--artifact DIR] [--board ulx3s-85f] [--speed 8] [--clock-mhz 150]
                                [--multipliers 64] [--jobs 1] [--target-s 600] [--out DIR] [--json FILE]

Builds the UART board top (:mod:`deploy.fpga.build`, the open yosys / nextpnr flow) for
the first Tucker-2 layer of each shape of the artifact (default: the trained default
model, tests/fixtures/resnet20_digits; layers of the same shape and ranks give the same
engine and are built once) and prints, per layer, the multipliers used, cycles/frame,
LUT / FF / DSP / BRAM, Fmax against the design clock and the build's wall time, then
how many layers meet the clock and build within ``--target-s`` seconds (the issue's
10 minutes). ``--jobs 2`` runs two builds at once (the yowasp tools are single-threaded);
the load average is printed with the machine, since it moves the wall times.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifact.cli import Parser, UsageError, fail, float_range, int_range, unit_float  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402

DEFAULT_ARTIFACT = ROOT / "tests" / "fixtures" / "resnet20_digits"


def _build_one(job: dict) -> dict:
    """Build one layer's board top (runs in a worker process); the report record plus wall time."""
    from deploy.fpga.build import build
    t0 = time.monotonic()
    rec = build(job["board"], job["artifact"], job["layer"], job["out"], multipliers=job["multipliers"],
                clock_mhz=job["clock_mhz"], speed=job["speed"], seed=job["seed"],
                min_utilisation=job.get("min_utilisation"), log=lambda *a: None)
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    return rec


def summarise_layers(rows: list[dict], target_s: float) -> dict:
    """Counts over the per-layer rows: layers, timing met, built within ``target_s``, slowest build."""
    return {"layers": len(rows), "timing_met": sum(r["timing_met"] for r in rows),
            "within_target": sum(r["wall_s"] <= target_s for r in rows), "target_s": target_s,
            "slowest_s": max((r["wall_s"] for r in rows), default=0.0),
            "lowest_fmax_mhz": min((r["fmax_mhz"] for r in rows), default=0.0)}


def main(argv=None, build_one=_build_one) -> int:
    prog = "bench/fpga_layers.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT))
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--speed", default="8")
    ap.add_argument("--clock-mhz", type=float_range(0.0, 1000.0, lo_open=True), default=150.0,
                    help="design clock in MHz (0 < F <= 1000; default 150)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=64,
                    help="multiplier budget (1..100,000; default 64)")
    ap.add_argument("--min-utilisation", type=unit_float, default=None, help="planner floor, 0..1")
    ap.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1, help="nextpnr seed (0..2**31-1)")
    ap.add_argument("--jobs", type=int_range(1, 64), default=1, help="builds at once (1..64; default 1)")
    ap.add_argument("--target-s", type=float_range(0.0, 86_400.0, lo_open=True), default=600.0,
                    help="build-time target per layer in seconds (0 < T <= 86400; default 600)")
    ap.add_argument("--out", default=None, help="build folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from artifact import ArtifactError
    from bench.hw_cycles import trained_layers
    from deploy.fpga.boards import BoardError
    from deploy.fpga.build import check_bench_request, machine

    try:                                            # bad input fails before any build starts
        check_bench_request(args)
        layers = trained_layers(args.artifact)
        if not layers:
            raise UsageError(f"{args.artifact} has no Tucker-2 layer to build")
        from deploy.fpga.asic import check_layer
        for _, art, name, _ in layers:
            check_layer(art, name, args.multipliers)
    except (ArtifactError, BoardError, UsageError, OSError) as e:
        return fail(prog, e)
    work = Path(args.out or tempfile.mkdtemp(prefix="elrt-bench-fpga-layers-"))
    m = machine()
    print(f"artifact: {args.artifact}; {len(layers)} Tucker-2 layer shapes")
    print(f"part: board {args.board}, speed grade {args.speed}, design clock {args.clock_mhz:g} MHz; "
          f"multiplier budget {args.multipliers}; {args.jobs} build(s) at once")
    print(f"machine: {m['host']} {m['cpu']} {m['cores']} cores, load average {os.getloadavg()[0]:.1f}")
    jobs = [dict(board=args.board, artifact=args.artifact, layer=name, out=str(work / "fpga"),
                 multipliers=args.multipliers, clock_mhz=args.clock_mhz, speed=args.speed, seed=args.seed,
                 min_utilisation=args.min_utilisation)
            for _, _, name, _ in layers]
    from deploy.fpga.build import FlowError
    try:
        if args.jobs == 1:
            recs = [build_one(j) for j in jobs]
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                recs = list(pool.map(build_one, jobs))
    except (FlowError, BoardError, ArtifactError, OSError) as e:    # e.g. a layer too large for the part
        return fail(prog, e, getattr(e, "code", 1))

    rows = []
    print(f"\n{'layer':38s} {'mult':>4s} {'cyc/frame':>9s} {'LUT':>6s} {'FF':>6s} {'DSP':>4s} {'BRAM':>4s} "
          f"{'Fmax MHz':>8s} {'met':>4s} {'build s':>7s}")
    for (label, _, name, _), rec in zip(layers, recs):
        fmax, met = rec["fmax_mhz"], bool(rec["timing_pass"])
        used = {k: (rec["resources"].get(k) or {}).get("used", 0) for k in ("lut", "ff", "dsp", "bram")}
        row = dict(label=label, layer=name, multipliers=rec["multipliers"], cycles_per_frame=rec["cycles_per_frame"],
                   fmax_mhz=fmax, timing_met=met, wall_s=rec["wall_s"], **used)
        rows.append(row)
        print(f"{label:38s} {row['multipliers']:4d} {row['cycles_per_frame']:9d} {used['lut']:6d} {used['ff']:6d} "
              f"{used['dsp']:4d} {used['bram']:4d} {fmax:8.1f} {'yes' if met else 'no':>4s} {row['wall_s']:7.0f}")
    summary = summarise_layers(rows, args.target_s)
    print(f"\ntiming met at {args.clock_mhz:g} MHz: {summary['timing_met']}/{summary['layers']} "
          f"(lowest Fmax {summary['lowest_fmax_mhz']:.1f} MHz); built within {args.target_s:g} s: "
          f"{summary['within_target']}/{summary['layers']} (slowest {summary['slowest_s']:.0f} s)")
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps({"rows": rows, "summary": summary, "machine": m,
                                                     "artifact": str(args.artifact), "reports": recs},
                                                    indent=1, default=str))
        except OSError as e:
            return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
