"""A simulation harness around a network engine: stimulus and results in memories,
the clock driven by the simulator, random bubbles and back-pressure in hardware.

A whole network takes ~10,000 cycles per frame; hundreds of frames are millions of
cycles, far too many for a Python coroutine per cycle. So the harness does the per-cycle
work in RTL and the testbench (:mod:`sim.tb_network`) works per beat:

* the testbench writes the input beats into the stimulus memory (``load_*``), then
  raises ``go``; the source sends ``n_beats`` beats from ``start_addr`` on, withholding
  a beat in a cycle with probability ``bubble / 256`` (a 32-bit xorshift generator);
* the sink is not ready in a cycle with probability ``stall / 256`` and writes every
  output beat, with the cycle it left at (``cycle``, counted from reset), into the
  result memories, read back through ``rd_addr`` / ``rd_data`` / ``rd_time``;
* every internal layer stream named in ``taps`` is captured (payload of each transfer)
  into a memory of ``tap_depth`` beats, read through ``tap_sel`` / ``tap_addr`` /
  ``tap_data``; ``tap_count`` tells how many beats the selected tap holds;
* every stream named in ``probes`` (any stream inside the engine, the stages' included)
  has two counters since reset, read through ``probe_sel``: ``probe_fire``, the cycles
  it transferred a beat (``valid & ready``), and ``probe_wait``, the cycles its producer
  waited on its consumer (``valid & ~ready``); the rest of the cycles it was empty. The
  stream behind the unit that sets the rate waits; the streams after it are empty.

A synchronous reset clears the counters and the generators' state (the memories keep
their contents), so a run can be cut mid-frame and restarted.

Every input but the read-back addresses (``rd_addr``, ``tap_sel``, ``tap_addr``) is
registered once before use, ``rst`` included, so they act one cycle after the testbench
drives them. This is for Verilator's sake: it evaluates all logic that depends on a
top-level port, or on a signal of the top module (public with ``--public-depth 1``),
on every ``eval``, i.e. on both clock edges. With ``rst`` a port, that was the whole
network's next-state logic, about 40% of the run time. So the top module holds only the
ports, and the logic, registers included, sits one level down (``harness``).
"""
from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Module, ResetInserter, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["NetworkHarness"]

COUNTER_BITS = 32


def _xorshift32(state):
    """One step of Marsaglia's xorshift32 (a full-period generator for a non-zero state)."""
    x = state ^ (state << 13)[:32]
    x = x ^ (x >> 17)
    return x ^ (x << 5)[:32]


class NetworkHarness(wiring.Component):
    """The engine ``net`` (ports ``pix_in`` / ``pix_out``) between stimulus and result memories.

    Parameters
    ----------
    net : NetworkEngine
    in_depth, out_depth : int
        Stimulus and result memory depths in beats.
    taps : list of (name, stream interface)
        Internal streams to capture (their ``valid``, ``ready``, ``payload``).
    tap_depth : int
        Beats kept per tap (the first ``tap_depth`` transfers after reset).
    probes : list of (name, stream interface)
        Streams whose transfer and wait cycles are counted (their ``valid``, ``ready``).
    """

    def __init__(self, net, in_depth: int, out_depth: int, taps=(), tap_depth: int = 1, probes=()):
        self.net, self.in_depth, self.out_depth = net, in_depth, out_depth
        self.taps, self.tap_depth = list(taps), max(1, tap_depth)
        self.probes = list(probes)
        self.in_width = Value.cast(net.pix_in.payload).shape().width
        self.out_width = Value.cast(net.pix_out.payload).shape().width
        self.tap_width = max([Value.cast(s.payload).shape().width for _, s in self.taps] or [1])
        n_taps, n_probes = max(1, len(self.taps)), max(1, len(self.probes))
        super().__init__({
            "clk": In(1), "rst": In(1), "load_en": In(1), "load_addr": In(range(in_depth)), "load_data": In(self.in_width),
            "go": In(1), "start_addr": In(range(in_depth)), "n_beats": In(COUNTER_BITS),
            "bubble": In(8), "stall": In(8), "seed": In(32),
            "cycle": Out(COUNTER_BITS), "in_count": Out(COUNTER_BITS), "out_count": Out(COUNTER_BITS),
            "first_in_cycle": Out(COUNTER_BITS),
            "rd_addr": In(range(out_depth)), "rd_data": Out(self.out_width), "rd_time": Out(COUNTER_BITS),
            "tap_sel": In(range(n_taps)), "tap_addr": In(range(self.tap_depth)),
            "tap_data": Out(self.tap_width), "tap_count": Out(range(self.tap_depth + 1)),
            "probe_sel": In(range(n_probes)), "probe_fire": Out(COUNTER_BITS), "probe_wait": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        # The top module: ports only (see the module docstring). Its clock domain has no
        # reset; the design is reset by the registered ``rst`` (ResetInserter).
        top = Module()
        top.domains.sync = ClockDomain("sync", reset_less=True)
        top.d.comb += ClockSignal("sync").eq(self.clk)
        inner = top.submodules.harness = Module()
        rst = Signal(init=1, name="rst_q")          # in reset until the testbench releases rst
        inner.d.sync += rst.eq(self.rst)
        ports = {}
        for name in ("load_en", "load_addr", "load_data", "go", "start_addr", "n_beats", "bubble", "stall", "seed"):
            port = getattr(self, name)
            ports[name] = Signal.like(port, name=f"{name}_q")
            inner.d.sync += ports[name].eq(port)
        m = Module()
        inner.submodules.core = ResetInserter(rst)(m)
        m.submodules.net = net = self.net
        src, snk = net.pix_in, net.pix_out
        m.d.sync += self.cycle.eq(self.cycle + 1)

        # random state: one generator for the source, one for the sink (seeded at reset)
        rng_in = Signal(32, init=0x1234567)
        rng_out = Signal(32, init=0x89abcdef)
        seeded = Signal()
        with m.If(~seeded):
            m.d.sync += [rng_in.eq(ports["seed"] | 1), rng_out.eq((ports["seed"] ^ 0x5bd1e995) | 1), seeded.eq(1)]
        with m.Else():
            m.d.sync += [rng_in.eq(_xorshift32(rng_in)), rng_out.eq(_xorshift32(rng_out))]

        # stimulus
        stim = m.submodules.stim = Memory(shape=self.in_width, depth=self.in_depth, init=[])
        wp = stim.write_port()
        m.d.comb += [wp.en.eq(ports["load_en"]), wp.addr.eq(ports["load_addr"]), wp.data.eq(ports["load_data"])]
        rp = stim.read_port(domain="comb")
        addr = Signal(range(self.in_depth))
        started = Signal()
        holding = Signal()                      # a beat is on pix_in (valid held until taken)
        m.d.comb += [rp.addr.eq(addr), Value.cast(src.payload).eq(rp.data), src.valid.eq(holding)]
        with m.If(~started):
            m.d.sync += [addr.eq(ports["start_addr"]), started.eq(ports["go"])]
        more = started & (self.in_count < ports["n_beats"])
        offer = more & (rng_in[8:16] >= ports["bubble"])
        with m.If(holding & src.ready):
            m.d.sync += [self.in_count.eq(self.in_count + 1), addr.eq(addr + 1)]
            with m.If(self.in_count == 0):
                m.d.sync += self.first_in_cycle.eq(self.cycle)
            m.d.sync += holding.eq((self.in_count + 1 < ports["n_beats"]) & (rng_in[16:24] >= ports["bubble"]))
        with m.Elif(~holding):
            m.d.sync += holding.eq(offer)

        # results
        res = m.submodules.results = Memory(shape=self.out_width, depth=self.out_depth, init=[])
        times = m.submodules.times = Memory(shape=COUNTER_BITS, depth=self.out_depth, init=[])
        take = Signal()
        m.d.comb += [take.eq(snk.valid & snk.ready), snk.ready.eq(started & (rng_out[8:16] >= ports["stall"]))]
        for mem, data in ((res, Value.cast(snk.payload)), (times, self.cycle)):
            w = mem.write_port()
            m.d.comb += [w.en.eq(take & (self.out_count < self.out_depth)), w.addr.eq(self.out_count), w.data.eq(data)]
        with m.If(take):
            m.d.sync += self.out_count.eq(self.out_count + 1)
        r1, r2 = res.read_port(domain="comb"), times.read_port(domain="comb")
        m.d.comb += [r1.addr.eq(self.rd_addr), r2.addr.eq(self.rd_addr), self.rd_data.eq(r1.data),
                     self.rd_time.eq(r2.data)]

        # taps of internal streams
        tap_data, tap_count = [], []
        for k, (name, s) in enumerate(self.taps):
            width = Value.cast(s.payload).shape().width
            mem = m.submodules[f"tap_{k}"] = Memory(shape=width, depth=self.tap_depth, init=[])
            count = Signal(range(self.tap_depth + 1), name=f"tap_count_{k}")
            w = mem.write_port()
            fire = s.valid & s.ready & (count < self.tap_depth)
            m.d.comb += [w.en.eq(fire), w.addr.eq(count), w.data.eq(Value.cast(s.payload))]
            with m.If(fire):
                m.d.sync += count.eq(count + 1)
            r = mem.read_port(domain="comb")
            m.d.comb += r.addr.eq(self.tap_addr)
            tap_data.append(r.data)
            tap_count.append(count)
        if self.taps:
            with m.Switch(self.tap_sel):
                for k in range(len(self.taps)):
                    with m.Case(k):
                        m.d.comb += [self.tap_data.eq(tap_data[k]), self.tap_count.eq(tap_count[k])]

        # stream probes: transfer and wait cycles
        counters = []
        for k, (name, s) in enumerate(self.probes):
            fire = Signal(COUNTER_BITS, name=f"probe_fire_{k}")
            wait = Signal(COUNTER_BITS, name=f"probe_wait_{k}")
            with m.If(s.valid & s.ready):
                m.d.sync += fire.eq(fire + 1)
            with m.Elif(s.valid):
                m.d.sync += wait.eq(wait + 1)
            counters.append((fire, wait))
        if self.probes:
            with m.Switch(self.probe_sel):
                for k, (fire, wait) in enumerate(counters):
                    with m.Case(k):
                        m.d.comb += [self.probe_fire.eq(fire), self.probe_wait.eq(wait)]
        return top
