"""The host link: UART + framing protocol (:mod:`deploy.fpga.protocol`) around an engine.

:class:`HostLink` is a ``wiring.Component`` with a serial line in and out::

    rx -> UARTRx -> receive FSM -> input frame buffer (byte RAM, CRC checked)
                                     -> pixel assembler -> engine.pix_in
    tx <- UARTTx <- response FSM <- byte serializer <- engine.pix_out
                                 <- answer trailer (class, cycle count)
                                 <- board-info ROM / status codes

A frame is buffered whole and only fed to the engine when its CRC matches, so a
corrupted frame never reaches the engine. The output streams straight from the
engine to the serial line (the engine waits on back-pressure), so there is no
output buffer. The class (argmax of the output values) is found from the bytes as
they are serialized, and a counter measures the cycles from the frame's first input
beat to its last output beat; both follow the output frame in the answer.
:func:`host_link_for` builds one around a layer engine (:mod:`hw.engine`) or around
the whole network (:class:`hw.network.NetworkEngine`).

Members: ``rx`` In(1), ``tx`` Out(1); ``busy`` Out(1) (a frame is in progress),
``error`` Out(1) (the last frame was refused; cleared by the next good one),
``frames`` Out(16) (good frames answered).
"""
from __future__ import annotations

import math

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import protocol as P
from .uart import UARTRx, UARTTx, uart_divisor

__all__ = ["HostLink", "host_link_for", "engine_for", "crc8_next", "DEFAULT_TIMEOUT_S"]

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


def _one_hot_select(sel, values: list[int], width: int):
    """``values[k]`` where bit ``k`` of ``sel`` is the one set (0 when none is): per output
    bit, the OR of the ``sel`` bits whose value has that bit, instead of a priority chain."""
    bits = []
    for b in range(width):
        terms = [sel[k] for k, v in enumerate(values) if (v >> b) & 1]
        bits.append(Cat(*terms).any() if terms else Const(0, 1))
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

    ``info.batch`` frames fit the input buffer (a CMD_INFER_BATCH request); they are fed to
    the engine back to back, so frames overlap in its pipeline. Each frame's cycle count
    comes from a free-running counter stamped at its first input beat (a FIFO of stamps,
    one per frame in flight) and read at its last output beat.
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
        self.answer_bytes = self.out_bytes + P.TRAILER_LEN
        self.batch = int(info.batch)
        if self.batch < 1:
            raise ValueError(f"a batch of {self.batch} frames: a board takes at least 1 per request")
        for what, n in (("input", self.batch * self.in_bytes), ("answer", self.batch * self.answer_bytes)):
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
        # no_rw_check: the receiver writes only while no frame is being fed (PAYLOAD comes
        # after the last answer has gone out); the port reads asynchronously into a register
        # (_feed), which yosys merges into it honouring that, where from a synchronous port it
        # would add a write-data bypass behind the block RAM
        buf = m.submodules.inbuf = Memory(shape=8, depth=self.batch * self.in_bytes, init=[],
                                          attrs={"no_rw_check": 1})
        wp, rp = buf.write_port(), buf.read_port(domain="comb")

        # ---- response FSM (drives the UART transmitter) ------------------------------
        resp_start = Signal()
        resp_status = Signal(8)
        resp_len = Signal(16)
        resp_src = Signal(2)            # 0: none, 1: info ROM, 2: engine output
        r_status, r_len, r_src = Signal(8, name="r_status"), Signal(16, name="r_len"), Signal(2, name="r_src")
        r_crc = Signal(8)
        r_count = Signal(16)
        r_final = Signal(16)            # r_len - 1: index of the last payload byte
        tx_idle = Signal()
        info = list(self.info.to_bytes())
        info_rom = Array(Const(b, 8) for b in info)
        ser_valid, ser_ready, ser_byte = Signal(name="ser_valid"), Signal(name="ser_ready"), Signal(8, name="ser_byte")

        # each answer: the output frame's bytes, then its trailer (class u16, cycles u32)
        in_trailer = Signal()
        answer_byte = Signal(range(self.answer_bytes))      # position within the current answer
        trailer_byte = Signal(8)
        label = Signal(16)
        cycles = Signal(32)
        trailer = Cat(label, cycles)
        trailer_index = (answer_byte - self.out_bytes)[:3]
        m.d.comb += trailer_byte.eq(Array(trailer[8 * i:8 * i + 8] for i in range(P.TRAILER_LEN))[trailer_index])
        with m.If(resp_start):
            m.d.sync += [in_trailer.eq(0), answer_byte.eq(0)]

        # The FSM's byte goes through a one-byte register to the transmitter, and the CRC is
        # updated from that register a cycle after the byte entered it: the byte multiplexer
        # (info ROM, trailer, serializer) and the CRC update are two paths instead of one.
        # A byte on the wire takes ten bit times, so the register costs no throughput, and
        # the CRC has its last byte long before the CRC state can hand it over.
        tx_byte, tx_valid = Signal(8, name="tx_byte"), Signal(name="tx_valid")
        q_byte = Signal(8, name="q_byte", reset_less=True)       # qualified by q_valid
        q_valid = Signal(name="q_valid")
        tx_counts = Signal(name="tx_counts")       # the FSM's byte is covered by the CRC
        crc_pending = Signal(name="crc_pending")   # q_byte entered in the last cycle and counts
        m.d.comb += [utx.i.payload.eq(q_byte), utx.i.valid.eq(q_valid)]
        sent = tx_valid & ~q_valid
        with m.If(sent):
            m.d.sync += [q_byte.eq(tx_byte), q_valid.eq(1)]
        with m.Elif(utx.i.ready):
            m.d.sync += q_valid.eq(0)
        m.d.sync += crc_pending.eq(sent & tx_counts)
        with m.If(crc_pending):
            m.d.sync += r_crc.eq(crc8_next(r_crc, q_byte))
        with m.FSM(name="resp"):
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(~resp_start & ~q_valid)
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
                    m.d.comb += [tx_byte.eq(value), tx_valid.eq(1), tx_counts.eq(1)]
                    with m.If(sent):
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
                m.d.comb += tx_counts.eq(1)
                with m.If(r_src == 1):
                    m.d.comb += [tx_byte.eq(info_rom[r_count[:max(1, math.ceil(math.log2(len(info))))]]),
                                 tx_valid.eq(1)]
                with m.Elif(in_trailer):
                    m.d.comb += [tx_byte.eq(trailer_byte), tx_valid.eq(1)]
                with m.Else():
                    m.d.comb += [tx_byte.eq(ser_byte), tx_valid.eq(ser_valid), ser_ready.eq(~q_valid)]
                with m.If(sent):
                    m.d.sync += r_count.eq(r_count + 1)
                    with m.If(r_src == 2):
                        m.d.sync += answer_byte.eq(answer_byte + 1)
                        with m.If(answer_byte == self.out_bytes - 1):
                            m.d.sync += in_trailer.eq(1)
                        with m.If(answer_byte == self.answer_bytes - 1):
                            m.d.sync += [in_trailer.eq(0), answer_byte.eq(0)]
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
        frame_cycles, last_beat = self._frame_timer(m, eng)
        # a network's answer is one beat per frame: a FIFO of a batch of them (each with its
        # frame's cycle count) lets the engine run at its own pace while the serial line
        # drains, so the count is the engine's
        out_valid, out_ready, out_payload, queued_cycles = self._output_queue(m, eng, frame_cycles)
        fields = []
        for c in range(self.out_c):
            v = out_payload[c * ob:(c + 1) * ob]
            if eb * 8 > ob:
                ext = v[-1].replicate(eb * 8 - ob) if self.out_signed else Const(0, eb * 8 - ob)
                fields.append(Cat(v, ext))
            else:
                fields.append(v)
        # no new pixel while a trailer is going out: the trailer reads the cycle count and class
        # of the frame just serialized, which the next frame's last beat would overwrite
        take = (left == 0) & ~in_trailer
        m.d.comb += [ser_valid.eq(left != 0), ser_byte.eq(word[:8]), out_ready.eq(take)]
        with m.If(left == 0):
            with m.If(take & out_valid):
                m.d.sync += [word.eq(Cat(*fields)), left.eq(self.out_pix_bytes)]
                if queued_cycles is not None:
                    m.d.sync += cycles.eq(queued_cycles)
        with m.Elif(ser_ready):
            m.d.sync += [word.eq(word >> 8), left.eq(left - 1)]
        if queued_cycles is None:           # no queue: the count of the frame whose beats are leaving
            with m.If(last_beat):
                m.d.sync += cycles.eq(frame_cycles)
        self._class_of_serialized(m, word, left, ser_ready, label)

        # ---- pixel assembler: frame buffer -> engine ---------------------------------
        feed_start = Signal()
        count = Signal(range(self.batch + 1))          # frames in the request (1 for CMD_INFER)
        # the request's sizes, set with ``count`` when its header is accepted (registers: a
        # multiplexer of constants by ``count`` was the board top's critical path)
        feed_end = Signal(range(self.batch * self.in_bytes + 1))      # input bytes
        answer_len = Signal(16)                                        # answer payload bytes
        self._feed(m, rp, eng, feed_start, feed_end)

        # ---- receive FSM --------------------------------------------------------------
        # the receiver's strobe and byte are registered again here, so that the route from the
        # UART (placed by the pins) to the receive FSM is a path of its own
        byte, got = Signal(8, reset_less=True, name="byte"), Signal(name="got")
        m.d.sync += [byte.eq(urx.data), got.eq(urx.valid)]
        # the header is kept as flags, each compared as its byte arrives, so that the CHECK
        # state decides from registers (command and 16-bit length compares were its critical path)
        # command byte
        is_info, is_infer, is_batch = Signal(name="is_info"), Signal(name="is_infer"), Signal(name="is_batch")
        len_lo_zero = Signal()                          # length low byte: 0
        len_zero = Signal()                             # length: 0
        # length low byte / whole length == k frames, for k = 1..batch
        len_lo_frames = Signal(self.batch)
        len_frames = Signal(self.batch)
        ok_info, ok_infer, ok_batch = Signal(name="ok_info"), Signal(name="ok_infer"), Signal(name="ok_batch")
        known_cmd = Signal(name="known_cmd")
        crc_ok = Signal(name="crc_ok")                  # the request's CRC byte matched
        sizes = [k * self.in_bytes for k in range(1, self.batch + 1)]
        crc = Signal(8)
        # byte == crc, compared a cycle early from the receiver's byte: crc only changes in a
        # `got` cycle and the receiver's strobes are a byte time apart, so crc is the same then
        crc_match = Signal()
        m.d.sync += crc_match.eq(urx.data == crc)
        waddr = Signal(range(max(2, self.batch * self.in_bytes)))
        last_waddr = Signal.like(waddr)                # the request's last payload byte
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
                                 is_batch.eq(byte == P.CMD_INFER_BATCH),
                                 crc.eq(crc8_next(crc, byte))]
                    m.next = "LEN0"
                with m.Elif(timed_out):
                    m.next = "TIMEOUT"
            with m.State("LEN0"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += [len_lo_zero.eq(byte == 0),
                                 len_lo_frames.eq(Cat(*(byte == n & 0xFF for n in sizes))),
                                 crc.eq(crc8_next(crc, byte))]
                    m.next = "LEN1"
                with m.Elif(timed_out):
                    m.next = "TIMEOUT"
            with m.State("LEN1"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += [len_zero.eq(len_lo_zero & (byte == 0)),
                                 len_frames.eq(len_lo_frames & Cat(*(byte == n >> 8 for n in sizes))),
                                 crc.eq(crc8_next(crc, byte)), waddr.eq(0)]
                    m.next = "DECODE"
                with m.Elif(timed_out):
                    m.next = "TIMEOUT"
            with m.State("DECODE"):
                # the header's verdicts and the request's sizes as registers, for CHECK
                m.d.comb += self.busy.eq(1)
                m.d.sync += [ok_info.eq(is_info & len_zero), ok_infer.eq(is_infer & len_frames[0]),
                             ok_batch.eq(is_batch & len_frames.any()), known_cmd.eq(is_info | is_infer | is_batch)]
                # len_frames has at most one bit set (the sizes differ), so each size is an OR
                # of the constants its bit selects (two LUT levels, no priority chain)
                for reg, per_k in ((count, lambda k: k), (last_waddr, lambda k: k * self.in_bytes - 1),
                                   (feed_end, lambda k: k * self.in_bytes),
                                   (answer_len, lambda k: k * self.answer_bytes)):
                    m.d.sync += reg.eq(_one_hot_select(len_frames, [per_k(k) for k in range(1, self.batch + 1)],
                                                       len(reg)))
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(ok_info):
                    m.next = "RCRC"
                with m.Elif(ok_infer | ok_batch):
                    m.next = "PAYLOAD"
                with m.Elif(known_cmd):
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
                    with m.If(waddr == last_waddr):
                        m.next = "RCRC"
                with m.Elif(timed_out):
                    m.next = "TIMEOUT"
            with m.State("RCRC"):
                m.d.comb += self.busy.eq(1)
                with m.If(got):
                    m.d.sync += crc_ok.eq(crc_match)
                    m.next = "VERDICT"
                with m.Elif(timed_out):
                    m.next = "TIMEOUT"
            # Every answer is requested from one of three states (VERDICT, CHECK, TIMEOUT),
            # each deciding from registers, so the response FSM's load enables are a few LUTs
            # from the receive FSM's state.
            with m.State("VERDICT"):
                m.d.comb += self.busy.eq(1)
                with m.If(~crc_ok):
                    refuse(P.BAD_CRC)
                with m.Elif(is_info):
                    m.d.sync += respond(P.OK, len(info), 1)
                    m.d.sync += self.error.eq(0)
                with m.Else():
                    m.d.sync += respond(P.OK, answer_len, 2)
                    m.d.sync += feed_start.eq(1)
                    m.d.sync += [self.error.eq(0), self.frames.eq(self.frames + count)]
                m.next = "WAIT_TX"
            with m.State("TIMEOUT"):                 # a request cut short
                m.d.comb += self.busy.eq(1)
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

    def _feed(self, m: Module, rp, eng, feed_start, feed_end) -> None:
        """The pixel assembler: from ``feed_start``, input bytes ``0 .. feed_end - 1`` of the
        frame buffer (read port ``rp``) go to ``eng.pix_in``, ``in_pix_bytes`` bytes (channels
        in order, little endian) per beat.

        Reads are pipelined: an address is issued per cycle, read into a register (the block
        RAM's read register) and registered again before it is shifted into the pixel (a
        block RAM's output without its output register is slow, ~5.8 ns on an ECP5-8, so
        nothing but a register may follow it; on ECP5 that register is the block RAM's
        output register, deploy/fpga/outreg.py), so a pixel takes ``in_pix_bytes + 3``
        cycles."""
        nb = self.in_pix_bytes
        raddr = Signal(range(self.batch * self.in_bytes + 1), name="feed_raddr")
        pix = Signal(nb * 8, name="feed_pix", reset_less=True)
        rdata = Signal(8, name="feed_rdata", reset_less=True)     # qualified by `arrived`
        issued = Signal(range(nb + 1), name="feed_issued")         # reads issued for this pixel
        got = Signal(range(nb + 1), name="feed_got")               # bytes shifted into it
        issue = Signal(name="feed_issue")                  # read raddr this cycle
        in_flight, arrived = Signal(name="feed_in_flight"), Signal(name="feed_arrived")   # rp.data / rdata valid
        read = Signal(8, name="feed_read", reset_less=True)        # the read register: valid with in_flight
        m.d.comb += rp.addr.eq(raddr)
        m.d.sync += [read.eq(rp.data), rdata.eq(read), in_flight.eq(issue), arrived.eq(in_flight)]
        ib = self.in_bits
        m.d.comb += eng.pix_in.payload.eq(Cat(*(pix[c * self.in_eb * 8:c * self.in_eb * 8 + ib]
                                                for c in range(self.in_c))))
        with m.FSM(name="feed"):
            with m.State("IDLE"):
                with m.If(feed_start):
                    m.d.sync += [raddr.eq(0), issued.eq(0), got.eq(0)]
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += issue.eq(issued != nb)
                with m.If(issue):
                    m.d.sync += [raddr.eq(raddr + 1), issued.eq(issued + 1)]
                with m.If(arrived):
                    m.d.sync += [pix.eq(Cat(pix[8:], rdata)), got.eq(got + 1)]
                    with m.If(got == nb - 1):
                        m.next = "PUSH"
            with m.State("PUSH"):
                m.d.comb += eng.pix_in.valid.eq(1)
                with m.If(eng.pix_in.ready):
                    m.d.sync += [issued.eq(0), got.eq(0)]
                    with m.If(raddr == feed_end):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "FILL"

    def _output_queue(self, m: Module, eng, frame_cycles) -> tuple:
        """``(valid, ready, payload, cycles)`` of the engine's output as the serializer takes
        it: through a FIFO of ``batch`` pixels, each with its frame's cycle count, when a
        frame's output is one pixel (a network's logits); else straight from the engine,
        with ``cycles`` None."""
        width = len(Value.cast(eng.pix_out.payload))
        if self.out_h * self.out_w != 1 or self.batch == 1:
            return eng.pix_out.valid, eng.pix_out.ready, Value.cast(eng.pix_out.payload), None
        from amaranth.lib.fifo import SyncFIFOBuffered
        q = m.submodules.answers = SyncFIFOBuffered(width=width + 32, depth=self.batch)
        m.d.comb += [q.w_data.eq(Cat(eng.pix_out.payload, frame_cycles)), q.w_en.eq(eng.pix_out.valid),
                     eng.pix_out.ready.eq(q.w_rdy)]
        return q.r_rdy, q.r_en, q.r_data[:width], q.r_data[width:]

    def _frame_timer(self, m: Module, eng) -> tuple:
        """``(frame_cycles, last_beat)``: ``last_beat`` is high in the cycle a frame's last
        output beat leaves the engine, and ``frame_cycles`` then holds the cycles since that
        frame's first input beat. A free-running counter is stamped into a FIFO at each
        frame's first input beat (``batch`` frames may be in flight) and the stamp is popped
        at the frame's last output beat."""
        from amaranth.lib.fifo import SyncFIFO
        now = Signal(32)
        m.d.sync += now.eq(now + 1)
        stamps = m.submodules.stamps = SyncFIFO(width=32, depth=self.batch)
        in_pixels, out_pixels = self.in_h * self.in_w, self.out_h * self.out_w
        in_seen = Signal(range(max(2, in_pixels)))
        out_seen = Signal(range(max(2, out_pixels)))
        took_in = eng.pix_in.valid & eng.pix_in.ready
        took_out = eng.pix_out.valid & eng.pix_out.ready
        last_beat = took_out & (out_seen == out_pixels - 1)
        frame_cycles = Signal(32)
        m.d.comb += [stamps.w_data.eq(now), stamps.w_en.eq(took_in & (in_seen == 0)),
                     stamps.r_en.eq(last_beat), frame_cycles.eq(now - stamps.r_data)]
        with m.If(took_in):
            m.d.sync += in_seen.eq(Mux(in_seen == in_pixels - 1, 0, in_seen + 1))
        with m.If(took_out):
            m.d.sync += out_seen.eq(Mux(out_seen == out_pixels - 1, 0, out_seen + 1))
        return frame_cycles, last_beat

    def _class_of_serialized(self, m: Module, word, left, taken, label) -> None:
        """``label``: the index of the largest output value of the pixel being serialized
        (the first of equal ones), or :data:`~deploy.fpga.protocol.NO_CLASS` for an output
        of more than one pixel. Each value is compared as its first byte leaves: the
        serializer's ``word`` then holds it, sign-extended, in its low bytes; the value, its
        channel and whether it is the first are registered, and compared in the next cycle
        (the compare's carry chain and the enable of ``best`` and ``label`` have a cycle of
        their own). The last comparison is a byte time before the trailer is sent (every
        value takes at least one byte of 10 bit times), so ``label`` is settled by then."""
        if self.out_h * self.out_w != 1:
            m.d.comb += label.eq(P.NO_CLASS)
            return
        eb = self.out_eb
        width = 8 * eb
        shape = signed(width) if self.out_signed else unsigned(width)
        value = word[:width].as_signed() if self.out_signed else word[:width]
        best = Signal(shape)
        index = Signal(range(max(2, self.out_c)))       # the channel whose bytes are leaving
        byte_in_value = Signal(range(max(2, eb)))
        first = left == self.out_pix_bytes
        compare, first_r = Signal(name="compare"), Signal(name="compare_first")
        value_r, index_r = Signal(shape, name="compare_value"), Signal.like(index, name="compare_index")
        m.d.sync += [compare.eq((left != 0) & taken & (byte_in_value == 0)), first_r.eq(first),
                     value_r.eq(value), index_r.eq(index)]
        with m.If(compare & (first_r | (value_r > best))):
            m.d.sync += [best.eq(value_r), label.eq(index_r)]
        with m.If((left != 0) & taken):
            with m.If(byte_in_value == eb - 1):
                m.d.sync += [byte_in_value.eq(0), index.eq(index + 1)]
            with m.Else():
                m.d.sync += byte_in_value.eq(byte_in_value + 1)
        with m.If(left == 0):
            m.d.sync += [index.eq(0), byte_in_value.eq(0)]


def engine_for(artifact, layer: str | None, multipliers: int | None = None, *,
               min_utilisation: float | None = None, dsps: int | None = None) -> tuple:
    """``(engine, in_layout, out_layout, op, layers)`` for a board: the :mod:`hw.engine`
    engine of ``layer``, or with ``layer=None`` the whole network
    (:class:`hw.network.NetworkEngine`, its multiplier budget ``multipliers``, its products
    beyond the part's ``dsps`` in logic). The
    layouts are ``{"shape": [C, H, W], "bits", "signed"}``. HwError / ArtifactError (one line)."""
    if layer is None:
        from hw.network import NetworkEngine, plan_network, select_layers
        seg, _, entry = select_layers(artifact)
        engine = NetworkEngine(artifact, plan_network(artifact, seg, multipliers, dsps=dsps))
        records = (entry, seg[-1]["out"])
        op, layers = "network", len(seg)
    else:
        from hw.engine import build_engine
        engine = build_engine(artifact, layer, multipliers, min_utilisation=min_utilisation)
        first, last = engine.stages[0], engine.stages[-1]
        records = ({"shape": [first.in_ch, first.height, first.width], "bits": first.in_bits,
                    "signed": first.in_signed},
                   {"shape": [last.out_ch, last.out_height, last.out_width], "bits": last.out_bits,
                    "signed": last.out_signed})
        op, layers = artifact.layer(layer)["op"], 1
    in_layout, out_layout = ({"shape": list(P.frame_shape(r["shape"])), "bits": int(r["bits"]),
                              "signed": bool(r["signed"])} for r in records)
    return engine, in_layout, out_layout, op, layers


def host_link_for(artifact, layer: str | None, *, clk_hz: float, baud: int, multipliers: int | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, timeout_cycles: int | None = None,
                  min_utilisation: float | None = None, dsps: int | None = None) -> HostLink:
    """A :class:`HostLink` around the engine of one artifact layer, or (``layer=None``) of the
    whole network (:func:`engine_for`)."""
    divisor = uart_divisor(clk_hz, baud)            # bad baud rates fail before anything is built
    if timeout_cycles is None and not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                                       and timeout_s > 0):
        raise ValueError(f"link timeout {timeout_s!r} s: give a finite number of seconds > 0")
    engine, in_layout, out_layout, op, layers = engine_for(artifact, layer, multipliers,
                                                           min_utilisation=min_utilisation, dsps=dsps)
    cycles = int(timeout_cycles if timeout_cycles is not None else round(timeout_s * clk_hz))
    cycles = max(cycles, 20 * divisor)            # at least two byte times
    info = P.BoardInfo(P.PROTOCOL_VERSION, op, tuple(in_layout["shape"]), in_layout["bits"], in_layout["signed"],
                       tuple(out_layout["shape"]), out_layout["bits"], out_layout["signed"],
                       engine.plan.multipliers, engine.plan.cycles_per_frame, int(round(clk_hz)), int(baud), cycles,
                       layers).with_batch_limit()
    return HostLink(engine, in_layout, out_layout, info, divisor, cycles)
