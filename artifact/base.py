"""Definitions every part of the artifact package shares: the error type, integer
ranges, the output-size formula, the tensor dtype rule and the format's arithmetic
bounds (docs/artifact.md sections 1, 2 and 5). NumPy only."""
from __future__ import annotations

import numpy as np

__all__ = [
    "ArtifactError", "int_range", "signed_bits", "conv_out_size", "conv_out_hw",
    "INT_DTYPES", "dtype_for_bits", "MAX_BITS", "MAX_SHIFT",
]

# Every width in the format (tensor records, weight_bits, bias_bits, acc.bits) is at most
# 64 bits, and a left shift may not widen an accumulator past 64 bits: then every value
# the golden model computes is exact in int64 (docs/artifact.md, rule 12).
MAX_BITS = 64
# |shift| bound; a right shift by >= acc.bits already gives 0 for every accumulator.
MAX_SHIFT = 64

# The dtypes an archive may use, and the one a writer picks for a width (the smallest
# that holds it).
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64)


class ArtifactError(ValueError):
    """An artifact (or an input for it) is missing, malformed or inconsistent.
    The message is one line that names the layer and the rule it breaks."""


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide two's-complement (or unsigned) integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    lo, hi = int(lo), int(hi)
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis:
    ``floor((size + 2*padding - kernel) / stride) + 1`` (may be < 1: no output)."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_out_hw(h: int, w: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Output height and width of a convolution or pooling layer."""
    return conv_out_size(h, kernel, stride, padding), conv_out_size(w, kernel, stride, padding)


def dtype_for_bits(bits: int):
    """The smallest archive dtype that holds a signed ``bits``-wide integer (writer's rule)."""
    for dtype in INT_DTYPES:
        if bits <= np.iinfo(dtype).bits:
            return dtype
    raise ArtifactError(f"{bits}-bit integers exceed the format's {MAX_BITS}-bit bound")
