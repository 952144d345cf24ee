"""FPGA benchmark: the default model's largest Tucker-2 layer vs the dense engine, placed and routed.

    python bench/fpga.py [--artifact DIR] [--layer NAME] [--shape layer3|layer1] [--board ulx3s-85f]
                         [--speed 8] [--clock-mhz 150] [--multipliers 64] [--asic] [--json FILE]

Both engines (behind the same UART board top) are built for the same ECP5 part with
the open flow (:mod:`deploy.fpga.build`): LFE5U-85F speed grade 8 by default, the
design clock from a PLL at ``--clock-mhz`` so that nextpnr optimises for it. The
dense engine gets the same multiplier budget. Printed: LUT / FF / DSP / BRAM, Fmax,
cycles per frame and frames per second at Fmax for both, their ratios, build times
and the machine it ran on (``--asic`` adds the generic-gate estimate).

The artifact: the newest ``runs/*/artifact`` if there is one, else the trained default
model's fixture (tests/fixtures/resnet20_digits; its largest Tucker-2 layer by MACs is
layer1.0.conv1, 16 -> 12 -> 12 -> 16 at 8x8), else (or with ``--random``) a random Tucker-2
layer shaped like ResNet-20-on-8x8-digits' (``--shape layer3``: 64 -> 64 channels,
ranks 38 x 38, 2 x 2 image; ``--shape layer1``: 16 -> 16, ranks 9 x 9, 8 x 8). The
dense twin is a random 3 x 3 conv of the same shape and bit widths (its weights do
not matter for resources or timing).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifact.cli import Parser, UsageError, fail, float_range, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402

SHAPES = {"layer3": dict(channels=64, out_channels=64, ranks=(38, 38), height=2, width=2),
          "layer1": dict(channels=16, out_channels=16, ranks=(9, 9), height=8, width=8)}


def _artifact(args, work: Path):
    from artifact import save_artifact
    from artifact.synth import random_tucker2
    if args.artifact:
        return Path(args.artifact), args.layer, "given"
    runs = sorted(glob.glob(str(ROOT / "runs" / "*" / "artifact" / "manifest.yaml")), key=os.path.getmtime)
    if runs:
        return Path(runs[-1]).parent, args.layer, "trained (newest runs/*/artifact)"
    fixture = ROOT / "tests" / "fixtures" / "resnet20_digits"
    if (fixture / "manifest.yaml").is_file() and not args.random:
        return fixture, args.layer, "trained default model (tests/fixtures/resnet20_digits)"
    art = random_tucker2(0, name=args.shape, **SHAPES[args.shape])
    return save_artifact(work / args.shape, art.manifest, art.tensors), args.shape, \
        f"random_tucker2 shaped like ResNet-20 {args.shape} ({SHAPES[args.shape]})"


def fmax_mhz(rec: dict) -> float:
    """A build report's Fmax: the PLL's clock where there is one (the design clock)."""
    pll = [c for n, c in rec["clocks"].items() if "pll" in n]
    return (pll or list(rec["clocks"].values()))[0]["fmax_mhz"]


def comparison_table(tucker: dict, dense: dict, asic: bool = False) -> dict:
    """Print the Tucker-2 build beside the dense one (resources, Fmax, cycles, frames/s at
    Fmax, build time; the dense / Tucker-2 ratio of each) and return the table."""
    def res(r, k):
        v = r["resources"].get(k)
        return v["used"] if v else 0

    rows = [("multipliers", lambda r: r["multipliers"]), ("LUTs", lambda r: res(r, "lut")),
            ("FFs", lambda r: res(r, "ff")), ("DSP (MULT18X18D)", lambda r: res(r, "dsp")),
            ("BRAM (DP16KD)", lambda r: res(r, "bram")), ("Fmax MHz", fmax_mhz),
            ("cycles/frame", lambda r: r["cycles_per_frame"]),
            ("frames/s at Fmax", lambda r: fmax_mhz(r) * 1e6 / r["cycles_per_frame"]),
            ("build s", lambda r: r["build_s"])]
    if asic:
        rows.append(("ASIC GE", lambda r: r["asic"]["ge"]))
    print(f"\n{'':20s} {'Tucker-2':>12s} {'dense':>12s} {'dense/T2':>9s}")
    table = {}
    for label, f in rows:
        a, b = f(tucker), f(dense)
        table[label] = {"tucker2": a, "dense": b}
        ratio = f"{b / a:9.2f}" if a else "        -"
        fmt = (lambda v: f"{v:12.1f}") if isinstance(a, float) else (lambda v: f"{v:12d}" if isinstance(v, int)
                                                                     else f"{v:12.1f}")
        print(f"{label:20s} {fmt(a)} {fmt(b)} {ratio}")
    return table


def main(argv=None) -> int:
    prog = "bench/fpga.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--artifact")
    ap.add_argument("--layer")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="layer3")
    ap.add_argument("--random", action="store_true", help="use the random --shape layer even if a trained artifact exists")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--speed", default="8")
    ap.add_argument("--clock-mhz", type=float_range(0.0, 1000.0, lo_open=True), default=150.0,
                    help="design clock in MHz (0 < F <= 1000; default 150)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=64,
                    help="multiplier budget of both engines (1..100,000; default 64)")
    ap.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1, help="nextpnr seed (0..2**31-1)")
    ap.add_argument("--out", default=None, help="build folder (default: a temporary one)")
    ap.add_argument("--asic", action="store_true", help="also the yosys generic-gate estimate of both engines")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from artifact import ArtifactError, load_artifact, save_artifact
    from deploy.fpga.asic import asic_estimate, check_layer, dense_twin
    from deploy.fpga.boards import BoardError
    from deploy.fpga.build import FlowError, build, check_bench_request, default_layer, machine

    made = None
    try:                                            # bad input fails before any build starts
        check_bench_request(args)
        if args.layer is not None and not args.artifact:
            raise UsageError("--layer needs --artifact DIR")
        if args.out is None:
            work = made = Path(tempfile.mkdtemp(prefix="elrt-bench-fpga-"))
        else:
            work, made = Path(args.out), None
        art_dir, layer, origin = _artifact(args, work)
        art = load_artifact(art_dir)
        layer = layer or default_layer(art)
        if art.layer(layer)["op"] != "tucker2":
            raise UsageError(f"layer {layer!r} is {art.layer(layer)['op']}; the benchmark compares a Tucker-2 "
                             f"layer with its dense twin")
        check_layer(art, layer, args.multipliers)
        dense = dense_twin(art, layer)
        check_layer(dense, f"{layer}_dense", args.multipliers)
        dense_dir = save_artifact(work / f"{layer}_dense", dense.manifest, dense.tensors)
    except (ArtifactError, BoardError, UsageError, FlowError, OSError) as e:
        if made is not None:                        # the temporary folder this run made
            shutil.rmtree(made, ignore_errors=True)
        return fail(prog, e, getattr(e, "code", 2))
    print(f"artifact: {art_dir} ({origin}); layer {layer}")
    print(f"part: board {args.board}, speed grade {args.speed}, design clock {args.clock_mhz:g} MHz (PLL); "
          f"multiplier budget {args.multipliers}")
    m = machine()
    print(f"machine: {m['host']} {m['cpu']} {m['cores']} cores, load average {os.getloadavg()[0]:.1f}")
    recs = {}
    for name, d, l in (("tucker2", art_dir, layer), ("dense", dense_dir, f"{layer}_dense")):
        t0 = time.monotonic()
        try:
            rec = build(args.board, d, l, work / "fpga", multipliers=args.multipliers, clock_mhz=args.clock_mhz,
                        speed=args.speed, seed=args.seed, log=lambda *a: None)
            rec["wall_s"] = round(time.monotonic() - t0, 1)
            if args.asic:
                rec["asic"] = asic_estimate(d, l, work / "asic", multipliers=args.multipliers)
        except (FlowError, BoardError, ArtifactError, OSError) as e:    # e.g. too large for the part
            return fail(prog, f"{name} engine: {e}", getattr(e, "code", 1))
        except RuntimeError as e:                                        # yosys failed (--asic)
            return fail(prog, f"{name} engine: {e}", 1)
        recs[name] = rec
        print(f"  built {name} in {rec['wall_s']:.0f} s")

    table = comparison_table(recs["tucker2"], recs["dense"], asic=args.asic)
    for name, r in recs.items():
        print(f"{name}: timing at {args.clock_mhz:g} MHz {'met' if r['timing_pass'] else 'NOT met'}; "
              f"critical path from {r['critical_path'][0]['start'] if r['critical_path'] else '?'}")
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps({"table": table, "reports": recs, "machine": m,
                                                     "artifact": str(art_dir), "origin": origin}, indent=1,
                                                    default=str))
        except OSError as e:
            return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
