"""Artifact -> hls4ml ModelGraph, with every precision derived from the artifact.

No Keras, PyTorch or ONNX model is involved: the converter writes the layer list that
hls4ml's own front ends would produce (channels-last, Keras kernel layout) and hands it
to :meth:`hls4ml.model.graph.ModelGraph.from_layer_list` with an ``io_stream``
configuration in which *every* type is set explicitly per layer.

Mapping (manifest op -> hls4ml layers):

==================  ===========================================================
conv (kind conv)    Conv2D (1x1 becomes a pointwise conv); groups > 1 are expanded
                    to a dense kernel with zero blocks
linear              Dense
tucker2 / lowrank   one Conv2D / Dense per stage (U1, G, U2)
add                 Merge(add); the sum is exact, the result type requantizes
requant             Activation(linear) whose result type requantizes
maxpool             MaxPooling2D (padding: an explicit ZeroPadding2D, exact for
                    unsigned inputs only)
global_sum_pool     GlobalAveragePooling2D when H*W is a power of two (the mean is
                    the sum with the exponent lowered by log2(H*W)); otherwise a
                    H x W Conv2D with an identity kernel times 2**-divisor_log2
==================  ===========================================================

Exponents: a stream holds integers ``q`` as reals ``q * 2**e``. ``e`` starts at the
manifest's input exponent and follows the integer arithmetic: ``e_acc = e_in + e_w``,
``e_out = e_acc + shift``; a global pool lowers it by log2(H*W) (power of two) or by the
layer's ``divisor_log2``. For the exporter's artifacts it therefore equals the manifest's
exponent everywhere (HLS reals are the model's reals); where it does not, only the real
scale differs, never the integers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact import Artifact, ArtifactError, conv_out_hw
from artifact.bounds import acc_bits as bound_acc_bits
from artifact.bounds import signed_bits
from artifact.ops import lowering, register_lowering

from .precision import (HLSConversionError, accumulator_type, ap_string, check_shift_readable, fixed,
                        requant_type)

__all__ = ["BACKENDS", "Stream", "HLSBuild", "convert", "layer_input_specs"]

BACKENDS = ("Vivado", "Vitis")
# Sentinel model-wide default: any type still equal to it after conversion was not set
# by this converter (checked in _check_explicit).
_SENTINEL = "ap_fixed<13,7,AP_TRN,AP_WRAP,1>"


@dataclass
class Stream:
    """A tensor in the hls4ml graph: integers of ``bits``/``signed`` times ``2**exponent``.

    ``shape`` is the manifest's layout ((C, H, W) or (C,)); hls4ml holds it channels-last.
    """

    var: str
    shape: tuple
    bits: int
    signed: bool
    exponent: int

    @property
    def precision(self):
        return fixed(self.bits, self.exponent, self.signed)


@dataclass
class HLSBuild:
    """A converted artifact (or one layer of it): the hls4ml model and how to feed it.

    ``inputs`` maps manifest tensor names ("input" or a layer name) to the hls4ml input
    streams, in the order that ``predict`` takes them; ``output`` names the manifest
    tensor the model computes.
    """

    model: object
    backend: str
    output_dir: Path
    project_name: str
    inputs: dict
    output_name: str
    output: Stream
    layers: list = field(default_factory=list)


def _cname(name: str) -> str:
    """A C identifier for a manifest name (dots become underscores)."""
    return "L_" + re.sub(r"\W", "_", name)


def _spec_stream(var: str, spec: dict) -> Stream:
    return Stream(var, tuple(spec["shape"]), int(spec["bits"]), bool(spec["signed"]), int(spec["exponent"]))


def _shift(record: dict) -> int:
    """The record's requantization shift (0 when its requant is null)."""
    return int((record.get("requant") or {}).get("shift", 0))


class _Builder:
    """Accumulates hls4ml layer dicts and their per-layer precision configuration."""

    def __init__(self, tensors: dict):
        self.tensors = tensors
        self.layers: list[dict] = []
        self.precisions: dict[str, dict] = {}
        self.names: set[str] = set()

    def _name(self, base: str) -> str:
        """A fresh layer name (hls4ml looks names up case-insensitively)."""
        name, i = base, 1
        while name.lower() in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name.lower())
        return name

    def _add(self, layer: dict, **precision) -> None:
        self.layers.append(layer)
        self.precisions[layer["name"]] = {"Precision": {k: ap_string(p) for k, p in precision.items()}}

    # -- inputs ---------------------------------------------------------------------------
    def input(self, tensor_name: str, spec: dict) -> Stream:
        s = _spec_stream(self._name(_cname(tensor_name) + "_in"), spec)
        shape = list(s.shape[1:]) + [s.shape[0]]
        self._add({"name": s.var, "class_name": "InputLayer", "input_shape": shape}, result=s.precision)
        return s

    # -- MAC stages -------------------------------------------------------------------------
    def _acc(self, x: Stream, stage: dict, weight: np.ndarray, bias, where: str):
        """(accumulator exponent, accumulator bits) for a stage fed by ``x``."""
        if x.shape[0] != stage["in"]["shape"][0]:
            raise HLSConversionError(f"{where}: input has {x.shape[0]} channels, stage expects {stage['in']['shape'][0]}")
        e_acc = x.exponent + int(stage["weight_exponent"])
        bits = max(int(stage["acc"]["bits"]), bound_acc_bits(weight, bias, x.bits, x.signed))
        return e_acc, bits

    def _result(self, stage: dict, e_acc: int, acc_bits: int, where: str):
        """(result precision, bits, signed, exponent) after the stage's optional requant."""
        rq = stage.get("requant")
        if not rq:
            return fixed(acc_bits, e_acc, True), acc_bits, True, e_acc
        e_out = e_acc + int(rq["shift"])
        p = requant_type(rq["clamp"], e_out, where)
        return p, p.width, p.signed, e_out

    def conv(self, x: Stream, stage: dict, name: str, where: str) -> Stream:
        w = np.asarray(self.tensors[stage["weight"]], dtype=np.int64)
        b = self.tensors[stage["bias"]] if stage.get("bias") else None
        if len(x.shape) != 3:
            raise HLSConversionError(f"{where}: a conv stage needs a [C, H, W] input, got {list(x.shape)}")
        groups = int(stage.get("groups", 1))
        if groups > 1:  # exact: a dense kernel whose off-group blocks are zero
            cout, cg = w.shape[:2]
            mg = cout // groups
            dense = np.zeros((cout, cg * groups, *w.shape[2:]), dtype=np.int64)
            for g in range(groups):
                dense[g * mg:(g + 1) * mg, g * cg:(g + 1) * cg] = w[g * mg:(g + 1) * mg]
            w = dense
        e_acc, acc_bits = self._acc(x, stage, w, b, where)
        res, bits, signed, e_out = self._result(stage, e_acc, acc_bits, where)
        c, h, wd = x.shape
        cout, _, k, _ = w.shape
        _, ho, wo = stage["out"]["shape"]
        p, s = int(stage["padding"]), int(stage["stride"])
        bias_bits = int(stage.get("bias_bits", acc_bits)) if b is not None else 1
        bias = (np.asarray(b, dtype=np.float64) if b is not None else np.zeros(cout)) * 2.0 ** e_acc
        var = self._name(name)
        self._add({
            "name": var, "class_name": "Conv2D", "inputs": [x.var], "data_format": "channels_last",
            "weight_data": np.transpose(w.astype(np.float64) * 2.0 ** int(stage["weight_exponent"]), (2, 3, 1, 0)),
            "bias_data": bias,
            "in_height": h, "in_width": wd, "n_chan": c, "n_filt": cout, "filt_height": k, "filt_width": k,
            "stride_height": s, "stride_width": s, "out_height": ho, "out_width": wo,
            "pad_top": p, "pad_bottom": p, "pad_left": p, "pad_right": p,
        }, weight=fixed(int(stage["weight_bits"]), int(stage["weight_exponent"]), True),
            bias=fixed(bias_bits, e_acc, True), accum=accumulator_type(acc_bits, e_acc, _shift(stage)),
            result=res)
        return Stream(var, (cout, ho, wo), bits, signed, e_out)

    def dense(self, x: Stream, stage: dict, name: str, where: str) -> Stream:
        w = np.asarray(self.tensors[stage["weight"]], dtype=np.int64)
        b = self.tensors[stage["bias"]] if stage.get("bias") else None
        if len(x.shape) != 1:
            raise HLSConversionError(f"{where}: a linear stage needs a [C] input, got shape {list(x.shape)}")
        e_acc, acc_bits = self._acc(x, stage, w, b, where)
        res, bits, signed, e_out = self._result(stage, e_acc, acc_bits, where)
        n_out, n_in = w.shape
        bias_bits = int(stage.get("bias_bits", acc_bits)) if b is not None else 1
        bias = (np.asarray(b, dtype=np.float64) if b is not None else np.zeros(n_out)) * 2.0 ** e_acc
        var = self._name(name)
        self._add({
            "name": var, "class_name": "Dense", "inputs": [x.var], "n_in": n_in, "n_out": n_out,
            "weight_data": (w.astype(np.float64) * 2.0 ** int(stage["weight_exponent"])).T, "bias_data": bias,
        }, weight=fixed(int(stage["weight_bits"]), int(stage["weight_exponent"]), True),
            bias=fixed(bias_bits, e_acc, True), accum=accumulator_type(acc_bits, e_acc, _shift(stage)),
            result=res)
        return Stream(var, (n_out,), bits, signed, e_out)

    def stage(self, x: Stream, stage: dict, name: str, where: str) -> Stream:
        fn = self.dense if stage["kind"] == "linear" else self.conv
        return fn(x, stage, name, where)

    # -- other ops ------------------------------------------------------------------------------
    def add(self, a: Stream, b: Stream, layer: dict) -> Stream:
        where = layer["name"]
        sa, sb = (int(v) for v in layer["align"])
        if a.shape != b.shape:
            raise HLSConversionError(f"{where}: add of shapes {list(a.shape)} and {list(b.shape)}")
        if a.exponent - sa != b.exponent - sb:
            raise HLSConversionError(f"{where}: align {[sa, sb]} does not line up input exponents "
                                     f"{a.exponent} and {b.exponent}; the sum of reals would not be the integer sum")
        e_sum = a.exponent - sa
        check_shift_readable(max(a.bits + sa, b.bits + sb) + 1, int(layer["requant"]["shift"]), where)
        e_out = e_sum + int(layer["requant"]["shift"])
        res = requant_type(layer["requant"]["clamp"], e_out, where)
        var = self._name(_cname(layer["name"]))
        self._add({"name": var, "class_name": "Merge", "op": "add", "inputs": [a.var, b.var]}, result=res)
        return Stream(var, a.shape, res.width, res.signed, e_out)

    def requant(self, x: Stream, layer: dict) -> Stream:
        check_shift_readable(x.bits, int(layer["requant"]["shift"]), layer["name"])
        e_out = x.exponent + int(layer["requant"]["shift"])
        res = requant_type(layer["requant"]["clamp"], e_out, layer["name"])
        var = self._name(_cname(layer["name"]))
        self._add({"name": var, "class_name": "Activation", "activation": "linear", "inputs": [x.var]}, result=res)
        return Stream(var, x.shape, res.width, res.signed, e_out)

    def maxpool(self, x: Stream, layer: dict) -> Stream:
        where = layer["name"]
        k, s, p = int(layer["kernel"]), int(layer["stride"]), int(layer["padding"])
        if len(x.shape) != 3:
            raise HLSConversionError(f"{where}: maxpool needs a [C, H, W] input, got {list(x.shape)}")
        c, h, w = x.shape
        ho, wo = conv_out_hw(h, w, k, s, p)
        if k != s:
            raise HLSConversionError(f"{where}: maxpool kernel {k} with stride {s}: hls4ml's io_stream pooling only "
                                     f"implements non-overlapping windows (kernel == stride); see docs/hls4ml.md")
        if p:
            if x.signed:
                raise HLSConversionError(f"{where}: maxpool with padding {p} on a signed input: hls4ml's streaming "
                                         f"pooling has no padding and zero padding is only exact for inputs >= 0")
            if p >= k:
                raise HLSConversionError(f"{where}: maxpool padding {p} >= kernel {k} has all-padding windows")
            pv = self._name(_cname(layer["name"]) + "_pad")
            self._add({"name": pv, "class_name": "ZeroPadding2D", "inputs": [x.var], "data_format": "channels_last",
                       "in_height": h, "in_width": w, "out_height": h + 2 * p, "out_width": w + 2 * p, "n_chan": c,
                       "pad_top": p, "pad_bottom": p, "pad_left": p, "pad_right": p}, result=x.precision)
            x = Stream(pv, (c, h + 2 * p, w + 2 * p), x.bits, x.signed, x.exponent)
            h, w = h + 2 * p, w + 2 * p
        if [c, ho, wo] != list(layer["out"]["shape"]):
            raise HLSConversionError(f"{where}: maxpool output {[c, ho, wo]} differs from the manifest's "
                                     f"{layer['out']['shape']}")
        var = self._name(_cname(layer["name"]))
        self._add({"name": var, "class_name": "MaxPooling2D", "inputs": [x.var], "data_format": "channels_last",
                   "in_height": h, "in_width": w, "out_height": ho, "out_width": wo, "n_filt": c,
                   "pool_height": k, "pool_width": k, "stride_height": s, "stride_width": s,
                   "pad_top": 0, "pad_bottom": 0, "pad_left": 0, "pad_right": 0},
                  accum=x.precision, result=x.precision)
        return Stream(var, (c, ho, wo), x.bits, x.signed, x.exponent)

    def global_sum_pool(self, x: Stream, layer: dict) -> Stream:
        where = layer["name"]
        if len(x.shape) != 3:
            raise HLSConversionError(f"{where}: global_sum_pool needs a [C, H, W] input, got {list(x.shape)}")
        c, h, w = x.shape
        n = h * w
        lo, hi = (-(1 << (x.bits - 1)), (1 << (x.bits - 1)) - 1) if x.signed else (0, (1 << x.bits) - 1)
        sum_bits = signed_bits(n * lo, n * hi)
        shift = int(layer["requant"]["shift"])
        var = self._name(_cname(layer["name"]))
        if n & (n - 1) == 0:
            # mean = sum * 2**-k exactly: accumulate with k extra fractional bits so that
            # hls4ml's `sum / (H*W)` (an ap_fixed division, truncating) divides exactly.
            k = n.bit_length() - 1
            e_out = x.exponent - k + shift
            res = requant_type(layer["requant"]["clamp"], e_out, where)
            self._add({"name": var, "class_name": "GlobalAveragePooling2D", "inputs": [x.var],
                       "data_format": "channels_last", "in_height": h, "in_width": w, "n_filt": c},
                      accum=accumulator_type(sum_bits + k, x.exponent - k, shift), result=res)
            return Stream(var, (c,), res.width, res.signed, e_out)
        # H*W not a power of two: the sum as an H x W convolution with an identity kernel
        # scaled by 2**-divisor_log2 (the exporter's mean scale; integers are unaffected).
        k = int(layer.get("divisor_log2", 0))
        e_out = x.exponent - k + shift
        res = requant_type(layer["requant"]["clamp"], e_out, where)
        weight = np.zeros((h, w, c, c))
        weight[:, :, np.arange(c), np.arange(c)] = 2.0 ** -k
        self._add({"name": var, "class_name": "Conv2D", "inputs": [x.var], "data_format": "channels_last",
                   "weight_data": weight, "bias_data": np.zeros(c),
                   "in_height": h, "in_width": w, "n_chan": c, "n_filt": c, "filt_height": h, "filt_width": w,
                   "stride_height": 1, "stride_width": 1, "out_height": 1, "out_width": 1,
                   "pad_top": 0, "pad_bottom": 0, "pad_left": 0, "pad_right": 0},
                  weight=fixed(2, -k, True), bias=fixed(1, x.exponent - k, True),
                  accum=accumulator_type(sum_bits, x.exponent - k, shift), result=res)
        rv = self._name(var + "_flat")
        self._add({"name": rv, "class_name": "Reshape", "inputs": [var], "target_shape": [c]}, result=res)
        return Stream(rv, (c,), res.width, res.signed, e_out)

    # -- manifest layers ------------------------------------------------------------------------
    def layer(self, layer: dict, ins: list) -> Stream:
        """Lower one manifest layer through the op table's ``hls4ml`` lowering."""
        try:
            lower = lowering("hls4ml", layer["op"])
        except ArtifactError:
            raise HLSConversionError(f"{layer['name']}: op {layer['op']!r} has no hls4ml mapping") from None
        return lower(self, layer, ins)


# The hls4ml lowering of each op of the artifact format (artifact/ops.py's table).
@register_lowering("hls4ml", "conv")
@register_lowering("hls4ml", "linear")
def _lower_single_stage(b: _Builder, layer: dict, ins: list) -> Stream:
    return b.stage(ins[0], layer, _cname(layer["name"]), layer["name"])


@register_lowering("hls4ml", "tucker2")
@register_lowering("hls4ml", "lowrank")
def _lower_factorized(b: _Builder, layer: dict, ins: list) -> Stream:
    x, name = ins[0], layer["name"]
    for st in layer["stages"]:
        x = b.stage(x, st, _cname(f"{name}_{st['name']}"), f"{name}.{st['name']}")
    return x


@register_lowering("hls4ml", "add")
def _lower_add(b: _Builder, layer: dict, ins: list) -> Stream:
    return b.add(ins[0], ins[1], layer)


@register_lowering("hls4ml", "requant")
def _lower_requant(b: _Builder, layer: dict, ins: list) -> Stream:
    return b.requant(ins[0], layer)


@register_lowering("hls4ml", "maxpool")
def _lower_maxpool(b: _Builder, layer: dict, ins: list) -> Stream:
    return b.maxpool(ins[0], layer)


@register_lowering("hls4ml", "global_sum_pool")
def _lower_global_sum_pool(b: _Builder, layer: dict, ins: list) -> Stream:
    return b.global_sum_pool(ins[0], layer)


def _producer_specs(artifact: Artifact) -> dict:
    specs = {"input": artifact.manifest["input"]}
    specs.update({l["name"]: l["out"] for l in artifact.manifest["layers"]})
    return specs


def layer_input_specs(artifact: Artifact, name: str) -> dict:
    """``{tensor_name: tensor record}`` of the inputs of layer ``name`` (ArtifactError if absent)."""
    layer = artifact.layer(name)
    specs = _producer_specs(artifact)
    return {src: specs[src] for src in layer["inputs"]}


def _check_explicit(model) -> None:
    """Fail if hls4ml left any type at the model-wide default (i.e. not derived from the artifact)."""
    from hls4ml.model.types import FixedPrecisionType

    for node in model.get_layers():
        for t in node.types.values():
            p = t.precision
            if isinstance(p, FixedPrecisionType) and p.saturation_bits == 1:
                raise HLSConversionError(f"hls4ml layer {node.name}: type {t.name} was not set from the artifact")


def convert(artifact: Artifact, output_dir, *, layer: str | None = None, backend: str = "Vivado",
            part: str = "xcvu13p-flga2577-2-e", clock_ns: float = 5.0, project_name: str | None = None,
            reuse_factor: int = 1, strategy: str = "Latency") -> HLSBuild:
    """Build the io_stream hls4ml model of the whole artifact, or of its layer ``layer``.

    Nothing is written or compiled here (``model.write()`` / ``compile()`` do that).
    Raises HLSConversionError / ArtifactError with one-line messages.
    """
    import hls4ml  # noqa: F401  (registers backends)
    from hls4ml.model.graph import ModelGraph

    canon = {b.lower(): b for b in BACKENDS}
    if str(backend).lower() not in canon:
        raise HLSConversionError(f"unknown backend {backend!r} (choose one of: {', '.join(BACKENDS)})")
    backend = canon[str(backend).lower()]
    man = artifact.manifest
    if layer is None:
        layers, in_specs, out_name = man["layers"], {"input": man["input"]}, man["output"]
    else:
        target = artifact.layer(layer)
        layers, in_specs, out_name = [target], layer_input_specs(artifact, layer), target["name"]

    b = _Builder(artifact.tensors)
    streams = {name: b.input(name, spec) for name, spec in in_specs.items()}
    inputs = dict(streams)
    for rec in layers:
        try:
            streams[rec["name"]] = b.layer(rec, [streams[src] for src in rec["inputs"]])
        except KeyError as e:
            raise ArtifactError(f"{rec['name']}: input {e.args[0]!r} is not produced earlier") from None
        if rec["name"] == out_name:
            break
    out = streams[out_name]

    project_name = project_name or re.sub(r"\W", "_", f"elrt_{layer or man['model'].get('name', 'net')}")
    config = {
        "OutputDir": str(output_dir), "ProjectName": project_name, "Backend": backend, "Part": part,
        "ClockPeriod": clock_ns, "IOType": "io_stream",
        "HLSConfig": {"Model": {"Precision": _SENTINEL, "ReuseFactor": int(reuse_factor), "Strategy": strategy},
                      "LayerName": b.precisions},
    }
    model = ModelGraph.from_layer_list(config, b.layers, inputs=[s.var for s in inputs.values()],
                                       outputs=[out.var])
    _check_explicit(model)
    return HLSBuild(model, backend, Path(output_dir), project_name, inputs, out_name, out, layers)
