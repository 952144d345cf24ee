"""Every Tucker-2 layer of the default trained model (tests/fixtures/resnet20_digits), fed the
activations that real digits images produce, runs bit-exact in the Amaranth simulator."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from artifact import golden, load_artifact  # noqa: E402
from hw.engine import build_engine  # noqa: E402
from hw.simulate import simulate_layer  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "resnet20_digits"
ART = load_artifact(FIXTURE)
TUCKER = [layer["name"] for layer in ART.layers("tucker2")]
FAST = {"layer1.0.conv1", "layer2.0.conv1"}     # one stride-1 and one stride-2 layer


def _images(n: int = 2) -> np.ndarray:
    """Deterministic digit-like integer inputs: scikit-learn digits, quantized as the model expects."""
    from sklearn.datasets import load_digits
    pre = ART.manifest["model"]["preprocess"]
    x = (load_digits().data[:n].reshape(n, 1, 8, 8) / pre["scale"] - pre["mean"][0]) / pre["std"][0]
    return golden.quantize_input(x, ART.manifest["input"])


ACTIVATIONS = golden.run(ART, _images(), collect=True)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in TUCKER])
def test_trained_tucker2_layer_is_bit_exact(name):
    layer = ART.layer(name)
    x = ACTIVATIONS[layer["inputs"][0]]
    engine = build_engine(ART, name, 64)
    run = simulate_layer(engine, ART, name, x=x, bubble=0.2, stall=0.2, seed=1)
    assert run.exact
    assert np.array_equal(run.output.reshape(ACTIVATIONS[name].shape), ACTIVATIONS[name])


def test_fixture_has_the_default_models_tucker2_layers():
    assert len(TUCKER) == 18
    assert ART.manifest["model"]["inference_reduction"] >= 2.0


@pytest.mark.parametrize("budget", [32, 64, 128])
def test_planner_keeps_every_trained_layer_within_5_percent_of_ideal(budget):
    """Issue target: planner-chosen foldings of the default model's Tucker-2 layers run
    within 5% of total MACs / multipliers used (the cycles are the measured ones: the
    engine hits its plan exactly, see test_back_to_back_frames_hit_planned_rate)."""
    from hw.planner import plan_folding
    from hw.spec import layer_stages
    for name in TUCKER:
        plan = plan_folding(layer_stages(ART, name), budget)
        assert plan.cycles_per_frame <= 1.05 * plan.ideal_cycles, (name, plan.as_dict())
