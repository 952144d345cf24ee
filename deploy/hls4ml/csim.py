"""C simulation of a converted artifact against the golden model, element by element.

``compile()`` builds the HLS C++ with g++ and the ap_types headers bundled with hls4ml
(no Vivado/Vitis needed); ``predict()`` runs it. Integers go in as reals
``q * 2**e`` (doubles, exact) in channels-last order and come back the same way.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from artifact import Artifact, int_range
from artifact import golden

from .convert import HLSBuild, Stream

__all__ = ["CsimResult", "to_hls", "from_hls", "stimulus", "golden_reference", "check_inputs", "compile_model",
           "run_csim", "compare", "write_tb_data"]


@dataclass
class CsimResult:
    """Outcome of one C-simulation comparison (integers, manifest layout)."""

    hls: np.ndarray
    golden: np.ndarray
    inputs: dict
    mismatches: int
    total: int
    class_mismatches: int | None = None  # whole networks: argmax over the logits

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


def to_hls(x: np.ndarray, stream: Stream) -> np.ndarray:
    """Integer batch (N, C[, H, W]) -> contiguous float64 reals, channels-last, for ``predict``."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim == 4:
        x = np.transpose(x, (0, 2, 3, 1))
    return np.ascontiguousarray(x.astype(np.float64) * 2.0 ** stream.exponent)


def from_hls(y, stream: Stream, batch: int) -> np.ndarray:
    """``predict`` output -> integer batch in manifest layout. Non-integral values become a sentinel.

    A value that is not an exact multiple of ``2**exponent`` can only come from a wrong
    type; it is mapped to int64 min so that it counts as a mismatch.
    """
    y = np.asarray(y, dtype=np.float64).reshape(batch, -1) * 2.0 ** -stream.exponent
    q = np.where(y == np.round(y), np.round(y), np.iinfo(np.int64).min).astype(np.int64)
    if len(stream.shape) == 3:
        c, h, w = stream.shape
        return np.transpose(q.reshape(batch, h, w, c), (0, 3, 1, 2))
    return q.reshape(batch, *stream.shape)


def stimulus(stream: Stream, batch: int, seed: int) -> np.ndarray:
    """Integers over the stream's whole range: all-min and all-max samples first, then uniform."""
    lo, hi = int_range(stream.bits, stream.signed)
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, hi + 1, size=(max(batch, 1), *stream.shape), dtype=np.int64)
    if batch >= 3:
        x[0], x[1] = lo, hi
    return x


def golden_reference(build: HLSBuild, artifact: Artifact, xs: dict) -> np.ndarray:
    """The golden output for inputs ``xs`` ({tensor_name: batch}) of a whole-network or one-layer build."""
    if list(build.inputs) == ["input"] and len(build.layers) == len(artifact.manifest["layers"]):
        return golden.run(artifact, xs["input"], upto=build.output_name)
    values = dict(xs)
    for layer in build.layers:
        values[layer["name"]], _ = golden.run_layer(layer, [values[s] for s in layer["inputs"]], artifact.tensors)
    return values[build.output_name]


def check_inputs(build: HLSBuild, xs: dict) -> dict:
    """Check given inputs ({tensor_name: batch}) against the build's input streams (names,
    integer dtype, shape, bit range; one batch size); ArtifactError (one line) otherwise.
    Out-of-range values would otherwise show up as C-simulation "mismatches"."""
    from artifact import ArtifactError
    from artifact.io import check_input_array
    missing = [n for n in build.inputs if n not in xs]
    if missing:
        raise ArtifactError(f"inputs {missing} are missing (the build takes {list(build.inputs)})")
    out = {}
    for name, s in build.inputs.items():
        rec = {"input": {"shape": list(s.shape), "bits": s.bits, "signed": s.signed}}
        out[name] = check_input_array(rec, xs[name], f"input {name!r}")
    if len({len(v) for v in out.values()}) > 1:
        raise ArtifactError(f"inputs have different batch sizes {[len(v) for v in out.values()]}")
    return out


def compile_model(build: HLSBuild, quiet: bool = True) -> None:
    """Write the HLS project and build the C-simulation library with g++."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        build.model.compile()


def run_csim(build: HLSBuild, xs: dict) -> np.ndarray:
    """Run the compiled model on integer inputs ``xs`` ({tensor_name: batch}); integers out."""
    arrays = [to_hls(xs[name], s) for name, s in build.inputs.items()]
    batch = len(next(iter(xs.values())))
    ys = []
    for i in range(batch):  # hls4ml collapses a batch of one; call per sample for uniform shapes
        sample = [a[i:i + 1] for a in arrays]
        ys.append(np.asarray(build.model.predict(sample[0] if len(sample) == 1 else sample)).reshape(-1))
    return from_hls(np.stack(ys), build.output, batch)


def compare(build: HLSBuild, artifact: Artifact, batch: int = 8, seed: int = 0, xs: dict | None = None,
            compile_first: bool = True) -> CsimResult:
    """C-simulate ``build`` on ``batch`` stimulus samples and count mismatches with the golden model."""
    if xs is None:
        xs = {name: stimulus(s, batch, seed + i) for i, (name, s) in enumerate(build.inputs.items())}
    else:
        xs = check_inputs(build, xs)
    if compile_first:
        compile_model(build)
    hls = run_csim(build, xs)
    ref = np.asarray(golden_reference(build, artifact, xs), dtype=np.int64)
    if hls.shape != ref.shape:
        raise ValueError(f"C-simulation output shape {hls.shape} != golden {ref.shape}")
    classes = None
    whole = build.output_name == artifact.manifest["output"] and list(build.inputs) == ["input"]
    if whole and ref.ndim == 2:
        classes = int((hls.argmax(1) != ref.argmax(1)).sum())
    return CsimResult(hls, ref, xs, int((hls != ref).sum()), int(ref.size), classes)


def write_tb_data(build: HLSBuild, xs: dict, reference: np.ndarray) -> bool:
    """Write the stimulus and the golden outputs (reals, channels-last) into the project's tb_data/.

    hls4ml's C testbench (``<project>_test.cpp``, run by the HLS tool's csim/cosim) reads
    ``tb_input_features.dat`` / ``tb_output_predictions.dat``, one sample per line, and
    logs its outputs to tb_data/csim_results.log for comparison. Single-input builds
    only (the testbench splits multiple inputs by position); returns whether it wrote.
    """
    if len(build.inputs) != 1:
        return False
    (name, stream), = build.inputs.items()
    x = to_hls(xs[name], stream).reshape(len(xs[name]), -1)
    ref = np.asarray(reference, dtype=np.int64)
    y = (np.transpose(ref, (0, 2, 3, 1)) if ref.ndim == 4 else ref).reshape(len(ref), -1)
    y = y.astype(np.float64) * 2.0 ** build.output.exponent
    tb = build.output_dir / "tb_data"
    tb.mkdir(parents=True, exist_ok=True)
    for fname, arr in (("tb_input_features.dat", x), ("tb_output_predictions.dat", y)):
        (tb / fname).write_text("".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in arr))
    return True
