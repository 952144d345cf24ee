"""Load a bitstream that ``python -m deploy.fpga bitstream`` built onto its board, with openFPGALoader.

Command line (also ``make -C hw program BOARD=... [LAYER=...]``)::

    python -m deploy.fpga program --board NAME [--bitstream FILE | --out build/fpga [--layer NAME]] [--flash]

The bitstream is ``OUT/<board>/network/top.bit`` (``top.bin`` on iCE40), or the layer's
folder with ``--layer``, or ``--bitstream FILE``. openFPGALoader (Debian: ``apt install
openfpgaloader``) loads it into the FPGA's SRAM (``--flash``: into the board's flash).
Exit status 0 loaded, 1 openFPGALoader failed, 2 bad input: an unknown board, no such
bitstream, or openFPGALoader not installed (one line saying how to install it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from artifact.cli import UsageError, fail

from .boards import BoardError, board_names, get_board

__all__ = ["bitstream_path", "loader_command", "add_program_args", "run_program"]

LOADER = "openFPGALoader"


def bitstream_path(board_name: str, out="build/fpga", layer: str | None = None, bitstream=None) -> Path:
    """The bitstream to load (UsageError, one line, when there is none)."""
    board = get_board(board_name)
    if bitstream is not None:
        path = Path(bitstream)
    else:
        name = "top.bin" if board.flow == "icestorm" else "top.bit"
        path = Path(out) / board.name / (layer or "network") / name
    if not path.is_file():
        raise UsageError(f"no bitstream at {path}; build it first: make -C hw bitstream BOARD={board.name} "
                         f"ARTIFACT=DIR" + (f" LAYER={layer}" if layer else ""))
    return path


def loader_command(board_name: str, path: Path, flash: bool = False) -> list[str]:
    """The openFPGALoader command line; UsageError when it is not installed."""
    board = get_board(board_name)
    exe = shutil.which(os.environ.get("OPENFPGALOADER", LOADER))
    if exe is None:
        raise UsageError(f"{LOADER} is not installed: `apt install openfpgaloader` (Debian/Ubuntu) or see "
                         f"https://github.com/trabucayre/openFPGALoader; the bitstream is {path}")
    return [exe, "-b", board.loader, *(["-f"] if flash else []), str(path)]


def add_program_args(ap) -> None:
    ap.add_argument("--board", required=True, help=f"one of {', '.join(board_names())}")
    ap.add_argument("--bitstream", default=None, help="the bitstream file (default: the one `bitstream` built)")
    ap.add_argument("--out", default="build/fpga", help="the bitstream tool's output folder (default build/fpga)")
    ap.add_argument("--layer", default=None, help="the layer's bitstream (default: the whole network's)")
    ap.add_argument("--flash", action="store_true", help="write the board's flash instead of the FPGA's SRAM")


def run_program(a, prog: str = "python -m deploy.fpga program") -> int:
    try:
        path = bitstream_path(a.board, a.out, a.layer, a.bitstream)
        cmd = loader_command(a.board, path, a.flash)
    except (UsageError, BoardError) as e:
        return fail(prog, e)
    print(" ".join(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        return fail(prog, f"{LOADER} exited {r.returncode} (is the board plugged in, and may you open its USB "
                          f"device?)", 1)
    return 0
