"""``python -m deploy.hls4ml``: artifact -> HLS project, C-simulation check, synthesis if a tool exists.

The project is built in a temporary sibling folder of ``--out`` and renamed into place
only when it is complete (C simulation run, ``csim_report.json`` written), so a failed
run never leaves a half-written project. An existing ``--out`` is replaced only when it
is empty or an hls4ml project this tool wrote (it holds this tool's ``csim_report.json``);
any other folder is refused, never deleted.

Exit status: 0 C simulation equals the golden model; 1 it does not (or the g++ build
failed: its output is kept in ``<out>.hls4ml.log``); 2 bad input (unknown backend,
layer or part, an option out of range, an unreadable artifact, a damaged or
out-of-range ``--inputs`` array, an unusable ``--out``, something hls4ml cannot
express exactly): one line on stderr, no traceback, checked before any work.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from artifact import ArtifactError, load_artifact
from artifact.cli import Parser, UsageError, check_out_dir, fail, float_range, int_range, load_npy
from artifact.files import atomic_write_text, umask_mode

from .precision import HLSConversionError

PROG = "python -m deploy.hls4ml"
REPORT = "csim_report.json"
REPORT_FORMAT = "elrt-hls4ml-report"
MAX_CLOCK_NS = 1000.0
MAX_BATCH = 10_000
MAX_REUSE = 65_536


def _parser() -> Parser:
    p = Parser(prog=PROG, description="Write the hls4ml (io_stream) HLS project of an artifact or of one of its "
               "layers, check its C simulation against the golden model bit for bit, and synthesise it where "
               "vivado_hls / vitis-run is installed.")
    p.add_argument("--artifact", required=True, help="artifact directory (manifest.yaml + tensors.npz)")
    p.add_argument("--layer", help="convert only this layer (default: the whole network)")
    p.add_argument("--backend", default="Vitis", help="Vitis or Vivado (default Vitis)")
    p.add_argument("--part", default="xcvu13p-flga2577-2-e", help="FPGA part (default xcvu13p-flga2577-2-e)")
    p.add_argument("--clock-ns", type=float_range(0.0, MAX_CLOCK_NS, lo_open=True), default=5.0,
                   help=f"clock period in ns (0 < T <= {MAX_CLOCK_NS:g}; default 5)")
    p.add_argument("--out", required=True, help="output directory of the HLS project")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=8,
                   help=f"random stimulus samples (1..{MAX_BATCH:,}; default 8; the first two are all-minimum and "
                        f"all-maximum inputs)")
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="stimulus seed (0..2**32-1; default 0)")
    p.add_argument("--inputs", help=".npy of integer network inputs (N, C, H, W) to use instead of random stimulus")
    p.add_argument("--reuse-factor", type=int_range(1, MAX_REUSE), default=1,
                   help=f"hls4ml reuse factor (1..{MAX_REUSE:,}; default 1)")
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource"])
    p.add_argument("--no-build", action="store_true", help="never run synthesis, even if the HLS tool is on PATH")
    return p


def is_project(path: Path) -> bool:
    """Whether ``path`` holds an hls4ml project written by this tool."""
    try:
        rec = json.loads((Path(path) / REPORT).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(rec, dict):
        return False
    return rec.get("format") == REPORT_FORMAT or {"backend", "project_name", "mismatches"} <= set(rec)


def check_out(path) -> Path:
    """``--out`` as an absolute path: absent, an empty folder, or a project of this tool."""
    out = check_out_dir(path)
    out = Path(os.path.abspath(out))
    if out.exists() and any(out.iterdir()) and not is_project(out):
        raise UsageError(f"--out {out} exists and is not an hls4ml project written by this tool; "
                         f"remove it or choose another folder")
    return out


def load_inputs(path, artifact) -> np.ndarray:
    """``--inputs``: an integer array checked against the artifact's input record (no pickles)."""
    from artifact.io import check_input_array
    return check_input_array(artifact.manifest, load_npy(path, "--inputs"), f"--inputs {path}")


class _Failed(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, deepest first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return missing


def _install(work: Path, out: Path) -> None:
    """Move the finished project ``work`` to ``out`` (absent, empty, or our old project)."""
    if not out.exists():
        os.rename(work, out)
        return
    if not any(out.iterdir()):             # an empty folder the user made: fill it, keep it
        for entry in work.iterdir():
            os.rename(entry, out / entry.name)
        work.rmdir()
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, aside)                  # replaces the empty `aside` folder
    try:
        os.rename(work, out)
    except OSError:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _write_config(build, work: Path, out: Path) -> None:
    """hls4ml_config.yml names the project folder: the final one, not the temporary one."""
    import yaml
    build.model.config.config["OutputDir"] = str(out)
    atomic_write_text(work / "hls4ml_config.yml", yaml.dump(build.model.config.config))


def _project(args, artifact, backend, part, xs, work: Path, out: Path):
    """Convert, compile, C-simulate in ``work``; return (build, result, wrote_tb, what)."""
    log = io.StringIO()
    what = f"layer {args.layer}" if args.layer else f"network {artifact.manifest['model'].get('name', '')}".strip()
    from .convert import convert
    from .csim import compare, compile_model, write_tb_data

    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(log):
        warnings.simplefilter("always")
        try:
            build = convert(artifact, work, layer=args.layer, backend=backend, part=part, clock_ns=args.clock_ns,
                            reuse_factor=args.reuse_factor, strategy=args.strategy)
        except (ArtifactError, HLSConversionError) as e:
            raise _Failed(str(e)) from None
        try:
            compile_model(build, quiet=False)
        except Exception as e:  # noqa: BLE001 - hls4ml raises a bare Exception when g++ fails
            saved = out.parent / f"{out.name}.hls4ml.log"
            try:
                atomic_write_text(saved, log.getvalue())
                where = f"g++ output in {saved}"
            except OSError:
                where = "g++ output could not be saved"
            raise _Failed(f"C-simulation build failed: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                          f"({where})", 1) from None
        result = compare(build, artifact, batch=args.batch, seed=args.seed, xs=xs, compile_first=False)
    wrote_tb = write_tb_data(build, result.inputs, result.golden)
    for w in caught:
        log.write(f"warning: {w.category.__name__}: {w.message}\n")
    atomic_write_text(work / "hls4ml.log", log.getvalue())
    report = {"format": REPORT_FORMAT, "version": 1, "backend": backend, "part": part, "clock_ns": args.clock_ns,
              "layer": args.layer, "project": str(out), "project_name": build.project_name,
              "samples": int(result.golden.shape[0]), "values": result.total, "mismatches": result.mismatches,
              "class_mismatches": result.class_mismatches, "output_exponent": build.output.exponent}
    _write_config(build, work, out)
    atomic_write_text(work / REPORT, json.dumps(report, indent=2) + "\n")
    return build, result, wrote_tb, what


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .convert import BACKENDS
    from .tools import HLS_TOOLS, check_part, find_hls_tool

    try:                                   # every option, path and input before any work
        backend = {b.lower(): b for b in BACKENDS}.get(args.backend.strip().lower())
        if backend is None:
            raise UsageError(f"unknown backend {args.backend!r} (choose one of: {', '.join(BACKENDS)})")
        part = check_part(args.part)
        if args.inputs is not None and args.layer is not None:
            raise UsageError("--inputs feeds the network input; it cannot be combined with --layer")
        out = check_out(args.out)
        artifact = load_artifact(args.artifact)
        if args.layer is not None:
            artifact.layer(args.layer)
        xs = {"input": load_inputs(args.inputs, artifact)} if args.inputs is not None else None
    except (UsageError, ArtifactError, HLSConversionError, OSError) as e:
        return fail(PROG, e)

    t0 = time.time()
    created, work = [], None
    try:
        created = _make_parents(out.parent)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(work, umask_mode(0o777))   # what a plain mkdir gives, not mkdtemp's 0700
        build, result, wrote_tb, what = _project(args, artifact, backend, part, xs, work, out)
        _install(work, out)
        work = None
    except (_Failed, OSError) as e:
        return fail(PROG, e, getattr(e, "code", 2))
    finally:
        if work is not None:               # the project did not complete: remove what we made
            shutil.rmtree(work, ignore_errors=True)
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
    build.output_dir = out

    samples = result.golden.shape[0]
    print(f"hls4ml {backend} io_stream model of {what}: {len(build.model.get_layers())} hls4ml layers, "
          f"part {part}, clock {args.clock_ns:g} ns")
    line = f"C simulation vs golden model: {result.mismatches} mismatches in {result.total} values ({samples} samples)"
    if result.class_mismatches is not None:
        line += f"; classes differ in {result.class_mismatches} of {samples} samples"
    print(line + f"  [{time.time() - t0:.1f} s]")
    print(f"HLS project: {out} (top function {build.project_name}, build_prj.tcl"
          + (", tb_data/ holds this stimulus and the golden outputs)" if wrote_tb else ")"))

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


if __name__ == "__main__":
    sys.exit(main())
