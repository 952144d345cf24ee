"""HLS tool detection, part-string checks and synthesis (build()) where a tool exists.

hls4ml 1.3 runs synthesis through ``vivado_hls`` (Vivado backend) and ``vitis-run``
(Vitis backend, Vitis 2024.1+; older installs ship ``vitis_hls``, which hls4ml 1.3's
build() no longer calls). C simulation needs none of them.
"""
from __future__ import annotations

import re
import shutil

from .precision import HLSConversionError

__all__ = ["HLS_TOOLS", "check_part", "find_hls_tool", "synthesize"]

# backend -> executables that hls4ml's build() runs (first one) or that indicate an install
HLS_TOOLS = {"Vivado": ("vivado_hls",), "Vitis": ("vitis-run", "vitis_hls")}

_PART = re.compile(r"^xc[a-z0-9]+(-[a-z0-9]+){0,3}$")


def check_part(part: str) -> str:
    """Return ``part`` if it is spelled like an AMD/Xilinx part (e.g. xcvu13p-flga2577-2-e, xc7z020clg400-1).

    This is a syntactic check only (no device database is available without Vivado):
    lower-case, starts with ``xc``, dash-separated alphanumeric fields, with a speed
    grade field that starts with a digit. Raises HLSConversionError otherwise.
    """
    p = str(part).strip().lower()
    fields = p.split("-")
    if not _PART.match(p) or len(fields) < 2 or not any(f[:1].isdigit() for f in fields[1:]) \
            or not re.search(r"\d", fields[0]):
        raise HLSConversionError(f"part {part!r} is not an AMD/Xilinx part name such as xcvu13p-flga2577-2-e "
                                 f"or xc7z020clg400-1")
    return p


def find_hls_tool(backend: str) -> str | None:
    """Path of the executable that hls4ml's build() needs for ``backend``, or None."""
    return shutil.which(HLS_TOOLS[backend][0])


def synthesize(build, **kwargs):
    """Run hls4ml's build() (C synthesis, no C-sim/cosim by default). Needs :func:`find_hls_tool`."""
    opts = {"csim": False, "synth": True, "cosim": False, "export": False}
    opts.update(kwargs)
    return build.model.build(**opts)
