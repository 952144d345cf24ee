"""Tucker-2 and dense engines in the Amaranth simulator, bit for bit against the golden model.

Input bubbles and output back-pressure are random. Small layers run by default;
the big matrix (every kernel/stride/padding/width combination) is @slow.
"""
import itertools

import numpy as np
import pytest

pytest.importorskip("amaranth")

from artifact.synth import random_conv, random_tucker2  # noqa: E402
from hw.engine import LayerEngine, build_engine  # noqa: E402
from hw.planner import fixed_folding  # noqa: E402
from hw.simulate import simulate_layer  # noqa: E402
from hw.spec import HwError, layer_stages  # noqa: E402


def _check(art, name, multipliers, frames=2, **kw):
    eng = build_engine(art, name, multipliers)
    run = simulate_layer(eng, art, name, frames=frames, **kw)
    assert run.exact, f"mismatch: engine {run.output.ravel()[:16]} golden {run.expected.ravel()[:16]}"
    return eng, run


# (kernel, stride, padding, H, W, in_bits, in_signed, act_bits, weight_bits, ranks, budget)
FAST_TUCKER = [
    (3, 1, 1, 4, 4, 8, False, 8, 8, (2, 3), 12),
    (3, 2, 1, 5, 4, 4, True, 4, 3, (3, 2), 6),
    (5, 1, 2, 3, 5, 2, True, 2, 2, (2, 2), 40),
    (1, 2, 0, 4, 3, 6, False, 5, 8, (3, 3), 5),
    (5, 2, 0, 6, 5, 7, True, 8, 4, (2, 3), 3),
]


@pytest.mark.parametrize("k,s,p,h,w,ib,isg,ab,wb,ranks,budget", FAST_TUCKER)
def test_tucker2_engine_fast(k, s, p, h, w, ib, isg, ab, wb, ranks, budget):
    art = random_tucker2(k * 7 + s, channels=3, out_channels=4, ranks=ranks, kernel=k, stride=s, padding=p,
                         height=h, width=w, in_bits=ib, in_signed=isg, weight_bits=wb, act_bits=ab,
                         out_signed=isg)
    _check(art, "t2", budget, bubble=0.3, stall=0.3, seed=k + s)


@pytest.mark.parametrize("k,s,p,budget", [(3, 1, 1, 9), (3, 2, 0, 4), (1, 2, 0, 1)])
def test_dense_engine_fast(k, s, p, budget):
    art = random_conv(k + s, channels=3, out_channels=2, kernel=k, stride=s, padding=p, height=4, width=5,
                      in_bits=5, in_signed=True, act_bits=6, weight_bits=5)
    _check(art, "conv", budget, bubble=0.25, stall=0.25, seed=3)


def test_fully_parallel_and_fully_folded():
    """PE = out, SIMD = in (one cycle per vector) and PE = SIMD = 1 in the same engine."""
    art = random_tucker2(5, channels=4, out_channels=4, ranks=(2, 2), kernel=3, height=3, width=3)
    specs = layer_stages(art, "t2")
    plan = fixed_folding(specs, [(2, 4), (1, 1), (4, 2)])
    run = simulate_layer(LayerEngine(specs, plan), art, "t2", frames=2, bubble=0.2, stall=0.2)
    assert run.exact


def test_no_bias_and_signed_output():
    art = random_tucker2(9, channels=2, out_channels=3, ranks=(2, 2), kernel=3, height=3, width=4, bias=False,
                         out_signed=True, in_signed=True)
    _check(art, "t2", 8, bubble=0.1, stall=0.5)


def test_stage_without_requant_outputs_accumulator():
    art = random_conv(4, channels=2, out_channels=3, kernel=3, height=3, width=3, in_bits=4, weight_bits=4)
    layer = art.manifest["layers"][0]
    layer["requant"] = None
    layer["out"] = {**layer["out"], "bits": layer["acc"]["bits"], "signed": True}
    _check(art, "conv", 6, bubble=0.2, stall=0.2)


def test_lowrank_linear_layer():
    """A factorized Linear (op lowrank, kind linear stages) runs as 1x1-pixel frames."""
    from artifact.io import Artifact, validate
    from artifact.synth import _tensor, make_conv_stage

    rng = np.random.default_rng(0)
    in_spec = _tensor([6], 5, True, -3)
    stages, tensors = [], {}
    spec = in_spec
    for name, cout, last in (("u1", 3, False), ("u2", 4, True)):
        st, t = make_conv_stage(rng, name, f"fc.{name}.weight", {**spec, "shape": [spec["shape"][0], 1, 1]},
                                cout, weight_bits=6, out_bits=6, out_signed=True, bias=last)
        st["kind"] = "linear"
        for key in ("kernel", "stride", "padding", "groups"):
            st.pop(key)
        st["in"] = dict(spec)
        st["out"] = {**st["out"], "shape": [cout]}
        t = {k: (v.reshape(cout, -1) if k.endswith("weight") else v) for k, v in t.items()}
        stages.append(st)
        tensors.update(t)
        spec = st["out"]
    layer = {"name": "fc", "op": "lowrank", "inputs": ["input"], "rank": [3], "in": in_spec, "out": spec,
             "stages": stages}
    manifest = {"format": "elrt-artifact", "format_version": 1, "model": {"name": "lin"}, "input": in_spec,
                "output": "fc", "layers": [layer]}
    validate(manifest, tensors)
    art = Artifact(manifest, tensors)
    _check(art, "fc", 4, frames=5, bubble=0.3, stall=0.3)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 1)])
def test_degenerate_frames(h, w):
    """One-pixel and one-column frames: every window is mostly padding."""
    art = random_tucker2(h * 3 + w, channels=2, out_channels=2, ranks=(2, 2), kernel=3, height=h, width=w)
    _check(art, "t2", 9, frames=3, bubble=0.3, stall=0.3)


def test_reset_mid_frame_recovers():
    art = random_tucker2(3, channels=2, out_channels=2, ranks=(2, 2), kernel=3, height=4, width=4)
    eng = build_engine(art, "t2", 8)
    run = simulate_layer(eng, art, "t2", frames=2, bubble=0.2, stall=0.2, reset_after=21)
    assert run.exact


@pytest.mark.parametrize("hold,input_fifo", [(True, True), (False, True), (False, False)])
def test_output_buffers_with_and_without_the_hold_buffer(hold, input_fifo):
    """Every MVU's output buffer with the second pixel register (rate 0: no consumer keeps
    it otherwise) or without (any rate kept), with and without the input FIFO (a network's
    engines read their input in place), under input bubbles and output back-pressure."""
    art = random_tucker2(5, channels=4, out_channels=6, ranks=(3, 4), kernel=3, height=4, width=4)
    specs = layer_stages(art, "t2")
    plan = fixed_folding(specs, [(1, 2), (2, 3), (2, 2)])
    eng = LayerEngine(specs, plan, input_fifo=input_fifo, rate=0 if hold else 10**9, hold_last=hold)
    assert [m.hold_buffer for _, m in eng.units] == [hold and m.nf > 1 for _, m in eng.units]
    assert any(m.nf > 1 for _, m in eng.units) and (eng.input_fifo is not None) == input_fifo
    run = simulate_layer(eng, art, "t2", frames=3, bubble=0.3, stall=0.3)
    assert run.exact


def test_back_to_back_frames_hit_planned_rate():
    """No bubbles, no back-pressure: steady-state cycles per frame equal the plan."""
    art = random_tucker2(2, channels=4, out_channels=4, ranks=(2, 2), kernel=3, height=4, width=4)
    eng = build_engine(art, "t2", 11)
    run = simulate_layer(eng, art, "t2", frames=3)
    assert run.exact
    assert run.cycles_per_frame <= eng.plan.cycles_per_frame * 1.05


# ---- flat folds (hw.mvu: the weight matrix flattened, a word across two outputs) ---------

# (channels, ranks, kernel, stride, padding, H, W, core fold (pe, simd, flat))
FLAT = [
    (4, (3, 5), 3, 1, 1, 4, 4, (1, 4, True)),     # 5 x 27 weights in 34 words of 4
    (4, (3, 5), 3, 1, 1, 4, 4, (1, 2, True)),
    (4, (3, 5), 3, 1, 1, 4, 4, (1, 9, True)),     # whole pixels (3 channels) per word
    (4, (3, 2), 3, 2, 1, 5, 4, (1, 5, True)),
    (3, (2, 3), 5, 1, 2, 3, 5, (1, 7, True)),     # 5x5 window, words over pixel boundaries
    (4, (4, 3), 3, 1, 0, 4, 4, (1, 6, True)),     # 6 of 4 channels: a word spans two pixels
    (4, (4, 3), 1, 2, 0, 4, 4, (1, 4, True)),     # strided 1x1: a word is the whole vector
    (4, (5, 3), 1, 2, 0, 4, 4, (1, 3, True)),
]


@pytest.mark.parametrize("c,ranks,k,s,p,h,w,core", FLAT)
def test_flat_fold_against_golden(c, ranks, k, s, p, h, w, core):
    """A flat core under input bubbles and output back-pressure, bit for bit."""
    art = random_tucker2(k * 11 + core[1], channels=c, out_channels=4, ranks=ranks, kernel=k, stride=s, padding=p,
                         height=h, width=w, in_bits=5, in_signed=True, weight_bits=6, act_bits=5, out_signed=True)
    specs = layer_stages(art, "t2")
    plan = fixed_folding(specs, [(1, 1), core, (1, 2)])
    g = plan.stages[1]
    assert g.flat and g.cycles_per_vector == -(-specs[1].out_ch * specs[1].in_elems // core[1])
    run = simulate_layer(LayerEngine(specs, plan), art, "t2", frames=2, bubble=0.3, stall=0.3, seed=core[1])
    assert run.exact


@pytest.mark.parametrize("core", [(1, 4, True), (1, 6, True), (2, 3), (1, 5)])
def test_window_stages_with_line_buffers_in_block_ram(monkeypatch, core):
    """Rings too deep for LUT RAM (every ring here, the limit set to 0) are block RAM, read a
    cycle later with the shift in one stage: still bit-exact, flat or not, at the planned rate."""
    import hw.swg
    monkeypatch.setattr(hw.swg, "DISTRIBUTED_MAX_DEPTH", 0)
    art = random_tucker2(5, channels=4, out_channels=4, ranks=(4, 3), kernel=3, height=4, width=5, padding=1,
                         in_bits=5, in_signed=True, weight_bits=6, act_bits=5, out_signed=True)
    specs = layer_stages(art, "t2")
    plan = fixed_folding(specs, [(1, 1), core, (1, 2)])
    assert simulate_layer(LayerEngine(specs, plan), art, "t2", frames=2, bubble=0.3, stall=0.3, seed=3).exact
    run = simulate_layer(LayerEngine(specs, plan), art, "t2", frames=3)
    assert run.exact and run.cycles_per_frame <= plan.cycles_per_frame * 1.05


def test_flat_fold_hits_its_rate_and_a_wrong_lane_mask_is_caught(monkeypatch):
    """Back to back, a flat core keeps ceil(out * in / SIMD) cycles per vector; with one
    lane of one word in the wrong output's sum (its mask bit flipped in the ROM) the outputs
    no longer match (the check can fail)."""
    art = random_tucker2(7, channels=4, out_channels=4, ranks=(3, 5), kernel=3, height=4, width=4, padding=1)
    specs = layer_stages(art, "t2")
    plan = fixed_folding(specs, [(3, 3), (1, 4, True), (4, 5)])
    assert plan.stages[1].cycles_per_frame == plan.cycles_per_frame == 16 * 34
    run = simulate_layer(LayerEngine(specs, plan), art, "t2", frames=3)
    assert run.exact and run.cycles_per_frame <= plan.cycles_per_frame * 1.05

    from hw.mvu import MatrixVectorUnit
    words = MatrixVectorUnit._flat_words

    def wrong(self):                                # lane 0 of the first emitting word moved to the next output
        out = words(self)
        lanes = self.simd * self.spec.weight_bits
        first = next(i for i, w in enumerate(out) if w >> (lanes + self.simd) & 1)
        out[first] ^= 1 << lanes
        return out
    monkeypatch.setattr(MatrixVectorUnit, "_flat_words", wrong)
    assert not simulate_layer(LayerEngine(specs, plan), art, "t2", frames=1).exact


def test_flat_fold_refused_where_it_cannot_be_built():
    art = random_tucker2(3, channels=4, out_channels=4, ranks=(3, 5), kernel=3, height=4, width=4, padding=1)
    specs = layer_stages(art, "t2")
    with pytest.raises(HwError, match="flat fold needs a window stage"):
        fixed_folding(specs, [(1, 2, True), (1, 1), (1, 1)])      # U1 is a plain 1x1 stage
    with pytest.raises(HwError, match="flat fold needs a window stage and PE=1"):
        fixed_folding(specs, [(1, 1), (2, 2, True), (1, 1)])


def test_planner_folds_flat_where_pe_x_simd_would_waste_multiplier_cycles():
    """A 9-rank 3x3 core (81-long vectors, 9 outputs) at 4 multipliers: 21 x 9 = 189 cycles
    per vector folded PE x SIMD, ceil(729 / 4) = 183 flat."""
    from hw.planner import fold, stage_options
    art = random_tucker2(4, channels=9, out_channels=9, ranks=(9, 9), kernel=3, height=4, width=4, padding=1)
    core = layer_stages(art, "t2")[1]
    assert fold(core, 1, 4).cycles_per_vector == 189 and fold(core, 1, 4, True).cycles_per_vector == 183
    at4 = [f for f in stage_options(core) if f.multipliers == 4]
    assert at4 and at4[0].flat and at4[0].cycles_per_vector == 183


# ---- big matrix ------------------------------------------------------------------------

SLOW = list(itertools.product((1, 3, 5), (1, 2), (False, True), ((2, 3, False), (8, 8, True), (5, 2, True))))


@pytest.mark.slow
@pytest.mark.parametrize("k,s,pad_max,widths", SLOW)
def test_tucker2_matrix_slow(k, s, pad_max, widths):
    ib, wb, isg = widths
    p = k - 1 if pad_max else 0
    h = max(k, 5)
    art = random_tucker2(k * 10 + s, channels=5, out_channels=6, ranks=(3, 4), kernel=k, stride=s, padding=p,
                         height=h, width=h + 1, in_bits=ib, in_signed=isg, weight_bits=wb, act_bits=ib,
                         out_signed=not isg)
    for budget in (5, 17, 64):
        _check(art, "t2", budget, frames=2, bubble=0.3, stall=0.3, seed=budget)


@pytest.mark.slow
@pytest.mark.parametrize("k,s", [(1, 1), (1, 2), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_dense_matrix_slow(k, s):
    art = random_conv(k + 3 * s, channels=4, out_channels=5, kernel=k, stride=s, padding=k // 2, height=6, width=7,
                      in_bits=3, in_signed=True, weight_bits=7, act_bits=7)
    for budget in (1, 20):
        _check(art, "conv", budget, frames=2, bubble=0.3, stall=0.3)
