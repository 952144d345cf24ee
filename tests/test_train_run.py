"""Training runs: run folder, metrics, BN folding, exact resume, bad checkpoints, entry points."""
import csv
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
