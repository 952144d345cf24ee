"""The benchmarks run (smallest settings); their figures are not asserted."""
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_hw_cycles_quick_on_trained_layers(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import hw_cycles
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "rows.json"
    assert hw_cycles.main(["--quick", "--budgets", "64", "--frames", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "machine:" in text and "bit-exact: 1/1" in text
    row = json.loads(out.read_text())["rows"][0]
    assert row["layer"].startswith("layer1.0.conv1") and row["multipliers"] <= 64
    assert row["measured_cycles"] == row["planned_cycles"] and row["exact"]
