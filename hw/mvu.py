"""Folded matrix-vector unit (MVU): one stage of a layer, weights in on-chip ROM.

For each input vector ``x`` (``in_elems`` elements) the unit computes, for every
output channel ``m``::

    y[m] = requant(bias[m] + sum_j W[m, j] * x[j])

with ``PE`` output channels and ``SIMD`` input elements in parallel: ``PE * SIMD``
multipliers, ``NF = ceil(out_ch / PE)`` neuron folds and ``SF = ceil(in_elems / SIMD)``
synapse folds, so one vector takes ``NF * SF`` cycles (one issue per cycle, no bubbles
between vectors). ``PE`` and ``SIMD`` need not divide: the weight matrix is padded
with zero rows and columns to ``NF * PE`` x ``SF * SIMD`` and the input vector with
zero elements, and the padded output channels are dropped (a partial last fold).

Input, two forms (fold ``sf`` uses vector elements ``[sf*SIMD, (sf+1)*SIMD)``):

* ``window=False`` (a plain 1x1 stage): ``vec_in`` carries the whole vector (a pixel),
  held by its source; the unit slices fold ``sf`` out of it with a two-level
  multiplexer (cycle 1: a register per group of ``X_GROUP`` folds; cycle 2: the group).
* ``window=True`` (behind a :class:`hw.swg.SlidingWindowGenerator` built with the same
  ``simd``): ``vec_in`` carries window tokens and ``win`` is the
  generator's read port: ``win.step`` is high in every cycle that issues a fold, and the
  generator delivers the fold's word on ``win.data`` ``WINDOW_READ_LATENCY`` (3) cycles
  later, in the cycle where the other form has its slice register. The window is never
  copied into the unit.

*Flat fold* (``flat=True``, behind a window generator, ``PE = 1``): the ``SIMD``
multipliers take ``SIMD`` consecutive weights of the row-major flattened
``out_ch x in_elems`` matrix per cycle, so a vector takes ``ceil(out_ch * in_elems / SIMD)``
cycles (:func:`flat_words`) instead of ``NF * SF``, with no padding between rows. The
generator reads the window end to end ``out_ch`` times (its ``elements``), so a word holds
the end of one output's row and the start of the next one's. With ``SIMD <= in_elems`` a
word touches at most two outputs: each ROM word carries, beside its weights, a lane mask
(the lanes of the word's first output) and an *emit* bit (that output ends in this word).
Two adder trees sum the masked lanes (``lo``) and the others (``hi``); on an emit the
output is ``acc + lo`` and the accumulator restarts at the next output's bias plus ``hi``,
else it adds ``lo``. One requantizer; the output buffer collects ``out_ch`` groups of one
channel.

Pipeline (every path registered): issue (weight ROM read) -> two ROM output registers
(the block RAM's clock-to-out leaves room for a short route only), the input word in
step with the second -> operand registers (so the block-RAM read, the routes to the
multipliers and the multiplier each get a whole cycle) -> multiply (registered
products; on ECP5 the operand and product registers are a MULT18X18D's own, see
:mod:`hw.dsp`) -> adder tree (a register after the first level, then every
``TREE_LEVELS`` levels) -> accumulate (with bias on the first fold) -> requantize
(2 stages: rounding shift, clamp) -> output buffer: the ``NF`` groups of ``PE`` results
collected into one output pixel (a FIFO of pixels for ``NF = 1``).

Flow control: the unit *reads its input in place*: it keeps ``vec_in.ready`` low
while it works through the vector's folds and raises it in the cycle of the last
fold (so the source must hold ``payload`` stable while ``valid`` is high, as
stream sources must; a window generator keeps the window until that transfer).
``vec_in.ready`` is a register: it does not follow ``valid``. It only starts a vector
when the output FIFO is sure to have room for it (credit counter; a pop reaches the
counter :data:`CREDIT_RETURN_CYCLES` later), so the pipeline itself never stalls; within
a vector it issues a fold every cycle.

Reset: only the control (fold counters, credits, the valid pipeline) is reset; the data
registers (ROM outputs, input slices, adder tree, accumulators, requantizer, collect;
on ECP5 also the products, see :mod:`hw.dsp`) are not, as their contents only count
where a valid flag says so. This keeps the reset net's fan-out to the control flip-flops.
"""
from __future__ import annotations

import math

import numpy as np

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dsp import Multipliers, is_ecp5
from .requant import Requantizer
from .spec import HwError, StageSpec
from .swg import window_read_signature
from .units import RegisteredBlockFIFO, credited_fifo

__all__ = ["MatrixVectorUnit", "accumulate_cycle", "mvu_latency", "default_fifo_depth", "refill_cycles", "flat_words", "to_twos"]

TREE_LEVELS = 2     # adder-tree levels between pipeline registers (after the first level)
#: On ECP5 a weight or bias ROM of at least this many bits is a block RAM (yosys alone keeps
#: ROMs under 2 Kbit in LUTs: 2**(address bits - 4) LUT4 per output bit, 128 for a 144 x 8
#: ROM, where one DP16KD of the 208 would do).
ROM_BLOCK_MIN_BITS = 1024
#: Rows of a folded block ROM (:meth:`MatrixVectorUnit._weight_rom`): an ECP5 DP16KD is
#: 1K words deep at its widest true-dual-port width (18 bits). A power of two, so that a
#: word's row and slice are bit fields of its address.
ROM_ROWS = 1024
#: The output buffer's group FIFO (:meth:`MatrixVectorUnit._group_buffer`) is a block RAM
#: beyond this many groups: in LUT RAM it would take 6 LUT4 positions per 4 bits of each
#: 16-group range and a multiplexer between the ranges, more than a block FIFO's control.
GROUPS_BLOCK_MIN_WORDS = 64
X_GROUP = 8         # input slices per group of the two-level input-slice multiplexer


def to_twos(value: int, bits: int) -> int:
    """``value`` as a ``bits``-wide two's-complement bit pattern (a non-negative int)."""
    return int(value) & ((1 << bits) - 1)


def _tree_regs(simd: int, levels: int = TREE_LEVELS) -> int:
    """Register stages inside the adder tree: after its first level, then every ``levels``
    levels (the last group feeds the accumulator directly)."""
    depth = math.ceil(math.log2(simd)) if simd > 1 else 0
    return 0 if depth < 2 else (depth - 2) // levels + 1


def _rom_fold(words: int, block: bool) -> tuple[int, int]:
    """``(words per row, rows)`` of a weight ROM of ``words`` words: a block ROM deeper than
    ROM_ROWS is folded to ROM_ROWS rows (:meth:`MatrixVectorUnit._weight_rom`)."""
    return (-(-words // ROM_ROWS), ROM_ROWS) if block and words > ROM_ROWS else (1, words)


def accumulate_cycle(simd: int) -> int:
    """The cycle after a fold's issue in which the accumulator adds its products: ROM data /
    input slice groups or window read (1), ROM output / input word registers (2), operand
    registers (1), the multiply's register (1, on ECP5 the MULT18X18D's), then the adder
    tree's registers."""
    return 1 + 2 + 1 + 1 + _tree_regs(simd)


def mvu_latency(simd: int, requant: bool = True) -> int:
    """Cycles from issuing a vector's last fold to its output pixel entering the FIFO: the
    accumulator's cycle, the accumulator (1), the requantizer (2)."""
    return accumulate_cycle(simd) + 1 + (2 if requant else 0)


def flat_words(out_ch: int, in_elems: int, simd: int) -> int:
    """Cycles per vector of a flat fold: ``ceil(out_ch * in_elems / simd)`` words."""
    return -(-out_ch * in_elems // simd)


def refill_cycles(nf: int, hold_buffer: bool) -> int:
    """Cycles an MVU's output register stays empty after a pixel leaves, when the next
    pixel's groups are all made: ``NF - 1`` without the hold buffer, else none."""
    return 0 if hold_buffer or nf == 1 else nf - 1


#: Registers on the way of an output pop back to the credit counter.
CREDIT_RETURN_CYCLES = 2


def default_fifo_depth(cycles_per_vector: int, simd: int, requant: bool = True) -> int:
    """Output FIFO depth that lets the credit counter run the unit without bubbles: the
    vectors in flight over the credit loop (pipeline, credit register, returned pops)."""
    loop = mvu_latency(simd, requant) + 4 + CREDIT_RETURN_CYCLES
    return max(4, math.ceil(loop / cycles_per_vector) + 3)


class MatrixVectorUnit(wiring.Component):
    """Folded matrix-vector unit for one stage.

    Parameters
    ----------
    spec : StageSpec
        The stage (weights in vector order, bias, widths, requant).
    pe : int
        Output channels in parallel, ``1 <= pe <= spec.out_ch`` (need not divide it).
    simd : int
        Input elements in parallel, ``1 <= simd <= spec.in_elems`` (need not divide it).
    fifo_depth : int or None
        Output FIFO depth (pixels); default :func:`default_fifo_depth`.
    window : bool
        Read the vectors from a window generator's read port instead of ``vec_in``'s payload.
    hold_buffer : bool
        With ``NF > 1``: a second pixel register in the output buffer, so that the next
        pixel is ready when one leaves (see :meth:`_group_buffer`); without it a consumer
        that holds the pixel while it reads it waits :func:`refill_cycles` per pixel.
    flat : bool
        Fold the weight matrix flat (see the module doc): needs ``window`` and ``pe == 1``,
        and a generator built with ``elements = out_ch * in_elems``. Then ``nf`` is
        ``out_ch`` (output groups of one channel) and ``sf`` the words per vector.
    soft : bool
        Build the products in logic instead of DSPs (:class:`hw.dsp.Multipliers`; the same
        latency and values), for a network with more multipliers than the part has DSPs.

    Members
    -------
    vec_in : In(stream.Signature(unsigned(spec.in_elems * spec.in_bits))), or (``window``) unsigned(1)
        One input vector per beat; element ``j`` at bits ``[j*in_bits, (j+1)*in_bits)``,
        two's complement if ``spec.in_signed``. With ``window``: one window token per vector
        (its payload, the generator's last-window flag, is not used).
    win : Out(hw.swg.window_read_signature(simd * spec.in_bits)), only with ``window``
        ``step`` out (a fold is issued), ``data`` in (that fold's ``SIMD`` elements, 3 cycles later).
    pix_out : Out(stream.Signature(unsigned(spec.out_ch * spec.out_bits)))
        One output pixel per beat; channel ``m`` at bits ``[m*out_bits, (m+1)*out_bits)``.
    """

    def __init__(self, spec: StageSpec, pe: int, simd: int, fifo_depth: int | None = None, *, window: bool = False,
                 hold_buffer: bool = True, flat: bool = False, soft: bool = False):
        if flat and not (window and pe == 1):
            raise HwError(f"stage {spec.name!r}: a flat fold reads a window generator with PE=1 (got PE={pe}"
                          f"{'' if window else ', no window'})")
        if not 1 <= pe <= spec.out_ch:
            raise HwError(f"stage {spec.name!r}: PE={pe} must be between 1 and the {spec.out_ch} out channels")
        if not 1 <= simd <= spec.in_elems:
            raise HwError(f"stage {spec.name!r}: SIMD={simd} must be between 1 and the {spec.in_elems} in elements")
        self.spec, self.pe, self.simd, self.window, self.flat = spec, pe, simd, window, bool(flat)
        self.soft = bool(soft)
        if self.flat:
            self.nf, self.sf = spec.out_ch, flat_words(spec.out_ch, spec.in_elems, simd)
        else:
            self.nf, self.sf = -(-spec.out_ch // pe), -(-spec.in_elems // simd)
        self.hold_buffer = bool(hold_buffer) and self.nf > 1
        self.fifo_depth = fifo_depth or default_fifo_depth(self.cycles_per_vector, simd, spec.requant is not None)
        members = {
            "vec_in": In(stream.Signature(unsigned(1 if window else spec.in_elems * spec.in_bits))),
            "pix_out": Out(stream.Signature(unsigned(spec.out_ch * spec.out_bits))),
        }
        if window:
            members["win"] = Out(window_read_signature(simd * spec.in_bits))
        super().__init__(members)

    @property
    def cycles_per_vector(self) -> int:
        """Cycles (weight ROM words) per input vector."""
        return self.sf if self.flat else self.nf * self.sf

    @property
    def rom_width(self) -> int:
        """Bits of a weight ROM word: the weights, and in a flat fold the lane mask and emit bit."""
        return self.pe * self.simd * self.spec.weight_bits + (self.simd + 1 if self.flat else 0)

    @property
    def multipliers(self) -> int:
        return self.pe * self.simd

    def weight_words(self) -> list[int]:
        """ROM contents: word ``nf*SF + sf`` holds ``W[nf*PE + pe, sf*SIMD + j]`` at bit
        offset ``(pe*SIMD + j) * weight_bits`` (0 where the row or column is padding).
        Flat: word ``t`` holds flat weight ``t*SIMD + j`` at ``j * weight_bits`` (0 past the
        matrix), then bit ``j`` of the lane mask (lane ``j`` is in the word's first output's
        row), then the emit bit (that row ends in this word)."""
        s, wb = self.spec, self.spec.weight_bits
        if self.flat:
            return self._flat_words()
        padded = np.zeros((self.nf * self.pe, self.sf * self.simd), dtype=np.int64)
        padded[:s.out_ch, :s.in_elems] = s.weights
        words = []
        for nf in range(self.nf):
            for sf in range(self.sf):
                block = padded[nf * self.pe:(nf + 1) * self.pe, sf * self.simd:(sf + 1) * self.simd]
                words.append(sum(to_twos(w, wb) << (i * wb) for i, w in enumerate(block.ravel().tolist())))
        return words

    def _flat_words(self) -> list[int]:
        s, wb, M = self.spec, self.spec.weight_bits, self.simd
        L, n = s.in_elems, s.out_ch * s.in_elems
        flat = np.zeros(self.sf * M, dtype=np.int64)
        flat[:n] = s.weights.reshape(-1)
        words = []
        for t in range(self.sf):
            row = (t * M) // L                          # the word's first output
            word = sum(to_twos(w, wb) << (j * wb) for j, w in enumerate(flat[t * M:(t + 1) * M].tolist()))
            mask = sum(1 << j for j in range(M) if (t * M + j) // L == row)
            emit = int((row + 1) * L <= (t + 1) * M)
            words.append(word | (mask << (M * wb)) | (emit << (M * wb + M)))
        return words

    def bias_words(self) -> list[int]:
        """Bias ROM contents: word ``nf`` holds ``bias[nf*PE + pe]`` at ``pe * acc_bits`` (0 for padding)."""
        s = self.spec
        bias = np.zeros(self.nf * self.pe, dtype=np.int64)
        bias[:s.out_ch] = s.bias
        groups = bias.reshape(self.nf, self.pe).tolist()
        return [sum(to_twos(b, s.acc_bits) << (pe * s.acc_bits) for pe, b in enumerate(g)) for g in groups]

    @staticmethod
    def _rom_attrs(platform, bits: int) -> dict | None:
        """``ram_style`` of a ROM of ``bits`` bits: block RAM on ECP5 from ROM_BLOCK_MIN_BITS."""
        return {"ram_style": "block"} if is_ecp5(platform) and bits >= ROM_BLOCK_MIN_BITS else None

    def rom_geometry(self, platform) -> tuple[int, int]:
        """``(words per row, rows)`` of the weight ROM as :meth:`_weight_rom` builds it for
        ``platform``: ``(1, words)`` unless it is a block ROM of more than ROM_ROWS words."""
        words = len(self.weight_words())
        return _rom_fold(words, self._rom_attrs(platform, self.rom_width * words) is not None)

    def _weight_rom(self, m: Module, platform, go, last_fold) -> Signal:
        """The weight word of the fold issued with ``go``, in cycle 3 after the issue: the ROM's
        synchronous read (cycle 1), its first register (cycle 2; on ECP5 the block RAM's own
        output register, deploy/fpga/outreg.py) and the second (cycle 3). A block ROM of more
        than ROM_ROWS words is folded to ROM_ROWS rows of ``ceil(words / ROM_ROWS)`` words
        (word ``w`` in row ``w % ROM_ROWS``, slice ``w // ROM_ROWS``), as yosys would map it
        anyway, but with the slice multiplexer after the first register rather than between
        the block RAMs and it, so that the register can be the block RAM's."""
        rom_w, words = self.rom_width, self.weight_words()
        attrs = self._rom_attrs(platform, rom_w * len(words))
        fold, rows = _rom_fold(len(words), attrs is not None)
        init = [sum(words[r + k * rows] << (k * rom_w) for k in range(fold) if r + k * rows < len(words))
                for r in range(rows)]
        rom = m.submodules.weights = Memory(shape=unsigned(rom_w * fold), depth=rows, init=init, attrs=attrs)
        rp = rom.read_port(domain="sync")
        # ROM address nf*SF + sf as a counter (no `index * constant` multiplier)
        waddr = Signal(range(len(words)))
        with m.If(go):
            m.d.sync += waddr.eq(Mux(last_fold, 0, waddr + 1))
        m.d.comb += [rp.addr.eq(waddr[:rp.addr.shape().width]), rp.en.eq(1)]
        rom_q = Signal(rom_w * fold, reset_less=True, name="rom_q")
        wword = Signal(rom_w, reset_less=True, name="wword")
        m.d.sync += rom_q.eq(rp.data)
        if fold == 1:
            m.d.sync += wword.eq(rom_q)
            return wword
        slice_1, slice_2 = Signal(range(fold), name="rom_slice_1"), Signal(range(fold), name="rom_slice_2")
        m.d.sync += [slice_1.eq(waddr >> (ROM_ROWS.bit_length() - 1)), slice_2.eq(slice_1),
                     wword.eq(rom_q.word_select(slice_2, rom_w))]
        return wword

    def _input_slice(self, m: Module, go, sf, sf_last) -> Signal:
        """Fold ``sf``'s slice of the vector held on ``vec_in``, in cycle 3 after the issue: a
        two-level multiplexer (cycle 1 registers, for every group of ``X_GROUP`` folds, its
        slice selected by ``sf``'s low bits; cycle 2 picks the group with ``sf``'s high bits;
        cycle 3 is a register in step with the ROM's second register)."""
        s, SIMD, SF, ib = self.spec, self.simd, self.sf, self.spec.in_bits
        vec = self.vec_in.payload
        if SF * SIMD > s.in_elems:                      # zero elements for the partial last fold
            vec = Cat(vec, Const(0, (SF * SIMD - s.in_elems) * ib))
        lo_bits = (X_GROUP - 1).bit_length()
        groups = []
        for g in range(0, SF, X_GROUP):
            words = vec[g * SIMD * ib:(g + X_GROUP) * SIMD * ib]
            xg = Signal(SIMD * ib, name=f"x_g{g // X_GROUP}", reset_less=True)
            if SF == 1:
                m.d.sync += xg.eq(words)
            else:
                # every group has its own copy of sf's low bits (a counter equal to them at all
                # times), so that no select net drives the whole input vector's multiplexers
                sel = Signal(min(lo_bits, len(sf)), name=f"sf_g{g // X_GROUP}")
                with m.If(go):
                    m.d.sync += sel.eq(Mux(sf_last, 0, sel + 1))
                m.d.sync += xg.eq(words.word_select(sel, SIMD * ib))
            groups.append(xg)
        x_r = Signal(SIMD * ib, reset_less=True)
        if len(groups) == 1:
            m.d.sync += x_r.eq(groups[0])
        else:
            hi = Signal(len(sf) - lo_bits, reset_less=True)
            m.d.sync += [hi.eq(sf[lo_bits:]), x_r.eq(Cat(*groups).word_select(hi, SIMD * ib))]
        x_w = Signal(SIMD * ib, reset_less=True)        # in step with the ROM's second register
        m.d.sync += x_w.eq(x_r)
        return x_w

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        PE, SIMD = self.pe, self.simd
        NF, SF = (1, self.sf) if self.flat else (self.nf, self.sf)     # issue folds: a flat vector is one row of words
        ib, wb, ob, ab = s.in_bits, s.weight_bits, s.out_bits, s.acc_bits

        # ---- credits (the output buffer is built at the end) ------------------------
        out_w = s.out_ch * ob
        outstanding = Signal(range(self.fifo_depth + 1))   # vectors started, not yet popped

        # ---- issue ----------------------------------------------------------------------
        # fold counters nf, sf plus flags that re-encode them, updated together (sf_first:
        # sf == 0, sf_last: sf == SF-1, nf_last: nf == NF-1, at_start: nf == sf == 0), and
        # the credit check as a register, so that vec_in.ready is one LUT after registers
        # (on ECP5 it drives the clock enable of the source's whole window register)
        nf = Signal(range(max(NF, 2)))
        sf = Signal(range(max(SF, 2)))
        sf_first, at_start = Signal(init=1, name="sf_first"), Signal(init=1, name="at_start")
        sf_last, nf_last = Signal(init=SF == 1, name="sf_last"), Signal(init=NF == 1, name="nf_last")
        last_fold = Signal(init=NF * SF == 1)            # sf_last & nf_last
        credit = Signal(init=1)                          # outstanding < fifo_depth
        go = Signal()
        m.d.comb += go.eq(self.vec_in.valid & (~at_start | credit))
        # vec_in.ready is a register (it drives the source's hand-over, on the SWG a clock
        # enable per window pixel): the last fold (the vector is held, so valid is high then)
        # or, with one fold per vector, the credit check; the transfer needs valid as well
        m.d.comb += self.vec_in.ready.eq(credit if NF * SF == 1 else last_fold)
        with m.If(go):
            m.d.sync += at_start.eq(last_fold)
            with m.If(sf_last):
                m.d.sync += [sf.eq(0), sf_first.eq(1), sf_last.eq(SF == 1)]
                with m.If(nf_last):
                    m.d.sync += [nf.eq(0), nf_last.eq(NF == 1), last_fold.eq(NF * SF == 1)]
                with m.Else():
                    m.d.sync += [nf.eq(nf + 1), nf_last.eq(nf == NF - 2),
                                 last_fold.eq((SF == 1) & (nf == NF - 2))]
            with m.Else():
                m.d.sync += [sf.eq(sf + 1), sf_first.eq(0), sf_last.eq(sf == SF - 2),
                             last_fold.eq((sf == SF - 2) & nf_last)]
        # the pop comes back through CREDIT_RETURN_CYCLES registers: the output FIFO sits by
        # the consumer, the counter by the issue logic, and on a large unit the route between
        # them takes a cycle of its own (a credit returned late is only conservative)
        popped = self.pix_out.valid & self.pix_out.ready
        for i in range(CREDIT_RETURN_CYCLES):
            popped_d = Signal(name=f"popped_{i + 1}")
            m.d.sync += popped_d.eq(popped)
            popped = popped_d
        outstanding_next = outstanding + (go & at_start) - popped
        m.d.sync += [outstanding.eq(outstanding_next), credit.eq(outstanding_next < self.fifo_depth)]

        # control pipeline: valid, first fold, last fold, neuron fold index
        def ctrl_delay(v, first, last, nfi, n):
            out = [(v, first, last, nfi)]
            for i in range(n):
                pv, pf, pl, pn = out[-1]
                dv, df, dl = Signal(name=f"v_d{i + 1}"), Signal(name=f"first_d{i + 1}"), Signal(name=f"last_d{i + 1}")
                dn = Signal.like(nf, name=f"nf_d{i + 1}", reset_less=True)
                m.d.sync += [dv.eq(pv), df.eq(pf), dl.eq(pl), dn.eq(pn)]
                out.append((dv, df, dl, dn))
            return out

        acc_cycle = accumulate_cycle(SIMD)
        ctrl = ctrl_delay(go, sf_first, sf_last, nf, acc_cycle)

        # weight ROM (synchronous read: data in cycle 1, registered in cycles 2 and 3: on ECP5
        # the first register becomes the block RAM's output register, the second may sit
        # anywhere on the way to the multipliers)
        rom_w = self.rom_width
        if NF * SF > 1:
            wword = self._weight_rom(m, platform, go, last_fold)
        else:
            wword = Const(self.weight_words()[0], unsigned(rom_w))

        if self.window:
            # the window generator reads fold sf's word in place and delivers it in cycle 3
            # (WINDOW_READ_LATENCY after the issue), in step with the ROM's second register
            m.d.comb += self.win.step.eq(go)
            x_w = self.win.data
        else:
            x_w = self._input_slice(m, go, sf, sf_last)

        # operand registers (cycle 4): the ROM output and the matching input slice are
        # registered before the multipliers, so block-RAM clock-to-out and the multiply
        # are in different cycles (the critical path of HW_REQUESTS item 0)
        # (a single-word ROM is a constant and needs no register). On ECP5 these registers
        # and the product registers are the MULT18X18D's own (hw/dsp.py, HW_REQUESTS item 4);
        # products in logic (soft) register partial-product pair sums instead.
        mul = Multipliers(m, platform, soft=self.soft)
        x_op = mul.operand(x_w, "x_op")
        w_op = mul.operand(wword[:PE * SIMD * wb], "w_op")

        def elem(word, i, bits, is_signed):
            v = word[i * bits:(i + 1) * bits]
            return v.as_signed() if is_signed else v.as_unsigned()

        # ---- multiply (registered products, cycle 5) -----------------------------------
        pw = min(wb + ib + (0 if s.in_signed else 1), s.tree_bits)
        products = [[mul.product(w_op.elem(pe * SIMD + j, wb, True), x_op.elem(j, ib, s.in_signed), signed(pw),
                                 f"p_{pe}_{j}") for j in range(SIMD)] for pe in range(PE)]

        # ---- adder tree (registers after the first level, so that the route out of the ---
        # DSPs gets one adder only, then every TREE_LEVELS levels; root is combinational)
        def tree(values, pe):
            """The adder tree of ``values`` (named by ``pe``), registered as the module doc says."""
            level = 0
            while len(values) > 1:
                nxt = []
                for i in range(0, len(values), 2):
                    if i + 1 < len(values):
                        a, b = values[i], values[i + 1]
                        w = min(max(len(a), len(b)) + 1, s.tree_bits)
                        n = Signal(signed(w), name=f"t{pe}_l{level}_{i // 2}")
                        m.d.comb += n.eq(a + b)
                    else:
                        n = values[i]
                    nxt.append(n)
                values = nxt
                level += 1
                if len(values) > 1 and (level - 1) % TREE_LEVELS == 0:
                    regs = []
                    for i, v in enumerate(values):
                        r = Signal.like(v, name=f"t{pe}_r{level}_{i}", reset_less=True)
                        m.d.sync += r.eq(v)
                        regs.append(r)
                    values = regs
            return values[0]

        if self.flat:
            r_done, group = self._flat_accumulate(m, wword, products, tree, ctrl, acc_cycle)
            self._group_buffer(m, group, r_done, out_w) if self.nf > 1 else self._pixel_fifo(m, group, r_done, out_w)
            return m
        sums = [tree(products[pe], pe) for pe in range(PE)]

        # ---- accumulate (bias on the first fold) ----------------------------------------
        av, afirst, alast, _ = ctrl[acc_cycle]
        if s.bias is not None and NF > 1:
            brom = m.submodules.bias = Memory(shape=unsigned(PE * ab), depth=NF, init=self.bias_words(),
                                              attrs=self._rom_attrs(platform, PE * ab * NF))
            bp = brom.read_port(domain="sync")
            # read two cycles ahead and registered (on ECP5 in the block RAM's output
            # register): a block RAM's read latch before the accumulator's adder was the
            # whole network's critical path on ECP5
            m.d.comb += [bp.addr.eq(ctrl[acc_cycle - 2][3]), bp.en.eq(1)]
            bword = Signal(PE * ab, name="bias_word", reset_less=True)
            m.d.sync += bword.eq(bp.data)
        elif s.bias is not None:
            bword = Const(self.bias_words()[0], unsigned(PE * ab))
        else:
            bword = Const(0, unsigned(PE * ab))
        accs = []
        for pe in range(PE):
            acc = Signal(signed(ab), name=f"acc_{pe}", reset_less=True)
            with m.If(av):
                m.d.sync += acc.eq(Mux(afirst, elem(bword, pe, ab, True), acc) + sums[pe])
            accs.append(acc)
        done = Signal()                                 # accs hold a finished dot product
        m.d.sync += done.eq(av & alast)

        # ---- requantize ---------------------------------------------------------------
        out_shape = signed(ob) if s.out_signed else unsigned(ob)
        results = []
        if s.requant is not None:
            shift, lo, hi = s.requant
            for pe in range(PE):
                rq = Requantizer(ab, shift, lo, hi, out_shape)
                m.submodules[f"requant_{pe}"] = rq
                m.d.comb += rq.acc.eq(accs[pe])
                results.append(rq.out)
            r_done = done
            for i in range(2):
                dv = Signal(name=f"rq_done_{i}")
                m.d.sync += dv.eq(r_done)
                r_done = dv
        else:
            results = [a[:ob] for a in accs]
            r_done = done
        group = Cat(*[r[:ob] for r in results])           # PE results, channel nf*PE + pe at pe*ob

        # ---- output buffer: NF groups of PE results -> one pixel -----------------------
        # (the padded channels of a partial last group fall off the top of the pixel)
        if NF == 1:
            self._pixel_fifo(m, group, r_done, out_w)
        else:
            self._group_buffer(m, group, r_done, out_w)
        return m

    def _pixel_fifo(self, m: Module, group, r_done, out_w: int) -> None:
        """The output buffer of a unit with one group per pixel: a FIFO of ``fifo_depth`` pixels."""
        fifo = m.submodules.fifo = credited_fifo(out_w, self.fifo_depth)
        m.d.comb += [fifo.w_data.eq(group[:out_w]), fifo.w_en.eq(r_done),
                     self.pix_out.payload.eq(fifo.r_data), self.pix_out.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.pix_out.ready)]

    def _flat_accumulate(self, m: Module, wword, products, tree, ctrl, acc_cycle: int):
        """A flat fold's accumulator (module doc): ``(r_done, group)``, the requantized
        output channel and its valid flag, one channel per emit in output order.

        The lane mask travels with the weights to the product registers (cycle 5), the emit
        bit to the accumulator (``acc_cycle``). ``o`` counts the outputs of the vector and
        ``bias_next`` holds the bias of output ``o + 1`` (a table indexed by ``o``, loaded on
        each emit), so no adder or ROM read precedes the accumulator's adders."""
        s, M, wb, ab, ob = self.spec, self.simd, self.spec.weight_bits, self.spec.acc_bits, self.spec.out_bits
        out = s.out_ch
        mask, emit = wword[M * wb:M * wb + M], wword[M * wb + M]
        for i in range(4, 6):                           # in step with the operand, then product registers
            r = Signal(M, name=f"lanes_d{i}", reset_less=True)
            m.d.sync += r.eq(mask)
            mask = r
        for i in range(4, acc_cycle + 1):
            r = Signal(name=f"emit_d{i}", reset_less=True)
            m.d.sync += r.eq(emit)
            emit = r
        lanes = {"lo": [], "hi": []}
        for j, p in enumerate(products[0]):
            for side, keep in (("lo", mask[j]), ("hi", ~mask[j])):
                v = Signal.like(p, name=f"{side}_{j}")
                m.d.comb += v.eq(Mux(keep, p, 0))
                lanes[side].append(v)
        lo, hi = tree(lanes["lo"], "lo"), tree(lanes["hi"], "hi")

        bias = [0] * out if s.bias is None else [int(b) for b in s.bias]
        o = Signal(range(out), name="output")           # the output being accumulated
        bias_next = Signal(signed(ab), init=bias[1 % out], name="bias_next")
        av, afirst, _, _ = ctrl[acc_cycle]
        acc = Signal(signed(ab), name="acc", reset_less=True)
        result = Signal(signed(ab), name="result", reset_less=True)
        base = Mux(afirst, Const(bias[0], signed(ab)), acc)
        with m.If(av):
            with m.If(emit):
                m.d.sync += [result.eq(base + lo), acc.eq(bias_next + hi),
                             o.eq(Mux(o == out - 1, 0, o + 1)),
                             bias_next.eq(Array(Const(bias[(i + 2) % out], signed(ab)) for i in range(out))[o])]
            with m.Else():
                m.d.sync += acc.eq(base + lo)
        done = Signal()
        m.d.sync += done.eq(av & emit)
        if s.requant is None:
            return done, result[:ob]
        shift, lo_clamp, hi_clamp = s.requant
        rq = m.submodules.requant_0 = Requantizer(ab, shift, lo_clamp, hi_clamp,
                                                  signed(ob) if s.out_signed else unsigned(ob))
        m.d.comb += rq.acc.eq(result)
        r_done = done
        for i in range(2):
            dv = Signal(name=f"rq_done_{i}")
            m.d.sync += dv.eq(r_done)
            r_done = dv
        return r_done, rq.out[:ob]

    def _group_buffer(self, m: Module, group, r_done, out_w: int) -> None:
        """The output buffer of a unit with ``NF > 1`` groups per pixel, for ``fifo_depth``
        pixels: the output register (``pix_out.payload``), with ``hold_buffer`` a second
        pixel register (the next pixel), and a FIFO of groups (LUT RAM, one group of ``PE``
        results wide, or a block FIFO beyond GROUPS_BLOCK_MIN_WORDS) for the pixels behind
        them. A pixel is a whole register only once or twice; the rest is group-wide memory.

        The pixel being filled (the output register itself without ``hold_buffer``) takes a
        group per cycle from the FIFO, or straight from the unit when the FIFO is empty, and
        one in the cycle its predecessor leaves. With the second register a pixel moves to
        the output in the cycle the last one leaves; without it the output register refills
        in ``NF`` cycles after a pixel leaves, which costs a consumer that holds the pixel
        while it reads it (a 1x1 stage) ``NF - 1`` cycles per pixel (:func:`refill_cycles`).
        A pixel reaches ``pix_out`` one (without) or two (with) cycles after its last group;
        the credit counter keeps at most ``fifo_depth`` pixels in flight, so the FIFO never
        overflows."""
        NF, gw = self.nf, self.pe * self.spec.out_bits
        out = Signal(out_w if self.hold_buffer else NF * gw, reset_less=True)
        out_valid = Signal()
        m.d.comb += [self.pix_out.payload.eq(out[:out_w]), self.pix_out.valid.eq(out_valid)]
        leave = Signal()                                # the output pixel leaves this cycle
        m.d.comb += leave.eq(out_valid & self.pix_out.ready)
        if self.hold_buffer:
            fill = Signal(NF * gw, reset_less=True)     # the next pixel
            full = Signal()                             # fill holds NF groups
            move = Signal()                             # fill -> out this cycle
            m.d.comb += move.eq(full & (~out_valid | self.pix_out.ready))
            with m.If(move):
                m.d.sync += [out.eq(fill[:out_w]), out_valid.eq(1)]
            with m.Elif(self.pix_out.ready):
                m.d.sync += out_valid.eq(0)
            freed = move
        else:
            fill, full, freed = out, out_valid, leave
        ready, empty, head, push, pop = self._group_fifo(m, group, (self.fifo_depth - 1 - self.hold_buffer) * NF)

        count = Signal(range(NF + 1))                   # groups in fill
        take, bypass = Signal(name="take"), Signal(name="bypass")   # fill takes a group from the FIFO / the unit
        accept = ~full | freed
        m.d.comb += [pop.eq(accept & ready), bypass.eq(accept & r_done & empty), push.eq(r_done & ~bypass),
                     take.eq(pop | bypass)]
        with m.If(take):                                # groups enter at the top and shift down
            m.d.sync += fill.eq(Cat(fill[gw:], Mux(ready, head, group)))
        with m.If(freed):
            m.d.sync += [count.eq(take), full.eq(0)]    # NF > 1 here
        with m.Elif(take):
            m.d.sync += [count.eq(count + 1), full.eq(count == NF - 1)]

    def _group_fifo(self, m: Module, group, depth: int):
        """A FIFO of ``depth`` groups written with ``group``: ``(ready, empty, head, push,
        pop)``, ``head`` the oldest group (valid with ``ready``), ``empty`` no group stored
        (written or in flight), ``push`` / ``pop`` to be driven. A bypass (the caller's) is
        only allowed when ``empty``, so the groups stay in order."""
        ready, empty = Signal(name="ready"), Signal(init=1, name="empty")
        push, pop = Signal(name="push"), Signal(name="pop")
        if depth > GROUPS_BLOCK_MIN_WORDS:
            # in block RAM (ECP5: one DP16KD for up to 2K x 9 bits) behind a register, so that
            # the block RAM's slow output does not feed the fill multiplexer; readable three
            # cycles later
            q = m.submodules.groups = RegisteredBlockFIFO(len(group), depth)
            m.d.comb += [q.w_data.eq(group), q.w_en.eq(push), q.r_en.eq(pop), ready.eq(q.r_rdy),
                         empty.eq(q.empty)]
            return ready, empty, q.r_data, push, pop
        if depth == 0:
            return ready, empty, group, push, pop
        # in LUT RAM, read asynchronously: readable in the cycle after its write
        mem = m.submodules.groups = Memory(shape=unsigned(len(group)), depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        produce, consume = Signal(range(depth), name="produce"), Signal(range(depth), name="consume")
        level = Signal(range(depth + 1))
        m.d.comb += [ready.eq(level != 0), empty.eq(level == 0), rp.addr.eq(consume),
                     wp.addr.eq(produce), wp.data.eq(group), wp.en.eq(push)]
        with m.If(push):
            m.d.sync += produce.eq(Mux(produce == depth - 1, 0, produce + 1))
        with m.If(pop):
            m.d.sync += consume.eq(Mux(consume == depth - 1, 0, consume + 1))
        m.d.sync += level.eq(level + push - pop)
        return ready, empty, rp.data, push, pop
