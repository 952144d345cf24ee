"""The host link: UART + framing protocol (:mod:`deploy.fpga.protocol`) around a layer engine.

:class:`HostLink` is a ``wiring.Component`` with a serial line in and out::

    rx -> UARTRx -> receive FSM -> input frame buffer (byte RAM, CRC checked)
                                     -> pixel assembler -> engine.pix_in
    tx <- UARTTx <- response FSM <- byte serializer <- engine.pix_out
                                 <- board-info ROM / status codes

A frame is buffered whole and only fed to the engine when its CRC matches, so a
corrupted frame never reaches the engine. The output streams straight from the
engine to the serial line (the engine waits on back-pressure), so there is no
output buffer. :func:`host_link_for` builds one for an artifact layer with an engine
from :mod:`hw.engine`.

Members: ``rx`` In(1), ``tx`` Out(1); ``busy`` Out(1) (a frame is in progress),
``error`` Out(1) (the last frame was refused; cleared by the next good one),
``frames`` Out(16) (good frames answered).
"""
from __future__ import annotations

import math

from amaranth import Array, Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import protocol as P
from .uart import UARTRx, UARTTx, uart_divisor

__all__ = ["HostLink", "host_link_for", "crc8_next", "DEFAULT_TIMEOUT_S"]

#: The board's idle timeout inside a frame (seconds) unless given.
DEFAULT_TIMEOUT_S = 0.02


def crc8_next(crc, byte):
    """Amaranth expression: CRC-8 (poly 0x07) of ``crc`` after one more ``byte``."""
    # CRC-8 without final XOR is linear over GF(2): output bit j is the XOR of those bits i
    # of d = crc ^ byte whose one-hot table entry has bit j set (a flat XOR per bit).
    d = (crc ^ byte)[:8]
    cols = [P.crc8(bytes([1 << i])) for i in range(8)]
    bits = []
    for j in range(8):
        terms = [d[i] for i in range(8) if (cols[i] >> j) & 1]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc ^ t
        bits.append(acc)
    return Cat(*bits)


class HostLink(wiring.Component):
    """UART host link around ``engine`` (see the module doc).

    Parameters
    ----------
    engine : wiring.Component
        Has ``pix_in`` (In stream) and ``pix_out`` (Out stream) with the packed-pixel
        payloads of :mod:`hw.engine`.
    in_layout, out_layout : dict
        ``{"shape": [C, H, W], "bits", "signed"}`` of the engine's input / output frame.
    info : protocol.BoardInfo
        What ``CMD_INFO`` answers.
    divisor : int
        Clock cycles per UART bit.
    timeout_cycles : int
        Idle cycles inside a frame before it is dropped (``TIMEOUT``), and the quiet
        time that ends a drain after a refused header.
    """

    def __init__(self, engine, in_layout: dict, out_layout: dict, info: P.BoardInfo, divisor: int,
                 timeout_cycles: int):
        self.engine, self.info = engine, info
        self.divisor, self.timeout_cycles = int(divisor), int(timeout_cycles)
        if self.timeout_cycles < 1:
            raise ValueError(f"timeout of {self.timeout_cycles} cycles: it must be at least 1")
        self.in_c, self.in_h, self.in_w = in_layout["shape"]
        self.in_bits = int(in_layout["bits"])
        self.out_c, self.out_h, self.out_w = out_layout["shape"]
        self.out_bits, self.out_signed = int(out_layout["bits"]), bool(out_layout["signed"])
        self.in_eb, self.out_eb = P.elem_bytes(self.in_bits), P.elem_bytes(self.out_bits)
        self.in_pix_bytes = self.in_c * self.in_eb
        self.out_pix_bytes = self.out_c * self.out_eb
        self.in_bytes = self.in_pix_bytes * self.in_h * self.in_w
        self.out_bytes = self.out_pix_bytes * self.out_h * self.out_w
        for what, n in (("input", self.in_bytes), ("output", self.out_bytes)):
            if n > P.MAX_LEN:
                raise ValueError(f"{what} frame of {n} bytes exceeds the protocol's {P.MAX_LEN}-byte frames")
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1),
                          "frames": Out(16)})

    def elaborate(self, platform):
        m = Module()
        urx = m.submodules.uart_rx = UARTRx(self.divisor)
        utx = m.submodules.uart_tx = UARTTx(self.divisor)
        m.submodules.engine = eng = self.engine
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # ---- input frame buffer ------------------------------------------------------
        buf = m.submodules.inbuf = Memory(shape=8, depth=self.in_bytes, init=[])
        wp, rp = buf.write_port(), buf.read_port()

        # ---- response FSM (drives the UART transmitter) ------------------------------
        resp_start = Signal()
        resp_status = Signal(8)
        resp_len = Signal(16)
        resp_src = Signal(2)            # 0: none, 1: info ROM, 2: engine output
        r_status, r_len, r_src = Signal(8), Signal(16), Signal(2)
        r_crc = Signal(8)
        r_count = Signal(16)
        r_final = Signal(16)            # r_len - 1: index of the last payload byte
        tx_idle = Signal()
        info = list(self.info.to_bytes())
        info_rom = Array(Const(b, 8) for b in info)
        ser_valid, ser_ready, ser_byte = Signal(), Signal(), Signal(8)

        tx_byte, tx_valid = Signal(8), Signal()
        m.d.comb += [utx.i.payload.eq(tx_byte), utx.i.valid.eq(tx_valid)]
        sent = tx_valid & utx.i.ready
        with m.FSM(name="resp"):
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(~resp_start)
                with m.If(resp_start):
                    m.d.sync += [r_status.eq(resp_status), r_len.eq(resp_len), r_src.eq(resp_src), r_crc.eq(0),
                                 r_count.eq(0), r_final.eq(resp_len - 1)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += [tx_byte.eq(P.SYNC_RESP), tx_valid.eq(1)]
                with m.If(sent):
                    m.next = "STATUS"
            for state, value, nxt in (("STATUS", r_status, "LEN0"), ("LEN0", r_len[:8], "LEN1"),
                                      ("LEN1", r_len[8:], None)):
                with m.State(state):
                    m.d.comb += [tx_byte.eq(value), tx_valid.eq(1)]
                    with m.If(sent):
                        m.d.sync += r_crc.eq(crc8_next(r_crc, value))
                        if nxt:
                            m.next = nxt
                        else:
                            m.next = "LENCHK"
            with m.State("LENCHK"):
                with m.If(r_len == 0):
                    m.next = "CRC"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(r_src == 1):
                    m.d.comb += [tx_byte.eq(info_rom[r_count[:max(1, math.ceil(math.log2(len(info))))]]),
                                 tx_valid.eq(1)]
                with m.Else():
                    m.d.comb += [tx_byte.eq(ser_byte), tx_valid.eq(ser_valid), ser_ready.eq(utx.i.ready)]
                with m.If(sent):
                    m.d.sync += [r_crc.eq(crc8_next(r_crc, tx_byte)), r_count.eq(r_count + 1)]
                    with m.If(r_count == r_final):
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [tx_byte.eq(r_crc), tx_valid.eq(1)]
                with m.If(sent):
                    m.next = "IDLE"

        # ---- output serializer: engine pixel -> bytes --------------------------------
        ob, eb = self.out_bits, self.out_eb
        word = Signal(self.out_pix_bytes * 8, reset_less=True)     # qualified by `left`
        left = Signal(range(self.out_pix_bytes + 1))
        fields = []
        for c in range(self.out_c):
            v = eng.pix_out.payload[c * ob:(c + 1) * ob]
            if eb * 8 > ob:
                ext = v[-1].replicate(eb * 8 - ob) if self.out_signed else Const(0, eb * 8 - ob)
                fields.append(Cat(v, ext))
            else:
                fields.append(v)
        m.d.comb += [ser_valid.eq(left != 0), ser_byte.eq(word[:8]), eng.pix_out.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(eng.pix_out.valid):
                m.d.sync += [word.eq(Cat(*fields)), left.eq(self.out_pix_bytes)]
        with m.Elif(ser_ready):
            m.d.sync += [word.eq(word >> 8), left.eq(left - 1)]

        # ---- pixel assembler: frame buffer -> engine ---------------------------------
        feed_start = Signal()
        raddr = Signal(range(self.in_bytes + 1))
        pix = Signal(self.in_pix_bytes * 8, reset_less=True)
        nbyte = Signal(range(self.in_pix_bytes + 1))
        m.d.comb += [rp.addr.eq(raddr), rp.en.eq(1)]
        ib = self.in_bits
        m.d.comb += eng.pix_in.payload.eq(Cat(*(pix[c * self.in_eb * 8:c * self.in_eb * 8 + ib]
                                                for c in range(self.in_c))))
        with m.FSM(name="feed"):
            with m.State("IDLE"):
                with m.If(feed_start):
                    m.d.sync += [raddr.eq(0), nbyte.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.next = "CAPTURE"
            with m.State("CAPTURE"):
                m.d.sync += [pix.eq(Cat(pix[8:], rp.data)), raddr.eq(raddr + 1), nbyte.eq(nbyte + 1)]
                with m.If(nbyte == self.in_pix_bytes - 1):
                    m.next = "PUSH"
                with m.Else():
                    m.next = "READ"
            with m.State("PUSH"):
                m.d.comb += eng.pix_in.valid.eq(1)
                with m.If(eng.pix_in.ready):
                    m.d.sync += nbyte.eq(0)
                    with m.If(raddr == self.in_bytes):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "READ"

        # ---- receive FSM --------------------------------------------------------------
        # the receiver's strobe and byte are registered again here, so that the route from the
        # UART (placed by the pins) to the receive FSM is a path of its own
        byte, got = Signal(8, reset_less=True), Signal()
        m.d.sync += [byte.eq(urx.data), got.eq(urx.valid)]
        # the header is kept as flags, each compared as its byte arrives, so that the CHECK
        # state decides from registers (command and 16-bit length compares were its critical path)
        is_info, is_infer = Signal(), Signal()          # command byte
        len_lo_zero, len_lo_frame = Signal(), Signal()  # length low byte: 0 / the frame's
        len_zero, len_frame = Signal(), Signal()        # length: 0 / the input frame's bytes
        crc = Signal(8)
        # byte == crc, compared a cycle early from the receiver's byte: crc only changes in a
        # `got` cycle and the receiver's strobes are a byte time apart, so crc is the same then
        crc_match = Signal()
        m.d.sync += crc_match.eq(urx.data == crc)
        waddr = Signal(range(max(2, self.in_bytes)))
        # idle counter with `timed_out` (idle == timeout_cycles) kept as a register: it feeds
        # the receive FSM and, through a refusal, the response FSM's load enables
        idle = Signal(range(self.timeout_cycles + 1))
        timed_out = Signal()
        with m.If(got):
            m.d.sync += [idle.eq(0), timed_out.eq(0)]
        with m.Elif(~timed_out):
            m.d.sync += [idle.eq(idle + 1), timed_out.eq(idle == self.timeout_cycles - 1)]
        m.d.comb += [wp.addr.eq(waddr), wp.data.eq(byte)]

        # the receive FSM's requests to the response FSM and the pixel assembler are registers
        # (one cycle later), so the CRC compare does not reach their load enables in one cycle
        m.d.sync += [resp_start.eq(0), feed_start.eq(0)]

        def respond(status, n=0, src=0):
            return [resp_start.eq(1), resp_status.eq(status), resp_len.eq(n), resp_src.eq(src)]

        def refuse(status):
            m.d.sync += respond(status)
            m.d.sync += self.error.eq(1)

        with m.FSM(name="recv"):
            with m.State("HUNT"):
                with m.If(got & (byte == P.SYNC_REQ)):
                    m.d.sync += crc.eq(0)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += [is_info.eq(byte == P.CMD_INFO), is_infer.eq(byte == P.CMD_INFER),
                                 crc.eq(crc8_next(crc, byte))]
                    m.next = "LEN0"
                with m.Elif(timed_out):
                    refuse(P.TIMEOUT)
                    m.next = "WAIT_TX"
            with m.State("LEN0"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += [len_lo_zero.eq(byte == 0), len_lo_frame.eq(byte == self.in_bytes & 0xFF),
                                 crc.eq(crc8_next(crc, byte))]
                    m.next = "LEN1"
                with m.Elif(timed_out):
                    refuse(P.TIMEOUT)
                    m.next = "WAIT_TX"
            with m.State("LEN1"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += [len_zero.eq(len_lo_zero & (byte == 0)),
                                 len_frame.eq(len_lo_frame & (byte == self.in_bytes >> 8)),
                                 crc.eq(crc8_next(crc, byte)), waddr.eq(0)]
                    m.next = "CHECK"
                with m.Elif(timed_out):
                    refuse(P.TIMEOUT)
                    m.next = "WAIT_TX"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(is_info & len_zero):
                    m.next = "RCRC"
                with m.Elif(is_infer & len_frame):
                    m.next = "PAYLOAD"
                with m.Elif(is_info | is_infer):
                    refuse(P.BAD_LENGTH)
                    m.next = "DRAIN"
                with m.Else():
                    refuse(P.BAD_COMMAND)
                    m.next = "DRAIN"
            with m.State("PAYLOAD"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.comb += wp.en.eq(1)
                    m.d.sync += [crc.eq(crc8_next(crc, byte)), waddr.eq(waddr + 1)]
                    with m.If(waddr == self.in_bytes - 1):
                        m.next = "RCRC"
                with m.Elif(timed_out):
                    refuse(P.TIMEOUT)
                    m.next = "WAIT_TX"
            with m.State("RCRC"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    with m.If(~crc_match):
                        refuse(P.BAD_CRC)
                    with m.Elif(is_info):
                        m.d.sync += respond(P.OK, len(info), 1)
                        m.d.sync += self.error.eq(0)
                    with m.Else():
                        m.d.sync += respond(P.OK, self.out_bytes, 2)
                        m.d.sync += feed_start.eq(1)
                        m.d.sync += [self.error.eq(0), self.frames.eq(self.frames + 1)]
                    m.next = "WAIT_TX"
                with m.Elif(timed_out):
                    refuse(P.TIMEOUT)
                    m.next = "WAIT_TX"
            with m.State("DRAIN"):                   # ignore the rest of a refused frame
                m.d.comb += self.busy.eq(1)
                with m.If(timed_out & tx_idle):
                    m.next = "HUNT"
            with m.State("WAIT_TX"):                 # until the response has gone out
                m.d.comb += self.busy.eq(1)
                with m.If(tx_idle):
                    m.next = "HUNT"
        return m


def host_link_for(artifact, layer: str, *, clk_hz: float, baud: int, multipliers: int | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, timeout_cycles: int | None = None,
                  min_utilisation: float | None = None) -> HostLink:
    """A :class:`HostLink` around the :mod:`hw.engine` engine of one artifact layer."""
    from hw.engine import build_engine

    divisor = uart_divisor(clk_hz, baud)            # bad baud rates fail before anything is built
    if timeout_cycles is None and not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                                       and timeout_s > 0):
        raise ValueError(f"link timeout {timeout_s!r} s: give a finite number of seconds > 0")
    engine = build_engine(artifact, layer, multipliers, min_utilisation=min_utilisation)
    first, last = engine.stages[0], engine.stages[-1]
    in_layout = {"shape": [first.in_ch, first.height, first.width], "bits": first.in_bits,
                 "signed": first.in_signed}
    out_layout = {"shape": [last.out_ch, last.out_height, last.out_width], "bits": last.out_bits,
                  "signed": last.out_signed}
    cycles = int(timeout_cycles if timeout_cycles is not None else round(timeout_s * clk_hz))
    cycles = max(cycles, 20 * divisor)            # at least two byte times
    op = artifact.layer(layer)["op"]
    info = P.BoardInfo(P.PROTOCOL_VERSION, op, tuple(in_layout["shape"]), in_layout["bits"], in_layout["signed"],
                       tuple(out_layout["shape"]), out_layout["bits"], out_layout["signed"],
                       engine.plan.multipliers, engine.plan.cycles_per_frame, int(round(clk_hz)), int(baud), cycles)
    return HostLink(engine, in_layout, out_layout, info, divisor, cycles)
