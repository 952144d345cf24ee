"""Every numbered rule of docs/artifact.md section 5: a mutated artifact is refused with a
one-line error that names the layer and the rule (and the trained fixture still loads)."""
import copy
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

from artifact import ArtifactError, golden, load_artifact, save_artifact
from deploy.hls4ml.synthnet import random_network

FIXTURE = "tests/fixtures/resnet20_digits"


@pytest.fixture(scope="module")
def base():
    art = random_network(0)
    return art.manifest, art.tensors


def _layer(m, name):
    return next(l for l in m["layers"] if l["name"] == name)


def _stage(m, layer, stage):
    return next(s for s in _layer(m, layer)["stages"] if s["name"] == stage)


def _write(d, manifest, tensors):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    np.savez(d / "tensors.npz", **tensors)
    return d


# (id, mutation(manifest, tensors), rule number, the layer or file the message names)
def _m_linear_on_image(m, t):
    cls = _layer(m, "cls")
    cls["inputs"], cls["in"] = ["rq"], copy.deepcopy(_layer(m, "rq")["out"])


def _m_left_shift_past_64(m, t):
    rq = _layer(m, "rq")
    rq["requant"]["shift"] = -60
    rq["out"]["exponent"] = rq["in"]["exponent"] - 60
    _layer(m, "gap")["in"]["exponent"] = rq["out"]["exponent"]
    gap = _layer(m, "gap")
    gap["acc"]["exponent"] = rq["out"]["exponent"]
    gap["requant"]["shift"] = gap["out"]["exponent"] - gap["acc"]["exponent"] + gap["divisor_log2"]


def _m_add_align(m, t):
    add = _layer(m, "add1")
    add["align"] = [add["align"][0] + 1, add["align"][1]]


CASES = [
    # rule 2: schema and fields
    ("format_version", lambda m, t: m.update(format_version=7), 2, "manifest.yaml"),
    ("unknown-top-key", lambda m, t: m.update(extra=1), 2, "manifest.yaml"),
    ("unknown-layer-key", lambda m, t: _layer(m, "b1").update(dilation=2), 2, "b1"),
    ("unknown-stage-key", lambda m, t: _stage(m, "b1", "g").update(dilation=2), 2, "b1.g"),
    ("unknown-tensor-key", lambda m, t: _layer(m, "pool")["out"].update(scale=0.5), 2, "manifest.yaml"),
    ("unknown-op", lambda m, t: _layer(m, "pool").update(op="softmax"), 2, "manifest.yaml"),
    ("shift-beyond-schema", lambda m, t: _layer(m, "rq")["requant"].update(shift=99), 2, "manifest.yaml"),
    ("bias-bits-without-bias", lambda m, t: _stage(m, "b1", "u1").update(bias_bits=8), 2, "b1.u1"),
    # rule 3: names
    ("duplicate-name", lambda m, t: _layer(m, "pool").update(name="stem"), 3, "stem"),
    ("stage-names", lambda m, t: _stage(m, "b1", "g").update(name="core"), 3, "b1"),
    # rule 4: graph
    ("input-from-later-layer", lambda m, t: _layer(m, "b1").update(inputs=["pool"]), 4, "b1"),
    ("arity", lambda m, t: _layer(m, "rq").update(inputs=["b2", "b1"]), 4, "rq"),
    ("output-unknown", lambda m, t: m.update(output="nothing"), 4, "manifest.yaml"),
    ("output-is-input", lambda m, t: m.update(output="input"), 4, "manifest.yaml"),
    # rule 5: records match their producers
    ("input-shape", lambda m, t: m["input"].update(shape=[1, 9, 9]), 5, "stem"),
    ("in-exponent", lambda m, t: _layer(m, "b2")["in"].update(exponent=-1), 5, "b2"),
    ("stage-chain", lambda m, t: _stage(m, "b1", "g")["in"].update(signed=False), 5, "b1.g"),
    ("layer-out-vs-last-stage", lambda m, t: _layer(m, "b1").update(out={**_layer(m, "b1")["out"], "bits": 7}), 5, "b1"),
    # rule 6: shapes
    ("conv-out-shape", lambda m, t: _stage(m, "b2", "g")["out"].update(shape=[6, 9, 9]), 6, "b2.g"),
    ("linear-on-image", _m_linear_on_image, 6, "cls"),
    ("maxpool-padding", lambda m, t: _layer(m, "pool").update(padding=2), 6, "pool"),
    ("tucker2-rank", lambda m, t: _layer(m, "b1").update(rank=[4, 5]), 6, "b1"),
    ("tucker2-geometry", lambda m, t: _layer(m, "b1").update(stride=2), 6, "b1"),
    ("gsp-out-shape", lambda m, t: _layer(m, "gap")["out"].update(shape=[16, 1]), 6, "gap"),
    ("lowrank-rank", lambda m, t: _layer(m, "fc").update(rank=[5]), 6, "fc"),
    # rule 7: tensors
    ("missing-tensor", lambda m, t: t.pop("b1.g.weight"), 7, "b1.g"),
    ("extra-tensor", lambda m, t: t.update(extra=np.zeros(3, np.int8)), 7, "tensors.npz"),
    ("uint8", lambda m, t: t.update({"b1.u1.weight": np.abs(t["b1.u1.weight"]).astype(np.uint8)}), 7, "b1.u1"),
    ("float", lambda m, t: t.update({"stem.weight": t["stem.weight"].astype(np.float32)}), 7, "stem"),
    ("out-of-range", lambda m, t: t.update({"b2.u2.weight": t["b2.u2.weight"].astype(np.int16) * 300}), 7, "b2.u2"),
    ("weight-shape", lambda m, t: t.update({"b1.g.weight": t["b1.g.weight"][:, :2]}), 7, "b1.g"),
    ("bias-wider-than-acc", lambda m, t: _layer(m, "stem").update(bias_bits=_layer(m, "stem")["acc"]["bits"] + 1), 7,
     "stem"),
    # rule 8: exponents
    ("acc-exponent", lambda m, t: _stage(m, "b1", "u2")["acc"].update(exponent=-3), 8, "b1.u2"),
    ("add-align", _m_add_align, 8, "add1"),
    ("maxpool-exponent", lambda m, t: _layer(m, "pool")["out"].update(exponent=_layer(m, "pool")["out"]["exponent"] + 1), 8,
     "pool"),
    ("gsp-acc-exponent", lambda m, t: _layer(m, "gap")["acc"].update(exponent=_layer(m, "gap")["acc"]["exponent"] + 1), 8,
     "gap"),
    # rule 9: requantization
    ("shift-vs-exponents", lambda m, t: _stage(m, "b1", "g")["requant"].update(
        shift=_stage(m, "b1", "g")["requant"]["shift"] + 1), 9, "b1.g"),
    ("clamp-outside-out-range", lambda m, t: _layer(m, "stem")["requant"].update(clamp=[0, 300]), 9, "stem"),
    ("clamp-empty", lambda m, t: _layer(m, "stem")["requant"].update(clamp=[5, 1]), 9, "stem"),
    ("null-requant-bits", lambda m, t: _layer(m, "cls")["out"].update(bits=_layer(m, "cls")["out"]["bits"] + 1), 9,
     "cls"),
    ("inner-requant-null", lambda m, t: _stage(m, "b1", "u1").update(requant=None), 9, "b1.u1"),
    ("divisor-log2", lambda m, t: _layer(m, "gap").update(divisor_log2=1), 9, "gap"),
    # rule 10: accumulator width
    ("acc-bits-narrow", lambda m, t: _stage(m, "b1", "u1")["acc"].update(bits=_stage(m, "b1", "u1")["acc"]["bits"] - 1),
     10, "b1.u1"),
    ("add-acc-bits", lambda m, t: _layer(m, "add1")["acc"].update(bits=4), 10, "add1"),
    ("gsp-acc-bits", lambda m, t: _layer(m, "gap")["acc"].update(bits=8), 10, "gap"),
    # rule 11: int64 exactness
    ("left-shift-past-64-bits", _m_left_shift_past_64, 11, "rq"),
    ("unsigned-64-bit", lambda m, t: m["input"].update(bits=64), 11, "input"),
]


@pytest.mark.parametrize("mutate,rule,where", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_refuses_a_mutated_artifact(base, tmp_path, mutate, rule, where):
    manifest, tensors = copy.deepcopy(base[0]), dict(base[1])
    mutate(manifest, tensors)
    d = _write(tmp_path / "bad", manifest, tensors)
    with pytest.raises(ArtifactError) as e:
        load_artifact(d)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"rule {rule} " in msg, msg
    assert msg.startswith(where) or f"/{where}:" in msg, msg


def test_unmutated_base_and_fixture_load(base, tmp_path):
    save_artifact(tmp_path / "a", *base)
    load_artifact(tmp_path / "a")
    load_artifact(FIXTURE)


def test_inner_stage_requant_null_is_rule_9(base, tmp_path):
    """The inner stage's null requant is caught at the stage itself when the chain agrees."""
    manifest, tensors = copy.deepcopy(base[0]), dict(base[1])
    u1, g = _stage(manifest, "b1", "u1"), _stage(manifest, "b1", "g")
    u1["requant"] = None
    u1["out"] = {**u1["out"], "bits": u1["acc"]["bits"], "signed": True, "exponent": u1["acc"]["exponent"]}
    g["in"] = dict(u1["out"])
    with pytest.raises(ArtifactError, match=r"^b1\.u1: rule 9 .*inner stage"):
        load_artifact(_write(tmp_path / "bad", manifest, tensors))


def _damage(kind, d):
    npz = d / "tensors.npz"
    if kind == "truncated":
        data = npz.read_bytes()
        npz.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        npz.write_bytes(b"")
    elif kind == "not-a-zip":
        npz.write_bytes(b"hello world" * 10)
    elif kind == "single-npy":
        np.save(d / "x.npy", np.zeros(3, np.int8))
        (d / "x.npy").replace(npz)
    elif kind == "pickled-object":
        with zipfile.ZipFile(npz, "w") as z:
            import io
            buf = io.BytesIO()
            np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            z.writestr("stem.weight.npy", buf.getvalue())
    elif kind == "manifest-empty":
        (d / "manifest.yaml").write_text("")
    elif kind == "manifest-not-yaml":
        (d / "manifest.yaml").write_text("layers: [unclosed\n")
    elif kind == "manifest-binary":
        (d / "manifest.yaml").write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "no-tensors":
        npz.unlink()


@pytest.mark.parametrize("kind", ["truncated", "empty", "not-a-zip", "single-npy", "pickled-object",
                                  "manifest-empty", "manifest-not-yaml", "manifest-binary", "no-tensors"])
def test_damaged_files_are_rule_1(base, tmp_path, kind):
    d = save_artifact(tmp_path / "a", *base)
    _damage(kind, d)
    with pytest.raises(ArtifactError, match=r"rule 1 \(files\)") as e:
        load_artifact(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["truncated", "manifest-empty"])
def test_cli_damaged_artifact_is_one_line_exit_2(base, tmp_path, kind):
    d = save_artifact(tmp_path / "a", *base)
    _damage(kind, d)
    out = subprocess.run([sys.executable, "-m", "artifact", str(d)], capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr


def test_writer_stores_the_smallest_dtype(base, tmp_path):
    manifest, tensors = base
    wide = {k: v.astype(np.int64) for k, v in tensors.items()}
    d = save_artifact(tmp_path / "a", manifest, wide)
    with np.load(d / "tensors.npz") as npz:
        assert npz["stem.weight"].dtype == np.int8
        stem = _layer(manifest, "stem")
        assert npz["stem.bias"].dtype == (np.int8 if stem["bias_bits"] <= 8 else
                                          np.int16 if stem["bias_bits"] <= 16 else np.int32)


def test_save_refuses_to_replace_a_folder_that_is_not_an_artifact(base, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_text("precious")
    with pytest.raises(ArtifactError, match="not an artifact"):
        save_artifact(run, *base)
    assert (run / "checkpoint.pt").read_text() == "precious"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="not an artifact"):
        save_artifact(f, *base)
    assert f.read_text() == "x"
    d = save_artifact(tmp_path / "a", *base)       # an artifact is replaced in place
    save_artifact(d, *base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file", "run"]


def test_written_files_honour_the_umask(base, tmp_path):
    import os
    old = os.umask(0o022)
    try:
        d = save_artifact(tmp_path / "a", *base)
    finally:
        os.umask(old)
    assert (os.stat(d).st_mode & 0o777) == 0o755
    assert (os.stat(d / "manifest.yaml").st_mode & 0o777) == 0o644


@pytest.mark.parametrize("x,what", [
    (np.full((1, 1, 8, 8), 256, np.int64), "outside"),
    (np.full((1, 1, 8, 8), -1, np.int64), "outside"),
    (np.zeros((1, 1, 8, 8), np.float32), "dtype"),
    (np.zeros((1, 8, 8), np.int64), "shape"),
    (np.zeros((0, 1, 8, 8), np.int64), "shape"),
])
def test_golden_refuses_inputs_outside_the_input_record(base, x, what):
    art = random_network(0)
    with pytest.raises(ArtifactError, match=what):
        golden.run(art, x)


def test_cli_refuses_out_of_range_input(base, tmp_path):
    d = save_artifact(tmp_path / "a", *base)
    np.save(tmp_path / "x.npy", np.full((2, 1, 8, 8), 300, np.int16))
    out = subprocess.run([sys.executable, "-m", "artifact", str(d), "--input", str(tmp_path / "x.npy"),
                          "--output", str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert out.returncode == 2 and "outside" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()
