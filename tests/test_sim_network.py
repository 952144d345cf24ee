"""The whole-network engine under cocotb + Verilator, compared with the golden model.

Fast set: one random residual network (identity and strided shortcuts, pooling,
classifier), a fault that the comparison must find, the default trained network on a
few images, and the command line's bad input. Slow: the default network on the 360
held-out digits test images shipped with the fixture.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cocotb")
pytest.importorskip("amaranth")

from artifact import golden, load_artifact  # noqa: E402
from artifact.synth import random_resnet  # noqa: E402
from sim.network import network_passed, run_network  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "resnet20_digits"
TEST_INPUTS = REPO / "tests" / "fixtures" / "test_inputs.npy"
TEST_LABELS = REPO / "tests" / "fixtures" / "test_labels.npy"


def _quiet(_line):
    pass


@pytest.fixture(scope="module")
def small_net():
    return random_resnet(11, channels=(2, 3), height=(5, 5), width=(4, 4), stages=2, blocks=1,
                         shortcut="strided", maxpool=False)


def _check_report(report, n):
    assert report["images"] == n
    assert report["mismatches"] == 0, report
    assert report["classes_identical"]
    assert {"clean", "stress", "reset"} <= set(report["phases"])
    assert all(p["mismatches"] == 0 for p in report["phases"].values())
    assert report["taps"] and all(t["mismatches"] == 0 for t in report["taps"].values())
    assert report["cycles_per_frame_measured"] is not None
    assert report["ideal_cycles_per_frame"] <= report["cycles_per_frame_expected"]
    got = np.load(report["outputs"], allow_pickle=False)
    assert got.dtype == np.int64 and got.shape[0] == n


def test_random_residual_network_is_bit_exact_in_verilator(small_net, tmp_path):
    report = run_network(small_net, tmp_path / "net", images=5, stress_frames=4, seed=3, progress=_quiet)
    _check_report(report, 5)
    assert network_passed(report)
    # steady state within 5% of the planner's expectation
    assert abs(report["cycles_per_frame_measured"] / report["cycles_per_frame_expected"] - 1) <= 0.05
    # the stream profile: every stream moved each frame's beats, fractions of one window
    streams = report["streams"]
    beats_in = int(np.prod(small_net.manifest["input"]["shape"][1:]))
    assert streams["pix_in"]["transfers"] == 5 * beats_in
    for layer in small_net.manifest["layers"]:
        shape = layer["out"]["shape"]
        assert streams[layer["name"]]["transfers"] == 5 * (shape[1] * shape[2] if len(shape) == 3 else 1)
    assert any(name.endswith(".window") for name in streams)
    for rec in streams.values():
        assert 0 <= rec["transfer"] + rec["wait"] <= 1 and rec["empty"] >= 0
    on_disk = json.loads((tmp_path / "net" / "network.json").read_text())
    assert on_disk["mismatches"] == 0 and on_disk["outputs"] == report["outputs"]


def test_network_with_every_product_in_logic_is_bit_exact(small_net, tmp_path):
    """``dsps=0``: every MAC stage's products built by hw/dsp.py in logic (as on a part with
    fewer DSPs than the plan multipliers), same values and cycles."""
    report = run_network(small_net, tmp_path / "soft", images=4, stress_frames=2, seed=4, dsps=0, progress=_quiet)
    _check_report(report, 4)
    assert network_passed(report)
    assert abs(report["cycles_per_frame_measured"] / report["cycles_per_frame_expected"] - 1) <= 0.05
    rtl = "".join(p.read_text() for p in (tmp_path / "soft" / "rtl").glob("*.v"))
    assert "_pp0" in rtl


def test_serial_op_units_leave_time_for_a_consumer_that_reads_in_place(tmp_path, monkeypatch):
    """An ``add`` feeding a strided 1x1 shortcut (which holds the add's output register while
    it reads the pixel) stays one requantizer per channel: built serial, it would start a pixel
    only after the shortcut let go and slow the whole network (the planner's rule off: 240
    cycles per frame instead of 192)."""
    import hw.network as N
    art = random_resnet(1, channels=(3, 4), height=(8, 8), width=(8, 8), stages=3, blocks=1, shortcut="strided",
                        maxpool=False)
    seg, _, _ = N.select_layers(art)
    assert "layer2.0.add" not in N.plan_network(art, seg).op_lanes and N.plan_network(art, seg).op_lanes
    report = run_network(art, tmp_path / "on", images=4, stress_frames=0, seed=3, progress=_quiet)
    assert report["mismatches"] == 0
    assert abs(report["cycles_per_frame_measured"] / report["cycles_per_frame_expected"] - 1) <= 0.05
    monkeypatch.setattr(N, "_consume_cycles", lambda *a: 0)        # the rule off: the comparison must see it
    assert "layer2.0.add" in N.plan_network(art, seg).op_lanes
    report = run_network(art, tmp_path / "off", images=4, stress_frames=0, seed=3, progress=_quiet)
    assert report["mismatches"] == 0
    assert report["cycles_per_frame_measured"] > 1.1 * report["cycles_per_frame_expected"]


def test_op_unit_fifo_leaves_time_for_a_consumer_that_reads_in_place(tmp_path, monkeypatch):
    """``layer1.0.add`` feeds ``layer2.0.conv1``'s U1, which reads each pixel in place for
    nearly the network's period: with one output slot the add refills only after the pop
    (hw.units.OP_REFILL), so the planner gives it two (the rule off: 1064 cycles per frame
    instead of 840)."""
    import hw.network as N
    art = random_resnet(10, channels=(2, 6), height=(6, 8), width=(6, 8), stages=2, blocks=1, shortcut="strided",
                        maxpool=False)
    seg, _, _ = N.select_layers(art)
    assert N.plan_network(art, seg, 32).fifo_depths["layer1.0.add"] == 2
    report = run_network(art, tmp_path / "on", images=4, stress_frames=0, seed=3, multipliers=32, progress=_quiet)
    assert report["mismatches"] == 0
    assert abs(report["cycles_per_frame_measured"] / report["cycles_per_frame_expected"] - 1) <= 0.05
    credited = N.op_cycles
    monkeypatch.setattr(N, "op_cycles", lambda pixels, depth, held=0: credited(pixels, depth))   # the rule off
    assert N.plan_network(art, seg, 32).fifo_depths["layer1.0.add"] == 1
    report = run_network(art, tmp_path / "off", images=4, stress_frames=0, seed=3, multipliers=32, progress=_quiet)
    assert report["mismatches"] == 0
    assert report["cycles_per_frame_measured"] > 1.1 * report["cycles_per_frame_expected"]


def test_a_wrong_weight_in_the_rtl_is_found(small_net, tmp_path):
    report = run_network(small_net, tmp_path / "bad", images=4, stress_frames=0, seed=3, inject="weight",
                         progress=_quiet)
    assert report["mismatches"] > 0 and not network_passed(report)


def test_default_network_on_a_few_test_images(tmp_path):
    art = load_artifact(FIXTURE)
    x = np.load(TEST_INPUTS, allow_pickle=False)[:3]
    report = run_network(art, tmp_path / "net", inputs=x, stress_frames=3, seed=1, progress=_quiet)
    _check_report(report, 3)
    assert np.array_equal(np.load(report["outputs"]), golden.run(art, x).reshape(3, -1))


@pytest.mark.slow
def test_default_network_on_all_360_test_images(tmp_path):
    art = load_artifact(FIXTURE)
    x = np.load(TEST_INPUTS, allow_pickle=False)
    labels = np.load(TEST_LABELS, allow_pickle=False)
    report = run_network(art, tmp_path / "net", inputs=x, labels=labels, stress_frames=8, seed=1, progress=_quiet)
    _check_report(report, 360)
    assert report["accuracy"] == report["golden_accuracy"] == art.manifest["model"]["test_acc"]


def _sim(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("make_args,needle", [
    (lambda t: ["--network", "--no-network"], "exclude each other"),
    (lambda t: ["--network", "--inputs", str(t / "missing.npy")], "missing.npy"),
    (lambda t: ["--network", "--inputs", str(t / "wrong.npy")], "expected shape"),
    (lambda t: ["--no-network", "--images", "3"], "for the whole network"),
    (lambda t: ["--network", "--multipliers", "3"], "MAC stages"),
])
def test_network_command_line_bad_input_is_one_line(tmp_path, make_args, needle):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), dtype=np.int8))
    r = _sim("--artifact", str(FIXTURE), "--out", str(tmp_path / "o"), *make_args(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
