"""Golden-model stimulus and expected values for one layer, and the stream beat format.

Pure NumPy (no cocotb): the testbench and the runner both use it.

Beat format (the contract with hw/): one stream beat is one pixel with all its
channels, pixels in raster order (row by row, left to right); the payload packs the
channels with channel 0 at the least significant bits, each ``bits`` wide, two's
complement when the tensor record says ``signed`` and plain binary otherwise.
"""
from __future__ import annotations

import numpy as np

from artifact import int_range
from artifact.golden import run_layer

__all__ = ["pack_pixel", "pack_frame", "unpack_beat", "unpack_frame", "layer_io", "make_inputs",
           "golden_layer", "layer_macs", "tucker2_layers"]


def pack_pixel(values, bits: int) -> int:
    """Pack one pixel's channel values (channel 0 at the LSBs) into a non-negative int."""
    mask = (1 << bits) - 1
    word = 0
    for c, v in enumerate(values):
        word |= (int(v) & mask) << (c * bits)
    return word


def pack_frame(frame: np.ndarray, bits: int) -> list[int]:
    """(C, H, W) integer frame -> list of H*W payload words in raster order."""
    c, h, w = frame.shape
    return [pack_pixel(frame[:, y, x], bits) for y in range(h) for x in range(w)]


def unpack_beat(word: int, channels: int, bits: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_pixel`: payload int -> (channels,) int64 values."""
    mask = (1 << bits) - 1
    vals = [(int(word) >> (c * bits)) & mask for c in range(channels)]
    if signed:
        vals = [v - (1 << bits) if v >> (bits - 1) else v for v in vals]
    return np.array(vals, dtype=np.int64)


def unpack_frame(words, channels: int, bits: int, signed: bool, height: int, width: int) -> np.ndarray:
    """List of payload words in raster order -> (C, H, W) frame."""
    px = np.stack([unpack_beat(w, channels, bits, signed) for w in words]) if words else np.zeros((0, channels))
    return px.reshape(height, width, channels).transpose(2, 0, 1)


def tucker2_layers(artifact) -> list[str]:
    """Names of the Tucker-2 layers of an artifact, in execution order."""
    return [l["name"] for l in artifact.layers("tucker2")]


def layer_io(artifact, layer_name: str) -> tuple[dict, dict, list[dict]]:
    """(input tensor record, output tensor record, stage records) of one layer."""
    layer = artifact.layer(layer_name)
    stages = list(layer.get("stages", [layer]))
    in_spec = layer.get("in") or stages[0]["in"]
    out_spec = layer.get("out") or stages[-1]["out"]
    return in_spec, out_spec, stages


def make_inputs(artifact, layer_name: str, frames: int, seed: int) -> np.ndarray:
    """``frames`` uniform random input frames (N, C, H, W) in the layer input's declared range.

    The extreme values of the range are forced into the first frame so that saturation
    and sign handling are exercised on every run.
    """
    in_spec, _, _ = layer_io(artifact, layer_name)
    lo, hi = int_range(in_spec["bits"], in_spec["signed"])
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, hi + 1, size=(frames, *in_spec["shape"]), dtype=np.int64)
    flat = x[0].reshape(-1)
    if flat.size >= 2:
        flat[0], flat[-1] = lo, hi
    return x


def golden_layer(artifact, layer_name: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Golden output (N, C, H, W) and per-stage intermediates of one layer on input ``x``."""
    layer = artifact.layer(layer_name)
    out, stages = run_layer(layer, [np.asarray(x, dtype=np.int64)], artifact.tensors)
    if not stages:
        stages = {layer_name: out}
    return out, stages


def layer_macs(artifact, layer_name: str) -> int:
    """Multiply-accumulates of one frame through the layer (all stages)."""
    _, _, stages = layer_io(artifact, layer_name)
    total = 0
    for st in stages:
        cin, cout = st["in"]["shape"][0], st["out"]["shape"][0]
        k = st.get("kernel", 1)
        pix = int(np.prod(st["out"]["shape"][1:])) if len(st["out"]["shape"]) > 1 else 1
        total += cin // st.get("groups", 1) * cout * k * k * pix
    return total
