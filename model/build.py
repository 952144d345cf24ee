"""From a run configuration to a network: ranks, quantization, FLOPs accounting.

``build(cfg, in_shape, num_classes)`` is what the training script, the exporter and
the benchmarks call, so a configuration always builds the same network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from . import flops
from .blocks import LayerFactory
from .nets import build_model
from .quant import QuantConfig
from .ranks import RankError, check_ranks, select_ranks

NET_OPTIONS = ("factorize_first", "factorize_classifier", "factorize_shortcut")


@dataclass
class Built:
    model: nn.Module
    factory: LayerFactory
    ranks: dict          # layer name -> tuple of ranks ({} for the dense baseline)
    rows: list           # flops.Row per layer

    @property
    def totals(self) -> dict:
        return flops.totals(self.rows)


def quant_config(cfg: dict) -> QuantConfig:
    """The quantization of ``cfg``; a configuration without ``quant_impl`` (one written before
    the option existed) gets the default implementation, which trains and exports the same model."""
    return QuantConfig(bool(cfg.get("quant", True)), cfg.get("weight_bits", 8), cfg.get("act_bits", 8),
                       cfg.get("input_bits", 8), cfg.get("quant_impl", QuantConfig.impl))


def choose_ranks(cfg: dict, in_shape, num_classes: int) -> dict:
    """Ranks from the config: {} if ``dense``, the explicit ``ranks`` if given, else
    ranks selected for ``flops_reduction``. Raises RankError / ValueError."""
    if cfg.get("dense"):
        return {}
    options = {k: cfg[k] for k in NET_OPTIONS if k in cfg}
    probe, factory = build_model(cfg["model"], num_classes, in_shape[0], QuantConfig(enabled=False), **options)
    flops.measure_shapes(probe, factory, in_shape)
    specs = list(factory.specs.values())
    if cfg.get("ranks"):
        check_ranks(specs, cfg["ranks"])
        by_name = factory.specs
        return {n: tuple(r) if isinstance(r, (list, tuple)) else (r,) * (2 if by_name[n].kernel > 1 else 1)
                for n, r in cfg["ranks"].items()}
    target = cfg.get("flops_reduction")
    if target is None:
        raise RankError("give flops_reduction, ranks, or dense: true")
    return select_ranks(specs, float(target), extra_macs=flops.extra_macs(factory),
                        multiple=int(cfg.get("rank_multiple", 1)))


def build(cfg: dict, in_shape, num_classes: int, ranks: dict | None = None) -> Built:
    """The configured network for inputs of shape ``in_shape`` (C, H, W).

    ``ranks`` (e.g. from a checkpoint) skips rank selection."""
    if ranks is None:
        ranks = choose_ranks(cfg, in_shape, num_classes)
    options = {k: cfg[k] for k in NET_OPTIONS if k in cfg}
    model, factory = build_model(cfg["model"], num_classes, in_shape[0], quant_config(cfg), ranks, **options)
    flops.measure_shapes(model, factory, in_shape)
    return Built(model, factory, ranks, flops.table(factory))
