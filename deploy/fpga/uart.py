"""A minimal 8N1 UART (Amaranth 0.5): receiver and transmitter with a fixed clock divisor.

* :class:`UARTRx` samples the (two-flop synchronised) line in the middle of each bit;
  a byte whose stop bit is low is dropped and flagged on ``frame_err`` (one cycle).
  The receiver cannot be back-pressured: ``valid`` is a one-cycle strobe.
* :class:`UARTTx` takes bytes from a ``lib.stream`` sink (``ready`` while idle).

``divisor`` is clock cycles per bit (``round(clk_hz / baud)``, at least 4).
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]


def uart_divisor(clk_hz: float, baud: int, tolerance: float = 0.02) -> int:
    """Clock cycles per bit; ValueError (one line) if the baud rate is unreachable."""
    if baud <= 0:
        raise ValueError(f"baud rate must be positive, got {baud}")
    div = int(round(clk_hz / baud))
    if div < 4:
        raise ValueError(f"baud rate {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
                         f"(needs at least 4 clock cycles per bit)")
    err = abs(clk_hz / div - baud) / baud
    if err > tolerance:
        raise ValueError(f"baud rate {baud} is off by {100 * err:.1f}% with a {clk_hz / 1e6:g} MHz clock "
                         f"(divisor {div}); pick a rate within {100 * tolerance:g}%")
    return div


class UARTRx(wiring.Component):
    """8N1 receiver. Members: ``rx`` In(1); ``data`` Out(8), ``valid`` Out(1) (strobe),
    ``frame_err`` Out(1) (strobe)."""

    def __init__(self, divisor: int):
        self.divisor = int(divisor)
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1), "frame_err": Out(1)})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        count = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)
        tick = count == 0
        m.d.sync += [self.valid.eq(0), self.frame_err.eq(0)]
        with m.If(~tick):
            m.d.sync += count.eq(count - 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += count.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(tick):
                    with m.If(~rx):
                        m.d.sync += [count.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
                    with m.Else():                      # a glitch, not a start bit
                        m.next = "IDLE"
            with m.State("DATA"):
                with m.If(tick):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), count.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(tick):
                    with m.If(rx):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.frame_err.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):                     # wait for the line to go idle again
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter. Members: ``i`` In(stream of 8-bit bytes); ``tx`` Out(1, idle high);
    ``busy`` Out(1)."""

    def __init__(self, divisor: int):
        self.divisor = int(divisor)
        super().__init__({"i": In(stream.Signature(unsigned(8))), "tx": Out(1, init=1), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.divisor))
        bits = Signal(range(11))
        shreg = Signal(10, init=0x3FF)
        m.d.comb += [self.i.ready.eq(bits == 0), self.busy.eq(bits != 0), self.tx.eq(shreg[0])]
        with m.If(bits == 0):
            with m.If(self.i.valid):
                m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))), bits.eq(10),
                             count.eq(self.divisor - 1)]
        with m.Else():
            with m.If(count == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), bits.eq(bits - 1), count.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += count.eq(count - 1)
        return m
