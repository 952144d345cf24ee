"""A Python model of the board's host-link protocol, computing with the golden model.

:class:`BoardModel` behaves like :class:`deploy.fpga.link.HostLink` at the byte level
(same state machine: hunt, header checks, drain, idle timeout, CRC) and answers
``CMD_INFER`` with the golden model (:func:`golden_outputs`: one layer, or with
``layer=None`` the whole network), the class computed from those values and a cycle
count of 0 (a model has no clock: 0 says "not measured"). :func:`serve` puts it behind a
pseudo-terminal (the host tool opens the printed ``/dev/pts/N`` like a serial port)
or a TCP socket (``socket://127.0.0.1:PORT``), so the host tool can be tried and
tested without a board. ``python -m deploy.host serve`` runs it.
"""
from __future__ import annotations

import math
import numbers
import os
import select
import socket
import threading
import time

import numpy as np

from artifact import golden

from . import protocol as P

__all__ = ["BoardModel", "serve", "model_info", "golden_outputs", "input_record", "MAX_TIMEOUT_CYCLES"]

#: The board info record carries the idle timeout as an unsigned 32-bit cycle count.
MAX_TIMEOUT_CYCLES = 2**32 - 1


def input_record(artifact, layer: str | None) -> dict:
    """The input tensor record (``shape``, ``bits``, ``signed``) of a board running ``layer``
    (None: the whole network)."""
    if layer is None:
        return artifact.manifest["input"]
    rec = artifact.layer(layer)
    return rec.get("in", rec.get("stages", [rec])[0]["in"])


def golden_outputs(artifact, layer: str | None, x: np.ndarray) -> np.ndarray:
    """What a board running ``layer`` (None: the whole network) answers for the frames
    ``x`` (N, C, H, W): the golden model's outputs, (N, C, H, W) (a vector output is
    (N, C, 1, 1))."""
    x = np.asarray(x, dtype=np.int64)
    shape = input_record(artifact, layer)["shape"]
    if layer is None:
        y = golden.run(artifact, x.reshape(len(x), *shape))
    else:
        y, _ = golden.run_layer(artifact.layer(layer), [x.reshape(len(x), *shape)], artifact.tensors)
    y = np.asarray(y)
    return y.reshape(len(x), *(list(y.shape[1:]) + [1, 1])[:3]) if y.ndim < 4 else y


def model_info(artifact, layer: str | None, *, baud: int = 115200, clk_hz: int = 0, timeout_s: float = 0.02,
               multipliers: int = 0, cycles_per_frame: int = 0) -> P.BoardInfo:
    """The BoardInfo the model reports for a layer, or (``layer=None``) the whole network
    (shapes from the manifest).

    ``timeout_s`` must be a finite positive number of seconds that fits the info record's
    32-bit cycle count (ValueError, one line, otherwise)."""
    clk = clk_hz or 1_000_000
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise ValueError(f"board model timeout {timeout_s!r} s must be a finite positive number of seconds")
    cycles = max(1, int(round(timeout_s * clk)))
    if cycles > MAX_TIMEOUT_CYCLES:
        raise ValueError(f"board model timeout {timeout_s!r} s is {cycles} cycles at {clk:g} Hz; the board info "
                         f"holds at most {MAX_TIMEOUT_CYCLES} ({MAX_TIMEOUT_CYCLES / clk:g} s)")
    if layer is None:
        layers = artifact.layers()
        i, o = artifact.manifest["input"], artifact.layer(artifact.manifest["output"])["out"]
        op, count = "network", len(layers)
    else:
        rec = artifact.layer(layer)
        stages = list(rec.get("stages", [rec]))
        i, o = stages[0]["in"], stages[-1]["out"]
        op, count = rec["op"], 1
    return P.BoardInfo(P.PROTOCOL_VERSION, op, P.frame_shape(i["shape"]), int(i["bits"]), bool(i["signed"]),
                       P.frame_shape(o["shape"]), int(o["bits"]), bool(o["signed"]), multipliers, cycles_per_frame,
                       clk, baud, cycles, count).with_batch_limit()


class BoardModel:
    """Byte-level model of the board. ``feed(data, now)`` returns the bytes it answers."""

    def __init__(self, artifact, layer: str | None, info: P.BoardInfo | None = None, timeout_s: float = 0.02):
        if layer is not None:
            artifact.layer(layer)                   # an unknown layer fails here, not on the first frame
        self.art, self.layer = artifact, layer
        self.info = info or model_info(artifact, layer, timeout_s=timeout_s)
        self.timeout_s = self.info.timeout_s
        self.state, self.last = "HUNT", 0.0
        self.frames = 0
        self._reset_frame()

    def _reset_frame(self):
        self.cmd, self.length, self.crc, self.payload = 0, 0, 0, bytearray()

    def _compute(self, data: bytes) -> bytes:
        """The answers to the frames in ``data`` (one or a batch), back to back."""
        i = self.info
        n = len(data) // i.in_bytes
        x = np.stack([P.bytes_to_tensor(data[k * i.in_bytes:(k + 1) * i.in_bytes], i.in_shape, i.in_bits,
                                        i.in_signed) for k in range(n)])
        y = golden_outputs(self.art, self.layer, x)
        return b"".join(P.encode_answer(y[k].reshape(i.out_shape), i, 0) for k in range(n))

    def _takes(self, cmd: int, length: int) -> bool:
        """Whether a request's header is one the board accepts."""
        if cmd == P.CMD_INFO:
            return length == 0
        if cmd == P.CMD_INFER:
            return length == self.info.in_bytes
        return (cmd == P.CMD_INFER_BATCH and length % self.info.in_bytes == 0
                and 1 <= length // self.info.in_bytes <= self.info.batch)

    def poll(self, now: float) -> bytes:
        """Time passes: a frame idle for longer than the timeout is dropped (TIMEOUT)."""
        if now - self.last > self.timeout_s:
            if self.state in ("CMD", "LEN0", "LEN1", "PAYLOAD", "RCRC"):
                self.state = "HUNT"
                return P.encode_response(P.TIMEOUT)
            if self.state == "DRAIN":
                self.state = "HUNT"
        return b""

    def feed(self, data: bytes, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        out = bytearray(self.poll(now))
        for b in bytes(data):
            self.last = now
            s = self.state
            if s == "HUNT":
                if b == P.SYNC_REQ:
                    self._reset_frame()
                    self.state = "CMD"
            elif s == "CMD":
                self.cmd, self.crc, self.state = b, P.crc8([b]), "LEN0"
            elif s == "LEN0":
                self.length, self.crc, self.state = b, P.crc8([b], self.crc), "LEN1"
            elif s == "LEN1":
                self.length |= b << 8
                self.crc = P.crc8([b], self.crc)
                if self._takes(self.cmd, self.length):
                    self.state = "RCRC" if self.cmd == P.CMD_INFO else "PAYLOAD"
                else:
                    known = self.cmd in (P.CMD_INFO, P.CMD_INFER, P.CMD_INFER_BATCH)
                    out += P.encode_response(P.BAD_LENGTH if known else P.BAD_COMMAND)
                    self.state = "DRAIN"
            elif s == "PAYLOAD":
                self.payload.append(b)
                self.crc = P.crc8([b], self.crc)
                if len(self.payload) == self.length:
                    self.state = "RCRC"
            elif s == "RCRC":
                self.state = "HUNT"
                if b != self.crc:
                    out += P.encode_response(P.BAD_CRC)
                elif self.cmd == P.CMD_INFO:
                    out += P.encode_response(P.OK, self.info.to_bytes())
                else:
                    out += P.encode_response(P.OK, self._compute(bytes(self.payload)))
                    self.frames += len(self.payload) // self.info.in_bytes
            elif s == "DRAIN":
                pass
        return bytes(out)


def _pump(model: BoardModel, read, write, stop: threading.Event, fileno) -> None:
    while not stop.is_set():
        r, _, _ = select.select([fileno], [], [], 0.005)
        now = time.monotonic()
        if r:
            try:
                data = read()
            except OSError:
                break
            if not data:                     # socket closed
                break
            resp = model.feed(data, now)
        else:
            resp = model.poll(now)
        if resp:
            write(resp)


def serve(model: BoardModel, kind: str = "pty", port: int = 0, ready=None, stop: threading.Event | None = None):
    """Serve the model on a pty (``kind="pty"``) or TCP socket (``kind="tcp"``) until ``stop``.

    ``ready(address)`` is called with the pty path or ``socket://127.0.0.1:PORT``.
    """
    stop = stop or threading.Event()
    if kind == "pty":
        import tty
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        if ready:
            ready(path)
        try:
            _pump(model, lambda: os.read(master, 65536), lambda b: os.write(master, b), stop, master)
        finally:
            os.close(master)
            os.close(slave)
        return
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    srv.settimeout(0.1)
    if ready:
        ready(f"socket://127.0.0.1:{srv.getsockname()[1]}")
    try:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                _pump(model, lambda: conn.recv(65536), conn.sendall, stop, conn.fileno())
    finally:
        srv.close()
