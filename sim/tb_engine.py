"""cocotb testbench of a generated layer engine (run by :mod:`sim.runner` under Verilator).

The runner writes a *plan* (JSON, path in ``ELRT_SIM_PLAN``): the design record
(:mod:`sim.design`), where the golden values come from (an artifact layer, or the
identity for the self-test pass-through), the seed, the number of frames and the
bubble / back-pressure probabilities. Stimulus and expected outputs both come from
the golden model (:mod:`sim.vectors`); the :mod:`sim.scoreboard` compares every
output element. Each test appends one record to the plan's ``results`` file:
pass/fail, the first mismatch, cycles per frame, latency and utilisation
(ideal cycles = MACs / multipliers, over measured cycles).

Tests:

* ``back_to_back`` -- several frames with no bubbles and no back-pressure: the
  steady-state cycles per frame and latency of the design.
* ``stress`` -- several frames back to back with random input bubbles and random
  output back-pressure.
* ``reset_mid_frame`` -- a frame cut off by a reset at a random beat, then a clean
  frame that must come out exactly right.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, with_timeout

from .scoreboard import Mismatch, compare_stream
from .stream import StreamMonitor, StreamPort, StreamSink, StreamSource
from .vectors import golden_layer, make_inputs, pack_frame

PERIOD_NS = 10


class Bench:
    """The DUT with its clock, source, sink and the golden frames of the plan."""

    def __init__(self, dut, plan: dict, test: str):
        self.dut, self.plan, self.test = dut, plan, test
        d = plan["design"]
        self.design = d
        self.clk = getattr(dut, d["clk"])
        self.rst = getattr(dut, d["rst"])
        seed = int(plan["seed"])
        # Each test draws its own stream of random numbers from the plan's seed.
        self.rng = random.Random(f"{seed}:{test}")
        self.inp = StreamPort.from_names(dut, *(d["input"][k] for k in ("valid", "ready", "payload")))
        self.out = StreamPort.from_names(dut, *(d["output"][k] for k in ("valid", "ready", "payload")))
        g = plan["golden"]
        if "identity" in g:
            spec = g["identity"]
            self.in_spec = self.out_spec = spec
            self.stage = "identity"
            self.stage_specs = {}
            self._golden = lambda x: (x, {})
            self._inputs = lambda n, s: np.random.default_rng(s).integers(
                *(lambda lo, hi: (lo, hi + 1))(*_range(spec)), size=(n, *spec["shape"]))
        else:
            from artifact import load_artifact
            from .vectors import layer_io
            art = load_artifact(g["artifact"])
            layer = g["layer"]
            self.in_spec, self.out_spec, stages = layer_io(art, layer)
            self.stage = stages[-1]["name"] if stages[-1] is not art.layer(layer) else layer
            self.stage_specs = {st["name"]: st["out"] for st in stages}
            self._golden = lambda x: golden_layer(art, layer, x)
            self._inputs = lambda n, s: make_inputs(art, layer, n, s)
        self.seed = seed

    def frames(self, n: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random input frames and their golden outputs (salt separates the tests).

        The golden per-stage intermediates are kept in ``self.want_stages``.
        """
        x = self._inputs(n, self.seed * 1000 + salt)
        out, self.want_stages = self._golden(x)
        return x, out

    def monitors(self) -> list[tuple[str, StreamMonitor]]:
        """Start a passive monitor on every internal stage stream found in the DUT."""
        mons = []
        for rec in self.design.get("stages") or []:
            if rec["stage"] not in self.stage_specs:
                continue
            for cand in rec["candidates"]:
                try:
                    port = StreamPort.from_names(self.dut, *cand)
                except AttributeError:
                    continue
                mon = StreamMonitor(port, self.clk, PERIOD_NS, rec["stage"])
                cocotb.start_soon(mon.run())
                mons.append((rec["stage"], mon))
                break
            else:
                raise AttributeError(f"stage {rec['stage']}: none of its internal stream candidates "
                                     f"{[c[0] for c in rec['candidates']]} exists in the RTL; the engine's "
                                     f"hierarchy changed, update sim/design.py:_internal_streams")
        return mons

    def check(self, sink: StreamSink, want: np.ndarray, mons, rec: dict) -> None:
        """Score the internal stages (first stage first) and then the output; fill ``rec``."""
        compared = 0
        for stage, mon in mons:
            compared += compare_stream([b.payload for b in mon.beats], self.want_stages[stage],
                                       self.stage_specs[stage], stage)
        rec["stages_checked"] = [stage for stage, _ in mons] + [self.stage]
        if sink.violations:
            raise Mismatch(sink.violations[0])
        compared += compare_stream([b.payload for b in sink.beats], want, self.out_spec, self.stage)
        rec["elements_compared"] = compared

    async def start(self) -> None:
        """Start the clock and hold reset for a few cycles."""
        Clock(self.clk, PERIOD_NS, unit="ns").start()
        await self.reset()

    async def reset(self, cycles: int = 3) -> None:
        """Synchronous active-high reset, asserted between falling edges."""
        await FallingEdge(self.clk)
        self.rst.value = 1
        self.inp.valid.value = 0
        await ClockCycles(self.clk, cycles)
        await FallingEdge(self.clk)
        self.rst.value = 0

    def words(self, x: np.ndarray) -> list[int]:
        """Input frames -> payload words, all frames back to back."""
        return [w for f in x for w in pack_frame(f, self.in_spec["bits"])]

    def timeout_cycles(self, frames: int, slowdown: float) -> int:
        """A generous bound on the cycles a run may take before it counts as hung."""
        exp = self.design.get("expected_cycles") or 0
        pixels = int(np.prod(self.in_spec["shape"][1:])) + int(np.prod(self.out_spec["shape"][1:]))
        macs = self.plan.get("macs") or 0
        per_frame = max(exp, macs, pixels, 1)
        return int((frames + 2) * per_frame * 4 * slowdown) + 2000


def _range(spec: dict) -> tuple[int, int]:
    bits = spec["bits"]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec["signed"] else (0, (1 << bits) - 1)


def _plan() -> dict:
    path = os.environ.get("ELRT_SIM_PLAN")
    if not path:
        raise RuntimeError("ELRT_SIM_PLAN is not set: run this testbench through `python -m sim` or sim.runner")
    return json.loads(Path(path).read_text())


def _record(plan: dict, rec: dict) -> None:
    """Append one test record to the plan's results file (JSON lines)."""
    with open(plan["results"], "a") as f:
        f.write(json.dumps(rec) + "\n")


@contextlib.contextmanager
def _outcome(dut, plan: dict, rec: dict):
    """Run a test body and record its outcome in ``rec``: ``passed``, or ``error`` (the
    mismatch, or the testbench/simulator exception, named); then write and log ``rec``."""
    try:
        yield
        rec["passed"] = True
    except Mismatch as e:
        rec["error"] = str(e)
        raise
    except Exception as e:                       # a testbench or simulator problem: say so
        rec["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        _record(plan, rec)
        dut._log.info("%s %s: %s", plan["name"], rec["test"], json.dumps({k: v for k, v in rec.items() if k != "name"}))


def _timing(bench: Bench, sent, beats, frames: int, steady: bool = True) -> dict:
    """Cycles per frame, latency and utilisation from the handshake cycle stamps.

    ``steady``: cycles per frame is the distance between the last beats of the first
    and last frames over the frames between them (the steady state, for runs without
    stalls); otherwise it is first input beat to last output beat over the frames.
    """
    out_pix = int(np.prod(bench.out_spec["shape"][1:]))
    last = [beats[(f + 1) * out_pix - 1].cycle for f in range(frames) if (f + 1) * out_pix <= len(beats)]
    first_in = sent[0].cycle if sent else 0
    latency = (last[0] - first_in + 1) if last else None
    if steady and len(last) >= 2:
        cpf = (last[-1] - last[0]) / (len(last) - 1)
    elif last:
        cpf = (last[-1] - first_in + 1) / len(last)
    else:
        cpf = None
    ideal = None
    macs, mults = bench.plan.get("macs"), bench.design.get("multipliers")
    if macs and mults:
        ideal = macs / mults
    rec = {"cycles_per_frame": cpf, "latency_cycles": latency, "total_cycles": (last[-1] - first_in + 1) if last else None,
           "ideal_cycles_per_frame": ideal,
           "utilisation": (ideal / cpf) if (ideal and cpf) else None,
           "expected_cycles_per_frame": bench.design.get("expected_cycles")}
    return rec


async def _run_frames(dut, test: str, frames: int, bubble: float, backpressure: float, salt: int) -> None:
    plan = _plan()
    bench = Bench(dut, plan, test)
    rec = {"test": test, "name": plan["name"], "seed": plan["seed"], "frames": frames,
           "bubble": bubble, "backpressure": backpressure, "passed": False}
    with _outcome(dut, plan, rec):
        await bench.start()
        x, want = bench.frames(frames, salt)
        src = StreamSource(bench.inp, bench.clk, PERIOD_NS, bench.rng, bubble)
        sink = StreamSink(bench.out, bench.clk, PERIOD_NS, bench.rng, backpressure, name=f"{bench.stage} output")
        sink_task = cocotb.start_soon(sink.run())
        mons = bench.monitors()
        expect_beats = want.shape[0] * want.shape[2] * want.shape[3]
        slow = 1 / max(1e-3, 1 - bubble) / max(1e-3, 1 - backpressure)
        limit = bench.timeout_cycles(frames, slow)

        async def feed_and_drain():
            await src.send(bench.words(x))
            while len(sink.beats) < expect_beats:
                await RisingEdge(bench.clk)

        try:
            await with_timeout(feed_and_drain(), limit * PERIOD_NS, "ns")
        except TimeoutError:
            pass   # the scoreboard reports the missing beats
        # Drain: any further beat would be a duplicate or an invented one.
        await ClockCycles(bench.clk, max(64, int(np.prod(bench.in_spec["shape"][1:])) * 2))
        sink_task.cancel()
        rec.update(_timing(bench, src.sent, sink.beats, frames, steady=not (bubble or backpressure)))
        bench.check(sink, want, mons, rec)


@cocotb.test()
async def back_to_back(dut):
    """Frames back to back, no bubbles, no back-pressure: measures steady-state cycles per frame."""
    plan = _plan()
    await _run_frames(dut, "back_to_back", max(2, int(plan.get("frames", 2))), 0.0, 0.0, salt=1)


@cocotb.test()
async def stress(dut):
    """Frames back to back with random input bubbles and random output back-pressure."""
    plan = _plan()
    await _run_frames(dut, "stress", max(2, int(plan.get("frames", 2))), float(plan.get("bubble", 0.3)),
                      float(plan.get("backpressure", 0.3)), salt=2)


@cocotb.test()
async def reset_mid_frame(dut):
    """A reset in the middle of a frame, then one clean frame that must be exact."""
    plan = _plan()
    bench = Bench(dut, plan, "reset_mid_frame")
    rec = {"test": "reset_mid_frame", "name": plan["name"], "seed": plan["seed"], "frames": 1,
           "bubble": float(plan.get("bubble", 0.3)), "backpressure": float(plan.get("backpressure", 0.3)),
           "passed": False}
    with _outcome(dut, plan, rec):
        await bench.start()
        # Part of a frame, with stalls, so that every stage holds some state when reset hits.
        x0, _ = bench.frames(1, salt=3)
        words0 = bench.words(x0)
        # (a one-pixel frame is sent whole: the reset then hits while it is being computed)
        cut = bench.rng.randrange(1, max(2, len(words0)))
        src = StreamSource(bench.inp, bench.clk, PERIOD_NS, bench.rng, rec["bubble"])
        sink = StreamSink(bench.out, bench.clk, PERIOD_NS, bench.rng, rec["backpressure"], name="output")
        task = cocotb.start_soon(sink.run())
        await src.send(words0, stop_after=cut)
        await ClockCycles(bench.clk, bench.rng.randrange(0, 20))
        task.cancel()
        rec["reset_after_beats"] = cut
        await bench.reset()
        # A clean frame after the reset: every output beat seen from here on must be its.
        x, want = bench.frames(1, salt=4)
        src = StreamSource(bench.inp, bench.clk, PERIOD_NS, bench.rng, 0.0)
        sink = StreamSink(bench.out, bench.clk, PERIOD_NS, bench.rng, 0.0, name=f"{bench.stage} output")
        task = cocotb.start_soon(sink.run())
        mons = bench.monitors()
        expect_beats = want.shape[2] * want.shape[3]

        async def feed_and_drain():
            await src.send(bench.words(x))
            while len(sink.beats) < expect_beats:
                await RisingEdge(bench.clk)

        try:
            await with_timeout(feed_and_drain(), bench.timeout_cycles(1, 1.0) * PERIOD_NS, "ns")
        except TimeoutError:
            pass
        await ClockCycles(bench.clk, max(64, int(np.prod(bench.in_spec["shape"][1:])) * 2))
        task.cancel()
        rec.update(_timing(bench, src.sent, sink.beats, 1))
        bench.check(sink, want, mons, rec)
