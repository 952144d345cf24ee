"""``python -m deploy.fpga {bitstream,asic,sim,boards}`` (see docs/fpga.md)."""
from __future__ import annotations

import argparse
import sys

from .asic import add_asic_args, run_asic
from .boards import BOARDS
from .build import add_bitstream_args, run_bitstream


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def main(argv=None) -> int:
    ap = _Parser(prog="python -m deploy.fpga", description="FPGA flows for ELRT layer engines")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    add_bitstream_args(sub.add_parser("bitstream", help="board top -> bitstream + report (or a Vivado tree)"))
    add_asic_args(sub.add_parser("asic", help="generic-gate synthesis of the engine: cells and gate equivalents"))
    s = sub.add_parser("sim", help="cocotb/Verilator test of the board top's host link")
    s.add_argument("--artifact", required=True)
    s.add_argument("--layer", required=True)
    s.add_argument("--out", default="build/fpga-sim")
    s.add_argument("--frames", type=int, default=3)
    s.add_argument("--host", action="store_true")
    sub.add_parser("boards", help="list the known boards")
    a = ap.parse_args(argv)
    if a.cmd == "bitstream":
        return run_bitstream(a)
    if a.cmd == "asic":
        return run_asic(a)
    if a.cmd == "sim":
        from .simrun import main as sim_main
        return sim_main(["--artifact", a.artifact, "--layer", a.layer, "--out", a.out, "--frames", str(a.frames)]
                        + (["--host"] if a.host else []))
    for name, b in sorted(BOARDS.items()):
        print(f"{name:16s} {b.flow:9s} {b.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
