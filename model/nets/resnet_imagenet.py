"""ImageNet-style ResNets (He et al. 2016): ResNet-18/34 (basic blocks) and ResNet-50
(bottlenecks, stride on the 3x3 conv as in torchvision's "v1.5").

Stem: 7x7 conv stride 2 + BN + ReLU, then 3x3 max pool stride 2 (max pooling keeps the
integer tensor and its scale). 3x3 convs become Tucker-2 layers, 1x1 convs (bottleneck
reduce/expand) matrix low-rank layers; the stem, the classifier and the downsampling
shortcuts stay dense unless ``factorize_first`` / ``factorize_classifier`` /
``factorize_shortcut`` say otherwise.

Residual additions follow resnet_cifar (design section 3): both branches pass one
shared signed requantizer ``res_q`` so the addition is of integers at one scale, then
``relu_q``; global pooling is the integer ``GlobalSumPool``.
"""
from __future__ import annotations

import torch.nn as nn

from .. import quant
from ..blocks import ConvBN, GlobalSumPool, LayerFactory

LAYOUTS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
           "resnet50": ("bottleneck", [3, 4, 6, 3])}


class _Residual(nn.Module):
    """Shared tail: ``relu_q(res_q(body(x)) + res_q(shortcut(x)))``."""

    def _tail(self, f: LayerFactory, name: str, cin: int, cout: int, stride: int, factorize_shortcut: bool):
        qc = f.qc
        self.name = name
        self.res_quant = quant.act(qc, signed=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = ConvBN(f.conv(f"{name}.shortcut", cin, cout, 1, stride, 0,
                                          factorizable=factorize_shortcut), cout)
        self.out_relu = quant.relu(qc)

    def forward(self, x):
        y = self.res_quant(self.body(x))
        sc = self.res_quant(x if self.shortcut is None else self.shortcut(x))
        return self.out_relu(y + sc)

    def export(self, e, x: str) -> str:
        n, units = self.name, list(self.body)
        h = x
        for i, unit in enumerate(units[:-1], start=1):
            h = e.conv(f"{n}.conv{i}", unit, h)
        y = e.conv(f"{n}.conv{len(units)}", units[-1], h, out_quant=self.res_quant, call=0)
        sc = (e.requant(f"{n}.shortcut", x, self.res_quant, call=1) if self.shortcut is None
              else e.conv(f"{n}.shortcut", self.shortcut, x, out_quant=self.res_quant, call=1))
        return e.add(f"{n}.add", y, sc, self.out_relu)


class BasicBlock(_Residual):
    expansion = 1

    def __init__(self, f: LayerFactory, name: str, cin: int, planes: int, stride: int, factorize_shortcut: bool):
        super().__init__()
        self.body = nn.Sequential(
            ConvBN(f.conv(f"{name}.conv1", cin, planes, 3, stride, 1), planes, quant.relu(f.qc)),
            ConvBN(f.conv(f"{name}.conv2", planes, planes, 3, 1, 1), planes))
        self._tail(f, name, cin, planes, stride, factorize_shortcut)


class Bottleneck(_Residual):
    expansion = 4

    def __init__(self, f: LayerFactory, name: str, cin: int, planes: int, stride: int, factorize_shortcut: bool):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            ConvBN(f.conv(f"{name}.conv1", cin, planes, 1), planes, quant.relu(f.qc)),
            ConvBN(f.conv(f"{name}.conv2", planes, planes, 3, stride, 1), planes, quant.relu(f.qc)),
            ConvBN(f.conv(f"{name}.conv3", planes, cout, 1), cout))
        self._tail(f, name, cin, cout, stride, factorize_shortcut)


class ImageNetResNet(nn.Module):
    """Input (B, in_channels, H, W) -> logits (B, classes); H, W >= 32 keep every stage non-empty."""

    def __init__(self, block: str, layers: list[int], f: LayerFactory, num_classes: int = 1000,
                 in_channels: int = 3, factorize_first: bool = False, factorize_classifier: bool = False,
                 factorize_shortcut: bool = False, width: int = 64):
        super().__init__()
        qc = f.qc
        cls = BasicBlock if block == "basic" else Bottleneck
        self.input_quant = quant.input_quant(qc)
        self.stem = ConvBN(f.conv("conv1", in_channels, width, 7, 2, 3, factorizable=factorize_first),
                           width, quant.relu(qc))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], width
        for stage, n in enumerate(layers, start=1):
            planes = width * 2 ** (stage - 1)
            for i in range(n):
                blocks.append(cls(f, f"layer{stage}.{i}", cin, planes, 2 if (i == 0 and stage > 1) else 1,
                                  factorize_shortcut))
                cin = planes * cls.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalSumPool(quant.act(qc, signed=False))
        self.fc = f.linear("fc", cin, num_classes, factorizable=factorize_classifier)

    def forward(self, x):
        x = self.blocks(self.maxpool(self.stem(self.input_quant(x))))
        return quant.value(self.fc(self.pool(x)))

    def export(self, e) -> str:
        """Describe the integer dataflow to a :class:`model.export.Emitter`."""
        x = e.conv("conv1", self.stem, e.input(self.input_quant))
        x = e.maxpool("maxpool", x, self.maxpool)
        for block in self.blocks:
            x = block.export(e, x)
        return e.linear("fc", self.fc, e.global_pool("pool", x, self.pool))


def build(name: str, f: LayerFactory, num_classes: int, in_channels: int, **options) -> ImageNetResNet:
    block, layers = LAYOUTS[name]
    return ImageNetResNet(block, layers, f, num_classes, in_channels, **options)
