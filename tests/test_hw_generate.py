"""Verilog generation: files, JSON description, port names, and one-line CLI errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("amaranth")

from artifact import save_artifact  # noqa: E402
from artifact.synth import random_conv, random_tucker2  # noqa: E402
from hw.generate import generate, main  # noqa: E402
from hw.spec import HwError, layer_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def art_dir(tmp_path_factory):
    art = random_tucker2(4, channels=3, out_channels=4, ranks=(2, 2), kernel=3, stride=2, height=4, width=4,
                         in_bits=4, in_signed=True)
    layer = art.manifest["layers"][0]
    pool_out = {**layer["out"], "shape": [4, 1, 1]}
    art.manifest["layers"].append({"name": "pool", "op": "maxpool", "inputs": ["t2"], "in": layer["out"],
                                   "kernel": 2, "stride": 2, "padding": 0, "out": pool_out})
    art.manifest["output"] = "pool"
    return save_artifact(tmp_path_factory.mktemp("art") / "a", art.manifest, art.tensors)


def _header_ports(text, top):
    head = text[text.index(f"module {top}("):]
    return {p.strip() for p in head[head.index("(") + 1:head.index(")")].split(",")}


def test_generate_writes_verilog_and_description(art_dir, tmp_path):
    desc = generate(art_dir, "t2", 8, tmp_path, min_utilisation=0.9)
    top = desc["top"]
    text = (tmp_path / desc["verilog"]).read_text()
    assert json.loads((tmp_path / f"{top}.json").read_text()) == desc
    ports = _header_ports(text, top)
    p = desc["ports"]
    assert {p["clk"], p["rst"]} | {p[d][k] for d in ("in", "out") for k in ("valid", "ready", "payload")} == ports
    assert f"input [{p['in']['width'] - 1}:0] {p['in']['payload']};" in text
    assert f"output [{p['out']['width'] - 1}:0] {p['out']['payload']};" in text
    assert desc["payload"]["in"] == {**desc["payload"]["in"], "shape": [3, 4, 4], "bits": 4, "signed": True,
                                     "width": 12, "beats_per_frame": 16}
    assert desc["payload"]["out"]["shape"] == [4, 2, 2]
    assert [f["name"] for f in desc["folding"]] == ["u1", "g", "u2"]
    assert desc["multipliers"]["used"] == sum(f["multipliers"] for f in desc["folding"]) <= 8
    assert desc["cycles_per_frame"] == max(f["cycles_per_frame"] for f in desc["folding"])
    assert desc["accumulator_bits"] == {f["name"]: f["acc_bits"] for f in desc["folding"]}
    assert desc["folding"][1]["line_buffer"]["rows"] >= 3 + 2 and desc["folding"][0]["line_buffer"] is None
    for key in ("format", "version", "layer", "ideal_cycles_per_frame", "utilisation", "macs_per_frame"):
        assert key in desc


def test_cli_success_in_process(art_dir, tmp_path, capsys):
    assert main(["--artifact", str(art_dir), "--layer", "t2", "--multipliers", "3", "--out", str(tmp_path),
                 "--top", "my_top"]) == 0
    assert (tmp_path / "my_top.v").is_file() and json.loads((tmp_path / "my_top.json").read_text())["top"] == "my_top"


@pytest.mark.parametrize("args,needle", [
    (["--layer", "nope"], "no layer 'nope'"),
    (["--layer", "pool"], "op 'maxpool'"),
])
def test_cli_bad_input_one_line_exit_2(art_dir, tmp_path, args, needle):
    """As a real process: exit status 2, one line on stderr, no traceback."""
    cmd = [sys.executable, "-m", "hw.generate", "--artifact", str(art_dir), "--out", str(tmp_path), *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--layer", "t2", "--multipliers", "2"], "too small"),
    (["--layer", "t2", "--line-rows", "2"], "line buffers"),
    (["--layer", "pool"], "op 'maxpool'"),
    (["--layer", "t2", "--top", "1bad"], "Verilog identifier"),
])
def test_cli_bad_input_in_process(art_dir, tmp_path, capsys, args, needle):
    assert main(["--artifact", str(art_dir), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["--multipliers", "many"], "'many' is not an integer"),
    (["--multipliers", "0"], "0 is outside the allowed range [1, 100000]"),
    (["--min-utilisation", "nan"], "nan is not a finite number"),
    (["--min-utilisation", "1.5"], "outside the allowed range [0, 1]"),
    (["--line-rows", "0"], "--line-rows"),
])
def test_cli_usage_error_one_line(art_dir, tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        main(["--artifact", str(art_dir), "--layer", "t2", "--out", str(tmp_path / "o"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw,needle", [
    (dict(min_utilisation=float("nan")), "min_utilisation"),
    (dict(min_utilisation=-1), "min_utilisation"),
    (dict(multipliers=0), "too small"),
    (dict(multipliers=10**9), "outside"),
    (dict(line_rows=-1), "line_rows"),
    (dict(top="a/b"), "Verilog identifier"),
])
def test_generate_rejects_bad_options_before_work(art_dir, tmp_path, kw, needle):
    """The API checks its options too: a NaN utilisation floor would write invalid JSON."""
    with pytest.raises(HwError, match=needle):
        generate(art_dir, "t2", out_dir=tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_missing_artifact_exit_2(tmp_path, capsys):
    assert main(["--artifact", str(tmp_path / "none"), "--layer", "t2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not an artifact directory" in err


def test_grouped_conv_is_rejected():
    art = random_conv(0, channels=4, out_channels=4)
    art.manifest["layers"][0]["groups"] = 2
    with pytest.raises(HwError, match="grouped"):
        layer_stages(art, "conv")


def test_hw_does_not_import_torch_or_model():
    code = ("import sys, hw.generate, hw.engine, hw.simulate; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'model' "
            "or m.startswith('model.')]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_make_verilog_target(art_dir, tmp_path):
    r = subprocess.run(["make", "-C", "hw", "verilog", f"ARTIFACT={art_dir}", "LAYER=t2", "MULTIPLIERS=5",
                        f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "elrt_t2.v").is_file() and (tmp_path / "elrt_t2.json").is_file()
