"""Worst-case accumulator bounds: the widths recorded in the manifest and used by the RTL."""
from __future__ import annotations

import numpy as np

from .base import int_range, signed_bits

__all__ = ["signed_bits", "acc_range", "acc_bits", "worst_case_input_row"]


def acc_range(weight: np.ndarray, bias, in_bits: int, in_signed: bool) -> tuple[int, int]:
    """Exact [min, max] of ``sum(w * x) + b`` over all inputs in range, over all outputs.

    ``weight`` is (M, ...) with one row per output channel; each row's extreme is
    reached by x = hi where w > 0 and x = lo where w < 0 (and the reverse).
    Computed with Python integers, so it is exact for every width the format allows.
    """
    x_lo, x_hi = int_range(in_bits, in_signed)
    w = np.asarray(weight)
    w = w.reshape(w.shape[0], -1)
    wmax = int(np.abs(w.astype(np.float64)).max()) if w.size else 0
    if wmax * max(w.shape[1], 1) < (1 << 62):         # row sums exact in int64
        w64 = w.astype(np.int64)
        pos = np.where(w64 > 0, w64, 0).sum(1).tolist()
        neg = np.where(w64 < 0, w64, 0).sum(1).tolist()
    else:
        wo = w.astype(object)
        pos = [sum(int(v) for v in row if v > 0) for row in wo]
        neg = [sum(int(v) for v in row if v < 0) for row in wo]
    b = [0] * len(pos) if bias is None else [int(v) for v in np.asarray(bias).reshape(-1)]
    hi = [p * x_hi + n * x_lo + c for p, n, c in zip(pos, neg, b)]
    lo = [p * x_lo + n * x_hi + c for p, n, c in zip(pos, neg, b)]
    return min(lo), max(hi)


def acc_bits(weight: np.ndarray, bias, in_bits: int, in_signed: bool) -> int:
    """Accumulator width that provably never overflows for this weight and input range."""
    return signed_bits(*acc_range(weight, bias, in_bits, in_signed))


def worst_case_input_row(weight_row: np.ndarray, in_bits: int, in_signed: bool, maximise: bool = True):
    """The input vector (same shape as one output's weights) that drives that output to its extreme."""
    lo, hi = int_range(in_bits, in_signed)
    up, down = (hi, lo) if maximise else (lo, hi)
    return np.where(weight_row > 0, up, np.where(weight_row < 0, down, 0)).astype(np.int64)
