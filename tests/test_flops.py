"""FLOPs accounting against hand-computed values (CIFAR ResNet-20, a Tucker-2 layer, ViT attention)."""
import pytest

from model import flops
from model.build import build



CIFAR = (3, 32, 32)


def conv_macs(cout, cin, k, hw_out):
    return cout * cin * k * k * hw_out


@pytest.fixture(scope="module")
def dense20():
    return build({"model": "resnet20", "dense": True, "quant": False}, CIFAR, 10)


def test_dense_resnet20_by_hand(dense20):
    rows = {r.name: r for r in dense20.rows}
    assert rows["conv1"].macs == conv_macs(16, 3, 3, 32 * 32) == 442_368
    assert rows["layer1.0.conv1"].macs == conv_macs(16, 16, 3, 32 * 32) == 2_359_296
    assert rows["layer2.0.conv1"].macs == conv_macs(32, 16, 3, 16 * 16) == 1_179_648   # stride 2
    assert rows["layer2.0.shortcut"].macs == conv_macs(32, 16, 1, 16 * 16) == 131_072
    assert rows["layer3.0.shortcut"].macs == conv_macs(64, 32, 1, 8 * 8) == 131_072
    assert rows["fc"].macs == 64 * 10
    by_hand = (conv_macs(16, 3, 3, 1024)                                              # stem
               + 6 * conv_macs(16, 16, 3, 1024)                                       # stage 1
               + conv_macs(32, 16, 3, 256) + 5 * conv_macs(32, 32, 3, 256) + conv_macs(32, 16, 1, 256)
               + conv_macs(64, 32, 3, 64) + 5 * conv_macs(64, 64, 3, 64) + conv_macs(64, 32, 1, 64)
               + 64 * 10)
    t = dense20.totals
    assert t["macs"] == t["dense_macs"] == by_hand == 40_813_184
    assert t["inference_flops"] == 2 * by_hand
    # training: 3 x forward, except the first layer needs no input gradient (2 x)
    assert t["train_macs"] == 3 * by_hand - 442_368
    assert t["dense_params"] == 16 * 3 * 9 + 6 * 16 * 16 * 9 + 32 * 16 * 9 + 5 * 32 * 32 * 9 + 32 * 16 \
        + 64 * 32 * 9 + 5 * 64 * 64 * 9 + 64 * 32 + 640


def test_tucker2_layer_formula():
    ranks = {"layer2.0.conv1": (6, 11), "layer3.1.conv2": (20, 30), "layer2.0.shortcut": (5,)}
    b = build({"model": "resnet20", "quant": False, "ranks": ranks, "factorize_shortcut": True}, CIFAR, 10)
    rows = {r.name: r for r in b.rows}
    c, r1, r2, n = 16, 6, 11, 32          # layer2.0.conv1: 16 -> 32, 3x3, stride 2, 32x32 -> 16x16
    assert rows["layer2.0.conv1"].macs == c * r1 * 32 * 32 + r1 * r2 * 9 * 16 * 16 + r2 * n * 16 * 16
    assert rows["layer2.0.conv1"].params == c * r1 + r1 * r2 * 9 + r2 * n
    assert rows["layer3.1.conv2"].macs == 64 * 20 * 64 + 20 * 30 * 9 * 64 + 30 * 64 * 64
    assert rows["layer2.0.shortcut"].macs == (16 * 5 + 5 * 32) * 16 * 16   # stride in U1
    assert rows["layer2.0.conv1"].train_macs == 3 * rows["layer2.0.conv1"].macs
    assert rows["layer1.0.conv1"].kind == "dense" and rows["layer2.0.conv1"].kind == "tucker2"
    t = b.totals
    saved = sum(r.dense_macs - r.macs for r in b.rows)
    assert t["macs"] == 40_813_184 - saved
    assert t["inference_reduction"] == pytest.approx(40_813_184 / t["macs"])


def test_first_layer_factorized_trains_with_two_passes_on_its_first_stage():
    b = build({"model": "resnet20", "quant": False, "ranks": {"conv1": (2, 8)}, "factorize_first": True},
              CIFAR, 10)
    r = b.rows[0]
    first_stage = 3 * 2 * 1024
    assert r.macs == first_stage + 2 * 8 * 9 * 1024 + 8 * 16 * 1024
    assert r.train_macs == 3 * r.macs - first_stage


def test_mobilenetv2_depthwise_counted_dense():
    b = build({"model": "mobilenetv2", "flops_reduction": 2.0, "quant": False}, (3, 8, 8), 10)
    dw = next(r for r in b.rows if r.name == "layer2.0.dw")    # 96 channels, stride 1 (CIFAR), 8x8
    assert dw.kind == "dense" and dw.macs == 96 * 9 * 64 and "g96" in dw.geometry
    assert next(r for r in b.rows if r.name == "layer2.0.expand").kind == "lowrank"


def test_vit_attention_extra_macs():
    b = build({"model": "vit_tiny", "flops_reduction": 2.0, "quant": False}, (3, 32, 32), 10)
    t, d = 64, 128                          # 8x8 patches of 4x4, embedding 128
    extra = [r for r in b.rows if r.kind == "other"]
    assert len(extra) == 6 and all(r.macs == r.dense_macs == 2 * t * t * d for r in extra)
    assert all(r.train_macs == 3 * r.macs for r in extra)
    qkv = next(r for r in b.rows if r.name == "blocks.0.attn.qkv")
    assert qkv.dense_macs == t * d * 3 * d
    assert b.totals["inference_reduction"] == pytest.approx(2.0, rel=0.02)   # attention included
    assert flops.extra_macs(b.factory) == 6 * 2 * t * t * d


def test_format_table_has_totals(dense20):
    text = flops.format_table(dense20.rows)
    assert "40,813,184" in text and "training FLOPs" in text
