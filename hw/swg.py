"""Sliding-window generator (SWG): a pixel stream in, a k x k window stream out.

Input: one pixel per beat (``channels`` elements), frames of ``height x width``
pixels in raster order, back to back. Output: one window per beat for each output
pixel ``(oy, ox)`` in raster order, ``oy < out_height``, ``ox < out_width``; the
window is the ``kernel x kernel`` block of input pixels at rows
``oy*stride - padding + ky`` and columns ``ox*stride - padding + kx``, packed as
``kernel**2`` pixels in raster order (``(ky*kernel + kx) * channels + c`` is the
element index); positions outside the image are zero (zero padding).

Storage: ``rows`` line buffers (row slots of ``width`` pixels in one memory, read
through one port per kernel row) used as a ring of image rows that continues across
frames. A row slot is overwritten only when no
window still to be assembled needs the row it holds, and a window is assembled only
when its last needed input pixel has arrived (pixel-exact dependency tracking), so
the writer can run up to a frame ahead of the reader. ``rows >= kernel + stride``
keeps the stream flowing; the default adds one more row of slack.

Throughput: a window takes ``kernel`` cycles to read (one column of ``kernel`` rows
per cycle, the ``kernel`` rows read in parallel) plus one cycle to land, so at most one
window per ``kernel + 1`` cycles (:func:`swg_period`); one input pixel per cycle.
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.vendor import SiliconBluePlatform

from artifact import conv_out_hw

from .spec import HwError

__all__ = ["SlidingWindowGenerator", "swg_period", "default_rows"]


#: Largest line-buffer ring (row slots x padded width, in pixels) kept in LUT RAM.
DISTRIBUTED_MAX_DEPTH = 128


def swg_period(kernel: int) -> int:
    """Minimum cycles between two windows leaving the generator."""
    return kernel + 1


def default_rows(kernel: int, stride: int) -> int:
    """Line buffers (rows of the ring) used by default."""
    return kernel + stride + 1


def _wrap(value, modulus: int):
    """``value mod modulus`` for ``0 <= value < 2 * modulus`` (ring-slot arithmetic)."""
    return Mux(value >= modulus, value - modulus, value)


def _is_ice40(platform) -> bool:
    """Whether ``platform`` is an Amaranth iCE40 platform (SiliconBlue; no LUT RAM)."""
    return isinstance(platform, SiliconBluePlatform)


class SlidingWindowGenerator(wiring.Component):
    """k x k window generator with line buffers, stride and zero padding.

    Parameters
    ----------
    channels, height, width : int
        Input pixel channels and frame size.
    bits : int
        Element width (the payload is raw bits; signedness does not matter here).
    kernel, stride, padding : int
        Window geometry; ``padding < kernel``.
    rows : int or None
        Line buffers in the ring (default :func:`default_rows`).

    Members
    -------
    pix_in : In(stream.Signature(unsigned(channels * bits)))
    win_out : Out(stream.Signature(unsigned(kernel**2 * channels * bits)))
        ``payload`` is held stable while ``valid`` is high (a register).
    """

    def __init__(self, channels: int, height: int, width: int, bits: int, kernel: int, stride: int = 1,
                 padding: int = 0, rows: int | None = None):
        self.out_height, self.out_width, self.rows = self.check(height, width, kernel, stride, padding, rows)
        self.channels, self.height, self.width, self.bits = channels, height, width, bits
        self.kernel, self.stride, self.padding = kernel, stride, padding
        super().__init__({
            "pix_in": In(stream.Signature(unsigned(channels * bits))),
            "win_out": Out(stream.Signature(unsigned(kernel * kernel * channels * bits))),
        })

    @staticmethod
    def check(height: int, width: int, kernel: int, stride: int, padding: int,
              rows: int | None = None) -> tuple[int, int, int]:
        """Validate a geometry; return ``(out_height, out_width, rows)`` or raise HwError."""
        if padding >= kernel:
            raise HwError(f"sliding window: padding {padding} must be smaller than kernel {kernel}")
        oh, ow = conv_out_hw(height, width, kernel, stride, padding)
        if oh < 1 or ow < 1:
            raise HwError(f"sliding window: a {kernel}x{kernel} kernel does not fit a {height}x{width} image")
        rows = rows or default_rows(kernel, stride)
        if rows < kernel + stride:
            raise HwError(f"sliding window: needs at least kernel+stride={kernel + stride} line buffers, got {rows}")
        return oh, ow, rows

    @property
    def buffer_bits(self) -> int:
        """Line-buffer storage in bits."""
        return self.rows * self.width * self.channels * self.bits

    def elaborate(self, platform):
        m = Module()
        C, H, W, K, S, P, B = (self.channels, self.height, self.width, self.kernel, self.stride,
                               self.padding, self.rows)
        Ho, Wo = self.out_height, self.out_width
        pw = C * self.bits

        # ---- line buffers: one ring memory, slot b at addresses [b*Wp, b*Wp + W) -------------
        # (Wp = W rounded up to a power of two, so an address is Cat(column, slot), no adder),
        # with one read port per kernel row, so that no slot multiplexer follows the reads
        col_bits = max(1, (W - 1).bit_length())
        depth = B << col_bits
        # up to DISTRIBUTED_MAX_DEPTH rows x columns, LUT RAM: a block RAM's clock-to-out
        # (4.3 ns on ECP5) would leave too little of the landing cycle (iCE40 has no LUT RAM)
        lut_ram = depth <= DISTRIBUTED_MAX_DEPTH and not _is_ice40(platform)
        attrs = {"ram_style": "distributed"} if lut_ram else None
        ring = m.submodules.ring = Memory(shape=unsigned(pw), depth=depth, init=[], attrs=attrs)
        wport = ring.write_port()
        rports = [ring.read_port(domain="sync") for _ in range(K)]

        # ---- write side: position of the next input pixel ------------------------------
        wy = Signal(range(H), name="wy")
        wx = Signal(col_bits, name="wx")                # column (< W), as wide as the address field
        wslot = Signal(range(B), name="wslot")          # ring slot of row wy
        ahead = Signal()                                # writer is one frame ahead of the reader

        # ---- read side: the window being (or next to be) assembled ----------------------
        oy = Signal(range(Ho), name="oy")
        ox = Signal(range(Wo), name="ox")
        kx = Signal(range(K), name="kx")
        y0 = Signal(signed(max(H, Ho * S, P).bit_length() + 2), init=-P)   # top row of the window
        x0 = Signal(signed(max(W, Wo * S, P).bit_length() + 2), init=-P)   # left column
        # ring slot of row y0 + ky for every kernel row (rows < 0 included)
        slot_row = [Signal(range(B), init=(ky - P) % B, name=f"slot_row_{ky}") for ky in range(K)]
        rbase = Signal(range(B))                        # ring slot of row 0 of the frame being read

        # Dependency: window (oy, ox) needs input pixel (need_row, need_col) of its frame; the
        # last window of a frame needs the whole frame (so the reader never passes the writer).
        need_rows = [min(o * S - P + K - 1, H - 1) for o in range(Ho)]
        need_cols = [min(o * S - P + K - 1, W - 1) for o in range(Wo)]
        last_win = (oy == Ho - 1) & (ox == Wo - 1)
        need_r = Mux(last_win, H - 1, Array(Const(v, range(H)) for v in need_rows)[oy])
        need_c = Mux(last_win, W - 1, Array(Const(v, range(W)) for v in need_cols)[ox])
        available = ahead | (wy > need_r) | ((wy == need_r) & (wx > need_c))

        # Write permission: the slot of row wy holds row wy - B (of this or the previous frame);
        # it is free when every window still to be read starts below that row, i.e. when
        # dist = (H if ahead else 0) + wy - max(y0, 0) < B. `pix_in.ready` is a register
        # (HW_REQUESTS item 5): `dist` is a counter, +1 when the writer finishes a row and
        # -`released` (rows the reader gave up, through two registers) two cycles after the
        # reader moves to its next row of windows. The permission for the next cycle is
        # `dist + row_end < B` with this cycle's release left out (it counts a cycle later):
        # one compare of a register, no adder before it. Reader events reach the writer
        # late, which can only delay a permission.
        dist = Signal(signed(y0.shape().width + 2))
        released = Signal(range(H + 1))                 # rows the reader released (2 cycles ago)
        stepped = Signal()                              # the reader moved to its next row of windows last cycle
        stepped_rows = Signal(range(H + 1))             # rows that step released (loaded every cycle)
        m.d.sync += released.eq(Mux(stepped, stepped_rows, 0))
        frame_read_r = Signal()                         # the reader finished a frame (2 cycles ago)
        frame_read_d = Signal()
        ahead_w = Signal()                              # `ahead` as the writer sees it
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
            a = Mux(at_last, 1, Mux(frame_read_r, 0, ahead_w)) if w else Mux(frame_read_r, 0, ahead_w)
            last = next_is_last if w else at_last
            nxt[w] = (d, a, last, room & ~(a & last))
        m.d.sync += [reg.eq(Mux(write, with_write, without))
                     for reg, with_write, without in zip((dist, ahead_w, at_last, ready), nxt[1], nxt[0])]
        with m.If(write):
            with m.If(row_end):
                m.d.sync += [wx.eq(0), row_end.eq(W == 1), wy.eq(Mux(wy == H - 1, 0, wy + 1)),
                             wslot.eq(_wrap(wslot + 1, B))]
            with m.Else():
                m.d.sync += [wx.eq(wx + 1), row_end.eq(wx == W - 2)]

        # ---- assembly: issue K column reads, land them in `asm`, hand over to `win_out` ---
        asm = Signal(K * K * pw, reset_less=True)       # data registers: no reset (out_valid qualifies them)
        out_reg = Signal(K * K * pw, reset_less=True)
        out_valid = Signal()
        m.d.comb += [self.win_out.payload.eq(out_reg), self.win_out.valid.eq(out_valid)]
        # phase: 0 = reading columns, 1 = last column landing, 2 = asm holds a complete window
        phase = Signal(range(3))
        handover = Signal()
        m.d.comb += handover.eq((phase == 2) & (~out_valid | self.win_out.ready))
        with m.If(handover):
            m.d.sync += out_valid.eq(1)
        with m.Elif(self.win_out.ready):
            m.d.sync += out_valid.eq(0)
        # The hand-over loads all of `out_reg` in the cycle the consumer takes the previous
        # window, so its load enable follows win_out.ready. Rather than one net to K*K*pw
        # clock enables, every window pixel has its own copies of the `phase == 2` and
        # `out_valid` flags (equal to them at all times; each copy feeds back on itself, so
        # synthesis keeps them apart) and its own enable (HW_REQUESTS item 6).
        for i in range(K * K):
            full_i = Signal(name=f"full_{i}")           # copy of phase == 2
            valid_i = Signal(name=f"out_valid_{i}")     # copy of out_valid
            load_i = Signal(name=f"load_{i}")
            m.d.comb += load_i.eq(full_i & (~valid_i | self.win_out.ready))
            m.d.sync += full_i.eq(Mux(load_i, 0, full_i | (phase == 1)))
            with m.If(load_i):
                m.d.sync += [out_reg.word_select(i, pw).eq(asm.word_select(i, pw)), valid_i.eq(1)]
            with m.Elif(self.win_out.ready):
                m.d.sync += valid_i.eq(0)

        issue = Signal()
        m.d.comb += issue.eq(((phase == 0) | handover) & ((kx != 0) | available))
        # Read column `col = x0 + kx` and the in-image flags are kept in registers updated
        # together with kx / x0 / y0 (next values from compares against constants and
        # equality tests only), so the line-buffer read address is one mux after a register.
        col = Signal.like(x0, init=-P)                  # always x0 + kx
        col_ok = Signal(init=P == 0)                    # 0 <= col < W
        row_ok = [Signal(name=f"row_ok_{ky}", init=0 <= ky - P < H) for ky in range(K)]  # 0 <= y0+ky < H
        read_col = Mux(col_ok, col, 0)[:col_bits]
        for ky in range(K):
            m.d.comb += [rports[ky].addr.eq(Cat(read_col, slot_row[ky])), rports[ky].en.eq(1)]
        # per kernel row: whether the pixel read is inside the image (registered for landing)
        land_v = Signal()
        land_kx = Signal.like(kx)
        land_ok = [Signal(name=f"land_ok_{ky}") for ky in range(K)]
        m.d.sync += [land_v.eq(issue), land_kx.eq(kx)]
        m.d.sync += [land_ok[ky].eq(col_ok & row_ok[ky]) for ky in range(K)]
        with m.If(land_v):
            for ky in range(K):
                pix = Mux(land_ok[ky], rports[ky].data, 0)
                with m.Switch(land_kx):
                    for c in range(K):
                        with m.Case(c):
                            m.d.sync += asm.word_select(ky * K + c, pw).eq(pix)

        # phase transitions
        with m.If(issue & (kx == K - 1)):
            m.d.sync += phase.eq(1)
        with m.Elif(handover):
            m.d.sync += phase.eq(0)
        with m.Elif(phase == 1):
            m.d.sync += phase.eq(2)

        # read-side counters advance when the last column of a window is issued
        frame_read = Signal()
        row_step = Signal()                             # the reader moves to its next row of windows
        m.d.comb += row_step.eq(issue & (kx == K - 1) & (ox == Wo - 1))
        tops = [max(o * S - P, 0) for o in range(Ho)] + [H]     # top row of each row of windows
        released_by = Array(Const(tops[o + 1] - tops[o], range(H + 1)) for o in range(Ho))
        m.d.sync += [stepped.eq(row_step), stepped_rows.eq(released_by[oy]),
                     frame_read_d.eq(frame_read), frame_read_r.eq(frame_read_d)]
        with m.If(issue):
            with m.If(kx == K - 1):
                m.d.sync += kx.eq(0)
                with m.If(ox == Wo - 1):
                    m.d.sync += [ox.eq(0), x0.eq(-P), col.eq(-P), col_ok.eq(P == 0)]
                    with m.If(oy == Ho - 1):
                        m.d.comb += frame_read.eq(1)
                        # next frame: row 0 sits H rows further along the ring
                        nb = rbase + (H % B)
                        nb_mod = _wrap(nb, B)
                        m.d.sync += [oy.eq(0), y0.eq(-P), rbase.eq(nb_mod)]
                        for ky in range(K):
                            m.d.sync += slot_row[ky].eq(_wrap(nb_mod + ((ky - P) % B), B))
                        m.d.sync += [row_ok[ky].eq(0 <= ky - P < H) for ky in range(K)]
                    with m.Else():
                        m.d.sync += [oy.eq(oy + 1), y0.eq(y0 + S)]
                        for ky in range(K):
                            m.d.sync += slot_row[ky].eq(_wrap(slot_row[ky] + (S % B), B))
                        # 0 <= y0 + S + ky < H, compared against constants
                        m.d.sync += [row_ok[ky].eq((y0 >= -S - ky) & (y0 < H - S - ky)) for ky in range(K)]
                with m.Else():
                    m.d.sync += [ox.eq(ox + 1), x0.eq(x0 + S), col.eq(x0 + S),
                                 col_ok.eq((x0 >= -S) & (x0 < W - S))]
            with m.Else():
                # col steps by 1: it enters the image at -1 -> 0 and leaves it at W-1 -> W
                m.d.sync += [kx.eq(kx + 1), col.eq(col + 1),
                             col_ok.eq((col == -1) | (col_ok & (col != W - 1)))]

        with m.If(frame_written):
            m.d.sync += ahead.eq(1)
        with m.Elif(frame_read):
            m.d.sync += ahead.eq(0)
        return m
