"""QONNX export of the QAT model (Brevitas ``export_qonnx``) and its execution with qonnx.

The QONNX graph is the interchange format FINN and hls4ml read. Its logits, executed
by qonnx's reference executor, must equal the golden model's logits times
``2**exponent`` exactly (tests/test_qonnx.py).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def export(model: nn.Module, in_shape, path) -> Path:
    """Write ``model`` (eval, BN folded) as a cleaned-up QONNX file, atomically (a temp file in
    the same folder, then a rename; the file gets the mode ``open()`` would give it)."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    from artifact.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_qonnx(model, torch.zeros(1, *in_shape), tmp, dynamo=False)
        cleanup_model(ModelWrapper(tmp)).save(tmp)

    atomic_write(path, write)
    return path


def execute(path, x: np.ndarray) -> np.ndarray:
    """Run the QONNX graph on float input ``x`` (N, C, H, W) with qonnx's executor, one
    image at a time (the export traced batch 1); returns the float logits (N, classes)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    graph = ModelWrapper(str(path))
    iname, oname = graph.graph.input[0].name, graph.graph.output[0].name
    return np.concatenate([execute_onnx(graph, {iname: x[i:i + 1].astype(np.float32)})[oname]
                           for i in range(len(x))])
