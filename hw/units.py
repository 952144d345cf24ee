"""Graph units of the network engine: typed pixel streams, fork, FIFO and the
per-pixel ops (``requant``, ``add``, ``global_sum_pool``, ``maxpool``).

Every port is a *typed pixel stream* (:func:`pixel_signature`): one beat is one
pixel, a ``data.ArrayLayout`` of ``channels`` elements of ``bits`` bits (signed or
unsigned), element ``c`` at payload bits ``[c*bits, (c+1)*bits)`` (the packing of
docs/hw.md), pixels in raster order, frames back to back. ``wiring.connect`` refuses
to join two ports whose element width, signedness or channel count differ, so a
mismatch between layers is an elaboration error, not a wrong answer.

Flow control of the op units: a unit accepts a pixel only when the output FIFO is
sure to have room for the result (a credit counter over the pipeline and the FIFO),
so ``ready`` is a register and the pipeline never stalls. The integer semantics are
docs/artifact.md sections 2.1 and 3.3-3.6, bit for bit (the requantizer is
:class:`hw.requant.Requantizer`, round half to even then clamp).

Throughput: one pixel per cycle for ``requant``, ``add`` and ``global_sum_pool`` with an
output FIFO of :data:`OP_FIFO_DEPTH`; a shallower FIFO (the network engine builds the
smallest of :data:`OP_FIFO_DEPTHS` that keeps its planned rate) passes ``depth`` pixels
per :data:`OP_CREDIT_LOOP` cycles (:func:`op_cycles`; the pool needs a credit only for a
frame's last pixel); ``maxpool`` takes ``kernel**2`` cycles per window.

Serial op units (``lanes`` < channels; ``requant``, ``add`` and ``global_sum_pool``, whose
accumulators stay registers and whose output is its frame's last pixel): ``lanes`` requantizers
work through a pixel ``lanes`` channels a cycle (:func:`serial_groups` groups), reading
the input in place (``ready`` is raised with the last group, so the producer holds the
pixel meanwhile, as stream sources do) and writing each group's results into the output
register, which is the unit's only pixel-wide state: a pixel per
:func:`serial_period` cycles. Where a layer has few pixels per frame (a 64-channel
tensor of 4 pixels in a frame of thousands of cycles) this trades idle width for time.
"""
from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from artifact import int_range

from .requant import Requantizer
from .spec import HwError
from .swg import WINDOW_READ_LATENCY, SlidingWindowGenerator

__all__ = ["serial_groups", "serial_chunk_groups", "serial_chunks", "SERIAL_ENABLE_FANOUT", "serial_period", "OP_SERIAL_OVERHEAD", "SERIAL_LATENCY", "element_shape", "pixel_layout", "pixel_signature", "payload_width", "signature_of", "connect_pixels", "PixelFIFO", "BlockFIFO", "RegisteredBlockFIFO", "credited_fifo", "credited_fifo_depth", "BLOCK_FIFO_MIN_WORDS", "Fork", "RawStreamAdapter",
           "RequantUnit", "AddUnit", "GlobalSumPoolUnit", "MaxPoolUnit", "OP_FIFO_DEPTH", "OP_FIFO_DEPTHS",
           "OP_CREDIT_LOOP", "OP_LATENCY", "OP_REFILL", "op_cycles"]

#: The op units' credit loop (accept -> operand register -> requantizer -> FIFO write ->
#: FIFO output register -> pop -> credit register), in cycles: ``depth`` credits pass
#: ``depth`` pixels per loop.
OP_CREDIT_LOOP = 7
#: Output FIFO depth of the op units at one pixel per cycle (more than the credit loop).
OP_FIFO_DEPTH = 8
#: The output FIFO depths an op unit is built with (hw.network picks the smallest that
#: keeps up with the network's planned rate: a FIFO in LUT RAM costs 6 LUT4 positions
#: per 4 bits of a pixel, a depth-1 FIFO is the output register alone).
OP_FIFO_DEPTHS = (1, 2, 4, OP_FIFO_DEPTH)


#: Cycles from accepting a pixel to its result entering the output FIFO: an operand
#: register, then the requantizer's two stages.
OP_LATENCY = 3
#: Cycles a one-deep output FIFO stays empty after a pop: the credit register, then
#: :data:`OP_LATENCY` until the next result is in.
OP_REFILL = OP_LATENCY + 1


def op_cycles(pixels: int, fifo_depth: int, held: int = 0) -> int:
    """Cycles per frame of ``pixels`` pixels through an op unit with ``fifo_depth`` credits:
    one pixel per cycle at most, ``fifo_depth`` per :data:`OP_CREDIT_LOOP` cycles. With one
    credit the output register is the FIFO: a consumer holding it ``held`` cycles per frame
    (a 1x1 stage reads it in place for its whole vector) then waits :data:`OP_REFILL` after
    each pop, so a frame takes at least ``held + pixels * OP_REFILL``; a deeper FIFO has the
    next pixel queued behind the held one."""
    credited = pixels if fifo_depth > OP_CREDIT_LOOP else -(-pixels * OP_CREDIT_LOOP // fifo_depth)
    return max(credited, held + pixels * OP_REFILL) if fifo_depth == 1 else credited
#: Cycles from a serial op unit issuing a group to its results entering the output
#: register: the group's elements, the operand register, the requantizer's two stages.
SERIAL_LATENCY = OP_LATENCY + 1
#: Cycles a serial op unit spends on a pixel besides its groups, its consumer ready: the
#: last group's pipeline (:data:`SERIAL_LATENCY`), then the output register is popped
#: before the next pixel starts.
OP_SERIAL_OVERHEAD = SERIAL_LATENCY + 1


def serial_groups(channels: int, lanes: int) -> int:
    """Cycles a serial op unit issues per pixel: ``ceil(channels / lanes)`` groups."""
    return -(-channels // lanes)


#: Bits of a serial op unit's output register one clock-enable flip-flop drives (at least
#: one group's lanes).
SERIAL_ENABLE_FANOUT = 64


def serial_chunk_groups(group_bits: int) -> int:
    """Groups of ``group_bits`` output bits under one clock enable of a serial op unit's
    output register (:data:`SERIAL_ENABLE_FANOUT`)."""
    return max(1, SERIAL_ENABLE_FANOUT // group_bits)


def serial_chunks(channels: int, lanes: int, bits: int) -> list[range]:
    """The groups of each clock-enable chunk of a serial op unit's output register
    (``channels`` of ``bits`` bits, ``lanes`` per group), in write order."""
    groups, per_chunk = serial_groups(channels, lanes), serial_chunk_groups(lanes * bits)
    return [range(g, min(g + per_chunk, groups)) for g in range(0, groups, per_chunk)]


def serial_period(channels: int, lanes: int) -> int:
    """Cycles per pixel of a serial op unit whose producer and consumer keep up."""
    return serial_groups(channels, lanes) + OP_SERIAL_OVERHEAD


def element_shape(bits: int, is_signed: bool) -> Shape:
    """``signed(bits)`` or ``unsigned(bits)``."""
    return signed(bits) if is_signed else unsigned(bits)


def pixel_layout(channels: int, bits: int, is_signed: bool) -> data.ArrayLayout:
    """One pixel: ``channels`` elements of ``bits`` bits, element ``c`` at bits ``[c*bits, (c+1)*bits)``."""
    return data.ArrayLayout(element_shape(bits, is_signed), channels)


def pixel_signature(channels: int, bits: int, is_signed: bool) -> stream.Signature:
    """The typed pixel stream of a tensor with ``channels`` channels of ``bits``-bit elements."""
    return stream.Signature(pixel_layout(channels, bits, is_signed))


def payload_width(signature: stream.Signature) -> int:
    """Bits in one beat of ``signature``'s payload."""
    return Shape.cast(signature.members["payload"].shape).width


def signature_of(record: dict) -> stream.Signature:
    """The pixel stream of an artifact tensor record (``shape`` [C, H, W] or [C])."""
    return pixel_signature(int(record["shape"][0]), int(record["bits"]), bool(record["signed"]))


def connect_pixels(m: Module, src, dst, what: str = "stream") -> None:
    """``wiring.connect`` for pixel streams that also refuses a signedness mismatch (connect
    itself compares payload widths only): the element shape and channel count of the two
    layouts must be equal. HwError (one line) names both."""
    a = wiring.flipped(src).signature if isinstance(src, wiring.FlippedInterface) else src.signature
    b = wiring.flipped(dst).signature if isinstance(dst, wiring.FlippedInterface) else dst.signature
    sa, sb = a.members["payload"].shape, b.members["payload"].shape
    if sa != sb:
        raise HwError(f"{what}: cannot join a {_describe(sa)} stream to a {_describe(sb)} input")
    wiring.connect(m, src, dst)


def _describe(shape) -> str:
    if isinstance(shape, data.ArrayLayout):
        e = Shape.cast(shape.elem_shape)
        return f"{shape.length}-channel {e.width}-bit {'signed' if e.signed else 'unsigned'}"
    return f"{Shape.cast(shape).width}-bit raw"


def _credit(m: Module, accept, popped, depth: int) -> Signal:
    """A register that is high while fewer than ``depth`` results are in flight or queued
    (accepted and not yet popped from the output FIFO)."""
    outstanding = Signal(range(depth + 1))
    credit = Signal(init=1)
    nxt = outstanding + accept - popped
    m.d.sync += [outstanding.eq(nxt), credit.eq(nxt < depth)]
    return credit


def credited_fifo_depth(credits: int) -> int:
    """Entries of the ``SyncFIFOBuffered`` behind ``credits`` credits (:func:`credited_fifo`):
    ``credits``, but 3 for 2. A depth-2 ``SyncFIFOBuffered`` takes its first write into its
    one-word inner memory, which is still full in the next cycle while the output register
    loads from it, so a second write then would be lost; from depth 3 on the inner memory is
    never full with the output register empty."""
    return 3 if credits == 2 else credits


def credited_fifo(width: int, credits: int) -> SyncFIFOBuffered:
    """The output FIFO of a unit that writes it without looking at ``w_rdy``, because a credit
    counter keeps at most ``credits`` results accepted and not yet popped: one that takes
    ``credits`` writes on consecutive cycles."""
    return SyncFIFOBuffered(width=width, depth=credited_fifo_depth(credits))


#: A FIFO with more words than this in storage keeps them in block RAM (:class:`BlockFIFO`):
#: in LUT RAM it would take more than one 16-word range of ECP5 TRELLIS_DPR16X4 per 4 bits
#: (6 LUT4 positions each) and a multiplexer between the ranges; a block RAM holds up to
#: 512 words of 36 bits.
BLOCK_FIFO_MIN_WORDS = 16


class BlockFIFO(Elaboratable):
    """A first-word-fall-through FIFO of ``depth`` words that behaves as amaranth's
    ``SyncFIFOBuffered`` cycle for cycle (the same ``w_*`` / ``r_*`` ports and ``level``),
    its ``depth - 1`` words of storage in block RAM (``ram_style`` ``"block"``): ``r_data``
    is the memory's read register, which a block RAM holds itself, so the words take no
    flip-flops. The memory has a power-of-two number of words (a block RAM has 512
    or more anyway), so that the pointers wrap without a compare; ``empty`` is
    ``level == 0`` without the adder. Whether the block RAM holds no word or all of them
    are flip-flops updated beside its level, so that ``w_rdy``, ``empty`` and the read
    enable are one gate each, not a compare of the level: a consumer may decide from
    ``empty`` in the same cycle (an MVU output buffer's bypass does). The FIFO never reads
    a word in the cycle it is written (a read needs a stored word, a write a free one), so
    yosys need not emulate the read port's old-data collision behaviour, which an ECP5
    block RAM does not have across its ports (``no_rw_check``: otherwise a register and a
    multiplexer per bit).
    """

    def __init__(self, width: int, depth: int):
        if depth < 2:
            raise HwError(f"a block-RAM FIFO needs a depth of at least 2, got {depth}")
        self.width, self.depth = width, depth
        self.w_data, self.w_en, self.w_rdy = Signal(width), Signal(), Signal()
        self.r_data, self.r_en, self.r_rdy = Signal(width), Signal(), Signal()
        self.level = Signal(range(depth + 1))
        self.empty = Signal()

    def elaborate(self, platform):
        m = Module()
        inner = self.depth - 1
        words = 1 << max(1, (inner - 1).bit_length())
        inner_level = Signal(range(inner + 1))
        inner_empty, inner_full = Signal(init=1, name="inner_empty"), Signal(name="inner_full")
        m.d.comb += self.w_rdy.eq(~inner_full)
        do_write = self.w_rdy & self.w_en
        do_inner_read = ~inner_empty & (~self.r_rdy | self.r_en)
        storage = m.submodules.storage = Memory(shape=unsigned(self.width), depth=words, init=[],
                                                attrs={"ram_style": "block", "no_rw_check": 1})
        # an asynchronous read port and a register with the read enable, not a synchronous read
        # port: yosys honours no_rw_check only where it merges such a register into the port
        # itself (memory_dff); from a synchronous port it would add a write-data bypass, a
        # flip-flop and a multiplexer per bit after the block RAM, for a collision that cannot
        # happen here
        wp, rp = storage.write_port(), storage.read_port(domain="comb")
        produce, consume = Signal(range(words), name="produce"), Signal(range(words), name="consume")
        word = Signal(self.width, name="word", reset_less=True)
        m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(do_write),
                     rp.addr.eq(consume), self.r_data.eq(word),
                     self.empty.eq(inner_empty & ~self.r_rdy)]
        with m.If(do_inner_read):
            m.d.sync += word.eq(rp.data)
        with m.If(do_write):
            m.d.sync += produce.eq(produce + 1)
        with m.If(do_inner_read):
            m.d.sync += consume.eq(consume + 1)
        with m.If(do_write & ~do_inner_read):
            m.d.sync += [inner_level.eq(inner_level + 1), inner_empty.eq(0),
                         inner_full.eq(inner_level == inner - 1)]
        with m.If(do_inner_read & ~do_write):
            m.d.sync += [inner_level.eq(inner_level - 1), inner_full.eq(0),
                         inner_empty.eq(inner_level == 1)]
        with m.If(do_inner_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        m.d.comb += self.level.eq(inner_level + self.r_rdy)
        return m


class PixelFIFO(wiring.Component):
    """A typed pixel stream through a FIFO of ``depth`` pixels (``o.payload`` is a register).
    Used for the skip branches of residual blocks.

    Up to ``BLOCK_FIFO_MIN_WORDS + 1`` pixels it is a ``SyncFIFOBuffered`` (its words in
    LUT RAM); deeper, a :class:`BlockFIFO` of ``depth - 1`` pixels followed by an output
    register, so that ``o.payload`` is a flip-flop and not the block RAM's output (whose
    clock-to-out would leave the consumer's adder little of the cycle): ``depth`` pixels
    in all, one cycle more from ``i`` to ``o`` when it is empty.

    Members: ``i`` In(signature), ``o`` Out(signature).
    """

    def __init__(self, signature: stream.Signature, depth: int):
        if depth < 1:
            raise HwError(f"FIFO depth must be at least 1, got {depth}")
        self.depth = depth
        self.width = payload_width(signature)
        self.block = depth - 1 > BLOCK_FIFO_MIN_WORDS       # words a SyncFIFOBuffered would store
        super().__init__({"i": In(signature), "o": Out(signature)})

    def elaborate(self, platform):
        m = Module()
        if not self.block:
            fifo = m.submodules.fifo = SyncFIFOBuffered(width=self.width, depth=self.depth)
            m.d.comb += [fifo.w_stream.payload.eq(self.i.payload.as_value()), fifo.w_stream.valid.eq(self.i.valid),
                         self.i.ready.eq(fifo.w_stream.ready),
                         self.o.payload.eq(fifo.r_stream.payload), self.o.valid.eq(fifo.r_stream.valid),
                         fifo.r_stream.ready.eq(self.o.ready)]
            return m
        fifo = m.submodules.fifo = RegisteredBlockFIFO(self.width, self.depth)
        m.d.comb += [fifo.w_data.eq(self.i.payload.as_value()), fifo.w_en.eq(self.i.valid),
                     self.i.ready.eq(fifo.w_rdy), self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.o.ready)]
        return m


class RegisteredBlockFIFO(Elaboratable):
    """A first-word-fall-through FIFO of ``depth`` words (``depth >= 3``) with the ports of
    :class:`BlockFIFO`: a block FIFO of ``depth - 1`` words followed by an output register,
    so that ``r_data`` is a flip-flop and not the block RAM's output. A block RAM without
    its output register has a slow clock-to-out (~4.3-5.8 ns on an ECP5-8), so whatever
    reads ``r_data`` through logic (a multiplexer, an adder) would otherwise start late in
    the cycle. On ECP5 the output register becomes the block RAM's own (deploy/fpga/outreg.py),
    whose clock-to-out is 0.72 ns. Full throughput; a word written into an empty FIFO is
    readable three cycles later (one more than :class:`BlockFIFO`). ``empty``: no word
    stored, in flight or in the register."""

    def __init__(self, width: int, depth: int):
        if depth < 3:
            raise HwError(f"a registered block-RAM FIFO needs a depth of at least 3, got {depth}")
        self.width, self.depth = width, depth
        self.w_data, self.w_en, self.w_rdy = Signal(width), Signal(), Signal()
        self.r_data, self.r_en, self.r_rdy = Signal(width), Signal(), Signal()
        self.empty = Signal()

    def elaborate(self, platform):
        m = Module()
        fifo = m.submodules.fifo = BlockFIFO(self.width, self.depth - 1)
        out = Signal(self.width, reset_less=True, name="out")       # qualified by r_rdy
        take = Signal(name="take")
        m.d.comb += [fifo.w_data.eq(self.w_data), fifo.w_en.eq(self.w_en), self.w_rdy.eq(fifo.w_rdy),
                     take.eq(fifo.r_rdy & (~self.r_rdy | self.r_en)), fifo.r_en.eq(take),
                     self.r_data.eq(out), self.empty.eq(fifo.empty & ~self.r_rdy)]
        with m.If(take):
            m.d.sync += [out.eq(fifo.r_data), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m


class Fork(wiring.Component):
    """One stream to ``n`` consumers (an eager fork): each output takes the beat on its own;
    the input moves on once every output has taken it. ``valid`` of an output depends on
    registers and the input's ``valid`` only.

    Members: ``i`` In(signature); ``o0`` ... ``o{n-1}`` Out(signature).
    """

    def __init__(self, signature: stream.Signature, n: int = 2):
        if n < 2:
            raise HwError(f"a fork needs at least 2 outputs, got {n}")
        self.n = n
        super().__init__({"i": In(signature), **{f"o{k}": Out(signature) for k in range(n)}})

    def outputs(self) -> list:
        return [getattr(self, f"o{k}") for k in range(self.n)]

    def elaborate(self, platform):
        m = Module()
        outs = self.outputs()
        taken = [Signal(name=f"taken_{k}") for k in range(self.n)]     # output k already has this beat
        done = [t | o.ready for t, o in zip(taken, outs)]
        every = Signal()
        m.d.comb += every.eq(Cat(*done).all())
        m.d.comb += self.i.ready.eq(every)
        for o, t in zip(outs, taken):
            m.d.comb += [o.payload.eq(self.i.payload), o.valid.eq(self.i.valid & ~t)]
            with m.If(self.i.valid & every):
                m.d.sync += t.eq(0)
            with m.Elif(o.valid & o.ready):
                m.d.sync += t.eq(1)
        return m


class RawStreamAdapter(wiring.Component):
    """A typed pixel-stream wrapper around a component with raw ``unsigned(width)`` stream
    ports (the layer engines): ``i`` feeds ``inner.<in_port>``, ``inner.<out_port>`` feeds
    ``o``, bit for bit (the packing is the same)."""

    def __init__(self, inner, in_sig: stream.Signature, out_sig: stream.Signature,
                 in_port: str = "pix_in", out_port: str = "pix_out"):
        self.inner, self.in_port, self.out_port = inner, in_port, out_port
        for port, sig in ((in_port, in_sig), (out_port, out_sig)):
            have = Shape.cast(getattr(inner, port).payload.shape()).width
            want = payload_width(sig)
            if have != want:
                raise HwError(f"{port} of {type(inner).__name__} is {have} bits wide, the tensor needs {want}")
        super().__init__({"i": In(in_sig), "o": Out(out_sig)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.inner
        src, dst = getattr(self.inner, self.in_port), getattr(self.inner, self.out_port)
        m.d.comb += [src.payload.eq(self.i.payload.as_value()), src.valid.eq(self.i.valid), self.i.ready.eq(src.ready),
                     self.o.payload.eq(dst.payload), self.o.valid.eq(dst.valid), dst.ready.eq(self.o.ready)]
        return m


class _OpUnit(wiring.Component):
    """Shared tail of the op units: per-channel requantizers and a credited output FIFO, or
    the serial datapath.

    A subclass's ``elaborate`` calls :meth:`_tail` with, per channel, the signed
    accumulator register and a flag that is high in the cycle after the accumulator was
    loaded with a finished value; results enter the FIFO :data:`OP_LATENCY` - 1 cycles
    after that. With ``lanes`` (1 <= lanes < channels) it calls :meth:`_serial` instead:
    a pixel per :func:`serial_period` cycles, the output register as the only buffer.
    """

    def __init__(self, ports: dict, out_record: dict, requant: dict, fifo_depth: int = OP_FIFO_DEPTH,
                 lanes: int | None = None):
        if fifo_depth < 1:
            raise HwError(f"op unit FIFO depth must be at least 1, got {fifo_depth}")
        self.out_channels = int(out_record["shape"][0])
        if lanes is not None and not 1 <= lanes <= self.out_channels:
            raise HwError(f"op unit lanes must be 1..{self.out_channels} (its channels), got {lanes}")
        #: requantizers working through a pixel group by group; None: one per channel
        self.lanes = None if lanes == self.out_channels else lanes
        self.fifo_depth = 1 if self.lanes else fifo_depth     # serial: the output register
        self.out_bits, self.out_signed = int(out_record["bits"]), bool(out_record["signed"])
        self.shift, (self.lo, self.hi) = int(requant["shift"]), (int(v) for v in requant["clamp"])
        super().__init__(ports)

    def _tail(self, m: Module, accs: list, loaded) -> Signal:
        """Requantize ``accs`` (loaded when ``loaded`` was high the cycle before) into the
        output FIFO; return the credit signal (room for one more result)."""
        fifo = m.submodules.fifo = credited_fifo(self.out_channels * self.out_bits, self.fifo_depth)
        outs = self._requantizers(m, accs)
        pipe = [loaded]
        for i in range(2):      # the requantizer's two stages
            v = Signal(name=f"rq_valid_{i}")
            m.d.sync += v.eq(pipe[-1])
            pipe.append(v)
        m.d.comb += [fifo.w_stream.payload.eq(Cat(*outs)), fifo.w_stream.valid.eq(pipe[-1]),
                     self.o.payload.eq(fifo.r_stream.payload), self.o.valid.eq(fifo.r_stream.valid),
                     fifo.r_stream.ready.eq(self.o.ready)]
        return fifo

    def _requantizers(self, m: Module, accs: list) -> list:
        """A :class:`hw.requant.Requantizer` per accumulator register (two stages); their outputs."""
        outs = []
        for c, acc in enumerate(accs):
            rq = m.submodules[f"requant_{c}"] = Requantizer(len(acc), self.shift, self.lo, self.hi,
                                                            element_shape(self.out_bits, self.out_signed))
            m.d.comb += rq.acc.eq(acc)
            outs.append(rq.out[:self.out_bits])
        return outs

    def _serial(self, m: Module, inputs: list, operand, acc_bits: int) -> None:
        """The serial datapath: per lane, each input's element of the current group (one
        multiplexer per input, into a register), ``operand(*elements)`` of them into a lane
        register of ``acc_bits``, the lanes' requantizers, each group's results into the
        output register."""
        full = Signal(name="full")                  # the output register holds a pixel
        issue, _, last_group, pipe = self._serial_issue(m, inputs, ~full)
        accs = self._serial_lanes(m, inputs, operand, acc_bits, issue, last_group, pipe[0])
        self._serial_output(m, self._requantizers(m, accs), pipe, full)

    def _serial_issue(self, m: Module, inputs: list, may_start) -> tuple:
        """The group sequence of the serial datapath: ``(issue, group, last_group, pipe)``. A
        pixel starts when every input is valid, ``may_start`` is high and the last pixel's
        groups have left the pipeline; its groups issue one a cycle (``issue`` high, ``group``
        counting, ``last_group`` high with the last), and the inputs, read in place, transfer
        with the last group. ``pipe[i]`` is ``issue`` delayed ``i + 1`` cycles
        (:data:`SERIAL_LATENCY` stages)."""
        G = serial_groups(self.out_channels, self.lanes)
        busy = Signal()                             # a pixel's groups after the first are being issued
        issue, last_group = Signal(name="issue"), Signal(name="last_group")
        group = self._group_counter(m, "group", issue, last_group)
        pipe = _valid_pipe(m, issue, "lane_valid")
        start = Signal()
        m.d.comb += start.eq(~busy & may_start & ~Cat(*pipe).any() & Cat(*(p.valid for p in inputs)).all())
        m.d.comb += issue.eq(start | busy)
        with m.If(issue):
            with m.If(last_group):
                m.d.sync += [last_group.eq(0), busy.eq(0)]
            with m.Else():
                m.d.sync += [last_group.eq(group == G - 2), busy.eq(1)]
        # the inputs are read in place: they transfer with the last group (registers only)
        m.d.comb += [p.ready.eq(busy & last_group) for p in inputs]
        return issue, group, last_group, pipe

    def _group_counter(self, m: Module, name: str, issue, last_group) -> Signal:
        """A register counting the issued groups of a pixel (0 after the last)."""
        group = Signal(range(serial_groups(self.out_channels, self.lanes)), name=name)
        with m.If(issue):
            m.d.sync += group.eq(Mux(last_group, 0, group + 1))
        return group

    def _serial_lanes(self, m: Module, inputs: list, operand, acc_bits: int, issue, last_group, load) -> list:
        """Per lane, each input's element of the issued group into a register when ``issue``
        is high, then ``operand(*elements)`` into the lane register when ``load`` is (the next
        cycle); returns the lane registers. The group multiplexers and the operand's adder
        each get a cycle (a 64-way multiplexer and an adder behind it did not fit 6.7 ns on
        ECP5), and each input's multiplexers have a group counter of their own, which the
        placer can put by that input's payload (one counter for all was a worst path, a long
        route to the far input's multiplexers). ``inputs`` need only a ``payload`` (an array
        of the channels' elements)."""
        L, G = self.lanes, serial_groups(self.out_channels, self.lanes)
        selects = [self._group_counter(m, f"group_in_{k}", issue, last_group) for k in range(len(inputs))]
        accs = [_acc_register(m, f"lane_{l}", acc_bits) for l in range(L)]
        for l, acc in enumerate(accs):
            elems = []
            for k, p in enumerate(inputs):
                e = _lane_element(p, l, L, G, selects[k])
                r = Signal(e.shape(), name=f"lane_{l}_in_{k}", reset_less=True)
                with m.If(issue):
                    m.d.sync += r.eq(e)
                elems.append(r)
            with m.If(load):
                m.d.sync += acc.eq(operand(*elems))
        return accs

    def _serial_output(self, m: Module, outs: list, pipe: list, full) -> None:
        """The output register, in chunks of groups: a write (``pipe[-1]``: the group's
        requantized results ``outs``) shifts the group into its chunk from the top (no
        multiplexer), under the chunk's own clock enable, a flip-flop set the cycle before
        (one enable for the whole pixel was a long, wide net on a full part). After the G-th
        write group g sits at channels g*L.. (the last group's lanes beyond the channels fall
        off the payload) and ``full`` is set until the pixel leaves."""
        C, L, ob = self.out_channels, self.lanes, self.out_bits
        G = serial_groups(C, L)
        write, last_write = Signal(range(G), name="write"), Signal(init=G == 1, name="last_write")
        write_next = Mux(pipe[-1], Mux(last_write, 0, write + 1), write)
        m.d.sync += [write.eq(write_next), last_write.eq(write_next == G - 1)]
        out = []
        for k, groups in enumerate(serial_chunks(C, L, ob)):
            enable, word = Signal(name=f"out_chunk_{k}_en"), Signal(len(groups) * L * ob, name=f"out_chunk_{k}",
                                                                    reset_less=True)
            m.d.sync += enable.eq(pipe[-2] & (write_next >= groups.start) & (write_next < groups.stop))
            with m.If(enable):
                m.d.sync += word.eq(Cat(word[L * ob:], *outs))
            out.append(word)
        with m.If(pipe[-1] & last_write):
            m.d.sync += full.eq(1)
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        m.d.comb += [self.o.payload.eq(Cat(*out)[:C * ob]), self.o.valid.eq(full)]


def _valid_pipe(m: Module, source, name: str) -> list:
    """``source`` delayed 1 .. :data:`SERIAL_LATENCY` cycles: the serial datapath's stage flags."""
    pipe = [Signal(name=f"{name}_{i}") for i in range(SERIAL_LATENCY)]
    m.d.sync += [b.eq(a) for a, b in zip([source, *pipe], pipe)]
    return pipe


def _lane_element(port, lane: int, lanes: int, groups: int, group):
    """Element ``group * lanes + lane`` of ``port``'s pixel (zero past its channels), as the
    element's shape: a multiplexer over the ``groups`` channels of the lane."""
    layout = port.payload.shape()
    elem = Shape.cast(layout.elem_shape)
    raw = Value.cast(port.payload)
    words = [raw[c * elem.width:(c + 1) * elem.width] if c < layout.length else Const(0, elem.width)
             for c in range(lane, groups * lanes, lanes)]
    word = Cat(*words).word_select(group, elem.width)
    return word.as_signed() if elem.signed else word


def _acc_register(m: Module, name: str, bits: int) -> Signal:
    return Signal(signed(bits), name=name, reset_less=True)   # data: qualified by the valid pipeline


class RequantUnit(_OpUnit):
    """``op: requant`` (docs/artifact.md 3.4): ``out = requant(in)`` per element, one pixel per
    cycle (serial with ``lanes``: a pixel per :func:`serial_period` cycles).

    Members: ``i`` In(signature of ``layer['in']``), ``o`` Out(signature of ``layer['out']``).
    """

    def __init__(self, layer: dict, fifo_depth: int = OP_FIFO_DEPTH, lanes: int | None = None):
        self.in_record = layer["in"]
        super().__init__({"i": In(signature_of(layer["in"])), "o": Out(signature_of(layer["out"]))},
                         layer["out"], layer["requant"], fifo_depth, lanes)

    def elaborate(self, platform):
        m = Module()
        ib, s = int(self.in_record["bits"]), bool(self.in_record["signed"])
        if self.lanes:
            self._serial(m, [self.i], lambda x: x, ib + (0 if s else 1))
            return m
        accept = Signal()
        accs = [_acc_register(m, f"x_{c}", ib + (0 if s else 1)) for c in range(self.out_channels)]
        with m.If(accept):
            m.d.sync += [a.eq(self.i.payload[c]) for c, a in enumerate(accs)]
        loaded = Signal()
        m.d.sync += loaded.eq(accept)
        fifo = self._tail(m, accs, loaded)
        credit = _credit(m, accept, fifo.r_stream.valid & fifo.r_stream.ready, self.fifo_depth)
        m.d.comb += [self.i.ready.eq(credit), accept.eq(self.i.valid & credit)]
        return m


class AddUnit(_OpUnit):
    """``op: add`` (docs/artifact.md 3.3): ``out = requant((a << sa) + (b << sb))`` per element.

    A pixel is taken from both inputs in the same cycle (``a.ready`` follows ``b.valid``
    and the credit; ``b.ready`` likewise), one pixel per cycle. Serial (``lanes``): it starts
    when both are valid, reads both in place, and both transfer with the last group.

    Members: ``a``, ``b`` In(signatures of the producers' ``out`` records), ``o`` Out.
    """

    def __init__(self, layer: dict, a_record: dict, b_record: dict, fifo_depth: int = OP_FIFO_DEPTH,
                 lanes: int | None = None):
        self.records = (a_record, b_record)
        self.align = tuple(int(v) for v in layer["align"])
        self.acc_bits = int(layer["acc"]["bits"])
        super().__init__({"a": In(signature_of(a_record)), "b": In(signature_of(b_record)),
                          "o": Out(signature_of(layer["out"]))}, layer["out"], layer["requant"], fifo_depth, lanes)

    def elaborate(self, platform):
        m = Module()
        if self.lanes:
            self._serial(m, [self.a, self.b], lambda a, b: (a << self.align[0]) + (b << self.align[1]),
                         self.acc_bits)
            return m
        accept = Signal()
        accs = [_acc_register(m, f"sum_{c}", self.acc_bits) for c in range(self.out_channels)]
        with m.If(accept):
            m.d.sync += [acc.eq((self.a.payload[c] << self.align[0]) + (self.b.payload[c] << self.align[1]))
                         for c, acc in enumerate(accs)]
        loaded = Signal()
        m.d.sync += loaded.eq(accept)
        fifo = self._tail(m, accs, loaded)
        credit = _credit(m, accept, fifo.r_stream.valid & fifo.r_stream.ready, self.fifo_depth)
        m.d.comb += [accept.eq(self.a.valid & self.b.valid & credit),
                     self.a.ready.eq(self.b.valid & credit), self.b.ready.eq(self.a.valid & credit)]
        return m


class GlobalSumPoolUnit(_OpUnit):
    """``op: global_sum_pool`` (docs/artifact.md 3.6): per channel, the sum over the frame's
    ``H*W`` pixels, requantized; one output beat (the ``[C]`` vector) per frame.

    One pixel per cycle into an accumulator and a requantizer per channel; serial (``lanes``):
    a pixel per :func:`serial_period` cycles, its groups added ``lanes`` channels a cycle into
    the accumulators (registers read through the lanes' multiplexers and written back group
    by group), and the frame's last pixel through the lanes' requantizers into the output
    register: one adder and one requantizer per lane instead of per channel.

    Members: ``i`` In(signature of ``layer['in']``), ``o`` Out(signature of ``layer['out']``).
    """

    def __init__(self, layer: dict, fifo_depth: int = OP_FIFO_DEPTH, lanes: int | None = None):
        self.in_record = layer["in"]
        self.pixels = int(layer["in"]["shape"][1]) * int(layer["in"]["shape"][2])
        self.acc_bits = int(layer["acc"]["bits"])
        super().__init__({"i": In(signature_of(layer["in"])), "o": Out(signature_of(layer["out"]))},
                         layer["out"], layer["requant"], fifo_depth, lanes)

    def _frame_position(self, m: Module, advance) -> tuple:
        """``(first, last)``: whether the next pixel to arrive is its frame's first or last;
        they move on when ``advance`` is high (a pixel transfers)."""
        count = Signal(range(self.pixels))
        first, last = Signal(init=1, name="first"), Signal(init=self.pixels == 1, name="last")
        with m.If(advance):
            m.d.sync += [count.eq(Mux(last, 0, count + 1)), first.eq(last),
                         last.eq((self.pixels == 1) | (count == self.pixels - 2))]
        return first, last

    def elaborate(self, platform):
        m = Module()
        if self.lanes:
            self._serial_pool(m)
            return m
        accept = Signal()
        first, last = self._frame_position(m, accept)
        accs = [_acc_register(m, f"sum_{c}", self.acc_bits) for c in range(self.out_channels)]
        with m.If(accept):
            m.d.sync += [acc.eq(Mux(first, 0, acc) + self.i.payload[c]) for c, acc in enumerate(accs)]
        loaded = Signal()
        m.d.sync += loaded.eq(accept & last)
        fifo = self._tail(m, accs, loaded)
        credit = _credit(m, accept & last, fifo.r_stream.valid & fifo.r_stream.ready, self.fifo_depth)
        # Only a frame's last pixel needs room in the FIFO; the others are always taken.
        m.d.comb += [self.i.ready.eq(~last | credit), accept.eq(self.i.valid & (~last | credit))]
        return m

    def _serial_pool(self, m: Module) -> None:
        C, L = self.out_channels, self.lanes
        G = serial_groups(C, L)
        sums = Signal(data.ArrayLayout(signed(self.acc_bits), C), name="sums")
        full = Signal(name="full")
        first, last = self._frame_position(m, self.i.valid & self.i.ready)
        # a frame's last pixel waits for the output register; the others only for the lanes
        issue, group, last_group, pipe = self._serial_issue(m, [self.i], ~last | ~full)
        first_in = Signal(name="first_in")          # of the pixel whose group the lane inputs hold
        with m.If(issue):
            m.d.sync += first_in.eq(first)
        accs = self._serial_lanes(m, [self.i, _Payload(sums)], lambda x, s: Mux(first_in, 0, s) + x,
                                  self.acc_bits, issue, last_group, pipe[0])
        # write-back: the lane registers (loaded at pipe[0]) into their group's accumulators;
        # the next pixel starts only once the pipeline is empty, so it reads the new sums
        in_group, lane_group = Signal(range(G), name="in_group"), Signal(range(G), name="lane_group")
        with m.If(issue):
            m.d.sync += in_group.eq(group)
        m.d.sync += lane_group.eq(in_group)
        for g in range(G):
            with m.If(pipe[1] & (lane_group == g)):
                m.d.sync += [sums[g * L + l].eq(accs[l]) for l in range(L) if g * L + l < C]
        # the output register takes the requantized groups of a frame's last pixel only
        out_pipe = _valid_pipe(m, issue & last, "out_valid")
        self._serial_output(m, self._requantizers(m, accs), out_pipe, full)


class _Payload:
    """A register array read in place by the serial lanes as if it were a stream's payload."""

    def __init__(self, payload):
        self.payload = payload


class MaxPoolUnit(wiring.Component):
    """``op: maxpool`` (docs/artifact.md 3.5): per channel, the maximum of each
    ``kernel x kernel`` window. A :class:`~hw.swg.SlidingWindowGenerator` holds the rows;
    the unit reads each window in place one pixel (``channels`` elements) per cycle and
    keeps a running maximum, so a window takes ``kernel**2`` cycles. Padded positions
    read as the element's minimum (the generator's ``pad``), so they never win.

    Members: ``i`` In(signature of ``layer['in']``), ``o`` Out(signature of ``layer['out']``).
    """

    def __init__(self, layer: dict, line_rows: int | None = None):
        rec = layer["in"]
        self.channels, h, w = (int(v) for v in rec["shape"])
        self.bits, self.is_signed = int(rec["bits"]), bool(rec["signed"])
        self.kernel, stride, padding = int(layer["kernel"]), int(layer["stride"]), int(layer["padding"])
        self.swg = SlidingWindowGenerator(self.channels, h, w, self.bits, self.kernel, stride, padding,
                                          rows=line_rows, simd=self.channels, signed=self.is_signed,
                                          pad=int_range(self.bits, self.is_signed)[0])
        sig = signature_of(rec)
        super().__init__({"i": In(sig), "o": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        C, B, words = self.channels, self.bits, self.kernel * self.kernel
        shape = element_shape(B, self.is_signed)
        m.submodules.swg = swg = self.swg
        m.d.comb += [swg.pix_in.payload.eq(self.i.payload.as_value()), swg.pix_in.valid.eq(self.i.valid),
                     self.i.ready.eq(swg.pix_in.ready)]
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=C * B, depth=OP_FIFO_DEPTH)

        # read the offered window's pixels 0 .. k*k-1; release it with the last read
        word = Signal(range(words))
        at_first, at_last = Signal(init=1, name="at_first"), Signal(init=words == 1, name="at_last")
        credit = Signal()
        go = Signal()
        m.d.comb += [go.eq(swg.win_out.valid & (~at_first | credit)), swg.rd.step.eq(go),
                     swg.win_out.ready.eq(go & at_last)]
        with m.If(go):
            m.d.sync += [word.eq(Mux(at_last, 0, word + 1)), at_first.eq(at_last),
                         at_last.eq((words == 1) | (~at_last & (word == words - 2)))]
        # the read data arrives WINDOW_READ_LATENCY cycles after its step
        pipe = [(go, at_first, at_last)]
        for i in range(WINDOW_READ_LATENCY):
            d = (Signal(name=f"rd_valid_{i}"), Signal(name=f"rd_first_{i}"), Signal(name=f"rd_last_{i}"))
            m.d.sync += [a.eq(b) for a, b in zip(d, pipe[-1])]
            pipe.append(d)
        dv, dfirst, dlast = pipe[-1]
        cur = [Signal(shape, name=f"max_{c}", reset_less=True) for c in range(C)]
        with m.If(dv):
            for c in range(C):
                v = swg.rd.data.word_select(c, B)
                v = v.as_signed() if self.is_signed else v.as_unsigned()
                m.d.sync += cur[c].eq(Mux(dfirst | (v > cur[c]), v, cur[c]))
        done = Signal()
        m.d.sync += done.eq(dv & dlast)
        m.d.comb += [fifo.w_stream.payload.eq(Cat(*cur)), fifo.w_stream.valid.eq(done),
                     self.o.payload.eq(fifo.r_stream.payload), self.o.valid.eq(fifo.r_stream.valid),
                     fifo.r_stream.ready.eq(self.o.ready)]
        m.d.comb += credit.eq(_credit(m, go & at_first, fifo.r_stream.valid & fifo.r_stream.ready, OP_FIFO_DEPTH))
        return m
