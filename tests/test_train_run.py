"""Training runs: run folder, metrics, BN folding, exact resume, bad checkpoints, entry points."""
import csv
import math
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from model import checkpoint
from model.train_qat import main, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)


def test_tiny_run_writes_the_run_folder(tiny_cfg):
    res = train({**tiny_cfg, "fold_bn_at": 0.5})
    run = res["run_dir"]
    for f in ("config.yaml", "checkpoint.pt", "metrics.json", "metrics.csv", "curves.png", "flops.json"):
        assert os.path.isfile(os.path.join(run, f)), f
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]
    assert 0 <= res["test_acc"] <= 1 and res["epochs_done"] == 2 and res["bn_folded"] and res["bn_folded_check"]
    assert abs(res["totals"]["inference_reduction"] - 2.0) < 0.05
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert [e["bn_folded"] for e in m["epochs"]] == [False, True]          # folded after epoch 1 of 2
    assert m["final"]["test_acc"] == res["test_acc"] and m["totals"]["inference_reduction"] > 1.9
    assert m["flops_rows"][0]["name"] == "conv1" and m["fold_epoch"] == 1
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "reg", "lr", "epoch_time_s"):
        assert key in m["epochs"][0]
    assert m["epochs"][0]["reg"] > 0                                      # DSO is on
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    assert len(rows) == 2 and float(rows[1]["test_acc"]) == pytest.approx(m["epochs"][1]["test_acc"], rel=1e-5)
    fl = json.load(open(os.path.join(run, "flops.json")))
    assert fl["totals"]["macs"] < fl["totals"]["dense_macs"] and len(fl["rows"]) == len(m["flops_rows"])
    cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert cfg["epochs"] == 2 and cfg["train_subset"] == 96 and cfg["resume"] is None
    ck = _state(run)                                                      # weights_only load works
    assert ck["epoch"] == 2 and ck["bn_folded"] and len(ck["ranks"]["layer1.0.conv1"]) == 2
    assert not any(".bn." in k for k in ck["model"])
    model, cfg2, in_shape, info = checkpoint.load_trained_model(run)
    assert in_shape == (1, 8, 8) and info["name"] == "resnet8" and not model.training


def test_fold_after_training_and_float_dense(tiny_cfg, capsys):
    res = train({**tiny_cfg, "epochs": 1, "fold_bn_at": 1.0, "quant": False, "dense": True, "regularizer": "none",
                 "export": True})
    assert res["bn_folded"] and res["ranks"] == {} and res["totals"]["inference_reduction"] == 1.0
    assert res["artifact"] is None and "export skipped" in capsys.readouterr().out


def test_run_exports_the_integer_artifact(tiny_cfg):
    res = train({**tiny_cfg, "epochs": 1, "export": True, "train_subset": 64})
    art = os.path.join(res["run_dir"], "artifact")
    assert res["artifact"] == art and os.path.isfile(os.path.join(art, "manifest.yaml"))
    manifest = yaml.safe_load(open(os.path.join(art, "manifest.yaml")))
    assert manifest["model"]["name"] == "resnet8" and manifest["model"]["bn_folded"]


def test_synthetic_and_cifar_runs(tiny_cfg, cifar_dir):
    res = train({**tiny_cfg, "epochs": 1, "data": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_size": 48,
                 "run_name": "syn"})
    assert res["epochs_done"] == 1
    res = train({**tiny_cfg, "epochs": 1, "data": "cifar10", "data_dir": cifar_dir, "train_subset": 32,
                 "test_subset": 8, "run_name": "cifar", "weight_bits": 4, "regularizer": "so"})
    assert res["epochs_done"] == 1 and os.path.isfile(os.path.join(res["run_dir"], "curves.png"))


# ----------------------------------------------------------------------------- exact resume

RESUME_CFG = {"epochs": 3, "fold_bn_at": 0.34}         # BN folded after epoch 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    cfg = {"model": "resnet8", "data": "digits", "train_subset": 96, "test_subset": 64, "batch_size": 32, "export": False,
           "out_dir": str(out), "run_name": "ref", "threads": 1, **RESUME_CFG}
    res = train(cfg)
    return cfg, _state(res["run_dir"])


def _assert_same_model(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_run(got, ref):
    """Same weights, Brevitas statistics state and per-epoch test accuracy."""
    _assert_same_model(got["model"], ref["model"])
    for name, st in ref["quant_state"].items():
        assert st["counter"] == got["quant_state"][name]["counter"]
        assert torch.equal(st["value"], got["quant_state"][name]["value"])
    assert [e["test_acc"] for e in got["metrics"]["epochs"]] == [e["test_acc"] for e in ref["metrics"]["epochs"]]


@pytest.mark.parametrize("stop_after", [1, 2])    # checkpoint before / after the fold
def test_resume_is_bit_identical(uninterrupted, tmp_path, stop_after):
    cfg, ref = uninterrupted
    cfg = {**cfg, "out_dir": str(tmp_path), "run_name": "cut"}
    first = train({**cfg, "stop_after": stop_after})
    assert first["stopped"] and first["epochs_done"] == stop_after
    assert _state(first["run_dir"])["bn_folded"] == (stop_after >= 2)
    assert main(["--resume", first["run_dir"]]) == 0
    got = _state(first["run_dir"])
    assert got["epoch"] == 3 and got["bn_folded"]
    _assert_same_run(got, ref)


def test_same_seed_same_weights(uninterrupted, tmp_path):
    cfg, ref = uninterrupted
    res = train({**cfg, "out_dir": str(tmp_path), "run_name": "again"})
    _assert_same_model(_state(res["run_dir"])["model"], ref["model"])


# ----------------------------------------------------------------------------- bad checkpoints

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    res = train({"model": "resnet8", "data": "digits", "train_subset": 64, "test_subset": 32, "batch_size": 32, "export": False,
                 "out_dir": str(out), "run_name": "s", "threads": 1, "epochs": 2, "stop_after": 1})
    return res["run_dir"]


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("extra, match", [
    (["--model", "resnet20"], "was trained with model='resnet8'"),
    (["--ranks", "layer1.0.conv1=3x3"], "was trained with ranks="),
    (["--weight-bits", "4"], "was trained with weight_bits=8"),
    (["--dense"], "was trained with dense=False"),
])
def test_resume_with_other_network_is_refused(stopped_run, extra, match, capsys):
    before = open(os.path.join(stopped_run, "checkpoint.pt"), "rb").read()
    assert main(["--resume", stopped_run] + extra) == 2
    assert match in _error(capsys)
    assert open(os.path.join(stopped_run, "checkpoint.pt"), "rb").read() == before


def test_corrupt_and_mismatched_checkpoints(stopped_run, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(stopped_run, bad)
    ck_path = bad / "checkpoint.pt"
    ck_path.write_bytes(ck_path.read_bytes()[:1000])                  # truncated
    assert main(["--resume", str(bad)]) == 2
    assert "corrupt or unreadable" in _error(capsys)
    ck_path.write_bytes(b"garbage")
    assert main(["--resume", str(bad)]) == 2
    assert "corrupt or unreadable" in _error(capsys)
    ck = torch.load(os.path.join(stopped_run, "checkpoint.pt"), weights_only=True)
    ck["model"].pop("fc.weight")                                        # a state dict that does not fit
    torch.save(ck, ck_path)
    assert main(["--resume", str(bad)]) == 2
    assert "does not match the configured model" in _error(capsys)
    ck = torch.load(os.path.join(stopped_run, "checkpoint.pt"), weights_only=True)
    ck["ranks"]["layer1.0.conv1"] = [99, 99]                            # impossible stored ranks
    torch.save(ck, ck_path)
    assert main(["--resume", str(bad)]) == 2
    assert "does not fit" in _error(capsys)
    torch.save({"something": 1}, ck_path)
    assert main(["--resume", str(bad)]) == 2
    assert "not an ELRT training checkpoint" in _error(capsys)
    os.remove(ck_path)
    assert main(["--resume", str(bad)]) == 2
    assert "no checkpoint" in _error(capsys)


# ----------------------------------------------------------------------------- entry points

def _run(args, timeout=300, **kw):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def test_script_bad_input_exit_code_without_traceback():
    p = _run([sys.executable, "model/train_qat.py", "--model", "resnet7"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "error: unknown model 'resnet7'; choose one of: " + p.stderr.split("of: ")[1].strip()
    p = _run([sys.executable, "-m", "model.train_qat", "--help"])
    assert p.returncode == 0 and "--config" in p.stdout


def test_torchrun_two_processes(tmp_path):
    p = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "model/train_qat.py", "--model", "resnet8", "--data", "synthetic", "--synthetic-shape", "1,8,8", "--synthetic-size", "64",
              "--epochs", "1", "--batch-size", "32", "--no-export", "--out-dir", str(tmp_path), "--run-name", "ddp"],
             timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "ddp"
    m = json.load(open(run / "metrics.json"))
    assert m["world_size"] == 2 and len(m["epochs"]) == 1 and m["final"]["bn_folded"]
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]
    assert _state(str(run))["epoch"] == 1


@pytest.mark.slow
def test_torchrun_resume_is_bit_identical(tmp_path):
    """Two processes (gloo): a run stopped after epoch 1 and resumed under torchrun ends
    with the same weights, quantizer state and metrics as an uninterrupted one."""
    def torchrun(*args):
        p = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "model/train_qat.py", *args], timeout=900)
        assert p.returncode == 0, p.stderr[-2000:]

    common = ["--model", "resnet8", "--data", "synthetic", "--synthetic-shape", "1,8,8", "--synthetic-size", "64",
              "--epochs", "2", "--fold-bn-at", "0.5", "--batch-size", "16", "--no-export", "--out-dir", str(tmp_path)]
    torchrun(*common, "--run-name", "ref")
    torchrun(*common, "--run-name", "cut", "--stop-after", "1")
    assert _state(str(tmp_path / "cut"))["epoch"] == 1
    torchrun("--resume", str(tmp_path / "cut"))
    ref, got = _state(str(tmp_path / "ref")), _state(str(tmp_path / "cut"))
    assert got["epoch"] == 2 and got["bn_folded"]
    _assert_same_run(got, ref)


# ----------------------------------------------------------------------------- BatchNorm folding

import copy                                                       # noqa: E402

import torch.nn as nn                                             # noqa: E402
import torch.nn.functional as F                                   # noqa: E402

from model import blocks                                          # noqa: E402
from model.blocks import ConvBN                                   # noqa: E402
from model.layers import Tucker2Conv2d                            # noqa: E402
from model.train_qat import fold_epoch, make_optimizer            # noqa: E402


@pytest.mark.parametrize("fraction, epochs, expect", [
    (0.75, 6, 5),        # 4.5: half up (Python's round() gave 4)
    (0.5, 5, 3),         # 2.5 (round() gave 2)
    (0.35, 10, 4),       # 3.5 as typed (0.35 * 10 is 3.4999... or 3.5 depending on the last bit)
    (0.75, 20, 15), (0.75, 4, 3), (0.75, 2, 2), (0.25, 2, 1), (0.34, 3, 1),
    (1.0, 7, 7), (0.0, 7, 0), (0.999, 3, 3),
])
def test_fold_epoch_rounds_half_up(fraction, epochs, expect):
    assert fold_epoch({"fold_bn_at": fraction, "epochs": epochs}) == expect


class _FoldNet(nn.Module):
    """A dense ConvBN and a Tucker-2 ConvBN (float), pooled into a linear classifier."""

    def __init__(self):
        super().__init__()
        self.a = ConvBN(nn.Conv2d(2, 4, 3, padding=1, bias=False), 4, nn.ReLU())
        self.b = ConvBN(Tucker2Conv2d(4, 5, 3, (2, 3), padding=1), 5, nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def _fold_pair(seed=0):
    torch.manual_seed(seed)
    net = _FoldNet().double()
    g = torch.Generator().manual_seed(seed)
    for unit in (net.a, net.b):                # statistics and scales far from 1, as after training
        c = unit.bn.num_features
        unit.bn.running_var.copy_(torch.logspace(-2, 2, c, dtype=torch.double))
        unit.bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.double))
        unit.bn.weight.data.copy_(0.5 + 1.5 * torch.rand(c, generator=g, dtype=torch.double))
        unit.bn.bias.data.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.double))
    frozen, folded = copy.deepcopy(net), copy.deepcopy(net)
    for unit in (frozen.a, frozen.b):
        unit.bn.weight.requires_grad_(False)       # BN frozen: statistics and gamma fixed, beta trained
    folded.eval()
    assert blocks.fold_batchnorm(folded) == 2
    return frozen, folded


def _sgd_steps(model, precondition, steps=6, frozen_bn=False):
    cfg = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-3}
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        model.train()
        if frozen_bn:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        x = torch.randn(8, 2, 6, 6, generator=g, dtype=torch.double)
        y = torch.randint(0, 3, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if precondition:
            assert blocks.precondition_folded_grads(model) == 2
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(torch.randn(16, 2, 6, 6, generator=torch.Generator().manual_seed(9), dtype=torch.double))


def test_folded_training_steps_like_frozen_batchnorm():
    """After the fold, SGD (momentum, weight decay) on the folded weights W' = s W with the
    gradient preconditioned by s^2 takes exactly the steps SGD took on W behind a frozen BN.
    Without it each output channel's step is 1 / s^2 times as large (here s spans 20x)."""
    frozen, folded = _fold_pair()
    with torch.no_grad():
        x = torch.randn(4, 2, 6, 6, dtype=torch.double)
        frozen.eval()
        assert torch.allclose(frozen(x), folded(x), rtol=1e-10, atol=1e-12)     # the fold itself is exact
    s = folded.b.fold_scale
    assert s.max() / s.min() > 10
    ref = _sgd_steps(frozen, False, frozen_bn=True)
    got = _sgd_steps(folded, True)
    assert torch.allclose(got, ref, rtol=1e-8, atol=1e-10)
    _, plain = _fold_pair()
    unpreconditioned = _sgd_steps(plain, False)
    assert (unpreconditioned - ref).abs().max() > 1e-3          # what the fold did before


def test_fold_scales_round_trip():
    _, folded = _fold_pair()
    scales = blocks.fold_scales(folded)
    assert set(scales) == {"a", "b"} and scales["b"].shape == (5,)
    fresh = _FoldNet().double()
    fresh.eval()
    blocks.fold_batchnorm(fresh)
    blocks.set_fold_scales(fresh, scales)
    assert torch.equal(fresh.b.fold_scale, scales["b"])
    blocks.set_fold_scales(fresh, {})                              # an older checkpoint: no preconditioning
    assert fresh.a.fold_scale is None and blocks.precondition_folded_grads(fresh) == 0
    with pytest.raises(ValueError, match="unknown layer"):
        blocks.set_fold_scales(fresh, {"nope": scales["a"]})
    with pytest.raises(ValueError, match="fold scale of shape"):
        blocks.set_fold_scales(fresh, {"a": scales["b"]})


def test_recalibration_gives_the_current_networks_statistics():
    """Before the fold BN's statistics are recomputed for the current weights: exactly the
    mean and (averaged unbiased) variance of the conv outputs; nothing else changes."""
    from model import quant
    from qat_helpers import ProbeNet
    net = ProbeNet(quant.QuantConfig(), 2, 6, 5, 3, 1, 1, (3, 4), False).double()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(3):                                            # quantizer statistics collected
        loss = net(torch.randn(8, 2, 7, 7, dtype=torch.double)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for unit in (net.stem, net.layer):                            # stale statistics
        unit.bn.running_mean.fill_(3.0)
        unit.bn.running_var.fill_(40.0)
    batches = [torch.randn(8, 2, 7, 7, generator=torch.Generator().manual_seed(i), dtype=torch.double)
               for i in range(3)]
    qstate, rng = checkpoint.quant_state(net), torch.get_rng_state()
    outs = []
    handle = net.layer.conv.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    assert blocks.recalibrate_batchnorm(net, batches) == 3
    handle.remove()
    assert net.training and net.layer.bn.momentum == 0.1
    acc = torch.cat(outs)                                         # (24, C, H, W) accumulator of the layer
    assert torch.allclose(net.layer.bn.running_mean, acc.mean((0, 2, 3)), rtol=1e-9, atol=1e-12)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(1, unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(net.layer.bn.running_var, var, rtol=1e-9)
    assert torch.equal(torch.get_rng_state(), rng)
    after = checkpoint.quant_state(net)
    for name, st in qstate.items():
        assert st["counter"] == after[name]["counter"] and torch.equal(st["buffer"], after[name]["buffer"])
    assert blocks.recalibrate_batchnorm(net, []) == 0             # no batch: statistics kept
    assert torch.allclose(net.layer.bn.running_mean, acc.mean((0, 2, 3)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("epochs", [3, 4, 6])
def test_training_goes_on_after_the_fold(tmp_path, epochs):
    """The failing path of `--epochs 6` at a small size: a ResNet-20 folded after a few
    epochs, at a learning rate still high. It used to diverge right after the fold (NaN,
    or a loss far above the last unfolded epoch's); now the epochs after the fold train on."""
    res = train({"model": "resnet20", "data": "digits", "train_subset": 192, "test_subset": 96, "batch_size": 32,
                 "epochs": epochs, "fold_bn_at": 0.6, "export": False, "out_dir": str(tmp_path), "run_name": "f",
                 "threads": 1})
    fold_at = fold_epoch({"fold_bn_at": 0.6, "epochs": epochs})
    eps = res["epochs"]
    assert [e["bn_folded"] for e in eps] == [i >= fold_at for i in range(epochs)]
    before = eps[fold_at - 1]["train_loss"]
    for e in eps[fold_at:]:
        assert math.isfinite(e["train_loss"]) and e["train_loss"] < 1.25 * before, (before, e)
    assert math.isfinite(res["test_loss"])
    ck = _state(res["run_dir"])
    assert set(ck["fold_scales"]) and all(torch.isfinite(s).all() for s in ck["fold_scales"].values())


# ----------------------------------------------------------------------------- divergence and interrupts

import model.train_qat as train_qat                              # noqa: E402
from model import regularizers                                    # noqa: E402


def _on_step(monkeypatch, call, action):
    """Make the regulariser (called once per training step) do ``action`` at step ``call``."""
    real = regularizers.orthogonality_loss
    count = {"n": 0}

    def patched(model, kind, weight):
        count["n"] += 1
        out = real(model, kind, weight)
        if count["n"] == call:
            return action(out)
        return out
    monkeypatch.setattr(train_qat.regularizers, "orthogonality_loss", patched)
    return count


def _nan(out):
    return out * float("nan")


def _interrupt(out):
    raise KeyboardInterrupt


def _argv(cfg):
    out = []
    for k, v in cfg.items():
        out += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return out


def test_nan_loss_stops_at_once_and_keeps_the_last_finite_checkpoint(uninterrupted, tmp_path, monkeypatch, capsys):
    cfg, _ = uninterrupted
    cfg = {**cfg, "out_dir": str(tmp_path), "run_name": "nan", "export": True}
    ref = train({**cfg, "run_name": "one", "stop_after": 1, "export": False})  # the run's state after epoch 1
    count = _on_step(monkeypatch, 5, _nan)            # 3 steps per epoch: epoch 2, step 2
    assert main(_argv(cfg)) == 2
    err = _error(capsys)
    assert "training diverged: the loss became nan at epoch 2, step 2 of 3" in err
    assert "the last finite checkpoint (epoch 1) is kept in" in err and "--lr" in err
    assert count["n"] == 5                            # stopped at once: no further step
    run = tmp_path / "nan"
    ck = _state(str(run))
    assert ck["epoch"] == 1
    _assert_same_model(ck["model"], _state(ref["run_dir"])["model"])
    assert not (run / "artifact").exists()
    m = json.load(open(run / "metrics.json"))
    assert [e["epoch"] for e in m["epochs"]] == [1] and "final" not in m


def test_nan_in_the_first_epoch_writes_no_checkpoint(tiny_cfg, monkeypatch, capsys):
    _on_step(monkeypatch, 2, _nan)
    assert main(_argv({**tiny_cfg, "export": True})) == 2
    assert "no checkpoint was written" in _error(capsys)
    run = os.path.join(tiny_cfg["out_dir"], tiny_cfg["run_name"])
    assert not os.path.exists(os.path.join(run, "checkpoint.pt")) and not os.path.exists(os.path.join(run, "artifact"))


def test_huge_learning_rate_is_a_one_line_error(tiny_cfg, capsys):
    """A float network at a huge learning rate overflows within an epoch; whichever check
    sees it first (the loss, the weights or BN statistics before a save), nothing is kept."""
    assert main(_argv({**tiny_cfg, "quant": False, "lr": 1000, "epochs": 2, "export": True})) == 2
    err = _error(capsys)
    assert err.startswith("error: training diverged:") and "lower --lr (now 1000)" in err
    run = os.path.join(tiny_cfg["out_dir"], tiny_cfg["run_name"])
    assert not os.path.exists(os.path.join(run, "checkpoint.pt")) and not os.path.exists(os.path.join(run, "artifact"))
    assert main(_argv({**tiny_cfg, "lr": 1e9})) == 2               # absurd: refused before any work
    assert "--lr must be in (0, 1000], got 1e+09" in _error(capsys)


def test_checkpoint_save_refuses_non_finite_weights(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match="non-finite values .*w"):
        checkpoint.save(str(path), {"model": {"w": torch.tensor([1.0, float("inf")])}})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_interrupt_before_the_first_checkpoint(tiny_cfg, monkeypatch, capsys):
    _on_step(monkeypatch, 2, _interrupt)
    assert main(_argv(tiny_cfg)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted in epoch 1 of 2, before the first checkpoint: nothing was saved" in err[0]
    run = os.path.join(tiny_cfg["out_dir"], tiny_cfg["run_name"])
    assert not os.path.exists(os.path.join(run, "checkpoint.pt"))
    monkeypatch.undo()
    assert main(["--resume", run]) == 2
    err = _error(capsys)
    assert "no checkpoint in" in err and "start the run again without --resume" in err


def test_rerun_into_a_used_folder_never_resumes_the_old_checkpoint(tiny_cfg, monkeypatch, capsys):
    train({**tiny_cfg, "epochs": 1})
    run = os.path.join(tiny_cfg["out_dir"], tiny_cfg["run_name"])
    assert os.path.exists(os.path.join(run, "checkpoint.pt"))
    _on_step(monkeypatch, 1, _interrupt)             # the new run is interrupted in its first step
    assert main(_argv(tiny_cfg)) == 130
    assert "nothing was saved" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(run, "checkpoint.pt"))   # the old run's checkpoint is gone


def _interrupt_save_of(epoch):
    """A KeyboardInterrupt while the checkpoint of ``epoch`` is being written (after torch.save
    wrote the temp file, before the rename): the previous checkpoint must stay."""
    real = checkpoint.atomic_write

    def patched(path, write):
        def interrupted(tmp):
            write(tmp)
            if torch.load(tmp, weights_only=True)["epoch"] == epoch:
                raise KeyboardInterrupt
        real(path, interrupted)
    return patched


@pytest.mark.parametrize("where, saved", [
    ("step 5", 1),            # epoch 2 (after the BN fold), step 2
    ("step 7", 2),            # epoch 3, step 1
    ("save 2", 1),            # while writing the checkpoint of epoch 2
    ("final", 3),             # after the last epoch, while writing the final metrics
])
def test_interrupt_reports_what_is_saved_and_resume_is_exact(uninterrupted, tmp_path, monkeypatch, capsys, where,
                                                            saved):
    cfg, ref = uninterrupted
    cfg = {**cfg, "out_dir": str(tmp_path), "run_name": "cut"}
    kind, _, n = where.partition(" ")
    if kind == "step":
        _on_step(monkeypatch, int(n), _interrupt)
    elif kind == "save":
        monkeypatch.setattr(checkpoint, "atomic_write", _interrupt_save_of(int(n)))
    else:
        real = train_qat.metrics.write_all

        def write_all(run_dir, record, *a, **k):
            if "final" in record:
                raise KeyboardInterrupt
            return real(run_dir, record, *a, **k)
        monkeypatch.setattr(train_qat.metrics, "write_all", write_all)
    assert main(_argv(cfg)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    run = str(tmp_path / "cut")
    assert len(err) == 1 and f"the checkpoint of epoch {saved} is saved in {run}" in err[0], err
    assert f"--resume {run}" in err[0]
    assert _state(run)["epoch"] == saved
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["--resume", run]) == 0
    got = _state(run)
    assert got["epoch"] == 3 and got["bn_folded"]
    _assert_same_run(got, ref)
    assert json.load(open(os.path.join(run, "metrics.json")))["final"]["bn_folded"]
