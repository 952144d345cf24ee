"""Folding planner: divisibility, budget, balance, errors."""
import pytest

from artifact.synth import random_conv, random_tucker2
from hw.planner import DEFAULT_MULTIPLIERS, fixed_folding, plan_folding, stage_options
from hw.spec import HwError, layer_stages


def _specs(**kw):
    return layer_stages(random_tucker2(0, **kw), "t2")


RESNET_LIKE = [dict(channels=16, out_channels=16, ranks=(8, 8), height=8, width=8),
               dict(channels=32, out_channels=32, ranks=(16, 16), height=4, width=4),
               dict(channels=64, out_channels=64, ranks=(32, 32), height=2, width=2),
               dict(channels=16, out_channels=32, ranks=(8, 16), height=8, width=8, stride=2)]


@pytest.mark.parametrize("shape", RESNET_LIKE)
@pytest.mark.parametrize("budget", [3, 16, 52, 100, 256, 1000])
def test_plan_respects_budget_and_divisibility(shape, budget):
    specs = _specs(**shape)
    plan = plan_folding(specs, budget)
    assert plan.multipliers <= budget
    for spec, f in zip(specs, plan.stages):
        assert spec.out_ch % f.pe == 0 and spec.in_elems % f.simd == 0
        assert f.cycles_per_vector == (spec.out_ch // f.pe) * (spec.in_elems // f.simd)
        assert f.cycles_per_frame <= plan.cycles_per_frame
    assert plan.cycles_per_frame >= plan.ideal_cycles


@pytest.mark.parametrize("shape", RESNET_LIKE)
def test_more_multipliers_never_slower(shape):
    specs = _specs(**shape)
    cycles = [plan_folding(specs, b).cycles_per_frame for b in (3, 8, 20, 50, 120, 300)]
    assert cycles == sorted(cycles, reverse=True)


def test_balanced_resnet_layer_is_ideal():
    """16->16, ranks 8, 8x8: U1:G:U2 MACs are 1:4.5:1, so 104 multipliers balance exactly."""
    plan = plan_folding(_specs(**RESNET_LIKE[0]), 104)
    assert plan.multipliers == 104 and plan.cycles_per_frame == 512 and plan.utilisation == 1.0


@pytest.mark.parametrize("shape", RESNET_LIKE[:3])
@pytest.mark.parametrize("budget", [64, 128, 256])
def test_planner_utilisation_for_resnet_layers(shape, budget):
    assert plan_folding(_specs(**shape), budget).utilisation >= 0.95


@pytest.mark.parametrize("budget", [64, 128, 256])
def test_min_utilisation_trades_budget_for_balance(budget):
    """16->32 stride 2: U1:G:U2 = 1:2.25:1 cannot be balanced in 64/128/256 multipliers."""
    specs = _specs(**RESNET_LIKE[3])
    fastest = plan_folding(specs, budget)
    balanced = plan_folding(specs, budget, min_utilisation=0.95)
    assert fastest.utilisation < 0.95 <= balanced.utilisation
    assert balanced.multipliers < fastest.multipliers <= budget


def test_window_stage_period_floor():
    """A stage behind a sliding window cannot beat kernel+1 cycles per window."""
    spec = _specs(channels=4, out_channels=4, ranks=(2, 2), kernel=3)[1]
    fastest = stage_options(spec)[0]
    assert fastest.period == 4 and fastest.multipliers * fastest.cycles_per_vector >= spec.out_ch * spec.in_elems


def test_default_budget():
    specs = _specs()
    assert plan_folding(specs).budget == DEFAULT_MULTIPLIERS


def test_errors():
    specs = _specs()
    with pytest.raises(HwError, match="too small"):
        plan_folding(specs, 2)
    with pytest.raises(HwError, match="divide"):
        fixed_folding(specs, [(3, 1), (1, 1), (1, 1)])
    dense = layer_stages(random_conv(0), "conv")
    assert plan_folding(dense, 1).multipliers == 1
