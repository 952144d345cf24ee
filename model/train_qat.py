#!/usr/bin/env python
"""Train a low-rank (Tucker-2) CNN from scratch with Brevitas quantization-aware training.

    python model/train_qat.py                          # defaults: model/default.yaml
    python model/train_qat.py --epochs 3 --flops-reduction 3 --weight-bits 4
    python model/train_qat.py --config my.yaml --data cifar10 --data-dir ~/cifar-10-batches-py
    python model/train_qat.py --resume runs/NAME       # continue an interrupted run exactly
    torchrun --nproc_per_node 2 model/train_qat.py ... # data-parallel (gloo on CPU, nccl on GPU)

Loss: cross entropy + ``regularizers.orthogonality_loss`` (DSO by default) on the factors.
The network trains with BatchNorm; after ``fold_epoch(cfg)`` epochs (``fold_bn_at * epochs``
rounded half up) BatchNorm's statistics are recomputed for the current weights and it is
folded into the preceding convs (``blocks.fold_batchnorm``), the optimizer is rebuilt over
the new parameters and training continues, each folded weight's gradient scaled by the
folded BN scale squared (``blocks.precondition_folded_grads``: the steps a frozen BN would
have given; without it the run diverged after the fold), so the final model is
integer-deployable. See docs/method.md section 2a.

A NaN/inf loss stops the run before its step is applied, a non-finite model is never saved
(``TrainingDiverged``: one line, exit 2; the last finite checkpoint stays, no artifact). An
interrupt (Ctrl-C, exit 130) says which epoch's checkpoint is saved, or that none is yet.

The run folder (``out_dir/run_name``) holds config.yaml, checkpoint.pt (every epoch),
metrics.json, metrics.csv, curves.png, flops.json and, with ``export: true``, the integer
artifact (``artifact/``, written by ``model.export.export_run``). Every file is written
atomically. Bad input ends with a one-line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):                     # run as a script: python model/train_qat.py
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
        sys.path.pop(0)                           # model/ itself must not shadow top-level modules
    sys.path.insert(0, os.path.dirname(_here))

import dataclasses
import math
import random
import time
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from artifact.cli import UsageError as CliUsageError
from artifact.cli import check_out_dir, one_line
from artifact.files import atomic_write_text
from model import checkpoint as ckpt
from model import config as config_mod
from model import data as data_mod
from model import flops, metrics, regularizers
from model.blocks import (fold_batchnorm, fold_scales, is_folded, precondition_folded_grads,
                          recalibrate_batchnorm, set_fold_scales)
from model.build import build
from model.config import ConfigError, UsageError
from model.data import DataError
from model.ranks import RankError

USER_ERRORS = (CliUsageError, DataError, RankError)   # CliUsageError: also model.config.UsageError


class TrainingDiverged(UsageError):
    """The loss (or the model) became NaN or infinite; the run stopped without saving it."""


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt, with a message that says what was saved and how to continue."""

    def __init__(self, message: str, run_dir: str | None = None, saved_epoch: int | None = None):
        super().__init__(message)
        self.message, self.run_dir, self.saved_epoch = message, run_dir, saved_epoch

    def __str__(self) -> str:
        return self.message
PLOT_EVERY_S = 30.0          # curves.png is redrawn at most this often during a run (and at its end)


# ----------------------------------------------------------------------------- distributed

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False          # this call initialised the process group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def _init_distributed(cfg: dict) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    owned = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg["device"] == "cuda" else "gloo")
        owned = True
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)
    if cfg["device"] == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def _all_sum(values: list[float], d: Dist, device) -> list[float]:
    if not d.on:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(d: Dist) -> None:
    if d.on:
        import torch.distributed as dist
        dist.barrier()


# ----------------------------------------------------------------------------- pieces

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """SGD with momentum; weight decay on conv/linear weights only (not biases, BN, quantizer scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 and name.endswith("weight") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])


class Schedule:
    """Per-step learning rate: linear warm-up, then cosine / step / constant."""

    def __init__(self, cfg: dict, steps_per_epoch: int):
        self.base, self.kind = cfg["lr"], cfg["schedule"]
        self.total = cfg["epochs"] * steps_per_epoch
        self.warm = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        self.step_count = 0

    def lr(self, step: int | None = None) -> float:
        s = self.step_count if step is None else step
        if s < self.warm:
            return self.base * (s + 1) / self.warm
        t = (s - self.warm) / max(1, self.total - self.warm)
        if self.kind == "cosine":
            return self.base * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if self.kind == "step":
            return self.base * 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return self.base

    def apply(self, opt: torch.optim.Optimizer) -> float:
        lr = self.lr()
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"step": self.step_count, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])


def fold_epoch(cfg: dict) -> int:
    """Epochs completed before BatchNorm is folded (== epochs: folded after training).

    ``fold_bn_at * epochs`` rounded half up, on the decimal value given (0.75 x 6 = 4.5 -> 5,
    0.35 x 10 = 3.5 -> 4), never Python's round-half-to-even nor a float product's last bit."""
    exact = Fraction(str(float(cfg["fold_bn_at"]))) * int(cfg["epochs"])
    return min(int(cfg["epochs"]), math.floor(exact + Fraction(1, 2)))


RECALIBRATION_IMAGES = 4096   # BN statistics are recomputed on (at most) this many training images before the fold


def to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """A batch of inputs on ``device``, images (4-D) in channels_last order when asked for."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def calibration_batches(ds: data_mod.TensorSet, batch_size: int, device, limit: int = RECALIBRATION_IMAGES,
                        channels_last: bool = False):
    """The first ``limit`` training images, un-augmented, in order (no RNG is drawn)."""
    n = min(len(ds), limit)
    for i in range(0, n, batch_size):
        yield to_device(ds.x[i:min(i + batch_size, n)], device, channels_last)


def fold(model: nn.Module, batches=None) -> int:
    """Fold BN into the convs with the model in eval mode, then restore the mode.

    With ``batches`` (training inputs), BatchNorm's statistics are first recomputed for the
    current weights (``blocks.recalibrate_batchnorm``); without (rebuilding a checkpoint's
    folded model, whose weights are loaded after) the running statistics are used as they are."""
    was = model.training
    if batches is not None:
        recalibrate_batchnorm(model, batches)
    model.eval()
    n = fold_batchnorm(model)
    model.train(was)
    return n


@torch.no_grad()
def evaluate(model: nn.Module, ds: data_mod.TensorSet, device, batch_size: int = 512,
             channels_last: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``ds`` in eval mode."""
    was = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(ds), batch_size):
        x, y = to_device(ds.x[i:i + batch_size], device, channels_last), ds.y[i:i + batch_size].to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was)
    n = max(1, len(ds))
    return loss_sum / n, correct / n


def model_state(model: nn.Module) -> dict:
    """``state_dict`` with Brevitas' full-state option (scales kept even before any step)."""
    try:
        import brevitas.config as bcfg
    except ImportError:
        return model.state_dict()
    old = bcfg._FULL_STATE_DICT
    bcfg._FULL_STATE_DICT = True
    try:
        return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    finally:
        bcfg._FULL_STATE_DICT = old


def _default_run_name(cfg: dict) -> str:
    kind = "dense" if cfg["dense"] else ("ranks" if cfg["ranks"] else f"lr{cfg['flops_reduction']:g}x")
    return f"{cfg['model']}-{kind}-{cfg['data']}-{time.strftime('%Y%m%d-%H%M%S')}"


def _stored_config(cfg: dict) -> dict:
    """The configuration as the run folder keeps it (no invocation-only values)."""
    out = dict(cfg)
    out.update(resume=None, stop_after=0)
    return out


def _resume_config(cfg: dict, overrides: dict, ck: dict, run_dir: str) -> dict:
    stored = ck["config"]
    if not isinstance(stored, dict):
        raise ckpt.CheckpointError(f"checkpoint in {run_dir} has no usable configuration")
    for key in config_mod.ARCH_KEYS:
        if key in overrides and key in stored and cfg[key] != stored[key]:
            raise ckpt.CheckpointError(
                f"{run_dir} was trained with {key}={stored[key]!r}, not {cfg[key]!r}; resume with the same "
                f"{key.replace('_', '-')} (or leave it out), or start a new run without --resume")
    merged = {**config_mod.defaults(), **{k: v for k, v in stored.items() if k in config_mod.defaults()}}
    merged.update({k: cfg[k] for k in config_mod.INVOCATION_KEYS})
    merged.update({k: cfg[k] for k in overrides})
    merged["resume"] = run_dir
    try:
        return config_mod.validate(merged)
    except ConfigError as e:
        raise ckpt.CheckpointError(f"checkpoint configuration in {run_dir} is not usable: {e}") from None


def _export(run_dir: str) -> str:
    """Write the integer deployment artifact of the finished run (``run_dir/artifact``)."""
    from artifact import ArtifactError
    from model.export import ExportError, export_run
    try:
        return str(export_run(run_dir))
    except (ExportError, ArtifactError, CliUsageError) as e:
        raise UsageError(f"export failed: {e} (the trained run is saved in {run_dir}; retry with "
                         f"python -m model.export {run_dir})") from None


# ----------------------------------------------------------------------------- training

def train(cfg: dict | None = None) -> dict:
    """Train with ``cfg`` (any subset of the keys of model/default.yaml; the rest default).

    Returns the final metrics: test_acc, test_loss, train_acc, epochs_done, run_dir, totals
    (FLOPs/params accounting), inference_reduction, bn_folded, artifact, wall_time_s, stopped.
    Raises UsageError / DataError / RankError (one-line messages) on bad input."""
    overrides = dict(cfg or {})
    full = config_mod.resolve(overrides)
    d = _init_distributed(full)
    progress: dict = {}
    try:
        return _train(full, overrides, d, progress)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(_interrupt_message(progress), progress.get("run_dir"), progress.get("saved")) from None
    finally:
        if d.owned:
            import torch.distributed as dist
            dist.destroy_process_group()


def _interrupt_message(p: dict) -> str:
    run_dir, saved, epochs = p["run_dir"], p["saved"], p["epochs"]
    if p["phase"] == "setup" or run_dir is None:
        if saved is not None and run_dir is not None:
            return (f"interrupted before training started; nothing was written: the checkpoint of epoch {saved} "
                    f"in {run_dir} is unchanged, continue with --resume {run_dir}")
        return "interrupted before training started; nothing was written"
    if saved is None:
        return (f"interrupted in epoch {p['epoch']} of {epochs}, before the first checkpoint: nothing was saved "
                f"to resume; start the run again (without --resume)")
    if p["phase"] == "final":
        return (f"interrupted after training, while finishing the run (BN fold / final metrics / artifact); the "
                f"checkpoint of epoch {saved} is saved in {run_dir}: finish with --resume {run_dir}")
    return (f"interrupted in epoch {p['epoch']} of {epochs}; the checkpoint of epoch {saved} is saved in {run_dir}: "
            f"continue with --resume {run_dir}")


def _train(cfg: dict, overrides: dict, d: Dist, progress: dict | None = None) -> dict:
    t_start = time.time()
    say = print if d.main else (lambda *a, **k: None)
    progress = {} if progress is None else progress
    progress.update(phase="setup", run_dir=None, saved=None, epoch=None, epochs=cfg["epochs"])

    # --- resume: configuration and checkpoint first, so a mismatch fails before any work
    ck = None
    if cfg["resume"]:
        run_dir = cfg["resume"]
        ck = ckpt.load(run_dir)
        cfg = _resume_config(cfg, overrides, ck, run_dir)
    else:
        run_dir = os.path.join(cfg["out_dir"], cfg["run_name"] or _default_run_name(cfg))
        if d.on:                                  # every process must agree on the folder name
            import torch.distributed as dist
            box = [run_dir]
            dist.broadcast_object_list(box, src=0)
            run_dir = box[0]

    progress.update(epochs=cfg["epochs"], saved=int(ck["epoch"]) if ck is not None else None, run_dir=run_dir)
    check_out_dir(run_dir, "--resume" if ck is not None else "run folder")
    if cfg["export"] and cfg["quant"] and d.main:
        from model.export import check_paths
        check_paths(run_dir, None, None, must_exist=ck is not None)

    device = torch.device(f"cuda:{d.local_rank}" if cfg["device"] == "cuda" else "cpu")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    seed_everything(cfg["seed"])

    # --- data and network (all validation before anything is written)
    bundle = data_mod.load(cfg)
    if len(bundle.train) == 0 or len(bundle.test) == 0:
        raise DataError(f"{bundle.name}: the training and test sets must not be empty")
    stored_ranks = None
    if ck is not None:
        stored_ranks = {str(k): tuple(int(v) for v in r) for k, r in ck["ranks"].items()}
    try:
        built = build(cfg, bundle.in_shape, bundle.num_classes, ranks=stored_ranks)
    except RankError:
        raise
    except ValueError as e:
        if ck is not None:
            raise ckpt.CheckpointError(f"checkpoint in {run_dir} does not fit the configured model ({e})") from None
        raise ConfigError(str(e)) from None
    model = built.model
    folded = False
    start_epoch, history, train_time = 0, [], 0.0
    if ck is not None:
        if ck["bn_folded"]:
            fold(model)
            folded = True
            try:
                set_fold_scales(model, ck.get("fold_scales", {}))
            except ValueError as e:
                raise ckpt.CheckpointError(f"checkpoint in {run_dir} does not fit the configured model ({e})") \
                    from None
        ckpt.load_model_state(model, ck["model"], os.path.join(run_dir, ckpt.FILENAME))
        ckpt.load_quant_state(model, ck.get("quant_state", {}))
        start_epoch = int(ck["epoch"])
        history = list(ck.get("metrics", {}).get("epochs", []))
        train_time = float(ck.get("metrics", {}).get("train_time_s", 0.0))
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.train()

    ranks_out = {k: list(v) for k, v in built.ranks.items()}
    totals = built.totals
    rows = [dataclasses.asdict(r) for r in built.rows]
    mode = (f"QAT w{cfg['weight_bits']}/a{cfg['act_bits']}/in{cfg['input_bits']} ({cfg['quant_impl']} quantizers)"
            if cfg["quant"] else "float")
    say(f"{cfg['model']} on {bundle.describe()}; {'dense' if not built.ranks else f'{len(built.ranks)} low-rank layers'}"
        f", {mode}"
        f", regulariser {cfg['regularizer']} x {cfg['reg_weight']:g}" + (f", {d.world} processes" if d.on else ""))
    say(flops.format_table(built.rows))

    # --- loaders, optimizer, schedule
    per_rank_batch = max(1, cfg["batch_size"] // d.world)
    sampler = data_mod.EpochSampler(len(bundle.train), cfg["seed"], True, d.rank, d.world)
    loader_gen = torch.Generator().manual_seed(data_mod._mix(cfg["seed"], 0x10AD))
    loader = data_mod.loader(bundle.train, per_rank_batch, sampler, cfg["num_workers"], loader_gen)
    steps_per_epoch = len(loader)
    schedule = Schedule(cfg, steps_per_epoch)
    fold_at = fold_epoch(cfg)

    def wrap(m):
        if not d.on:
            return m
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(m, device_ids=[d.local_rank] if device.type == "cuda" else None)

    net = wrap(model)
    opt = make_optimizer(model, cfg)
    if ck is not None:
        try:
            opt.load_state_dict(ck["optimizer"])
            schedule.load_state_dict(ck.get("scheduler", {"step": start_epoch * steps_per_epoch}))
        except (ValueError, KeyError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"optimizer state in {run_dir} does not match the model ({e}); start a new "
                                       f"run") from None
        if "rng" in ck:
            ckpt.set_rng_state(ck["rng"])
    if ck is not None and "loader_rng" in ck:
        loader_gen.set_state(ck["loader_rng"])

    # --- run folder (only now: every input has been checked)
    progress.update(phase="train", run_dir=run_dir)
    if d.main:
        if ck is None and os.path.exists(os.path.join(run_dir, ckpt.FILENAME)):
            # the folder must never mix two runs: an interrupt before this run's first
            # checkpoint would otherwise leave the old run's checkpoint to --resume
            os.remove(os.path.join(run_dir, ckpt.FILENAME))
            say(f"warning: {run_dir} already held a run; its checkpoint is removed and its other files are replaced")
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.yaml"), config_mod.dump(_stored_config(cfg)))
        metrics.write_json(os.path.join(run_dir, "flops.json"),
                           {"model": cfg["model"], "in_shape": list(bundle.in_shape), "ranks": ranks_out,
                            "rows": rows, "totals": totals})
    _barrier(d)

    record = {"run_dir": run_dir, "model": cfg["model"], "data": bundle.describe(), "config": _stored_config(cfg),
              "ranks": ranks_out, "flops_rows": rows, "totals": totals, "fold_epoch": fold_at,
              "world_size": d.world, "epochs": history}

    def diverged(what: str) -> TrainingDiverged:
        kept = (f"the last finite checkpoint (epoch {progress['saved']}) is kept in {run_dir} (continue it with "
                f"--resume {run_dir} --lr SMALLER)" if progress["saved"] is not None else
                "no checkpoint was written")
        return TrainingDiverged(f"training diverged: {what}; {kept}; lower --lr (now {cfg['lr']:g}) or set "
                                f"--grad-clip")

    def save_checkpoint(epoch: int) -> None:
        state = model_state(model)
        bad = ckpt.non_finite(state)
        if bad:
            raise diverged(f"{bad[0]} holds NaN or infinite values after epoch {epoch}")
        if d.main:
            ckpt.save(os.path.join(run_dir, ckpt.FILENAME), {
                "epoch": epoch, "config": _stored_config(cfg), "ranks": ranks_out, "bn_folded": folded,
                "in_shape": list(bundle.in_shape), "num_classes": bundle.num_classes,
                "model": state, "quant_state": ckpt.quant_state(model), "fold_scales": fold_scales(model),
                "optimizer": opt.state_dict(), "scheduler": schedule.state_dict(), "rng": ckpt.rng_state(),
                "loader_rng": loader_gen.get_state(), "metrics": {"epochs": history, "train_time_s": train_time}})
        progress["saved"] = epoch

    from tqdm import tqdm
    stopped = False
    last_plot = time.time()
    for epoch in range(start_epoch, cfg["epochs"]):
        progress["epoch"] = epoch + 1
        if not folded and epoch >= fold_at:
            n = fold(model, calibration_batches(bundle.train, per_rank_batch, device,
                                                channels_last=cfg["channels_last"]))
            folded = True
            net = wrap(model)
            opt = make_optimizer(model, cfg)
            say(f"after epoch {epoch}: folded {n} BatchNorm layers into their convs (statistics recomputed); "
                f"optimizer rebuilt")
        t0 = time.time()
        sampler.set_epoch(epoch)
        aug_gen = data_mod.augment_generator(cfg["seed"], epoch, d.rank)
        net.train()
        loss_sum = correct = count = reg_sum = 0.0
        lr = schedule.lr()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False, disable=None if d.main else True,
                   dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if bundle.augment.active and cfg["augment"]:
                x = bundle.augment(x, aug_gen)
            x, y = to_device(x, device, cfg["channels_last"]), y.to(device, non_blocking=True)
            lr = schedule.apply(opt)
            logits = net(x)
            ce = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
            reg = regularizers.orthogonality_loss(model, cfg["regularizer"], cfg["reg_weight"])
            loss = ce + reg
            ce_value, reg_value = ce.item(), reg.item()
            bad = not (math.isfinite(ce_value) and math.isfinite(reg_value))
            if d.on:                              # every process stops at the same step
                bad = _all_sum([float(bad)], d, device)[0] > 0
            if bad:                               # before the step: the weights stay as they were
                raise diverged(f"the loss became {ce_value if not math.isfinite(ce_value) else reg_value} at "
                               f"epoch {epoch + 1}, step {step + 1} of {steps_per_epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if folded:
                precondition_folded_grads(model)
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            schedule.step_count += 1
            b = len(y)
            loss_sum += ce_value * b
            correct += (logits.detach().argmax(1) == y).sum().item()
            count += b
            reg_sum += reg_value * b
            bar.set_postfix(loss=f"{ce_value:.3f}", lr=f"{lr:.3g}")
        loss_sum, correct, count, reg_sum = _all_sum([loss_sum, correct, count, reg_sum], d, device)
        test_loss, test_acc = evaluate(model, bundle.test, device, channels_last=cfg["channels_last"])
        if not math.isfinite(test_loss):
            raise diverged(f"the test loss became {test_loss} after epoch {epoch + 1}")
        dt = time.time() - t0
        train_time += dt
        row = {"epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
               "test_loss": test_loss, "test_acc": test_acc, "reg": reg_sum / count, "lr": lr,
               "epoch_time_s": dt, "bn_folded": folded}
        history.append(row)
        say(f"epoch {epoch + 1:3d}/{cfg['epochs']}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
            f"  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  reg {row['reg']:.3g}  lr {lr:.3g}  {dt:.1f}s"
            + ("  [BN folded]" if folded else ""))
        save_checkpoint(epoch + 1)
        stopped = bool(cfg["stop_after"]) and epoch + 1 == cfg["stop_after"] and epoch + 1 < cfg["epochs"]
        if d.main:                                # the plot at most every PLOT_EVERY_S, and at the end
            last = epoch + 1 == cfg["epochs"] or stopped
            with_plot = last or time.time() - last_plot >= PLOT_EVERY_S
            metrics.write_all(run_dir, {**record, "epochs": history, "train_time_s": train_time},
                              f"{cfg['model']} {cfg['data']}", fold_at, with_plot)
            last_plot = time.time() if with_plot else last_plot
        _barrier(d)
        if stopped:
            say(f"stopping after epoch {epoch + 1} as asked (--stop-after); continue with --resume {run_dir}")
            break

    progress["phase"] = "final"
    if not stopped and not folded:
        n = fold(model, calibration_batches(bundle.train, per_rank_batch, device,
                                            channels_last=cfg["channels_last"]))
        folded = True
        say(f"folded {n} BatchNorm layers into their convs after training")
        save_checkpoint(len(history))

    test_loss, test_acc = evaluate(model, bundle.test, device, channels_last=cfg["channels_last"])
    final = {"test_acc": test_acc, "test_loss": test_loss,
             "train_acc": history[-1]["train_acc"] if history else None, "epochs_done": len(history),
             "bn_folded": folded, "bn_folded_check": is_folded(model), "train_time_s": train_time}
    artifact = None
    if not stopped and cfg["export"] and d.main:
        if cfg["quant"]:
            artifact = _export(run_dir)
        else:
            say("export skipped: a float (--no-quant) model has no integer artifact")
    wall = time.time() - t_start
    final.update(artifact=artifact, wall_time_s=wall)
    if d.main:
        metrics.write_all(run_dir, {**record, "epochs": history, "train_time_s": train_time, "final": final},
                          f"{cfg['model']} {cfg['data']}", fold_at,
                          with_plot=not os.path.exists(os.path.join(run_dir, "curves.png")))
    _barrier(d)
    say(f"{'stopped' if stopped else 'done'}: test accuracy {100 * test_acc:.2f}% after {len(history)} epochs; "
        f"inference FLOPs reduction {totals['inference_reduction']:.2f}x; {wall:.1f}s; run folder {run_dir}"
        + (f"; artifact {artifact}" if artifact else ""))
    return {**final, "run_dir": run_dir, "totals": totals, "inference_reduction": totals["inference_reduction"],
            "ranks": ranks_out, "stopped": stopped, "epochs": history}


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(config_mod.help_text())
        return 0
    try:
        config_file, cli = config_mod.parse_cli(argv)
        overrides = dict(config_mod.load_file(config_file)) if config_file else {}
        overrides.update(cli)
        train(overrides)
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:                          # e.g. the disk filled up while writing the run folder
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) if isinstance(e, Interrupted) else "interrupted before training started; nothing was written",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
