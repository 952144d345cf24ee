"""The board top: clock (board oscillator, or an ECP5 PLL), UART pins, host link, LEDs.

:class:`BoardTop` is what ``platform.build()`` elaborates. It asks the platform for
``uart`` 0 and connects its ``rx``/``tx`` to a :class:`deploy.fpga.link.HostLink`
around the layer engine; LED 0 shows a frame in progress, LED 1 a refused frame.

Clock: by default the ``sync`` domain runs from the board's default clock. With
``clock_mhz`` on an ECP5 board an ``EHXPLLL`` makes that frequency from the board
clock (the closest the PLL can reach; see :func:`ecp5_pll_params`), held in reset
until the PLL locks, and the UART divisor follows the real frequency. That reset is
synchronised to the PLL clock and distributed on a global net (a ``DCCA``), so that its
fan-out to every flip-flop does not limit the clock.
"""
from __future__ import annotations

import math
import numbers

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from .link import DEFAULT_TIMEOUT_S, host_link_for

__all__ = ["BoardTop", "ecp5_pll_params", "check_clock_mhz"]


def ecp5_pll_params(fin_hz: float, fout_hz: float) -> dict:
    """EHXPLLL dividers for ``fout`` from ``fin`` (CLKOP feedback), as ``ecppll`` finds them:
    PFD 3.125..400 MHz, VCO 400..800 MHz, output <= 400 MHz. Returns
    ``{"clki_div", "clkfb_div", "clkop_div", "fout_hz", "fvco_hz"}``."""
    fin, want = fin_hz / 1e6, fout_hz / 1e6
    if not 3.125 <= want <= 400:
        raise ValueError(f"ECP5 PLL output {want:g} MHz is outside 3.125..400 MHz")
    best = None
    for ref in range(1, 129):
        fpfd = fin / ref
        if not 3.125 <= fpfd <= 400:
            continue
        for fb in range(1, 81):
            fout = fpfd * fb
            for op in range(1, 129):
                fvco = fout * op
                if not 400 <= fvco <= 800:
                    continue
                key = (abs(fout - want), -fvco)
                if best is None or key < best[0]:
                    best = (key, ref, fb, op, fout, fvco)
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {want:g} MHz from {fin:g} MHz")
    _, ref, fb, op, fout, fvco = best
    return {"clki_div": ref, "clkfb_div": fb, "clkop_div": op, "fout_hz": fout * 1e6, "fvco_hz": fvco * 1e6}


def check_clock_mhz(clock_mhz) -> float:
    """``clock_mhz`` as a float: a finite positive number, else ValueError (one line). A NaN
    would otherwise compare unequal to nothing and fall back to the board clock silently."""
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, numbers.Real):
        raise ValueError(f"clock {clock_mhz!r} MHz is not a number")
    f = float(clock_mhz)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"clock {clock_mhz!r} MHz must be a finite positive frequency")
    return f


class BoardTop(Elaboratable):
    """Board-level top for ``platform`` (an amaranth-boards platform instance).

    ``clock_mhz`` (None: the board clock) must be a finite positive number (ValueError
    otherwise); a clock other than the board's needs an ECP5 PLL (see :func:`ecp5_pll_params`).
    ``dsps``: the part's DSP multipliers; a whole network's products beyond them are built
    in logic (:func:`hw.network.plan_network`; None: all DSPs).
    """

    def __init__(self, platform, artifact, layer: str, *, baud: int = 115200, multipliers: int | None = None,
                 clock_mhz: float | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 min_utilisation: float | None = None, dsps: int | None = None):
        self.board_hz = float(platform.default_clk_frequency)
        self.pll = None
        family = getattr(platform, "family", None)
        if clock_mhz is not None:
            clock_mhz = check_clock_mhz(clock_mhz)
        if clock_mhz is not None and abs(clock_mhz * 1e6 - self.board_hz) > 1:
            if family != "ecp5":
                raise ValueError(f"a clock other than the board's {self.board_hz / 1e6:g} MHz needs a PLL; "
                                 f"the flow makes one for ECP5 boards only")
            self.pll = ecp5_pll_params(self.board_hz, clock_mhz * 1e6)
            self.clk_hz = self.pll["fout_hz"]
        else:
            self.clk_hz = self.board_hz
        self.link = host_link_for(artifact, layer, clk_hz=self.clk_hz, baud=baud, multipliers=multipliers,
                                  timeout_s=timeout_s, min_utilisation=min_utilisation, dsps=dsps)

    def elaborate(self, platform):
        m = Module()
        if self.pll is not None:
            m.submodules.clk_buf = clk_in = io.Buffer("i", platform.request(platform.default_clk, 0, dir="-"))
            clkop, lock = Signal(name="pll_clkop"), Signal(name="pll_lock")
            p = self.pll
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.board_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{p['fout_hz'] / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=p["clkop_div"], p_CLKOP_CPHASE=p["clkop_div"] - 1, p_CLKOP_FPHASE=0,
                p_CLKI_DIV=p["clki_div"], p_CLKFB_DIV=p["clkfb_div"], p_FEEDBK_PATH="CLKOP",
                i_CLKI=clk_in.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0,
                i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clkop, o_LOCK=lock)
            m.domains.sync = ClockDomain("sync")
            m.domains.pll = ClockDomain("pll", local=True)
            m.d.comb += [ClockSignal("sync").eq(clkop), ClockSignal("pll").eq(clkop)]
            # The reset reaches every flip-flop of the design (tens of thousands in a whole
            # network). Routed in the fabric, its spread across the die was the slowest path of
            # the build (10.5 ns for a 6.7 ns clock), so the synchronised reset enters a DCCA
            # and is distributed on a global net like the clock: one buffer, same delay
            # everywhere. The synchroniser's last stage drives the DCCA directly.
            m.submodules.rst_sync = ResetSynchronizer(~lock, domain="pll")
            m.submodules.rst_global = Instance("DCCA", i_CLKI=ResetSignal("pll"), i_CE=1,
                                               o_CLKO=ResetSignal("sync"))
            # No FREQUENCY NET for clkop: it merges with the `sync` clock net, and nextpnr derives
            # the PLL output's constraint from the FREQUENCY_PIN_* attributes above.
        m.submodules.link = link = self.link
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]
        for i, sig in enumerate((link.busy, link.error)):
            try:
                led = platform.request("led", i, dir="-")
            except Exception:            # boards without that many LEDs
                break
            m.submodules[f"led{i}_buf"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(sig)
        return m
