"""CIFAR-style ResNets (He et al. 2016): ResNet-8/20/32/56/110, widths 16/32/64.

Block structure, chosen so that every tensor in the deployed graph is an integer
tensor with a power-of-two scale (design section 3)::

    h   = relu_q(BN(conv1(x)))                      conv1: 3x3, stride s
    y   = res_q(BN(conv2(h)))                       conv2: 3x3
    sc  = res_q(x)  or  res_q(BN(conv1x1_s(x)))     shortcut, same requantizer as y
    out = relu_q(y + sc)

``res_q`` is one signed requantizer shared by both branches, so the addition is of
integers at one scale. The downsampling shortcut is a 1x1 conv + BN (option B).
"""
from __future__ import annotations

import torch.nn as nn

from .. import quant
from ..blocks import ConvBN, GlobalSumPool, LayerFactory

DEPTHS = {"resnet8": 1, "resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18}


class BasicBlock(nn.Module):
    def __init__(self, f: LayerFactory, name: str, cin: int, cout: int, stride: int, factorize_shortcut: bool):
        super().__init__()
        qc = f.qc
        self.name = name
        self.conv1 = ConvBN(f.conv(f"{name}.conv1", cin, cout, 3, stride, 1), cout, quant.relu(qc))
        self.conv2 = ConvBN(f.conv(f"{name}.conv2", cout, cout, 3, 1, 1), cout)
        self.res_quant = quant.act(qc, signed=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = ConvBN(f.conv(f"{name}.shortcut", cin, cout, 1, stride, 0,
                                          factorizable=factorize_shortcut), cout)
        self.out_relu = quant.relu(qc)

    def forward(self, x):
        y = self.res_quant(self.conv2(self.conv1(x)))
        sc = self.res_quant(x if self.shortcut is None else self.shortcut(x))
        return self.out_relu(y + sc)

    def export(self, e, x: str) -> str:
        n = self.name
        h = e.conv(f"{n}.conv1", self.conv1, x)
        y = e.conv(f"{n}.conv2", self.conv2, h, out_quant=self.res_quant, call=0)
        sc = (e.requant(f"{n}.shortcut", x, self.res_quant, call=1) if self.shortcut is None
              else e.conv(f"{n}.shortcut", self.shortcut, x, out_quant=self.res_quant, call=1))
        return e.add(f"{n}.add", y, sc, self.out_relu)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images. Input (B, in_channels, H, W) -> logits (B, classes)."""

    def __init__(self, depth_blocks: int, f: LayerFactory, num_classes: int = 10, in_channels: int = 3,
                 factorize_first: bool = False, factorize_classifier: bool = False,
                 factorize_shortcut: bool = False, width: int = 16):
        super().__init__()
        qc = f.qc
        self.input_quant = quant.input_quant(qc)
        self.stem = ConvBN(f.conv("conv1", in_channels, width, 3, 1, 1, factorizable=factorize_first),
                           width, quant.relu(qc))
        blocks, cin = [], width
        for stage, (cout, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)], start=1):
            for i in range(depth_blocks):
                blocks.append(BasicBlock(f, f"layer{stage}.{i}", cin, cout, stride if i == 0 else 1,
                                         factorize_shortcut))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalSumPool(quant.act(qc, signed=False))
        self.fc = f.linear("fc", cin, num_classes, factorizable=factorize_classifier)

    def forward(self, x):
        x = self.blocks(self.stem(self.input_quant(x)))
        return quant.value(self.fc(self.pool(x)))

    def export(self, e) -> str:
        """Describe the integer dataflow to a :class:`model.export.Emitter`."""
        x = e.conv("conv1", self.stem, e.input(self.input_quant))
        for block in self.blocks:
            x = block.export(e, x)
        return e.linear("fc", self.fc, e.global_pool("pool", x, self.pool))


def build(name: str, f: LayerFactory, num_classes: int, in_channels: int, **options) -> CifarResNet:
    return CifarResNet(DEPTHS[name], f, num_classes, in_channels, **options)
