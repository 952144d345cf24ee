"""Golden integer reference: runs an artifact on integer inputs with NumPy only.

This module is the oracle that the QAT model, the RTL and the HLS C-simulation are
compared against, element by element. It never imports torch.

Every arithmetic step is on int64 NumPy arrays:

* ``conv``/``linear`` stage: ``acc = sum(w * x) + bias`` (exact), then
  :func:`requantize` if the stage has a ``requant`` record, else the accumulator is
  the output.
* :func:`requantize`: ``shift > 0`` is a rounding arithmetic right shift with
  round-half-to-even (what ``torch.round`` does); ``shift <= 0`` is an exact left
  shift; then clamp to ``[lo, hi]`` (``lo == 0`` is ReLU).

int64 is exact for every artifact the validator accepts (docs/artifact.md rule 11:
every width <= 64 bits, |shift| <= 64, a left shift never widens an accumulator past
64 bits). :func:`round_shift` itself is exact for any int64 input and any shift: a
right shift by 64 or more is 0, and a left shift that would leave int64 raises
OverflowError instead of wrapping.

Each op's semantics is registered in the op table (:mod:`artifact.ops`) as the
``golden`` lowering; :func:`run_layer` dispatches through it.

Tensors are batched NCHW (conv) or NC (linear) int64 arrays.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .io import check_input_array
from .ops import lowering, register_lowering

__all__ = [
    "quantize_input",
    "round_shift",
    "requantize",
    "conv_accumulate",
    "conv_stage",
    "linear_stage",
    "run_layer",
    "run",
]


def round_shift(acc: np.ndarray, shift: int) -> np.ndarray:
    """``round_half_even(acc / 2**shift)`` for ``shift > 0``; ``acc << -shift`` otherwise.

    Exact for every int64 ``acc`` and every ``shift``: for ``shift >= 64`` the quotient
    lies in [-1/2, 1/2] and rounds to 0; a left shift whose result leaves int64 raises
    OverflowError (never wraps)."""
    acc = np.asarray(acc, dtype=np.int64)
    shift = int(shift)
    if shift <= 0:
        k = -shift
        if k == 0 or acc.size == 0:
            return acc.copy()
        limit = 1 << (63 - k) if k < 63 else 0      # |acc| < limit (acc >= -limit) keeps acc << k in int64
        if k >= 64 or int(acc.max()) >= limit or int(acc.min()) < -limit:
            if k >= 64 and not acc.any():
                return acc.copy()
            raise OverflowError(f"left shift by {k} of values in [{int(acc.min())}, {int(acc.max())}] "
                                f"leaves int64")
        return acc << k
    if shift >= 64:
        return np.zeros_like(acc)
    floor = acc >> shift                      # arithmetic shift = floor division
    rem = acc - (floor << shift)              # 0 <= rem < 2**shift
    half = np.int64(1) << (shift - 1)
    round_up = (rem > half) | ((rem == half) & ((floor & 1) == 1))
    return floor + round_up.astype(np.int64)


def requantize(acc: np.ndarray, requant: dict) -> np.ndarray:
    """Apply a manifest ``requant`` record: rounding shift, then clamp to ``clamp``."""
    lo, hi = (int(v) for v in requant["clamp"])
    return np.clip(round_shift(acc, int(requant["shift"])), lo, hi).astype(np.int64)


def quantize_input(x, spec: dict) -> np.ndarray:
    """Float input -> the artifact's integer input: ``clamp(round_half_even(x / 2**exponent))``
    to the input record's bit range (what the QAT model's input quantizer does)."""
    bits, signed = spec["bits"], spec["signed"]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 2.0 ** -spec["exponent"]), lo, hi).astype(np.int64)


def _pad(x: np.ndarray, padding: int, value: int = 0) -> np.ndarray:
    if padding == 0:
        return x
    p = padding
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=value)


def _windows(x: np.ndarray, kernel: int, stride: int, padding: int, value: int = 0):
    """(N, C, Ho, Wo, k, k) view of the k x k windows of ``x``."""
    xp = _pad(x, padding, value)
    win = sliding_window_view(xp, (kernel, kernel), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def conv_accumulate(x: np.ndarray, weight: np.ndarray, bias, stage: dict) -> np.ndarray:
    """Exact accumulator of a (grouped) convolution: (N, C, H, W) -> (N, M, Ho, Wo) int64."""
    k, s, p, groups = stage["kernel"], stage["stride"], stage["padding"], stage.get("groups", 1)
    w = weight.astype(np.int64)
    win = _windows(x.astype(np.int64), k, s, p)          # N, C, Ho, Wo, k, k
    n, c, ho, wo = win.shape[:4]
    m = w.shape[0]
    cg, mg = c // groups, m // groups
    out = np.empty((n, m, ho, wo), dtype=np.int64)
    for g in range(groups):
        xg = win[:, g * cg:(g + 1) * cg]                   # N, cg, Ho, Wo, k, k
        wg = w[g * mg:(g + 1) * mg]                        # mg, cg, k, k
        out[:, g * mg:(g + 1) * mg] = np.einsum("nchwij,mcij->nmhw", xg, wg, optimize=True)
    if bias is not None:
        out += bias.astype(np.int64)[None, :, None, None]
    return out


def conv_stage(x: np.ndarray, stage: dict, tensors: dict) -> np.ndarray:
    """One conv stage (a dense conv, or U1/G/U2 of a Tucker-2 layer)."""
    bias = tensors[stage["bias"]] if stage.get("bias") else None
    acc = conv_accumulate(x, tensors[stage["weight"]], bias, stage)
    return requantize(acc, stage["requant"]) if stage.get("requant") else acc


def linear_stage(x: np.ndarray, stage: dict, tensors: dict) -> np.ndarray:
    """Fully connected stage: (N, C) -> (N, M)."""
    acc = x.astype(np.int64) @ tensors[stage["weight"]].astype(np.int64).T
    if stage.get("bias"):
        acc = acc + tensors[stage["bias"]].astype(np.int64)[None, :]
    return requantize(acc, stage["requant"]) if stage.get("requant") else acc


def _stage_fn(stage: dict):
    """Stages of kind ``linear`` (and ``op: linear`` layers) are matrix products."""
    return linear_stage if "linear" in (stage.get("kind"), stage.get("op")) else conv_stage


@register_lowering("golden", "conv")
@register_lowering("golden", "linear")
def _single_stage(layer: dict, inputs: list, tensors: dict):
    return _stage_fn(layer)(inputs[0], layer, tensors), {}


@register_lowering("golden", "tucker2")
@register_lowering("golden", "lowrank")
def _factorized(layer: dict, inputs: list, tensors: dict):
    out, stages = inputs[0], {}
    for stage in layer["stages"]:
        out = _stage_fn(stage)(out, stage, tensors)
        stages[stage["name"]] = out
    return out, stages


@register_lowering("golden", "add")
def _add(layer: dict, inputs: list, tensors: dict):
    (a, b), (sa, sb) = inputs, layer["align"]
    acc = round_shift(a.astype(np.int64), -int(sa)) + round_shift(b.astype(np.int64), -int(sb))
    return requantize(acc, layer["requant"]), {}


@register_lowering("golden", "requant")
def _requant(layer: dict, inputs: list, tensors: dict):
    return requantize(inputs[0].astype(np.int64), layer["requant"]), {}


@register_lowering("golden", "maxpool")
def _maxpool(layer: dict, inputs: list, tensors: dict):
    # Padding never wins: the validator keeps padding < kernel, so every window holds a real pixel.
    lo = np.iinfo(np.int64).min
    win = _windows(inputs[0].astype(np.int64), layer["kernel"], layer["stride"], layer["padding"], lo)
    return win.max(axis=(4, 5)), {}


@register_lowering("golden", "global_sum_pool")
def _global_sum_pool(layer: dict, inputs: list, tensors: dict):
    return requantize(inputs[0].astype(np.int64).sum(axis=(2, 3)), layer["requant"]), {}


def run_layer(layer: dict, inputs: list, tensors: dict) -> tuple[np.ndarray, dict]:
    """Run one manifest layer. Returns (output, {stage_name: tensor}) intermediates."""
    return lowering("golden", layer["op"])(layer, inputs, tensors)


def run(artifact, x: np.ndarray, collect: bool = False, upto: str | None = None):
    """Run the whole network on integer input ``x`` of shape (N, *input.shape).

    Returns the output tensor (the logits accumulator), or with ``collect=True`` a dict
    ``{tensor_name: array}`` holding the input, every layer's output and every stage's
    output (keyed ``"<layer>.<stage>"``). ``upto`` stops after the named layer.
    ``x`` is checked first (:func:`artifact.check_input_array`, ArtifactError if its
    shape, dtype or values do not fit the artifact's input record).
    """
    manifest, tensors = artifact.manifest, artifact.tensors
    values = {"input": check_input_array(manifest, x)}
    for layer in manifest["layers"]:
        ins = [values[name] for name in layer["inputs"]]
        out, stages = run_layer(layer, ins, tensors)
        values[layer["name"]] = out
        if collect:
            values.update({f"{layer['name']}.{k}": v for k, v in stages.items()})
        if upto == layer["name"]:
            return values if collect else out
    return values if collect else values[manifest["output"]]
