"""hls4ml path: C simulation (g++ only) equals the golden model bit for bit.

Each C-simulation case compiles an HLS project with g++ (~10 s for a layer, ~45 s for
the small network); the default set compiles 7 projects, the rest is @pytest.mark.slow.
Trained artifacts: tests/fixtures/resnet20_digits, $ELRT_ARTIFACT and runs/*/artifact.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hls4ml")

from artifact import ArtifactError, load_artifact, save_artifact  # noqa: E402
from artifact.synth import _artifact, _tensor, random_conv, random_tucker2  # noqa: E402
from deploy.hls4ml import (HLSConversionError, check_part, compare, convert, fixed,  # noqa: E402
                           requant_type)
from deploy.hls4ml.synthnet import random_network  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


FIXTURE = ROOT / "tests" / "fixtures" / "resnet20_digits"    # the default trained model


def _trained_artifacts():
    found = [FIXTURE]
    found += [Path(os.environ["ELRT_ARTIFACT"])] if os.environ.get("ELRT_ARTIFACT") else []
    found += sorted(p for p in ROOT.glob("runs/*/artifact") if (p / "manifest.yaml").is_file())
    return found


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "deploy.hls4ml", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _assert_exact(art, tmp_path, layer=None, backend="Vivado", batch=6, **kw):
    build = convert(art, tmp_path / "prj", layer=layer, backend=backend, **kw)
    res = compare(build, art, batch=batch, seed=1)
    assert res.mismatches == 0, f"{res.mismatches}/{res.total} mismatches\nhls={res.hls}\ngolden={res.golden}"
    assert res.class_mismatches in (None, 0)
    return res


# --- types and checks (no compilation) -------------------------------------------------------------

def test_requant_types_cover_clamps():
    relu = requant_type([0, 255], -3, "x")
    assert (relu.width, relu.integer, relu.signed) == (8, 5, False)
    assert str(relu.rounding_mode) == "RND_CONV" and str(relu.saturation_mode) == "SAT"
    s = requant_type([-8, 7], 2, "x")
    assert (s.width, s.integer, s.signed, str(s.saturation_mode)) == (4, 6, True, "SAT")
    sym = requant_type([-127, 127], 0, "x")
    assert (sym.width, str(sym.saturation_mode)) == (8, "SAT_SYM")
    with pytest.raises(HLSConversionError, match="clamp"):
        requant_type([0, 100], 0, "x")
    # weights are always ap_fixed (never the 2-bit IntegerPrecisionType hls4ml treats as ternary)
    assert type(fixed(2, 0, True)).__name__ == "FixedPrecisionType"


@pytest.mark.parametrize("part", ["xcvu13p-flga2577-2-e", "xc7z020clg400-1", "xczu9eg-ffvb1156-2-e",
                                  "xcu250-figd2104-2L-E"])
def test_part_names_accepted(part):
    assert check_part(part) == part.lower()


@pytest.mark.parametrize("part", ["", "foo", "xcvu13p", "xc-1", "xcvu13p flga2577-2-e", "ep4ce22f17c6"])
def test_part_names_rejected(part):
    with pytest.raises(HLSConversionError, match="part"):
        check_part(part)


@pytest.mark.parametrize("backend", ["Vivado", "Vitis"])
def test_project_files_both_backends(tmp_path, backend):
    art = random_tucker2(2, channels=4, out_channels=4, ranks=(2, 3), kernel=3)
    build = convert(art, tmp_path / backend, layer="t2", backend=backend, part="xc7z020clg400-1", clock_ns=8)
    build.model.write()
    prj = tmp_path / backend
    name = build.project_name
    for f in ["build_prj.tcl", "project.tcl", "build_lib.sh", f"{name}_test.cpp", f"{name}_bridge.cpp",
              f"firmware/{name}.cpp", f"firmware/{name}.h", "firmware/defines.h", "firmware/parameters.h",
              "firmware/nnet_utils/nnet_conv2d_stream.h", "firmware/ap_types/ap_fixed.h"]:
        assert (prj / f).is_file(), f
    assert list((prj / "firmware/weights").glob("w*.h"))
    tcl = (prj / "project.tcl").read_text()
    assert "xc7z020clg400-1" in tcl and "8" in tcl
    if backend == "Vitis":
        assert (prj / "build_opt.tcl").is_file() or "vitis" in (prj / "build_prj.tcl").read_text().lower()
    defines = (prj / "firmware/defines.h").read_text()
    assert "AP_RND_CONV,AP_SAT" in defines            # requantization = convergent rounding + saturation
    assert "hls::stream" in (prj / f"firmware/{name}.h").read_text()


def test_unsupported_constructs_are_one_line_errors(tmp_path):
    net = random_network(0, channels=4)
    pool = next(l for l in net.manifest["layers"] if l["op"] == "maxpool")
    pool["kernel"], pool["stride"], pool["padding"] = 3, 2, 1  # overlapping windows
    with pytest.raises(HLSConversionError, match="non-overlapping") as e:
        convert(net, tmp_path / "a", backend="Vivado")
    assert "\n" not in str(e.value)
    art = random_tucker2(0, channels=4, out_channels=4, ranks=(2, 2))
    art.manifest["layers"][0]["stages"][2]["requant"]["clamp"] = [0, 100]
    with pytest.raises(HLSConversionError, match="clamp"):
        convert(art, tmp_path / "b", layer="t2")
    with pytest.raises(ArtifactError, match="no layer"):
        convert(art, tmp_path / "c", layer="nope")
    with pytest.raises(HLSConversionError, match="backend"):
        convert(art, tmp_path / "d", backend="Quartus")


# --- C simulation: layers ----------------------------------------------------------------------------

def test_cli_tucker2_layer_vivado(tmp_path):
    """The CLI end to end: project written, C simulation run, zero mismatches reported."""
    art = random_tucker2(11, channels=6, out_channels=8, ranks=(3, 4), kernel=3, stride=1, height=6, width=6)
    save_artifact(tmp_path / "art", art.manifest, art.tensors)
    r = _cli("--artifact", tmp_path / "art", "--layer", "t2", "--backend", "Vivado", "--part", "xc7z020clg400-1",
             "--clock-ns", "10", "--out", tmp_path / "prj", "--batch", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 mismatches in 1728 values" in r.stdout
    assert str(tmp_path / "prj") in r.stdout and "synthesis:" in r.stdout
    assert (tmp_path / "prj/build_prj.tcl").is_file() and (tmp_path / "prj/tb_data/tb_output_predictions.dat").is_file()
    # built in a temporary sibling, renamed into place: nothing else is left next to it, and the
    # project's config names its final folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "prj"]
    assert f"OutputDir: {tmp_path / 'prj'}\n" in (tmp_path / "prj/hls4ml_config.yml").read_text()
    import json
    rep = json.loads((tmp_path / "prj/csim_report.json").read_text())
    assert rep["format"] == "elrt-hls4ml-report" and rep["project"] == str(tmp_path / "prj")


# random Tucker-2 / dense shapes: kernel, stride, padding, ranks, bit widths, signedness
FAST_CASES = [
    ("tucker2", dict(kernel=5, stride=2, padding=2, in_signed=True, weight_bits=4, act_bits=4, height=7, width=7,
                     ranks=(3, 2)), "Vitis"),
    ("tucker2", dict(kernel=1, stride=2, padding=0, in_bits=3, weight_bits=2, act_bits=3, out_signed=True,
                     ranks=(2, 3)), "Vivado"),
]
SLOW_CASES = [
    ("tucker2", dict(kernel=3, stride=1, padding=1, weight_bits=8, act_bits=8), "Vivado"),
    ("tucker2", dict(kernel=3, stride=2, padding=0, in_signed=True, in_bits=5, weight_bits=6, act_bits=5), "Vitis"),
    ("tucker2", dict(kernel=5, stride=1, padding=1, weight_bits=3, act_bits=2, out_signed=True), "Vivado"),
    ("tucker2", dict(kernel=1, stride=1, padding=0, in_signed=True, in_bits=2, weight_bits=2, act_bits=2), "Vitis"),
    ("tucker2", dict(kernel=3, stride=2, padding=2, in_bits=7, weight_bits=7, act_bits=6, ranks=(1, 5)), "Vivado"),
    ("tucker2", dict(kernel=5, stride=2, padding=0, in_signed=True, weight_bits=5, act_bits=7, height=9, width=9,
                     bias=False), "Vitis"),
    ("conv", dict(kernel=3, stride=2, padding=1, in_signed=True, weight_bits=4, act_bits=4), "Vivado"),
    ("conv", dict(kernel=1, stride=1, padding=0, weight_bits=8, act_bits=8, out_signed=True), "Vitis"),
]


def _random_layer(kind, seed, kw):
    if kind == "conv":
        return random_conv(seed, channels=5, out_channels=6, **kw), "conv"
    kw = dict(kw)
    return random_tucker2(seed, channels=5, out_channels=6, ranks=kw.pop("ranks", (3, 4)), **kw), "t2"


@pytest.mark.parametrize("kind,kw,backend", FAST_CASES)
def test_random_layer_csim(tmp_path, kind, kw, backend):
    art, name = _random_layer(kind, 7, kw)
    _assert_exact(art, tmp_path, layer=name, backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize("kind,kw,backend", SLOW_CASES)
def test_random_layer_csim_sweep(tmp_path, kind, kw, backend):
    art, name = _random_layer(kind, 3, kw)
    _assert_exact(art, tmp_path, layer=name, backend=backend)


def test_requant_ties_round_half_even(tmp_path):
    """All 2048 11-bit inputs through a shift-2 requant: every tie case, both signs, saturation at both ends."""
    x = _tensor([1024], 11, True, -2)
    layer = {"name": "r", "op": "requant", "inputs": ["input"], "in": x, "requant": {"shift": 2, "clamp": [-128, 127]},
             "out": _tensor([1024], 8, True, 0)}
    art = _artifact(x, [layer], {}, "requant_ties")
    build = convert(art, tmp_path / "prj", backend="Vivado")
    xs = {"input": np.arange(-1024, 1024).reshape(2, 1024)}
    res = compare(build, art, xs=xs)
    assert res.mismatches == 0
    assert set(np.unique(res.golden)) >= {-128, -1, 0, 1, 127}


# --- C simulation: every Tucker-2 layer of an artifact, and whole networks ------------------------------

@pytest.fixture(scope="module")
def small_net():
    return random_network(0, channels=4)


def test_every_tucker2_layer_of_synthetic_network(tmp_path, small_net):
    names = [l["name"] for l in small_net.layers("tucker2")]
    assert len(names) == 2
    for name in names:
        _assert_exact(small_net, tmp_path / name, layer=name)


def test_whole_network_csim_classes_identical(tmp_path, small_net):
    res = _assert_exact(small_net, tmp_path, backend="Vivado", batch=8)
    assert res.class_mismatches == 0 and res.golden.shape == (8, 10)
    assert len(np.unique(res.golden.argmax(1))) > 1 or len(np.unique(res.golden)) > 8  # not a constant output


def test_stream_exponents_follow_the_manifest(tmp_path):
    """HLS reals are the model's reals: the output exponent equals the manifest's (both pool paths)."""
    for pad in (0, 1):
        net = random_network(1, channels=4, pool_padding=pad)
        build = convert(net, tmp_path / str(pad))
        assert build.output.exponent == net.layer(net.manifest["output"])["out"]["exponent"]


@pytest.mark.slow
def test_whole_network_non_power_of_two_pool_vitis(tmp_path):
    """3x3 global pool (identity-kernel conv), zero-padded maxpool, Vitis backend."""
    net = random_network(1, channels=4, pool_padding=1)
    assert next(l for l in net.manifest["layers"] if l["op"] == "global_sum_pool")["in"]["shape"][1:] == [3, 3]
    _assert_exact(net, tmp_path, backend="Vitis", batch=8)


@pytest.mark.slow
def test_whole_network_low_bits_resource_strategy(tmp_path):
    net = random_network(2, channels=4, act_bits=4, weight_bits=3, b2_stride=1)
    _assert_exact(net, tmp_path, backend="Vivado", batch=8, strategy="Resource", reuse_factor=2)


def test_trained_fixture_layer_csim_exact(tmp_path):
    """One Tucker-2 layer of the default trained model (the rest: the slow test below)."""
    _assert_exact(load_artifact(FIXTURE), tmp_path, layer="layer3.2.conv2", batch=4)


@pytest.mark.slow
@pytest.mark.parametrize("path", _trained_artifacts(), ids=str)
def test_trained_artifact_every_tucker2_layer(tmp_path, path):
    art = load_artifact(path)
    for layer in art.layers("tucker2") + art.layers("lowrank"):
        _assert_exact(art, tmp_path / layer["name"], layer=layer["name"], batch=4)


@pytest.mark.slow
@pytest.mark.parametrize("path", _trained_artifacts(), ids=str)
def test_trained_artifact_whole_network(tmp_path, path):
    art = load_artifact(path)
    _assert_exact(art, tmp_path, backend="Vitis", batch=16)


# --- CLI bad input ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_t2(tmp_path_factory):
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2))
    return save_artifact(tmp_path_factory.mktemp("art") / "t2", art.manifest, art.tensors)


@pytest.mark.parametrize("args,needle", [
    (["--backend", "Quartus"], "unknown backend"),
    (["--layer", "nope"], "no layer 'nope'"),
    (["--part", "not-a-part"], "part 'not-a-part'"),
    (["--part", "xcvu13p"], "part 'xcvu13p'"),
    (["--clock-ns", "0"], "clock"),
])
def test_cli_bad_input(tmp_path, saved_t2, args, needle):
    r = _cli("--artifact", saved_t2, "--out", tmp_path / "o", *args)
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_missing_artifact(tmp_path):
    r = _cli("--artifact", tmp_path / "none", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_failed_build_leaves_no_project(tmp_path, saved_t2, monkeypatch, capsys):
    """g++ failing: exit 1, one line, no --out folder and no temporary sibling; the log is kept."""
    from deploy.hls4ml import cli, csim

    def broken(build, quiet=True):
        print("g++: error: something")
        raise Exception("Failed to compile project")
    monkeypatch.setattr(csim, "compile_model", broken)
    rc = cli.main(["--artifact", str(saved_t2), "--layer", "t2", "--out", str(tmp_path / "a" / "prj")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "C-simulation build failed" in err, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["prj.hls4ml.log"]
    assert "g++: error: something" in (tmp_path / "a" / "prj.hls4ml.log").read_text()


def test_cli_replaces_only_its_own_projects(tmp_path):
    from deploy.hls4ml import cli
    from artifact.cli import UsageError
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "old.txt").write_text("old")
    (ours / "csim_report.json").write_text('{"format": "elrt-hls4ml-report"}')
    assert cli.check_out(ours) == ours
    new = tmp_path / ".ours.x.tmp"
    new.mkdir()
    (new / "csim_report.json").write_text("{}")
    cli._install(new, ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]
    assert sorted(p.name for p in ours.iterdir()) == ["csim_report.json"]
    empty = tmp_path / "empty"                       # a user's empty folder is filled, not replaced
    empty.mkdir()
    ino = empty.stat().st_ino
    new.mkdir()
    (new / "f").write_text("x")
    cli._install(new, empty)
    assert empty.stat().st_ino == ino and [p.name for p in empty.iterdir()] == ["f"] and not new.exists()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x").write_text("x")
    with pytest.raises(UsageError, match="not an hls4ml project"):
        cli.check_out(tmp_path / "theirs")


def test_compare_checks_given_inputs(tmp_path):
    """Out-of-range inputs are bad input, not C-simulation mismatches (checked before compiling)."""
    art = random_tucker2(3, channels=2, out_channels=2, ranks=(1, 1), height=3, width=3)
    build = convert(art, tmp_path / "p", layer="t2")
    name = next(iter(build.inputs))
    with pytest.raises(ArtifactError, match="outside the input's"):
        compare(build, art, xs={name: np.full((1, 2, 3, 3), 10**6)})
    with pytest.raises(ArtifactError, match="integer"):
        compare(build, art, xs={name: np.zeros((1, 2, 3, 3))})
    assert not (tmp_path / "p").exists()
