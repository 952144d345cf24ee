"""Bad input on every hardware / deploy / bench command line: one line, exit 2, nothing written.

Each row of :data:`CASES` is ``(tool, argv, needle)``; ``argv`` may name the fixtures
``{art}`` (a Tucker-2 layer ``t2`` and a ``maxpool`` layer ``pool``), ``{conv}`` (a dense
conv only), ``{bad_art}`` (a truncated tensors.npz), ``{file}`` (a plain file), ``{npy_*}``
(input arrays: out of range, pickled objects, truncated, floats, fine) and ``{out}`` (a path
that must still not exist afterwards). Every case runs in-process (``main(argv)``) in a
scratch working directory, must return or exit with status 2, print exactly one line on
stderr without a traceback, and leave the scratch folder and the fixtures unchanged. All
of them fail before any heavy work (no elaboration, no g++, no simulator), so they are fast.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from artifact import save_artifact
from artifact.synth import random_conv, random_tucker2

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def _bench(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _main(tool):
    if tool.startswith("bench/"):
        return _bench(tool[len("bench/"):-3]).main
    mod = {"sim": "sim.__main__", "deploy.fpga": "deploy.fpga.__main__", "deploy.hls4ml": "deploy.hls4ml.cli"}.get(tool,
                                                                                                                  tool)
    return importlib.import_module(mod).main


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    base = tmp_path_factory.mktemp("fixtures")
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="t2")
    layer = art.manifest["layers"][0]
    art.manifest["layers"].append({"name": "pool", "op": "maxpool", "inputs": ["t2"], "in": layer["out"],
                                   "kernel": 2, "stride": 2, "padding": 0, "out": {**layer["out"], "shape": [4, 2, 2]}})
    art.manifest["output"] = "pool"
    paths = {"art": save_artifact(base / "art", art.manifest, art.tensors)}
    conv = random_conv(2, channels=4, out_channels=4, height=4, width=4, name="c")
    paths["conv"] = save_artifact(base / "conv", conv.manifest, conv.tensors)
    bad = save_artifact(base / "bad_art", art.manifest, art.tensors)
    data = (bad / "tensors.npz").read_bytes()
    (bad / "tensors.npz").write_bytes(data[: len(data) // 2])
    paths["bad_art"] = bad
    paths["file"] = base / "file"
    paths["file"].write_text("not a folder\n")
    np.save(base / "big.npy", np.full((2, 4, 4, 4), 10**6, dtype=np.int64))
    np.save(base / "ok.npy", np.ones((2, 4, 4, 4), dtype=np.int64))
    np.save(base / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (base / "trunc.npy").write_bytes((base / "big.npy").read_bytes()[:100])
    np.save(base / "float.npy", np.zeros((2, 4, 4, 4)))
    for k in ("big", "ok", "obj", "trunc", "float"):
        paths[f"npy_{k}"] = base / f"{k}.npy"
    foreign = base / "foreign"                       # a user's folder: must never be replaced
    for name in ("t2", "network"):                  # a layer's and the whole network's build folder
        (foreign / "icebreaker" / name).mkdir(parents=True)
        (foreign / "icebreaker" / name / "mine.txt").write_text("keep me\n")
    (foreign / "mine.txt").write_text("keep me\n")
    paths["foreign"] = foreign
    return base, {k: str(v) for k, v in paths.items()}


GEN = ["--artifact", "{art}", "--layer", "t2", "--out", "{out}"]
BIT = ["bitstream", "--board", "icebreaker", "--artifact", "{art}", "--out", "{out}"]
HLS = ["--artifact", "{art}", "--out", "{out}"]
INFER = ["--port", "loop://", "infer"]

#: (tool, argv, a substring of the error line)
CASES = [
    # hw.generate
    ("hw.generate", GEN + ["--multipliers", "nan"], "--multipliers"),
    ("hw.generate", GEN + ["--multipliers", "-3"], "outside"),
    ("hw.generate", GEN + ["--multipliers", "0"], "outside"),
    ("hw.generate", GEN + ["--multipliers", "99999999999"], "outside"),
    ("hw.generate", GEN + ["--multipliers", "2"], "too small"),
    ("hw.generate", GEN + ["--min-utilisation", "nan"], "finite"),
    ("hw.generate", GEN + ["--min-utilisation", "2"], "outside"),
    ("hw.generate", GEN + ["--min-utilisation", "-0.5"], "outside"),
    ("hw.generate", GEN + ["--line-rows", "-1"], "outside"),
    ("hw.generate", GEN + ["--line-rows", "100000000"], "outside"),
    ("hw.generate", GEN + ["--line-rows", "2"], "line buffers"),
    ("hw.generate", ["--artifact", "{art}", "--layer", "t2", "--out", "{file}"], "not a folder"),
    ("hw.generate", ["--artifact", "{art}", "--layer", "t2", "--out", "{file}/sub"], "is a file"),
    ("hw.generate", ["--artifact", "{art}", "--layer", "t2", "--out", ""], "empty"),
    ("hw.generate", GEN + ["--top", "../evil"], "Verilog identifier"),
    ("hw.generate", GEN + ["--top", "a b"], "Verilog identifier"),
    ("hw.generate", ["--artifact", "{file}", "--layer", "t2", "--out", "{out}"], "not an artifact directory"),
    ("hw.generate", ["--artifact", "", "--layer", "t2", "--out", "{out}"], "not an artifact directory"),
    ("hw.generate", ["--artifact", "{bad_art}", "--layer", "t2", "--out", "{out}"], "bad_art"),
    ("hw.generate", ["--artifact", "{art}", "--layer", "", "--out", "{out}"], "empty"),
    ("hw.generate", ["--artifact", "{art}", "--layer", "pool", "--out", "{out}"], "op 'maxpool'"),
    # python -m sim
    ("sim", ["--artifact", "{art}", "--layer", "pool", "--out", "{out}"], "Tucker-2 layers only"),
    ("sim", ["--artifact", "{art}", "--layer", "nope", "--out", "{out}"], "no layer 'nope'"),
    ("sim", ["--artifact", "{art}", "--multipliers", "0", "--out", "{out}"], "outside"),
    ("sim", ["--artifact", "{art}", "--multipliers", "2", "--out", "{out}"], "too small"),
    ("sim", ["--artifact", "{conv}", "--no-network", "--out", "{out}"], "no Tucker-2 layer"),
    ("sim", ["--artifact", "{bad_art}", "--out", "{out}"], "bad_art"),
    ("sim", ["--artifact", "", "--out", "{out}"], "empty"),
    ("sim", ["--seed", "nan", "--out", "{out}"], "--seed"),
    ("sim", ["--seed", "-1", "--out", "{out}"], "--seed"),
    ("sim", ["--jobs", "0", "--out", "{out}"], "--jobs"),
    ("sim", ["--jobs", "100000", "--out", "{out}"], "--jobs"),
    ("sim", ["--frames", "-1", "--out", "{out}"], "--frames"),
    ("sim", ["--random", "-5", "--out", "{out}"], "--random"),
    ("sim", ["--out", "{file}"], "not a folder"),
    ("sim", ["--multipliers", "8", "--out", "{out}"], "--artifact"),
    ("sim", ["--layer", "t2", "--out", "{out}"], "--artifact"),
    # python -m sim.formal
    ("sim.formal", ["--config", "nope", "--out", "{out}"], "invalid choice"),
    ("sim.formal", ["--out", "{file}"], "not a folder"),
    # python -m deploy.fpga bitstream / asic / sim, and the module entry points
    ("deploy.fpga", BIT + ["--clock-mhz", "nan"], "finite"),
    ("deploy.fpga", BIT + ["--clock-mhz", "inf"], "finite"),
    ("deploy.fpga", BIT + ["--clock-mhz", "-25"], "outside"),
    ("deploy.fpga", BIT + ["--clock-mhz", "1e9"], "outside"),
    ("deploy.fpga", BIT + ["--baud", "0"], "--baud"),
    ("deploy.fpga", BIT + ["--baud", "-9600"], "--baud"),
    ("deploy.fpga", BIT + ["--baud", "fast"], "--baud"),
    ("deploy.fpga", BIT + ["--min-utilisation", "nan"], "--min-utilisation"),
    ("deploy.fpga", BIT + ["--multipliers", "0"], "--multipliers"),
    ("deploy.fpga", BIT + ["--multipliers", "2"], "too small"),
    ("deploy.fpga", BIT + ["--seed", "-1"], "--seed"),
    ("deploy.fpga", BIT + ["--layer", "pool"], "maxpool"),
    ("deploy.fpga", BIT + ["--layer", "nope"], "no layer 'nope'"),
    ("deploy.fpga", BIT + ["--clock-mhz", "50"], "needs a PLL"),
    ("deploy.fpga", BIT + ["--speed", "9"], "speed grade"),
    ("deploy.fpga", ["bitstream", "--board", "arty-a7-35", "--artifact", "{art}", "--out", "{file}"], "not a folder"),
    ("deploy.fpga", ["bitstream", "--board", "icebreaker", "--artifact", "{art}", "--out", "{foreign}"],
     "not written by this tool"),
    ("deploy.fpga", ["bitstream", "--board", "", "--artifact", "{art}", "--out", "{out}"], "unknown board"),
    ("deploy.fpga", ["bitstream", "--board", "de0-nano", "--artifact", "{art}", "--out", "{out}"], "unknown board"),
    ("deploy.fpga", ["bitstream", "--board", "arty-a7-35", "--artifact", "{file}", "--out", "{out}"],
     "not an artifact directory"),
    ("deploy.fpga", ["bitstream", "--board", "arty-a7-35", "--artifact", "{bad_art}", "--out", "{out}"], "bad_art"),
    ("deploy.fpga", ["asic", "--artifact", "{art}", "--multipliers", "-1", "--out", "{out}"], "--multipliers"),
    ("deploy.fpga", ["asic", "--artifact", "{art}", "--multipliers", "2", "--out", "{out}"], "too small"),
    ("deploy.fpga", ["asic", "--artifact", "{art}", "--layer", "pool", "--out", "{out}"], "maxpool"),
    ("deploy.fpga", ["asic", "--artifact", "{file}", "--out", "{out}"], "not an artifact directory"),
    ("deploy.fpga", ["asic", "--artifact", "{bad_art}", "--out", "{out}"], "bad_art"),
    ("deploy.fpga", ["asic", "--artifact", "{art}", "--out", "{file}"], "not a folder"),
    ("deploy.fpga", ["asic", "--artifact", "{conv}", "--dense", "--out", "{out}"], "Tucker-2"),
    ("deploy.fpga", ["sim", "--artifact", "{art}", "--layer", "t2", "--frames", "0", "--out", "{out}"], "--frames"),
    ("deploy.fpga", ["sim", "--artifact", "{art}", "--layer", "nope", "--out", "{out}"], "no layer 'nope'"),
    ("deploy.fpga", ["sim", "--artifact", "{art}", "--layer", "pool", "--out", "{out}"], "maxpool"),
    ("deploy.fpga", ["sim", "--artifact", "{file}", "--layer", "t2", "--out", "{out}"], "not an artifact directory"),
    ("deploy.fpga", ["sim", "--artifact", "{art}", "--layer", "t2", "--out", "{file}"], "not a folder"),
    ("deploy.fpga", ["nope"], "invalid choice"),
    ("deploy.fpga.simrun", ["--artifact", "{art}", "--layer", "t2", "--frames", "nan", "--out", "{out}"], "--frames"),
    ("deploy.fpga.simrun", ["--artifact", "{bad_art}", "--layer", "t2", "--out", "{out}"], "bad_art"),
    ("deploy.fpga.asic", ["--artifact", "{art}", "--multipliers", "x", "--out", "{out}"], "--multipliers"),
    ("deploy.fpga.build", ["--board", "nope", "--artifact", "{art}", "--out", "{out}"], "unknown board"),
    # python -m deploy.hls4ml
    ("deploy.hls4ml", HLS + ["--clock-ns", "nan"], "--clock-ns"),
    ("deploy.hls4ml", HLS + ["--clock-ns", "inf"], "--clock-ns"),
    ("deploy.hls4ml", HLS + ["--clock-ns", "0"], "--clock-ns"),
    ("deploy.hls4ml", HLS + ["--batch", "0"], "--batch"),
    ("deploy.hls4ml", HLS + ["--batch", "1e3"], "--batch"),
    ("deploy.hls4ml", HLS + ["--seed", "-1"], "--seed"),
    ("deploy.hls4ml", HLS + ["--reuse-factor", "-1"], "--reuse-factor"),
    ("deploy.hls4ml", HLS + ["--backend", ""], "unknown backend"),
    ("deploy.hls4ml", HLS + ["--part", ""], "part"),
    ("deploy.hls4ml", HLS + ["--inputs", "{npy_big}"], "outside the input's"),
    ("deploy.hls4ml", HLS + ["--inputs", "{npy_obj}"], "not a readable .npy"),
    ("deploy.hls4ml", HLS + ["--inputs", "{npy_trunc}"], "not a readable .npy"),
    ("deploy.hls4ml", HLS + ["--inputs", "{npy_float}"], "integer"),
    ("deploy.hls4ml", HLS + ["--inputs", "{out}.npy"], "does not exist"),
    ("deploy.hls4ml", HLS + ["--inputs", "{art}"], "not a file"),
    ("deploy.hls4ml", HLS + ["--inputs", "{npy_ok}", "--layer", "t2"], "cannot be combined"),
    ("deploy.hls4ml", ["--artifact", "{art}", "--out", "{file}"], "not a folder"),
    ("deploy.hls4ml", ["--artifact", "{art}", "--out", "{file}/sub"], "is a file"),
    ("deploy.hls4ml", ["--artifact", "{art}", "--out", "{foreign}"], "not an hls4ml project"),
    ("deploy.hls4ml", ["--artifact", "{art}", "--out", ""], "empty"),
    ("deploy.hls4ml", ["--artifact", "{file}", "--out", "{out}"], "not an artifact directory"),
    ("deploy.hls4ml", ["--artifact", "{bad_art}", "--out", "{out}"], "bad_art"),
    # python -m deploy.host (all before the port is opened)
    ("deploy.host", ["--port", "loop://", "--baud", "nan", "info"], "--baud"),
    ("deploy.host", ["--port", "loop://", "--baud", "-1", "info"], "--baud"),
    ("deploy.host", ["--port", "loop://", "--timeout", "nan", "info"], "--timeout"),
    ("deploy.host", ["--port", "loop://", "--timeout", "-1", "info"], "--timeout"),
    ("deploy.host", ["--port", "loop://", "--retries", "-1", "info"], "--retries"),
    ("deploy.host", ["--port", "", "info"], "--port"),
    ("deploy.host", ["info"], "--port"),
    ("deploy.host", ["--port", "loop://", "--json", "{file}/x.json", "info"], "is a file"),
    ("deploy.host", ["--port", "loop://", "--json", "{art}", "info"], "is a folder"),
    ("deploy.host", INFER + ["--npy", "{out}.npy"], "does not exist"),
    ("deploy.host", INFER + ["--npy", "{npy_trunc}"], "not a readable .npy"),
    ("deploy.host", INFER + ["--npy", "{npy_obj}"], "not a readable .npy"),
    ("deploy.host", INFER + ["--npy", "{npy_float}"], "integer"),
    ("deploy.host", INFER + ["--npy", "{npy_big}", "--artifact", "{art}", "--layer", "t2"], "outside the input's"),
    ("deploy.host", INFER + ["--npy", "{npy_ok}", "--artifact", "{art}", "--layer", "pool"], "maxpool"),
    ("deploy.host", INFER + ["--npy", "{npy_ok}", "--layer", "t2"], "--artifact"),
    ("deploy.host", INFER + ["--npy", "{npy_ok}", "--check"], "--artifact"),
    ("deploy.host", INFER + ["--npy", "{npy_ok}", "--out", "{out}"], "must end in .npy"),
    ("deploy.host", INFER + ["--npy", "{npy_ok}", "--out", "{file}/y.npy"], "is a file"),
    ("deploy.host", INFER + ["--digits", "-1", "--artifact", "{art}"], "--digits"),
    ("deploy.host", INFER + ["--digits", "5000", "--artifact", "{art}"], "--digits"),
    ("deploy.host", INFER + ["--digits", "3"], "--artifact"),
    ("deploy.host", INFER + ["--digits", "3", "--artifact", "{file}"], "not an artifact directory"),
    ("deploy.host", INFER + ["--digits", "3", "--artifact", "{bad_art}"], "bad_art"),
    ("deploy.host", INFER + ["--digits", "3", "--offset", "1796", "--artifact", "{art}"], "past the 1797"),
    ("deploy.host", ["serve", "--artifact", "{file}"], "not an artifact directory"),
    ("deploy.host", ["serve", "--artifact", "{bad_art}"], "bad_art"),
    ("deploy.host", ["serve", "--artifact", "{art}", "--layer", "nope"], "no layer 'nope'"),
    ("deploy.host", ["serve", "--artifact", "{art}", "--tcp", "-5"], "--tcp"),
    ("deploy.host", ["serve", "--artifact", "{art}", "--tcp", "99999"], "--tcp"),
    ("deploy.host", ["serve", "--artifact", "{art}", "--board-timeout", "nan"], "--board-timeout"),
    # bench/
    ("bench/hw_cycles.py", ["--budgets", "0", "--quick"], "--budgets"),
    ("bench/hw_cycles.py", ["--frames", "1", "--quick"], "--frames"),
    ("bench/hw_cycles.py", ["--artifact", "{file}", "--quick"], "not an artifact directory"),
    ("bench/hw_cycles.py", ["--artifact", "{bad_art}", "--quick"], "bad_art"),
    ("bench/hw_cycles.py", ["--artifact", "{conv}", "--quick"], "no Tucker-2 layer"),
    ("bench/hw_cycles.py", ["--min-utilisation", "nan", "--quick"], "--min-utilisation"),
    ("bench/hw_cycles.py", ["--quick", "--json", "{file}/x.json"], "is a file"),
    ("bench/fpga_layers.py", ["--clock-mhz", "nan"], "--clock-mhz"),
    ("bench/fpga_layers.py", ["--jobs", "-1"], "--jobs"),
    ("bench/fpga_layers.py", ["--target-s", "nan"], "--target-s"),
    ("bench/fpga_layers.py", ["--out", "{file}"], "not a folder"),
    ("bench/fpga_layers.py", ["--board", "nope"], "unknown board"),
    ("bench/fpga_layers.py", ["--speed", "9"], "speed grade"),
    ("bench/fpga_layers.py", ["--artifact", "{bad_art}"], "bad_art"),
    ("bench/fpga_layers.py", ["--multipliers", "2"], "too small"),
    ("bench/fpga.py", ["--board", "nope"], "unknown board"),
    ("bench/fpga.py", ["--clock-mhz", "nan", "--artifact", "{art}"], "--clock-mhz"),
    ("bench/fpga.py", ["--artifact", "{file}"], "not an artifact directory"),
    ("bench/fpga.py", ["--artifact", "{art}", "--layer", "pool"], "Tucker-2"),
    ("bench/fpga.py", ["--artifact", "{art}", "--out", "{file}"], "not a folder"),
    ("bench/fpga.py", ["--layer", "t2"], "--artifact"),
]
if os.path.exists("/dev/full"):                     # a device is never replaced by a report
    CASES += [("deploy.host", ["--port", "loop://", "--json", "/dev/full", "info"], "not a regular file"),
              ("bench/hw_cycles.py", ["--quick", "--json", "/dev/full"], "not a regular file"),
              ("hw.generate", ["--artifact", "{art}", "--layer", "t2", "--out", "/dev/full"], "not a folder")]


def _snapshot(*dirs):
    return {d: sorted((str(p.relative_to(d)), p.stat().st_size) for p in Path(d).rglob("*")) for d in dirs}


@pytest.mark.parametrize("tool,argv,needle", CASES, ids=[f"{t} {' '.join(a)}" for t, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tool, argv, needle, fx, tmp_path, capsys, monkeypatch):
    base, paths = fx
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)                          # anything written to the cwd shows up too
    monkeypatch.delenv("SEED", raising=False)
    out = tmp_path / "out"
    args = [a.format(out=out, **paths) for a in argv]
    before = _snapshot(tmp_path, base)
    main = _main(tool)
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert ": error: " in lines[0], lines[0]
    assert not out.exists()
    assert _snapshot(tmp_path, base) == before, "something was written"


def test_bad_seed_environment_variable(tmp_path, capsys, monkeypatch):
    from sim.__main__ import main
    monkeypatch.setenv("SEED", "abc")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "$SEED" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("tool,argv", [
    ("hw.generate", GEN), ("deploy.hls4ml", HLS), ("sim", ["--artifact", "{art}", "--out", "{out}"]),
    ("deploy.fpga", BIT),
])
def test_read_only_out_is_refused(tool, argv, fx, tmp_path, capsys):
    _, paths = fx
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        args = [a.format(out=ro / "o", **paths) for a in argv]
        try:
            rc = _main(tool)(args)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "not writable" in err, err
    finally:
        ro.chmod(0o755)


def test_full_disk_while_writing_is_one_line(fx, tmp_path, capsys, monkeypatch):
    """An OSError in the middle of the work (ENOSPC here) is one line, exit 2, not a traceback."""
    import errno

    import hw.generate as G
    _, paths = fx

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(G, "atomic_write_text", full)
    rc = G.main(["--artifact", paths["art"], "--layer", "t2", "--multipliers", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "No space left on device" in err, err
