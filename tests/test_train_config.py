"""Configuration: defaults < --config file < command line; validation; exit code 2 on bad input."""

import pytest
import yaml

from model import config
from model.config import ConfigError
from model.train_qat import main


def test_defaults_are_the_documented_ones():
    d = config.resolve({})
    assert d["model"] == "resnet20" and d["dense"] is False and d["flops_reduction"] == 2.0
    assert d["quant"] is True and d["weight_bits"] == d["act_bits"] == d["input_bits"] == 8
    assert d["regularizer"] == "dso" and d["data"] == "digits" and d["momentum"] == 0.9
    assert d["schedule"] == "cosine" and d["ranks"] == {} and d["export"] is True
    assert 0 < d["fold_bn_at"] < 1 and d["device"] == "cpu" and d["out_dir"] == "runs"


def test_cli_overrides_with_types():
    _, o = config.parse_cli(["--epochs", "3", "--flops-reduction", "3", "--weight-bits", "4", "--regularizer", "so",
                             "--reg-weight", "1e-3", "--dense", "--no-quant", "--model", "resnet32", "--seed", "1",
                             "--device", "cpu", "--out-dir", "x", "--run-name", "r", "--resume", "null",
                             "--ranks", "layer1.0.conv1=4x5,layer2.0.shortcut=8", "--lr=0.05",
                             "--export", "false", "--synthetic-shape", "1,8,8", "--data_dir", "/tmp"])
    assert o == {"epochs": 3, "flops_reduction": 3.0, "weight_bits": 4, "regularizer": "so", "reg_weight": 1e-3,
                 "dense": True, "quant": False, "model": "resnet32", "seed": 1, "device": "cpu", "out_dir": "x",
                 "run_name": "r", "resume": None, "ranks": {"layer1.0.conv1": [4, 5], "layer2.0.shortcut": [8]},
                 "lr": 0.05, "export": False, "synthetic_shape": [1, 8, 8], "data_dir": "/tmp"}
    assert isinstance(o["flops_reduction"], float) and isinstance(o["epochs"], int)


def test_precedence_default_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.2\nranks: {layer1.0.conv1: [3, 3]}\n")
    cfg, explicit = config.from_argv(["--config", str(f), "--lr", "0.3"])
    assert cfg["epochs"] == 7 and cfg["lr"] == 0.3 and cfg["batch_size"] == config.defaults()["batch_size"]
    assert cfg["ranks"] == {"layer1.0.conv1": [3, 3]}
    assert set(explicit) == {"epochs", "lr", "ranks"}


@pytest.mark.parametrize("argv, match", [
    (["--epochz", "3"], "unknown option --epochz"),
    (["--epochs", "abc"], "takes an integer"),
    (["--lr", "fast"], "takes a number"),
    (["--weight-bits", "9"], "weight-bits must be from 2 to 8"),
    (["--act-bits", "1"], "act-bits must be from 2 to 8"),
    (["--input-bits", "16"], "input-bits must be from 2 to 8"),
    (["--model", "resnet7"], "unknown model 'resnet7'"),
    (["--data", "mnist"], "unknown data 'mnist'"),
    (["--regularizer", "l2"], "unknown regularizer 'l2'"),
    (["--schedule", "linear"], "unknown schedule"),
    (["--device", "tpu"], "unknown device"),
    (["--data", "cifar10"], "needs --data-dir"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--fold-bn-at", "1.5"], "fold-bn-at"),
    (["--ranks", "layer1.0.conv1"], "NAME=R1xR2"),
    (["--dense", "maybe"], "unexpected argument"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["positional"], "unexpected argument"),
    (["--resume", "/nonexistent/run"], "no such run folder"),
])
def test_bad_config_values(argv, match):
    with pytest.raises(ConfigError, match=match):
        config.from_argv(argv)


def test_bad_config_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 3\nbogus_key: 1\n")
    with pytest.raises(ConfigError, match="unknown key.*bogus_key"):
        config.from_argv(["--config", str(f)])
    f.write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.from_argv(["--config", str(f)])
    f.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        config.from_argv(["--config", str(f)])
    f.write_text("quant: 1\n")
    with pytest.raises(ConfigError, match="quant must be true or false"):
        config.from_argv(["--config", str(f)])


def test_dump_round_trips(tmp_path):
    cfg = config.resolve({"epochs": 5, "ranks": {"layer1.0.conv1": [2, 3]}})
    f = tmp_path / "run.yaml"
    f.write_text(config.dump(cfg))
    assert config.resolve(yaml.safe_load(f.read_text())) == cfg


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("argv, match", [
    (["--model", "resnet7"], "unknown model"),
    (["--data", "imagenet"], "unknown data"),
    (["--weight-bits", "12"], "weight-bits must be from 2 to 8"),
    (["--ranks", "layer1.0.conv1=99x4"], "rank 99 is larger than"),
    (["--ranks", "nosuch.layer=4x4"], "not a factorizable layer"),
    (["--flops-reduction", "500"], "impossible"),
    (["--flops-reduction", "0.5"], "greater than 1"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--regularizer", "l1"], "unknown regularizer"),
])
def test_main_bad_input_exits_2_with_one_line(argv, match, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(argv + ["--out-dir", str(out), "--epochs", "1"]) == 2
    assert match in _one_error_line(capsys)
    assert not out.exists()            # nothing written


def test_main_empty_cifar_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data", "cifar10", "--data-dir", str(empty), "--out-dir", str(tmp_path / "runs")]) == 2
    assert "data_batch_1 is missing" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--config" in out and "flops_reduction" in out
