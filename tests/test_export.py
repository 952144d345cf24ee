"""Export bit-exactness: golden integers == Brevitas integers, stage by stage."""
import numpy as np
import pytest
import torch

from artifact import Artifact, golden, save_artifact, validate
from artifact.bounds import worst_case_input_row
from model.blocks import fold_batchnorm
from model.build import build
from model.export import ExportError, export_model, qat_intermediates
from model.quant import QuantConfig
from qat_helpers import ProbeNet, calibrate_and_fold


def _compare(model, in_shape, batch=6, seed=1):
    manifest, tensors, taps = export_model(model, in_shape)
    validate(manifest, tensors)
    art = Artifact(manifest, tensors)
    x = torch.randn(batch, *in_shape, generator=torch.Generator().manual_seed(seed)).double()
    qat = qat_intermediates(model.double(), x, taps)
    gold = golden.run(art, qat["input"], collect=True)
    mismatches = {k: int((qat[k] != gold[k]).sum()) for k in taps if k != "input"}
    return manifest, art, qat, gold, mismatches


CASES = [
    # kernel, stride, padding, ranks, weight_bits, act_bits, out_signed
    (3, 1, 1, (3, 5), 8, 8, False),
    (3, 2, 1, (4, 2), 4, 6, True),
    (5, 1, 2, (2, 3), 6, 4, False),
    (5, 2, 0, (5, 5), 2, 3, True),
    (3, 2, 0, (1, 1), 8, 2, False),
    (1, 1, 0, (3,), 5, 8, True),
    (1, 2, 0, (2,), 3, 5, False),
    (3, 1, 1, None, 7, 7, True),
    (5, 2, 2, None, 2, 2, False),
]


@pytest.mark.parametrize("kernel,stride,padding,ranks,wbits,abits,out_signed", CASES)
def test_layer_shapes_are_bit_exact(kernel, stride, padding, ranks, wbits, abits, out_signed):
    qc = QuantConfig(weight_bits=wbits, act_bits=abits)
    in_shape = (2, 9, 7)
    model = calibrate_and_fold(ProbeNet(qc, 2, 6, 5, kernel, stride, padding, ranks, out_signed), in_shape)
    manifest, _, qat, gold, mismatches = _compare(model, in_shape)
    assert sum(mismatches.values()) == 0, mismatches
    layer = manifest["layers"][-1]
    assert layer["op"] == ("conv" if ranks is None else "tucker2" if kernel > 1 else "lowrank")
    assert layer["out"]["signed"] == out_signed
    # the outputs are not trivially saturated or zero
    assert len(np.unique(gold["layer"])) > 1


def test_resnet20_every_stage_and_logits_bit_exact():
    b = build({"model": "resnet20", "flops_reduction": 2.0}, (1, 8, 8), 10)
    model = calibrate_and_fold(b.model, (1, 8, 8))
    manifest, art, qat, gold, mismatches = _compare(model, (1, 8, 8), batch=16)
    assert sum(mismatches.values()) == 0, {k: v for k, v in mismatches.items() if v}
    assert len(mismatches) > 70  # every U1, G, U2, shortcut, add, pool and the logits
    logits = gold[manifest["output"]] * 2.0 ** manifest["layers"][-1]["out"]["exponent"]
    assert np.array_equal(logits, qat["logits"])
    assert {l["op"] for l in manifest["layers"]} == {"conv", "tucker2", "requant", "add", "global_sum_pool", "linear"}


def test_artifact_round_trip_without_torch(tmp_path):
    b = build({"model": "resnet8", "flops_reduction": 3.0, "weight_bits": 4, "act_bits": 5}, (1, 8, 8), 10)
    model = calibrate_and_fold(b.model, (1, 8, 8))
    manifest, tensors, _ = export_model(model, (1, 8, 8))
    save_artifact(tmp_path / "a", manifest, tensors)
    code = (f"import sys, numpy as np; from artifact import load_artifact, golden;"
            f"a = load_artifact({str(tmp_path / 'a')!r}); x = np.zeros((1, 1, 8, 8), np.int64);"
            f"golden.run(a, x); assert 'torch' not in sys.modules; print('ok')")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_worst_case_inputs_fit_the_recorded_accumulator():
    qc = QuantConfig(weight_bits=8, act_bits=8)
    model = calibrate_and_fold(ProbeNet(qc, 2, 6, 5, 3, 2, 1, (4, 4), False), (2, 7, 7))
    manifest, tensors, _ = export_model(model, (2, 7, 7))
    for stage in manifest["layers"][-1]["stages"]:
        w = tensors[stage["weight"]].astype(np.int64)
        b = tensors[stage["bias"]].astype(np.int64) if stage["bias"] else np.zeros(w.shape[0], np.int64)
        lo_lim, hi_lim = -(1 << (stage["acc"]["bits"] - 1)), (1 << (stage["acc"]["bits"] - 1)) - 1
        k, s, p = stage["kernel"], stage["stride"], stage["padding"]
        oy = -(-p // s)                      # first output row whose window lies inside the image
        row = oy * s - p
        extremes = []
        for n in range(w.shape[0]):
            for maximise in (True, False):
                x = np.zeros((1, *stage["in"]["shape"]), np.int64)
                x[0, :, row:row + k, row:row + k] = worst_case_input_row(
                    w[n], stage["in"]["bits"], stage["in"]["signed"], maximise)
                acc = golden.conv_accumulate(x, w, None, stage)[0, n, oy, oy] + b[n]
                pos, neg = np.clip(w[n], 0, None).sum(), np.clip(w[n], None, 0).sum()
                lo, hi = (0, (1 << stage["in"]["bits"]) - 1) if not stage["in"]["signed"] else \
                    (-(1 << (stage["in"]["bits"] - 1)), (1 << (stage["in"]["bits"] - 1)) - 1)
                assert acc == (pos * hi + neg * lo if maximise else pos * lo + neg * hi) + b[n]
                assert lo_lim <= acc <= hi_lim
                extremes.append(acc)
        # the recorded width is the smallest that holds the extremes
        assert min(extremes) < -(1 << (stage["acc"]["bits"] - 2)) or max(extremes) > (1 << (stage["acc"]["bits"] - 2)) - 1


def test_unfolded_model_refuses_to_export():
    b = build({"model": "resnet20", "flops_reduction": 2.0}, (1, 8, 8), 10)
    b.model.eval()
    with pytest.raises(ExportError, match="BatchNorm is not folded"):
        export_model(b.model, (1, 8, 8))


def test_float_model_refuses_to_export():
    b = build({"model": "resnet20", "flops_reduction": 2.0, "quant": False}, (1, 8, 8), 10)
    b.model.eval()
    fold_batchnorm(b.model)
    with pytest.raises(ExportError, match="not a Brevitas activation quantizer"):
        export_model(b.model, (1, 8, 8))


def _model_bit_exact(name, in_shape, classes=5, batch=4, steps=1):
    b = build({"model": name, "flops_reduction": 2.0}, in_shape, classes)
    model = calibrate_and_fold(b.model, in_shape, steps=steps)
    manifest, art, qat, gold, mismatches = _compare(model, in_shape, batch=batch)
    assert sum(mismatches.values()) == 0, {k: v for k, v in mismatches.items() if v}
    logits = gold[manifest["output"]] * 2.0 ** manifest["layers"][-1]["out"]["exponent"]
    assert np.array_equal(logits, qat["logits"])
    return manifest, qat, gold, mismatches


def test_mobilenetv2_every_stage_and_logits_bit_exact():
    manifest, qat, gold, mismatches = _model_bit_exact("mobilenetv2", (3, 16, 16))
    layers = {l["name"]: l for l in manifest["layers"]}
    assert {l["op"] for l in manifest["layers"]} == {"conv", "lowrank", "requant", "add", "global_sum_pool",
                                                      "linear"}
    dw = layers["layer2.0.dw"]  # depthwise: dense, one group per channel
    assert dw["op"] == "conv" and dw["groups"] == dw["in"]["shape"][0] == dw["out"]["shape"][0]
    assert any(l["op"] == "lowrank" and n.endswith((".expand", ".project")) for n, l in layers.items())
    assert len([l for l in manifest["layers"] if l["op"] == "add"]) == 10  # every residual block
    assert len(mismatches) > 100


def test_resnet18_with_maxpool_every_stage_and_logits_bit_exact():
    manifest, qat, gold, mismatches = _model_bit_exact("resnet18", (3, 16, 16))
    assert {l["op"] for l in manifest["layers"]} == {"conv", "maxpool", "tucker2", "requant", "add",
                                                      "global_sum_pool", "linear"}
    pool = next(l for l in manifest["layers"] if l["op"] == "maxpool")
    assert (pool["kernel"], pool["stride"], pool["padding"]) == (3, 2, 1)
    assert pool["out"]["shape"] == [64, 4, 4] and pool["out"]["exponent"] == pool["in"]["exponent"]
    assert qat["maxpool"].dtype == np.int64 and len(np.unique(gold["maxpool"])) > 1
    assert len(mismatches) > 60


@pytest.mark.slow
def test_resnet50_bottlenecks_every_stage_and_logits_bit_exact():
    manifest, qat, gold, mismatches = _model_bit_exact("resnet50", (3, 16, 16), batch=2)
    names = {l["name"] for l in manifest["layers"]}
    assert {"layer1.0.conv3", "layer1.0.shortcut", "layer4.2.add", "maxpool"} <= names
    assert len(mismatches) > 140
