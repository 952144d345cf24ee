"""The benchmarks run (smallest settings); their figures are not asserted."""
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str):
    """Import bench/<name>.py as a module."""
    import importlib
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_hw_cycles_quick_on_trained_layers(tmp_path, capsys):
    hw_cycles = _bench_module("hw_cycles")
    out = tmp_path / "rows.json"
    assert hw_cycles.main(["--quick", "--budgets", "64", "--frames", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "machine:" in text and "bit-exact: 1/1" in text
    row = json.loads(out.read_text())["rows"][0]
    assert row["layer"].startswith("layer1.0.conv1") and row["multipliers"] <= 64
    assert row["measured_cycles"] == row["planned_cycles"] and row["exact"]


def test_fpga_layers_table_and_summary(capsys, tmp_path):
    """bench/fpga_layers.py builds each Tucker-2 layer shape once and counts the ones that meet
    the clock and the build-time target (builds replaced by records, so no place and route)."""
    fpga_layers = _bench_module("fpga_layers")

    built = []

    def fake_build(job):
        built.append(job["layer"])
        slow = job["layer"].startswith("layer3")
        return {"multipliers": 64, "cycles_per_frame": 1144, "fmax_mhz": 140.0 if slow else 160.0,
                "timing_pass": not slow, "wall_s": 700.0 if slow else 100.0,
                "resources": {"lut": {"used": 100}, "ff": {"used": 90}, "dsp": {"used": 64}, "bram": None}}

    out = tmp_path / "layers.json"
    assert fpga_layers.main(["--json", str(out)], build_one=fake_build) == 0
    assert len(built) == len(set(built)) == 6                 # 18 Tucker-2 layers, 6 shapes
    summary = json.loads(out.read_text())["summary"]
    assert summary == {"layers": 6, "timing_met": 4, "within_target": 4, "target_s": 600.0,
                       "slowest_s": 700.0, "lowest_fmax_mhz": 140.0}
    assert "built within 600 s: 4/6" in capsys.readouterr().out
    import pytest
    with pytest.raises(SystemExit) as e:
        fpga_layers.main(["--jobs", "0"], build_one=fake_build)
    assert e.value.code == 2 and "--jobs: 0 is outside" in capsys.readouterr().err
    assert fpga_layers.main(["--board", "nosuch"], build_one=fake_build) == 2
    assert "error: unknown board 'nosuch'" in capsys.readouterr().err
    assert fpga_layers.main(["--artifact", str(tmp_path / "none")], build_one=fake_build) == 2
    assert capsys.readouterr().err.count("\n") == 1
    built.clear()

    def failing_build(job):                              # a layer that does not fit the part
        from deploy.fpga.build import DesignTooLarge
        raise DesignTooLarge("design too large for LFE5U-85F: MULT18X18D 200/156")
    assert fpga_layers.main([], build_one=failing_build) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "design too large" in err and "Traceback" not in err


def test_fpga_network_tucker2_beside_its_dense_twin(capsys, tmp_path):
    """bench/fpga_network.py builds the whole network and its dense twin at the multipliers
    the network uses (builds replaced by records, so no place and route) and prints the
    frames/s ratio beside the FLOPs reduction; bad input is one line, exit 2, before any build."""
    fpga_network = _bench_module("fpga_network")
    calls = []

    def fake_build(board, artifact_dir, layer, out, *, multipliers, clock_mhz, speed, seed, log):
        calls.append((Path(artifact_dir).name, layer, multipliers))
        dense = Path(artifact_dir).name == "dense_twin"
        return {"multipliers": multipliers, "cycles_per_frame": 21504 if dense else 12096, "build_s": 1.0,
                "clocks": {"pll_clk": {"fmax_mhz": 120.0 if dense else 150.0}}, "timing_pass": not dense,
                "critical_path": [], "resources": {"lut": {"used": 100}, "ff": {"used": 90},
                                                   "dsp": {"used": multipliers}, "bram": {"used": 5}}}

    out = tmp_path / "net.json"
    assert fpga_network.main(["--json", str(out), "--out", str(tmp_path / "work")], build=fake_build) == 0
    assert calls == [("resnet20_digits", None, 128), ("dense_twin", None, 126)]
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["flops_reduction"] > 1.9 and "FLOPs reduction" in text and "machine:" in text
    assert abs(report["speedup_fps"] - (150.0 / 12096) / (120.0 / 21504)) < 1e-9
    assert report["table"]["multipliers"] == {"tucker2": 128, "dense": 126}
    calls.clear()
    bad = [(["--board", "nosuch"], "unknown board"), (["--artifact", str(tmp_path / "none")], "none"),
           (["--multipliers", "10"], "too small"), (["--json", str(tmp_path)], "folder")]
    for argv, what in bad:
        assert fpga_network.main(argv, build=fake_build) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and not calls, (argv, err)
