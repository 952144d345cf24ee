"""Unit tests of the hardware blocks in the Amaranth simulator, each against the golden model:
requantizer, matrix-vector unit, sliding-window generator (random bubbles and back-pressure)."""
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
from hw.spec import stage_spec  # noqa: E402
from hw.swg import SlidingWindowGenerator  # noqa: E402


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

@pytest.mark.parametrize("k,s,p,h,w,rows", [
    (3, 1, 1, 4, 5, None), (3, 2, 1, 5, 4, None), (5, 1, 2, 3, 3, None), (5, 2, 0, 7, 6, None),
    (1, 2, 0, 4, 4, None), (2, 1, 1, 3, 4, None), (3, 1, 0, 4, 4, 4), (3, 3, 2, 6, 5, None),
    (3, 1, 1, 3, 1, None), (3, 1, 1, 2, 3, None),                   # one column; W not a power of 2
])
def test_swg_windows(k, s, p, h, w, rows):
    c, bits, frames = 2, 4, 3
    x = np.random.default_rng(k * s).integers(0, 16, size=(frames, c, h, w))
    dut = SlidingWindowGenerator(c, h, w, bits, k, s, p, rows=rows)
    pix = [_pack(x[f, :, y, xx], bits) for f in range(frames) for y in range(h) for xx in range(w)]
    vecs = _vectors(x, k, s, p)
    res = run_stream(dut, pix, len(vecs), in_port="pix_in", out_port="win_out", bubble=0.3, stall=0.4, seed=k)
    assert res.outputs == [_pack(v, bits) for v in vecs]


def test_swg_rate_one_window_per_k_plus_1_cycles():
    dut = SlidingWindowGenerator(1, 4, 6, 8, 3, 1, 1)
    pix = list(range(24)) * 2
    res = run_stream(dut, pix, 48, in_port="pix_in", out_port="win_out")
    gaps = np.diff(res.out_cycles[24:])
    assert gaps.max() <= 5 and np.median(gaps) == 4, gaps


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
    """vec_in.ready drives the source's hand-over (on the SWG a clock enable per window pixel),
    so it is a flip-flop and does not wait for vec_in.valid."""
    art = random_conv(1, channels=4, out_channels=4, kernel=1, height=4, width=4)
    spec = stage_spec(art.manifest["layers"][0], art.tensors)
    assert _driven_by_flip_flop(MatrixVectorUnit(spec, pe, simd), "vec_in__ready")
