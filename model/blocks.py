"""Building blocks shared by the networks: the layer factory, conv+BN units, pooling.

``LayerFactory`` decides, per named layer, whether it is dense or low-rank and with
which ranks; the networks only name their layers. It also records every layer it
makes (``specs``), which the FLOPs accounting and rank selection read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import quant
from .layers import LowRankConv2d, LowRankLinear, Tucker2Conv2d
from .quant import FLOAT, QuantConfig


@dataclass
class LayerSpec:
    """Geometry of one (dense-equivalent) layer, as the factory made it."""

    name: str
    kind: str                 # "conv" or "linear"
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    factorizable: bool = True
    ranks: tuple | None = None  # None: dense
    in_size: int = 1          # input positions: H_in * W_in (conv) or tokens (linear)
    out_size: int = 1         # output positions: H_out * W_out (conv) or tokens (linear)


@dataclass
class LayerFactory:
    """Makes the named layers of a network, dense or low-rank.

    ``ranks`` maps layer names to ``(R1, R2)`` (k x k convs) or ``(R,)`` (1x1 convs and
    linear layers); a layer absent from it is dense. ``specs`` records every layer made.
    """

    qc: QuantConfig = FLOAT
    ranks: dict = field(default_factory=dict)
    specs: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)

    def _made(self, spec: LayerSpec, module: nn.Module) -> nn.Module:
        self.specs[spec.name], self.modules[spec.name] = spec, module
        return module

    def conv(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
             groups: int = 1, bias: bool = False, factorizable: bool = True) -> nn.Module:
        factorizable = factorizable and groups == 1
        r = self.ranks.get(name) if factorizable else None
        spec = LayerSpec(name, "conv", cin, cout, kernel, stride, groups, factorizable, tuple(r) if r else None)
        if r is None:
            module = quant.conv2d(self.qc, cin, cout, kernel, stride, padding, groups=groups, bias=bias)
        elif kernel == 1:
            module = LowRankConv2d(cin, cout, r[0], stride, bias, self.qc)
        else:
            module = Tucker2Conv2d(cin, cout, kernel, tuple(r), stride, padding, bias=bias, qc=self.qc)
        return self._made(spec, module)

    def linear(self, name: str, cin: int, cout: int, bias: bool = True, factorizable: bool = True) -> nn.Module:
        r = self.ranks.get(name) if factorizable else None
        spec = LayerSpec(name, "linear", cin, cout, factorizable=factorizable, ranks=tuple(r) if r else None)
        module = quant.linear(self.qc, cin, cout, bias) if r is None else LowRankLinear(cin, cout, r[0], bias, self.qc)
        return self._made(spec, module)


class ConvBN(nn.Module):
    """``act(bn(conv(x)))`` whose BatchNorm can be folded into the conv for deployment.

    ``conv`` is a dense (quant) conv or a factorized layer (BN folds into its U2).
    ``act`` is the output requantizer (``quant.relu`` / ``quant.act``) or None.
    """

    def __init__(self, conv: nn.Module, channels: int, act: nn.Module | None = None):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(channels)
        self.act = act if act is not None else nn.Identity()
        self.folded = False
        # per output channel gamma / sqrt(running_var + eps) of the folded BN (None before the
        # fold); not part of state_dict (the checkpoint keeps it apart, see fold_scales)
        self.fold_scale = None

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    @property
    def accumulating_conv(self) -> nn.Module:
        """The conv that produces the accumulator (U2 of a factorized layer)."""
        return getattr(self.conv, "last_stage", self.conv)

    def fold(self) -> None:
        """Fold BN (running statistics) into the accumulating conv's weight and bias.

        Row ``n`` of the conv's weight is multiplied by ``s[n] = gamma[n] / sqrt(var[n] + eps)``
        (kept as ``fold_scale`` for :func:`precondition_folded_grads`)."""
        if self.folded:
            return
        from brevitas.nn.utils import merge_bn
        bn = self.bn
        self.fold_scale = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).clone()
        merge_bn(self.accumulating_conv, bn)
        self.bn = nn.Identity()
        self.folded = True


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ConvBN of ``model`` in place; returns how many were folded."""
    units = [m for m in model.modules() if isinstance(m, ConvBN) and not m.folded]
    for unit in units:
        unit.fold()
    return len(units)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Replace every (unfolded) ConvBN's running statistics by the exact statistics of the
    current network on ``batches`` (an iterable of input tensors); returns the batch count.

    Why: the running statistics are an exponential average (momentum 0.1) over batches seen
    by *earlier* weights, so early in training, or after a few hundred fast steps, they
    describe another network than the one being folded, and the folded (eval-mode) network
    can be far worse than the trained one. Recalibrating first makes the fold exact for the
    current weights. Only BatchNorm runs in train mode (cumulative average, momentum None);
    every quantizer stays in eval mode, so no other state changes and no RNG is drawn."""
    bns = [m.bn for m in model.modules() if isinstance(m, ConvBN) and not m.folded and isinstance(m.bn, nn.BatchNorm2d)]
    if not bns:
        return 0
    was = model.training
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
    finally:
        for bn, (momentum, mean, var, tracked) in zip(bns, saved):
            bn.momentum = momentum
            if count == 0:                      # nothing seen: keep the old statistics
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(tracked)
        model.train(was)
    return count


def fold_scales(model: nn.Module) -> dict:
    """``{unit name: fold_scale}`` of the folded ConvBN units (for checkpoints)."""
    return {n: m.fold_scale.detach().clone().cpu() for n, m in model.named_modules()
            if isinstance(m, ConvBN) and m.folded and m.fold_scale is not None}


def set_fold_scales(model: nn.Module, scales: dict) -> None:
    """Restore :func:`fold_scales` into a model folded afresh (whose BN was not the trained one).
    Units absent from ``scales`` (checkpoints written before it was kept) get no preconditioning."""
    units = {n: m for n, m in model.named_modules() if isinstance(m, ConvBN)}
    unknown = sorted(set(scales) - set(units))
    if unknown:
        raise ValueError(f"fold scales for unknown layer(s) {', '.join(unknown[:3])}")
    for name, unit in units.items():
        s = scales.get(name)
        if s is not None:
            w = unit.accumulating_conv.weight
            if tuple(s.shape) != (w.shape[0],):
                raise ValueError(f"{name}: fold scale of shape {tuple(s.shape)} for {w.shape[0]} channels")
            s = s.to(w.device, w.dtype)
        unit.fold_scale = s


@torch.no_grad()
def precondition_folded_grads(model: nn.Module) -> int:
    """Multiply the gradient of every folded weight row ``n`` by ``fold_scale[n]**2``.

    Why: folding turns the trained weight ``W`` (followed by BN with frozen statistics, the
    per-channel affine ``s * (W x) + c``) into ``W' = s W``. The loss is the same function of
    ``W'`` as of ``W``, but ``dL/dW' = (dL/dW) / s``, so a plain SGD step on ``W'`` moves the
    layer's output ``1 / s**2`` times as far as the same step on ``W`` did. Channels with a
    small ``s`` (large running variance) take steps many times too large, and the network
    that trained well up to the fold diverges right after it (loss up, accuracy to chance,
    NaN on some CPUs). Scaling the gradient by ``s**2`` (before the optimizer adds weight
    decay) makes SGD with momentum and weight decay on ``W'`` step for step SGD on ``W`` with
    BN frozen (running statistics and gamma fixed, the shift trained through the bias; exact
    in float arithmetic, the weight quantizer then acting on ``W'``), the usual QAT
    fold-and-freeze step. Returns how many weights were preconditioned."""
    count = 0
    for m in model.modules():
        if isinstance(m, ConvBN) and m.folded and m.fold_scale is not None:
            w = m.accumulating_conv.weight
            if w.grad is not None:
                w.grad.mul_((m.fold_scale ** 2).to(w.grad.device, w.grad.dtype).view(-1, *([1] * (w.dim() - 1))))
                count += 1
    return count


def is_folded(model: nn.Module) -> bool:
    """True when the model has ConvBN units and all of them are folded."""
    units = [m for m in model.modules() if isinstance(m, ConvBN)]
    return bool(units) and all(m.folded for m in units)


class GlobalSumPool(nn.Module):
    """Global average pooling as an exact integer op: ``sum(x) * 2**-divisor_log2``.

    ``divisor_log2 = ceil(log2(H * W))``, so for power-of-two feature maps it is the
    average and otherwise a fixed power-of-two scale the network learns around.
    Input (B, C, H, W); output (B, C), requantized by ``act``.
    """

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self.divisor_log2 = None

    def forward(self, x):
        x = quant.value(x)
        self.divisor_log2 = math.ceil(math.log2(x.shape[2] * x.shape[3]))
        return self.act(x.sum(dim=(2, 3)) * 2.0 ** -self.divisor_log2)
