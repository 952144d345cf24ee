"""FLOPs and parameter accounting, dense vs low-rank, inference and training.

Counted: the multiply-accumulates (MACs) of every conv and linear layer the
factory made (plus any ``extra_macs`` a module declares, e.g. attention products).
Not counted: BatchNorm (folded away), activations, additions, pooling.
FLOPs = 2 x MACs. Parameters are weight counts (biases excluded).

Per layer, with P_in / P_out input / output positions (H*W, or tokens):

* dense conv:  N * (C/groups) * k^2 * P_out;          linear: N * C * P
* Tucker-2:    C*R1*P_in + R1*R2*k^2*P_out + R2*N*P_out
* low-rank 1x1 conv (stride in U1): (C*R + R*N) * P_out;  low-rank linear: (C*R + R*N) * P

Training = forward + gradient w.r.t. the input + gradient w.r.t. the weights; each
backward product costs the forward MACs, except that the network's first layer needs
no input gradient: 3 x forward (2 x for the first layer's first stage).

Extra MACs: a module of the model (not made by the factory) that defines
``extra_macs(tokens) -> int`` declares products the layer table would miss, e.g. a
self-attention module's Q K^T and A V matmuls (``2 * T^2 * D`` per image).
``measure_shapes`` calls it with the module's input positions (T of a (B, T, D)
input, H*W of a (B, C, H, W) one) and stores the result by module name in
``factory.extra``; ``table`` adds one row per entry, the same in dense and low-rank
form, and 3 x forward for training (both operands are activations that need gradients).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import LayerFactory, LayerSpec


def measure_shapes(model: nn.Module, factory: LayerFactory, input_shape) -> None:
    """Run one forward pass on zeros of ``(1, *input_shape)`` and record each layer's
    input/output positions in its spec (``in_size``, ``out_size``), and the MACs of
    modules declaring ``extra_macs`` in ``factory.extra`` (name -> MACs)."""
    handles = []
    factory.extra = {}

    def extra_hook(name):
        def record(module, args, _out):
            x = getattr(args[0], "value", args[0])
            tokens = x.shape[1] if x.dim() == 3 else int(torch.tensor(x.shape[2:]).prod())
            factory.extra[name] = int(module.extra_macs(int(tokens)))
        return record

    for name, module in model.named_modules():
        if callable(getattr(module, "extra_macs", None)):
            handles.append(module.register_forward_hook(extra_hook(name)))

    def hook(spec):
        def record(_module, args, out):
            x = getattr(args[0], "value", args[0])
            y = getattr(out, "value", out)
            if spec.kind == "conv":
                spec.in_size, spec.out_size = x.shape[2] * x.shape[3], y.shape[2] * y.shape[3]
            else:
                spec.in_size = spec.out_size = int(torch.tensor(x.shape[1:-1]).prod()) if x.dim() > 2 else 1
        return record

    for name, module in factory.modules.items():
        handles.append(module.register_forward_hook(hook(factory.specs[name])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def dense_macs(s: LayerSpec) -> int:
    """MACs of the layer in dense form."""
    if s.kind == "linear":
        return s.cin * s.cout * s.out_size
    return s.cout * (s.cin // s.groups) * s.kernel ** 2 * s.out_size


def stage_macs(s: LayerSpec, ranks=None) -> list[int]:
    """MACs of each stage of the layer with ``ranks`` (default: its own; None = dense)."""
    ranks = s.ranks if ranks is None else ranks
    if not ranks:
        return [dense_macs(s)]
    if s.kind == "conv" and s.kernel > 1:
        r1, r2 = ranks
        return [s.cin * r1 * s.in_size, r1 * r2 * s.kernel ** 2 * s.out_size, r2 * s.cout * s.out_size]
    (r,) = ranks
    return [s.cin * r * s.out_size, r * s.cout * s.out_size]


def dense_params(s: LayerSpec) -> int:
    return s.cout * (s.cin // s.groups) * s.kernel ** 2


def params(s: LayerSpec, ranks=None) -> int:
    ranks = s.ranks if ranks is None else ranks
    if not ranks:
        return dense_params(s)
    if s.kind == "conv" and s.kernel > 1:
        r1, r2 = ranks
        return s.cin * r1 + r1 * r2 * s.kernel ** 2 + r2 * s.cout
    return ranks[0] * (s.cin + s.cout)


def training_macs(stages: list[int], first: bool) -> int:
    """Forward + input-gradient + weight-gradient MACs of a layer's stages."""
    return 3 * sum(stages) - (stages[0] if first else 0)


@dataclass
class Row:
    name: str
    kind: str          # dense | tucker2 | lowrank
    geometry: str
    ranks: str
    dense_macs: int
    macs: int
    dense_train_macs: int
    train_macs: int
    dense_params: int
    params: int


def extra_macs(factory: LayerFactory) -> int:
    """Total MACs declared by ``extra_macs`` modules (after ``measure_shapes``)."""
    return sum(getattr(factory, "extra", {}).values())


def table(factory: LayerFactory, extra: dict | None = None) -> list[Row]:
    """Per-layer accounting rows in construction order, then one row per extra-MACs
    entry: those ``measure_shapes`` recorded in ``factory.extra`` and ``extra`` (a name
    -> MACs map of products counted outside the factory's layers; same in dense and
    low-rank form)."""
    extra = {**getattr(factory, "extra", {}), **(extra or {})}
    rows = []
    for i, s in enumerate(factory.specs.values()):
        stages = stage_macs(s)
        kind = "dense" if not s.ranks else ("tucker2" if len(s.ranks) == 2 else "lowrank")
        geometry = (f"{s.cin}->{s.cout} k{s.kernel} s{s.stride}" + (f" g{s.groups}" if s.groups > 1 else "")
                    if s.kind == "conv" else f"{s.cin}->{s.cout} linear")
        rows.append(Row(s.name, kind, geometry, "x".join(map(str, s.ranks)) if s.ranks else "-",
                        dense_macs(s), sum(stages), training_macs([dense_macs(s)], i == 0),
                        training_macs(stages, i == 0), dense_params(s), params(s)))
    for name, macs in extra.items():
        rows.append(Row(name, "other", "", "-", macs, macs, 3 * macs, 3 * macs, 0, 0))
    return rows


def totals(rows: list[Row]) -> dict:
    """Network totals and reduction ratios (dense / low-rank)."""
    t = {k: sum(getattr(r, k) for r in rows) for k in
         ("dense_macs", "macs", "dense_train_macs", "train_macs", "dense_params", "params")}
    t["inference_flops"], t["dense_inference_flops"] = 2 * t["macs"], 2 * t["dense_macs"]
    t["training_flops"], t["dense_training_flops"] = 2 * t["train_macs"], 2 * t["dense_train_macs"]
    t["inference_reduction"] = t["dense_macs"] / t["macs"]
    t["training_reduction"] = t["dense_train_macs"] / t["train_macs"]
    t["params_reduction"] = t["dense_params"] / t["params"]
    return t


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table with a totals line."""
    head = f"{'layer':<22}{'type':<9}{'geometry':<20}{'ranks':<8}{'dense MACs':>12}{'MACs':>12}" \
           f"{'ratio':>7}{'dense par':>11}{'params':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<22}{r.kind:<9}{r.geometry:<20}{r.ranks:<8}{r.dense_macs:>12,}{r.macs:>12,}"
                     f"{r.dense_macs / max(r.macs, 1):>7.2f}{r.dense_params:>11,}{r.params:>9,}")
    t = totals(rows)
    lines.append("-" * len(head))
    lines.append(f"{'total':<59}{t['dense_macs']:>12,}{t['macs']:>12,}{t['inference_reduction']:>7.2f}"
                 f"{t['dense_params']:>11,}{t['params']:>9,}")
    lines.append(f"inference FLOPs {t['inference_flops']:,} vs dense {t['dense_inference_flops']:,} "
                 f"({t['inference_reduction']:.2f}x fewer); training FLOPs {t['training_flops']:,} vs dense "
                 f"{t['dense_training_flops']:,} ({t['training_reduction']:.2f}x fewer)")
    return "\n".join(lines)
