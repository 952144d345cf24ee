"""The op table: every op of the artifact format in one place.

For each op (docs/artifact.md section 3) the table holds its number of inputs, the
fields a layer record of that op may have, its stage names, and its *rules*: the
shape rule (output shape from the input shapes) and every consistency invariant the
format promises (exponents, shifts, clamps, accumulator bounds, tensors). The
validator (:func:`artifact.io.validate`) runs these rules; back ends register their
lowering of each op with :func:`register_lowering` (the golden model does so in
``artifact/golden.py``), so an op is added in one place and every back end finds a
missing lowering by name.

Every failure is an :class:`ArtifactError` whose one-line message is
``<layer>[.<stage>]: rule N (<title>): <what is wrong>``, with the rule numbers of
docs/artifact.md section 5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import (INT_DTYPES, MAX_BITS, MAX_SHIFT, ArtifactError, conv_out_hw, int_range, signed_bits)
from .bounds import acc_range

__all__ = ["RULES", "OpSpec", "OPS", "rule_error", "register_lowering", "lowering", "check_layer",
           "TENSOR_KEYS", "pool_divisor_log2"]

# Numbered rules of docs/artifact.md section 5 (the numbers appear in every error).
RULES = {
    1: "files",
    2: "schema and fields",
    3: "names",
    4: "graph",
    5: "records match",
    6: "shapes",
    7: "tensors",
    8: "exponents",
    9: "requantization",
    10: "accumulator width",
    11: "int64 exactness",
    12: "inputs",
}

TENSOR_KEYS = frozenset({"shape", "bits", "signed", "exponent"})
ACC_KEYS = frozenset({"bits", "exponent"})
REQUANT_KEYS = frozenset({"shift", "clamp"})
_COMMON = frozenset({"name", "op", "inputs", "out"})
_STAGE_CORE = frozenset({"kind", "weight", "bias", "bias_bits", "in", "out", "weight_bits", "weight_exponent",
                         "acc", "requant"})
_CONV_GEOMETRY = frozenset({"kernel", "stride", "padding", "groups"})
STAGE_KEYS = {"conv": frozenset({"name"}) | _STAGE_CORE | _CONV_GEOMETRY, "linear": frozenset({"name"}) | _STAGE_CORE}


def rule_error(where: str, rule: int, message: str) -> ArtifactError:
    """The one-line ArtifactError for ``rule`` broken at ``where``."""
    return ArtifactError(f"{where}: rule {rule} ({RULES[rule]}): {message}")


def _fail(where: str, rule: int, message: str):
    raise rule_error(where, rule, message)


def _record(spec: dict) -> str:
    return (f"{spec['shape']} {spec['bits']}-bit {'signed' if spec['signed'] else 'unsigned'} "
            f"exponent {spec['exponent']}")


def check_keys(where: str, record: dict, allowed: frozenset, what: str) -> None:
    """Rule 2: no field outside the format's list for this kind of record."""
    unknown = sorted(set(record) - allowed)
    if unknown:
        _fail(where, 2, f"unknown field(s) {', '.join(map(repr, unknown))} in {what} "
                        f"(allowed: {', '.join(sorted(allowed))})")


def check_tensor_record(where: str, spec: dict, what: str) -> None:
    """Rule 2 (fields) and rule 11 (an unsigned tensor is at most 63 bits: its range fits int64)."""
    check_keys(where, spec, TENSOR_KEYS, f"tensor record {what}")
    if not spec["signed"] and spec["bits"] > MAX_BITS - 1:
        _fail(where, 11, f"{what} is {spec['bits']}-bit unsigned; unsigned tensors are at most {MAX_BITS - 1} "
                         f"bits (their range must fit int64)")


def check_same_record(where: str, got: dict, want: dict, what: str, producer: str) -> None:
    """Rule 5: a consumer's ``in`` record is exactly its producer's ``out`` record."""
    if {k: got.get(k) for k in TENSOR_KEYS} != {k: want.get(k) for k in TENSOR_KEYS}:
        _fail(where, 5, f"{what} is {_record(got)} but {producer} produces {_record(want)}")


# ----------------------------------------------------------------------------- tensors

def _check_int_tensor(where: str, name: str, arr: np.ndarray, shape: tuple, bits: int, signed: bool) -> None:
    if arr.dtype.type not in INT_DTYPES:
        _fail(where, 7, f"tensor {name!r} has dtype {arr.dtype}; the format allows "
                        f"{', '.join(np.dtype(d).name for d in INT_DTYPES)}")
    if tuple(arr.shape) != tuple(shape):
        _fail(where, 7, f"tensor {name!r} has shape {list(arr.shape)}, the layer geometry implies {list(shape)}")
    lo, hi = int_range(bits, signed)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        _fail(where, 7, f"tensor {name!r} has values in [{int(arr.min())}, {int(arr.max())}], "
                        f"outside its declared {bits}-bit range [{lo}, {hi}]")


def _tensor(where: str, tensors: dict, used: dict, name: str, bits: int):
    arr = tensors.get(name)
    if arr is None:
        _fail(where, 7, f"tensor {name!r} is missing from tensors.npz")
    if name in used:
        _fail(where, 7, f"tensor {name!r} is used by two records")
    used[name] = bits
    return arr


# ----------------------------------------------------------------------------- requantization

def check_requant(where: str, requant: dict, acc_bits: int, acc_exponent: int, out: dict,
                  divisor_log2: int = 0) -> None:
    """Rules 9 and 11 for a requant record applied to an ``acc_bits``-wide accumulator."""
    check_keys(where, requant, REQUANT_KEYS, "requant")
    shift, (lo, hi) = int(requant["shift"]), (int(v) for v in requant["clamp"])
    want = out["exponent"] - acc_exponent + divisor_log2
    if shift != want:
        extra = f" + divisor_log2 {divisor_log2}" if divisor_log2 else ""
        _fail(where, 9, f"shift {shift} != out.exponent {out['exponent']} - accumulator exponent "
                        f"{acc_exponent}{extra} = {want}")
    if lo > hi:
        _fail(where, 9, f"clamp [{lo}, {hi}] is empty")
    olo, ohi = int_range(out["bits"], out["signed"])
    if lo < olo or hi > ohi:
        _fail(where, 9, f"clamp [{lo}, {hi}] lies outside the output's {out['bits']}-bit "
                        f"{'signed' if out['signed'] else 'unsigned'} range [{olo}, {ohi}]")
    if abs(shift) > MAX_SHIFT:
        _fail(where, 11, f"|shift| {abs(shift)} exceeds the format's bound {MAX_SHIFT}")
    if shift < 0 and acc_bits - shift > MAX_BITS:
        _fail(where, 11, f"left shift by {-shift} widens the {acc_bits}-bit accumulator to {acc_bits - shift} bits, "
                         f"past the format's {MAX_BITS}-bit bound")


def _check_acc(where: str, acc: dict, lo: int, hi: int) -> None:
    """Rule 10: ``acc.bits`` holds the worst case [lo, hi]."""
    check_keys(where, acc, ACC_KEYS, "acc")
    need = signed_bits(lo, hi)
    if acc["bits"] < need:
        _fail(where, 10, f"acc.bits {acc['bits']} is narrower than the worst case [{lo}, {hi}], "
                         f"which needs {need} bits")


# ----------------------------------------------------------------------------- stages

def check_stage(where: str, stage: dict, in_spec: dict, producer: str, tensors: dict, used: dict,
                kind: str | None = None) -> None:
    """Every rule of one MAC stage (a conv/linear layer, or a stage of a factorized layer)."""
    if kind is not None and stage["kind"] != kind:
        _fail(where, 6, f"kind {stage['kind']!r} where {kind!r} is required")
    check_keys(where, stage, STAGE_KEYS[stage["kind"]] | (_COMMON if "op" in stage else frozenset()),
               f"a {stage['kind']} stage")
    check_tensor_record(where, stage["in"], "in")
    check_tensor_record(where, stage["out"], "out")
    check_same_record(where, stage["in"], in_spec, "in", producer)
    cin_shape, out_shape = stage["in"]["shape"], stage["out"]["shape"]
    if stage["kind"] == "conv":
        k, s, p, g = stage["kernel"], stage["stride"], stage["padding"], stage["groups"]
        if len(cin_shape) != 3:
            _fail(where, 6, f"a conv stage needs an in shape [C, H, W], got {cin_shape}")
        cin, h, w = cin_shape
        if len(out_shape) != 3:
            _fail(where, 6, f"a conv stage's out shape is [M, H_out, W_out], got {out_shape}")
        m = out_shape[0]
        if cin % g or m % g:
            _fail(where, 6, f"groups {g} does not divide in channels {cin} and out channels {m}")
        ho, wo = conv_out_hw(h, w, k, s, p)
        if ho < 1 or wo < 1:
            _fail(where, 6, f"kernel {k} with padding {p} does not fit the {h}x{w} input")
        if list(out_shape[1:]) != [ho, wo]:
            _fail(where, 6, f"out shape {out_shape} does not follow from in shape {cin_shape}, kernel {k}, "
                            f"stride {s}, padding {p} (expected [{m}, {ho}, {wo}])")
        wshape = (m, cin // g, k, k)
    else:
        if len(cin_shape) != 1:
            _fail(where, 6, f"a linear stage needs an in shape [C], got {cin_shape} (pool the image first)")
        if len(out_shape) != 1:
            _fail(where, 6, f"a linear stage's out shape is [M], got {out_shape}")
        m = out_shape[0]
        wshape = (m, cin_shape[0])
    weight = _tensor(where, tensors, used, stage["weight"], stage["weight_bits"])
    _check_int_tensor(where, stage["weight"], weight, wshape, stage["weight_bits"], True)
    acc = stage["acc"]
    bias = None
    if stage["bias"] is not None:
        bias_bits = stage.get("bias_bits", acc["bits"])
        if bias_bits > acc["bits"]:
            _fail(where, 7, f"bias_bits {bias_bits} is wider than acc.bits {acc['bits']}")
        bias = _tensor(where, tensors, used, stage["bias"], bias_bits)
        _check_int_tensor(where, stage["bias"], bias, (m,), bias_bits, True)
    elif "bias_bits" in stage:
        _fail(where, 2, "bias_bits without a bias tensor")
    want_exp = stage["in"]["exponent"] + stage["weight_exponent"]
    if acc["exponent"] != want_exp:
        _fail(where, 8, f"acc.exponent {acc['exponent']} != in.exponent {stage['in']['exponent']} + "
                        f"weight_exponent {stage['weight_exponent']} = {want_exp}")
    _check_acc(where, acc, *acc_range(weight, bias, stage["in"]["bits"], stage["in"]["signed"]))
    out = stage["out"]
    if stage["requant"] is None:
        if (out["bits"], out["signed"], out["exponent"]) != (acc["bits"], True, acc["exponent"]):
            _fail(where, 9, f"requant is null, so out must be the accumulator ({acc['bits']}-bit signed, "
                            f"exponent {acc['exponent']}), got {_record(out)}")
    else:
        check_requant(where, stage["requant"], acc["bits"], acc["exponent"], out)


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class OpSpec:
    """One op of the format: its arity, allowed fields, stage names and rule checker.

    ``check(layer, operands, tensors, used)`` gets the layer record, the ``out`` records
    of its inputs (with their producer names) and the archive; it raises ArtifactError."""

    name: str
    arity: int
    fields: frozenset
    check: Callable
    stages: tuple = ()
    doc: str = ""


OPS: dict[str, OpSpec] = {}
_LOWERINGS: dict[str, dict[str, Callable]] = {}


def _op(name: str, arity: int, fields, stages: tuple = ()):
    def register(check):
        OPS[name] = OpSpec(name, arity, _COMMON | frozenset(fields), check, stages, (check.__doc__ or "").strip())
        return check
    return register


def register_lowering(backend: str, op: str):
    """Decorator: register ``fn`` as ``backend``'s lowering of ``op`` (one per op and back end)."""
    if op not in OPS:
        raise KeyError(f"unknown op {op!r}")

    def register(fn):
        _LOWERINGS.setdefault(backend, {})[op] = fn
        return fn
    return register


def lowering(backend: str, op: str) -> Callable:
    """``backend``'s lowering of ``op``; ArtifactError naming both when there is none."""
    try:
        return _LOWERINGS[backend][op]
    except KeyError:
        have = ", ".join(sorted(_LOWERINGS.get(backend, {}))) or "none"
        raise ArtifactError(f"op {op!r} has no {backend} lowering (it has: {have})") from None


def pool_divisor_log2(h: int, w: int) -> int:
    """``ceil(log2(H*W))``, exactly (the global pool's power-of-two divisor)."""
    return (h * w - 1).bit_length()


def _in_record(layer: dict, operands: list) -> None:
    (producer, spec), = operands
    check_tensor_record(layer["name"], layer["in"], "in")
    check_same_record(layer["name"], layer["in"], spec, "in", producer)


def _image(where: str, spec: dict, what: str) -> tuple[int, int, int]:
    if len(spec["shape"]) != 3:
        _fail(where, 6, f"{what} must be an image [C, H, W], got {spec['shape']}")
    return tuple(spec["shape"])


@_op("conv", 1, STAGE_KEYS["conv"])
def _check_conv(layer, operands, tensors, used):
    """Dense k x k convolution (a single stage at the layer's top level)."""
    (producer, spec), = operands
    check_stage(layer["name"], layer, spec, producer, tensors, used, kind="conv")


@_op("linear", 1, STAGE_KEYS["linear"])
def _check_linear(layer, operands, tensors, used):
    """Fully connected layer on a vector [C] (a single stage at the layer's top level)."""
    (producer, spec), = operands
    check_stage(layer["name"], layer, spec, producer, tensors, used, kind="linear")


def _check_factorized(layer, operands, tensors, used, names: tuple):
    where = layer["name"]
    _in_record(layer, operands)
    stages = layer["stages"]
    got = tuple(s["name"] for s in stages)
    if got != names:
        _fail(where, 3, f"stages are named {list(got)}; {layer['op']} needs {list(names)} in that order")
    for stage in stages[:-1]:
        if stage["requant"] is None:
            _fail(f"{where}.{stage['name']}", 9, "requant of an inner stage is never null (it is the "
                                                  "inter-stage stream)")
    spec, producer = layer["in"], f"{where}.in"
    for stage in stages:
        check_stage(f"{where}.{stage['name']}", stage, spec, producer, tensors, used)
        spec, producer = stage["out"], f"{where}.{stage['name']}"
    check_tensor_record(where, layer["out"], "out")
    check_same_record(where, layer["out"], stages[-1]["out"], "out", f"its last stage {stages[-1]['name']}")
    return stages


def _pointwise(where: str, stage: dict, stride_ok: bool = False) -> None:
    if stage["kind"] != "conv":
        return
    want = (1, stage["stride"] if stride_ok else 1, 0, 1)
    got = (stage["kernel"], stage["stride"], stage["padding"], stage["groups"])
    if got != want:
        _fail(where, 6, f"a 1x1 factor needs kernel 1, {'' if stride_ok else 'stride 1, '}padding 0, groups 1; "
                        f"got kernel {got[0]}, stride {got[1]}, padding {got[2]}, groups {got[3]}")


@_op("tucker2", 1, {"in", "rank", "kernel", "stride", "padding", "stages"}, ("u1", "g", "u2"))
def _check_tucker2(layer, operands, tensors, used):
    """Tucker-2 conv: 1x1 U1 (C -> R1), k x k core G (R1 -> R2, the layer's geometry), 1x1 U2 (R2 -> N)."""
    where = layer["name"]
    u1, g, u2 = _check_factorized(layer, operands, tensors, used, ("u1", "g", "u2"))
    for s in (u1, g, u2):
        if s["kind"] != "conv":
            _fail(f"{where}.{s['name']}", 6, "tucker2 stages are conv stages")
    _pointwise(f"{where}.u1", u1)
    _pointwise(f"{where}.u2", u2)
    for key in ("kernel", "stride", "padding"):
        if key in layer and layer[key] != g[key]:
            _fail(where, 6, f"layer {key} {layer[key]} differs from its core G's {key} {g[key]}")
    rank = [u1["out"]["shape"][0], g["out"]["shape"][0]]
    if list(layer["rank"]) != rank:
        _fail(where, 6, f"rank {layer['rank']} differs from the stage widths {rank}")


@_op("lowrank", 1, {"in", "rank", "stages"}, ("u1", "u2"))
def _check_lowrank(layer, operands, tensors, used):
    """Matrix factorization of a 1x1 conv (U1 may carry the stride) or of a linear layer."""
    where = layer["name"]
    u1, u2 = _check_factorized(layer, operands, tensors, used, ("u1", "u2"))
    if u1["kind"] != u2["kind"]:
        _fail(where, 6, f"stage kinds {u1['kind']!r} and {u2['kind']!r} differ")
    _pointwise(f"{where}.u1", u1, stride_ok=True)
    _pointwise(f"{where}.u2", u2)
    if list(layer["rank"]) != [u1["out"]["shape"][0]]:
        _fail(where, 6, f"rank {layer['rank']} differs from U1's width [{u1['out']['shape'][0]}]")


@_op("add", 2, {"align", "acc", "requant"})
def _check_add(layer, operands, tensors, used):
    """Residual join: ``requant((a << sa) + (b << sb))`` on a common exponent."""
    where = layer["name"]
    (pa, a), (pb, b) = operands
    if a["shape"] != b["shape"]:
        _fail(where, 6, f"operands {pa} {a['shape']} and {pb} {b['shape']} differ in shape")
    check_tensor_record(where, layer["out"], "out")
    if layer["out"]["shape"] != a["shape"]:
        _fail(where, 6, f"out shape {layer['out']['shape']} differs from the operands' {a['shape']}")
    acc = layer["acc"]
    for (p, spec), sh in zip(operands, layer["align"]):
        if spec["exponent"] - sh != acc["exponent"]:
            _fail(where, 8, f"{p} (exponent {spec['exponent']}) shifted left by {sh} has exponent "
                            f"{spec['exponent'] - sh}, not acc.exponent {acc['exponent']}")
    lo = sum(int_range(s["bits"], s["signed"])[0] << sh for (_, s), sh in zip(operands, layer["align"]))
    hi = sum(int_range(s["bits"], s["signed"])[1] << sh for (_, s), sh in zip(operands, layer["align"]))
    if signed_bits(lo, hi) > MAX_BITS:
        _fail(where, 11, f"the aligned sum needs {signed_bits(lo, hi)} bits, past the format's {MAX_BITS}-bit bound")
    _check_acc(where, acc, lo, hi)
    check_requant(where, layer["requant"], acc["bits"], acc["exponent"], layer["out"])


@_op("requant", 1, {"in", "requant"})
def _check_requant_layer(layer, operands, tensors, used):
    """Elementwise ``requant(a)``: a tensor brought to another scale and range."""
    where = layer["name"]
    _in_record(layer, operands)
    src = layer["in"]
    check_tensor_record(where, layer["out"], "out")
    if layer["out"]["shape"] != src["shape"]:
        _fail(where, 6, f"out shape {layer['out']['shape']} differs from in shape {src['shape']}")
    check_requant(where, layer["requant"], signed_bits(*int_range(src["bits"], src["signed"])), src["exponent"],
                  layer["out"])


@_op("maxpool", 1, {"in", "kernel", "stride", "padding"})
def _check_maxpool(layer, operands, tensors, used):
    """Maximum over k x k windows; padded positions never win (padding < kernel)."""
    where = layer["name"]
    _in_record(layer, operands)
    c, h, w = _image(where, layer["in"], "in")
    k, s, p = layer["kernel"], layer["stride"], layer["padding"]
    if p >= k:
        _fail(where, 6, f"padding {p} >= kernel {k}: some windows would lie wholly in the padding")
    ho, wo = conv_out_hw(h, w, k, s, p)
    if ho < 1 or wo < 1:
        _fail(where, 6, f"kernel {k} with padding {p} does not fit the {h}x{w} input")
    out = layer["out"]
    check_tensor_record(where, out, "out")
    if out["shape"] != [c, ho, wo]:
        _fail(where, 6, f"out shape {out['shape']} does not follow from in shape {layer['in']['shape']}, kernel {k}, "
                        f"stride {s}, padding {p} (expected [{c}, {ho}, {wo}])")
    if (out["bits"], out["signed"], out["exponent"]) != (layer["in"]["bits"], layer["in"]["signed"],
                                                          layer["in"]["exponent"]):
        _fail(where, 8, f"out {_record(out)} must keep the input's bits, signedness and exponent "
                        f"({_record(layer['in'])})")


@_op("global_sum_pool", 1, {"in", "acc", "divisor_log2", "requant"})
def _check_global_sum_pool(layer, operands, tensors, used):
    """``requant(sum over H, W)``: [C, H, W] -> [C]; the shift includes ``divisor_log2``."""
    where = layer["name"]
    _in_record(layer, operands)
    c, h, w = _image(where, layer["in"], "in")
    out = layer["out"]
    check_tensor_record(where, out, "out")
    if out["shape"] != [c]:
        _fail(where, 6, f"out shape {out['shape']} must be [{c}] (one value per channel)")
    k = pool_divisor_log2(h, w)
    if layer["divisor_log2"] != k:
        _fail(where, 9, f"divisor_log2 {layer['divisor_log2']} != ceil(log2(H*W)) = ceil(log2({h * w})) = {k}")
    acc = layer["acc"]
    if acc["exponent"] != layer["in"]["exponent"]:
        _fail(where, 8, f"acc.exponent {acc['exponent']} != in.exponent {layer['in']['exponent']} (a sum keeps "
                        f"the exponent)")
    lo, hi = (v * h * w for v in int_range(layer["in"]["bits"], layer["in"]["signed"]))
    _check_acc(where, acc, lo, hi)
    check_requant(where, layer["requant"], acc["bits"], acc["exponent"], out, divisor_log2=k)


def check_layer(layer: dict, operands: list, tensors: dict, used: dict) -> None:
    """Rules 2 and 4-11 for one layer whose inputs' ``(producer, out record)`` are ``operands``."""
    spec = OPS[layer["op"]]
    check_keys(layer["name"], layer, spec.fields, f"a {layer['op']} layer")
    if len(operands) != spec.arity:
        _fail(layer["name"], 4, f"{layer['op']} takes {spec.arity} input(s), got {len(operands)}")
    spec.check(layer, operands, tensors, used)
