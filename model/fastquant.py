"""Fused power-of-two quantizers: Brevitas quantizers whose tensor quantization is one autograd Function.

The quantizers below are Brevitas' own ``Int8WeightPerTensorFixedPoint``,
``Int8ActPerTensorFixedPoint`` and ``Uint8ActPerTensorFixedPoint`` (same injectors, same
module tree, same state_dict, same scales, bit widths and export behaviour) with three
parts replaced, each by one :class:`torch.autograd.Function`:

* ``int_quant`` (``x / scale``, round half to even, clamp, ``* scale``) is
  :class:`FusedIntQuant`, whose forward and backward compute in a few whole-tensor passes
  what Brevitas' chain of ~10 elementwise autograd nodes computes: the straight-through
  gradient (masked outside the clamp for activations, passed through for weights) and the
  scale's gradient, split the way Brevitas splits it (``sum(g * q)`` from the final
  multiply, ``-sum(g_masked * x / scale**2)`` from the division), so that the scale
  receives the same contributions in the same order;
* the training-mode scale (``tensor_quant``, :class:`FusedRescalingIntQuant`): the learned
  or statistics-phase activation scale and the weight scale, with the gradients Brevitas'
  ~100 scalar operations per call give the learned parameter, the percentile element and
  the weights;
* the runtime-statistics percentile of the activation quantizers (used during Brevitas'
  first ``collect_stats_steps`` = 300 training steps, when the scale is the batch's
  99.999th percentile of ``|x|`` and its gradient flows into that one element of ``x``) is
  :class:`FastAbsPercentile`: the same element, found from per-block maxima instead of a
  full ``kthvalue`` selection, with a backward that writes the one element.

Contract (tested bit for bit against Brevitas in ``tests/test_fast_quant.py``): forward
values, input gradients and scale gradients are identical to Brevitas' (as values: the
sign of a zero may differ, which no later value depends on), in Brevitas' memory layouts.
With a power-of-two scale (every weight quantizer; activation quantizers after the
statistics phase and in eval mode) the fused Function uses identities that hold exactly
for power-of-two scaling (``x / s == x * 2**-k``, ``(g * s) / s == g``); they would only
fail for products below the smallest normal float (|g| < 2**-126 / scale), which
gradients never reach. With any other scale (the statistics phase) it follows Brevitas'
operations one by one, so the results are the same floats. On CUDA it always takes the
second route and adds no host synchronisation.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
from brevitas.core.bit_width import BitWidthConst
from brevitas.core.function_wrapper import CeilSte, Identity, OverTensorView, RoundSte, TensorClamp, TensorClampSte
from brevitas.core.function_wrapper.ops_ste import ScalarSignedClampMinSte
from brevitas.core.quant import RescalingIntQuant
from brevitas.core.quant.int_base import IntQuant
from brevitas.core.restrict_val import PowerOfTwoRestrictValue
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling, StatsFromParameterScaling
from brevitas.core.stats import AbsMax, AbsPercentile
from brevitas.core.utils import inplace_momentum_update, inplace_tensor_mul
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.function.ops import max_int, min_int
from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

_hardtanh_backward_out = torch.ops.aten.hardtanh_backward.grad_input
# 1.5 * 2**(mantissa bits): x + _MAGIC * s rounds x to a multiple of the power of two s
_MAGIC = {torch.float32: 1.5 * 2.0 ** 23, torch.float64: 1.5 * 2.0 ** 52}


@lru_cache(maxsize=None)
def round_window(lo: int, hi: int, dtype: torch.dtype) -> tuple[float, float]:
    """The open interval ``(a, b)`` of values ``u`` (of ``dtype``) with ``lo <= round(u) <= hi``
    under round half to even: ``u = lo - 0.5`` rounds into the range when ``lo`` is even,
    ``u = hi + 0.5`` when ``hi`` is even, so those ends are widened to the next float."""
    a = torch.tensor(lo - 0.5, dtype=dtype)
    b = torch.tensor(hi + 0.5, dtype=dtype)
    if lo % 2 == 0:
        a = torch.nextafter(a, torch.tensor(-math.inf, dtype=dtype))
    if hi % 2 == 0:
        b = torch.nextafter(b, torch.tensor(math.inf, dtype=dtype))
    return a.item(), b.item()


def _is_power_of_two(scale: torch.Tensor) -> bool:
    """True for a CPU scale ``2**k`` with ``|k| < 60`` (far from under/overflow when squared
    or multiplied with activations). CUDA scales are never inspected (that would synchronise)."""
    if scale.device.type != "cpu" or scale.numel() != 1:
        return False
    mantissa, exponent = math.frexp(float(scale.detach()))
    return mantissa == 0.5 and -60 < exponent < 60


class _FakeQuant(torch.autograd.Function):
    """``y = clamp(round(x / s), lo, hi) * s`` with Brevitas' gradients.

    Inputs ``(x, s_mul, s_div, lo, hi, ste, pot)``: ``s_mul`` and ``s_div`` are the same scale
    tensor, passed twice so that autograd accumulates its two gradient terms in Brevitas'
    order (the term of the final multiply, then the one of the division); ``ste``: the clamp
    passes the gradient everywhere (weights, ``TensorClampSte``) instead of only inside the
    range (activations, ``TensorClamp``); ``pot``: the scale is a power of two."""

    @staticmethod
    def forward(ctx, x, s_mul, s_div, lo, hi, ste, pot):
        ctx.lo, ctx.hi, ctx.ste, ctx.pot = lo, hi, ste, pot
        if pot:
            # x + C with C = 1.5 * 2**(mantissa bits) * s lands in the binade whose spacing is s,
            # so the addition itself rounds x to a multiple of s, half to even (= s * round(x / s));
            # the clamp to C + [lo, hi] * s and the exact subtraction of C finish the job in three
            # passes. Exact for |x / s| < 2**22 (float32); anything larger is clamped anyway.
            step = float(s_div.detach())
            shift = _MAGIC[x.dtype] * step
            y = torch.add(x, shift, out=_empty_like_round(x))
            y.clamp_(shift + lo * step, shift + hi * step).sub_(shift)
            ctx.save_for_backward(x, y, s_div)
        else:
            u = torch.div(x, s_div)
            q = torch.round(u).clamp_(lo, hi)
            y = q * s_mul
            ctx.save_for_backward(u, q, s_div)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b = round_window(ctx.lo, ctx.hi, g.dtype)
        if ctx.pot:
            x, y, s = ctx.saved_tensors
            step = float(s.detach())
            # exact for s = 2**k: Brevitas' (g * s) masked / s is g masked, its
            # sum(g * q) is sum(g * y) / s and its sum(-(g * s) * (x / s) / s) is -sum(g * x) / s
            gx = g if ctx.ste else _mask(g, x, a * step, b * step)
            prod = torch.mul(g, y)
            g_mul = prod.sum() / s
            # the second product may reuse the first's memory when it has the layout the product
            # would get anyway (a sum adds in memory order, so the layout must be Brevitas')
            same = prod.stride() == gx.stride() == x.stride()
            g_div = -(torch.mul(gx, x, out=prod if same else None).sum() / s)
        else:
            u, q, s = ctx.saved_tensors
            gs = g * s
            g_mul = (g * q).sum()
            gm = gs if ctx.ste else _mask(gs, u, a, b)
            gx = gm / s
            g_div = -((gm * (u / s)).sum())
        shape = s.shape
        return (gx if ctx.needs_input_grad[0] else None,
                g_mul.reshape(shape) if ctx.needs_input_grad[1] else None,
                g_div.reshape(shape) if ctx.needs_input_grad[2] else None,
                None, None, None, None)


def _empty_like_round(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor laid out as ``torch.round(t)`` lays out its result, as Brevitas' outputs
    and masks are (they follow its round). It differs from ``t``'s own strides only where
    those are ambiguous (a size-1 dimension, e.g. 1-channel images or 1x1 kernels in
    channels_last), and a conv's algorithm, so its result, can depend on that."""
    if t.is_contiguous():
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)
    return torch.empty_like(t)


def _mask(g: torch.Tensor, u: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``g`` where ``a < u < b``, else 0, in one pass, laid out like Brevitas' mask: that is a
    ``torch.where`` on a condition computed from ``round(u)``, whose layout it takes, and every
    later sum over the gradient (the scale's, BatchNorm's and the conv's backward) adds in that
    order; laid out like ``g`` instead (NCHW where the incoming gradient is, while the
    activations are channels_last) the same values would be summed in another order."""
    return _hardtanh_backward_out(g, u, a, b, grad_input=_empty_like_round(u))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int, ste: bool) -> torch.Tensor:
    """Brevitas' integer fake quantization ``clamp(round(x / scale), lo, hi) * scale`` (zero
    point 0), forward and backward fused; ``ste``: straight-through clamp (weights)."""
    return _FakeQuant.apply(x, scale, scale, lo, hi, ste, x.dtype in _MAGIC and _is_power_of_two(scale))


class FusedIntQuant(IntQuant):
    """Brevitas ``IntQuant`` (same constructor, attributes and submodules, so exporters that
    read ``float_to_int_impl`` or ``tensor_clamp_impl`` see what they expect) computed by
    :func:`fake_quant`. Supports what the fixed-point quantizers use: round half to even
    (``RoundSte``), ``TensorClamp`` or ``TensorClampSte``, no quantization delay, no input
    view, a zero zero point (``ZeroZeroPoint``) and a constant bit width."""

    def __init__(self, narrow_range: bool, signed: bool, input_view_impl: nn.Module,
                 float_to_int_impl: nn.Module = RoundSte(), tensor_clamp_impl: nn.Module = TensorClamp(),
                 quant_delay_steps: int = 0):
        super().__init__(narrow_range, signed, input_view_impl, float_to_int_impl, tensor_clamp_impl,
                         quant_delay_steps)
        if type(float_to_int_impl) is not RoundSte:
            raise ValueError(f"FusedIntQuant rounds half to even (RoundSte), not {type(float_to_int_impl).__name__}")
        if type(tensor_clamp_impl) not in (TensorClamp, TensorClampSte):
            raise ValueError(f"FusedIntQuant clamps with TensorClamp or TensorClampSte, not "
                             f"{type(tensor_clamp_impl).__name__}")
        if quant_delay_steps or not isinstance(input_view_impl, Identity):
            raise ValueError("FusedIntQuant supports no quantization delay and no input view")
        self.ste = type(tensor_clamp_impl) is TensorClampSte
        self._range: tuple[int, int] | None = None   # (lo, hi) of the constant bit width

    def forward(self, scale, zero_point, bit_width, x):
        if self._range is None:                       # read once: on CUDA each read synchronises
            self._range = (int(min_int(self.signed, self.narrow_range, bit_width)),
                           int(max_int(self.signed, self.narrow_range, bit_width)))
        return fake_quant(x, scale, *self._range, self.ste)


# ----------------------------------------------------------------------------- percentile statistics

BLOCK = 2048          # elements per block of the block-maxima search
SMALL = 16 * BLOCK    # tensors up to this size are searched whole


def _memory_order(x: torch.Tensor):
    """``(flat view of x in memory order, dims in memory order)`` for a dense tensor, or None."""
    dims = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    perm = x.permute(dims)
    if not perm.is_contiguous():
        return None
    return perm.view(-1), dims


def _candidates(flat: torch.Tensor, m: int):
    """``(|values|, positions)`` of a subset of ``flat`` that holds every element whose ``|value|``
    is at least the ``m``-th largest, or None (NaN, or too many equal block maxima). Per-block
    maxima bound that value from below: the ``m``-th largest block maximum T has ``m``
    elements at or above it, so every element >= the answer lies in a block whose maximum
    is >= T (or in the tail that does not fill a block)."""
    n = flat.numel()
    nb = n // BLOCK
    blocks = flat[: nb * BLOCK].view(nb, BLOCK)
    # amax and amin apart: aminmax along a dimension is a slower kernel (10x on a 2,048-wide row)
    block_max = torch.maximum(blocks.amax(1), blocks.amin(1).neg())
    chosen = (block_max >= torch.topk(block_max, m).values[-1]).nonzero().squeeze(1)
    if not m <= chosen.numel() <= 4 * m:               # NaN (nothing is >= NaN), or many equal maxima
        return None
    values = blocks.index_select(0, chosen).abs().view(-1)
    where = (chosen[:, None] * BLOCK + torch.arange(BLOCK)).view(-1)
    if nb * BLOCK < n:
        values = torch.cat([values, flat[nb * BLOCK:].abs()])
        where = torch.cat([where, torch.arange(nb * BLOCK, n)])
    return values, where


def _unique_kth_largest_abs(x: torch.Tensor, m: int) -> tuple[int, ...] | None:
    """Coordinates of the ``m``-th largest ``|x|`` when that value occurs once in ``x``; None
    when it is tied or NaN, or the search does not apply (strided tensors, many equal block
    maxima). The ``m + 1`` largest of a superset of the top ``m`` show a tie: an equal element
    sorts next to it."""
    mem = _memory_order(x)
    n = x.numel()
    if mem is None or n < 2 * m:
        return None
    flat, dims = mem
    if n <= SMALL or n // BLOCK < 4 * m:
        values, where = flat.abs(), None
    else:
        found = _candidates(flat, m)
        if found is None:
            return None
        values, where = found
    top, pos = torch.topk(values, min(m + 1, values.numel()))
    top = top.tolist()
    v = top[m - 1]
    if v != v or (m >= 2 and top[m - 2] == v) or (len(top) > m and top[m] == v):
        return None
    p = int(pos[m - 1]) if where is None else int(where[pos[m - 1]])
    coords = [0] * x.dim()
    for d in reversed(dims):                           # memory-order index -> coordinates
        coords[d], p = p % x.shape[d], p // x.shape[d]
    return tuple(coords)


def _unravel(index: int, shape) -> tuple[int, ...]:
    coords = []
    for size in reversed(shape):
        coords.append(index % size)
        index //= size
    return tuple(reversed(coords))


class _AbsPercentileFn(torch.autograd.Function):
    """The value of ``kthvalue(|x|.reshape(-1), k)``, with Brevitas' gradient: ``grad * sign(x)``
    at the selected element, zero elsewhere (in a row-major contiguous tensor, which is what
    the backward of Brevitas' reshape gives)."""

    @staticmethod
    def forward(ctx, x, k):
        if x.device.type == "cpu":
            where = _unique_kth_largest_abs(x, x.numel() - k + 1)
            if where is None:                          # Brevitas' own selection (ties, strided tensors)
                where = _unravel(int(torch.kthvalue(x.reshape(-1).abs(), k)[1]), x.shape)
            element = x[where]
        else:                                          # the index stays on the device: no synchronisation
            flat = x.reshape(-1)
            where = torch.kthvalue(flat.abs(), k)[1]
            element = flat[where]
        ctx.where, ctx.shape = where, x.shape
        ctx.save_for_backward(element.sign())
        return element.abs()

    @staticmethod
    def backward(ctx, g):
        (sign,) = ctx.saved_tensors
        gx = torch.zeros(ctx.shape, dtype=g.dtype, device=g.device)
        target = gx if isinstance(ctx.where, tuple) else gx.view(-1)
        target[ctx.where] = g * sign
        return gx, None


class FastAbsPercentile(AbsPercentile):
    """Brevitas' per-tensor ``AbsPercentile`` with the same value and gradient, found without a
    full selection when the percentile element is unique (:func:`_unique_kth_largest_abs`).
    Takes the tensor in its own shape (its quantizer does not flatten it: :class:`KeepShape`)."""

    def __init__(self, high_percentile_q: float, stats_reduce_dim=None, percentile_q=None, keepdim: bool = False):
        super().__init__(high_percentile_q, stats_reduce_dim, percentile_q, keepdim)
        if stats_reduce_dim is not None:
            raise ValueError("FastAbsPercentile is per tensor (stats_reduce_dim None)")

    def forward(self, x):
        # Brevitas' k, computed the same way (1-indexed, rounded half away from zero)
        k = int(math.floor(.01 * self.q * x.numel() + 0.5))
        return _AbsPercentileFn.apply(x, k)


class KeepShape(nn.Module):
    """Statistics input view that leaves the tensor as it is (``FastAbsPercentile`` flattens
    it itself, in memory order, without Brevitas' row-major copy of a channels_last tensor)."""

    def __init__(self):            # explicit: the injector cannot resolve nn.Module's *args
        super().__init__()

    def forward(self, x):
        return x


# ----------------------------------------------------------------------------- scales

LN2 = 0.6931471805599453     # the constant torch's log2 backward divides by

# Brevitas clamps scales from below with ScalarSignedClampMinSte, sign(x) * clamp_min(|x|, m),
# whose backward multiplies by the sign and by a binary sign, +-1 each, the same for any x:
# the identity. Every input it gets here is >= 0 (a percentile or maximum of |x|, a power of
# two), where its forward is clamp_min(x, m).


class _StatisticsScale(torch.autograd.Function):
    """Brevitas' statistics-phase activation scale ``clamp_min(stats + 0 * value) / threshold``
    (``ParameterFromRuntimeStatsScaling.training_forward``, first branch) with its gradients:
    to ``stats`` (the percentile, so into one element of the input) and a zero to ``value``.
    Also returns the clamped statistics (no gradient) for the running buffer."""

    @staticmethod
    def forward(ctx, stats, value, threshold, min_val):
        clamped = torch.clamp_min(stats + 0. * value, min_val)
        ctx.save_for_backward(threshold)
        ctx.mark_non_differentiable(clamped)
        return clamped / threshold, clamped

    @staticmethod
    def backward(ctx, g, _):
        (threshold,) = ctx.saved_tensors
        gs = g / threshold
        return gs, gs * 0., None, None


class _LearnedScale(torch.autograd.Function):
    """Brevitas' learned activation scale ``clamp_min(2 ** ceil(value)) / threshold`` with the
    gradient its chain of autograd nodes gives ``value`` (ceil straight through, then
    ``d 2**c / dc = 2**c * ln 2``, in the order torch's pow backward multiplies)."""

    @staticmethod
    def forward(ctx, value, threshold, min_val):
        power = 2.0 ** torch.ceil(value)
        ctx.save_for_backward(power, threshold)
        return torch.clamp_min(power, min_val) / threshold

    @staticmethod
    def backward(ctx, g):
        power, threshold = ctx.saved_tensors
        return (g / threshold) * (power * math.log(2.0)), None, None


class _WeightScale(torch.autograd.Function):
    """Brevitas' per-tensor weight scale ``clamp_min(2 ** ceil(log2(clamp_min(max |w|)))) /
    threshold`` (``StatsFromParameterScaling`` with ``AbsMax``) with the gradient its chain
    gives ``w``: to the largest elements, evenly among equal ones, in a row-major contiguous
    tensor as Brevitas' reshape backward gives it."""

    @staticmethod
    def forward(ctx, w, threshold, min_stats, min_scale):
        flat = w.reshape(-1)
        stats = torch.max(torch.abs(flat))
        clamped = torch.clamp_min(stats, min_stats)
        power = 2.0 ** torch.ceil(torch.log2(clamped))
        ctx.shape = w.shape
        ctx.save_for_backward(flat, stats, clamped, power, threshold)
        return torch.clamp_min(power, min_scale) / threshold

    @staticmethod
    def backward(ctx, g):
        flat, stats, clamped, power, threshold = ctx.saved_tensors
        gstats = (g / threshold) * (power * math.log(2.0)) / (clamped * LN2)
        # torch.max's backward (evenly among the maxima; its CUDA form needs no synchronisation),
        # then abs's (times the sign)
        if flat.is_cuda:
            mask = (torch.abs(flat) == stats).logical_or_(torch.isnan(flat).logical_and_(torch.isnan(stats)))
            gmax = mask * (gstats / mask.sum())
        else:
            mask = torch.isnan(flat) if bool(torch.isnan(stats)) else torch.abs(flat) == stats
            gmax = flat.new_zeros(flat.shape).masked_fill_(mask, gstats / mask.sum())
        gflat = gmax * flat.sgn()
        return gflat.reshape(ctx.shape), None, None, None


def _is_pot_ceil(restrict: nn.Module) -> bool:
    impl = getattr(restrict, "restrict_value_impl", None)
    return type(impl) is PowerOfTwoRestrictValue and type(impl.float_to_int_impl) is CeilSte


def _clamp_min(clamp: nn.Module) -> float | None:
    """The minimum of a Brevitas ``ScalarSignedClampMinSte`` (inside ``_ClampValue`` or
    ``_RestrictClampValue``), or None for any other clamp."""
    ste = getattr(clamp, "clamp_min_ste", getattr(clamp, "clamp_ste", None))
    return ste.min_val if type(ste) is ScalarSignedClampMinSte else None


class FusedRescalingIntQuant(RescalingIntQuant):
    """Brevitas ``RescalingIntQuant`` (same constructor and submodules) whose training-mode
    scale is computed by one autograd Function instead of Brevitas' ~100 scalar operations
    per call, which is what a small layer's quantizer costs (digits' 8x8 maps): the
    activation scale of the statistics phase (:class:`_StatisticsScale`, running buffer and
    step counter updated as Brevitas updates them) and of the learned phase
    (:class:`_LearnedScale`), and the weight scale (:class:`_WeightScale`). Same values, same
    gradients. The constant bit width, zero point and threshold are read once. Any other
    configuration, the step that turns statistics into the learned parameter, and eval mode
    run Brevitas' own scaling (its integer quantization is still :class:`FusedIntQuant`)."""

    def __init__(self, int_quant, scaling_impl, int_scaling_impl, zero_point_impl, bit_width_impl):
        super().__init__(int_quant, scaling_impl, int_scaling_impl, zero_point_impl, bit_width_impl)
        self._kind = self._fusable_kind()
        self._constants = None

    def _fusable_kind(self) -> str | None:
        sc = self.scaling_impl
        if not (isinstance(self.int_quant, FusedIntQuant) and type(self.zero_point_impl) is ZeroZeroPoint
                and type(self.msb_clamp_bit_width_impl) is BitWidthConst):
            return None
        if (type(sc) is ParameterFromRuntimeStatsScaling and type(sc.stats.stats_impl) is FastAbsPercentile
                and _is_pot_ceil(sc.restrict_scaling) and _is_pot_ceil(sc.restrict_threshold)
                and type(sc.restrict_scale_threshold.restrict_value_impl) is Identity
                and _clamp_min(sc.clamp_scaling) is not None):
            return "activation"
        if type(sc) is StatsFromParameterScaling:
            pls, ss = sc.parameter_list_stats, sc.stats_scaling_impl
            if (pls.extra_tracked_params_list is None and type(pls.stats.stats_impl) is AbsMax
                    and pls.stats.stats_impl.stats_reduce_dim is None
                    and type(pls.first_tracked_param.view_shape_impl) is OverTensorView
                    and type(ss.affine_rescaling) is Identity and _is_pot_ceil(ss.restrict_clamp_scaling)
                    and _is_pot_ceil(ss.restrict_clamp_threshold)
                    and type(ss.restrict_clamp_threshold.clamp_ste) is Identity
                    and type(ss.restrict_clamp_scale_threshold.restrict_value_impl) is Identity
                    and type(ss.restrict_clamp_scale_threshold.clamp_ste) is Identity
                    and _clamp_min(ss.clamp_scaling) is not None and _clamp_min(ss.restrict_clamp_scaling) is not None):
                return "weight"
        return None

    def _constants_for(self, device):
        """(bit width, zero point, int threshold, restricted threshold), read once per device."""
        if self._constants is None or self._constants[0] != device:
            with torch.no_grad():
                bit_width = self.msb_clamp_bit_width_impl()
                threshold = self.int_scaling_impl(bit_width)
                zero_point = self.zero_point_impl(threshold, threshold, bit_width)   # ZeroZeroPoint: no input used
                sc = self.scaling_impl
                if self._kind == "activation":
                    restricted = sc.restrict_threshold(sc.restrict_threshold_pre(threshold))
                else:
                    ss = sc.stats_scaling_impl
                    restricted = ss.restrict_clamp_threshold(ss.restrict_threshold_pre(threshold))
            self._constants = (device, bit_width, zero_point, threshold, restricted)
        return self._constants[1:]

    def forward(self, x):
        sc = self.scaling_impl
        if self._kind is None or not self.training or self.observer_only or getattr(sc, "local_loss_mode", False):
            return super().forward(x)
        if self._kind == "activation" and sc.counter == sc.collect_stats_steps:
            return super().forward(x)                 # Brevitas initialises the learned scale here
        bit_width, zero_point, threshold, restricted = self._constants_for(x.device)
        if self._kind == "weight":
            ss = sc.stats_scaling_impl
            scale = _WeightScale.apply(x, restricted, _clamp_min(ss.clamp_scaling),
                                       _clamp_min(ss.restrict_clamp_scaling))
        elif sc.counter > sc.collect_stats_steps:
            scale = _LearnedScale.apply(sc.value, restricted, _clamp_min(sc.clamp_scaling))
        else:
            stats = sc.stats(sc.stats_input_view_shape_impl(x))
            scale, clamped = _StatisticsScale.apply(stats, sc.value, threshold, _clamp_min(sc.clamp_scaling))
            # the running buffer and step counter, updated as training_forward updates them
            if sc.counter == 0:
                inplace_tensor_mul(sc.buffer, clamped)
            else:
                inplace_momentum_update(sc.buffer, clamped, sc.momentum, sc.counter, sc.counter + 1)
            sc.counter = sc.counter + 1
        return self.int_quant(scale, zero_point, bit_width, x), scale, zero_point, bit_width


# ----------------------------------------------------------------------------- quantizers

class FusedInt8WeightPerTensorFixedPoint(Int8WeightPerTensorFixedPoint):
    """``Int8WeightPerTensorFixedPoint`` with the fused integer quantization and scale."""
    tensor_quant = FusedRescalingIntQuant
    int_quant = FusedIntQuant


class FusedInt8ActPerTensorFixedPoint(Int8ActPerTensorFixedPoint):
    """``Int8ActPerTensorFixedPoint`` with the fused integer quantization, scale and percentile."""
    tensor_quant = FusedRescalingIntQuant
    int_quant = FusedIntQuant
    scaling_stats_impl = FastAbsPercentile
    scaling_stats_input_view_shape_impl = KeepShape


class FusedUint8ActPerTensorFixedPoint(Uint8ActPerTensorFixedPoint):
    """``Uint8ActPerTensorFixedPoint`` with the fused integer quantization, scale and percentile."""
    tensor_quant = FusedRescalingIntQuant
    int_quant = FusedIntQuant
    scaling_stats_impl = FastAbsPercentile
    scaling_stats_input_view_shape_impl = KeepShape
