"""Rank selection: per-layer ranks that meet an inference-FLOPs reduction target.

Start from a uniform ratio alpha (R1 = round(alpha*C), R2 = round(alpha*N) for k x k
convs; R = round(alpha*min(C, N)) for 1x1 convs and linear layers), bisect alpha, then
refine single ranks by +-1 (largest-MACs layers first) until the network's reduction
dense_MACs / low-rank_MACs is as close to the target as the integer ranks allow.
With ``multiple=m`` every rank is a multiple of m (or the full channel count) and the
moves are +-m.
"""
from __future__ import annotations

from .blocks import LayerSpec
from .flops import dense_macs, stage_macs

TOLERANCE = 0.02


class RankError(ValueError):
    """Ranks or a FLOPs target that the network cannot have."""


def _max_ranks(s: LayerSpec) -> tuple:
    return (s.cin, s.cout) if s.kind == "conv" and s.kernel > 1 else (min(s.cin, s.cout),)


def _uniform(s: LayerSpec, alpha: float, multiple: int = 1) -> tuple:
    def rank(channels):
        lo = min(multiple, channels)
        return max(lo, min(channels, multiple * round(alpha * channels / multiple)))
    if s.kind == "conv" and s.kernel > 1:
        return (rank(s.cin), rank(s.cout))
    return (rank(min(s.cin, s.cout)),)


def reduction(specs: list[LayerSpec], ranks: dict, extra_macs: int = 0) -> float:
    """dense MACs / MACs of the network with ``ranks`` (layers absent from it stay dense).
    ``extra_macs`` (e.g. attention products) counts in both and is not reducible."""
    dense = sum(dense_macs(s) for s in specs) + extra_macs
    low = sum(sum(stage_macs(s, ranks.get(s.name) or ())) for s in specs) + extra_macs
    return dense / low


def check_ranks(specs: list[LayerSpec], ranks: dict) -> None:
    """RankError if a rank is missing a layer, is not a positive int, or exceeds the channels."""
    by_name = {s.name: s for s in specs}
    for name, r in ranks.items():
        s = by_name.get(name)
        if s is None or not s.factorizable:
            raise RankError(f"rank given for {name!r}, which is not a factorizable layer of this model")
        limit = _max_ranks(s)
        r = tuple(r) if isinstance(r, (list, tuple)) else (r,) * len(limit)
        if len(r) != len(limit) or any(not isinstance(v, int) or v < 1 for v in r):
            raise RankError(f"{name}: ranks must be {len(limit)} positive integer(s), got {list(r)}")
        for v, lim in zip(r, limit):
            if v > lim:
                raise RankError(f"{name}: rank {v} is larger than the layer's channels allow ({lim})")


def select_ranks(specs: list[LayerSpec], target: float, tolerance: float = TOLERANCE,
                 extra_macs: int = 0, multiple: int = 1) -> dict:
    """Ranks for every factorizable layer so that ``reduction`` is within ``tolerance``
    (relative) of ``target``. ``extra_macs``: MACs outside the layers (attention
    products, ``flops.extra_macs(factory)``). ``multiple``: make every rank a multiple of
    this (or the layer's full channel count), e.g. 8 for SIMD lanes / PE arrays: on a
    CPU, ranks off the vector width waste lanes (see bench/train_speed.py).
    Raises RankError when the target cannot be met."""
    if not (isinstance(multiple, int) and multiple >= 1):
        raise RankError(f"rank multiple must be a positive integer, got {multiple!r}")
    layers = [s for s in specs if s.factorizable]
    if not layers:
        raise RankError("this model has no factorizable layer")
    if not target > 1.0:
        raise RankError(f"--flops-reduction must be greater than 1, got {target}")
    floor = {s.name: tuple(min(multiple, lim) for lim in _max_ranks(s)) for s in layers}
    best_possible = reduction(specs, floor, extra_macs)
    if target > best_possible * (1 + tolerance):
        raise RankError(f"a {target}x FLOPs reduction is impossible for this model: rank 1 everywhere "
                        f"gives {best_possible:.2f}x (the dense layers it keeps set the limit)")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if reduction(specs, {s.name: _uniform(s, mid, multiple) for s in layers}, extra_macs) >= target:
            lo = mid
        else:
            hi = mid
    ranks = {s.name: _uniform(s, lo, multiple) for s in layers}
    ranks = _refine(specs, layers, ranks, target, extra_macs, multiple)
    got = reduction(specs, ranks, extra_macs)
    if abs(got - target) > tolerance * target:
        raise RankError(f"cannot reach a {target}x FLOPs reduction within {tolerance:.0%} with integer "
                        f"ranks (closest: {got:.3f}x); give ranks explicitly")
    return ranks


def _refine(specs, layers, ranks, target, extra_macs: int = 0, multiple: int = 1, max_steps: int = 500) -> dict:
    """Greedy +-``multiple`` rank moves that bring the reduction closest to ``target``."""
    ranks = dict(ranks)
    err = abs(reduction(specs, ranks, extra_macs) - target)
    for _ in range(max_steps):
        best = None
        for s in sorted(layers, key=dense_macs, reverse=True):
            for i, lim in enumerate(_max_ranks(s)):
                for step in (multiple, -multiple):
                    r = list(ranks[s.name])
                    r[i] = min(r[i] + step, lim)
                    if not min(multiple, lim) <= r[i] <= lim or r[i] == ranks[s.name][i]:
                        continue
                    cand = {**ranks, s.name: tuple(r)}
                    e = abs(reduction(specs, cand, extra_macs) - target)
                    if e < err - 1e-12 and (best is None or e < best[0]):
                        best = (e, cand)
        if best is None:
            break
        err, ranks = best
    return ranks
