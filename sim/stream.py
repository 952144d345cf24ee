"""cocotb drivers and monitors for valid/ready streams (``amaranth.lib.stream``).

Timing discipline (the same for every component here, so they compose): inputs are
written just after the falling clock edge, and handshakes are sampled in the
read-only phase of that half cycle. A beat transfers at the next rising edge iff
``valid and ready`` held at that sample, because nothing changes between the sample
and the rising edge. Cycle numbers are rising-edge counts since the clock started.

* :class:`StreamSource` drives a sink port, with random idle cycles (bubbles).
* :class:`StreamSink` accepts beats from a source port, with random back-pressure,
  and checks the protocol: once ``valid`` is high it must stay high, with the same
  payload, until the beat is accepted.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from cocotb.triggers import FallingEdge, ReadOnly

__all__ = ["StreamPort", "StreamSource", "StreamSink", "StreamMonitor", "ProtocolError", "Beat"]


class ProtocolError(AssertionError):
    """A stream violated the valid/ready rules."""


@dataclass
class StreamPort:
    """The three handles of one stream: ``valid``, ``ready`` and ``payload``."""

    valid: object
    ready: object
    payload: object

    @classmethod
    def from_names(cls, dut, valid: str, ready: str, payload: str) -> "StreamPort":
        """Look the handles up on ``dut`` by (possibly dotted, hierarchical) names."""
        def get(path):
            h = dut
            for part in path.split("."):
                h = getattr(h, part)
            return h
        return cls(get(valid), get(ready), get(payload))


@dataclass
class Beat:
    """One transferred beat: payload and the rising-edge cycle it transferred on."""

    payload: int
    cycle: int


class _Clocked:
    """Shared cycle bookkeeping: the cycle number of the next rising edge."""

    def __init__(self, clk_period_ns: float):
        from cocotb.simtime import get_sim_time
        self._now = get_sim_time
        self._period = clk_period_ns

    def next_edge(self) -> int:
        """Index of the next rising edge (edges at t = k * period, k >= 0)."""
        return int(self._now("ns") // self._period) + 1


class StreamSource(_Clocked):
    """Drives beats into a DUT sink port, with random bubbles.

    ``bubble`` is the probability of an idle cycle before each beat (drawn again while
    it keeps hitting, so idle runs are geometric).
    """

    def __init__(self, port: StreamPort, clk, period_ns: float, rng: random.Random, bubble: float = 0.0):
        super().__init__(period_ns)
        self.port, self.clk, self.rng, self.bubble = port, clk, rng, bubble
        self.sent: list[Beat] = []
        port.valid.value = 0
        port.payload.value = 0

    async def send(self, words, stop_after: int | None = None) -> None:
        """Send ``words`` in order; return once the last one transferred.

        ``stop_after`` ends the burst early after that many beats (used to cut a frame
        before a reset).
        """
        p = self.port
        for i, word in enumerate(words):
            if stop_after is not None and i >= stop_after:
                break
            while self.bubble and self.rng.random() < self.bubble:
                await FallingEdge(self.clk)
                p.valid.value = 0
                p.payload.value = self.rng.getrandbits(len(p.payload))   # garbage while idle
            await FallingEdge(self.clk)
            p.valid.value = 1
            p.payload.value = int(word)
            while True:
                await ReadOnly()
                if int(p.ready.value):
                    self.sent.append(Beat(int(word), self.next_edge()))
                    break
                await FallingEdge(self.clk)
        await FallingEdge(self.clk)
        p.valid.value = 0

    def idle(self) -> None:
        """Stop driving (valid low); call after a reset cut a burst short."""
        self.port.valid.value = 0


@dataclass
class StreamSink(_Clocked):
    """Accepts beats from a DUT source port with random back-pressure and checks the protocol.

    ``backpressure`` is the probability that ``ready`` is low in a cycle. Start
    :meth:`run` with ``cocotb.start_soon``; received beats collect in ``beats``.
    """

    port: StreamPort = None
    clk: object = None
    period_ns: float = 10.0
    rng: random.Random = None
    backpressure: float = 0.0
    name: str = "output"
    beats: list = field(default_factory=list)
    violations: list = field(default_factory=list)

    def __post_init__(self):
        super().__init__(self.period_ns)
        self.port.ready.value = 0

    async def run(self) -> None:
        """Forever: pick ``ready`` for this cycle, sample the handshake, check stability."""
        p = self.port
        pending = None            # payload offered but not accepted in the previous cycle
        while True:
            await FallingEdge(self.clk)
            ready = 0 if (self.backpressure and self.rng.random() < self.backpressure) else 1
            p.ready.value = ready
            await ReadOnly()
            valid = int(p.valid.value)
            if pending is not None:
                if not valid:
                    self._violate(f"{self.name}: valid dropped at cycle {self.next_edge()} before the beat "
                                  f"0x{pending:x} was accepted")
                elif int(p.payload.value) != pending:
                    self._violate(f"{self.name}: payload changed from 0x{pending:x} to "
                                  f"0x{int(p.payload.value):x} at cycle {self.next_edge()} while valid was "
                                  f"high and ready low")
            if valid:
                word = int(p.payload.value)
                if ready:
                    self.beats.append(Beat(word, self.next_edge()))
                    pending = None
                else:
                    pending = word
            else:
                pending = None

    def _violate(self, msg: str) -> None:
        if len(self.violations) < 10:
            self.violations.append(msg)

    def clear(self) -> None:
        """Forget received beats (after a reset)."""
        self.beats.clear()


class StreamMonitor(_Clocked):
    """Passively records the beats of an internal stream (drives nothing)."""

    def __init__(self, port: StreamPort, clk, period_ns: float, name: str):
        super().__init__(period_ns)
        self.port, self.clk, self.name = port, clk, name
        self.beats: list[Beat] = []

    async def run(self) -> None:
        p = self.port
        while True:
            await FallingEdge(self.clk)
            await ReadOnly()
            if int(p.valid.value) and int(p.ready.value):
                self.beats.append(Beat(int(p.payload.value), self.next_edge()))
