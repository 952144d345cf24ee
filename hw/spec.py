"""Hardware view of an artifact layer: one :class:`StageSpec` per MAC stage.

A stage is what one folded matrix-vector unit computes: for every output pixel, a
dot product of an ``in_elems``-long input vector with each of ``out_ch`` weight rows,
plus an optional bias, then the integer requantization of the artifact contract
(docs/artifact.md, design.md section 3).

Vector order (the contract between the sliding-window generator, the weight ROM and
the matrix-vector unit): element ``j = (ky * kernel + kx) * in_ch + c`` holds input
channel ``c`` of window position ``(ky, kx)``; i.e. a window is its ``kernel**2``
pixels in raster order, each pixel's channels contiguous. A 1x1 stage's vector is
simply the pixel.

NumPy only: this module does not import torch or the training code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifact import ArtifactError, int_range
from artifact.bounds import acc_range, signed_bits

__all__ = ["HwError", "StageSpec", "stage_spec", "layer_stages", "SUPPORTED_OPS"]

#: Layer ops the generator can build an engine for.
SUPPORTED_OPS = ("tucker2", "lowrank", "conv", "linear")


class HwError(ArtifactError):
    """A layer cannot be mapped to hardware (unsupported op, bad folding, too few
    multipliers). The message is one line, like :class:`artifact.ArtifactError`."""


@dataclass
class StageSpec:
    """Integer geometry and arithmetic of one MAC stage (shapes in elements, widths in bits).

    ``weights`` is the ``(out_ch, in_elems)`` int64 matrix in vector order (see the
    module docstring); ``bias`` is ``(out_ch,)`` int64 or None. ``requant`` is
    ``(shift, lo, hi)`` or None (then the output is the accumulator itself).
    """

    name: str
    in_ch: int
    height: int
    width: int
    out_ch: int
    out_height: int
    out_width: int
    kernel: int
    stride: int
    padding: int
    in_bits: int
    in_signed: bool
    weight_bits: int
    out_bits: int
    out_signed: bool
    acc_bits: int
    tree_bits: int
    weights: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    requant: tuple[int, int, int] | None

    @property
    def in_elems(self) -> int:
        """Length of one input vector: ``kernel**2 * in_ch``."""
        return self.kernel * self.kernel * self.in_ch

    @property
    def needs_window(self) -> bool:
        """False for a plain 1x1 / stride-1 / unpadded stage, whose vector is the pixel."""
        return not (self.kernel == 1 and self.stride == 1 and self.padding == 0)

    @property
    def vectors(self) -> int:
        """Output pixels (= input vectors) per frame."""
        return self.out_height * self.out_width

    @property
    def macs(self) -> int:
        """Multiply-accumulates per frame."""
        return self.vectors * self.out_ch * self.in_elems

    @property
    def in_pixel_bits(self) -> int:
        return self.in_ch * self.in_bits

    @property
    def out_pixel_bits(self) -> int:
        return self.out_ch * self.out_bits


def _geometry(stage: dict) -> tuple[int, int, int, int, int, int, int]:
    """(C, H, W, k, s, p, groups) of a conv or linear stage record."""
    shape = stage["in"]["shape"]
    if stage["kind"] == "linear":
        if len(shape) != 1:
            raise HwError(f"stage {stage['name']!r}: linear input shape must be [C], got {shape}")
        return shape[0], 1, 1, 1, 1, 0, 1
    c, h, w = shape
    return c, h, w, stage["kernel"], stage["stride"], stage["padding"], stage.get("groups", 1)


def stage_spec(stage: dict, tensors: dict, where: str | None = None) -> StageSpec:
    """Build the hardware view of one manifest stage; HwError (one line) if unsupported.

    The accumulator width is the manifest's ``acc.bits``; it is checked against the
    worst-case bound of :mod:`artifact.bounds` so that nothing can overflow.
    """
    where = where or stage["name"]
    c, h, w, k, s, p, groups = _geometry(stage)
    if groups != 1:
        raise HwError(f"{where}: grouped convolution (groups={groups}) is not supported by the hardware generator")
    if p >= k:
        raise HwError(f"{where}: padding {p} >= kernel {k} is not supported by the sliding-window generator")
    weight = np.asarray(tensors[stage["weight"]], dtype=np.int64)
    m = weight.shape[0]
    if stage["kind"] == "conv":
        # (M, C, k, k) -> (M, k, k, C) -> (M, k*k*C): window pixels in raster order, channels inner.
        mat = weight.transpose(0, 2, 3, 1).reshape(m, k * k * c)
        ho, wo = stage["out"]["shape"][1:]
    else:
        mat = weight.reshape(m, c)
        ho = wo = 1
    bias = np.asarray(tensors[stage["bias"]], dtype=np.int64) if stage.get("bias") else None
    in_bits, in_signed = int(stage["in"]["bits"]), bool(stage["in"]["signed"])
    lo, hi = acc_range(mat, bias, in_bits, in_signed)
    need = signed_bits(lo, hi)
    acc_bits = int(stage["acc"]["bits"])
    if acc_bits < need:
        raise HwError(f"{where}: manifest acc.bits={acc_bits} is narrower than the worst-case bound "
                      f"({need} bits for [{lo}, {hi}]); the accumulator could overflow")
    tree_bits = signed_bits(*acc_range(mat, None, in_bits, in_signed))
    rq = stage.get("requant")
    out = stage["out"]
    if rq is not None:
        requant = (int(rq["shift"]), int(rq["clamp"][0]), int(rq["clamp"][1]))
        olo, ohi = int_range(out["bits"], out["signed"])
        if requant[1] < olo or requant[2] > ohi or requant[1] > requant[2]:
            raise HwError(f"{where}: clamp {rq['clamp']} does not fit the {out['bits']}-bit "
                          f"{'signed' if out['signed'] else 'unsigned'} output")
    else:
        requant = None
        if not out["signed"] or out["bits"] < need:
            raise HwError(f"{where}: stage without requant must output its signed accumulator "
                          f"(>= {need} bits), manifest says {out['bits']} bits signed={out['signed']}")
    return StageSpec(name=stage["name"], in_ch=c, height=h, width=w, out_ch=m, out_height=ho, out_width=wo,
                     kernel=k, stride=s, padding=p, in_bits=in_bits, in_signed=in_signed,
                     weight_bits=int(stage["weight_bits"]), out_bits=int(out["bits"]), out_signed=bool(out["signed"]),
                     acc_bits=acc_bits, tree_bits=tree_bits, weights=mat, bias=bias, requant=requant)


def layer_stages(artifact, layer_name: str) -> list[StageSpec]:
    """The stages of layer ``layer_name`` in stream order (U1, G, U2 for Tucker-2).

    Raises ArtifactError if the layer is absent and HwError if its op or geometry is
    not supported (supported ops: :data:`SUPPORTED_OPS`).
    """
    layer = artifact.layer(layer_name)
    op = layer["op"]
    if op not in SUPPORTED_OPS:
        raise HwError(f"layer {layer_name!r} has op {op!r}; the hardware generator supports "
                      f"{', '.join(SUPPORTED_OPS)}")
    records = [layer] if op in ("conv", "linear") else list(layer["stages"])
    specs = [stage_spec(r, artifact.tensors, layer_name if r is layer else f"{layer_name}.{r['name']}")
             for r in records]
    for a, b, ra, rb in zip(specs, specs[1:], records, records[1:]):
        ta, tb = ra["out"], rb["in"]
        same = (list(ta["shape"]) == list(tb["shape"]) or (len(ta["shape"]) == 3 and ta["shape"][1:] == [1, 1]
                                                         and [ta["shape"][0]] == list(tb["shape"])))
        if not same or ta["bits"] != tb["bits"] or bool(ta["signed"]) != bool(tb["signed"]):
            raise HwError(f"{layer_name}: stage {a.name!r} output {ta['shape']}/{ta['bits']}b does not match "
                          f"stage {b.name!r} input {tb['shape']}/{tb['bits']}b")
    return specs
