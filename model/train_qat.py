#!/usr/bin/env python
"""Train a low-rank (Tucker-2) CNN from scratch with Brevitas quantization-aware training.

    python model/train_qat.py                          # defaults: model/default.yaml
    python model/train_qat.py --epochs 3 --flops-reduction 3 --weight-bits 4
    python model/train_qat.py --config my.yaml --data cifar10 --data-dir ~/cifar-10-batches-py
    python model/train_qat.py --resume runs/NAME       # continue an interrupted run exactly
    torchrun --nproc_per_node 2 model/train_qat.py ... # data-parallel (gloo on CPU, nccl on GPU)

Loss: cross entropy + ``regularizers.orthogonality_loss`` (DSO by default) on the factors.
The network trains with BatchNorm; after ``round(fold_bn_at * epochs)`` epochs BatchNorm is
folded into the preceding convs (``blocks.fold_batchnorm``), the optimizer is rebuilt over
the new parameters and training continues, so the final model is integer-deployable.

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from artifact.files import atomic_write_text
from model import checkpoint as ckpt
from model import config as config_mod
from model import data as data_mod
from model import flops, metrics, regularizers
from model.blocks import fold_batchnorm, is_folded
from model.build import build
from model.config import ConfigError, UsageError
from model.data import DataError
from model.ranks import RankError

USER_ERRORS = (UsageError, DataError, RankError)
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
    """Epochs completed before BatchNorm is folded (== epochs: folded after training)."""
    return int(round(cfg["fold_bn_at"] * cfg["epochs"]))


def fold(model: nn.Module) -> int:
    """Fold BN with the model in eval mode (running statistics), then restore the mode."""
    was = model.training
    model.eval()
    n = fold_batchnorm(model)
    model.train(was)
    return n


@torch.no_grad()
def evaluate(model: nn.Module, ds: data_mod.TensorSet, device, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``ds`` in eval mode."""
    was = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(ds), batch_size):
        x, y = ds.x[i:i + batch_size].to(device), ds.y[i:i + batch_size].to(device)
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
    from model.export import ExportError, export_run
    try:
        return str(export_run(run_dir))
    except ExportError as e:
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
    try:
        return _train(full, overrides, d)
    finally:
        if d.owned:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train(cfg: dict, overrides: dict, d: Dist) -> dict:
    t_start = time.time()
    say = print if d.main else (lambda *a, **k: None)

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
        ckpt.load_model_state(model, ck["model"], os.path.join(run_dir, ckpt.FILENAME))
        ckpt.load_quant_state(model, ck.get("quant_state", {}))
        start_epoch = int(ck["epoch"])
        history = list(ck.get("metrics", {}).get("epochs", []))
        train_time = float(ck.get("metrics", {}).get("train_time_s", 0.0))
    model.to(device)
    model.train()

    ranks_out = {k: list(v) for k, v in built.ranks.items()}
    totals = built.totals
    rows = [dataclasses.asdict(r) for r in built.rows]
    say(f"{cfg['model']} on {bundle.describe()}; {'dense' if not built.ranks else f'{len(built.ranks)} low-rank layers'}"
        f", {'QAT w%d/a%d/in%d' % (cfg['weight_bits'], cfg['act_bits'], cfg['input_bits']) if cfg['quant'] else 'float'}"
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
    if d.main:
        if ck is None and os.path.exists(os.path.join(run_dir, ckpt.FILENAME)):
            say(f"warning: {run_dir} already holds a run; its files are replaced")
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.yaml"), config_mod.dump(_stored_config(cfg)))
        metrics.write_json(os.path.join(run_dir, "flops.json"),
                           {"model": cfg["model"], "in_shape": list(bundle.in_shape), "ranks": ranks_out,
                            "rows": rows, "totals": totals})
    _barrier(d)

    record = {"run_dir": run_dir, "model": cfg["model"], "data": bundle.describe(), "config": _stored_config(cfg),
              "ranks": ranks_out, "flops_rows": rows, "totals": totals, "fold_epoch": fold_at,
              "world_size": d.world, "epochs": history}

    def save_checkpoint(epoch: int) -> None:
        if not d.main:
            return
        ckpt.save(os.path.join(run_dir, ckpt.FILENAME), {
            "epoch": epoch, "config": _stored_config(cfg), "ranks": ranks_out, "bn_folded": folded,
            "in_shape": list(bundle.in_shape), "num_classes": bundle.num_classes,
            "model": model_state(model), "quant_state": ckpt.quant_state(model), "optimizer": opt.state_dict(),
            "scheduler": schedule.state_dict(), "rng": ckpt.rng_state(), "loader_rng": loader_gen.get_state(),
            "metrics": {"epochs": history, "train_time_s": train_time}})

    from tqdm import tqdm
    stopped = False
    last_plot = time.time()
    for epoch in range(start_epoch, cfg["epochs"]):
        if not folded and epoch >= fold_at:
            n = fold(model)
            folded = True
            net = wrap(model)
            opt = make_optimizer(model, cfg)
            say(f"after epoch {epoch}: folded {n} BatchNorm layers into their convs; optimizer rebuilt")
        t0 = time.time()
        sampler.set_epoch(epoch)
        aug_gen = data_mod.augment_generator(cfg["seed"], epoch, d.rank)
        net.train()
        loss_sum = correct = count = reg_sum = 0.0
        lr = schedule.lr()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False, disable=None if d.main else True,
                   dynamic_ncols=True)
        for x, y in bar:
            if bundle.augment.active and cfg["augment"]:
                x = bundle.augment(x, aug_gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = schedule.apply(opt)
            logits = net(x)
            ce = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
            reg = regularizers.orthogonality_loss(model, cfg["regularizer"], cfg["reg_weight"])
            loss = ce + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            schedule.step_count += 1
            b = len(y)
            loss_sum += ce.item() * b
            correct += (logits.detach().argmax(1) == y).sum().item()
            count += b
            reg_sum += reg.item() * b
            if not math.isfinite(ce.item()):
                raise FloatingPointError(f"loss became {ce.item()} at epoch {epoch + 1}; lower --lr")
            bar.set_postfix(loss=f"{ce.item():.3f}", lr=f"{lr:.3g}")
        loss_sum, correct, count, reg_sum = _all_sum([loss_sum, correct, count, reg_sum], d, device)
        test_loss, test_acc = evaluate(model, bundle.test, device)
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

    if not stopped and not folded:
        n = fold(model)
        folded = True
        say(f"folded {n} BatchNorm layers into their convs after training")
        save_checkpoint(len(history))

    test_loss, test_acc = evaluate(model, bundle.test, device)
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
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume RUN_DIR (the last finished epoch is saved)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
