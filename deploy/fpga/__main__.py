"""``python -m deploy.fpga {bitstream,program,asic,sim,boards}`` (see docs/fpga.md).

Bad input (unknown board, no such artifact or layer, an option out of range, an
unusable ``--out``) is one line on stderr, exit status 2, before any work starts.
"""
from __future__ import annotations

import sys

from artifact.cli import Parser

from .asic import add_asic_args, run_asic
from .boards import BOARDS
from .build import add_bitstream_args, run_bitstream
from .program import add_program_args, run_program
from .simrun import add_sim_args, run_sim

PROG = "python -m deploy.fpga"


def main(argv=None) -> int:
    ap = Parser(prog=PROG, description="FPGA flows for ELRT layer engines")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    add_bitstream_args(sub.add_parser("bitstream", help="board top -> bitstream + report (or a Vivado tree)"))
    add_program_args(sub.add_parser("program", help="load a built bitstream onto its board (openFPGALoader)"))
    add_asic_args(sub.add_parser("asic", help="generic-gate synthesis of the engine: cells and gate equivalents"))
    add_sim_args(sub.add_parser("sim", help="cocotb/Verilator test of the board top's host link"))
    sub.add_parser("boards", help="list the known boards")
    a = ap.parse_args(argv)
    if a.cmd == "bitstream":
        return run_bitstream(a, f"{PROG} bitstream")
    if a.cmd == "program":
        return run_program(a, f"{PROG} program")
    if a.cmd == "asic":
        return run_asic(a, f"{PROG} asic")
    if a.cmd == "sim":
        return run_sim(a, f"{PROG} sim")
    for name, b in sorted(BOARDS.items()):
        print(f"{name:16s} {b.flow:9s} {b.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
