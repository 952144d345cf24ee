"""QONNX export executes (qonnx) to exactly the golden model's logits."""
import numpy as np

from artifact import Artifact, golden
from model import qonnx_export
from model.build import build
from model.export import export_model
from qat_helpers import calibrate_and_fold


def test_qonnx_logits_equal_golden(tmp_path):
    b = build({"model": "resnet8", "flops_reduction": 2.0, "weight_bits": 6, "act_bits": 7}, (1, 8, 8), 10)
    model = calibrate_and_fold(b.model, (1, 8, 8))
    manifest, tensors, _ = export_model(model, (1, 8, 8))
    path = qonnx_export.export(model, (1, 8, 8), tmp_path / "model.onnx")
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    onnx_logits = qonnx_export.execute(path, x)
    x_int = golden.quantize_input(x, manifest["input"])
    gold = golden.run(Artifact(manifest, tensors), x_int) * 2.0 ** manifest["layers"][-1]["out"]["exponent"]
    assert np.array_equal(onnx_logits, gold)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left
