"""Guards below the command lines: the library functions the CLIs call refuse NaN, inf and
out-of-range values themselves (one-line errors), and the simulation regression never
deletes an RTL folder it did not write. Fast: nothing is elaborated or simulated."""
import math

import pytest

from artifact.synth import random_tucker2
from hw.planner import plan_folding
from hw.spec import HwError, layer_stages


@pytest.fixture(scope="module")
def t2():
    return random_tucker2(0, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4)


# ----------------------------------------------------------------------------- planner

@pytest.mark.parametrize("u", [math.nan, math.inf, -math.inf, -0.1, 1.5, "0.5", True, [0.5]])
def test_plan_folding_rejects_bad_min_utilisation(t2, u):
    stages = layer_stages(t2, "t2")
    with pytest.raises(HwError, match="min_utilisation must be a number in \\[0, 1\\]") as e:
        plan_folding(stages, 16, min_utilisation=u)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("budget", [0, -3, 64.5, 64.0, math.nan, math.inf, "64", True])
def test_plan_folding_rejects_bad_budget(t2, budget):
    stages = layer_stages(t2, "t2")
    with pytest.raises(HwError, match="multiplier budget") as e:
        plan_folding(stages, budget)
    msg = str(e.value)
    assert "\n" not in msg and ("positive" in msg)


def test_plan_folding_accepts_edges(t2):
    import numpy as np
    stages = layer_stages(t2, "t2")
    assert plan_folding(stages, 3, min_utilisation=0).multipliers == 3
    assert plan_folding(stages, np.int64(16), min_utilisation=1).budget == 16
    assert plan_folding(stages, 16, min_utilisation=np.float32(0.5)).budget == 16


# ----------------------------------------------------------------------------- board top

@pytest.mark.parametrize("board", ["ulx3s-85f", "icebreaker"])
@pytest.mark.parametrize("clock", [math.nan, math.inf, -math.inf, 0, 0.0, -25.0, "25", True])
def test_board_top_rejects_bad_clock(t2, board, clock):
    pytest.importorskip("amaranth_boards")
    from deploy.fpga.boards import get_board
    from deploy.fpga.top import BoardTop
    plat = get_board(board).platform()
    with pytest.raises(ValueError, match="clock .* MHz (must be a finite positive|is not a number)") as e:
        BoardTop(plat, t2, "t2", clock_mhz=clock)
    assert "\n" not in str(e.value)


def test_check_clock_mhz_passes_good_values():
    from deploy.fpga.top import check_clock_mhz
    assert check_clock_mhz(25) == 25.0 and check_clock_mhz(48.5) == 48.5


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0, -1.0, "0.02"])
def test_host_link_rejects_bad_timeout(t2, timeout):
    from deploy.fpga.link import host_link_for
    with pytest.raises(ValueError, match="link timeout") as e:
        host_link_for(t2, "t2", clk_hz=25e6, baud=115200, timeout_s=timeout)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- board model

@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, 0, 0.0, -0.02, "0.02", True, 1e9])
def test_model_info_rejects_bad_timeout(t2, timeout):
    from deploy.fpga.board_model import BoardModel, model_info
    with pytest.raises(ValueError, match="board model timeout") as e:
        model_info(t2, "t2", timeout_s=timeout)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="board model timeout"):
        BoardModel(t2, "t2", timeout_s=timeout)


def test_model_info_timeout_round_trips(t2):
    from deploy.fpga import protocol as P
    from deploy.fpga.board_model import model_info
    info = model_info(t2, "t2", timeout_s=0.5, clk_hz=25_000_000)
    assert info.timeout_cycles == 12_500_000
    assert P.BoardInfo.from_bytes(info.to_bytes()) == info


# ----------------------------------------------------------------------------- sim RTL folder

def _case(name="c0"):
    return {"name": name, "layer": "t2", "seed": 1, "synth": None, "artifact": "/nonexistent/artifact",
            "multipliers": None, "frames": 1}


def test_run_case_refuses_a_foreign_rtl_folder(tmp_path):
    from sim.regress import run_case
    rtl = tmp_path / "c0" / "rtl"
    rtl.mkdir(parents=True)
    (rtl / "notes.txt").write_text("mine\n")
    (rtl / "sub").mkdir()
    rec = run_case(_case(), tmp_path)
    assert not rec["passed"]
    assert rec["error"].startswith("RtlFolderError:") and "did not write" in rec["error"]
    assert "\n" not in rec["error"]
    assert (rtl / "notes.txt").read_text() == "mine\n" and (rtl / "sub").is_dir()


def test_run_case_refuses_a_file_or_link_in_place_of_rtl(tmp_path):
    from sim.regress import run_case
    (tmp_path / "c0").mkdir()
    (tmp_path / "c0" / "rtl").write_text("a file\n")
    rec = run_case(_case(), tmp_path)
    assert rec["error"].startswith("RtlFolderError:")
    assert (tmp_path / "c0" / "rtl").read_text() == "a file\n"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.v").write_text("module keep; endmodule\n")
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "rtl").symlink_to(target)
    rec = run_case(_case("c1"), tmp_path)
    assert rec["error"].startswith("RtlFolderError:")
    assert (target / "keep.v").exists()


def test_run_case_replaces_its_own_rtl_folder(tmp_path):
    """With the marker (or, from an older run, only .v/.json files) the folder is removed;
    the case then fails later, on the missing artifact, not on the folder."""
    from sim.regress import RTL_MARKER, run_case
    for name, files in (("c0", [RTL_MARKER, "elrt_t2.v", "stale.txt"]), ("c1", ["elrt_t2.v", "elrt_t2.json"]),
                        ("c2", [])):
        rtl = tmp_path / name / "rtl"
        rtl.mkdir(parents=True)
        for f in files:
            (rtl / f).write_text("old\n")
        rec = run_case(_case(name), tmp_path)
        assert not rec["error"].startswith("RtlFolderError"), rec["error"]
        assert not rtl.exists()


def test_run_cases_checks_every_rtl_folder_before_running(tmp_path):
    from sim.regress import RtlFolderError, run_cases
    rtl = tmp_path / "c1" / "rtl"
    rtl.mkdir(parents=True)
    (rtl / "design.sv").write_text("keep\n")
    with pytest.raises(RtlFolderError, match="did not write") as e:
        run_cases([_case("c0"), _case("c1")], tmp_path, jobs=1, progress=lambda _: None)
    assert isinstance(e.value, OSError) and "\n" not in str(e.value)
    assert not (tmp_path / "c0").exists() and not (tmp_path / "summary.json").exists()
    assert (rtl / "design.sv").read_text() == "keep\n"
