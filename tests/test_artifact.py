"""Artifact format: validation errors, round trip, golden arithmetic rules."""
import subprocess
import sys

import numpy as np
import pytest

from artifact import ArtifactError, golden, load_artifact, save_artifact, synth


def test_round_half_even_and_left_shift():
    acc = np.array([5, 6, 7, -5, -6, -7, 3, -3, 12, -12, 1, -1])
    assert golden.round_shift(acc, 1).tolist() == [2, 3, 4, -2, -3, -4, 2, -2, 6, -6, 0, 0]
    assert golden.round_shift(np.array([6, -6, 10, -10, 2]), 2).tolist() == [2, -2, 2, -2, 0]
    assert golden.round_shift(np.array([3, -3]), -2).tolist() == [12, -12]
    assert golden.requantize(np.array([-100, 100, 7]), {"shift": 1, "clamp": [0, 15]}).tolist() == [0, 15, 4]


def test_round_shift_matches_float_rounding_randomly():
    rng = np.random.default_rng(0)
    acc = rng.integers(-2**20, 2**20, 5000)
    for s in (1, 3, 7):
        assert np.array_equal(golden.round_shift(acc, s), np.round(acc / 2.0 ** s).astype(np.int64))


def test_save_load_run(tmp_path):
    art = synth.random_tucker2(3, kernel=5, stride=2, padding=2)
    x = synth.random_input(art, 2)
    save_artifact(tmp_path / "a", art.manifest, art.tensors)
    loaded = load_artifact(tmp_path / "a")
    assert np.array_equal(golden.run(loaded, x), golden.run(art, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_conv_matches_direct_loops():
    art = synth.random_conv(5, channels=3, out_channels=4, kernel=3, stride=2, padding=1, height=5, width=5)
    stage = art.manifest["layers"][0]
    x = synth.random_input(art, 1)
    w, b = art.tensors[stage["weight"]].astype(np.int64), art.tensors[stage["bias"]].astype(np.int64)
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    ref = np.zeros((4, 3, 3), np.int64)
    for m in range(4):
        for y in range(3):
            for xx in range(3):
                ref[m, y, xx] = b[m] + (w[m] * xp[:, 2 * y:2 * y + 3, 2 * xx:2 * xx + 3]).sum()
    assert np.array_equal(golden.conv_accumulate(x, art.tensors[stage["weight"]], b, stage)[0], ref)


def test_cli_runs_golden(tmp_path):
    art = synth.random_tucker2(1)
    save_artifact(tmp_path / "a", art.manifest, art.tensors)
    np.save(tmp_path / "x.npy", synth.random_input(art, 3))
    out = subprocess.run([sys.executable, "-m", "artifact", str(tmp_path / "a"), "--input", str(tmp_path / "x.npy"),
                          "--output", str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), golden.run(art, synth.random_input(art, 3)))
    assert subprocess.run([sys.executable, "-m", "artifact", str(tmp_path / "nope")],
                          capture_output=True, text=True).returncode == 2


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    from artifact.files import atomic_write, atomic_write_text
    path = tmp_path / "report.json"
    atomic_write_text(path, "old\n")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1
