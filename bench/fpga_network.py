"""FPGA benchmark: a whole Tucker-2 network beside its dense twin, same part, same multipliers, placed and routed.

    python bench/fpga_network.py [--artifact DIR] [--board ulx3s-85f] [--speed 8] [--clock-mhz 150]
                                 [--multipliers N] [--seed 1] [--jobs 2] [--out DIR] [--json FILE]

Both networks are built behind the same UART board top with the open flow
(:func:`deploy.fpga.build.build`, the whole network: ``make -C hw bitstream`` without
``LAYER``): the artifact (default: the trained ResNet-20 fixture,
tests/fixtures/resnet20_digits) and its dense twin (:func:`artifact.synth.dense_twin`:
every Tucker-2 / low-rank layer a dense conv of the same records, random weights, which do
not matter for resources or timing). The Tucker-2 network is planned for ``--multipliers``
(default: the board's network budget, min(128, the part's multipliers)); the dense twin
gets the multipliers the Tucker-2 network *uses* as its budget, so both have the same
multipliers at most. Printed: LUT / FF / DSP / BRAM, Fmax, cycles per frame, frames per
second at Fmax, build time, each as dense / Tucker-2, and the frames/s ratio beside the
FLOPs reduction (the dense twin's MACs over the network's), with the machine it ran on.
``--jobs 2`` runs the two builds side by side (each is one yosys and one nextpnr process).

A design that does not fit the part is the flow's one-line error (exit 2); bad input is one
line, exit 2, before any build starts.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from artifact.cli import Parser, UsageError, fail, float_range, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402
from fpga import comparison_table, fmax_mhz  # noqa: E402  (bench/fpga.py)

DEFAULT_ARTIFACT = ROOT / "tests" / "fixtures" / "resnet20_digits"
FACTORIZED = ("tucker2", "lowrank")


def _plan(art, budget: int):
    from hw.network import plan_network, select_layers
    seg, _, _ = select_layers(art)
    return plan_network(art, seg, budget)


def main(argv=None, build=None) -> int:
    prog = "bench/fpga_network.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="the network (default: the trained fixture)")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--speed", default="8")
    ap.add_argument("--clock-mhz", type=float_range(0.0, 1000.0, lo_open=True), default=150.0,
                    help="design clock in MHz (0 < F <= 1000; default 150)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="the Tucker-2 network's budget (1..100,000; default: the board's network budget)")
    ap.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1, help="nextpnr seed (0..2**31-1)")
    ap.add_argument("--jobs", type=int_range(1, 2), default=1, help="builds side by side (1 or 2; default 1)")
    ap.add_argument("--out", default=None, help="build folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from artifact import ArtifactError, load_artifact, save_artifact
    from artifact.synth import dense_twin
    from deploy.fpga.boards import BoardError, get_board
    from deploy.fpga.build import FlowError, network_budget, check_bench_request, machine
    from hw.spec import HwError
    if build is None:
        from deploy.fpga.build import build

    made = None
    try:                                            # bad input fails before any build starts
        check_bench_request(args)
        art = load_artifact(args.artifact)
        if not any(layer["op"] in FACTORIZED for layer in art.layers()):
            raise UsageError(f"{args.artifact} has no Tucker-2 / low-rank layer: its dense twin is itself")
        board = get_board(args.board)
        budget = args.multipliers or network_budget(board.platform(args.speed), board)
        tucker_plan = _plan(art, budget)
        twin = dense_twin(art)
        dense_plan = _plan(twin, tucker_plan.multipliers)
        if args.out is None:
            work = made = Path(tempfile.mkdtemp(prefix="elrt-bench-fpga-network-"))
        else:
            work = Path(args.out)
        dense_dir = save_artifact(work / "dense_twin", twin.manifest, twin.tensors)
    except (ArtifactError, BoardError, UsageError, FlowError, HwError, OSError) as e:
        if made is not None:                        # the temporary folder this run made
            shutil.rmtree(made, ignore_errors=True)
        return fail(prog, e, getattr(e, "code", 2))
    reduction = dense_plan.macs / tucker_plan.macs
    m = machine()
    print(f"artifact: {args.artifact}; dense twin: artifact.synth.dense_twin ({reduction:.4f}x the MACs)")
    print(f"part: board {args.board}, speed grade {args.speed}, design clock {args.clock_mhz:g} MHz (PLL); "
          f"Tucker-2 budget {budget} ({tucker_plan.multipliers} used), dense budget {tucker_plan.multipliers} "
          f"({dense_plan.multipliers} used)")
    print(f"machine: {m['host']} {m['cpu']} {m['cores']} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.jobs} build(s) at a time")

    def run(name, d, multipliers):
        t0 = time.monotonic()
        rec = build(args.board, d, None, work / name, multipliers=multipliers, clock_mhz=args.clock_mhz,
                    speed=args.speed, seed=args.seed, log=lambda *a: None)
        rec["wall_s"] = round(time.monotonic() - t0, 1)
        print(f"  built {name} in {rec['wall_s']:.0f} s", flush=True)
        return rec

    jobs = {"tucker2": (args.artifact, budget), "dense": (dense_dir, tucker_plan.multipliers)}
    recs = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(run, name, d, mult) for name, (d, mult) in jobs.items()}
        for name, fut in futures.items():
            try:
                recs[name] = fut.result()
            except (FlowError, BoardError, ArtifactError, OSError) as e:   # e.g. too large for the part
                return fail(prog, f"{name} network: {e}", getattr(e, "code", 1))
    t, d = recs["tucker2"], recs["dense"]
    table = comparison_table(t, d)
    speedup = (fmax_mhz(t) / t["cycles_per_frame"]) / (fmax_mhz(d) / d["cycles_per_frame"])
    print(f"\nframes/s Tucker-2 / dense {speedup:.2f} beside the FLOPs reduction {reduction:.2f} "
          f"(cycles/frame alone: {d['cycles_per_frame'] / t['cycles_per_frame']:.2f})")
    for name, r in recs.items():
        print(f"{name}: timing at {args.clock_mhz:g} MHz {'met' if r['timing_pass'] else 'NOT met'}; "
              f"critical path from {r['critical_path'][0]['start'] if r['critical_path'] else '?'}")
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps({"table": table, "speedup_fps": speedup,
                                                     "flops_reduction": reduction, "reports": recs, "machine": m,
                                                     "artifact": str(args.artifact)}, indent=1, default=str))
        except OSError as e:
            return fail(prog, e)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
