"""``python -m deploy.hls4ml``: artifact -> HLS project, C-simulation check, synthesis if a tool exists.

Exit status: 0 C simulation equals the golden model; 1 it does not (or the g++ build
failed); 2 bad input (unknown backend, layer or part, unreadable artifact, something
hls4ml cannot express exactly): one line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from artifact import ArtifactError, load_artifact
from artifact.files import atomic_write_text

from .precision import HLSConversionError

PROG = "python -m deploy.hls4ml"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Write the hls4ml (io_stream) HLS project of an artifact or of one of its "
                "layers, check its C simulation against the golden model bit for bit, and synthesise it where "
                "vivado_hls / vitis-run is installed.")
    p.add_argument("--artifact", required=True, help="artifact directory (manifest.yaml + tensors.npz)")
    p.add_argument("--layer", help="convert only this layer (default: the whole network)")
    p.add_argument("--backend", default="Vitis", help="Vitis or Vivado (default Vitis)")
    p.add_argument("--part", default="xcvu13p-flga2577-2-e", help="FPGA part (default xcvu13p-flga2577-2-e)")
    p.add_argument("--clock-ns", type=float, default=5.0, help="clock period in ns (default 5)")
    p.add_argument("--out", required=True, help="output directory of the HLS project")
    p.add_argument("--batch", type=int, default=8, help="random stimulus samples (default 8; the first two are "
                   "all-minimum and all-maximum inputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", help=".npy of integer network inputs (N, C, H, W) to use instead of random stimulus")
    p.add_argument("--reuse-factor", type=int, default=1)
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource"])
    p.add_argument("--no-build", action="store_true", help="never run synthesis, even if the HLS tool is on PATH")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .convert import BACKENDS
    from .tools import HLS_TOOLS, check_part, find_hls_tool

    backend = {b.lower(): b for b in BACKENDS}.get(args.backend.lower())
    if backend is None:
        return _fail(f"unknown backend {args.backend!r} (choose one of: {', '.join(BACKENDS)})")
    if not args.clock_ns > 0:
        return _fail(f"--clock-ns must be positive, got {args.clock_ns}")
    if args.batch < 1 or args.reuse_factor < 1:
        return _fail("--batch and --reuse-factor must be >= 1")
    try:
        part = check_part(args.part)
        artifact = load_artifact(args.artifact)
        if args.layer is not None:
            artifact.layer(args.layer)
        xs = None
        if args.inputs:
            if args.layer is not None:
                return _fail("--inputs feeds the network input; it cannot be combined with --layer")
            try:
                x = np.load(args.inputs, allow_pickle=False)
            except (OSError, ValueError) as e:
                return _fail(f"cannot read --inputs {args.inputs}: {str(e).splitlines()[0]}")
            spec = artifact.manifest["input"]
            if not np.issubdtype(x.dtype, np.integer) or tuple(x.shape[1:]) != tuple(spec["shape"]):
                return _fail(f"--inputs must be integers of shape (N, {', '.join(map(str, spec['shape']))}), "
                             f"got {x.dtype} {list(x.shape)}")
            xs = {"input": x.astype(np.int64)}
    except (ArtifactError, HLSConversionError) as e:
        return _fail(str(e))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    what = f"layer {args.layer}" if args.layer else f"network {artifact.manifest['model'].get('name', '')}".strip()
    t0 = time.time()
    from .convert import convert
    from .csim import compare, compile_model

    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(log):
        warnings.simplefilter("always")
        try:
            build = convert(artifact, out, layer=args.layer, backend=backend, part=part, clock_ns=args.clock_ns,
                            reuse_factor=args.reuse_factor, strategy=args.strategy)
        except (ArtifactError, HLSConversionError) as e:
            (out / "hls4ml.log").write_text(log.getvalue())
            return _fail(str(e))
        try:
            compile_model(build, quiet=False)
        except Exception as e:  # hls4ml raises a bare Exception when g++ fails
            (out / "hls4ml.log").write_text(log.getvalue())
            return _fail(f"C-simulation build failed: {str(e).splitlines()[0]} (g++ output in {out / 'hls4ml.log'})",
                         1)
        result = compare(build, artifact, batch=args.batch, seed=args.seed, xs=xs, compile_first=False)
    from .csim import write_tb_data

    wrote_tb = write_tb_data(build, result.inputs, result.golden)
    for w in caught:
        log.write(f"warning: {w.category.__name__}: {w.message}\n")
    (out / "hls4ml.log").write_text(log.getvalue())

    samples = result.golden.shape[0]
    print(f"hls4ml {backend} io_stream model of {what}: {len(build.model.get_layers())} hls4ml layers, "
          f"part {part}, clock {args.clock_ns:g} ns")
    line = f"C simulation vs golden model: {result.mismatches} mismatches in {result.total} values ({samples} samples)"
    if result.class_mismatches is not None:
        line += f"; classes differ in {result.class_mismatches} of {samples} samples"
    print(line + f"  [{time.time() - t0:.1f} s]")
    print(f"HLS project: {out} (top function {build.project_name}, build_prj.tcl"
          + (", tb_data/ holds this stimulus and the golden outputs)" if wrote_tb else ")"))
    report = {"backend": backend, "part": part, "clock_ns": args.clock_ns, "layer": args.layer,
              "project": str(out), "project_name": build.project_name, "samples": samples,
              "values": result.total, "mismatches": result.mismatches, "class_mismatches": result.class_mismatches,
              "output_exponent": build.output.exponent}
    atomic_write_text(out / "csim_report.json", json.dumps(report, indent=2) + "\n")

    tool = find_hls_tool(backend)
    if args.no_build:
        print("synthesis: skipped (--no-build)")
    elif tool is None:
        print(f"synthesis: skipped, {HLS_TOOLS[backend][0]} is not on PATH (hls4ml's {backend} build() needs it); "
              f"the project is complete: run the synthesis where the tool is installed")
    else:
        from .tools import synthesize

        print(f"synthesis: running hls4ml build() with {tool} ...", flush=True)
        report = synthesize(build)
        print(f"synthesis: done; report: {json.dumps(report, default=str)[:2000]}")
    return 0 if result.mismatches == 0 and not result.class_mismatches else 1
