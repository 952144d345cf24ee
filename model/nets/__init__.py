"""Model zoo. ``build_model`` is the one entry point; ``MODELS`` lists the names.

Every network takes a :class:`~model.blocks.LayerFactory`, which makes each named
layer dense or low-rank; the first conv and the classifier stay dense unless the
options ``factorize_first`` / ``factorize_classifier`` say otherwise.
"""
from __future__ import annotations

import torch.nn as nn

from ..blocks import LayerFactory
from ..quant import QuantConfig
from . import mobilenetv2, resnet_cifar, resnet_imagenet, vit

_BUILDERS = {name: resnet_cifar.build for name in resnet_cifar.DEPTHS}
MODELS = tuple(_BUILDERS)


def register(names, builder) -> None:
    """Add networks to the zoo: ``builder(name, factory, num_classes, in_channels, **options)``."""
    global MODELS
    for name in names:
        _BUILDERS[name] = builder
    MODELS = tuple(_BUILDERS)


def build_model(name: str, num_classes: int, in_channels: int, qc: QuantConfig, ranks: dict | None = None,
                **options) -> tuple[nn.Module, LayerFactory]:
    """Build network ``name``; returns the model and the factory that recorded its layers."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_BUILDERS))}")
    factory = LayerFactory(qc, dict(ranks or {}))
    model = _BUILDERS[name](name, factory, num_classes, in_channels, **options)
    unknown = set(factory.ranks) - {n for n, s in factory.specs.items() if s.factorizable}
    if unknown:
        raise ValueError(f"ranks given for layers that {name} does not have or cannot factorize: "
                         f"{', '.join(sorted(unknown))}")
    return model, factory


register(["mobilenetv2"], mobilenetv2.build)
register(resnet_imagenet.LAYOUTS, resnet_imagenet.build)
register(vit.CONFIGS, vit.build)
