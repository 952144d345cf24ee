"""Worst-case accumulator bounds: the widths recorded in the manifest and used by the RTL."""
from __future__ import annotations

import numpy as np

from .io import int_range


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def acc_range(weight: np.ndarray, bias, in_bits: int, in_signed: bool) -> tuple[int, int]:
    """Exact [min, max] of ``sum(w * x) + b`` over all inputs in range, over all outputs.

    ``weight`` is (M, ...) with one row per output channel; each row's extreme is
    reached by x = hi where w > 0 and x = lo where w < 0 (and the reverse).
    """
    x_lo, x_hi = int_range(in_bits, in_signed)
    w = weight.reshape(weight.shape[0], -1).astype(np.int64)
    pos, neg = np.clip(w, 0, None), np.clip(w, None, 0)
    hi = pos.sum(1) * x_hi + neg.sum(1) * x_lo
    lo = pos.sum(1) * x_lo + neg.sum(1) * x_hi
    if bias is not None:
        b = np.asarray(bias, dtype=np.int64)
        hi, lo = hi + b, lo + b
    return int(lo.min()), int(hi.max())


def acc_bits(weight: np.ndarray, bias, in_bits: int, in_signed: bool) -> int:
    """Accumulator width that provably never overflows for this weight and input range."""
    return signed_bits(*acc_range(weight, bias, in_bits, in_signed))


def worst_case_input_row(weight_row: np.ndarray, in_bits: int, in_signed: bool, maximise: bool = True):
    """The input vector (same shape as one output's weights) that drives that output to its extreme."""
    lo, hi = int_range(in_bits, in_signed)
    up, down = (hi, lo) if maximise else (lo, hi)
    return np.where(weight_row > 0, up, np.where(weight_row < 0, down, 0)).astype(np.int64)
