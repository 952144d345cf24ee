"""``python -m sim``: the cocotb + Verilator regression of the generated layer engines.

Examples::

    python -m sim                               # standard regression (corner + random layers)
    python -m sim --artifact runs/x/artifact    # every Tucker-2 layer of an artifact
    python -m sim --artifact DIR --layer l1.t2  # one layer
    python -m sim --waves                       # also write FST waveforms (test/dump.fst per case)
    python -m sim --reduced                     # the part `make test` runs

Writes ``--out``/summary.json (default build/sim) and exits non-zero when a test
fails. Bad input (no such artifact or layer, a missing simulator) is one line on
stderr saying what to do, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .regress import print_summary, run_cases
from .toolchain import ToolError, check_cocotb, verilator_env

DEFAULT_SEED = 20240119


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _fail(msg: str) -> int:
    sys.stderr.write(f"python -m sim: error: {msg}\n")
    return 2


def main(argv=None) -> int:
    ap = _Parser(prog="python -m sim", description="Prove the generated RTL bit-exact against the golden model.")
    ap.add_argument("--artifact", help="verify every Tucker-2 layer of this artifact directory")
    ap.add_argument("--layer", action="append", help="only this layer of --artifact (repeatable)")
    ap.add_argument("--multipliers", type=int, default=None, help="multiplier budget for --artifact layers")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED") or DEFAULT_SEED),
                    help=f"regression seed (default {DEFAULT_SEED} or $SEED)")
    ap.add_argument("--random", type=int, default=8, help="random layer configurations besides the corners")
    ap.add_argument("--reduced", action="store_true", help="the small regression that `make test` runs")
    ap.add_argument("--frames", type=int, default=None, help="frames per test (default 3, artifact layers 2)")
    ap.add_argument("--waves", action="store_true", help="write FST waveforms (one dump.fst per case)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="cases built/run in parallel")
    ap.add_argument("--out", default="build/sim", help="output folder (default build/sim)")
    ap.add_argument("--inject", choices=["weight", "rounding"], help="inject a fault into the RTL (must FAIL)")
    args = ap.parse_args(argv)

    from .cases import artifact_cases, reduced_cases, standard_cases
    try:
        check_cocotb()
        verilator_env()
        try:
            import hw.generate  # noqa: F401
        except ImportError as e:
            raise ToolError(f"cannot import hw.generate ({e}); run from the repository root with "
                            f"`pip install -e .[hw,sim]`") from None
        if args.layer and not args.artifact:
            return _fail("--layer needs --artifact DIR (or ARTIFACT=DIR with make)")
        if args.artifact:
            from artifact import ArtifactError, load_artifact
            try:
                art = load_artifact(args.artifact)
                cases = artifact_cases(art, str(Path(args.artifact).resolve()), args.seed, args.layer,
                                       args.multipliers, frames=args.frames or 2)
            except ArtifactError as e:
                return _fail(str(e))
            if not cases:
                return _fail(f"artifact {args.artifact} has no Tucker-2 layer to verify "
                             f"(layers: {', '.join(l['name'] for l in art.layers())})")
            mode = "artifact"
        else:
            cases = reduced_cases(args.seed) if args.reduced else standard_cases(args.seed, args.random)
            if args.frames:
                for c in cases:
                    c["frames"] = args.frames
            mode = "reduced" if args.reduced else "standard"
    except ToolError as e:
        return _fail(str(e))
    if args.inject:
        for c in cases:
            c["inject"] = args.inject
    print(f"sim: {len(cases)} design(s), seed {args.seed}, {args.jobs} job(s), output {args.out}", flush=True)
    summary = run_cases(cases, args.out, jobs=args.jobs, waves=args.waves, seed=args.seed, mode=mode,
                        progress=lambda line: print(line, flush=True))
    print_summary(summary, Path(args.out) / "summary.json")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
