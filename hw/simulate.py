"""Amaranth-simulator harness for stream components (tests and bench).

:func:`run_stream` drives an input stream and drains an output stream of any
component with ``stream`` ports, with optional random input bubbles and output
back-pressure, and records when every output beat left. Pixel packing follows the
engine contract: channel ``c`` at bits ``[c*bits, (c+1)*bits)``, raster order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from amaranth import ClockDomain, Module, Value
from amaranth.sim import Simulator

__all__ = ["pack_pixels", "unpack_pixels", "StreamResult", "run_stream"]


def pack_pixels(frame: np.ndarray, bits: int) -> list[int]:
    """(C, H, W) integer array -> H*W payload ints in raster order."""
    c, h, w = frame.shape
    mask = (1 << bits) - 1
    out = []
    for y in range(h):
        for x in range(w):
            word = 0
            for ch in range(c):
                word |= (int(frame[ch, y, x]) & mask) << (ch * bits)
            out.append(word)
    return out


def unpack_pixels(beats: list[int], channels: int, height: int, width: int, bits: int, signed: bool) -> np.ndarray:
    """Payload ints (raster order, one frame) -> (C, H, W) int64 array."""
    if len(beats) != height * width:
        raise ValueError(f"expected {height * width} beats, got {len(beats)}")
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    out = np.empty((channels, height, width), dtype=np.int64)
    for i, word in enumerate(beats):
        y, x = divmod(i, width)
        for ch in range(channels):
            v = (word >> (ch * bits)) & mask
            if signed and v & sign:
                v -= 1 << bits
            out[ch, y, x] = v
    return out


@dataclass
class StreamResult:
    outputs: list[int]
    out_cycles: list[int] = field(default_factory=list)   # cycle index of each output transfer
    cycles: int = 0                                        # cycles simulated


def run_stream(dut, inputs: list[int], n_out: int, *, in_port: str = "pix_in", out_port: str = "pix_out",
               bubble: float = 0.0, stall: float = 0.0, seed: int = 0, max_cycles: int | None = None,
               reset_after: int | None = None, vcd: str | None = None) -> StreamResult:
    """Simulate ``dut`` until ``n_out`` output beats have been taken.

    ``bubble``: probability that the source withholds the next beat in a cycle;
    ``stall``: probability that the sink is not ready in a cycle (valid, once raised,
    is held until the beat is taken, as the stream protocol requires).
    ``reset_after``: assert reset for one cycle after that many input beats were sent,
    then restart the input from the beginning and discard outputs seen so far
    (mid-frame reset test). Raises RuntimeError after ``max_cycles``.
    """
    src, snk = getattr(dut, in_port), getattr(dut, out_port)
    # typed pixel streams (hw.units.pixel_signature) are driven and sampled as raw bits
    src_payload, snk_payload = Value.cast(src.payload), Value.cast(snk.payload)
    rng = random.Random(seed)
    if max_cycles is None:
        max_cycles = 1000 + 200 * (len(inputs) + n_out)
    res = StreamResult([])

    async def bench(ctx):
        i, holding, cycle, did_reset = 0, False, 0, reset_after is None
        ctx.set(snk.ready, 0)
        while len(res.outputs) < n_out:
            if not did_reset and i >= reset_after:
                ctx.set(src.valid, 0)
                await ctx.tick().repeat(rng.randint(0, 3))
                ctx.set(dut_rst, 1)
                await ctx.tick()
                ctx.set(dut_rst, 0)
                i, holding, did_reset = 0, False, True
                res.outputs.clear()
                res.out_cycles.clear()
            if not holding and i < len(inputs) and (bubble == 0.0 or rng.random() >= bubble):
                ctx.set(src_payload, inputs[i])
                ctx.set(src.valid, 1)
                holding = True
            ready = stall == 0.0 or rng.random() >= stall
            ctx.set(snk.ready, ready)
            _, _, in_ready, out_valid, out_payload = await ctx.tick().sample(src.ready, snk.valid, snk_payload)
            if holding and in_ready:
                i += 1
                holding = False
                ctx.set(src.valid, 0)
            if ready and out_valid:
                res.outputs.append(out_payload)
                res.out_cycles.append(cycle)
            cycle += 1
            if cycle > max_cycles:
                raise RuntimeError(f"simulation did not finish in {max_cycles} cycles "
                                   f"({i}/{len(inputs)} in, {len(res.outputs)}/{n_out} out)")
        res.cycles = cycle

    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    top.submodules.dut = dut
    dut_rst = cd.rst
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return res


@dataclass
class LayerRun:
    """Outcome of :func:`simulate_layer`."""

    output: np.ndarray          # (frames, C, H, W) from the engine
    expected: np.ndarray        # (frames, C, H, W) from the golden model
    result: StreamResult
    cycles_per_frame: float | None   # steady state: spacing of frame ends (None for one frame)

    @property
    def exact(self) -> bool:
        return self.output.shape == self.expected.shape and bool((self.output == self.expected).all())


def simulate_layer(engine, artifact, layer_name: str, frames: int = 2, *, seed: int = 0, bubble: float = 0.0,
                   stall: float = 0.0, reset_after: int | None = None, x: np.ndarray | None = None) -> LayerRun:
    """Run ``frames`` random frames of ``layer_name`` through ``engine`` and the golden model.

    The expected output is :func:`artifact.golden.run_layer` on the same input (shape
    ``(frames, *layer["in"]["shape"])``; random in the input range unless ``x`` is given). ``cycles_per_frame`` is measured between the last beats of the
    first and the last frame, i.e. in steady state with frames back to back.
    """
    from artifact import golden, int_range

    first, last = engine.stages[0], engine.stages[-1]
    layer = artifact.layer(layer_name)
    if x is None:
        lo, hi = int_range(first.in_bits, first.in_signed)
        shape = (frames, *layer["in"]["shape"])
        x = np.random.default_rng(seed).integers(lo, hi + 1, size=shape, dtype=np.int64)
    frames = x.shape[0]
    expected, _ = golden.run_layer(layer, [x], artifact.tensors)
    x4 = x.reshape(frames, first.in_ch, first.height, first.width)
    inputs = [w for f in x4 for w in pack_pixels(f, first.in_bits)]
    n = last.out_height * last.out_width
    plan = getattr(engine, "plan", None)
    max_cycles = None
    if plan is not None:    # generous: every frame at the planned rate, slowed by bubbles and stalls
        max_cycles = int(3 * (frames + 1) * plan.cycles_per_frame / ((1 - bubble) * (1 - stall))) + 20 * len(inputs) + 2000
    res = run_stream(engine, inputs, frames * n, bubble=bubble, stall=stall, seed=seed, reset_after=reset_after,
                     max_cycles=max_cycles)
    out = np.stack([unpack_pixels(res.outputs[i * n:(i + 1) * n], last.out_ch, last.out_height, last.out_width,
                                  last.out_bits, last.out_signed) for i in range(frames)])
    exp4 = expected.reshape(out.shape) if expected.size == out.size else expected
    cpf = None
    if frames > 1:
        oc = res.out_cycles
        cpf = (oc[frames * n - 1] - oc[n - 1]) / (frames - 1)
    return LayerRun(out, exp4, res, cpf)
