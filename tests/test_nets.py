"""Every network builds and trains (forward + backward) dense / low-rank x float / quant at
small input sizes; rank selection meets its FLOPs targets; impossible targets raise."""
import pytest
import torch

from model import flops
from model.build import build, choose_ranks
from model.layers import FACTORIZED, LowRankConv2d, LowRankLinear, Tucker2Conv2d
from model.nets import MODELS, build_model
from model.quant import QuantConfig
from model.ranks import RankError, reduction, select_ranks



# small inputs: CIFAR ResNets / MobileNetV2 8x8, ImageNet ResNets 32x32 (1x1 after /32)
SMALL = {"resnet18": (3, 32, 32), "resnet34": (3, 32, 32), "resnet50": (3, 32, 32),
         "vit_tiny": (3, 16, 16), "vit_tiny_p2": (1, 8, 8)}
# Quant builds are the slow part (a Brevitas module per quantizer, seconds per deep model):
# the fast run covers every model in float, one model per family in low-rank quant and
# resnet20 in dense quant; the other quant runs are marked slow.
QUANT_FAST = ("resnet20", "mobilenetv2", "resnet18", "vit_tiny_p2")
FAMILIES = ("resnet20", "mobilenetv2", "resnet18", "resnet50", "vit_tiny", "vit_tiny_p2")


def test_all_families_registered():
    assert set(FAMILIES) <= set(MODELS)


def _cases():
    for name in MODELS:
        for quant in (False, True):
            for dense in (True, False):
                slow = (quant and (name not in QUANT_FAST or (dense and name != "resnet20"))
                        or name == "resnet110")
                yield pytest.param(name, quant, dense, marks=[pytest.mark.slow] if slow else [],
                                   id=f"{name}-{'quant' if quant else 'float'}-{'dense' if dense else 'lowrank'}")


@pytest.mark.parametrize("name,quant,dense", list(_cases()))
def test_forward_backward(name, quant, dense):
    torch.manual_seed(0)
    shape = SMALL.get(name, (3, 8, 8))
    cfg = {"model": name, "quant": quant, **({"dense": True} if dense else {"flops_reduction": 2.0})}
    b = build(cfg, shape, 7)
    low_rank = [m for m in b.model.modules() if isinstance(m, FACTORIZED)]
    assert bool(low_rank) != dense and len(low_rank) == len(b.ranks)
    b.model.train()
    y = b.model(torch.randn(2, *shape))
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    weights = [p for n, p in b.model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    assert all(w.grad is not None for w in weights)
    assert sum(bool(w.grad.abs().sum() > 0) for w in weights) > 0.9 * len(weights)
    if not dense:
        assert b.totals["inference_reduction"] == pytest.approx(2.0, rel=0.02)


def test_layer_kinds_per_family():
    _, f = build_model("resnet50", 10, 3, QuantConfig(enabled=False),
                       {"layer1.0.conv1": (8,), "layer1.0.conv2": (8, 8)})
    assert isinstance(f.modules["layer1.0.conv1"], LowRankConv2d)      # bottleneck 1x1 -> matrix
    assert isinstance(f.modules["layer1.0.conv2"], Tucker2Conv2d)      # 3x3 -> Tucker-2
    assert not f.specs["conv1"].factorizable and f.specs["conv1"].kernel == 7   # 7x7 stem dense
    assert not f.specs["layer1.0.shortcut"].factorizable and not f.specs["fc"].factorizable
    _, f = build_model("mobilenetv2", 10, 3, QuantConfig(enabled=False), {"layer2.0.expand": (4,)})
    assert isinstance(f.modules["layer2.0.expand"], LowRankConv2d)
    assert not f.specs["layer2.0.dw"].factorizable and f.specs["layer2.0.dw"].groups == 96
    _, f = build_model("vit_tiny", 10, 3, QuantConfig(enabled=False), {"blocks.0.mlp.fc1": (16,)})
    assert isinstance(f.modules["blocks.0.mlp.fc1"], LowRankLinear)
    assert not f.specs["patch_embed"].factorizable and not f.specs["fc"].factorizable
    _, f = build_model("resnet18", 10, 3, QuantConfig(enabled=False), factorize_first=True,
                       factorize_classifier=True, factorize_shortcut=True)
    assert all(s.factorizable for s in f.specs.values())


def _specs(name, shape):
    model, f = build_model(name, 10, shape[0], QuantConfig(enabled=False))
    flops.measure_shapes(model, f, shape)
    return list(f.specs.values()), flops.extra_macs(f)


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("resnet32", (3, 32, 32)),
                                        ("resnet56", (3, 32, 32)), ("mobilenetv2", (3, 32, 32)),
                                        ("resnet18", (3, 64, 64)), ("resnet50", (3, 64, 64)),
                                        ("vit_tiny", (3, 32, 32))])
@pytest.mark.parametrize("target", [2.0, 3.0])
def test_rank_selection_meets_target(name, shape, target):
    specs, extra = _specs(name, shape)
    ranks = select_ranks(specs, target, extra_macs=extra)
    assert set(ranks) == {s.name for s in specs if s.factorizable}
    assert reduction(specs, ranks, extra) == pytest.approx(target, rel=0.02)


def test_impossible_targets_raise():
    specs, _ = _specs("resnet20", (3, 32, 32))
    with pytest.raises(RankError, match="impossible"):
        select_ranks(specs, 1000.0)
    with pytest.raises(RankError):
        select_ranks(specs, 1.0)
    with pytest.raises(RankError):
        choose_ranks({"model": "resnet20"}, (3, 32, 32), 10)        # no target, no ranks, not dense
    with pytest.raises(RankError):
        choose_ranks({"model": "resnet18", "ranks": {"layer1.0.conv1": [65, 8]}}, (3, 32, 32), 10)
    with pytest.raises(RankError):
        choose_ranks({"model": "mobilenetv2", "ranks": {"layer2.0.dw": [4]}}, (3, 32, 32), 10)


@pytest.mark.parametrize("multiple", [4, 8])
def test_rank_multiple(multiple):
    specs, _ = _specs("resnet20", (3, 32, 32))
    ranks = select_ranks(specs, 2.0, multiple=multiple)
    by_name = {s.name: s for s in specs}
    for name, r in ranks.items():
        limits = (by_name[name].cin, by_name[name].cout)
        assert all(v % multiple == 0 or v == lim for v, lim in zip(r, limits)), (name, r)
    assert reduction(specs, ranks) == pytest.approx(2.0, rel=0.02)
    with pytest.raises(RankError):
        select_ranks(specs, 2.0, multiple=0)
