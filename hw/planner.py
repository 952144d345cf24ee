"""Folding planner: PE/SIMD per stage for a multiplier budget, stages balanced.

Cost model (what the engine achieves in steady state, frames back to back):

* a stage with ``PE`` x ``SIMD`` multipliers takes
  ``T = ceil(out_ch/PE) * ceil(in_elems/SIMD)`` cycles per output pixel (PE and SIMD
  need not divide: the last fold is zero-padded, see :mod:`hw.mvu`); a stage behind a
  window generator may instead fold *flat* (``PE = 1``, :func:`hw.mvu.flat_words`):
  ``T = ceil(out_ch * in_elems / SIMD)``, no padding between rows, for a second adder
  tree (chosen only where it is faster or needs fewer multipliers);
* a stage behind a sliding-window generator reads its window in place, one word of
  ``SIMD`` elements per fold, with no further floor (:func:`hw.swg.swg_period` is 1);
  its ``SIMD`` is limited to words that span at most :func:`hw.swg.max_ports` pixels
  (the generator's line-buffer read ports, :func:`hw.swg.window_ports`);
* the stages run concurrently, so a frame takes ``max_i(vectors_i * T_i)`` cycles.

The ideal for the multipliers used is ``total MACs / multipliers``; the ratio of
the two is the utilisation. The planner returns the fastest plan within the budget
whose utilisation is at least ``min_utilisation`` (default
:data:`DEFAULT_MIN_UTILISATION`: cycles within 5% of the ideal, i.e. balanced
stages), using the fewest multipliers for that speed, then wide SIMD over many PEs
(fewer accumulators and requantizers). So it may leave part of the budget unused
rather than add multipliers that would mostly wait; ``min_utilisation=0`` asks for
the fastest plan regardless.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .mvu import flat_words
from .spec import HwError, StageSpec
from .swg import max_ports, swg_period, window_ports

__all__ = ["DEFAULT_MULTIPLIERS", "DEFAULT_MIN_UTILISATION", "StageFold", "Plan", "simd_fits", "flat_elements", "fold",
           "stage_options", "plan_folding", "fixed_folding"]

#: Budget used when none is given.
DEFAULT_MULTIPLIERS = 64

#: Utilisation floor used when none is given: cycles per frame within 5% of the ideal.
DEFAULT_MIN_UTILISATION = 1 / 1.05


def _fold_widths(n: int) -> list[int]:
    """The parallel widths worth building for ``n`` elements: for each fold count
    ``f`` the narrowest width that needs only ``f`` folds, ``ceil(n / f)``."""
    return sorted({-(-n // f) for f in range(1, n + 1)})


@dataclass(frozen=True)
class StageFold:
    """Folding of one stage and what it costs."""

    stage: str
    pe: int
    simd: int
    nf: int                     # ceil(out_ch / pe) (flat: out_ch)
    sf: int                     # ceil(in_elems / simd) (flat: words per vector)
    cycles_per_vector: int      # nf * sf (flat: sf)
    period: int                 # cycles between output pixels (= cycles_per_vector)
    vectors: int                # output pixels per frame
    cycles_per_frame: int       # vectors * period
    multipliers: int            # pe * simd
    macs: int                   # MACs per frame
    flat: bool = False          # the weight matrix folded flat (hw.mvu)

    @property
    def key(self) -> tuple[int, int, bool]:
        """``(pe, simd, flat)``: what :func:`fold` needs to rebuild this folding."""
        return self.pe, self.simd, self.flat

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """A folding for every stage of a layer."""

    stages: tuple[StageFold, ...]
    budget: int
    multipliers: int            # used (<= budget)
    macs: int                   # per frame, all stages
    cycles_per_frame: int       # expected, steady state

    @property
    def ideal_cycles(self) -> float:
        """Total MACs / multipliers used."""
        return self.macs / self.multipliers

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles_per_frame

    def as_dict(self) -> dict:
        return {"budget": self.budget, "multipliers": self.multipliers, "macs": self.macs,
                "cycles_per_frame": self.cycles_per_frame, "ideal_cycles": self.ideal_cycles,
                "utilisation": self.utilisation, "stages": [s.as_dict() for s in self.stages]}


def flat_elements(spec: StageSpec, flat: bool) -> int | None:
    """The ``elements`` of a stage's window generator: the whole flattened matrix for a
    flat fold (the window read ``out_ch`` times end to end), else None."""
    return spec.out_ch * spec.in_elems if flat else None


def simd_fits(spec: StageSpec, simd: int, flat: bool = False) -> bool:
    """Whether a stage can read ``simd`` elements per fold: any width for a plain 1x1
    stage, a word over at most :func:`hw.swg.max_ports` pixels behind a window generator."""
    return not spec.needs_window or \
        window_ports(spec.in_ch, spec.kernel, simd, flat_elements(spec, flat)) <= max_ports(spec.kernel)


def _preference(f: StageFold) -> tuple:
    """Among foldings of equal speed: fewer multipliers, then a PE x SIMD fold over a flat
    one (one adder tree), then wide SIMD over many PEs (fewer accumulators)."""
    return f.multipliers, f.flat, -f.simd


def fold(spec: StageSpec, pe: int, simd: int, flat: bool = False) -> StageFold:
    """Cost of one stage folded ``pe`` x ``simd``, or flat with ``simd`` multipliers
    (HwError unless ``1 <= pe <= out_ch``, ``1 <= simd <= in_elems`` and
    :func:`simd_fits`; a flat fold needs a window stage and ``pe == 1``)."""
    if not (1 <= pe <= spec.out_ch and 1 <= simd <= spec.in_elems):
        raise HwError(f"stage {spec.name!r}: PE={pe} must be in 1..{spec.out_ch} (out channels) and "
                      f"SIMD={simd} in 1..{spec.in_elems} (in elements)")
    if flat and not (spec.needs_window and pe == 1):
        raise HwError(f"stage {spec.name!r}: a flat fold needs a window stage and PE=1 (got PE={pe}, "
                      f"{spec.kernel}x{spec.kernel} stride {spec.stride} padding {spec.padding})")
    if not simd_fits(spec, simd, flat):
        raise HwError(f"stage {spec.name!r}: a word of SIMD={simd} elements spans "
                      f"{window_ports(spec.in_ch, spec.kernel, simd, flat_elements(spec, flat))} pixels of "
                      f"{spec.in_ch} channels; the window generator reads at most {max_ports(spec.kernel)}")
    if flat:
        nf, sf = spec.out_ch, flat_words(spec.out_ch, spec.in_elems, simd)
        cycles = sf
    else:
        nf, sf = -(-spec.out_ch // pe), -(-spec.in_elems // simd)
        cycles = nf * sf
    period = max(cycles, swg_period(spec.kernel) if spec.needs_window else 1)
    return StageFold(spec.name, pe, simd, nf, sf, cycles, period, spec.vectors, spec.vectors * period,
                     pe * simd, spec.macs, bool(flat))


def stage_options(spec: StageSpec) -> list[StageFold]:
    """Pareto-optimal foldings of a stage (fewer cycles costs more multipliers), fastest first."""
    best: dict[int, StageFold] = {}
    candidates = [(pe, simd, False) for pe in _fold_widths(spec.out_ch)
                  for simd in _fold_widths(spec.in_elems)]
    if spec.needs_window:       # flat folds: the narrowest width for each word count
        n = spec.out_ch * spec.in_elems
        candidates += [(1, simd, True) for simd in _fold_widths(n) if 2 <= simd <= spec.in_elems]
    for pe, simd, flat in candidates:
        if simd_fits(spec, simd, flat):
            f = fold(spec, pe, simd, flat)
            cur = best.get(f.cycles_per_frame)
            if cur is None or _preference(f) < _preference(cur):
                best[f.cycles_per_frame] = f
    out, cheapest = [], None
    for cyc in sorted(best):                        # fastest first; a slower option must be cheaper
        f = best[cyc]
        if cheapest is None or f.multipliers < cheapest:
            out.append(f)
            cheapest = f.multipliers
    return out


def plan_folding(specs: list[StageSpec], multipliers: int | None = None, *,
                 min_utilisation: float | None = None) -> Plan:
    """Fastest balanced folding of a layer's stages within ``multipliers`` (default
    :data:`DEFAULT_MULTIPLIERS`). HwError (one line) if the budget is not a positive
    integer or is below one multiplier per stage, or ``min_utilisation`` is not a
    number in [0, 1] (NaN and inf included).

    Only plans whose utilisation (ideal / expected cycles, ideal = total MACs /
    multipliers used) is at least ``min_utilisation`` (default
    :data:`DEFAULT_MIN_UTILISATION`; 0 for the fastest plan) are considered: the
    planner may leave budget unused rather than give a stage multipliers it cannot
    keep busy. If no plan within the budget reaches it, the best-utilised plan is
    returned.
    """
    budget = DEFAULT_MULTIPLIERS if multipliers is None else _check_budget(multipliers)
    min_utilisation = DEFAULT_MIN_UTILISATION if min_utilisation is None else _check_utilisation(min_utilisation)
    if budget < len(specs):
        raise HwError(f"multiplier budget {budget} is too small: the layer has {len(specs)} stage(s) "
                      f"and each needs at least one multiplier")
    options = [stage_options(s) for s in specs]
    targets = sorted({f.cycles_per_frame for opts in options for f in opts})
    best = None
    for target in targets:
        chosen = []
        for opts in options:
            fits = [f for f in opts if f.cycles_per_frame <= target]
            if not fits:
                break
            chosen.append(min(fits, key=_preference))
        else:
            used = sum(f.multipliers for f in chosen)
            if used <= budget:
                plan = _plan(chosen, budget)
                if plan.utilisation >= min_utilisation - 1e-12:
                    return plan
                if best is None or plan.utilisation > best.utilisation + 1e-12:   # ties: the faster
                    best = plan
    if best is None:    # unreachable: the all-ones folding fits any budget >= len(specs)
        raise HwError(f"no folding of this layer fits {budget} multipliers")
    return best


def _check_budget(multipliers) -> int:
    """``multipliers`` as an int: a positive integer (bool, float, NaN refused), else HwError."""
    if isinstance(multipliers, bool) or not isinstance(multipliers, numbers.Integral):
        raise HwError(f"multiplier budget must be a positive integer, got {multipliers!r}")
    if multipliers < 1:
        raise HwError(f"multiplier budget {int(multipliers)} is not positive: each stage needs at least one multiplier")
    return int(multipliers)


def _check_utilisation(min_utilisation) -> float:
    """``min_utilisation`` as a float in [0, 1] (NaN, inf, bools and strings refused), else HwError."""
    if isinstance(min_utilisation, bool) or not isinstance(min_utilisation, numbers.Real) \
            or not math.isfinite(min_utilisation) or not 0.0 <= min_utilisation <= 1.0:
        raise HwError(f"min_utilisation must be a number in [0, 1], got {min_utilisation!r}")
    return float(min_utilisation)


def fixed_folding(specs: list[StageSpec], folds: list[tuple], budget: int | None = None) -> Plan:
    """A plan from explicit ``(pe, simd)`` or ``(pe, simd, flat)`` per stage (for tests,
    experiments and rebuilding a plan's foldings, :attr:`StageFold.key`)."""
    if len(folds) != len(specs):
        raise HwError(f"{len(folds)} foldings given for {len(specs)} stages")
    chosen = [fold(s, *f) for s, f in zip(specs, folds)]
    return _plan(chosen, budget if budget is not None else sum(f.multipliers for f in chosen))


def _plan(chosen: list[StageFold], budget: int) -> Plan:
    return Plan(tuple(chosen), budget, sum(f.multipliers for f in chosen), sum(f.macs for f in chosen),
                max(f.cycles_per_frame for f in chosen))
