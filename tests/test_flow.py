"""The flow as named steps (deploy/flow.py): selection, records, skipping unchanged steps,
stopping at a failure with the first mismatch named, and bad input."""
import json

import numpy as np
import pytest

from artifact import golden, int_range, save_artifact
from artifact.synth import random_resnet
from deploy import flow


def _run_folder(tmp_path, seed=5, images=3):
    """A run folder as training leaves it after verify (artifact, test inputs and labels),
    without the checkpoint: the flow starts at plan."""
    art = random_resnet(seed, stages=2, blocks=1, channels=(2, 4), height=4, width=4, classes=4, shortcut="strided")
    run = tmp_path / "run"
    save_artifact(run / "artifact", art.manifest, art.tensors)
    rec = art.manifest["input"]
    lo, hi = int_range(rec["bits"], rec["signed"])
    x = np.random.default_rng(seed).integers(lo, hi + 1, size=(images, *rec["shape"]))
    np.save(run / "test_inputs.npy", x)
    np.save(run / "test_labels.npy", np.argmax(golden.run(art, x).reshape(images, -1), axis=1))
    return run, art


def test_step_selection():
    assert flow.select_steps() == ["export", "verify", "plan", "generate", "rtlsim", "hls4ml", "report"]
    assert "bitstream" not in flow.DEFAULT_STEPS
    assert flow.select_steps(first="generate", last="hls4ml") == ["generate", "rtlsim", "hls4ml"]
    assert flow.select_steps(first="rtlsim") == ["rtlsim", "hls4ml", "report"]
    assert flow.select_steps(last="bitstream")[-1] == "bitstream"      # named: the opt-in step runs
    assert flow.select_steps("report, plan") == ["plan", "report"]     # flow order
    for kw, msg in (({"steps": "plan,bogus"}, "not a step"), ({"first": "rtlsim", "last": "plan"}, "comes after"),
                    ({"steps": " , "}, "empty"), ({"steps": "plan", "first": "plan"}, "not both")):
        with pytest.raises(flow.UsageError, match=msg):
            flow.select_steps(**kw)


def test_the_flow_runs_checks_records_and_skips_unchanged_steps(tmp_path, capsys):
    pytest.importorskip("cocotb")
    pytest.importorskip("hls4ml")
    run, art = _run_folder(tmp_path)
    assert flow.main([str(run), "--from", "plan"]) == 0, capsys.readouterr().out
    rec = json.loads((run / "flow" / "flow.json").read_text())
    steps = rec["steps"]
    assert rec["passed"] and list(steps) == ["plan", "generate", "rtlsim", "hls4ml", "report"]
    assert steps["plan"]["checks"]["fits"] is True and steps["rtlsim"]["checks"]["mismatches"] == 0
    assert steps["rtlsim"]["checks"]["classes_identical"] and steps["rtlsim"]["checks"]["images"] == 3
    assert steps["hls4ml"]["checks"]["mismatches"] == 0
    assert steps["generate"]["checks"]["cycles_per_frame"] == steps["plan"]["checks"]["cycles_per_frame"]
    report = json.loads((run / "flow" / "report.json").read_text())
    assert report["passed"] and set(report["steps"]) == {"plan", "generate", "rtlsim", "hls4ml"}
    capsys.readouterr()

    # nothing changed: every step but the report is skipped
    assert flow.main([str(run), "--from", "plan"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n:10s} skipped" in out for n in ("plan", "generate", "rtlsim", "hls4ml"))
    # another budget changes the plan, the Verilog and the simulation, not the hls4ml C simulation
    assert flow.main([str(run), "--from", "plan", "--to", "hls4ml", "--multipliers", "40"]) == 0
    out = capsys.readouterr().out
    assert "hls4ml     skipped" in out and not any(f"{n:10s} skipped" in out for n in ("plan", "generate", "rtlsim"))

    # a wrong RTL output: the first mismatch is named (unit, image, pixel, channel, expected, got)
    outputs = np.load(steps["rtlsim"]["outputs"][0] + "/outputs.npy")
    outputs[2, 1] += 1
    wrong = tmp_path / "outputs.npy"
    np.save(wrong, outputs)
    found = flow._first_output_mismatch(flow.FlowContext(run), {"outputs": str(wrong), "taps": {}},
                                        run / "test_inputs.npy")
    want = golden.run(art, np.load(run / "test_inputs.npy")).reshape(3, -1)
    assert found == {"unit": art.manifest["output"], "output_unit": art.manifest["output"], "image": 2, "pixel": 0,
                     "channel": 1, "expected": int(want[2, 1]), "got": int(want[2, 1]) + 1}


def test_the_fit_is_required_only_on_a_part_given(tmp_path, capsys):
    run, _ = _run_folder(tmp_path)
    assert flow.main([str(run), "--steps", "plan", "--multipliers", "40"]) == 0
    assert json.loads((run / "flow" / "flow.json").read_text())["steps"]["plan"]["checks"]["part"] == "LFE5U-85F"
    assert flow.main([str(run), "--steps", "plan", "--multipliers", "40", "--part", "iCE40UP5K"]) == 1
    out = capsys.readouterr().out
    # its 8 DSPs take 8 of the 40 multipliers, the rest are logic, which is what does not fit
    assert "plan       FAILED" in out and "LUT4 but iCE40UP5K has 5,280" in out and "iCE40UP5K has 8 " not in out


def test_a_failing_step_stops_the_flow_and_is_rerun_next_time(tmp_path, monkeypatch, capsys):
    run, _ = _run_folder(tmp_path)

    def broken(ctx, log):
        raise flow.StepFailed("the RTL differs from the golden model in 1 values",
                              {"mismatches": 1, "first_mismatch": {"unit": "fc", "image": 0}})
    monkeypatch.setitem(flow.STEPS, "generate", flow.STEPS["generate"].__class__(
        **{**flow.STEPS["generate"].__dict__, "run": broken}))
    assert flow.main([str(run), "--from", "plan", "--to", "rtlsim"]) == 1
    out = capsys.readouterr().out
    assert "generate   FAILED" in out and "first mismatch {'unit': 'fc', 'image': 0}" in out
    rec = json.loads((run / "flow" / "flow.json").read_text())
    assert not rec["passed"] and "rtlsim" not in rec["steps"] and rec["steps"]["plan"]["passed"]
    assert rec["steps"]["generate"]["checks"]["first_mismatch"]["unit"] == "fc"
    monkeypatch.undo()
    assert flow.main([str(run), "--steps", "plan,generate"]) == 0      # the failed step reruns, plan is skipped
    out = capsys.readouterr().out
    assert "plan       skipped" in out and "generate   ok" in out


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "plan,nope"], "not a step"),
    (["--from", "hls4ml", "--to", "plan"], "comes after"),
    (["--from", "export"], "no checkpoint.pt"),
    (["--steps", "plan", "--part", "XC9000"], "unknown FPGA part"),
    (["--steps", "bitstream", "--board", "nope"], "not a known board"),
    (["--multipliers", "0"], "argument --multipliers"),
])
def test_bad_input_is_one_line_exit_2_before_any_step(tmp_path, capsys, argv, msg):
    run, _ = _run_folder(tmp_path)
    try:
        rc = flow.main([str(run), *argv])
    except SystemExit as e:                         # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
    assert not (run / "flow").exists()


def test_a_run_folder_without_artifact_or_inputs_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert flow.main([str(tmp_path / "empty"), "--from", "plan"]) == 2
    assert "no artifact/manifest.yaml" in capsys.readouterr().err
    run, _ = _run_folder(tmp_path)
    (run / "test_inputs.npy").unlink()
    assert flow.main([str(run), "--from", "rtlsim"]) == 2
    assert "no test_inputs.npy" in capsys.readouterr().err
    assert flow.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
