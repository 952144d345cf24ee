"""Sliding-window generator (SWG): a pixel stream in, k x k windows read in place.

Input: one pixel per beat (``channels`` elements), frames of ``height x width``
pixels in raster order, back to back.

Windows: one for each output pixel ``(oy, ox)`` in raster order, ``oy < out_height``,
``ox < out_width``: the ``kernel x kernel`` block of input pixels at rows
``oy*stride - padding + ky`` and columns ``ox*stride - padding + kx``, in vector
order (element ``(ky*kernel + kx) * channels + c`` is channel ``c`` of window pixel
``(ky, kx)``, as :mod:`hw.spec` states); every channel of a position outside the
image holds ``pad``.

A window is not copied anywhere: its reader (a matrix-vector unit) reads it in place
from the line buffers, a word of ``simd`` elements per cycle:

* ``win_out`` is a stream of window tokens: ``valid`` (a register) says that the next window in
  raster order can be read (its last needed input pixel is in the line buffers); the
  transfer releases it, so the reader raises ``ready`` with its last read. The 1-bit
  payload is 1 for the last window of a frame.
* ``rd.step`` (from the reader): read the next word of the offered window in this cycle.
  Word ``w`` of ``SF = ceil(kernel**2 * channels / simd)`` (:func:`window_words`) holds
  window elements ``[w*simd, (w+1)*simd)``; elements past the window's end are
  unspecified (the matrix-vector unit's weights there are zero). After word ``SF - 1``
  the words start again at 0, so a reader may read a window several times (once per
  neuron fold) before it takes it; a step and the transfer may come in the same cycle.
* ``rd.data``: the word of the step :data:`WINDOW_READ_LATENCY` cycles earlier (a
  register).
* ``elements`` (a *flat* read, for a reader that folds its whole weight matrix flat, see
  :class:`hw.mvu.MatrixVectorUnit`): the reader reads ``elements`` (a multiple of the
  window's ``kernel**2 * channels``) elements per window instead of one window, word ``w``
  holding elements ``[w*simd, (w+1)*simd)`` of the window repeated end to end (element
  ``e`` is window element ``e mod (kernel**2 * channels)``), so a word may run from the
  window's last pixel into its first; after ``ceil(elements / simd)`` words they start
  again at 0.

Throughput: one word per cycle, back to back across windows (the next window's words
can be read in the cycle after the transfer), so a window costs its reader ``SF`` cycles
per read and the generator adds no floor (:func:`swg_period`); one input pixel per cycle.

Storage: ``rows`` line buffers (row slots of ``width`` pixels in one memory) used as a
ring of image rows that continues across frames, with one read port per pixel that a
word can span (:func:`window_ports`, at most :func:`max_ports`; synthesis copies the
memory per port). A row slot is overwritten only when no window still to be released
needs the row it holds, and a window is offered only when its last needed input pixel
has arrived (pixel-exact dependency tracking), so the writer can run up to two frames
ahead of the reader (it may finish the next frame while the reader is still on this one:
where every window needs the whole frame, the next frame's first window is then readable
as soon as this frame's last is released). ``rows >= kernel + stride`` keeps the stream flowing; the default
adds one more row of slack.

Read pipeline (:data:`WINDOW_READ_LATENCY` = 3): cycle 0 the step, the read addresses
one multiplexer after registers; cycle 1 the line-buffer data (each port one pixel) and
whether it is inside the image; cycle 2 padded pixels, coarse shift; cycle 3 fine shift
to the word. A word starts at element ``(w*simd) mod channels`` of its first pixel: a
multiplexer of ``channels / gcd(channels, simd)`` ways (one way when ``simd`` divides
``channels`` or is a multiple of it), split over the two shift cycles. Line buffers in
block RAM (a large ring) are read a cycle later than LUT RAM's asynchronous read: their
data goes straight into the padded-pixel registers (cycle 2), and the whole shift is
cycle 3, so the latency is the same.
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.vendor import SiliconBluePlatform

from artifact import conv_out_hw, int_range

from .spec import HwError

__all__ = ["SlidingWindowGenerator", "WINDOW_READ_LATENCY", "window_read_signature", "window_words",
           "window_ports", "max_ports", "swg_period", "default_rows"]


#: Largest line-buffer ring (row slots x padded width, in pixels) kept in LUT RAM.
DISTRIBUTED_MAX_DEPTH = 128

#: Cycles from a ``rd.step`` to its word on ``rd.data``.
WINDOW_READ_LATENCY = 3

#: Elements of a shift stage that share one copy of the shift select.
SELECT_GROUP = 4


def window_read_signature(word_bits: int) -> wiring.Signature:
    """The reader's side of a window read port: ``step`` out, ``data`` (``word_bits``) in."""
    return wiring.Signature({"step": Out(1), "data": In(unsigned(word_bits))})


def window_words(channels: int, kernel: int, simd: int, elements: int | None = None) -> int:
    """Words of ``simd`` elements per window (``SF`` of the reading matrix-vector unit), or per
    flat read of ``elements`` elements (its cycles per vector)."""
    return -(-(kernel * kernel * channels if elements is None else elements) // simd)


@lru_cache(maxsize=None)
def _word_spans(channels: int, kernel: int, simd: int, elements: int | None = None) -> tuple[tuple[int, int, int], ...]:
    """``(first pixel, first channel, pixels spanned)`` of every word of a window read (or of
    a flat read of ``elements`` elements; pixels counted around the window)."""
    n_pix = kernel * kernel
    n = n_pix * channels if elements is None else elements
    out = []
    for w in range(window_words(channels, kernel, simd, elements)):
        e0, e1 = w * simd, min((w + 1) * simd, n) - 1
        out.append(((e0 // channels) % n_pix, e0 % channels, e1 // channels - e0 // channels + 1))
    return tuple(out)


def window_ports(channels: int, kernel: int, simd: int, elements: int | None = None) -> int:
    """Line-buffer read ports a reader of ``simd``-element words needs (reading ``elements``
    per window when flat): the most window pixels that one word spans (1 when ``simd``
    divides ``channels``)."""
    if elements is not None:
        # full words repeat their start channel every channels / gcd words, and the last word
        # spans no more than a full one: the first period (plus one) of words has the maximum
        period = channels // gcd(channels, simd) + 1
        elements = min(elements, period * simd + kernel * kernel * channels)
    return max(p for _, _, p in _word_spans(channels, kernel, simd, elements))


def max_ports(kernel: int) -> int:
    """Most line-buffer read ports (memory copies) a generator builds: ``max(kernel, 2)``."""
    return max(kernel, 2)


def swg_period(kernel: int) -> int:
    """Minimum cycles between two windows leaving the generator, for any kernel: 1 (a window
    is read in place; its reader's words per window set the pace)."""
    return 1


def default_rows(kernel: int, stride: int) -> int:
    """Line buffers (rows of the ring) used by default: the ``kernel`` rows a window reads and
    the ``stride`` rows the writer fills meanwhile. A row more costs ring memory and gained no
    cycle on the networks measured (the writer waits on the reader only at row boundaries)."""
    return kernel + stride


def _wrap(value, modulus: int):
    """``value mod modulus`` for ``0 <= value < 2 * modulus`` (ring-slot arithmetic)."""
    return Mux(value >= modulus, value - modulus, value)


def _is_ice40(platform) -> bool:
    """Whether ``platform`` is an Amaranth iCE40 platform (SiliconBlue; no LUT RAM)."""
    return isinstance(platform, SiliconBluePlatform)


def _table(values, shape) -> Array:
    return Array(Const(v, shape) for v in values)


class SlidingWindowGenerator(wiring.Component):
    """k x k window generator with line buffers, stride and padding, read in place.

    Parameters
    ----------
    channels, height, width : int
        Input pixel channels and frame size.
    bits : int
        Element width (two's complement when ``signed``).
    kernel, stride, padding : int
        Window geometry; ``padding < kernel``.
    rows : int or None
        Line buffers in the ring (default :func:`default_rows`).
    simd : int or None
        Elements per read word, ``1 <= simd <= kernel**2 * channels`` with at most
        :func:`max_ports` pixels per word (default ``channels``: one pixel per word).
    signed : bool
        Whether elements are signed (only for the range of ``pad``).
    pad : int
        Element value of positions outside the image (0: zero padding; a max-pool wants
        the minimum), in the element's range.
    elements : int or None
        A flat read (see the module doc): elements read per window, a multiple of
        ``kernel**2 * channels`` (None: the window once per read).
    lut_ram : bool or None
        Line buffers in LUT RAM (True) or block RAM (False); None: LUT RAM up to
        :data:`DISTRIBUTED_MAX_DEPTH` pixels where the platform has it (not iCE40).

    Members
    -------
    pix_in : In(stream.Signature(unsigned(channels * bits)))
    win_out : Out(stream.Signature(unsigned(1)))
        Window tokens (see the module doc); payload: the window is its frame's last.
    rd : In(window_read_signature(simd * bits))
        ``rd.step`` in, ``rd.data`` out: element ``j`` of the word at bits ``[j*bits, (j+1)*bits)``.
    """

    def __init__(self, channels: int, height: int, width: int, bits: int, kernel: int, stride: int = 1,
                 padding: int = 0, rows: int | None = None, *, simd: int | None = None, signed: bool = False,
                 pad: int = 0, elements: int | None = None, lut_ram: bool | None = None):
        simd = channels if simd is None else simd
        self.out_height, self.out_width, self.rows = self.check(height, width, kernel, stride, padding, rows,
                                                                channels=channels, simd=simd, elements=elements)
        lo, hi = int_range(bits, signed)
        if isinstance(pad, bool) or not isinstance(pad, int) or not lo <= pad <= hi:
            raise HwError(f"sliding window: pad {pad!r} is not a {bits}-bit {'signed' if signed else 'unsigned'} "
                          f"element ({lo}..{hi})")
        self.channels, self.height, self.width, self.bits = channels, height, width, bits
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.simd, self.signed, self.pad, self.elements = simd, signed, pad, elements
        self.lut_ram = lut_ram
        self.words = window_words(channels, kernel, simd, elements)
        self.ports = window_ports(channels, kernel, simd, elements)     # pixels a word spans
        self.read_ports = self.ports                            # line-buffer read ports built
        if simd < channels and self.ports == 2:
            # A word of fewer elements than a pixel spans at most two pixels, and a word across
            # a boundary starts in the previous word's last pixel: one port and a register of
            # that pixel can replace the second port, whose memory copy holds the SIMD - 1
            # channels a word can reach into the next pixel (synthesis drops the others).
            # The register and its multiplexer cost about a LUT4 and a flip-flop per pixel
            # bit; the copy costs 6 LUT4 positions per 4 bits of each 16-word range of LUT
            # RAM (a TRELLIS_DPR16X4), so the register is used where the copy costs more.
            ranges = -(-(self.rows << max(1, (width - 1).bit_length())) // 16)
            if 3 * ranges * (simd - 1) > 2 * channels:
                self.read_ports = 1
        super().__init__({
            "pix_in": In(stream.Signature(unsigned(channels * bits))),
            "win_out": Out(stream.Signature(unsigned(1))),
            "rd": In(window_read_signature(simd * bits)),
        })

    @staticmethod
    def check(height: int, width: int, kernel: int, stride: int, padding: int, rows: int | None = None, *,
              channels: int | None = None, simd: int | None = None,
              elements: int | None = None) -> tuple[int, int, int]:
        """Validate a geometry (and, given ``channels`` and ``simd``, the word width and a flat
        read's ``elements``); return ``(out_height, out_width, rows)`` or raise HwError."""
        if padding >= kernel:
            raise HwError(f"sliding window: padding {padding} must be smaller than kernel {kernel}")
        oh, ow = conv_out_hw(height, width, kernel, stride, padding)
        if oh < 1 or ow < 1:
            raise HwError(f"sliding window: a {kernel}x{kernel} kernel does not fit a {height}x{width} image")
        rows = rows or default_rows(kernel, stride)
        if rows < kernel + stride:
            raise HwError(f"sliding window: needs at least kernel+stride={kernel + stride} line buffers, got {rows}")
        if channels is not None and simd is not None:
            n = kernel * kernel * channels
            if not 1 <= simd <= n:
                raise HwError(f"sliding window: SIMD={simd} must be between 1 and the {n} window elements")
            if elements is not None and (isinstance(elements, bool) or not isinstance(elements, int)
                                         or elements < n or elements % n):
                raise HwError(f"sliding window: a flat read of {elements!r} elements is not a positive multiple "
                              f"of the {n} window elements")
            if window_ports(channels, kernel, simd, elements) > max_ports(kernel):
                raise HwError(f"sliding window: a word of SIMD={simd} elements spans "
                              f"{window_ports(channels, kernel, simd, elements)} pixels of {channels} channels; at most "
                              f"{max_ports(kernel)} (line-buffer read ports) for a {kernel}x{kernel} window")
        return oh, ow, rows

    @property
    def buffer_bits(self) -> int:
        """Line-buffer storage in bits (one copy; the memory has :attr:`ports` read ports)."""
        return self.rows * self.width * self.channels * self.bits

    @property
    def shift_ways(self) -> int:
        """Start offsets a word can have in its first pixel (ways of the word multiplexer)."""
        return self.channels // gcd(self.channels, self.simd)

    def elaborate(self, platform):
        m = Module()
        C, H, W, K, S, P, B = (self.channels, self.height, self.width, self.kernel, self.stride,
                               self.padding, self.rows)
        Ho, Wo = self.out_height, self.out_width
        SIMD, SF, NP, eb = self.simd, self.words, self.read_ports, self.bits
        pw = C * eb

        # ---- line buffers: one ring memory, slot b at addresses [b*Wp, b*Wp + W) -------------
        # (Wp = W rounded up to a power of two, so an address is Cat(column, slot), no adder),
        # with one read port per pixel a word spans
        col_bits = max(1, (W - 1).bit_length())
        depth = B << col_bits
        # up to DISTRIBUTED_MAX_DEPTH rows x columns, LUT RAM: a block RAM's clock-to-out
        # (4.3 ns on ECP5) would leave too little of the padding/shift cycle (iCE40 has no LUT RAM)
        lut_ram = (depth <= DISTRIBUTED_MAX_DEPTH and not _is_ice40(platform)) if self.lut_ram is None \
            else self.lut_ram
        # (no_rw_check: the reader never reads a pixel the writer is writing; yosys honours it
        # where it merges a read register into the port, and otherwise adds a write-data bypass)
        attrs = {"ram_style": "distributed"} if lut_ram else {"no_rw_check": 1}
        ring = m.submodules.ring = Memory(shape=unsigned(pw), depth=depth, init=[], attrs=attrs)
        wport = ring.write_port()
        # read asynchronously: LUT RAM's read register is built below, with the padding; a block
        # RAM's is a register of its own there, which yosys merges into the port
        rports = [ring.read_port(domain="comb") for _ in range(NP)]

        # ---- write side: position of the next input pixel ------------------------------
        wy = Signal(range(H), name="wy")
        wx = Signal(col_bits, name="wx")                # column (< W), as wide as the address field
        widx = Signal(range(H * W), name="widx")        # wy * W + wx (pixels of the frame written)
        wslot = Signal(range(B), name="wslot")          # ring slot of row wy
        ahead = Signal(range(3))                        # frames the writer finished that the reader has not

        # ---- read side: the window offered on win_out ------------------------------------
        oy = Signal(range(Ho), name="oy")
        ox = Signal(range(Wo), name="ox")
        rbase = Signal(range(B))                        # ring slot of row 0 of the frame being read
        # per kernel row: ring slot of row oy*S - P + ky (rows < 0 included), and whether the
        # row is inside the image; per kernel column: the column's address bits (two's
        # complement low bits, any slot column when outside) and whether it is inside
        slot_row = [Signal(range(B), init=(ky - P) % B, name=f"slot_row_{ky}") for ky in range(K)]
        row_ok = [Signal(name=f"row_ok_{ky}", init=0 <= ky - P < H) for ky in range(K)]
        col_lo = [Signal(col_bits, name=f"col_{kx}", init=(kx - P) % (1 << col_bits)) for kx in range(K)]
        col_ok = [Signal(name=f"col_ok_{kx}", init=0 <= kx - P < W) for kx in range(K)]

        # Dependency: window (oy, ox) needs input pixel `need` (raster index in its frame);
        # the last window of a frame needs the whole frame (so the reader never passes the
        # writer): it is offered only once the writer has finished the frame. `need` is a register
        # loaded with the next window's value when a window is taken.
        def need_of(o_y, o_x):
            if (o_y, o_x) == (Ho - 1, Wo - 1):
                return H * W - 1
            return min(o_y * S - P + K - 1, H - 1) * W + min(o_x * S - P + K - 1, W - 1)
        # `need_after` holds the next window's `need` (loaded on a take from a table two
        # windows ahead), so that the valid register's next value compares registers only.
        n_windows = Ho * Wo
        need_at = [need_of(*divmod(i, Wo)) for i in range(n_windows)]
        need = Signal(range(H * W), init=need_at[0])
        need_after = Signal(range(H * W), init=need_at[1 % n_windows])
        # win_out.valid = (ahead != 0) | (widx > need), as a register: it enables the reader's
        # fold counters, and a compare before that would be the whole network's critical path
        valid = Signal()
        take = Signal()
        m.d.comb += [self.win_out.valid.eq(valid),
                     self.win_out.payload.eq((oy == Ho - 1) & (ox == Wo - 1)),
                     take.eq(valid & self.win_out.ready)]

        # Write permission: the slot of row wy holds row wy - B (of this or the previous frame);
        # it is free when every window still to be released starts below that row, i.e. when
        # dist = ahead * H + wy - max(oy*S - P, 0) < B. `pix_in.ready` is a register
        # (HW_REQUESTS item 5): `dist` is a counter, +1 when the writer finishes a row and
        # -`released` (rows the reader gave up, through two registers) two cycles after the
        # reader moves to its next row of windows. The permission for the next cycle is
        # `dist + row_end < B` with this cycle's release left out (it counts a cycle later):
        # one compare of a register, no adder before it. Reader events reach the writer
        # late, which can only delay a permission; a released row's slot is written 4 cycles
        # after the transfer at the earliest, after the window's last read (cycle 1).
        dist = Signal(signed(max(H, Ho * S, P).bit_length() + 4))
        released = Signal(range(H + 1))                 # rows the reader released (2 cycles ago)
        stepped = Signal()                              # the reader moved to its next row of windows last cycle
        stepped_rows = Signal(range(H + 1))             # rows that step released (loaded every cycle)
        m.d.sync += released.eq(Mux(stepped, stepped_rows, 0))
        frame_read_r = Signal()                         # the reader finished a frame (2 cycles ago)
        frame_read_d = Signal()
        ahead_w = Signal(range(3))                      # `ahead` as the writer sees it (reads 2 cycles late)
        at_last = Signal(init=H * W == 1)               # (wy, wx) is the frame's last pixel
        row_end = Signal(init=W == 1)                   # wx == W - 1 (a register, as at_last)
        ready = Signal(init=1)
        m.d.comb += self.pix_in.ready.eq(ready)
        write = self.pix_in.valid & ready
        m.d.comb += [wport.addr.eq(Cat(wx, wslot)), wport.data.eq(self.pix_in.payload), wport.en.eq(write)]
        frame_written = Signal()
        m.d.comb += frame_written.eq(write & at_last)
        if H * W == 1:
            next_is_last = Const(1)
        elif W > 1:
            next_is_last = (wy == H - 1) & (wx == W - 2)
        else:
            next_is_last = wy == H - 2
        # next values with and without a write this cycle, from registers only; `write` then
        # only selects (it follows pix_in.valid, which comes from the upstream unit)
        nxt = {}
        for w in (0, 1):
            d = dist + row_end - released if w else dist - released
            room = Mux(row_end, dist < B - 1, dist < B) if w else dist < B
            a = ahead_w + at_last - frame_read_r if w else ahead_w - frame_read_r
            last = next_is_last if w else at_last
            nxt[w] = (d, a, last, room & ~((a == 2) & last))     # at most two frames ahead
        m.d.sync += [reg.eq(Mux(write, with_write, without))
                     for reg, with_write, without in zip((dist, ahead_w, at_last, ready), nxt[1], nxt[0])]
        with m.If(write):
            m.d.sync += widx.eq(Mux(at_last, 0, widx + 1))
            with m.If(row_end):
                m.d.sync += [wx.eq(0), row_end.eq(W == 1), wy.eq(Mux(wy == H - 1, 0, wy + 1)),
                             wslot.eq(_wrap(wslot + 1, B))]
            with m.Else():
                m.d.sync += [wx.eq(wx + 1), row_end.eq(wx == W - 2)]

        # ---- reader: the next window when one is taken ------------------------------------
        # (next values from tables indexed by oy / ox, so no adder or compare precedes them)
        def cols(o_x):
            return [((o_x * S - P + kx) % (1 << col_bits), 0 <= o_x * S - P + kx < W) for kx in range(K)]

        def rows_ok(o_y):
            return [0 <= o_y * S - P + ky < H for ky in range(K)]

        frame_read = Signal()
        row_step = Signal()                             # the reader moves to its next row of windows
        m.d.comb += [row_step.eq(take & (ox == Wo - 1)), frame_read.eq(row_step & (oy == Ho - 1))]
        tops = [max(o * S - P, 0) for o in range(Ho)] + [H]     # top row of each row of windows
        m.d.sync += [stepped.eq(row_step), stepped_rows.eq(_table([tops[o + 1] - tops[o] for o in range(Ho)],
                                                                  range(H + 1))[oy]),
                     frame_read_d.eq(frame_read), frame_read_r.eq(frame_read_d)]
        need_two_after = Array(_table([need_at[(o_y * Wo + o_x + 2) % n_windows] for o_x in range(Wo)],
                                      range(H * W)) for o_y in range(Ho))
        next_cols = [cols((o_x + 1) % Wo) for o_x in range(Wo)]
        next_rows = [rows_ok((o_y + 1) % Ho) for o_y in range(Ho)]
        with m.If(take):
            m.d.sync += [need.eq(need_after), need_after.eq(need_two_after[oy][ox])]
            for kx in range(K):
                m.d.sync += [col_lo[kx].eq(_table([c[kx][0] for c in next_cols], col_bits)[ox]),
                             col_ok[kx].eq(_table([c[kx][1] for c in next_cols], 1)[ox])]
            with m.If(ox == Wo - 1):
                m.d.sync += [ox.eq(0), oy.eq(Mux(oy == Ho - 1, 0, oy + 1))]
                m.d.sync += [row_ok[ky].eq(_table([r[ky] for r in next_rows], 1)[oy]) for ky in range(K)]
                with m.If(oy == Ho - 1):
                    # next frame: row 0 sits H rows further along the ring
                    nb_mod = _wrap(rbase + (H % B), B)
                    m.d.sync += rbase.eq(nb_mod)
                    m.d.sync += [slot_row[ky].eq(_wrap(nb_mod + ((ky - P) % B), B)) for ky in range(K)]
                with m.Else():
                    m.d.sync += [slot_row[ky].eq(_wrap(slot_row[ky] + (S % B), B)) for ky in range(K)]
            with m.Else():
                m.d.sync += ox.eq(ox + 1)

        m.d.sync += ahead.eq(ahead + frame_written - frame_read)

        # valid's next value: ahead' != 0, or widx' > need' (widx' = 0 after the frame's last
        # pixel, widx + 1 after another write; need' = need_after after a take)
        def written_past(n):
            return Mux(write, ~at_last & (widx >= n), widx > n)
        ahead_next_nonzero = Mux(frame_written, ~frame_read | (ahead != 0),
                                 Mux(frame_read, ahead == 2, ahead != 0))
        m.d.sync += valid.eq(ahead_next_nonzero | Mux(take, written_past(need_after), written_past(need)))

        # ---- word sequence: port r reads window pixel p0 + r -------------------------------
        # Word w starts at element w*SIMD: pixel p0 = w*SIMD // C, channel u*g = w*SIMD % C
        # (g = gcd(C, SIMD)). Per step p0 grows by SIMD // C, plus one when the channel offset
        # wraps; the ports' kernel positions are registers loaded from tables indexed by p0,
        # so a read address is one multiplexer (kernel column and row) after registers.
        g = gcd(C, SIMD)
        ways, u_step, p_step = C // g, (SIMD % C) // g, SIMD // C
        n_pix = K * K
        w = Signal(range(max(SF, 2)), name="word")
        w_last = Signal(init=SF == 1)
        u = Signal(range(max(ways, 2)), name="offset")  # channel offset of word w, in units of g
        p0 = Signal(range(n_pix), name="pixel")
        wrap_u = u >= ways - u_step                     # the next word starts one pixel further

        flat = self.elements is not None

        def position(p):
            """(ky, kx, inside the window) of window pixel p (past the end: the last pixel, or
            in a flat read the window's pixels again from the first)."""
            if flat:
                return (*divmod(p % n_pix, K), True)
            ky, kx = divmod(min(p, n_pix - 1), K)
            return ky, kx, p < n_pix

        if flat:    # the pixel index runs around the window
            p0_next = Mux(wrap_u, _table([(p + p_step + 1) % n_pix for p in range(n_pix)], p0.shape())[p0],
                          _table([(p + p_step) % n_pix for p in range(n_pix)], p0.shape())[p0])
        else:
            p0_next = p0 + p_step + wrap_u
        step = self.rd.step
        with m.If(step):
            with m.If(w_last):
                m.d.sync += [w.eq(0), w_last.eq(SF == 1), u.eq(0), p0.eq(0)]
            with m.Else():
                m.d.sync += [w.eq(w + 1), w_last.eq(w == SF - 2),
                             u.eq(Mux(wrap_u, u + u_step - ways, u + u_step)), p0.eq(p0_next)]
        pad_word = Const(sum((self.pad & ((1 << eb) - 1)) << (c * eb) for c in range(C)), unsigned(pw))

        def read_pixel(r, ky_r, kx_r, in_r):
            """Port r reads window pixel (ky_r, kx_r) (in_r: inside the window); the padded
            pixel in cycle 1. From LUT RAM the pad selects the read register's input, which
            synthesis makes a synchronous set/reset of its flip-flops (no LUT per bit)."""
            port = rports[r]
            m.d.comb += port.addr.eq(Cat(Array(col_lo)[kx_r], Array(slot_row)[ky_r]))
            inside = in_r & Array(col_ok)[kx_r] & Array(row_ok)[ky_r]
            q = Signal(pw, name=f"pixel_{r}", reset_less=True)
            if lut_ram:
                m.d.sync += q.eq(Mux(inside, port.data, pad_word))
                return q
            # a block RAM's read data (its read register, cycle 1) goes straight into a register
            # (cycle 2), the padding its synchronous set/reset: its clock-to-out (4.3 ns on
            # ECP5) leaves no room for logic behind it
            ok = Signal(name=f"ok_{r}")                 # in step with the read data (cycle 1)
            data = Signal(pw, name=f"ring_data_{r}", reset_less=True)
            m.d.sync += [data.eq(port.data), ok.eq(inside), q.eq(Mux(ok, data, pad_word))]
            return q

        pixel_cycle = 1 if lut_ram else 2               # the cycle whose registers hold the padded pixels
        pixels = []
        if NP < self.ports:
            # one port for words of SIMD < C elements that span two pixels: a word across a
            # pixel boundary starts in the previous word's last pixel, which `prev` keeps (the
            # padded data of the previous step); the port reads the word's last pixel,
            # p0 + (u >= thr), so a word of one pixel is the port's pixel twice.
            thr = (C - SIMD) // g + 1
            nxt_u = [x + u_step - ways if x >= ways - u_step else x + u_step for x in range(ways)]
            adv = _table([int(x >= ways - u_step) + int(nxt_u[x] >= thr) for x in range(ways)], range(3))[u]
            span_r = Signal(name="span")                # the addressed word spans two pixels
            ky_r = Signal(range(K), name="ky_0", init=position(0)[0])
            kx_r = Signal(range(K), name="kx_0", init=position(0)[1])
            in_r = Signal(name="in_0", init=position(0)[2])
            with m.If(step):
                with m.If(w_last):
                    m.d.sync += [ky_r.eq(position(0)[0]), kx_r.eq(position(0)[1]), in_r.eq(position(0)[2]),
                                 span_r.eq(0)]
                with m.Else():
                    m.d.sync += span_r.eq(_table([int(v >= thr) for v in nxt_u], 1)[u])
                    for field, sig in enumerate((ky_r, kx_r, in_r)):
                        opts = Array(_table([position(p + a)[field] for p in range(n_pix)], sig.shape())
                                     for a in range(3))
                        m.d.sync += sig.eq(opts[adv][p0])
            cur = read_pixel(0, ky_r, kx_r, in_r)
            span_d, step_d = span_r, step               # delayed to the cycle that `cur` holds the pixel
            for d in range(1, pixel_cycle + 1):
                sp, st = Signal(name=f"span_{d}"), Signal(name=f"read_{d}")
                m.d.sync += [sp.eq(span_d), st.eq(step_d)]
                span_d, step_d = sp, st
            prev = Signal(pw, name="pixel_prev", reset_less=True)
            with m.If(step_d):
                m.d.sync += prev.eq(cur)
            pixels = [Mux(span_d, prev, cur), cur]
        for r in range(NP if NP == self.ports else 0):
            ky_r = Signal(range(K), name=f"ky_{r}", init=position(r)[0])
            kx_r = Signal(range(K), name=f"kx_{r}", init=position(r)[1])
            in_r = Signal(name=f"in_{r}", init=position(r)[2])
            with m.If(step):
                with m.If(w_last):
                    m.d.sync += [ky_r.eq(position(r)[0]), kx_r.eq(position(r)[1]), in_r.eq(position(r)[2])]
                with m.Else():
                    for field, sig in enumerate((ky_r, kx_r, in_r)):
                        lo = _table([position(p + p_step + r)[field] for p in range(n_pix)], sig.shape())[p0]
                        hi = _table([position(p + p_step + 1 + r)[field] for p in range(n_pix)], sig.shape())[p0]
                        m.d.sync += sig.eq(Mux(wrap_u, hi, lo))
            pixels.append(read_pixel(r, ky_r, kx_r, in_r))

        # ---- word: the SIMD elements from channel u*g of the ports' pixels, in two shifts ---
        # cycle 2 (coarse): the high bits of u pick a slice of SIMD + (fine - 1)*g elements;
        # cycle 3 (fine): the low bits pick the word. A select would drive every bit of its
        # stage, so each group of SELECT_GROUP elements has its own copy of u, 1 or 2 cycles
        # late: a counter that repeats u's steps (feeding back on itself, so that synthesis
        # keeps the copies apart).
        fine_bits = (ways - 1).bit_length() // 2
        fine = 1 << fine_bits
        coarse = -(-ways // fine)
        a_elems = SIMD + (fine - 1) * g
        need_elems = (coarse - 1) * fine * g + a_elems
        line = Cat(*pixels, Const(0, max(0, need_elems - len(pixels) * C) * eb))
        steps = [(step, w_last)]                        # u's steps, 0, 1 and 2 cycles late
        for d in (1, 2) if ways > 1 else ():
            st, la = Signal(name=f"step_{d}"), Signal(name=f"word_last_{d}")
            m.d.sync += [st.eq(steps[-1][0]), la.eq(steps[-1][1])]
            steps.append((st, la))

        def offset_copy(delay: int, name: str) -> Signal:
            c = Signal.like(u, name=name)
            st, la = steps[delay]
            with m.If(st):
                m.d.sync += c.eq(Mux(la, 0, Mux(c >= ways - u_step, c + u_step - ways, c + u_step)))
            return c

        def shifted(src, width: int, n_ways: int, stride: int, delay: int, sel_bits: slice, name: str) -> Signal:
            """Register ``width`` elements of ``src`` starting at element ``way * stride``,
            ``way`` from bits ``sel_bits`` of u ``delay`` cycles late."""
            out = Signal(width * eb, name=name, reset_less=True)
            for lo in range(0, width, SELECT_GROUP):
                hi = min(lo + SELECT_GROUP, width)
                ways_ = [src[(i * stride + lo) * eb:(i * stride + hi) * eb] for i in range(n_ways)]
                if n_ways == 1:
                    m.d.sync += out[lo * eb:hi * eb].eq(ways_[0])
                else:
                    sel = offset_copy(delay, f"{name}_sel_{lo // SELECT_GROUP}")[sel_bits]
                    # a binary multiplexer tree on the select bits (not a decoded one-hot select)
                    m.d.sync += out[lo * eb:hi * eb].eq(Cat(*ways_).word_select(sel, (hi - lo) * eb))
            return out

        if pixel_cycle == 1:
            stage_a = shifted(line, a_elems, coarse, fine * g, 1, slice(fine_bits, None), "coarse")
            word = shifted(stage_a, SIMD, fine, g, 2, slice(0, fine_bits), "word_data")
        else:   # the pixels of a block RAM arrive a cycle later: one shift of all the ways
            word = shifted(line, SIMD, ways, g, 2, slice(0, None), "word_data")
        m.d.comb += self.rd.data.eq(word)
        return m
