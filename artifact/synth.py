"""Random artifacts without torch: single Tucker-2 / dense conv layers of any shape.

Used by the hardware, simulation and HLS tests to cover layer shapes and bit widths
that the trained model does not have. Shifts are chosen from the accumulator's
typical magnitude so that outputs use their range instead of saturating.
"""
from __future__ import annotations

import math

import numpy as np

from .base import conv_out_hw, dtype_for_bits, int_range
from .bounds import acc_bits
from .io import FORMAT, FORMAT_VERSION, Artifact, validate


def _tensor(shape, bits, signed, exponent) -> dict:
    return {"shape": [int(s) for s in shape], "bits": int(bits), "signed": bool(signed), "exponent": int(exponent)}


def _random_stage(rng, stage: dict, weight_key, in_spec, weight_shape, out_hw: list, *, weight_bits, out_bits,
                  out_signed, bias, requant) -> tuple[dict, dict]:
    """Fill ``stage`` (name, kind, geometry) with random weights/bias, accumulator and requant."""
    cout, fan_in = weight_shape[0], int(np.prod(weight_shape[1:]))
    wlo, whi = int_range(weight_bits, True)
    weight = rng.integers(wlo + 1, whi + 1, size=weight_shape, dtype=np.int64)
    tensors = {weight_key: weight.astype(dtype_for_bits(weight_bits))}
    x_hi = int_range(in_spec["bits"], in_spec["signed"])[1]
    typical = math.sqrt(fan_in) * max(whi, 1) * max(x_hi, 1) / 2
    bias_key = None
    b = None
    if bias:
        bias_key = weight_key.rsplit(".", 1)[0] + ".bias"
        b = rng.integers(-int(typical) - 1, int(typical) + 2, size=cout)
    w_exp = -(weight_bits - 1)
    acc_exp = in_spec["exponent"] + w_exp
    stage.update({"weight": weight_key, "bias": bias_key, "in": dict(in_spec),
                  "weight_bits": weight_bits, "weight_exponent": w_exp,
                  "acc": {"bits": acc_bits(weight, b, in_spec["bits"], in_spec["signed"]), "exponent": acc_exp}})
    if bias:
        stage["bias_bits"] = stage["acc"]["bits"]
        tensors[bias_key] = b.astype(dtype_for_bits(stage["bias_bits"]))
    if requant:
        out_hi = int_range(out_bits, out_signed)[1]
        shift = max(0, round(math.log2(max(typical, 1) / max(out_hi, 1))) + 1)
        stage["requant"] = {"shift": shift, "clamp": list(int_range(out_bits, out_signed))}
        stage["out"] = _tensor([cout, *out_hw], out_bits, out_signed, acc_exp + shift)
    else:
        stage["requant"] = None
        stage["out"] = _tensor([cout, *out_hw], stage["acc"]["bits"], True, acc_exp)
    return stage, tensors


def make_conv_stage(rng, name, weight_key, in_spec, cout, *, kernel=1, stride=1, padding=0, groups=1,
                    weight_bits=8, out_bits=8, out_signed=True, bias=True, requant=True) -> tuple[dict, dict]:
    """A random conv stage record and its tensors. ``in_spec`` is the input tensor record."""
    cin, h, w = in_spec["shape"]
    stage = {"name": name, "kind": "conv", "kernel": kernel, "stride": stride, "padding": padding, "groups": groups}
    return _random_stage(rng, stage, weight_key, in_spec, (cout, cin // groups, kernel, kernel),
                         list(conv_out_hw(h, w, kernel, stride, padding)), weight_bits=weight_bits,
                         out_bits=out_bits, out_signed=out_signed, bias=bias, requant=requant)


def make_linear_stage(rng, name, weight_key, in_spec, cout, *, weight_bits=8, out_bits=8, out_signed=False,
                      bias=True, requant=True) -> tuple[dict, dict]:
    """A random linear stage record (``in_spec`` shape [C]) and its tensors."""
    stage = {"name": name, "kind": "linear"}
    return _random_stage(rng, stage, weight_key, in_spec, (cout, in_spec["shape"][0]), [], weight_bits=weight_bits,
                         out_bits=out_bits, out_signed=out_signed, bias=bias, requant=requant)


def _artifact(in_spec: dict, layers: list, tensors: dict, name: str) -> Artifact:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": {"name": name, "synthetic": True},
                "input": in_spec, "output": layers[-1]["name"], "layers": layers}
    validate(manifest, tensors)
    return Artifact(manifest, tensors)


def random_tucker2(seed=0, *, channels=8, out_channels=8, ranks=(4, 4), kernel=3, stride=1, padding=None,
                   height=6, width=6, in_bits=8, in_signed=False, in_exponent=-4, weight_bits=8, act_bits=8,
                   out_signed=False, bias=True, name="t2") -> Artifact:
    """A one-layer artifact: a random Tucker-2 layer (U1 1x1, G kxk, U2 1x1).

    Intermediate streams (after U1 and G) are signed ``act_bits`` wide; the output is
    ``act_bits`` wide, unsigned (ReLU) unless ``out_signed``.
    """
    rng = np.random.default_rng(seed)
    padding = kernel // 2 if padding is None else padding
    in_spec = _tensor([channels, height, width], in_bits, in_signed, in_exponent)
    r1, r2 = ranks
    u1, t1 = make_conv_stage(rng, "u1", f"{name}.u1.weight", in_spec, r1, weight_bits=weight_bits,
                             out_bits=act_bits, out_signed=True, bias=False)
    g, t2 = make_conv_stage(rng, "g", f"{name}.g.weight", u1["out"], r2, kernel=kernel, stride=stride,
                            padding=padding, weight_bits=weight_bits, out_bits=act_bits, out_signed=True, bias=False)
    u2, t3 = make_conv_stage(rng, "u2", f"{name}.u2.weight", g["out"], out_channels, weight_bits=weight_bits,
                             out_bits=act_bits, out_signed=out_signed, bias=bias)
    layer = {"name": name, "op": "tucker2", "inputs": ["input"], "rank": [r1, r2],
             "kernel": kernel, "stride": stride, "padding": padding,
             "in": in_spec, "out": u2["out"], "stages": [u1, g, u2]}
    return _artifact(in_spec, [layer], {**t1, **t2, **t3}, f"random_tucker2_{seed}")


def random_conv(seed=0, *, channels=8, out_channels=8, kernel=3, stride=1, padding=None, height=6, width=6,
                in_bits=8, in_signed=False, weight_bits=8, act_bits=8, out_signed=False, bias=True,
                name="conv") -> Artifact:
    """A one-layer artifact: a random dense k x k convolution (the baseline engine's layer)."""
    rng = np.random.default_rng(seed)
    padding = kernel // 2 if padding is None else padding
    in_spec = _tensor([channels, height, width], in_bits, in_signed, -4)
    stage, tensors = make_conv_stage(rng, name, f"{name}.weight", in_spec, out_channels, kernel=kernel,
                                     stride=stride, padding=padding, weight_bits=weight_bits,
                                     out_bits=act_bits, out_signed=out_signed, bias=bias)
    layer = {**stage, "op": "conv", "inputs": ["input"]}
    return _artifact(in_spec, [layer], tensors, f"random_conv_{seed}")


def random_input(artifact: Artifact, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Uniform random integer input of the artifact's declared shape and range."""
    spec = artifact.manifest["input"]
    lo, hi = int_range(spec["bits"], spec["signed"])
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(batch, *spec["shape"]), dtype=np.int64)
