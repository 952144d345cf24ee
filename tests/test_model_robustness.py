"""Bad input to the model tools (train_qat, model.export, model.verify): one line on stderr,
exit status 2, no traceback, and nothing written or deleted; every path and option is
checked before work starts."""
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from model import checkpoint, config
from model.config import ConfigError
from model.export import main as export_main
from model.train_qat import main as train_main
from model.train_qat import train
from model.verify import main as verify_main


def _one_line(capsys, prefix="error: "):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and "Traceback" not in err[0], err
    return err[0]


def _tree(path):
    """Every file below ``path`` with its bytes and mode (to prove nothing was touched)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (stat.S_IMODE(st.st_mode), open(p, "rb").read() if os.path.isfile(p)
                                             and not os.path.islink(p) else os.path.islink(p) and os.readlink(p))
    return out


# ----------------------------------------------------------------------------- numeric options

@pytest.mark.parametrize("argv, match", [
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--lr", "-0.1"], r"--lr must be in \(0, 1000\]"),
    (["--lr", "0"], r"--lr must be in \(0, 1000\]"),
    (["--lr", "1e9"], r"--lr must be in \(0, 1000\], got 1e\+09"),
    (["--epochs", "0"], r"--epochs must be in \[1, 100000\]"),
    (["--epochs", "-3"], r"--epochs must be in \[1, 100000\]"),
    (["--epochs", "10000000"], r"--epochs must be in"),
    (["--epochs", "nan"], "takes an integer"),
    (["--batch-size", "0"], "--batch-size must be in"),
    (["--batch-size", "100000000"], "--batch-size must be in"),
    (["--reg-weight", "nan"], "reg_weight must be a finite number"),
    (["--reg-weight", "-1e-4"], "--reg-weight must be in"),
    (["--reg-weight", "1e9"], "--reg-weight must be in"),
    (["--weight-decay", "2"], r"--weight-decay must be in \[0, 1\]"),
    (["--weight-decay", "-0.1"], "--weight-decay must be in"),
    (["--momentum", "1"], r"--momentum must be in \[0, 1\)"),
    (["--momentum", "-inf"], "momentum must be a finite number"),
    (["--label-smoothing", "1"], r"--label-smoothing must be in \[0, 1\)"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be in"),
    (["--warmup-epochs", "30"], r"--warmup-epochs \(30\) must not exceed --epochs \(20\)"),
    (["--fold-bn-at", "nan"], "fold_bn_at must be a finite number"),
    (["--fold-bn-at", "-0.25"], r"--fold-bn-at \(a fraction of the epochs\) must be in \[0, 1\]"),
    (["--grad-clip", "-1"], "--grad-clip must be in"),
    (["--grad-clip", "inf"], "grad_clip must be a finite number"),
    (["--seed", "-1"], "--seed must be in"),
    (["--seed", str(2 ** 64)], "--seed must be in"),
    (["--threads", "-1"], "--threads must be in"),
    (["--threads", "5000"], "--threads must be in"),
    (["--num-workers", "-2"], "--num-workers must be in"),
    (["--num-workers", "1000"], "--num-workers must be in"),
    (["--train-subset", "-5"], "--train-subset must be in"),
    (["--test-subset", "-5"], "--test-subset must be in"),
    (["--stop-after", "-1"], "--stop-after must be in"),
    (["--rank-multiple", "0"], r"--rank-multiple must be in \[1, 1024\]"),
    (["--rank-multiple", "-8"], "--rank-multiple must be in"),
    (["--flops-reduction", "nan"], "flops_reduction must be a finite number"),
    (["--flops-reduction", "-inf"], "flops_reduction must be a finite number"),
    (["--flops-reduction", "-2"], "--flops-reduction must be in"),
    (["--flops-reduction", "1e9"], "--flops-reduction must be in"),
    (["--synthetic-size", "0"], "--synthetic-size must be in"),
    (["--synthetic-shape", "0,8,8"], "synthetic_shape must be three integers"),
    (["--synthetic-shape", "3,100000,8"], "synthetic_shape must be three integers"),
    (["--data", "synthetic", "--synthetic-size", "1000000", "--synthetic-shape", "3,64,64"],
     "GiB; lower --synthetic-size"),
])
def test_numeric_options_are_checked(argv, match):
    with pytest.raises(ConfigError, match=match) as e:
        config.from_argv(argv)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("lr: .nan\n", "lr must be a finite number"),
    ("lr: .inf\n", "lr must be a finite number"),
    ("lr: " + "9" * 400 + "\n", "lr must be a finite number, got an integer of 400 digits"),
    ("epochs: 1.0e+400\n", "epochs must be an integer"),
    ("epochs: 2.5\n", "epochs must be an integer"),
    ("epochs: 0\n", "--epochs must be in"),
    ("batch_size: 100000000000000000000\n", "--batch-size must be in"),
    ("seed: -7\n", "--seed must be in"),
])
def test_numeric_values_in_a_config_file_are_checked(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.from_argv(["--config", str(f)])


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nreg_weight: 5e-5\n")            # YAML 1.1 reads these as strings
    cfg, _ = config.from_argv(["--config", str(f)])
    assert cfg["lr"] == 1e-3 and cfg["reg_weight"] == 5e-5


@pytest.mark.parametrize("argv, match", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--epochs", "0"], "--epochs must be in"),
    (["--momentum", "1.5"], "--momentum must be in"),
])
def test_train_main_bad_number_exits_2_and_writes_nothing(tmp_path, capsys, argv, match):
    out = tmp_path / "runs"
    assert train_main(argv + ["--out-dir", str(out)]) == 2
    assert match in _one_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- damaged config files

@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"# only a comment\n", "is empty"),
    (b"- epochs\n- 3\n", "must hold a mapping of keys to values .*not a list"),
    (b"just a string\n", "must hold a mapping .*not a str"),
    (b"42\n", "must hold a mapping .*not a int"),
    (b"epochs: [3\n", "is not valid YAML"),
    (b"\xff\xfe\x00garbage\x00", "not a text"),
    (b"1: 2\nepochs: 3\n", "unknown key.*1"),
])
def test_damaged_config_file_is_one_line_exit_2(tmp_path, capsys, content, match):
    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    out = tmp_path / "runs"
    assert train_main(["--config", str(f), "--out-dir", str(out)]) == 2
    import re
    assert re.search(match, _one_line(capsys)), match
    assert not out.exists()


def test_config_that_is_a_folder(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path), "--out-dir", str(tmp_path / "runs")]) == 2
    assert "is not a file" in _one_line(capsys)


# ----------------------------------------------------------------------------- the run folder of train_qat

TINY = {"model": "resnet8", "data": "digits", "train_subset": 64, "test_subset": 32, "batch_size": 32, "epochs": 1,
        "threads": 1}


def _argv(cfg):
    out = []
    for k, v in cfg.items():
        out += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return out


def test_out_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert train_main(_argv({**TINY, "out_dir": str(f), "run_name": "r"})) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert f.read_text() == "x"


def _unwritable(monkeypatch, *paths):
    """os.access reports ``paths`` as read-only (tests also run as root, who may write anywhere)."""
    real = os.access
    blocked = {Path(p).resolve() for p in paths}

    def access(path, mode, *a, **k):
        if mode & os.W_OK and Path(path).resolve() in blocked:
            return False
        return real(path, mode, *a, **k)
    monkeypatch.setattr(os, "access", access)


def test_read_only_out_dir(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _unwritable(monkeypatch, ro)
    assert train_main(_argv({**TINY, "out_dir": str(ro), "run_name": "r"})) == 2
    assert "is not writable" in _one_line(capsys)
    assert list(ro.iterdir()) == []


def test_run_folder_whose_artifact_folder_is_not_an_artifact(tmp_path, capsys):
    """With export on, the run's artifact folder is checked before training, not after it."""
    run = tmp_path / "r"
    (run / "artifact").mkdir(parents=True)
    (run / "artifact" / "notes.txt").write_text("mine")
    before = _tree(run)
    assert train_main(_argv({**TINY, "out_dir": str(tmp_path), "run_name": "r", "export": True})) == 2
    assert "is not an artifact folder" in _one_line(capsys)
    assert _tree(run) == before


# ----------------------------------------------------------------------------- model.export

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    res = train({**TINY, "export": False, "out_dir": str(out), "run_name": "run"})
    return Path(res["run_dir"])


def _export_fails(capsys, run, *args, match):
    before = _tree(run.parent)
    assert export_main([str(run), *args]) == 2
    line = _one_line(capsys, "python -m model.export: error: ")
    assert match in line, line
    assert _tree(run.parent) == before                    # nothing written, nothing deleted
    return line


def test_export_refuses_the_run_folder_and_its_parents(run_dir, capsys):
    _export_fails(capsys, run_dir, "--out", str(run_dir), match="is the run folder")
    _export_fails(capsys, run_dir, "--out", str(run_dir) + "/", match="is the run folder")
    _export_fails(capsys, run_dir, "--out", str(run_dir / "." / ".." / run_dir.name), match="is the run folder")
    _export_fails(capsys, run_dir, "--out", str(run_dir.parent), match="contains the run folder")


def test_export_refuses_a_link_to_the_run_folder(run_dir, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(run_dir, target_is_directory=True)
    _export_fails(capsys, run_dir, "--out", str(link), match="is the run folder")
    assert link.is_symlink()


def test_export_refuses_a_folder_holding_a_file_of_the_run(run_dir, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.npy").write_bytes(b"x")
    link = run_dir / "linked_data.npy"
    link.symlink_to(outside / "data.npy")
    try:
        before = _tree(outside)
        _export_fails(capsys, run_dir, "--out", str(outside), match="contains")
        assert _tree(outside) == before
    finally:
        link.unlink()


@pytest.mark.parametrize("name, match", [
    ("checkpoint.pt", "exists and is not a folder"),
    ("config.yaml", "exists and is not a folder"),
    ("config.yaml/art", "is a file, not a folder"),
])
def test_export_refuses_a_file_as_out(run_dir, capsys, name, match):
    _export_fails(capsys, run_dir, "--out", str(run_dir / name), match=match)


def test_export_refuses_an_existing_folder_that_is_not_an_artifact(run_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("do not delete")
    before = _tree(mine)
    _export_fails(capsys, run_dir, "--out", str(mine), match="is not an artifact folder")
    assert _tree(mine) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    _export_fails(capsys, run_dir, "--out", str(empty), match="is not an artifact folder")
    assert empty.is_dir()


def test_export_refuses_read_only_targets(run_dir, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _unwritable(monkeypatch, ro)
    _export_fails(capsys, run_dir, "--out", str(ro / "art"), match="is not writable")
    _export_fails(capsys, run_dir, "--out", str(tmp_path / "art"), "--qonnx", str(ro / "m.onnx"),
                  match="is not writable")
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("qonnx, match", [
    ("model.txt", "must end in .onnx"),
    ("model", "must end in .onnx"),
    ("folder.onnx", "is a folder"),
    ("afile/m.onnx", "is a file, not a folder"),
    ("art/m.onnx", "lies inside the artifact folder"),
    ("", "--qonnx is empty"),
])
def test_export_checks_qonnx_before_writing_the_artifact(run_dir, tmp_path, capsys, qonnx, match):
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    target = str(tmp_path / qonnx) if qonnx else ""
    assert export_main([str(run_dir), "--out", str(tmp_path / "art"), "--qonnx", target]) == 2
    assert match in _one_line(capsys, "python -m model.export: error: ")
    assert _tree(tmp_path) == before and not (tmp_path / "art").exists()


def test_export_writes_and_replaces_an_artifact(run_dir, tmp_path, capsys):
    out = tmp_path / "art"
    assert export_main([str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.yaml", "tensors.npz"]
    first = (out / "tensors.npz").read_bytes()
    old = os.umask(0o027)
    try:
        assert export_main([str(run_dir), "--out", str(out), "--qonnx", str(tmp_path / "q" / "m.onnx")]) == 0
    finally:
        os.umask(old)
    assert (out / "tensors.npz").read_bytes() == first                 # the same model, the same integers
    onnx = tmp_path / "q" / "m.onnx"
    assert onnx.is_file() and stat.S_IMODE(onnx.stat().st_mode) == 0o640      # umask honoured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "q"]
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["m.onnx"]     # no temp file left
    capsys.readouterr()


def test_export_default_out_is_the_runs_artifact_folder(run_dir, capsys):
    try:
        assert export_main([str(run_dir)]) == 0
        assert (run_dir / "artifact" / "manifest.yaml").is_file()
        assert export_main([str(run_dir)]) == 0                         # an artifact: replaced
    finally:
        shutil.rmtree(run_dir / "artifact", ignore_errors=True)
    capsys.readouterr()


def test_export_of_a_missing_run(tmp_path, capsys):
    assert export_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in _one_line(capsys, "python -m model.export: error: ")
    assert list(tmp_path.iterdir()) == []


def test_export_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        export_main([])
    assert e.value.code == 2
    assert "the following arguments are required" in _one_line(capsys, "python -m model.export: error: ")


# ----------------------------------------------------------------------------- damaged checkpoints

def _copy_run(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad, symlinks=True)
    return bad


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), "corrupt or unreadable"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or unreadable"),
    (lambda p: p.write_bytes(b""), "corrupt or unreadable"),
    (lambda p: _edit(p, epoch="three"), "epoch is 'three'"),
    (lambda p: _edit(p, epoch=-1), "epoch is -1"),
    (lambda p: _edit(p, config=[1, 2]), "configuration is not a mapping"),
    (lambda p: _edit(p, ranks={"layer1.0.conv1": "4x4"}), "ranks are not"),
    (lambda p: _edit(p, bn_folded="yes"), "bn_folded is not true/false"),
    (lambda p: _edit(p, model={"fc.weight": [1, 2]}), "model state is not a mapping of tensors"),
    (lambda p: _edit(p, metrics={"epochs": 3}), "metrics are not a list"),
    (lambda p: _edit_model(p, "fc.weight", float("nan")), "fc.weight holds NaN or infinite values"),
])
@pytest.mark.parametrize("tool", ["export", "resume", "verify"])
def test_damaged_checkpoint_is_one_line_exit_2(run_dir, tmp_path, capsys, damage, match, tool):
    bad = _copy_run(run_dir, tmp_path)
    damage(bad / "checkpoint.pt")
    before = _tree(bad)
    if tool == "export":
        assert export_main([str(bad)]) == 2
        line = _one_line(capsys, "python -m model.export: error: ")
    elif tool == "verify":
        assert verify_main([str(bad)]) == 2
        line = _one_line(capsys, "python -m model.verify: error: ")
    else:
        assert train_main(["--resume", str(bad)]) == 2
        line = _one_line(capsys)
    assert match in line, line
    assert _tree(bad) == before


def _edit(path, **fields):
    ck = torch.load(path, weights_only=True)
    ck.update(fields)
    torch.save(ck, path)


def _edit_model(path, key, value):
    ck = torch.load(path, weights_only=True)
    ck["model"][key] = torch.full_like(ck["model"][key], value)
    torch.save(ck, path)


# ----------------------------------------------------------------------------- model.verify options

@pytest.mark.parametrize("limit, match", [
    ("0", "0 is outside the allowed range: >= 1"),
    ("-5", "-5 is outside the allowed range: >= 1"),
    ("ten", "'ten' is not an integer"),
    ("1.5", "'1.5' is not an integer"),
])
def test_verify_limit_must_be_positive(run_dir, capsys, limit, match):
    with pytest.raises(SystemExit) as e:
        verify_main([str(run_dir), "--limit", limit])
    assert e.value.code == 2
    line = _one_line(capsys, "python -m model.verify: error: ")
    assert "argument --limit" in line and match in line


def test_verify_checks_the_run_folder_first(run_dir, tmp_path, monkeypatch, capsys):
    assert verify_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in _one_line(capsys, "python -m model.verify: error: ")
    bad = _copy_run(run_dir, tmp_path)
    _unwritable(monkeypatch, bad)
    before = _tree(bad)
    assert verify_main([str(bad)]) == 2
    assert "is not writable" in _one_line(capsys, "python -m model.verify: error: ")
    assert _tree(bad) == before
    monkeypatch.undo()
    assert verify_main([str(bad), "--artifact", str(tmp_path / "none")]) == 2     # no artifact: one line
    assert "not an artifact directory" in _one_line(capsys, "python -m model.verify: error: ")
    assert _tree(bad) == before
    assert checkpoint.load(str(bad))["epoch"] == 1


# ----------------------------------------------------------------------------- bench/accuracy.py, bench/train_speed.py

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name):
    import importlib
    import sys
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], "argument --epochs: 0 is outside"),
    (["--seeds", "-1"], "argument --seeds: -1 is outside"),
    (["--lr", "nan"], "argument --lr: nan is not a finite number"),
    (["--lr", "0"], "argument --lr: 0 is outside"),
    (["--reg-weight", "-1"], "argument --reg-weight"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--threads", "-1"], "argument --threads"),
])
def test_bench_accuracy_options(tmp_path, capsys, argv, match):
    accuracy = _bench("accuracy")
    with pytest.raises(SystemExit) as e:
        accuracy.main(argv + ["--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert match in _one_line(capsys, "python bench/accuracy.py: error: ")
    assert not (tmp_path / "o").exists()


def test_bench_accuracy_checks_paths_and_configs_before_any_run(tmp_path, capsys):
    accuracy = _bench("accuracy")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert accuracy.cli(["--out", str(afile)]) == 2
    assert "exists and is not a folder" in _one_line(capsys, "python bench/accuracy.py: error: ")
    out = tmp_path / "o"
    assert accuracy.cli(["--out", str(out), "--include", str(tmp_path / "missing.json")]) == 2
    assert "--include" in _one_line(capsys, "python bench/accuracy.py: error: ")
    assert accuracy.cli(["--out", str(out), "--include", str(afile)]) == 2
    assert "is not an accuracy.json" in _one_line(capsys, "python bench/accuracy.py: error: ")
    assert accuracy.cli(["--out", str(out), "--data", "cifar10"]) == 2
    assert "needs --data-dir" in _one_line(capsys, "python bench/accuracy.py: error: ")
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--repeats", "0"], "argument --repeats: 0 is outside"),
    (["--batch", "0"], "argument --batch: 0 is outside"),
    (["--threads", "0"], "argument --threads: 0 is outside"),
    (["--reduction", "inf"], "argument --reduction: inf is not a finite number"),
    (["--reduction", "1"], "argument --reduction: 1 is outside"),
    (["--rank-multiple", "0"], "argument --rank-multiple"),
    (["--json", "out.txt"], "--json out.txt must end in .json"),
])
def test_bench_train_speed_options(tmp_path, capsys, argv, match):
    train_speed = _bench("train_speed")
    with pytest.raises(SystemExit) as e:
        train_speed.main(argv)
    assert e.value.code == 2
    assert match in _one_line(capsys, "python bench/train_speed.py: error: ")
