"""Host-link protocol, board model, UART divisor and PLL arithmetic (fast, no tools)."""
import numpy as np
import pytest

from artifact.golden import run_layer
from artifact.synth import random_conv, random_tucker2
from deploy.fpga import protocol as P
from deploy.fpga.board_model import BoardModel, model_info
from deploy.fpga.top import ecp5_pll_params
from deploy.fpga.uart import uart_divisor


def test_crc8_is_crc8_smbus():
    assert P.crc8(b"123456789") == 0xF4          # the catalogue check value of CRC-8/SMBUS
    assert P.crc8(b"") == 0
    assert P.crc8(b"6789", P.crc8(b"12345")) == 0xF4


def test_crc8_hardware_expression_matches_table():
    from amaranth.sim import Simulator
    from amaranth import Module, Signal
    from deploy.fpga.link import crc8_next
    m = Module()
    crc, byte, out = Signal(8), Signal(8), Signal(8)
    m.d.comb += out.eq(crc8_next(crc, byte))
    sim = Simulator(m)
    cases = [(c, b) for c in (0, 1, 0x5A, 0xFF, 0x80) for b in (0, 1, 0x7F, 0xA5, 0xFF)]

    async def bench(ctx):
        for c, b in cases:
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == P.crc8(bytes([b]), c)
    sim.add_testbench(bench)
    sim.run()


def test_frames_round_trip_and_decoder_skips_noise():
    f = P.encode_response(P.OK, b"\x01\x5a\xa5")
    assert f[0] == P.SYNC_RESP and f[2:4] == b"\x03\x00"
    dec = P.FrameDecoder(P.SYNC_RESP)
    assert dec.feed(b"\x00\x11" + f[:3]) == []
    assert dec.feed(f[3:] + P.encode_response(P.BAD_CRC)) == [(P.OK, b"\x01\x5a\xa5", True),
                                                            (P.BAD_CRC, b"", True)]
    bad = bytearray(P.encode_response(P.OK, b"xyz"))
    bad[5] ^= 1
    assert P.FrameDecoder().feed(bad) == [(P.OK, b"xyz"[:1] + bytes([ord("y") ^ 1]) + b"z", False)]


@pytest.mark.parametrize("bits,signed", [(8, False), (8, True), (4, True), (12, True), (20, True), (16, False)])
def test_tensor_bytes_round_trip(bits, signed):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    x = np.random.default_rng(bits).integers(lo, hi + 1, size=(3, 2, 5))
    x[0, 0, 0], x[-1, -1, -1] = lo, hi
    data = P.tensor_to_bytes(x, bits, signed)
    assert len(data) == x.size * P.elem_bytes(bits)
    assert np.array_equal(P.bytes_to_tensor(data, x.shape, bits, signed), x)


def test_tensor_layout_is_raster_channels_inner():
    x = np.arange(2 * 2 * 3).reshape(3, 2, 2)          # C=3, H=W=2
    assert list(P.tensor_to_bytes(x, 8, False)) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    with pytest.raises(ValueError, match="do not fit"):
        P.tensor_to_bytes(np.array([[[256]]]), 8, False)


def test_board_info_round_trip():
    info = P.BoardInfo(2, "tucker2", (64, 2, 2), 8, False, (64, 2, 2), 8, False, 54, 1368, 150_000_000, 115200,
                       3_000_000)
    b = info.to_bytes()
    assert len(b) == P.INFO_LEN == 40
    assert P.BoardInfo.from_bytes(b) == info and info.layers == 1 and info.batch == 1
    assert info.in_bytes == 256 and info.timeout_s == pytest.approx(0.02)
    assert info.answer_bytes == 256 + P.TRAILER_LEN and not info.scores
    with pytest.raises(P.ProtocolError):
        P.BoardInfo.from_bytes(b[:-1])
    net = P.BoardInfo(2, "network", (1, 8, 8), 8, True, (10, 1, 1), 24, True, 126, 12096, 150_000_000, 3_000_000,
                      1000, 58, 16)
    assert P.BoardInfo.from_bytes(net.to_bytes()) == net and net.scores and net.out_bytes == 30


@pytest.mark.parametrize("bits,signed", [(8, True), (24, True), (8, False)])
def test_answer_round_trip_and_class(bits, signed):
    info = P.BoardInfo(2, "network", (1, 8, 8), 8, True, (5, 1, 1), bits, signed, 1, 1, 1, 1, 1, 3)
    lo = -(1 << (bits - 1)) if signed else 0
    y = np.array([lo, 7, 9, 9, lo + 1]).reshape(5, 1, 1)
    data = P.encode_answer(y, info, 123_456)
    assert len(data) == info.answer_bytes
    a = P.decode_answer(data, info)
    assert np.array_equal(a.values, y) and a.label == 2 and a.cycles == 123_456    # the first of equal maxima
    with pytest.raises(P.ProtocolError, match="INFER answer has"):
        P.decode_answer(data[:-1], info)
    fmap = P.BoardInfo(2, "conv", (1, 2, 2), 8, False, (3, 2, 2), 8, False, 1, 1, 1, 1, 1)
    a = P.decode_answer(P.encode_answer(np.zeros((3, 2, 2), dtype=np.int64), fmap, 5), fmap)
    assert a.label is None and a.cycles == 5


@pytest.fixture(scope="module")
def t2():
    return random_tucker2(0, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="t2")


def _frame(info, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=info.in_shape)


def test_board_model_protocol(t2):
    model = BoardModel(t2, "t2", timeout_s=0.01)
    info = model.info
    dec = P.FrameDecoder()
    (st, data, ok), = dec.feed(model.feed(P.encode_request(P.CMD_INFO), now=0.0))
    assert ok and st == P.OK and P.BoardInfo.from_bytes(data) == info
    x = _frame(info)
    (st, data, ok), = dec.feed(model.feed(P.encode_request(P.CMD_INFER, P.tensor_to_bytes(x, 8, False)), now=0.0))
    want, _ = run_layer(t2.layer("t2"), [x[None]], t2.tensors)
    answer = P.decode_answer(data, info)
    assert ok and st == P.OK and np.array_equal(answer.values, want[0])
    assert answer.label is None and answer.cycles == 0          # a feature map; the model has no clock
    # bad CRC, then noise, then a good frame
    bad = bytearray(P.encode_request(P.CMD_INFER, P.tensor_to_bytes(x, 8, False)))
    bad[10] ^= 0x40
    assert dec.feed(model.feed(bad, now=0.0)) == [(P.BAD_CRC, b"", True)]
    (st, _, _), = dec.feed(model.feed(b"\x00\x13" + P.encode_request(P.CMD_INFO), now=0.0))
    assert st == P.OK
    # wrong length -> BAD_LENGTH, then the drain ignores the line until it is idle
    assert dec.feed(model.feed(P.encode_request(P.CMD_INFER, b"\xa5" * 5), now=1.0)) == [(P.BAD_LENGTH, b"", True)]
    assert model.feed(P.encode_request(P.CMD_INFO), now=1.001) == b""          # still draining
    (st, _, _), = dec.feed(model.feed(P.encode_request(P.CMD_INFO), now=1.5))
    assert st == P.OK
    assert dec.feed(model.feed(P.encode_request(0x33), now=2.0)) == [(P.BAD_COMMAND, b"", True)]
    # a frame cut short -> TIMEOUT after the idle time
    full = P.encode_request(P.CMD_INFER, P.tensor_to_bytes(x, 8, False))
    assert model.feed(full[:9], now=3.0) == b""
    assert dec.feed(model.poll(3.5)) == [(P.TIMEOUT, b"", True)]
    (st, _, _), = dec.feed(model.feed(full, now=4.0))
    assert st == P.OK


class _FlakyPort:
    """A pyserial-like port in front of the board model that corrupts the first N writes."""

    def __init__(self, model, corrupt=1):
        self.model, self.corrupt, self.rx = model, corrupt, bytearray()
        self.writes = 0

    def write(self, data):
        data = bytearray(data)
        if self.writes < self.corrupt:
            data[len(data) // 2] ^= 0x01
        self.writes += 1
        self.rx += self.model.feed(bytes(data), now=self.writes * 10.0)

    def read(self, n=1):
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def reset_input_buffer(self):
        self.rx.clear()


def test_link_retries_after_a_nak_and_is_bit_exact(t2):
    port = _FlakyPort(BoardModel(t2, "t2"), corrupt=1)
    link = P.Link(port, timeout=0.2, retries=2, gap=0.0)
    x = _frame(link.board_info(), 3)          # the INFO request is the corrupted one
    y = link.infer(x)
    want, _ = run_layer(t2.layer("t2"), [x[None]], t2.tensors)
    assert np.array_equal(y, want[0]) and link.retried == 1
    with pytest.raises(ValueError, match="shape"):
        link.infer(x[:, :2])
    port.corrupt = 10
    with pytest.raises(P.ProtocolError, match="failed after 3 tries: status 1"):
        link.infer(x)


def test_board_model_of_a_whole_network_answers_the_golden_logits_and_class():
    from artifact import golden
    from artifact.synth import random_resnet
    art = random_resnet(3)
    model = BoardModel(art, None, timeout_s=0.01)
    info = model.info
    assert info.op == "network" and info.layers == len(art.layers()) and info.scores
    assert list(info.in_shape) == list(art.manifest["input"]["shape"])
    from artifact import int_range
    lo, hi = int_range(info.in_bits, info.in_signed)
    x = np.random.default_rng(1).integers(lo, hi + 1, size=(4, *info.in_shape))
    want = golden.run(art, x)
    dec = P.FrameDecoder()
    for i in range(len(x)):
        (st, data, ok), = dec.feed(model.feed(P.encode_request(P.CMD_INFER, P.tensor_to_bytes(x[i], info.in_bits,
                                                                                               info.in_signed)),
                                              now=float(i)))
        a = P.decode_answer(data, info)
        assert ok and st == P.OK and np.array_equal(a.values.reshape(-1), want[i].reshape(-1))
        assert a.label == int(np.argmax(want[i]))


def test_batch_limit():
    assert P.batch_limit(64, 36) == P.MAX_BATCH == 16
    assert P.batch_limit(3072, 46) == 5                        # 16 KB of input buffer
    assert P.batch_limit(40_000, 10) == 1 and P.batch_limit(10, 40_000) == 1


def test_board_model_and_link_batches(t2):
    """CMD_INFER_BATCH: n frames in, n answers out, each as CMD_INFER answers it; a length that
    is not a whole number of frames (or more than the board's batch) is BAD_LENGTH."""
    model = BoardModel(t2, "t2", timeout_s=0.01)
    info = model.info
    assert info.batch == P.batch_limit(info.in_bytes, info.answer_bytes) > 1
    link = P.Link(_FlakyPort(model, corrupt=0), timeout=0.2, retries=0, gap=0.0)
    x = np.stack([_frame(info, s) for s in range(3)])
    answers = link.infer_batch(x)
    want, _ = run_layer(t2.layer("t2"), [x], t2.tensors)
    assert len(answers) == 3 and all(np.array_equal(a.values, w) for a, w in zip(answers, want))
    with pytest.raises(ValueError, match="1 to"):
        link.infer_batch(np.stack([_frame(info)] * (info.batch + 1)))
    dec = P.FrameDecoder()
    for n_bytes in (info.in_bytes + 1, info.in_bytes * (info.batch + 1)):
        req = P.encode_request(P.CMD_INFER_BATCH, b"\x00" * n_bytes)
        assert dec.feed(model.feed(req, now=100.0 + n_bytes)) == [(P.BAD_LENGTH, b"", True)]


def test_model_info_of_linear_and_signed_layers():
    art = random_conv(0, channels=1, out_channels=3, height=8, width=8, out_signed=True, name="c")
    info = model_info(art, "c")
    assert info.in_shape == (1, 8, 8) and info.out_shape == (3, 8, 8) and info.out_signed


def test_uart_divisor():
    assert uart_divisor(25e6, 115200) == 217
    assert uart_divisor(100e6, 12_500_000) == 8
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(12e6, 2_500_000)           # divisor 5 -> 2.4 Mbaud: 4% off


def test_ecp5_pll_params():
    p = ecp5_pll_params(25e6, 150e6)
    assert p["fout_hz"] == pytest.approx(150e6) and 400e6 <= p["fvco_hz"] <= 800e6
    assert p["fout_hz"] == pytest.approx(25e6 / p["clki_div"] * p["clkfb_div"])
    p = ecp5_pll_params(48e6, 133e6)
    assert abs(p["fout_hz"] - 133e6) < 1e6
    with pytest.raises(ValueError):
        ecp5_pll_params(25e6, 500e6)


def test_pll_reset_is_distributed_on_a_global_buffer():
    """With a PLL the synchronised reset enters a DCCA whose output is the design's reset (a
    fabric-routed reset to every flip-flop was a whole network's slowest path)."""
    pytest.importorskip("amaranth_boards")
    import re
    from deploy.fpga.boards import get_board
    from deploy.fpga.top import BoardTop
    plat = get_board("ulx3s-85f").platform()
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="tiny")
    il = plat.build(BoardTop(plat, art, "tiny", clock_mhz=150), do_build=False, name="top").files["top.il"]
    il = il if isinstance(il, str) else il.decode()
    cells = re.findall(r"cell \\DCCA \\(\S+)\n((?:    connect .*\n)+)", il)
    assert len(cells) == 1, cells
    ports = dict(re.findall(r"connect \\(\S+) (.*)", cells[0][1]))
    assert ports["CLKO"] == "\\rst" and ports["CLKI"].startswith("\\pll_rst"), ports
    # and without a PLL there is none: the board clock's own reset stays as it was
    plat = get_board("ulx3s-85f").platform()
    il = plat.build(BoardTop(plat, art, "tiny"), do_build=False, name="top").files["top.il"]
    assert "DCCA" not in (il if isinstance(il, str) else il.decode())
