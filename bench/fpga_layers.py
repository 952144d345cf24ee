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

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifact.files import atomic_write_text  # noqa: E402

DEFAULT_ARTIFACT = ROOT / "tests" / "fixtures" / "resnet20_digits"


def _build_one(job: dict) -> dict:
    """Build one layer's board top (runs in a worker process); the report record plus wall time."""
    from deploy.fpga.build import build
    t0 = time.monotonic()
    rec = build(job["board"], job["artifact"], job["layer"], job["out"], multipliers=job["multipliers"],
                clock_mhz=job["clock_mhz"], speed=job["speed"], seed=job["seed"], log=lambda *a: None)
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    return rec


def summarise_layers(rows: list[dict], target_s: float) -> dict:
    """Counts over the per-layer rows: layers, timing met, built within ``target_s``, slowest build."""
    return {"layers": len(rows), "timing_met": sum(r["timing_met"] for r in rows),
            "within_target": sum(r["wall_s"] <= target_s for r in rows), "target_s": target_s,
            "slowest_s": max((r["wall_s"] for r in rows), default=0.0),
            "lowest_fmax_mhz": min((r["fmax_mhz"] for r in rows), default=0.0)}


def main(argv=None, build_one=_build_one) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT))
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--speed", default="8")
    ap.add_argument("--clock-mhz", type=float, default=150.0)
    ap.add_argument("--multipliers", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="builds at once (default 1)")
    ap.add_argument("--target-s", type=float, default=600.0, help="build-time target per layer (default 600 s)")
    ap.add_argument("--out", default=None, help="build folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs}: use 1 or more", file=sys.stderr)
        return 2

    from artifact import ArtifactError
    from bench.hw_cycles import trained_layers
    from deploy.fpga.boards import BoardError, get_board
    from deploy.fpga.build import machine

    try:                                            # bad input fails before any build starts
        get_board(args.board)
        layers = trained_layers(args.artifact)
    except (ArtifactError, BoardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not layers:
        print(f"error: {args.artifact} has no Tucker-2 layer to build", file=sys.stderr)
        return 2
    work = Path(args.out or tempfile.mkdtemp(prefix="elrt-bench-fpga-layers-"))
    m = machine()
    print(f"artifact: {args.artifact}; {len(layers)} Tucker-2 layer shapes")
    print(f"part: board {args.board}, speed grade {args.speed}, design clock {args.clock_mhz:g} MHz; "
          f"multiplier budget {args.multipliers}; {args.jobs} build(s) at once")
    print(f"machine: {m['host']} {m['cpu']} {m['cores']} cores, load average {os.getloadavg()[0]:.1f}")
    jobs = [dict(board=args.board, artifact=args.artifact, layer=name, out=str(work / "fpga"),
                 multipliers=args.multipliers, clock_mhz=args.clock_mhz, speed=args.speed, seed=args.seed)
            for _, _, name, _ in layers]
    if args.jobs == 1:
        recs = [build_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            recs = list(pool.map(build_one, jobs))

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
        atomic_write_text(args.json, json.dumps({"rows": rows, "summary": summary, "machine": m,
                                                 "artifact": str(args.artifact), "reports": recs},
                                                indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
