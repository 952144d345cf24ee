"""cocotb testbench of the board top's host link, driven through its serial line.

Run by :func:`deploy.fpga.simrun.run` under Verilator; the plan (JSON, path in
``ELRT_FPGA_PLAN``) names the artifact, the layer (null: the whole network), the UART
divisor and the board's idle timeout, and optionally a ``.npy`` of input frames to send
(else seeded random valid frames). Every request is encoded with :mod:`deploy.fpga.protocol` and driven
bit by bit on ``rx``; ``tx`` is decoded bit by bit. Each test appends a record
``{"test", "passed", "error", ...}`` to the plan's ``results`` file.

Tests:

* ``protocol`` -- INFO; several INFER frames whose answers are compared with the golden
  model element by element, and whose class (the argmax, for a vector output) and cycle
  count (non-zero, at most the frame's time on the board) are checked; then bad frames, each followed by a good frame that must come out
  right: a corrupted payload byte (BAD_CRC), noise before the sync byte, a wrong
  length (BAD_LENGTH, then the drain), an unknown command (BAD_COMMAND), a frame cut
  short (TIMEOUT) and a byte with a broken stop bit (dropped by the UART -> TIMEOUT).
* ``host_bridge`` -- (only when the plan has ``host_cmd``) the real host tool,
  ``python -m deploy.host --port socket://...``, run as a subprocess against the
  simulated board through a TCP socket that this test bridges to the serial line.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import traceback

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from artifact import load_artifact

from . import protocol as P
from .board_model import golden_outputs

PERIOD_NS = 10


class Serial:
    """Bit-level UART on the DUT's ``rx`` / ``tx`` pins."""

    def __init__(self, dut, divisor: int):
        self.dut, self.bit_ns = dut, divisor * PERIOD_NS
        self.received = bytearray()
        dut.rx.value = 1
        cocotb.start_soon(self._monitor())

    async def send(self, data, stop_bit: int = 1, gap_bits: int = 0):
        for b in bytes(data):
            self.dut.rx.value = 0
            await Timer(self.bit_ns, unit="ns")
            for i in range(8):
                self.dut.rx.value = (b >> i) & 1
                await Timer(self.bit_ns, unit="ns")
            self.dut.rx.value = stop_bit
            await Timer(self.bit_ns, unit="ns")
            self.dut.rx.value = 1
            if gap_bits:
                await Timer(gap_bits * self.bit_ns, unit="ns")

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.tx)
            await Timer(self.bit_ns * 3 // 2, unit="ns")
            b = 0
            for i in range(8):
                b |= int(self.dut.tx.value) << i
                await Timer(self.bit_ns, unit="ns")
            assert int(self.dut.tx.value) == 1, "stop bit of a transmitted byte is low"
            self.received.append(b)

    async def response(self, max_bytes: int, extra_ns: int = 0):
        """Wait for one complete response frame; (status, payload, crc_ok)."""
        dec = P.FrameDecoder(P.SYNC_RESP)
        limit = (max_bytes + 8) * 10 * self.bit_ns + extra_ns
        waited = 0
        while waited <= limit:
            if self.received:
                data = bytes(self.received)
                self.received.clear()
                frames = dec.feed(data)
                if frames:
                    assert len(frames) == 1 and not dec.buf, f"more than one response: {frames} {dec.buf}"
                    return frames[0]
            await Timer(5 * self.bit_ns, unit="ns")
            waited += 5 * self.bit_ns
        raise AssertionError(f"no response within {limit} ns (got {bytes(dec.buf).hex()})")


def _plan() -> dict:
    return json.loads(open(os.environ["ELRT_FPGA_PLAN"]).read())


def _record(plan: dict, rec: dict) -> None:
    with open(plan["results"], "a") as f:
        f.write(json.dumps(rec) + "\n")


async def _start(dut, plan):
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    ser = Serial(dut, int(plan["divisor"]))
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)
    return ser


class _Ctx:
    def __init__(self, plan):
        self.plan = plan
        self.art = load_artifact(plan["artifact"])
        self.layer = plan["layer"]
        self.info = P.BoardInfo(**{**plan["info"], "in_shape": tuple(plan["info"]["in_shape"]),
                                   "out_shape": tuple(plan["info"]["out_shape"])})
        self.rng = np.random.default_rng(int(plan["seed"]))
        self.compute_cycles = int(plan.get("compute_cycles", 100000))
        self.compute_ns = self.compute_cycles * PERIOD_NS
        self.inputs = np.load(plan["inputs"], allow_pickle=False) if plan.get("inputs") else None
        self.sent = 0
        self.cycles = []                            # the board's count of every answer checked

    def frame(self):
        """The next input frame: from the plan's inputs in turn, else random (both range ends included)."""
        if self.inputs is not None:
            x = np.asarray(self.inputs[self.sent % len(self.inputs)], dtype=np.int64).reshape(self.info.in_shape)
            self.sent += 1
            return x
        lo, hi = ((-(1 << (self.info.in_bits - 1)), (1 << (self.info.in_bits - 1)) - 1) if self.info.in_signed
                  else (0, (1 << self.info.in_bits) - 1))
        x = self.rng.integers(lo, hi + 1, size=self.info.in_shape, dtype=np.int64)
        x.reshape(-1)[:2] = (lo, hi)
        return x

    def golden(self, x):
        return golden_outputs(self.art, self.layer, x[None])[0].reshape(self.info.out_shape)


async def _infer_ok(ser, ctx, what: str, batch: int = 0):
    """One INFER request (``batch`` 0) or a CMD_INFER_BATCH of ``batch`` frames; every answer
    checked. Returns the output elements checked."""
    xs = [ctx.frame() for _ in range(max(1, batch))]
    payload = b"".join(P.tensor_to_bytes(x, ctx.info.in_bits, ctx.info.in_signed) for x in xs)
    await ser.send(P.encode_request(P.CMD_INFER_BATCH if batch else P.CMD_INFER, payload))
    status, data, ok = await ser.response(len(xs) * ctx.info.answer_bytes, len(xs) * ctx.compute_ns)
    assert ok, f"{what}: response CRC is wrong"
    assert status == P.OK, f"{what}: status {status} ({P.STATUS_NAMES.get(status)})"
    n = ctx.info.answer_bytes
    assert len(data) == len(xs) * n, f"{what}: {len(data)} answer bytes for {len(xs)} frames of {n}"
    return sum(_check_answer(ser, ctx, f"{what}, frame {k}" if batch else what, xs[k],
                             P.decode_answer(data[k * n:(k + 1) * n], ctx.info), k) for k in range(len(xs)))


def _check_answer(ser, ctx, what: str, x, answer: P.Answer, queued: int) -> int:
    """Values, class and cycle count of one answer; ``queued``: answers of the same request
    serialized before it (each holds the engine's output back for its serial time)."""
    y, want = answer.values, ctx.golden(x)
    bad = np.argwhere(y != want)
    assert bad.size == 0, (f"{what}: {len(bad)} of {want.size} output elements differ from the golden model, "
                           f"first at {tuple(bad[0])}: got {y[tuple(bad[0])]}, want {want[tuple(bad[0])]}")
    label = P.answer_class(want, ctx.info)
    assert answer.label == (None if label == P.NO_CLASS else label), \
        f"{what}: the board's class is {answer.label}, the golden model's argmax {label}"
    # the count runs from the first input beat to the last output beat: at least one cycle,
    # and within the frame's time on the board (the output's serial time included)
    limit = ctx.compute_cycles + (queued + 1) * ctx.info.answer_bytes * 10 * ser.bit_ns // PERIOD_NS
    assert 0 < answer.cycles <= limit, f"{what}: the board counted {answer.cycles} cycles (expected 1..{limit})"
    ctx.cycles.append(answer.cycles)
    return want.size


async def _expect_status(ser, status, what, extra_ns: int = 0):
    st, data, ok = await ser.response(0, extra_ns)
    assert ok and st == status and not data, (f"{what}: expected status {status} "
                                              f"({P.STATUS_NAMES[status]}), got {st} crc_ok={ok}")


@cocotb.test()
async def protocol(dut):
    plan = _plan()
    rec = {"test": "protocol", "passed": False, "checks": []}
    t0 = time.monotonic()
    try:
        ser = await _start(dut, plan)
        ctx = _Ctx(plan)
        idle_ns = ctx.info.timeout_cycles * PERIOD_NS

        await ser.send(P.encode_request(P.CMD_INFO))
        st, data, ok = await ser.response(P.INFO_LEN)
        assert ok and st == P.OK, f"INFO: status {st} crc_ok={ok}"
        got = P.BoardInfo.from_bytes(data)
        assert got == ctx.info, f"INFO: board says {got}, expected {ctx.info}"
        rec["checks"].append("info")

        elements = 0
        for i in range(int(plan["frames"])):
            elements += await _infer_ok(ser, ctx, f"frame {i}")
        rec["checks"].append(f"{plan['frames']} frames bit-exact ({elements} elements)")

        # a batch: the board's most frames in one request, then a length that is no whole batch
        if ctx.info.batch > 1:
            elements += await _infer_ok(ser, ctx, f"batch of {ctx.info.batch}", batch=ctx.info.batch)
            rec["batch_cycles"] = ctx.cycles[-ctx.info.batch:]
            await ser.send(P.encode_request(P.CMD_INFER_BATCH, bytes(ctx.info.in_bytes + 1)))
            await _expect_status(ser, P.BAD_LENGTH, "batch of a frame and a byte")
            await Timer(idle_ns * 3 // 2, unit="ns")
            elements += await _infer_ok(ser, ctx, "frame after a bad batch")
            rec["checks"].append(f"batch of {ctx.info.batch} bit-exact; a bad batch length -> NAK, recovered")

        # a corrupted payload byte -> BAD_CRC, then a good frame
        frame = bytearray(P.encode_request(P.CMD_INFER, P.tensor_to_bytes(ctx.frame(), ctx.info.in_bits,
                                                                          ctx.info.in_signed)))
        frame[4 + len(frame) // 3] ^= 0x10
        await ser.send(frame)
        await _expect_status(ser, P.BAD_CRC, "corrupted payload")
        elements += await _infer_ok(ser, ctx, "frame after BAD_CRC")
        rec["checks"].append("bad CRC -> NAK, recovered")

        # noise (no sync byte in it) before a frame
        await ser.send(bytes([0x00, 0xFF, 0x13, 0x5A, 0x37]))
        elements += await _infer_ok(ser, ctx, "frame after line noise")
        rec["checks"].append("noise before sync skipped")

        # a wrong length -> BAD_LENGTH; the board drains the rest of the frame
        await ser.send(P.encode_request(P.CMD_INFER, bytes([P.SYNC_REQ]) * 7))
        await _expect_status(ser, P.BAD_LENGTH, "wrong length")
        await Timer(idle_ns * 3 // 2, unit="ns")
        elements += await _infer_ok(ser, ctx, "frame after BAD_LENGTH")
        rec["checks"].append("bad length -> NAK, drained, recovered")

        # an unknown command
        await ser.send(P.encode_request(0x7E, b"\x01\x02"))
        await _expect_status(ser, P.BAD_COMMAND, "unknown command")
        await Timer(idle_ns * 3 // 2, unit="ns")
        rec["checks"].append("bad command -> NAK")

        # a frame cut short -> TIMEOUT
        full = P.encode_request(P.CMD_INFER, P.tensor_to_bytes(ctx.frame(), ctx.info.in_bits, ctx.info.in_signed))
        await ser.send(full[:len(full) // 2])
        await _expect_status(ser, P.TIMEOUT, "truncated frame", idle_ns * 2)
        elements += await _infer_ok(ser, ctx, "frame after TIMEOUT")
        rec["checks"].append("truncated frame -> TIMEOUT, recovered")

        # a payload byte with a broken stop bit is dropped by the UART: the frame is short -> TIMEOUT
        k = 4 + len(full) // 2
        await ser.send(full[:k])
        await ser.send(full[k:k + 1], stop_bit=0, gap_bits=2)
        await ser.send(full[k + 1:])
        st, data, ok = await ser.response(0, idle_ns * 2)
        assert ok and st in (P.TIMEOUT, P.BAD_CRC), f"framing error: status {st}"
        await Timer(idle_ns * 3 // 2, unit="ns")
        elements += await _infer_ok(ser, ctx, "frame after a framing error")
        rec["checks"].append(f"UART framing error -> {P.STATUS_NAMES[st]}, recovered")

        # two good frames back to back
        for i in range(2):
            elements += await _infer_ok(ser, ctx, f"final frame {i}")
        rec.update(passed=True, elements=elements, cycles=ctx.cycles)
    except AssertionError as e:
        rec["error"] = str(e).splitlines()[0] if str(e) else "assertion failed"
    except Exception as e:                          # noqa: BLE001 - record anything
        rec["error"] = f"{type(e).__name__}: {e}; {traceback.format_exc(limit=3)}"
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    _record(plan, rec)
    assert rec["passed"], rec.get("error")


@cocotb.test()
async def host_bridge(dut):
    plan = _plan()
    if not plan.get("host_cmd"):
        return
    rec = {"test": "host_bridge", "passed": False}
    t0 = time.monotonic()
    proc = None
    try:
        ser = await _start(dut, plan)
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        cmd = [c.replace("{PORT}", str(port)) for c in plan["host_cmd"]]
        env = {**os.environ, "PYTHONPATH": plan["pythonpath"]}
        log = open(plan["host_log"], "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=plan["cwd"])
        srv.settimeout(60)
        conn, _ = srv.accept()
        conn.setblocking(False)
        bytes_in = bytes_out = 0
        while proc.poll() is None:
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                data = None
            if data:
                bytes_in += len(data)
                await ser.send(data)
            if ser.received:
                out = bytes(ser.received)
                ser.received.clear()
                conn.sendall(out)
                bytes_out += len(out)
            if not data:
                await Timer(20 * ser.bit_ns, unit="ns")
            if time.monotonic() - t0 > float(plan.get("host_wall_limit", 600)):
                raise AssertionError("host tool did not finish in time")
        conn.close()
        srv.close()
        rec.update(returncode=proc.returncode, bytes_in=bytes_in, bytes_out=bytes_out)
        assert proc.returncode == 0, f"host tool exited {proc.returncode}; see {plan['host_log']}"
        rec["passed"] = True
    except AssertionError as e:
        rec["error"] = str(e).splitlines()[0] if str(e) else "assertion failed"
    except Exception as e:                          # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    _record(plan, rec)
    assert rec["passed"], rec.get("error")
