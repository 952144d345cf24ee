"""The host-link framing protocol (shared by the hardware, the host tool and the board model).

Byte stream over a UART (8N1). One request, then one response; no pipelining.

Request (host -> board)::

    0xA5 | cmd | len[7:0] | len[15:8] | payload (len bytes) | crc8

Response (board -> host)::

    0x5A | status | len[7:0] | len[15:8] | payload (len bytes) | crc8

``crc8`` is CRC-8/SMBUS (polynomial 0x07, initial value 0, no reflection, no final
XOR) over every byte after the sync byte (cmd/status, both length bytes, payload).

Commands:

* ``CMD_INFO`` (0x01), ``len == 0``: the response payload is the board description
  (:class:`BoardInfo`, :data:`INFO_LEN` bytes).
* ``CMD_INFER`` (0x02), ``len == in_bytes``: one input frame; the response payload
  (``answer_bytes``) is the engine's output frame (``out_bytes``: a layer's output
  tensor, or a network's output values, the logits) followed by a trailer of
  :data:`TRAILER_LEN` bytes (:class:`Answer`):

  - ``class`` (u16, little endian): the index of the largest output value (the first of
    equal ones, as ``numpy.argmax``), computed on the board; :data:`NO_CLASS` when the
    output frame has more than one pixel (a feature map, not a vector of scores);
  - ``cycles`` (u32, little endian): clock cycles from the frame's first input beat into
    the engine to its last output beat out of it, counted on the board. The engine's
    output goes straight to the serial line, so for an output of more than one pixel the
    count includes the line's back-pressure; for a network (one output beat) it is the
    engine's latency.
* ``CMD_INFER_BATCH`` (0x03), ``len == n * in_bytes`` with ``1 <= n <= batch`` (the
  board's :attr:`BoardInfo.batch`): ``n`` input frames back to back, which the engine
  takes back to back (frames overlap in its pipeline); the response payload is the
  ``n`` answers back to back (``n * answer_bytes``), each with its own class and cycle
  count.

Tensor byte layout (both directions): the (C, H, W) tensor is sent pixel by pixel in
raster order, each pixel's channels in order 0..C-1; every element takes
``ceil(bits / 8)`` bytes, little endian, two's complement for signed tensors (the board
sign-extends signed outputs to whole bytes; it uses the low ``bits`` bits of inputs).

Status codes (a non-zero status has an empty payload):

* ``OK`` 0x00
* ``BAD_CRC`` 0x01 -- the frame's CRC did not match; the board is hunting for a sync byte again.
* ``BAD_LENGTH`` 0x02 -- ``len`` is not what the command needs.
* ``BAD_COMMAND`` 0x03 -- unknown command.
* ``TIMEOUT`` 0x04 -- the line went idle for the board's timeout in the middle of a frame
  (lost bytes): the partial frame is dropped.

Recovery: after ``BAD_LENGTH`` / ``BAD_COMMAND`` the board ignores the line until it
has been idle for its timeout (so the rest of the bad frame cannot be taken for a new
one); after ``BAD_CRC`` and ``TIMEOUT`` it hunts for the next sync byte at once. Bytes
that arrive while the board is answering are dropped. A host therefore waits for the
response (or its own timeout), pauses for longer than the board's idle timeout, and
retries: :class:`Link` does exactly that.
"""
from __future__ import annotations

import struct
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = ["SYNC_REQ", "SYNC_RESP", "CMD_INFO", "CMD_INFER", "CMD_INFER_BATCH", "OK", "BAD_CRC", "BAD_LENGTH", "BAD_COMMAND",
           "TIMEOUT", "STATUS_NAMES", "INFO_LEN", "PROTOCOL_VERSION", "OPS", "TRAILER_LEN", "NO_CLASS", "Answer",
           "crc8", "encode_request",
           "encode_response", "FrameDecoder", "BoardInfo", "elem_bytes", "tensor_to_bytes", "bytes_to_tensor",
           "answer_class", "encode_answer", "decode_answer", "batch_limit", "frame_shape", "MAX_BATCH",
           "ProtocolError", "Link"]

SYNC_REQ = 0xA5
SYNC_RESP = 0x5A
CMD_INFO = 0x01
CMD_INFER = 0x02
CMD_INFER_BATCH = 0x03
OK, BAD_CRC, BAD_LENGTH, BAD_COMMAND, TIMEOUT = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: "ok", BAD_CRC: "bad CRC", BAD_LENGTH: "bad length", BAD_COMMAND: "bad command",
                TIMEOUT: "timeout (truncated frame)"}
PROTOCOL_VERSION = 2
#: What a board runs (``BoardInfo.op``): one layer of these ops, or a whole network (segment).
OPS = ("conv", "tucker2", "lowrank", "linear", "network")
#: Bytes after the output frame in an INFER answer: class (u16) and cycles (u32).
TRAILER_LEN = 6
#: The class of an answer whose output frame is not a single vector of scores.
NO_CLASS = 0xFFFF
MAX_LEN = 0xFFFF
#: Most frames per CMD_INFER_BATCH request, and the most input bytes a board buffers for one.
MAX_BATCH, BATCH_BUFFER_BYTES = 16, 16384


def frame_shape(shape) -> tuple:
    """A tensor shape as the (C, H, W) of a frame on the wire: a vector (C,) is one pixel."""
    shape = [int(v) for v in shape]
    return tuple(shape + [1] * (3 - len(shape))) if len(shape) < 3 else tuple(shape)


def batch_limit(in_bytes: int, answer_bytes: int) -> int:
    """Frames per CMD_INFER_BATCH request a board takes: :data:`MAX_BATCH`, fewer where the
    request or the answer would exceed :data:`MAX_LEN` or the input buffer
    :data:`BATCH_BUFFER_BYTES` (at least 1)."""
    return max(1, min(MAX_BATCH, BATCH_BUFFER_BYTES // in_bytes, MAX_LEN // in_bytes, MAX_LEN // answer_bytes))


class ProtocolError(RuntimeError):
    """The board did not answer, or answered with an error status (one-line message)."""


def _crc_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_TABLE = _crc_table()


def crc8(data, crc: int = 0) -> int:
    """CRC-8 (poly 0x07, init 0) of ``data`` (bytes or ints), continuing from ``crc``."""
    for b in bytes(data):
        crc = _TABLE[crc ^ b]
    return crc


def _frame(sync: int, code: int, payload: bytes) -> bytes:
    payload = bytes(payload)
    if len(payload) > MAX_LEN:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the protocol's {MAX_LEN}")
    body = bytes([code, len(payload) & 0xFF, len(payload) >> 8]) + payload
    return bytes([sync]) + body + bytes([crc8(body)])


def encode_request(cmd: int, payload: bytes = b"") -> bytes:
    """One request frame."""
    return _frame(SYNC_REQ, cmd, payload)


def encode_response(status: int, payload: bytes = b"") -> bytes:
    """One response frame."""
    return _frame(SYNC_RESP, status, payload)


class FrameDecoder:
    """Incremental decoder of frames starting with ``sync``: feed bytes, get
    ``(code, payload, crc_ok)`` tuples. Bytes before a sync byte are skipped."""

    def __init__(self, sync: int = SYNC_RESP):
        self.sync = sync
        self.buf = bytearray()
        self.skipped = 0

    def feed(self, data) -> list[tuple[int, bytes, bool]]:
        self.buf += bytes(data)
        out = []
        while True:
            i = self.buf.find(bytes([self.sync]))
            if i < 0:
                self.skipped += len(self.buf)
                self.buf.clear()
                return out
            if i:
                self.skipped += i
                del self.buf[:i]
            if len(self.buf) < 4:
                return out
            n = self.buf[2] | (self.buf[3] << 8)
            if len(self.buf) < 5 + n:
                return out
            body = bytes(self.buf[1:4 + n])
            ok = crc8(body) == self.buf[4 + n]
            out.append((body[0], body[3:], ok))
            del self.buf[:5 + n]


def elem_bytes(bits: int) -> int:
    """Bytes per tensor element on the wire."""
    return (int(bits) + 7) // 8


def tensor_to_bytes(x: np.ndarray, bits: int, signed: bool) -> bytes:
    """(C, H, W) (or (C,)) integer tensor -> wire bytes (see the module doc)."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim == 1:
        x = x[:, None, None]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"tensor values [{x.min()}, {x.max()}] do not fit {bits}-bit "
                         f"{'signed' if signed else 'unsigned'} [{lo}, {hi}]")
    nb = elem_bytes(bits)
    flat = x.transpose(1, 2, 0).reshape(-1) & ((1 << (8 * nb)) - 1)     # raster order, channels inner
    out = np.zeros((flat.size, nb), dtype=np.uint8)
    for i in range(nb):
        out[:, i] = (flat >> (8 * i)) & 0xFF
    return out.tobytes()


def bytes_to_tensor(data: bytes, shape, bits: int, signed: bool) -> np.ndarray:
    """Wire bytes -> (C, H, W) int64 tensor (inverse of :func:`tensor_to_bytes`)."""
    c, h, w = (list(shape) + [1, 1])[:3] if len(shape) < 3 else shape
    nb = elem_bytes(bits)
    if len(data) != c * h * w * nb:
        raise ValueError(f"{len(data)} bytes for a {c}x{h}x{w} tensor of {nb}-byte elements")
    raw = np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, nb).astype(np.int64)
    val = np.zeros(raw.shape[0], dtype=np.int64)
    for i in range(nb):
        val |= raw[:, i] << (8 * i)
    val &= (1 << bits) - 1
    if signed:
        val = np.where(val >> (bits - 1) & 1, val - (1 << bits), val)
    return val.reshape(h, w, c).transpose(2, 0, 1)


@dataclass
class BoardInfo:
    """What the board says about itself (the ``CMD_INFO`` payload, :data:`INFO_LEN` bytes)."""

    version: int
    op: str
    in_shape: tuple
    in_bits: int
    in_signed: bool
    out_shape: tuple
    out_bits: int
    out_signed: bool
    multipliers: int
    cycles_per_frame: int
    clk_hz: int
    baud: int
    timeout_cycles: int
    layers: int = 1             # layers the board runs (1 for a single-layer board)
    batch: int = 1              # most frames one CMD_INFER_BATCH request carries

    _FMT = "<BB3HBB3HBBHIIIIHH"

    def to_bytes(self) -> bytes:
        return struct.pack(self._FMT, self.version, OPS.index(self.op) if self.op in OPS else 255,
                           *self.in_shape, self.in_bits, int(self.in_signed), *self.out_shape, self.out_bits,
                           int(self.out_signed), self.multipliers, self.cycles_per_frame, self.clk_hz, self.baud,
                           self.timeout_cycles, self.layers, self.batch)

    @classmethod
    def from_bytes(cls, data: bytes) -> "BoardInfo":
        if len(data) != INFO_LEN:
            raise ProtocolError(f"board info has {len(data)} bytes, expected {INFO_LEN}")
        v = struct.unpack(cls._FMT, bytes(data))
        op = OPS[v[1]] if v[1] < len(OPS) else f"op{v[1]}"
        return cls(v[0], op, tuple(v[2:5]), v[5], bool(v[6]), tuple(v[7:10]), v[10], bool(v[11]), v[12], v[13],
                   v[14], v[15], v[16], v[17], v[18])

    @property
    def in_bytes(self) -> int:
        return int(np.prod(self.in_shape)) * elem_bytes(self.in_bits)

    @property
    def out_bytes(self) -> int:
        return int(np.prod(self.out_shape)) * elem_bytes(self.out_bits)

    def with_batch_limit(self) -> "BoardInfo":
        """This description with ``batch`` the most frames a request carries (:func:`batch_limit`)."""
        return replace(self, batch=batch_limit(self.in_bytes, self.answer_bytes))

    @property
    def answer_bytes(self) -> int:
        """Payload bytes of an INFER answer: the output frame and the trailer."""
        return self.out_bytes + TRAILER_LEN

    @property
    def scores(self) -> bool:
        """Whether the output frame is one vector of scores (one pixel), so answers carry a class."""
        return self.out_shape[1] * self.out_shape[2] == 1

    @property
    def timeout_s(self) -> float:
        return self.timeout_cycles / max(self.clk_hz, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["in_shape"], d["out_shape"] = list(self.in_shape), list(self.out_shape)
        return d


INFO_LEN = struct.calcsize(BoardInfo._FMT)


@dataclass(frozen=True)
class Answer:
    """One INFER answer: the output frame (C, H, W), the board's class (None for
    :data:`NO_CLASS`) and its cycle count (see the module doc)."""

    values: np.ndarray
    label: int | None
    cycles: int


def answer_class(values: np.ndarray, info: BoardInfo) -> int:
    """The class field a board sends for ``values``: argmax, or :data:`NO_CLASS`."""
    return int(np.argmax(np.asarray(values).reshape(-1))) if info.scores else NO_CLASS


def encode_answer(values: np.ndarray, info: BoardInfo, cycles: int) -> bytes:
    """The INFER answer payload for ``values`` (what a board model sends)."""
    return (tensor_to_bytes(values, info.out_bits, info.out_signed)
            + struct.pack("<HI", answer_class(values, info), int(cycles) & 0xFFFFFFFF))


def decode_answer(data: bytes, info: BoardInfo) -> Answer:
    """An INFER answer payload -> :class:`Answer` (ProtocolError for a wrong length)."""
    if len(data) != info.answer_bytes:
        raise ProtocolError(f"INFER answer has {len(data)} bytes, expected {info.answer_bytes} "
                            f"({info.out_bytes} output + {TRAILER_LEN} trailer)")
    label, cycles = struct.unpack("<HI", bytes(data[info.out_bytes:]))
    values = bytes_to_tensor(data[:info.out_bytes], info.out_shape, info.out_bits, info.out_signed)
    return Answer(values, None if label == NO_CLASS else label, cycles)


class Link:
    """Request/response client over a pyserial-like port (``read(n)``, ``write(b)``, ``timeout``).

    Every call retries up to ``retries`` times on a NAK, a bad response CRC or no
    answer within ``timeout`` seconds, pausing ``gap`` seconds (longer than the board's
    idle timeout) before each retry so that the board is hunting for a sync byte.
    """

    def __init__(self, port, timeout: float = 2.0, retries: int = 3, gap: float = 0.05, log=None):
        self.port, self.timeout, self.retries, self.gap = port, timeout, retries, gap
        self.log = log or (lambda msg: None)
        self.info: BoardInfo | None = None
        self.retried = 0

    def _read_response(self, deadline: float):
        dec = FrameDecoder(SYNC_RESP)
        while time.monotonic() < deadline:
            chunk = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
            if chunk:
                frames = dec.feed(chunk)
                if frames:
                    return frames[0]
        return None

    def request(self, cmd: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        frame = encode_request(cmd, payload)
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                self.log(f"retry {attempt}/{self.retries} after {last}")
                time.sleep(self.gap)
                if hasattr(self.port, "reset_input_buffer"):
                    self.port.reset_input_buffer()
            self.port.write(frame)
            if hasattr(self.port, "flush"):
                self.port.flush()
            resp = self._read_response(time.monotonic() + (timeout or self.timeout))
            if resp is None:
                last = f"no answer within {timeout or self.timeout:g} s"
                continue
            status, data, ok = resp
            if not ok:
                last = "a response with a bad CRC"
                continue
            if status != OK:
                last = f"status {status} ({STATUS_NAMES.get(status, '?')})"
                continue
            return data
        raise ProtocolError(f"board request 0x{cmd:02x} failed after {self.retries + 1} tries: {last}")

    def board_info(self) -> BoardInfo:
        self.info = BoardInfo.from_bytes(self.request(CMD_INFO))
        if self.info.version != PROTOCOL_VERSION:
            raise ProtocolError(f"board speaks protocol version {self.info.version}, host {PROTOCOL_VERSION}")
        self.gap = max(self.gap, 2.5 * self.info.timeout_s)
        return self.info

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Send one (C, H, W) integer frame, return the board's output frame."""
        return self.infer_answer(x).values

    def infer_answer(self, x: np.ndarray) -> Answer:
        """Send one (C, H, W) integer frame, return the board's whole answer."""
        info = self.info or self.board_info()
        x = np.asarray(x)
        if tuple(x.shape) != tuple(info.in_shape):
            raise ValueError(f"input frame has shape {tuple(x.shape)}, the board's layer takes {info.in_shape}")
        # the answer takes out_bytes + in_bytes (echo-free) byte times plus compute: scale the timeout
        byte_s = 10.0 / max(info.baud, 1)
        t = self.timeout + (info.in_bytes + info.answer_bytes + 16) * byte_s
        data = self.request(CMD_INFER, tensor_to_bytes(x, info.in_bits, info.in_signed), timeout=t)
        return decode_answer(data, info)

    def infer_batch(self, frames) -> list[Answer]:
        """Send up to the board's ``batch`` frames (N, C, H, W) in one request, return their answers."""
        info = self.info or self.board_info()
        frames = [np.asarray(x) for x in frames]
        if not 1 <= len(frames) <= info.batch:
            raise ValueError(f"{len(frames)} frames in one request; the board takes 1 to {info.batch}")
        for x in frames:
            if tuple(x.shape) != tuple(info.in_shape):
                raise ValueError(f"input frame has shape {tuple(x.shape)}, the board's layer takes {info.in_shape}")
        if len(frames) == 1:
            return [self.infer_answer(frames[0])]
        byte_s = 10.0 / max(info.baud, 1)
        n = len(frames)
        t = self.timeout + (n * (info.in_bytes + info.answer_bytes) + 16) * byte_s
        payload = b"".join(tensor_to_bytes(x, info.in_bits, info.in_signed) for x in frames)
        data = self.request(CMD_INFER_BATCH, payload, timeout=t)
        if len(data) != n * info.answer_bytes:
            raise ProtocolError(f"batch answer has {len(data)} bytes, expected {n} x {info.answer_bytes}")
        return [decode_answer(data[i * info.answer_bytes:(i + 1) * info.answer_bytes], info) for i in range(n)]
