"""cocotb testbench of a whole-network engine inside :class:`sim.harness.NetworkHarness`.

The runner (:mod:`sim.network`) writes a *plan* (JSON, path in ``ELRT_SIM_PLAN``): the
stimulus file (one input beat per line, hex), the number of beats per input and output
frame, and the phases to run. This testbench only drives and records: the clock runs in
the simulator (cocotb's GPI clock), the harness sends and captures beats in RTL, and
Python wakes up per beat loaded or read back and per chunk of cycles while a phase runs
(per cycle only before the reset phase's cut). The harness registers its inputs (``rst``
too), so they act one cycle after they are driven; that shifts nothing that is measured
(cycles count from the registered reset). The golden model's
comparison happens in the runner, on what this testbench writes to the plan's
``results`` file (JSON): per phase, the output beats (hex), the cycle each left at, the
cycle of the first input beat, the captured internal streams, and (clean phase) each
probed stream's transfer and wait cycles.

Phases (each starts from a reset):

* ``clean``: frames back to back, no bubbles, no back-pressure (steady-state rate);
* ``stress``: random input bubbles and output back-pressure, internal streams tapped;
* ``reset``: a frame cut off by a reset after a random number of beats, then clean frames.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, Timer

PERIOD_NS = 10


async def _reset(dut, cycles: int = 3) -> None:
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    dut.go.value = 0
    await ClockCycles(dut.clk, cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def _load(dut, words: list[int]) -> None:
    """Write the stimulus memory, one beat per cycle."""
    dut.load_en.value = 1
    for i, w in enumerate(words):
        dut.load_addr.value = i
        dut.load_data.value = w
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.load_en.value = 0


async def _run(dut, start: int, beats: int, want_out: int, bubble: int, stall: int, seed: int,
               max_cycles: int, cut_after: int | None = None) -> dict:
    """One phase: reset, send ``beats`` beats from ``start``, wait for ``want_out`` output beats.
    With ``cut_after``, stop waiting once that many input beats went in (the reset phase)."""
    dut.bubble.value, dut.stall.value, dut.seed.value = bubble, stall, seed
    dut.start_addr.value, dut.n_beats.value = start, beats
    await _reset(dut)
    dut.go.value = 1
    # one timer per chunk, not a Python callback per clock edge (ClockCycles); the reset
    # phase's cut looks every cycle, so that the reset comes right after ``cut_after`` beats
    waited, chunk = 0, 1 if cut_after is not None else max(64, min(20_000, max_cycles // 50))
    while True:
        await Timer(chunk * PERIOD_NS, unit="ns")
        waited += chunk
        done = int(dut.in_count.value) >= cut_after if cut_after is not None else \
            int(dut.out_count.value) >= want_out
        if done:
            break
        if waited > max_cycles:
            return {"timeout": True, "cycles": waited, "in_count": int(dut.in_count.value),
                    "out_count": int(dut.out_count.value)}
    return {"timeout": False, "cycles": waited, "in_count": int(dut.in_count.value),
            "out_count": int(dut.out_count.value), "first_in_cycle": int(dut.first_in_cycle.value)}


async def _read_outputs(dut, n: int) -> tuple[list[str], list[int]]:
    beats, times = [], []
    for j in range(n):
        dut.rd_addr.value = j
        await Timer(1, unit="ns")
        beats.append(format(int(dut.rd_data.value), "x"))
        times.append(int(dut.rd_time.value))
    return beats, times


async def _read_taps(dut, names: list[str]) -> dict:
    taps = {}
    for k, name in enumerate(names):
        dut.tap_sel.value = k
        await Timer(1, unit="ns")
        count, beats = int(dut.tap_count.value), []
        for a in range(count):
            dut.tap_addr.value = a
            await Timer(1, unit="ns")
            beats.append(format(int(dut.tap_data.value), "x"))
        taps[name] = beats
    return taps


async def _read_probes(dut, names: list[str]) -> dict:
    """``{stream: [transfer cycles, wait cycles]}`` since the phase's reset."""
    counts = {}
    for k, name in enumerate(names):
        dut.probe_sel.value = k
        await Timer(1, unit="ns")
        counts[name] = [int(dut.probe_fire.value), int(dut.probe_wait.value)]
    return counts


@cocotb.test()
async def network(dut):
    plan = json.loads(Path(os.environ["ELRT_SIM_PLAN"]).read_text())
    rng = random.Random(f"{plan['seed']}:network")
    words = [int(line, 16) for line in Path(plan["stimulus"]).read_text().split()]
    bin_, bout = plan["beats_in"], plan["beats_out"]
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.load_en.value, dut.go.value, dut.rst.value = 0, 0, 0
    await _load(dut, words)
    results = {}
    for phase in plan["phases"]:
        kind, frames, first = phase["kind"], phase["frames"], phase.get("first_frame", 0)
        budget = int(phase["max_cycles"])
        seed = rng.getrandbits(32)
        if kind == "reset":
            cut = rng.randrange(1, bin_ + 1) if bin_ > 1 else 1
            cut_run = await _run(dut, first * bin_, bin_, 0, 0, 0, seed, budget, cut_after=cut)
            await ClockCycles(dut.clk, rng.randrange(0, 8))
            first += 1          # the cut frame is dropped; the clean frames after it are checked
        run = await _run(dut, first * bin_, frames * bin_, frames * bout, phase.get("bubble", 0),
                         phase.get("stall", 0), seed, budget)
        rec = {"kind": kind, "first_frame": first, "frames": frames, **run}
        if kind == "reset":
            rec["cut_after_beats"] = cut_run["in_count"]
        beats, times = await _read_outputs(dut, min(run["out_count"], frames * bout))
        rec["outputs"], rec["times"] = beats, times
        if phase.get("taps"):
            rec["taps"] = await _read_taps(dut, plan["taps"])
        if phase.get("probes"):
            rec["probes"] = await _read_probes(dut, plan["probes"])
        results[kind] = rec
    Path(plan["results"]).write_text(json.dumps(results))
    assert all(not r["timeout"] for r in results.values()), \
        f"timed out: {[k for k, r in results.items() if r['timeout']]}"
