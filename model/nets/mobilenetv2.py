"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 3x3 stem, and the
second stage at stride 1, so a 32x32 input reaches the head at 4x4.

Inverted residual block (expansion t), written for the integer contract (design
section 3; every tensor is an integer tensor with a power-of-two scale)::

    h   = relu_q(BN(expand(x)))          expand: 1x1, C -> tC      (absent when t = 1)
    h   = relu_q(BN(dw(h)))              dw: 3x3 depthwise (groups = tC), stride s
    y   = BN(project(h))                 project: 1x1, tC -> C'    (linear bottleneck)
    out = out_q(res_q(y) + res_q(x))     if s = 1 and C = C'  (res_q shared: one scale)
    out = out_q(y)                       otherwise

ReLU6 is ``relu_q``: a ReLU whose unsigned requantizer saturates at a learned
power-of-two range. The 1x1 convs (expand, project, the 1280-wide head conv) are
factorized as matrices (``LowRankConv2d``); the depthwise convs stay dense (a
depthwise kernel has no channel mixing to factorize).
"""
from __future__ import annotations

import torch.nn as nn

from .. import quant
from ..blocks import ConvBN, GlobalSumPool, LayerFactory

# (expansion t, output channels c, repeats n, first stride s); CIFAR: stage 2 at stride 1.
CIFAR_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, f: LayerFactory, name: str, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        qc, hidden = f.qc, cin * expansion
        self.name = name
        self.expand = (ConvBN(f.conv(f"{name}.expand", cin, hidden, 1), hidden, quant.relu(qc))
                       if expansion != 1 else nn.Identity())
        self.dw = ConvBN(f.conv(f"{name}.dw", hidden, hidden, 3, stride, 1, groups=hidden), hidden,
                         quant.relu(qc))
        self.project = ConvBN(f.conv(f"{name}.project", hidden, cout, 1), cout)
        self.residual = stride == 1 and cin == cout
        self.res_quant = quant.act(qc, signed=True)
        self.out_quant = quant.act(qc, signed=True) if self.residual else nn.Identity()

    def forward(self, x):
        y = self.res_quant(self.project(self.dw(self.expand(x))))
        if self.residual:
            y = self.out_quant(y + self.res_quant(x))
        return y

    def export(self, e, x: str) -> str:
        n = self.name
        h = x if isinstance(self.expand, nn.Identity) else e.conv(f"{n}.expand", self.expand, x)
        h = e.conv(f"{n}.dw", self.dw, h)
        y = e.conv(f"{n}.project", self.project, h, out_quant=self.res_quant, call=0)
        if not self.residual:
            return y
        sc = e.requant(f"{n}.shortcut", x, self.res_quant, call=1)
        return e.add(f"{n}.add", y, sc, self.out_quant)


class MobileNetV2(nn.Module):
    """Input (B, in_channels, H, W) -> logits (B, classes)."""

    def __init__(self, f: LayerFactory, num_classes: int = 10, in_channels: int = 3,
                 factorize_first: bool = False, factorize_classifier: bool = False,
                 factorize_shortcut: bool = False, width: int = 32, last_channels: int = 1280):
        super().__init__()
        del factorize_shortcut  # MobileNetV2 has identity shortcuts only
        qc = f.qc
        self.input_quant = quant.input_quant(qc)
        self.stem = ConvBN(f.conv("conv1", in_channels, width, 3, 1, 1, factorizable=factorize_first),
                           width, quant.relu(qc))
        blocks, cin = [], width
        for stage, (t, c, n, s) in enumerate(CIFAR_CONFIG, start=1):
            for i in range(n):
                blocks.append(InvertedResidual(f, f"layer{stage}.{i}", cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(f.conv("conv_last", cin, last_channels, 1), last_channels, quant.relu(qc))
        self.pool = GlobalSumPool(quant.act(qc, signed=False))
        self.fc = f.linear("fc", last_channels, num_classes, factorizable=factorize_classifier)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(self.input_quant(x))))
        return quant.value(self.fc(self.pool(x)))

    def export(self, e) -> str:
        """Describe the integer dataflow to a :class:`model.export.Emitter`."""
        x = e.conv("conv1", self.stem, e.input(self.input_quant))
        for block in self.blocks:
            x = block.export(e, x)
        x = e.conv("conv_last", self.head, x)
        return e.linear("fc", self.fc, e.global_pool("pool", x, self.pool))


def build(name: str, f: LayerFactory, num_classes: int, in_channels: int, **options) -> MobileNetV2:
    return MobileNetV2(f, num_classes, in_channels, **options)
