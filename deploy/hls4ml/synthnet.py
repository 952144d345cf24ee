"""A small random multi-layer artifact that uses every manifest op (NumPy only).

Used by the hls4ml whole-network tests and demos before a trained artifact exists:

    stem (conv 3x3, ReLU) -> b1 (tucker2 3x3) -> add1 (stem + b1, ReLU) -> pool (maxpool 2x2/2, pad ``pool_padding``)
    -> b2 (tucker2 3x3, stride ``b2_stride``) -> rq (requant) -> gap (global_sum_pool)
    -> fc (lowrank linear, ReLU) -> cls (linear, logits = accumulator)

With the default 8x8 input the global pool sees 2x2 (a power of two); ``pool_padding=1``
makes it 3x3 (not a power of two), ``b2_stride=1`` makes it 4x4.
"""
from __future__ import annotations

import numpy as np

from artifact import Artifact, conv_out_size, int_range
from artifact.bounds import signed_bits
from artifact.ops import pool_divisor_log2
from artifact.synth import _artifact, _tensor, make_conv_stage, make_linear_stage

__all__ = ["random_network"]


def _tucker2(rng, name, in_spec, cout, ranks, *, kernel=3, stride=1, act_bits=8, out_signed=False, wb=8):
    padding = kernel // 2
    u1, t1 = make_conv_stage(rng, "u1", f"{name}.u1.weight", in_spec, ranks[0], weight_bits=wb,
                             out_bits=act_bits, out_signed=True, bias=False)
    g, t2 = make_conv_stage(rng, "g", f"{name}.g.weight", u1["out"], ranks[1], kernel=kernel, stride=stride,
                            padding=padding, weight_bits=wb, out_bits=act_bits, out_signed=True, bias=False)
    u2, t3 = make_conv_stage(rng, "u2", f"{name}.u2.weight", g["out"], cout, weight_bits=wb, out_bits=act_bits,
                             out_signed=out_signed, bias=True)
    layer = {"name": name, "op": "tucker2", "inputs": None, "rank": list(ranks), "kernel": kernel, "stride": stride,
             "padding": padding, "in": dict(in_spec), "out": u2["out"], "stages": [u1, g, u2]}
    return layer, {**t1, **t2, **t3}


def random_network(seed: int = 0, *, size: int = 8, channels: int = 8, classes: int = 10, b2_stride: int = 2,
                   pool_padding: int = 0, act_bits: int = 8, weight_bits: int = 8) -> Artifact:
    """A validated random artifact exercising conv, tucker2, add, maxpool, requant, global_sum_pool, lowrank, linear."""
    rng = np.random.default_rng(seed)
    x = _tensor([1, size, size], 8, False, -8)
    tensors: dict = {}
    layers: list = []

    stem, t = make_conv_stage(rng, "stem", "stem.weight", x, channels, kernel=3, padding=1, weight_bits=weight_bits,
                              out_bits=act_bits, out_signed=False)
    layers.append({**stem, "op": "conv", "inputs": ["input"]}); tensors.update(t)

    b1, t = _tucker2(rng, "b1", stem["out"], channels, (4, 4), act_bits=act_bits, out_signed=True, wb=weight_bits)
    b1["inputs"] = ["stem"]; layers.append(b1); tensors.update(t)

    ea, eb = stem["out"]["exponent"], b1["out"]["exponent"]
    e = min(ea, eb)
    align = [ea - e, eb - e]
    lo_a, hi_a = int_range(stem["out"]["bits"], False)
    lo_b, hi_b = int_range(b1["out"]["bits"], True)
    lo, hi = (lo_a << align[0]) + (lo_b << align[1]), (hi_a << align[0]) + (hi_b << align[1])
    shift = max(0, max(abs(lo), hi).bit_length() - act_bits)
    layers.append({"name": "add1", "op": "add", "inputs": ["stem", "b1"], "align": align,
                   "acc": {"bits": signed_bits(lo, hi), "exponent": e},
                   "requant": {"shift": shift, "clamp": list(int_range(act_bits, False))},
                   "out": _tensor([channels, size, size], act_bits, False, e + shift)})

    a_out = layers[-1]["out"]
    ph = conv_out_size(size, 2, 2, pool_padding)
    layers.append({"name": "pool", "op": "maxpool", "inputs": ["add1"], "in": dict(a_out), "kernel": 2, "stride": 2,
                   "padding": pool_padding, "out": _tensor([channels, ph, ph], a_out["bits"], False, a_out["exponent"])})

    b2, t = _tucker2(rng, "b2", layers[-1]["out"], 2 * channels, (4, 6), stride=b2_stride, act_bits=act_bits,
                     out_signed=False, wb=weight_bits)
    b2["inputs"] = ["pool"]; layers.append(b2); tensors.update(t)

    o = b2["out"]
    layers.append({"name": "rq", "op": "requant", "inputs": ["b2"], "in": dict(o),
                   "requant": {"shift": 1, "clamp": list(int_range(act_bits - 1, False))},
                   "out": _tensor(o["shape"], act_bits - 1, False, o["exponent"] + 1)})

    o = layers[-1]["out"]
    n = o["shape"][1] * o["shape"][2]
    gshift = max(0, (n * int_range(o["bits"], False)[1]).bit_length() - act_bits)
    k = pool_divisor_log2(o["shape"][1], o["shape"][2])  # as the exporter: sum * 2**-k (a mean for n = 2**k)
    sum_lo, sum_hi = (v * n for v in int_range(o["bits"], o["signed"]))
    layers.append({"name": "gap", "op": "global_sum_pool", "inputs": ["rq"], "in": dict(o), "divisor_log2": k,
                   "acc": {"bits": signed_bits(sum_lo, sum_hi), "exponent": o["exponent"]},
                   "requant": {"shift": gshift, "clamp": list(int_range(act_bits, False))},
                   "out": _tensor([o["shape"][0]], act_bits, False, o["exponent"] - k + gshift)})

    u1, t1 = make_linear_stage(rng, "u1", "fc.u1.weight", layers[-1]["out"], 6, weight_bits=weight_bits,
                           out_bits=act_bits, out_signed=True, bias=False)
    u2, t2 = make_linear_stage(rng, "u2", "fc.u2.weight", u1["out"], 12, weight_bits=weight_bits, out_bits=act_bits,
                           out_signed=False)
    layers.append({"name": "fc", "op": "lowrank", "inputs": ["gap"], "rank": [6], "in": dict(layers[-1]["out"]),
                   "out": u2["out"], "stages": [u1, u2]})
    tensors.update(t1); tensors.update(t2)

    cls, t = make_linear_stage(rng, "cls", "cls.weight", u2["out"], classes, weight_bits=weight_bits, requant=False)
    layers.append({**cls, "op": "linear", "inputs": ["fc"]}); tensors.update(t)
    return _artifact(x, layers, tensors, f"random_network_{seed}")
