"""``python -m sim``: the cocotb + Verilator regression of the generated engines: layer
engines and whole networks.

Examples::

    python -m sim                               # standard regression (corner + random layers, random networks)
    python -m sim --artifact runs/x/artifact    # every Tucker-2 layer of an artifact, then the whole network
    python -m sim --artifact DIR --network      # the whole network only (on RUN/test_inputs.npy if it is there)
    python -m sim --artifact DIR --network --inputs X.npy   # ... on these images
    python -m sim --artifact DIR --layer l1.t2  # one layer
    python -m sim --waves                       # also write FST waveforms (test/dump.fst per case)
    python -m sim --reduced                     # the part `make test` runs

Writes ``--out``/summary.json (default build/sim) for the layer cases and
``--out``/network/network.json for a whole network (:func:`sim.network.run_network`),
and exits 1 when a test fails. The whole network runs on ``--inputs``, else on the
``test_inputs.npy`` (and ``test_labels.npy``) of the folder that holds the artifact (a
training run's folder), else on ``--images`` seeded random images.
Bad input (no such artifact or layer, a layer that is not Tucker-2, a multiplier
budget the layer cannot use, an option out of range, an unusable ``--out``, a
missing simulator) is one line on stderr saying what to do, exit status 2, before
anything is built: every case's folding is planned first (:func:`sim.cases.check_cases`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from artifact.cli import Parser, UsageError, check_out_dir, fail, int_range

from .network import check_network, network_line, network_passed, random_networks, run_network
from .regress import check_rtl_folder, print_summary, run_cases
from .toolchain import ToolError, check_cocotb, verilator_env

DEFAULT_SEED = 20240119
PROG = "python -m sim"
MAX_SEED = 2**32 - 1
MAX_MULTIPLIERS = 100_000
MAX_RANDOM = 1000
MAX_FRAMES = 100
MAX_JOBS = 64
MAX_IMAGES = 100_000
DEFAULT_IMAGES = 8

_seed = int_range(0, MAX_SEED)


def _parser() -> Parser:
    ap = Parser(prog=PROG, description="Prove the generated RTL bit-exact against the golden model.")
    ap.add_argument("--artifact", help="verify every Tucker-2 layer of this artifact directory")
    ap.add_argument("--layer", action="append", help="only this Tucker-2 layer of --artifact (repeatable)")
    ap.add_argument("--multipliers", type=int_range(1, MAX_MULTIPLIERS), default=None,
                    help=f"multiplier budget for --artifact layers (1..{MAX_MULTIPLIERS:,}; at least one per stage)")
    ap.add_argument("--dsps", type=int_range(0, MAX_MULTIPLIERS), default=None,
                    help="whole network: the part's DSP multipliers; products beyond them are built in "
                         "logic, as in that part's bitstream (default: all DSPs)")
    ap.add_argument("--seed", type=_seed, default=None,
                    help=f"regression seed, 0..2**32-1 (default {DEFAULT_SEED} or $SEED)")
    ap.add_argument("--random", type=int_range(0, MAX_RANDOM), default=8,
                    help=f"random layer configurations besides the corners (0..{MAX_RANDOM}; default 8)")
    ap.add_argument("--reduced", action="store_true", help="the small regression that `make test` runs")
    ap.add_argument("--frames", type=int_range(1, MAX_FRAMES), default=None,
                    help=f"frames per test (1..{MAX_FRAMES}; default 3, artifact layers 2)")
    ap.add_argument("--waves", action="store_true", help="write FST waveforms (one dump.fst per case)")
    ap.add_argument("--jobs", type=int_range(1, MAX_JOBS), default=min(2, os.cpu_count() or 1),
                    help=f"cases built/run in parallel (1..{MAX_JOBS}; default min(2, CPUs))")
    ap.add_argument("--out", default="build/sim", help="output folder (default build/sim)")
    ap.add_argument("--inject", choices=["weight", "rounding"], help="inject a fault into the RTL (must FAIL)")
    ap.add_argument("--network", action="store_true", help="only the whole network (no layer cases)")
    ap.add_argument("--no-network", action="store_true", help="only the layer cases (no whole network)")
    ap.add_argument("--inputs", default=None, help="integer images (.npy, (N, *input shape)) for the whole network")
    ap.add_argument("--images", type=int_range(1, MAX_IMAGES), default=None,
                    help=f"seeded random images for the whole network when there are no inputs (1..{MAX_IMAGES}; "
                         f"default {DEFAULT_IMAGES})")
    ap.add_argument("--networks", type=int_range(0, MAX_RANDOM), default=None,
                    help="random residual networks in the regression without --artifact (default 2, --reduced 1)")
    return ap


def _resolve_seed(ap: Parser, args) -> int:
    if args.seed is not None:
        return args.seed
    env = os.environ.get("SEED") or ""
    if not env.strip():
        return DEFAULT_SEED
    try:
        return _seed(env)
    except Exception as e:             # noqa: BLE001 - argparse.ArgumentTypeError
        ap.error(f"$SEED: {e}; set SEED to an integer 0..{MAX_SEED} or pass --seed")


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    args.seed = _resolve_seed(ap, args)

    from artifact import ArtifactError

    from .cases import artifact_cases, check_cases, reduced_cases, standard_cases
    try:
        if args.layer and not args.artifact:
            raise UsageError("--layer needs --artifact DIR (or ARTIFACT=DIR with make)")
        if args.multipliers is not None and not args.artifact:
            raise UsageError("--multipliers applies to --artifact layers; the standard regression's "
                             "layers have their own budgets")
        if args.artifact is not None and not args.artifact.strip():
            raise UsageError("--artifact is empty; give an artifact directory")
        if any(not name.strip() for name in args.layer or []):
            raise UsageError("--layer is empty; give a layer name of the manifest")
        check_out_dir(args.out)
        try:
            import hw.generate  # noqa: F401
        except ImportError as e:
            raise ToolError(f"cannot import hw.generate ({e}); run from the repository root with "
                            f"`pip install -e .[hw,sim]`") from None
        if args.network and args.no_network:
            raise UsageError("--network and --no-network exclude each other")
        if (args.inputs or args.images) and (args.no_network or args.layer):
            raise UsageError("--inputs and --images are for the whole network; drop --no-network / --layer")
        if args.inputs and not args.artifact:
            raise UsageError("--inputs needs --artifact DIR: they are images for that artifact's network")
        if args.networks is not None and args.artifact:
            raise UsageError("--networks is the number of random networks of the regression without --artifact")
        networks = []
        if args.artifact:
            from artifact import load_artifact
            art = load_artifact(args.artifact)
            cases = [] if args.network else artifact_cases(art, str(Path(args.artifact).resolve()), args.seed,
                                                            args.layer, args.multipliers, frames=args.frames or 2)
            if not cases and not args.network and (args.no_network or args.layer):
                raise UsageError(f"artifact {args.artifact} has no Tucker-2 layer to verify "
                                 f"(layers: {', '.join(l['name'] for l in art.layers())})")
            check_cases(cases, art)
            if not args.no_network and not args.layer:
                networks.append(_artifact_network(art, args))
            mode = "artifact"
        else:
            cases = [] if args.network else (reduced_cases(args.seed) if args.reduced
                                              else standard_cases(args.seed, args.random))
            if args.frames:
                for c in cases:
                    c["frames"] = args.frames
            check_cases(cases)
            if not args.no_network:
                count = args.networks if args.networks is not None else (1 if args.reduced else 2)
                networks += random_networks(args.seed, count, args.images or DEFAULT_IMAGES)
            mode = "reduced" if args.reduced else "standard"
        for net in networks:
            net["plan"] = check_network(net["artifact"], args.multipliers, args.dsps)
        check_cocotb()                       # the simulator last: bad options and layers are reported first
        verilator_env()
    except (UsageError, ToolError, ArtifactError, OSError) as e:
        return fail(PROG, e)
    if args.inject:
        for c in cases:
            c["inject"] = args.inject
    passed = True
    try:
        for net in networks:                 # before anything runs: never delete what we did not write
            check_rtl_folder(Path(args.out) / net["name"] / "rtl")
        if cases:
            print(f"sim: {len(cases)} design(s), seed {args.seed}, {args.jobs} job(s), output {args.out}", flush=True)
            summary = run_cases(cases, args.out, jobs=args.jobs, waves=args.waves, seed=args.seed, mode=mode,
                                progress=lambda line: print(line, flush=True))
            print_summary(summary, Path(args.out) / "summary.json")
            passed = summary["passed"]
        for net in networks:
            report = run_network(net["artifact"], Path(args.out) / net["name"], inputs=net["inputs"],
                                 labels=net["labels"], seed=args.seed, multipliers=args.multipliers,
                                 inject="weight" if args.inject else None, dsps=args.dsps,
                                 progress=lambda line: print(line, flush=True))
            print(network_line(net["name"], report), flush=True)
            passed = passed and network_passed(report)
    except OSError as e:                      # the output folder (full disk, permissions)
        return fail(PROG, e)
    return 0 if passed else 1


def _artifact_network(art, args) -> dict:
    """The whole network of ``--artifact``, on ``--inputs``, the run folder's test images, or random images."""
    import numpy as np

    from artifact import check_input_array
    from artifact.cli import load_npy
    from .network import random_images
    inputs, labels = None, None
    run_dir = Path(args.artifact).resolve().parent
    if args.inputs:
        inputs = load_npy(args.inputs, "--inputs")
    elif (run_dir / "test_inputs.npy").is_file() and not args.images:
        inputs = load_npy(run_dir / "test_inputs.npy", "test_inputs.npy")
        if (run_dir / "test_labels.npy").is_file():
            labels = load_npy(run_dir / "test_labels.npy", "test_labels.npy")
            if labels.shape != (inputs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise UsageError(f"{run_dir / 'test_labels.npy'}: expected {inputs.shape[0]} integer labels, "
                                 f"got shape {labels.shape} dtype {labels.dtype}")
    if inputs is not None:
        inputs = check_input_array(art.manifest, inputs, "--inputs" if args.inputs else "test_inputs.npy")
    else:
        inputs = random_images(art, args.images or DEFAULT_IMAGES, args.seed)
    return {"name": "network", "artifact": art, "inputs": inputs, "labels": labels}


if __name__ == "__main__":
    sys.exit(main())
