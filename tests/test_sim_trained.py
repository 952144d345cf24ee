"""`make -C hw sim ARTIFACT=<the default trained model>` on one of its Tucker-2 layers,
with the Makefile's relative output folder (as users run it)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_sim_on_a_trained_layer_with_relative_paths():
    out = "build/test-sim-trained"
    shutil.rmtree(ROOT / out, ignore_errors=True)
    r = subprocess.run(["make", "-C", "hw", "sim", f"PYTHON={sys.executable}", "ARTIFACT=tests/fixtures/resnet20_digits",
                        "LAYER=layer3.2.conv2", f"SIM_OUT={out}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((ROOT / out / "summary.json").read_text())
    assert summary["passed"] and summary["cases"] == 1 and summary["tests_passed"] == summary["tests"] == 3
    tests = summary["results"][0]["tests"]
    assert all(t["elements_compared"] > 0 and t["utilisation"] > 0 for t in tests)
    assert all(t["stages_checked"] == ["u1", "g", "u2"] for t in tests)
    shutil.rmtree(ROOT / out, ignore_errors=True)
