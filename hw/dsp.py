"""Registered multipliers: an operand register stage, then a product register stage.

:class:`Multipliers` builds products ``p = a * b`` that appear two clock cycles after
their operand words: stage 1 registers the operand words, stage 2 the products. Where
the two stages are depends on the platform the design is elaborated for:

* Lattice ECP5 (:func:`is_ecp5`): each product is an explicit ``MULT18X18D`` whose
  input registers (``REG_INPUTA_CLK`` / ``REG_INPUTB_CLK``) are stage 1 and whose
  output register (``REG_OUTPUT_CLK``) is stage 2; its pipeline register is off, so
  the latency is still 2. (yosys ``synth_ecp5`` maps a ``$mul`` to a combinational
  ``MULT18X18D`` and leaves both register stages in the fabric, so the routing into
  and out of the DSP was the critical path. nextpnr-ecp5 picks the DSP's timing from
  its input and output register settings - ``MULT18X18D_REGS_ALL`` here, registers
  clocked by ``CLK0`` - and ignores the pipeline register.) Operands are sign- or
  zero-extended to 18 bits and multiplied as signed numbers, so a signed operand may
  have up to 18 bits and an unsigned one up to 17; a product with a wider operand is
  built as below, with its own fabric operand registers.
* Anything else (``None`` = Amaranth simulation and Verilog for Verilator, iCE40,
  Xilinx): an operand word register in the fabric and ``p <= a * b``.
* ``soft=True`` on any platform: the product in logic, for designs with more products
  than the part has DSPs (:func:`soft_stages`). No ``*`` reaches synthesis (yosys would
  map it to a DSP): stage 1 registers the sums of pairs of partial products (``b``'s bits
  ``2k`` and ``2k + 1`` gating ``a``: an AND and one short carry chain each), stage 2 the
  sum of the pairs (two adder levels for 8-bit operands); a whole 8 x 8 product in one
  cycle would be about three carry chains deep, too slow beside a DSP's registered product.

Neither variant has a clock enable, so their outputs are equal cycle for cycle, except
in the two cycles after a reset. The ECP5 registers have no reset (they hold data, which
the caller's valid pipeline qualifies): a sync reset reached every DSP through its
``RST`` pin, and routing the reset net into the DSP tiles stalled nextpnr's router1 for
minutes in some placements. The fabric registers reset to 0: without it, yosys
``synth_ice40 -dsp`` left some products of an engine in LUTs (4 of 6 SB_MAC16 instead of 6).
"""
from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Mux, Signal, signed
from amaranth.vendor import LatticePlatform

__all__ = ["Multipliers", "is_ecp5", "soft_stages"]

DSP_BITS = 18       # MULT18X18D operand width (two's complement)


def is_ecp5(platform) -> bool:
    """Whether ``platform`` is an Amaranth Lattice platform for an ECP5 part."""
    return isinstance(platform, LatticePlatform) and platform.family == "ecp5"


class _Operand:
    """An operand word entering the multipliers (see :meth:`Multipliers.operand`)."""

    def __init__(self, word):
        self._word = word

    def elem(self, index: int, bits: int, is_signed: bool) -> "_Elem":
        """Bits ``[index*bits, (index+1)*bits)`` of the word, two's complement if ``is_signed``."""
        v = self._word[index * bits:(index + 1) * bits]
        return _Elem(v.as_signed() if is_signed else v.as_unsigned())


class _Elem:
    """An element of an operand word (see :meth:`_Operand.elem`)."""

    def __init__(self, value):
        self.value = value

    def fits_dsp(self) -> bool:
        return len(self.value) + (0 if self.value.shape().signed else 1) <= DSP_BITS


class Multipliers:
    """Products of operand words, registered twice (latency 2) in domain ``domain``.

    Usage::

        mul = Multipliers(m, platform)
        w_op = mul.operand(w_word, "w_op")                 # stage 1
        x_op = mul.operand(x_word, "x_op")
        p = mul.product(w_op.elem(i, wb, True), x_op.elem(j, xb, False), signed(pw), "p_0_0")   # stage 2

    ``p`` (a ``Signal`` of ``shape``, holding the low ``shape.width`` bits of the exact
    product, i.e. Amaranth's truncating ``p.eq(a * b)``) equals the product of the
    elements that the operand words held two cycles earlier.
    """

    def __init__(self, m, platform, domain: str = "sync", soft: bool = False):
        self.m, self.domain, self.soft = m, domain, bool(soft)
        self.dsp = is_ecp5(platform) and not self.soft

    def _reg(self, value, name: str) -> Signal:
        r = Signal(value.shape(), name=name, reset_less=self.dsp)
        self.m.d[self.domain] += r.eq(value)
        return r

    def operand(self, word, name: str) -> _Operand:
        """Stage 1 for ``word``: a register named ``name`` in the fabric, or (ECP5) the
        DSPs' input registers, or (``soft``) the partial-product pair registers of
        :meth:`product`. A ``Const`` word is not registered."""
        if self.dsp or self.soft or isinstance(word, Const):
            return _Operand(word)
        return _Operand(self._reg(word, name))

    def product(self, a: _Elem, b: _Elem, shape, name: str) -> Signal:
        """Stage 2: the registered product ``a * b`` of elements of :meth:`operand` words."""
        p = Signal(shape, name=name, reset_less=self.dsp)
        if self.soft:
            self._soft_product(a.value, b.value, p, name)
            return p
        if self.dsp and a.fits_dsp() and b.fits_dsp():
            self._mult18x18d(a.value, b.value, p, name)
            return p
        av, bv = a.value, b.value
        if self.dsp:                     # operand words are not registered on ECP5: stage 1 here
            av, bv = self._reg(av, f"{name}_a"), self._reg(bv, f"{name}_b")
        self.m.d[self.domain] += p.eq(av * bv)
        return p

    def _soft_product(self, a, b, p: Signal, name: str) -> None:
        """``p <= a * b`` in logic over two register stages: ``a * b = sum_k s_k << 2k`` with
        ``s_k = a * b[2k] + (a * b[2k+1] << 1)`` (``b``'s top bit weighing ``-2^(n-1)`` when
        ``b`` is signed); stage 1 registers every ``s_k``, stage 2 their sum."""
        n, b_signed = len(b), b.shape().signed
        bits = b.as_unsigned()

        def term(i):
            t = Mux(bits[i], a, 0)
            return -t if b_signed and i == n - 1 else t
        pairs = []
        for k in range(0, n, 2):
            s = term(k) if k + 1 >= n else term(k) + (term(k + 1) << 1)
            pairs.append((self._reg(s, f"{name}_pp{k // 2}"), k))
        # pairwise two-input adds, each kept as its own wire: yosys would otherwise merge the
        # sum into one multi-input $macc and build it as a LUT carry-save tree (about twice
        # the logic of the carry chains; 195 vs ~150 LUT4 positions per 8 x 8 product)
        while len(pairs) > 1:
            nxt = []
            for i in range(0, len(pairs) - 1, 2):
                (u, ku), (v, kv) = pairs[i], pairs[i + 1]
                t = u + (v << (kv - ku))
                w = Signal(t.shape(), name=f"{name}_s{ku}_{kv}", attrs={"keep": 1})
                self.m.d.comb += w.eq(t)
                nxt.append((w, ku))
            if len(pairs) % 2:
                nxt.append(pairs[-1])
            pairs = nxt
        value, k = pairs[0]
        self.m.d[self.domain] += p.eq(value << k)

    def _mult18x18d(self, a, b, p: Signal, name: str) -> None:
        a18, b18 = Signal(signed(DSP_BITS), name=f"{name}_a18"), Signal(signed(DSP_BITS), name=f"{name}_b18")
        p36 = Signal(signed(2 * DSP_BITS), name=f"{name}_p36")
        # sign- or zero-extension by the operands' shapes; p truncates or sign-extends p36
        self.m.d.comb += [a18.eq(a), b18.eq(b), p.eq(p36)]
        ports = {**{f"i_A{k}": a18[k] for k in range(DSP_BITS)},
                 **{f"i_B{k}": b18[k] for k in range(DSP_BITS)},
                 **{f"i_C{k}": 0 for k in range(DSP_BITS)},
                 **{f"o_P{k}": p36[k] for k in range(2 * DSP_BITS)}}
        # The control pins' constants come from two LUTs of this DSP's own (placed next to it):
        # nextpnr routes a constant on these pins from one chip-wide GND / VCC LUT, and those
        # long routes into the DSP tiles (RST0 most of all) stalled router1 for minutes.
        tie0, tie1 = Signal(name=f"{name}_tie0"), Signal(name=f"{name}_tie1")
        for tie, init in ((tie0, 0x0000), (tie1, 0xFFFF)):
            self.m.submodules[tie.name] = Instance("LUT4", p_INIT=Const(init, 16), i_A=0, i_B=0, i_C=0, i_D=0,
                                                   o_Z=tie)
        self.m.submodules[f"{name}_dsp"] = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0",
            i_CLK0=ClockSignal(self.domain), i_CE0=tie1, i_RST0=tie0,
            i_SIGNEDA=tie1, i_SIGNEDB=tie1, i_SOURCEA=tie0, i_SOURCEB=tie0, **ports)


def soft_stages(products: dict, dsps: int) -> frozenset:
    """The stages to build with their products in logic (``Multipliers(soft=True)``) so that
    the rest need at most ``dsps`` DSP multipliers: ``products`` maps each stage, in stream
    order, to its products (one DSP each: the operands here are at most 9 bits signed).

    The fewest soft products that make up the excess (a subset sum), then the fewest soft
    stages, then the latest in stream order. Empty when everything fits; a negative
    ``dsps`` counts as 0."""
    names = list(products)
    excess = sum(products.values()) - max(0, int(dsps))
    if excess <= 0:
        return frozenset()
    # best[t]: (stages, -positions..) of a subset summing to exactly t; sums past the excess
    # by more than the largest stage are never the fewest
    limit = excess + max(products.values())
    best: dict[int, tuple] = {0: ()}
    for i in range(len(names) - 1, -1, -1):         # later stages first: they win ties
        n = products[names[i]]
        for t, chosen in sorted(best.items(), reverse=True):
            u = t + n
            if u <= limit and (u not in best or len(chosen) + 1 < len(best[u])):
                best[u] = chosen + (i,)
    total = min(t for t in best if t >= excess)
    return frozenset(names[i] for i in best[total])
