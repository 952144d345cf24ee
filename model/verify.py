"""Check a run's artifact against its QAT model on the test set, element by element.

``python -m model.verify RUN_DIR [--artifact DIR] [--limit N]`` prints the QAT model's
test accuracy next to the integer (golden) model's, the number of mismatching
elements over every tapped tensor (input, each U1/G/U2 stage, every layer, logits)
and whether the predicted classes are identical; it writes RUN_DIR/verify.json and the
integer test inputs and labels (RUN_DIR/test_inputs.npy, test_labels.npy) that the
hardware and HLS tools can replay.
Exit status 0 only when nothing mismatches.

The QAT model runs in float64 so that its arithmetic on power-of-two-scaled integers
is exact whatever the accumulator size (float32 is exact up to 2^24).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from artifact import ArtifactError, golden, load_artifact
from artifact.cli import Parser, UsageError, check_out_dir, fail, positive_int
from artifact.files import atomic_save_npy, atomic_write_text

from . import data as data_mod
from .checkpoint import load_trained_model
from .export import ExportError, export_model, qat_intermediates
from .ranks import RankError

OUTPUTS = ("verify.json", "test_inputs.npy", "test_labels.npy")


def verify_run(run_dir, artifact_dir=None, limit: int | None = None, batch_size: int = 256) -> dict:
    """Compare the run's QAT model and its artifact on the test set; returns the report dict.

    ``limit``: only the first ``limit`` test images (None or 0: all). The run folder must
    be writable (it receives verify.json, test_inputs.npy, test_labels.npy); that is checked
    before any work."""
    run_dir = Path(run_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UsageError(f"--limit must be a positive number of images, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist (or is not a folder)")
    check_out_dir(run_dir, "run folder")
    for name in OUTPUTS:
        if (run_dir / name).is_dir():
            raise UsageError(f"{run_dir / name} is a folder; verify writes a file there: move it away")
    model, cfg, in_shape, _ = load_trained_model(run_dir)
    art = load_artifact(artifact_dir or run_dir / "artifact")
    model32, model64 = model.float().eval(), copy.deepcopy(model).double().eval()
    manifest, tensors, taps = export_model(model64, in_shape)
    stale = [k for k in tensors if not np.array_equal(tensors[k], art.tensors.get(k))]
    if stale or manifest["layers"] != art.manifest["layers"]:
        raise ExportError(f"the artifact does not match the run's checkpoint (e.g. {stale[:1] or 'manifest'}); "
                          f"re-export with `python -m model.export {run_dir}`")
    test = data_mod.load({**cfg, "augment": False}).test
    x_all, y_all = test.x, test.y
    if limit:
        x_all, y_all = x_all[:limit], y_all[:limit]
    out_exp = art.manifest["layers"][-1]["out"]["exponent"]
    mismatches = {name: 0 for name in taps}
    elements = 0
    pred_qat32, pred_qat, pred_int = [], [], []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size]
        with torch.no_grad():
            pred_qat32.append(model32(x).argmax(1).numpy())
        qat = qat_intermediates(model64, x.double(), taps)
        x_int = golden.quantize_input(x.numpy(), art.manifest["input"])
        gold = golden.run(art, x_int, collect=True)
        for name in taps:
            mismatches[name] += int((qat[name] != gold[name]).sum())
            elements += gold[name].size
        logits = gold[art.manifest["output"]] * 2.0 ** out_exp
        mismatches.setdefault("logits", 0)
        mismatches["logits"] += int((logits != qat["logits"]).sum())
        pred_qat.append(qat["logits"].argmax(1))
        pred_int.append(gold[art.manifest["output"]].argmax(1))
    atomic_save_npy(run_dir / "test_inputs.npy", golden.quantize_input(x_all.numpy(), art.manifest["input"]))
    atomic_save_npy(run_dir / "test_labels.npy", y_all.numpy())
    y = y_all.numpy()
    pred_qat32, pred_qat, pred_int = map(np.concatenate, (pred_qat32, pred_qat, pred_int))
    report = {
        "images": int(len(y)),
        "qat_accuracy": float((pred_qat32 == y).mean()),
        "qat_float64_accuracy": float((pred_qat == y).mean()),
        "integer_accuracy": float((pred_int == y).mean()),
        "classes_identical": bool((pred_qat == pred_int).all()),
        "float32_classes_identical": bool((pred_qat32 == pred_int).all()),
        "tensors_compared": len(mismatches),
        "elements_compared": int(elements),
        "mismatching_elements": int(sum(mismatches.values())),
        "mismatches_by_tensor": {k: v for k, v in mismatches.items() if v},
    }
    atomic_write_text(str(run_dir / "verify.json"), json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> int:
    p = Parser(prog="python -m model.verify", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--artifact", help="artifact directory (default RUN_DIR/artifact)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N test images (default: all)")
    args = p.parse_args(argv)
    try:
        r = verify_run(args.run_dir, args.artifact, args.limit)
    except (UsageError, ExportError, ArtifactError, data_mod.DataError, RankError, OSError) as e:
        return fail(p.prog, e)
    print(f"test images {r['images']}: QAT model accuracy {r['qat_accuracy']:.4f}, integer model accuracy "
          f"{r['integer_accuracy']:.4f}; {r['tensors_compared']} tensors, {r['elements_compared']:,} elements "
          f"compared, {r['mismatching_elements']} mismatching; classes identical: {r['classes_identical']}")
    return 0 if r["mismatching_elements"] == 0 and r["classes_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
