"""What the benchmarks ran on: printed beside every figure."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list | None:
    """The 1/5/15-minute load averages: other jobs on the machine skew wall-clock figures."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> str:
    """CPU, CPU count and operating system, one line."""
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def tool_versions(tools) -> dict:
    """Python's and the installed version of each distribution in ``tools`` (None when absent)."""
    out = {"python": platform.python_version()}
    for name in tools:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
