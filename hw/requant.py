"""Requantization in hardware: rounding shift (round half to even), then clamp.

Bit-exact with :func:`artifact.golden.requantize`:

* ``shift > 0``: ``floor(acc / 2**shift)`` plus one when the remainder is above one
  half, or exactly one half and the floor is odd (round half to even);
* ``shift <= 0``: ``acc << -shift`` (exact);
* then clamp to ``[lo, hi]`` (``lo == 0`` is ReLU).
"""
from __future__ import annotations

from amaranth import Module, Mux, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["round_shift_width", "round_shift", "clamp", "Requantizer"]


def round_shift_width(acc_bits: int, shift: int) -> int:
    """Signed width that holds ``round_shift(acc, shift)`` for any ``acc_bits``-bit signed acc."""
    if shift <= 0:
        return acc_bits - shift
    return max(acc_bits - shift + 1, 2)


def round_shift(m: Module, acc, shift: int, name: str = "rs"):
    """Combinational rounding shift of signed ``acc``; returns a signed Signal of
    :func:`round_shift_width` bits (exact, cannot overflow)."""
    acc_bits = len(acc)
    out = Signal(signed(round_shift_width(acc_bits, shift)), name=name)
    if shift <= 0:
        m.d.comb += out.eq(acc.as_signed() << (-shift))
        return out
    # Sign-extend so that bits [0, shift] exist even when shift >= acc_bits.
    ext = Signal(signed(max(acc_bits, shift + 1) + 1), name=f"{name}_ext")
    m.d.comb += ext.eq(acc.as_signed())
    floor = ext >> shift                                # arithmetic shift: floor division
    half = ext[shift - 1]
    below = ext[:shift - 1].any() if shift > 1 else 0   # remainder bits under the half bit
    round_up = half & (below | floor[0])
    m.d.comb += out.eq(floor + round_up)
    return out


def clamp(value, lo: int, hi: int):
    """``min(max(value, lo), hi)`` as an Amaranth expression."""
    return Mux(value < lo, lo, Mux(value > hi, hi, value))


class Requantizer(wiring.Component):
    """Pipelined requantizer for one accumulator: latency 2 cycles, one result per cycle.

    Parameters
    ----------
    acc_bits : int
        Width of the signed accumulator input.
    shift : int
        Rounding right shift (``> 0``) or left shift (``<= 0``).
    lo, hi : int
        Clamp range; must fit ``out_shape``.
    out_shape : Shape
        Output shape (``signed(bits)`` or ``unsigned(bits)``).

    Members
    -------
    acc : In(signed(acc_bits))
    out : Out(out_shape)
        ``clamp(round_shift(acc, shift), lo, hi)`` of the ``acc`` seen 2 cycles earlier.
    """

    def __init__(self, acc_bits: int, shift: int, lo: int, hi: int, out_shape: Shape):
        self.acc_bits, self.shift, self.lo, self.hi = acc_bits, shift, lo, hi
        self.out_shape = Shape.cast(out_shape)
        super().__init__({"acc": In(signed(acc_bits)), "out": Out(self.out_shape)})

    def elaborate(self, platform):
        m = Module()
        rs = round_shift(m, self.acc, self.shift)
        # data registers without reset (the caller's valid pipeline qualifies them)
        rounded = Signal.like(rs, name="rounded", reset_less=True)
        clamped = Signal(self.out_shape, name="clamped", reset_less=True)
        m.d.sync += rounded.eq(rs)                  # stage 1: rounding shift
        m.d.sync += clamped.eq(clamp(rounded, self.lo, self.hi))   # stage 2: clamp
        m.d.comb += self.out.eq(clamped)
        return m
