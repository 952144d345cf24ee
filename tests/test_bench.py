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
