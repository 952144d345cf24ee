"""Building blocks shared by the networks: the layer factory, conv+BN units, pooling.

``LayerFactory`` decides, per named layer, whether it is dense or low-rank and with
which ranks; the networks only name their layers. It also records every layer it
makes (``specs``), which the FLOPs accounting and rank selection read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    @property
    def accumulating_conv(self) -> nn.Module:
        """The conv that produces the accumulator (U2 of a factorized layer)."""
        return getattr(self.conv, "last_stage", self.conv)

    def fold(self) -> None:
        """Fold BN (running statistics) into the accumulating conv's weight and bias."""
        if self.folded:
            return
        from brevitas.nn.utils import merge_bn
        merge_bn(self.accumulating_conv, self.bn)
        self.bn = nn.Identity()
        self.folded = True


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ConvBN of ``model`` in place; returns how many were folded."""
    units = [m for m in model.modules() if isinstance(m, ConvBN) and not m.folded]
    for unit in units:
        unit.fold()
    return len(units)


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
