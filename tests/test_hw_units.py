"""Unit tests of the hardware blocks in the Amaranth simulator, each against the golden model:
requantizer, matrix-vector unit, sliding-window generator (random bubbles and back-pressure)."""
import gc
import random

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth import signed, unsigned  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from artifact import golden, int_range  # noqa: E402
from artifact.golden import _windows  # noqa: E402
from artifact.synth import random_conv  # noqa: E402
from hw.mvu import MatrixVectorUnit  # noqa: E402
from hw.requant import Requantizer  # noqa: E402
from hw.simulate import run_stream, unpack_pixels  # noqa: E402
from hw.spec import HwError, stage_spec  # noqa: E402
from hw.swg import WINDOW_READ_LATENCY, SlidingWindowGenerator  # noqa: E402


def _pack(values, bits):
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    return word


def _vectors(x, k, s, p):
    """(N, C, H, W) -> list of window vectors in vector order ((ky*k+kx)*C + c), raster order."""
    win = _windows(x, k, s, p)                                  # N, C, Ho, Wo, k, k
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 4, 5, 1).reshape(n * ho * wo, k * k * c)


# ---- requantizer -------------------------------------------------------------------------

@pytest.mark.parametrize("acc_bits,shift,out_bits,is_signed", [
    (9, 3, 4, True), (9, 1, 8, False), (8, 0, 8, True), (7, -2, 8, True), (6, 8, 3, True), (10, 5, 2, False),
])
def test_requantizer_exhaustive(acc_bits, shift, out_bits, is_signed):
    lo, hi = int_range(out_bits, is_signed)
    dut = Requantizer(acc_bits, shift, lo, hi, signed(out_bits) if is_signed else unsigned(out_bits))
    accs = list(range(-(1 << (acc_bits - 1)), 1 << (acc_bits - 1)))
    want = golden.requantize(np.array(accs), {"shift": shift, "clamp": [lo, hi]})
    got = []

    async def bench(ctx):
        for i in range(len(accs) + 2):
            if i < len(accs):
                ctx.set(dut.acc, accs[i])
            await ctx.tick()
            if i >= 1:                  # latency 2: value of acc[i-1] is visible after this tick
                got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[:len(accs)] == list(want)


# ---- matrix-vector unit ------------------------------------------------------------------

@pytest.mark.parametrize("k,s,p,pe,simd,in_signed,bias", [
    (1, 1, 0, 1, 1, False, True),
    (1, 1, 0, 3, 4, True, False),
    (3, 1, 1, 1, 6, False, True),
    (3, 2, 0, 3, 3, True, True),
    (3, 1, 1, 3, 36, True, True),          # fully parallel: one vector per cycle
    (1, 1, 0, 2, 3, True, True),           # partial folds: PE 2 of 3 channels, SIMD 3 of 4 elements
    (3, 2, 1, 2, 5, False, True),          # 36 elements in 8 folds of 5 (4 zero-padded)
    (3, 1, 0, 3, 7, True, False),
])
def test_mvu_against_golden(k, s, p, pe, simd, in_signed, bias):
    art = random_conv(pe + simd, channels=4, out_channels=3, kernel=k, stride=s, padding=p, height=3, width=4,
                      in_bits=5, in_signed=in_signed, weight_bits=6, act_bits=5, out_signed=in_signed, bias=bias)
    layer = art.manifest["layers"][0]
    spec = stage_spec(layer, art.tensors)
    x = np.random.default_rng(k).integers(*int_range(5, in_signed), size=(2, 4, 3, 4), endpoint=True)
    want = golden.conv_stage(x, layer, art.tensors)                    # N, M, Ho, Wo
    vecs = _vectors(x, k, s, p)
    dut = MatrixVectorUnit(spec, pe, simd)
    res = run_stream(dut, [_pack(v, 5) for v in vecs], len(vecs), in_port="vec_in", out_port="pix_out",
                     bubble=0.3, stall=0.3, seed=pe)
    n = want.shape[2] * want.shape[3]
    got = np.stack([unpack_pixels(res.outputs[i * n:(i + 1) * n], 3, want.shape[2], want.shape[3], spec.out_bits,
                                  spec.out_signed) for i in range(2)])
    assert (got == want).all()


def test_mvu_full_rate_without_backpressure():
    """One vector per NF*SF cycles, no bubbles between vectors."""
    art = random_conv(1, channels=4, out_channels=4, kernel=1, height=4, width=4)
    spec = stage_spec(art.manifest["layers"][0], art.tensors)
    dut = MatrixVectorUnit(spec, 2, 2)                                   # 4 cycles per vector
    vecs = [_pack(v, 8) for v in np.random.default_rng(0).integers(0, 256, size=(16, 4))]
    res = run_stream(dut, vecs, 16, in_port="vec_in", out_port="pix_out")
    gaps = np.diff(res.out_cycles)
    assert (gaps == 4).all(), gaps


# ---- sliding-window generator -----------------------------------------------------------

def _padded_vectors(x, k, s, p, pad):
    """(N, C, H, W) -> window vectors in vector order ((ky*k+kx)*C + c), raster order, ``pad`` outside."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p + s), (p, p + s)), constant_values=pad)
    return [xp[f, :, oy * s:oy * s + k, ox * s:ox * s + k].transpose(1, 2, 0).ravel()
            for f in range(n) for oy in range(ho) for ox in range(wo)]


def _read_windows(dut, pixels, n_windows, *, passes=1, bubble=0.0, stall=0.0, gap=0.0, seed=0):
    """Stream ``pixels`` into ``dut`` (random bubbles) and read ``n_windows`` windows as a
    matrix-vector unit does: wait for a token (random stalls), step through its words
    ``passes`` times (random idle cycles between steps), take it with the last step;
    the token's payload must flag the last window of each frame. Returns (windows: per window the list of words of every pass, cycles of the takes)."""
    rng = random.Random(seed)
    total = passes * dut.words
    windows, takes, steps, data = [], [], [], {}

    async def bench(ctx):
        i, holding, reading, k, cycle = 0, False, False, 0, 0
        while len(takes) < n_windows or (steps and steps[-1][0] + WINDOW_READ_LATENCY >= cycle):
            if not holding and i < len(pixels) and rng.random() >= bubble:
                ctx.set(dut.pix_in.payload, pixels[i])
                ctx.set(dut.pix_in.valid, 1)
                holding = True
            if not reading and len(takes) < n_windows and ctx.get(dut.win_out.valid) and rng.random() >= stall:
                reading, k = True, 0
                windows.append([])
            step = reading and (k == 0 or rng.random() >= gap)
            take = step and k == total - 1
            ctx.set(dut.rd.step, step)
            ctx.set(dut.win_out.ready, take)
            _, _, in_ready, valid, last, word = await ctx.tick().sample(dut.pix_in.ready, dut.win_out.valid,
                                                                       dut.win_out.payload, dut.rd.data)
            data[cycle] = word
            if holding and in_ready:
                i, holding = i + 1, False
                ctx.set(dut.pix_in.valid, 0)
            if step:
                steps.append((cycle, len(windows) - 1))
                k += 1
            if take:
                assert valid and last == ((len(takes) + 1) % (dut.out_height * dut.out_width) == 0)
                takes.append(cycle)
                reading = False
            cycle += 1
            assert cycle < 200 * (len(pixels) + total * n_windows), "window generator stalled"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for cycle, win in steps:
        windows[win].append(data[cycle + WINDOW_READ_LATENCY])
    return [[ws[j * dut.words:(j + 1) * dut.words] for j in range(passes)] for ws in windows], takes


def _elements(words, simd, bits, n):
    """Words of ``simd`` elements -> the first ``n`` elements (raw bit patterns)."""
    flat = [(wd >> (j * bits)) & ((1 << bits) - 1) for wd in words for j in range(simd)]
    return flat[:n]


@pytest.mark.parametrize("k,s,p,h,w,rows", [
    (3, 1, 1, 4, 5, None), (3, 2, 1, 5, 4, None), (5, 1, 2, 3, 3, None), (5, 2, 0, 7, 6, None),
    (1, 2, 0, 4, 4, None), (2, 1, 1, 3, 4, None), (3, 1, 0, 4, 4, 4), (3, 3, 2, 6, 5, None),
    (3, 1, 1, 3, 1, None), (3, 1, 1, 2, 3, None),                   # one column; W not a power of 2
])
@pytest.mark.parametrize("lut_ram", [True, False], ids=["lutram", "bram"])
def test_swg_windows(k, s, p, h, w, rows, lut_ram):
    c, bits, frames = 2, 4, 3
    x = np.random.default_rng(k * s).integers(0, 16, size=(frames, c, h, w))
    dut = SlidingWindowGenerator(c, h, w, bits, k, s, p, rows=rows, lut_ram=lut_ram)
    pix = [_pack(x[f, :, y, xx], bits) for f in range(frames) for y in range(h) for xx in range(w)]
    want = _padded_vectors(x, k, s, p, 0)
    got, _ = _read_windows(dut, pix, len(want), bubble=0.3, stall=0.4, seed=k)
    assert [_elements(ws[0], c, bits, k * k * c) for ws in got] == [list(v) for v in want]


@pytest.mark.parametrize("simd,ports", [(1, 1), (2, 2), (3, 1), (4, 2), (5, 3), (6, 2), (7, 3), (9, 3)])
@pytest.mark.parametrize("lut_ram", [True, False], ids=["lutram", "bram"])
def test_swg_words_of_any_width(simd, ports, lut_ram):
    """Words of SIMD elements over 3-channel pixels: within a pixel, across two or three
    (every channel offset), whole pixels; each window read twice (two neuron folds), with
    random gaps between words; line buffers in LUT RAM and in block RAM (a cycle later,
    the shift in one stage)."""
    c, h, w, bits, k = 3, 4, 3, 5, 3
    x = np.random.default_rng(simd).integers(0, 32, size=(2, c, h, w))
    dut = SlidingWindowGenerator(c, h, w, bits, k, 1, 1, simd=simd, lut_ram=lut_ram)
    assert dut.ports == ports and dut.words == -(-k * k * c // simd)
    pix = [_pack(x[f, :, y, xx], bits) for f in range(2) for y in range(h) for xx in range(w)]
    want = _padded_vectors(x, k, 1, 1, 0)
    got, _ = _read_windows(dut, pix, len(want), passes=2, bubble=0.3, stall=0.3, gap=0.3, seed=simd)
    for ws, v in zip(got, want):
        assert ws[0] == ws[1]
        assert _elements(ws[0], simd, bits, k * k * c) == list(v)


@pytest.mark.parametrize("bits,is_signed,pad", [(4, True, -8), (4, True, 5), (6, False, 63)])
@pytest.mark.parametrize("lut_ram", [True, False], ids=["lutram", "bram"])
def test_swg_pad_value(bits, is_signed, pad, lut_ram):
    """Positions outside the image hold ``pad`` in every channel (a max-pool pads with the minimum)."""
    c, h, w, k, p = 2, 3, 4, 3, 1
    lo, hi = int_range(bits, is_signed)
    x = np.random.default_rng(bits).integers(lo, hi, size=(2, c, h, w), endpoint=True)
    dut = SlidingWindowGenerator(c, h, w, bits, k, 1, p, simd=4, signed=is_signed, pad=pad, lut_ram=lut_ram)
    pix = [_pack(x[f, :, y, xx], bits) for f in range(2) for y in range(h) for xx in range(w)]
    want = _padded_vectors(x, k, 1, p, pad)
    got, _ = _read_windows(dut, pix, len(want), bubble=0.2, stall=0.2, seed=1)
    mask = (1 << bits) - 1
    assert [_elements(ws[0], 4, bits, k * k * c) for ws in got] == [[int(e) & mask for e in v] for v in want]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")     # refused, never elaborated
@pytest.mark.parametrize("kw,match", [
    (dict(simd=10), "spans 4 pixels"), (dict(simd=28), "between 1 and the 27"),
    (dict(pad=-1), "pad -1 is not a 4-bit unsigned"), (dict(pad=8, signed=True), "pad 8 is not a 4-bit signed"),
])
def test_swg_refuses_bad_words_and_pads(kw, match):
    with pytest.raises(HwError, match=match):
        SlidingWindowGenerator(3, 4, 4, 4, 3, 1, 1, **kw)
    gc.collect()                                    # the refused object's warning, filtered here


@pytest.mark.parametrize("h,w,simd", [(4, 6, 1), (4, 6, 3), (2, 2, 1), (2, 2, 3)])
def test_swg_rate_one_word_per_cycle(h, w, simd):
    """A reader that never waits takes a window every SF cycles, back to back (no cycle
    between the last word of a window and the first of the next), across frames too: in
    a 2x2 frame every window needs the whole frame, so the writer must be able to finish
    the next frame before the reader releases this one."""
    dut = SlidingWindowGenerator(1, h, w, 8, 3, 1, 1, simd=simd)
    _, takes = _read_windows(dut, list(range(h * w)) * 4, 4 * h * w)
    gaps = np.diff(takes[h * w:])
    assert (gaps == dut.words).all(), gaps


def _driven_by_flip_flop(dut, port: str) -> bool:
    """Whether the generated Verilog drives ``port`` straight from a clocked register."""
    import re
    from amaranth.back import verilog
    text = verilog.convert(dut, name="dut")
    return re.search(r"always @\(posedge clk\)\s+" + re.escape(port) + r" <=", text) is not None


def test_swg_input_ready_is_a_register():
    """HW_REQUESTS item 5: pix_in.ready fans out to the upstream unit and to every line
    buffer's write enable, so it is a flip-flop (the permission is computed a cycle ahead)."""
    assert _driven_by_flip_flop(SlidingWindowGenerator(2, 4, 5, 4, 3, 1, 1, rows=4), "pix_in__ready")


@pytest.mark.parametrize("board,lut_ram", [("ulx3s.ULX3S_12F_Platform", True),
                                            ("icebreaker.ICEBreakerPlatform", False)])
def test_swg_ring_in_lut_ram_only_where_the_part_has_it(board, lut_ram):
    """A small ring asks for LUT RAM (`ram_style`) on ECP5; on iCE40, which has none, it
    must not (yosys then finds no mapping for the memory and the build fails)."""
    from amaranth.back import rtlil
    module, cls = board.split(".")
    plat = getattr(pytest.importorskip(f"amaranth_boards.{module}"), cls)()
    text = rtlil.convert(SlidingWindowGenerator(2, 4, 5, 4, 3, 1, 1), name="dut", platform=plat)
    assert ("ram_style" in text) == lut_ram


@pytest.mark.parametrize("pe,simd", [(2, 2), (4, 4)])               # 4 folds, 1 fold per vector
def test_mvu_input_ready_is_a_register(pe, simd):
    """vec_in.ready drives the source's hand-over (a FIFO read, the SWG's window release),
    so it is a flip-flop and does not wait for vec_in.valid."""
    art = random_conv(1, channels=4, out_channels=4, kernel=1, height=4, width=4)
    spec = stage_spec(art.manifest["layers"][0], art.tensors)
    assert _driven_by_flip_flop(MatrixVectorUnit(spec, pe, simd), "vec_in__ready")


# ---- block-RAM FIFOs ---------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 3, 5, 9])
def test_block_fifo_is_sync_fifo_buffered_cycle_for_cycle(depth):
    """hw.units.BlockFIFO against amaranth's SyncFIFOBuffered under the same random writes and
    reads: w_rdy, r_rdy, level, empty and (when readable) r_data equal in every cycle, the
    FIFO filled to full and drained to empty many times; RegisteredBlockFIFO of one word more
    gives the same words in the same order and is never empty while words are in it."""
    from amaranth import Module
    from amaranth.lib.fifo import SyncFIFOBuffered

    from hw.units import BlockFIFO, RegisteredBlockFIFO
    m = Module()
    ref = m.submodules.ref = SyncFIFOBuffered(width=8, depth=depth)
    dut = m.submodules.dut = BlockFIFO(8, depth)
    reg = m.submodules.reg = RegisteredBlockFIFO(8, depth + 1)
    rng = random.Random(depth)
    seen = {"full": 0, "empty": 0}
    written, read = [], []

    async def bench(ctx):
        word = 0
        for cycle in range(1500):
            phase = (cycle // 150) % 2                 # long stretches that fill, then drain
            w_en = rng.random() < (0.8 if phase == 0 else 0.3)
            r_en = rng.random() < (0.3 if phase == 0 else 0.8)
            for f in (ref, dut, reg):
                ctx.set(f.w_data, word)
                ctx.set(f.w_en, w_en)
                ctx.set(f.r_en, r_en)
            for name in ("w_rdy", "r_rdy", "level"):
                assert ctx.get(getattr(dut, name)) == ctx.get(getattr(ref, name)), (cycle, name)
            assert ctx.get(dut.empty) == (ctx.get(ref.level) == 0), cycle
            if ctx.get(ref.r_rdy):
                assert ctx.get(dut.r_data) == ctx.get(ref.r_data), cycle
            seen["full"] += not ctx.get(ref.w_rdy)
            seen["empty"] += ctx.get(ref.level) == 0
            assert ctx.get(reg.empty) == (len(written) == len(read)), cycle
            if w_en and ctx.get(reg.w_rdy):
                written.append(word)
            if r_en and ctx.get(reg.r_rdy):
                read.append(ctx.get(reg.r_data))
            if w_en and ctx.get(ref.w_rdy):
                word = (word + 1) & 0xFF
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["full"] > 20 and seen["empty"] > 20, seen
    assert read == written[:len(read)] and len(read) > 200
