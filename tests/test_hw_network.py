"""The network engine's units in the Amaranth simulator, the network planner, segments and
skip-FIFO sizing, and the whole-network generator's command line (fast set).

The whole network under Verilator is tested in tests/test_sim_network.py.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth import ClockDomain, Module, Value  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from artifact import golden, int_range, load_artifact  # noqa: E402
from artifact.synth import random_resnet  # noqa: E402
from hw.network import NetworkEngine, plan_network, select_layers, skip_depths  # noqa: E402
from hw.simulate import pack_pixels, run_stream, unpack_pixels  # noqa: E402
from hw.spec import HwError  # noqa: E402
from hw.units import (AddUnit, Fork, GlobalSumPoolUnit, MaxPoolUnit, PixelFIFO, RequantUnit,  # noqa: E402
                      SERIAL_ENABLE_FANOUT, connect_pixels, pixel_signature, serial_chunk_groups,
                      OP_CREDIT_LOOP, OP_FIFO_DEPTHS, OP_REFILL, credited_fifo_depth, op_cycles,
                      SERIAL_LATENCY, serial_groups, serial_period)

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "resnet20_digits"


def _rec(shape, bits, signed, exponent=0):
    return {"shape": list(shape), "bits": bits, "signed": signed, "exponent": exponent}


def _frames(rng, n, rec):
    lo, hi = int_range(rec["bits"], rec["signed"])
    return rng.integers(lo, hi + 1, size=(n, *rec["shape"]), dtype=np.int64)


def _run_unit(unit, layer, x, *, bubble=0.0, stall=0.0, seed=0):
    """Stream frames ``x`` (N, C, H, W) through a one-input unit; return its (N, C, H', W') output."""
    n = x.shape[0]
    rin, rout = layer["in"], layer["out"]
    inputs = [w for f in x for w in pack_pixels(f, rin["bits"])]
    oshape = rout["shape"] if len(rout["shape"]) == 3 else [rout["shape"][0], 1, 1]
    per = oshape[1] * oshape[2]
    res = run_stream(unit, inputs, n * per, in_port="i", out_port="o", bubble=bubble, stall=stall, seed=seed,
                     max_cycles=20_000)
    out = np.stack([unpack_pixels(res.outputs[i * per:(i + 1) * per], oshape[0], oshape[1], oshape[2],
                                  rout["bits"], rout["signed"]) for i in range(n)])
    return out, res


@pytest.mark.parametrize("shift,in_signed,out_signed", [(0, False, True), (1, True, True), (3, True, False),
                                                        (-2, False, False)])
def test_requant_unit_is_exact_and_one_pixel_per_cycle(shift, in_signed, out_signed):
    rng = np.random.default_rng(shift + 10)
    rin = _rec([3, 2, 3], 7, in_signed)
    lo, hi = int_range(6, out_signed)
    layer = {"in": rin, "out": _rec([3, 2, 3], 6, out_signed), "requant": {"shift": shift, "clamp": [lo + 1, hi - 2]}}
    x = _frames(rng, 3, rin)
    got, res = _run_unit(RequantUnit(layer), layer, x)
    want = golden.requantize(x, layer["requant"])
    assert np.array_equal(got, want)
    gaps = np.diff(res.out_cycles)
    assert gaps.max() == 1, "frames back to back must leave one pixel per cycle"
    got2, _ = _run_unit(RequantUnit(layer), layer, x, bubble=0.4, stall=0.4, seed=3)
    assert np.array_equal(got2, want)


def _simulate(dut, bench) -> None:
    """Run the async testbench ``bench`` against ``dut`` in a ``sync`` domain."""
    top = Module()
    top.domains.sync = ClockDomain("sync")
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def _pop_intervals(unit, held: int, pixels: int = 12) -> list[int]:
    """Cycles between pops of ``unit``'s output by a consumer that reads each pixel in place
    for ``held`` cycles (``ready`` low for ``held - 1`` cycles after ``valid``, then high),
    its input always offered."""
    pops = []

    async def bench(ctx):
        ctx.set(unit.i.valid, 1)
        cycle, seen = 0, 0
        while len(pops) < pixels:
            ctx.set(unit.o.ready, seen >= held - 1)
            _, _, valid, ready = await ctx.tick().sample(unit.o.valid, unit.o.ready)
            if valid and ready:
                pops.append(cycle)
                seen = 0
            elif valid:
                seen += 1
            cycle += 1
            assert cycle < 100 * pixels * held

    _simulate(unit, bench)
    return list(np.diff(pops[2:]))


@pytest.mark.parametrize("held", [1, 5, 32])
def test_op_cycles_models_a_consumer_that_holds_the_output(held):
    """A one-deep op unit refills OP_REFILL cycles after each pop; a deeper one has the next
    pixel queued, so the consumer sets the pace (hw.units.op_cycles, the planner's model: an
    upper bound, equal for one slot)."""
    layer = {"in": _rec([4, 1, 1], 6, True), "out": _rec([4, 1, 1], 6, True), "requant": {"shift": 1, "clamp": [-32, 31]}}
    pixels = 12
    for depth in OP_FIFO_DEPTHS:
        gaps = _pop_intervals(RequantUnit(layer, fifo_depth=depth), held, pixels)
        model = op_cycles(len(gaps), depth, held=len(gaps) * held)
        if depth == 1:
            assert set(gaps) == {held + OP_REFILL}
        # deeper: the consumer's own holding (its unit's cycles) or the credits, whichever is slower
        assert sum(gaps) <= max(model, len(gaps) * held), (depth, held, gaps)
        if held >= OP_CREDIT_LOOP:
            assert depth == 1 or set(gaps) == {held}
    assert op_cycles(64, 1, held=64 * 32) == 64 * (32 + OP_REFILL)
    assert op_cycles(64, 2, held=64 * 32) == op_cycles(64, 2) == 224
    assert op_cycles(64, 8, held=64 * 32) == 64


@pytest.mark.parametrize("depth", OP_FIFO_DEPTHS)
def test_op_unit_keeps_every_result_at_every_fifo_depth(depth):
    """Inputs back to back fill the credits on consecutive cycles; the output FIFO must take
    each result (a plain two-deep SyncFIFOBuffered drops the second: hw.units.credited_fifo)."""
    rin = _rec([3, 2, 3], 7, True)
    layer = {"in": rin, "out": _rec([3, 2, 3], 6, True), "requant": {"shift": 1, "clamp": [-32, 31]}}
    x = _frames(np.random.default_rng(depth), 3, rin)
    got, _ = _run_unit(RequantUnit(layer, fifo_depth=depth), layer, x)
    assert np.array_equal(got, golden.requantize(x, layer["requant"]))
    got, _ = _run_unit(RequantUnit(layer, fifo_depth=depth), layer, x, stall=0.5, seed=depth)
    assert np.array_equal(got, golden.requantize(x, layer["requant"]))
    assert credited_fifo_depth(depth) >= depth


def test_planner_gives_an_op_unit_two_slots_before_an_in_place_reader():
    """``layer1.0.add`` feeds ``layer2.0.conv1``'s U1, which reads each pixel in place near the
    network's rate: one slot would slow the network (tests/test_sim_network.py measures it)."""
    art = random_resnet(10, channels=(2, 6), height=(6, 8), width=(6, 8), stages=2, blocks=1, shortcut="strided",
                        maxpool=False)
    seg, _, _ = select_layers(art)
    plan = plan_network(art, seg, 32)
    assert plan.fifo_depths["layer1.0.add"] == 2 and "layer1.0.add" not in plan.op_lanes
    assert plan.unit_cycles["layer1.0.add"] <= plan.cycles_per_frame


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("shift,in_signed,out_signed", [(1, True, True), (3, False, False), (-2, False, True)])
def test_serial_requant_unit_is_exact_at_its_period(lanes, shift, in_signed, out_signed):
    rng = np.random.default_rng(shift + 20 + lanes)
    rin = _rec([5, 2, 3], 7, in_signed)
    lo, hi = int_range(6, out_signed)
    layer = {"in": rin, "out": _rec([5, 2, 3], 6, out_signed), "requant": {"shift": shift, "clamp": [lo + 1, hi - 2]}}
    x = _frames(rng, 3, rin)
    want = golden.requantize(x, layer["requant"])
    unit = RequantUnit(layer, lanes=lanes)
    assert unit.lanes == lanes and unit.fifo_depth == 1
    got, res = _run_unit(unit, layer, x)
    assert np.array_equal(got, want)
    assert set(np.diff(res.out_cycles)) == {serial_period(5, lanes)}, "a pixel per serial_period cycles"
    got2, _ = _run_unit(RequantUnit(layer, lanes=lanes), layer, x, bubble=0.4, stall=0.4, seed=3)
    assert np.array_equal(got2, want)


@pytest.mark.parametrize("lanes", [1, 3])
def test_serial_output_register_is_enabled_in_chunks(lanes):
    """No one flip-flop drives the clock enable of a whole serial pixel (on a full part that
    net was a long route): the output register is written in chunks of at most
    SERIAL_ENABLE_FANOUT bits (or one group), each under an enable flip-flop of its own, and
    the pixel comes out whole (20 channels: chunks of 8, 8, 4 groups with one lane; 7 groups
    of 3 lanes, the last one short, in chunks of 2)."""
    import re
    from amaranth.back import rtlil
    rng = np.random.default_rng(lanes)
    rin = _rec([20, 2, 2], 8, True)
    layer = {"in": rin, "out": _rec([20, 2, 2], 8, True), "requant": {"shift": 2, "clamp": [-128, 127]}}
    x = _frames(rng, 3, rin)
    got, res = _run_unit(RequantUnit(layer, lanes=lanes), layer, x, bubble=0.3, stall=0.3, seed=lanes)
    assert np.array_equal(got, golden.requantize(x, layer["requant"]))
    text = rtlil.convert(RequantUnit(layer, lanes=lanes), name="dut")
    widths = [int(w) for w in re.findall(r"wire width (\d+) \\out_chunk_\d+\n", text)]
    per_chunk = serial_chunk_groups(lanes * 8)
    groups = serial_groups(20, lanes)
    assert len(widths) == -(-groups // per_chunk) > 1
    assert max(widths) <= max(SERIAL_ENABLE_FANOUT, lanes * 8) and sum(widths) == groups * lanes * 8
    assert len(re.findall(r"wire width 1 \\out_chunk_\d+_en\n", text)) == len(widths)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_op_unit_lanes_are_checked():
    layer = {"in": _rec([4, 1, 1], 8, True), "out": _rec([4, 1, 1], 8, True), "requant": {"shift": 0, "clamp": [-128, 127]}}
    assert RequantUnit(layer, lanes=4).lanes is None             # one per channel: the parallel unit
    for bad in (0, 5):
        with pytest.raises(HwError, match="lanes must be 1..4"):
            RequantUnit(layer, lanes=bad)


def _two_input_run(dut, a_words, b_words, n_out, *, bubble=0.0, stall=0.0, seed=0, max_cycles=5000):
    """Drive ``dut.a`` and ``dut.b`` independently (random bubbles each), drain ``dut.o``."""
    rng = random.Random(seed)
    outs = []

    async def bench(ctx):
        ia = ib = 0
        ha = hb = False
        for _ in range(max_cycles):
            if not ha and ia < len(a_words) and rng.random() >= bubble:
                ctx.set(Value.cast(dut.a.payload), a_words[ia])
                ctx.set(dut.a.valid, 1)
                ha = True
            if not hb and ib < len(b_words) and rng.random() >= bubble:
                ctx.set(Value.cast(dut.b.payload), b_words[ib])
                ctx.set(dut.b.valid, 1)
                hb = True
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, ra, rb, ov, op = await ctx.tick().sample(dut.a.ready, dut.b.ready, dut.o.valid,
                                                          Value.cast(dut.o.payload))
            if ha and ra:
                ia, ha = ia + 1, False
                ctx.set(dut.a.valid, 0)
            if hb and rb:
                ib, hb = ib + 1, False
                ctx.set(dut.b.valid, 0)
            if ov and ready:
                outs.append(op)
            if len(outs) >= n_out:
                return
        raise AssertionError(f"only {len(outs)} of {n_out} outputs in {max_cycles} cycles")

    _simulate(dut, bench)
    return outs


@pytest.mark.parametrize("align", [(0, 0), (2, 0), (0, 3)])
def test_add_unit_aligns_adds_and_requantizes_exactly(align):
    rng = np.random.default_rng(sum(align))
    ra, rb = _rec([4, 2, 2], 6, True), _rec([4, 2, 2], 5, False)
    acc_bits = max(6 + align[0], 6 + align[1]) + 2
    layer = {"align": list(align), "acc": {"bits": acc_bits, "exponent": 0}, "out": _rec([4, 2, 2], 5, False),
             "requant": {"shift": 1, "clamp": [0, 31]}}
    a, b = _frames(rng, 3, ra), _frames(rng, 3, rb)
    aw = [w for f in a for w in pack_pixels(f, 6)]
    bw = [w for f in b for w in pack_pixels(f, 5)]
    want = golden.requantize((a << align[0]) + (b << align[1]), layer["requant"])
    for lanes in (None, 1, 3):
        for bubble, stall in ((0.0, 0.0), (0.5, 0.4)):
            outs = _two_input_run(AddUnit(layer, ra, rb, lanes=lanes), aw, bw, len(aw), bubble=bubble, stall=stall,
                                  seed=7)
            got = np.stack([unpack_pixels(outs[i * 4:(i + 1) * 4], 4, 2, 2, 5, False) for i in range(3)])
            assert np.array_equal(got, want), f"lanes {lanes}, bubble {bubble}"


@pytest.mark.parametrize("lanes", [None, 1, 2])
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (4, 4)])
def test_global_sum_pool_unit_is_exact(h, w, lanes):
    """Parallel and serial (1 lane; 2 lanes over 3 channels, the last group short), with
    bubbles and stalls: every frame's sums start from zero."""
    rng = np.random.default_rng(h * w)
    rin = _rec([3, h, w], 5, True)
    divisor = (h * w - 1).bit_length()
    layer = {"in": rin, "out": _rec([3], 8, False), "acc": {"bits": 5 + divisor + 1, "exponent": 0},
             "divisor_log2": divisor, "requant": {"shift": divisor, "clamp": [0, 255]}}
    x = _frames(rng, 4, rin)
    unit = GlobalSumPoolUnit(layer, lanes=lanes)
    assert unit.lanes == lanes
    got, _ = _run_unit(unit, layer, x, bubble=0.3, stall=0.3, seed=1)
    want = golden.requantize(x.sum(axis=(2, 3)), layer["requant"])
    assert np.array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("lanes", [1, 2])
def test_serial_pool_takes_a_pixel_per_serial_period(lanes):
    """Input and output always ready: a frame of ``H*W`` pixels in at most ``H*W *
    serial_period`` cycles (what the planner counts for a serial pool); only the last pixel
    waits for the output register, so the others take a cycle less."""
    rng = np.random.default_rng(lanes)
    rin = _rec([5, 2, 3], 6, False)
    layer = {"in": rin, "out": _rec([5], 8, False), "acc": {"bits": 10, "exponent": 0}, "divisor_log2": 3,
             "requant": {"shift": 3, "clamp": [0, 255]}}
    x = _frames(rng, 3, rin)
    got, res = _run_unit(GlobalSumPoolUnit(layer, lanes=lanes), layer, x)
    want = golden.requantize(x.sum(axis=(2, 3)), layer["requant"])
    assert np.array_equal(got.reshape(want.shape), want)
    groups = serial_groups(5, lanes)
    assert set(np.diff(res.out_cycles)) == {6 * (groups + SERIAL_LATENCY)}
    assert 6 * (groups + SERIAL_LATENCY) <= 6 * serial_period(5, lanes)


@pytest.mark.parametrize("kernel,stride,padding,signed", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False)])
def test_maxpool_unit_is_exact(kernel, stride, padding, signed):
    """Signed input with padding: the padded positions must never win (they read as the minimum)."""
    from artifact import conv_out_hw
    rng = np.random.default_rng(kernel * 10 + stride)
    rin = _rec([2, 5, 6], 4, signed)
    oh, ow = conv_out_hw(5, 6, kernel, stride, padding)
    layer = {"name": "mp", "op": "maxpool", "in": rin, "out": _rec([2, oh, ow], 4, signed), "kernel": kernel,
             "stride": stride, "padding": padding}
    x = _frames(rng, 2, rin)
    if signed:
        x = np.minimum(x, -1)           # all negative: a zero-padded window would answer 0
    got, _ = _run_unit(MaxPoolUnit(layer), layer, x, bubble=0.2, stall=0.3, seed=2)
    want, _ = golden.run_layer(layer, [x], {})
    assert np.array_equal(got, want)


@pytest.mark.parametrize("n", [2, 3])
def test_fork_delivers_every_beat_to_every_output(n):
    sig = pixel_signature(2, 4, False)
    fork = Fork(sig, n)
    words = list(range(40))
    rng = random.Random(n)
    got = [[] for _ in range(n)]

    async def bench(ctx):
        i, holding = 0, False
        for _ in range(2000):
            if not holding and i < len(words) and rng.random() >= 0.3:
                ctx.set(Value.cast(fork.i.payload), words[i])
                ctx.set(fork.i.valid, 1)
                holding = True
            readies = [rng.random() >= 0.5 for _ in range(n)]
            for o, r in zip(fork.outputs(), readies):
                ctx.set(o.ready, r)
            sampled = await ctx.tick().sample(fork.i.ready, *[s for o in fork.outputs()
                                                               for s in (o.valid, Value.cast(o.payload))])
            in_ready = sampled[2]
            for k in range(n):
                if sampled[3 + 2 * k] and readies[k]:
                    got[k].append(sampled[4 + 2 * k])
            if holding and in_ready:
                i, holding = i + 1, False
                ctx.set(fork.i.valid, 0)
            if all(len(g) == len(words) for g in got):
                return
        raise AssertionError("fork did not deliver every beat")

    _simulate(fork, bench)
    assert all(g == words for g in got)


def test_typed_streams_refuse_a_width_or_signedness_mismatch():
    a = PixelFIFO(pixel_signature(4, 8, True), 2)
    b = PixelFIFO(pixel_signature(4, 8, False), 2)
    c = PixelFIFO(pixel_signature(4, 8, True), 2)
    d = PixelFIFO(pixel_signature(4, 7, True), 2)
    m = Module()
    with pytest.raises(HwError, match="4-channel 8-bit signed stream to a 4-channel 8-bit unsigned input"):
        connect_pixels(m, a.o, b.i)
    with pytest.raises(HwError, match="7-bit"):
        connect_pixels(m, a.o, d.i)
    connect_pixels(m, a.o, c.i)


# ----------------------------------------------------------------------------- planning


@pytest.fixture(scope="module")
def fixture_art():
    return load_artifact(FIXTURE)


def test_network_plan_balances_one_budget(fixture_art):
    seg, _, _ = select_layers(fixture_art)
    prev = None
    for budget in (64, 128, 156):
        plan = plan_network(fixture_art, seg, budget)
        assert plan.multipliers <= budget
        assert plan.cycles_per_frame == max(plan.unit_cycles.values())
        assert plan.ideal_cycles <= plan.cycles_per_frame
        macs = sum(s.macs for ss in plan.specs.values() for s in ss)
        assert plan.macs == macs == 1_266_376
        if prev is not None:
            assert plan.cycles_per_frame <= prev
        prev = plan.cycles_per_frame
    n = sum(len(s) for s in plan.specs.values())
    with pytest.raises(HwError, match=f"network has {n} MAC stages"):
        plan_network(fixture_art, seg, n - 1)
    assert plan_network(fixture_art, seg, n).multipliers == n


def test_products_beyond_the_parts_dsps_are_built_in_logic(fixture_art):
    from hw import resources
    seg, _, _ = select_layers(fixture_art)
    part = resources.part("LFE5U-85F")
    assert not plan_network(fixture_art, seg, 192).soft_stages
    assert not plan_network(fixture_art, seg, 128, dsps=part.multipliers).soft_stages
    hard = plan_network(fixture_art, seg, 192)
    plan = plan_network(fixture_art, seg, 192, dsps=part.multipliers)
    assert plan.folds == hard.folds and plan.cycles_per_frame == hard.cycles_per_frame
    assert plan.multipliers - part.multipliers <= plan.soft_multipliers < plan.multipliers
    assert plan.as_dict()["soft_multipliers"] == plan.soft_multipliers
    net = NetworkEngine(fixture_art, plan)
    soft = {(u.name, spec.name) for u in net.units if hasattr(u.component, "inner")
            for spec, (_, mvu) in zip(u.component.inner.stages, u.component.inner.units) if mvu.soft}
    assert soft == plan.soft_stages
    _, total = net.resources(part)
    _, all_dsp = NetworkEngine(fixture_art, hard).resources(part)
    assert total.multipliers == plan.multipliers - plan.soft_multipliers <= part.multipliers
    assert total.luts > all_dsp.luts + 100 * plan.soft_multipliers
    resources.check_fit(total, part)
    with pytest.raises(HwError, match="multipliers"):
        resources.check_fit(all_dsp, part)
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(HwError, match="DSP count"):
            plan_network(fixture_art, seg, 64, dsps=bad)


def test_segments_must_be_contiguous(fixture_art):
    seg, entry, _ = select_layers(fixture_art, "layer1.1.conv1", "layer1.1.add")
    assert entry == "layer1.0.add" and [l["name"] for l in seg][-1] == "layer1.1.add"
    with pytest.raises(HwError, match="skip edge crosses"):
        select_layers(fixture_art, "layer1.1.conv2", "layer1.1.add")
    with pytest.raises(HwError, match="skip edge crosses"):
        select_layers(fixture_art, "layer1.0.add", "layer1.1.conv2")
    assert select_layers(fixture_art, "layer1.1.conv1", "layer1.1.conv2")[1] == "layer1.0.add"
    with pytest.raises(HwError, match="is empty"):
        select_layers(fixture_art, "fc", "conv1")
    with pytest.raises(HwError, match="not in the artifact"):
        select_layers(fixture_art, "nope", None)


def test_skip_fifo_depth_covers_the_branch_lead(fixture_art):
    seg, entry, rec = select_layers(fixture_art)
    plan = plan_network(fixture_art, seg, 128)
    records = {entry: rec, **{l["name"]: l["out"] for l in seg}}
    depths = skip_depths(seg, records, plan)
    adds = [l["name"] for l in seg if l["op"] == "add"]
    assert sorted(a for a, _ in depths) == sorted(adds)
    # the shortcut (operand 1) runs ahead: two 3x3 windows on an 8x8 image lag 2 * (8 + 1) pixels
    assert all(i == 1 for _, i in depths)
    assert depths[("layer1.1.add", 1)] >= 18


@pytest.mark.parametrize("seed,channels,size,stages,dsps", [(3, (1, 2), (3, 4), 1, None), (5, (4, 8), (4, 4), 2, 12)])
def test_network_engine_in_amaranth_simulation_is_exact(seed, channels, size, stages, dsps):
    art = random_resnet(seed, channels=channels, height=(size[0], size[0]), width=(size[1], size[1]), stages=stages,
                        blocks=1, maxpool=False)
    seg, entry, rec = select_layers(art)
    plan = plan_network(art, seg, 40, dsps=dsps)
    if channels[1] > 2:      # serial op units, with one lane and with more
        assert 1 in plan.op_lanes.values() and max(plan.op_lanes.values()) > 1
    if dsps is not None:     # products in logic beside DSP products
        assert plan.multipliers - dsps <= plan.soft_multipliers < plan.multipliers
    net = NetworkEngine(art, plan)
    x = _frames(np.random.default_rng(0), 2, rec)
    inputs = [w for f in x for w in pack_pixels(f, rec["bits"])]
    res = run_stream(net, inputs, 2, bubble=0.3, stall=0.3, seed=5, max_cycles=40 * plan.cycles_per_frame + 4000)
    out = art.manifest["layers"][-1]["out"]
    got = np.stack([unpack_pixels([w], out["shape"][0], 1, 1, out["bits"], out["signed"]).reshape(-1)
                    for w in res.outputs])
    assert np.array_equal(got, golden.run(art, x))


# ----------------------------------------------------------------------------- generation

def _generate(*args):
    return subprocess.run([sys.executable, "-m", "hw.generate", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def test_generate_writes_the_whole_network(tmp_path):
    from artifact import save_artifact
    art = random_resnet(1, channels=(1, 3), height=(4, 4), width=(4, 4), stages=2, blocks=1)
    save_artifact(tmp_path / "art", art.manifest, art.tensors)
    r = _generate("--artifact", str(tmp_path / "art"), "--out", str(tmp_path / "hw"), "--multipliers", "40")
    assert r.returncode == 0, r.stderr
    desc = json.loads(next((tmp_path / "hw").glob("*.json")).read_text())
    assert desc["format"] == "elrt-hw-network"
    assert [u["name"] for u in desc["units"]] == [l["name"] for l in art.manifest["layers"]]
    assert desc["multipliers"]["used"] <= 40
    assert desc["cycles_per_frame"] == max(u["cycles_per_frame"] for u in desc["units"])
    assert {s["add"] for s in desc["skip_fifos"]} <= {l["name"] for l in art.manifest["layers"] if l["op"] == "add"}
    text = (tmp_path / "hw" / desc["verilog"]).read_text()
    assert f"module {desc['top']}" in text and "pix_out__payload" in text


@pytest.mark.parametrize("args,needle", [
    (["--layers", "fc:conv1"], "is empty"),
    (["--layers", "layer1.1.conv2:layer1.1.add"], "skip edge crosses"),
    (["--layers", "a:b:c"], "not FIRST:LAST"),
    (["--layer", "fc", "--layers", "conv1:fc"], "exclude each other"),
    (["--multipliers", "5"], "MAC stages"),
    (["--min-utilisation", "0.5"], "applies to --layer"),
    (["--part", "XC9"], "unknown FPGA part"),
    (["--part", "LFE5U-25F"], "MAC stages"),
    (["--part", "LFE5U-45F"], "but LFE5U-45F has"),
    (["--layer", "fc", "--part", "LFE5U-85F"], "applies to the whole network"),
])
def test_generate_network_bad_input_is_one_line(tmp_path, args, needle):
    r = _generate("--artifact", str(FIXTURE), "--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
