"""Training checkpoints: atomic writes, ``weights_only`` loads, exact resume.

A checkpoint is one ``torch.save`` of plain containers of tensors and primitives::

    format        "elrt-checkpoint", version 1
    epoch         epochs completed
    config        the run configuration (dict)
    ranks         {layer: [R1, R2] or [R]}
    bn_folded     whether BatchNorm is folded into the convs
    fold_scales   {ConvBN unit: gamma / sqrt(var + eps) of its folded BN} (after the fold;
                  the training keeps preconditioning those weights, blocks.precondition_folded_grads)
    model         model.state_dict()
    quant_state   Brevitas activation-scale statistics that state_dict() does not hold
                  (stats-collection counter, running buffer, raw value)
    optimizer     optimizer.state_dict()
    scheduler     {"step": global step}
    rng           torch / numpy / python / cuda generator states
    metrics       per-epoch metrics so far

so ``torch.load(path, weights_only=True)`` can read it. :func:`save` refuses a payload whose
model holds a NaN or infinite value (a diverged run never overwrites its last finite
checkpoint), and :func:`load` checks the type of every field before anyone uses it. Brevitas' runtime-statistics
scalings keep their step counter in a Python attribute and save a derived value,
so ``quant_state`` is what makes a resumed run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.nn as nn

from artifact.files import atomic_write

from .config import UsageError

FORMAT, VERSION = "elrt-checkpoint", 1
FILENAME = "checkpoint.pt"


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt, or does not match the run."""


# ----------------------------------------------------------------------------- RNG and quantizer state

def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": _to_lists(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _stats_scalings(model: nn.Module):
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]


def quant_state(model: nn.Module) -> dict:
    """Per runtime-statistics scaling: its counter, running buffer and raw learned value."""
    try:
        scalings = _stats_scalings(model)
    except ImportError:
        return {}
    return {n: {"counter": int(m.counter), "buffer": m.buffer.detach().clone(), "value": m.value.detach().clone()}
            for n, m in scalings}


def load_quant_state(model: nn.Module, state: dict) -> None:
    scalings = dict(_stats_scalings(model)) if state else {}
    if set(scalings) != set(state):
        raise CheckpointError("checkpoint quantizer state does not match the model; was it written by another "
                              "model or version?")
    with torch.no_grad():
        for n, s in state.items():
            m = scalings[n]
            m.counter = int(s["counter"])
            m.buffer.copy_(s["buffer"])
            m.value.copy_(s["value"])


# ----------------------------------------------------------------------------- save / load

def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def save(path: str, payload: dict) -> None:
    """Write ``payload`` (plus format tags) atomically to ``path``; ValueError (nothing
    written) when its model state is not finite."""
    bad = non_finite(payload.get("model", {}))
    if bad:
        raise ValueError(f"refusing to save a checkpoint with non-finite values (e.g. {bad[0]})")
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _check_fields(ck: dict, path: str) -> None:
    def damaged(what):
        raise CheckpointError(f"checkpoint {path} is damaged ({what}); start a new run or use an intact run folder")

    if type(ck["epoch"]) is not int or ck["epoch"] < 0:
        damaged(f"epoch is {ck['epoch']!r}, not a number of epochs")
    if not isinstance(ck["config"], dict) or not isinstance(ck["config"].get("model"), str):
        damaged("its configuration is not a mapping naming a model")
    ranks = ck["ranks"]
    if not isinstance(ranks, dict) or not all(
            isinstance(k, str) and isinstance(r, (list, tuple)) and r
            and all(type(v) is int for v in r) for k, r in ranks.items()):
        damaged("ranks are not {layer: [integers]}")
    if not isinstance(ck["bn_folded"], bool):
        damaged("bn_folded is not true/false")
    if not isinstance(ck["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ck["model"].values()):
        damaged("the model state is not a mapping of tensors")
    if not isinstance(ck["optimizer"], dict):
        damaged("the optimizer state is not a mapping")
    for key in ("quant_state", "fold_scales", "metrics", "rng", "scheduler"):
        if key in ck and not isinstance(ck[key], dict):
            damaged(f"{key} is not a mapping")
    if "fold_scales" in ck and not all(isinstance(v, torch.Tensor) for v in ck["fold_scales"].values()):
        damaged("fold_scales are not tensors")
    if not isinstance(ck.get("metrics", {}).get("epochs", []), list):
        damaged("its metrics are not a list of epochs")
    bad = non_finite(ck["model"])
    if bad:
        damaged(f"{bad[0]} holds NaN or infinite values")


def load(path: str, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save` (``weights_only=True``); CheckpointError if unusable."""
    if os.path.isdir(path):
        folder, path = path, os.path.join(path, FILENAME)
        if not os.path.exists(path):
            raise CheckpointError(f"no checkpoint in {folder} (no {FILENAME}): the run stopped before its first "
                                  f"epoch finished, or this is not a run folder; nothing to resume, start the run "
                                  f"again without --resume")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}; --resume needs a run folder written by train_qat.py")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason}); start a new run or "
                              f"resume from an intact run folder") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ELRT training checkpoint")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ck.get('version')}, this code reads "
                              f"version {VERSION}")
    missing = [k for k in ("epoch", "config", "ranks", "bn_folded", "model", "optimizer") if k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete")
    _check_fields(ck, path)
    return ck


def load_model_state(model: nn.Module, state: dict, path: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with a one-line CheckpointError on any mismatch."""
    try:
        result = model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(l.strip() for l in first[:3])[:200]
        raise CheckpointError(f"{path} does not match the configured model ({detail}); resume with the "
                              f"configuration it was trained with") from None
    if getattr(result, "missing_keys", None) or getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{path} does not match the configured model")


# ----------------------------------------------------------------------------- trained model (for export)

def load_trained_model(run_dir):
    """The final model of a training run, rebuilt from its checkpoint (for ``model.export``).

    Returns ``(model, cfg, in_shape, info)``: the model in eval mode on the CPU (BatchNorm
    folded when the run folded it), the run configuration, the input shape (C, H, W) and a
    plain ``info`` dict for the artifact manifest (name, data, ranks, bit widths, epochs,
    FLOPs reduction, test accuracy). Raises CheckpointError."""
    from .blocks import fold_batchnorm
    from .build import build

    run_dir = str(run_dir)
    ck = load(run_dir)
    cfg = ck["config"]
    try:
        in_shape = tuple(int(v) for v in ck.get("in_shape") or _in_shape(cfg))
        num_classes = int(ck.get("num_classes", 10))
        if len(in_shape) != 3 or min(in_shape) < 1 or num_classes < 1:
            raise ValueError(f"input shape {in_shape}, {num_classes} classes")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint in {run_dir} is damaged (input shape / classes: {e})") from None
    ranks = {str(k): tuple(int(v) for v in r) for k, r in ck["ranks"].items()}
    try:
        built = build(cfg, in_shape, num_classes, ranks=ranks)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot rebuild the model of {run_dir} ({e})") from None
    model = built.model
    if ck["bn_folded"]:
        model.eval()
        fold_batchnorm(model)
    load_model_state(model, ck["model"], os.path.join(run_dir, FILENAME))
    load_quant_state(model, ck.get("quant_state", {}))
    model.eval()
    history = ck.get("metrics", {}).get("epochs", [])
    info = {"name": cfg["model"], "data": cfg.get("data"), "in_shape": list(in_shape), "num_classes": num_classes,
            "dense": bool(cfg.get("dense")), "ranks": {k: list(v) for k, v in ranks.items()},
            "quant": bool(cfg.get("quant", True)), "weight_bits": cfg.get("weight_bits"),
            "act_bits": cfg.get("act_bits"), "input_bits": cfg.get("input_bits"),
            "regularizer": cfg.get("regularizer"), "epochs": int(ck["epoch"]), "bn_folded": bool(ck["bn_folded"]),
            "inference_reduction": float(built.totals["inference_reduction"]),
            "test_acc": _last_test_acc(history),
            "seed": cfg.get("seed"), "run": os.path.basename(os.path.abspath(run_dir))}
    from .data import preprocess
    if preprocess(cfg.get("data")):
        info["preprocess"] = preprocess(cfg.get("data"))
    return model, cfg, in_shape, info


def _last_test_acc(history: list):
    last = history[-1] if history else None
    acc = last.get("test_acc") if isinstance(last, dict) else None
    return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def _in_shape(cfg: dict) -> tuple:
    if cfg.get("data") == "synthetic":
        return tuple(cfg["synthetic_shape"])
    return {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}.get(cfg.get("data"), (3, 32, 32))
