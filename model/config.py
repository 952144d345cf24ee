"""Run configuration, nanoGPT style: ``model/default.yaml`` < ``--config FILE.yaml`` < ``--key value``.

Every key of ``default.yaml`` is a command-line option: ``--flops-reduction 3`` (dashes or
underscores), ``--key=value``, booleans as ``--dense`` / ``--no-dense`` / ``--dense false``,
``--ranks 'layer1.0.conv1=4x4,layer2.0.shortcut=8'``, ``--synthetic-shape 1,8,8``.
A value's type is that of the key's default; anything else is a :class:`ConfigError`
with a one-line message (the training script turns it into exit code 2).
"""
from __future__ import annotations

import math
import os
from typing import Any

import yaml

from artifact.cli import UsageError as _CliUsageError

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("cpu", "cuda")
OPTIONAL_STR = ("data_dir", "run_name", "resume")
# Keys that define the trained network: a resumed run must not change them.
ARCH_KEYS = ("model", "dense", "flops_reduction", "ranks", "factorize_first", "factorize_classifier",
             "factorize_shortcut", "quant", "weight_bits", "act_bits", "input_bits", "data",
             "synthetic_shape")
# Keys that belong to one invocation, not to the run (never taken from a checkpoint).
INVOCATION_KEYS = ("resume", "stop_after", "device", "num_workers", "threads")


class UsageError(_CliUsageError):
    """Bad user input; the message is one line that says what to do (an
    ``artifact.cli.UsageError``, so every tool of the package reports it the same way)."""


class ConfigError(UsageError):
    """A configuration key or value that is not allowed."""


# Allowed ranges of the numeric keys: (low, high, low excluded, high excluded). Values outside
# (and NaN / inf) are a ConfigError. The upper bounds only catch absurd values (typos, 1e9).
BOUNDS = {
    "rank_multiple": (1, 1024, False, False),
    "train_subset": (0, 10 ** 9, False, False),
    "test_subset": (0, 10 ** 9, False, False),
    "synthetic_size": (1, 10 ** 7, False, False),
    "num_workers": (0, 256, False, False),
    "batch_size": (1, 10 ** 6, False, False),
    "epochs": (1, 10 ** 5, False, False),
    "seed": (0, 2 ** 63 - 1, False, False),
    "threads": (0, 1024, False, False),
    "stop_after": (0, 10 ** 5, False, False),
    "flops_reduction": (0.0, 1e4, True, False),
    "reg_weight": (0.0, 1e4, False, False),
    "lr": (0.0, 1e3, True, False),
    "momentum": (0.0, 1.0, False, True),
    "weight_decay": (0.0, 1.0, False, False),
    "warmup_epochs": (0.0, 1e5, False, False),
    "label_smoothing": (0.0, 1.0, False, True),
    "fold_bn_at": (0.0, 1.0, False, False),
    "grad_clip": (0.0, 1e6, False, False),
}
MAX_SYNTHETIC_SIDE = 4096
MAX_SYNTHETIC_ELEMENTS = 2 ** 30     # train + test values of the synthetic set (4 GiB of float32)


def _range_text(lo, hi, lo_open, hi_open) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_bounds(key: str, value) -> None:
    """ConfigError unless ``value`` lies in ``BOUNDS[key]``."""
    lo, hi, lo_open, hi_open = BOUNDS[key]
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        meaning = {"fold_bn_at": " (a fraction of the epochs)", "momentum": "", "label_smoothing": ""}.get(key, "")
        raise ConfigError(f"{_flag(key)}{meaning} must be in {_range_text(lo, hi, lo_open, hi_open)}, got {value:g}")


_DEFAULTS: dict | None = None


def defaults() -> dict:
    """The defaults from ``model/default.yaml`` (a fresh copy)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        with open(DEFAULT_FILE) as f:
            _DEFAULTS = yaml.safe_load(f)
    return yaml.safe_load(yaml.safe_dump(_DEFAULTS))


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ----------------------------------------------------------------------------- value parsing

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def parse_ranks(text: str) -> dict:
    """``'a=4x4,b=8'`` (or a YAML mapping) -> ``{'a': [4, 4], 'b': [8]}``."""
    text = text.strip()
    if text in ("", "{}", "none", "null"):
        return {}
    if text.startswith("{"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--ranks: cannot parse {text!r} as a YAML mapping") from None
        return value
    out = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name:
            raise ConfigError(f"--ranks: expected NAME=R1xR2 or NAME=R items separated by commas, got {item!r}")
        try:
            out[name.strip()] = [int(v) for v in value.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--ranks: {name.strip()}: ranks must be integers like 4x4 or 8, got {value!r}") \
                from None
    return out


def _parse_shape(text: str) -> list:
    t = text.strip().strip("[]()").replace("x", ",")
    try:
        return [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--synthetic-shape: expected C,H,W integers like 3,32,32, got {text!r}") from None


def parse_value(key: str, text: str) -> Any:
    """A command-line string converted to the type of ``key``'s default."""
    default = defaults()[key]
    low = text.strip().lower()
    if key in OPTIONAL_STR:
        return None if low in ("none", "null", "") else text
    if key == "ranks":
        return parse_ranks(text)
    if key == "synthetic_shape":
        return _parse_shape(text)
    if isinstance(default, bool):
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{_flag(key)} takes true or false, got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{_flag(key)} takes an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{_flag(key)} takes a number, got {text!r}") from None
    return text


def parse_cli(argv: list[str]) -> tuple[str | None, dict]:
    """``argv`` -> (the ``--config`` file or None, the overrides given on the command line)."""
    known, config_file, out = defaults(), None, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; options look like --epochs 3 (see --help)")
        name, eq, inline = arg[2:].partition("=")
        key = name.replace("-", "_")
        negated = False
        if key not in known and key != "config" and key.startswith("no_") and key[3:] in known:
            key, negated = key[3:], True
        if key != "config" and key not in known:
            raise ConfigError(f"unknown option --{name}; see --help for the list of options")
        if negated:
            if not isinstance(known[key], bool) or eq:
                raise ConfigError(f"--no-{key.replace('_', '-')} is only for true/false options")
            out[key] = False
            i += 1
            continue
        if eq:
            value, i = inline, i + 1
        elif key != "config" and isinstance(known[key], bool):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and nxt.lower() in _TRUE | _FALSE:
                value, i = nxt, i + 2
            else:
                value, i = "true", i + 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{name} needs a value")
            value, i = argv[i + 1], i + 2
        if key == "config":
            config_file = value
        else:
            out[key] = parse_value(key, value)
    return config_file, out


def load_file(path: str) -> dict:
    """The mapping in a YAML config file (ConfigError if missing, unreadable, empty, malformed,
    not a mapping, or with unknown keys)."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} is not a file; give a YAML file of key: value lines")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ConfigError(f"config file {path} is not valid YAML" + (f" (line {line + 1})" if line is not None
                                                                      else "")) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (UTF-8) YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or type(e).__name__})") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; give key: value lines (see --help for the keys)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values (key: value lines), "
                          f"not a {type(data).__name__}")
    unknown = sorted(str(k) for k in set(data) - set(defaults()))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return data


# ----------------------------------------------------------------------------- validation

def _check_type(key: str, value: Any) -> Any:
    default = defaults()[key]
    if key in OPTIONAL_STR:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (a path/name) or null, got {value!r}")
        return value
    if key == "ranks":
        if value is None:
            return {}
        if isinstance(value, str):
            value = parse_ranks(value)
        if not isinstance(value, dict):
            raise ConfigError(f"ranks must map layer names to ranks, got {value!r}")
        out = {}
        for name, r in value.items():
            r = list(r) if isinstance(r, (list, tuple)) else [r]
            if not r or any(isinstance(v, bool) or not isinstance(v, int) for v in r):
                raise ConfigError(f"ranks: {name}: ranks must be integers, got {value[name]!r}")
            out[str(name)] = r
        return out
    if key == "synthetic_shape":
        if isinstance(value, str):
            value = _parse_shape(value)
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SYNTHETIC_SIDE
                       for v in value)):
            raise ConfigError(f"synthetic_shape must be three integers C,H,W from 1 to {MAX_SYNTHETIC_SIDE}, "
                              f"got {value!r}")
        return list(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):               # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key} must be a finite number, got an integer of {len(str(value))} digits") \
                from None
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def validate(cfg: dict) -> dict:
    """Check every key of a full configuration; returns it with values normalised."""
    from . import regularizers
    from .data import DATASETS
    from .nets import MODELS
    from .quant import IMPLS, MAX_BITS, MIN_BITS

    unknown = sorted(str(k) for k in set(cfg) - set(defaults()))
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
    cfg = {k: _check_type(k, v) for k, v in cfg.items()}

    def choice(key, options):
        if cfg[key] not in options:
            raise ConfigError(f"unknown {key.replace('_', ' ')} {cfg[key]!r}; choose one of: {', '.join(options)}")

    choice("model", MODELS)
    choice("data", DATASETS)
    choice("regularizer", regularizers.KINDS)
    choice("schedule", SCHEDULES)
    choice("device", DEVICES)
    choice("quant_impl", IMPLS)
    for key in ("weight_bits", "act_bits", "input_bits"):
        if not MIN_BITS <= cfg[key] <= MAX_BITS:
            raise ConfigError(f"{_flag(key)} must be from {MIN_BITS} to {MAX_BITS}, got {cfg[key]}")
    for key in BOUNDS:
        check_bounds(key, cfg[key])
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise ConfigError(f"--warmup-epochs ({cfg['warmup_epochs']:g}) must not exceed --epochs ({cfg['epochs']})")
    if cfg["data"] == "synthetic":
        c, h, w = cfg["synthetic_shape"]
        n = cfg["synthetic_size"] + max(1, cfg["synthetic_size"] // 4)
        if n * c * h * w > MAX_SYNTHETIC_ELEMENTS:
            raise ConfigError(f"synthetic data of {n} images of {c}x{h}x{w} would take "
                              f"{n * c * h * w * 4 / 2 ** 30:.1f} GiB; lower --synthetic-size or --synthetic-shape")
    if not cfg["dense"] and not cfg["ranks"] and not cfg["flops_reduction"] > 1:
        raise ConfigError(f"--flops-reduction must be greater than 1 (or use --dense), got {cfg['flops_reduction']}")
    if cfg["data"] == "cifar10":
        if not cfg["data_dir"]:
            raise ConfigError("--data cifar10 needs --data-dir PATH (a folder with the python-pickle CIFAR-10 "
                              "files data_batch_1..5, test_batch, batches.meta)")
        if not os.path.isdir(cfg["data_dir"]):
            raise ConfigError(f"data folder {cfg['data_dir']} does not exist; give --data-dir the folder with "
                              f"data_batch_1..5, test_batch and batches.meta")
    if cfg["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if cfg["resume"] is not None and not os.path.isdir(cfg["resume"]):
        raise ConfigError(f"--resume {cfg['resume']}: no such run folder")
    return cfg


def resolve(overrides: dict | None = None, config_file: str | None = None) -> dict:
    """defaults < ``config_file`` < ``overrides``, validated."""
    cfg = defaults()
    if config_file:
        cfg.update(load_file(config_file))
    cfg.update(overrides or {})
    return validate(cfg)


def from_argv(argv: list[str]) -> tuple[dict, dict]:
    """(the full validated configuration, the keys given explicitly by --config and the command line)."""
    config_file, cli = parse_cli(argv)
    explicit = dict(load_file(config_file)) if config_file else {}
    explicit.update(cli)
    return resolve(explicit), explicit


def dump(cfg: dict) -> str:
    """The configuration as YAML (the run folder's config.yaml; loadable with --config)."""
    return yaml.safe_dump({k: cfg[k] for k in defaults() if k in cfg}, sort_keys=False)


def help_text() -> str:
    with open(DEFAULT_FILE) as f:
        body = f.read()
    return ("usage: python model/train_qat.py [--config FILE.yaml] [--key value ...]\n\n"
            "Trains a low-rank (Tucker-2) CNN with Brevitas QAT and writes a run folder.\n"
            "Options are the keys below (--key-name VALUE; booleans --key / --no-key); defaults:\n\n" + body)
