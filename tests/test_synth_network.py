"""artifact.synth.random_resnet: random whole residual networks shaped like the trained ResNet
(tests/fixtures/resnet20_digits), for the whole-network hardware regression."""
import re

import numpy as np
import pytest

from artifact import golden, load_artifact, save_artifact, validate
from artifact.ops import OPS
from artifact.synth import random_input, random_resnet

SEEDS = range(20)
BLOCK = re.compile(r"layer\d+\.\d+$")


@pytest.fixture(scope="module")
def sweep():
    """The default networks of SEEDS (built once: validation is most of the cost)."""
    return [random_resnet(seed) for seed in SEEDS]


def _stages(layer):
    return layer["stages"] if layer["op"] in ("tucker2", "lowrank") else [layer]


def _requantized(art):
    """{tensor name: (out record, requant record)} of every requantized tensor, by the golden
    model's names (a factorized layer's stages as ``<layer>.<stage>``)."""
    out = {}
    for layer in art.manifest["layers"]:
        if layer["op"] in ("tucker2", "lowrank"):
            out.update({f"{layer['name']}.{s['name']}": (s["out"], s["requant"])
                        for s in layer["stages"] if s["requant"]})
        elif layer.get("requant"):
            out[layer["name"]] = (layer["out"], layer["requant"])
    return out


def _check_shape_like_fixture(art):
    """The graph of the trained ResNet: stem, [maxpool], basic blocks, pool, fc (logits)."""
    m = art.manifest
    layers = m["layers"]
    stem, pool, fc = layers[0], layers[-2], layers[-1]
    assert (stem["name"], stem["op"], stem["kernel"], stem["stride"], stem["padding"]) == ("conv1", "conv", 3, 1, 1)
    assert not stem["out"]["signed"] and stem["requant"]["clamp"] == [0, 2 ** stem["out"]["bits"] - 1]
    assert (pool["name"], pool["op"], fc["name"], m["output"]) == ("pool", "global_sum_pool", "fc", "fc")
    assert fc["op"] in ("linear", "lowrank") and _stages(fc)[-1]["requant"] is None
    assert _stages(fc)[-1]["kind"] == "linear" and fc["inputs"] == ["pool"]
    body = layers[1:-2]
    if body[0]["op"] == "maxpool":
        assert body[0]["name"] == "maxpool" and body[0]["inputs"] == ["conv1"]
        body = body[1:]
    assert len(body) % 4 == 0 and body
    src = body[0]["inputs"][0]
    for i in range(0, len(body), 4):
        conv1, conv2, shortcut, add = body[i:i + 4]
        name = conv1["name"].rsplit(".", 1)[0]
        assert BLOCK.match(name)
        assert [l["name"] for l in body[i:i + 4]] == [f"{name}.{p}" for p in ("conv1", "conv2", "shortcut", "add")]
        assert conv1["op"] == conv2["op"] == "tucker2" and conv1["kernel"] == conv2["kernel"] == 3
        assert conv1["inputs"] == [src] and conv2["inputs"] == [conv1["name"]] and shortcut["inputs"] == [src]
        assert not conv1["out"]["signed"] and conv2["out"]["signed"] and shortcut["out"]["signed"]
        assert conv2["stride"] == 1
        if conv1["stride"] == 1:
            assert shortcut["op"] == "requant" and conv1["in"]["shape"] == add["out"]["shape"]
        else:
            assert conv1["stride"] == 2
            first = _stages(shortcut)[0]
            assert shortcut["op"] in ("conv", "lowrank") and (first["kernel"], first["stride"]) == (1, 2)
        assert add["op"] == "add" and add["inputs"] == [conv2["name"], shortcut["name"]]
        assert not add["out"]["signed"] and add["requant"]["clamp"][0] == 0
        src = add["name"]
    assert pool["inputs"] == [src]


def test_many_seeds_validate_run_and_have_the_fixture_shape(sweep):
    for seed, art in zip(SEEDS, sweep):
        validate(art.manifest, art.tensors)
        _check_shape_like_fixture(art)
        x = random_input(art, 3, seed=seed)
        y = golden.run(art, x)
        classes = art.manifest["layers"][-1]["out"]["shape"][0]
        assert y.shape == (3, classes) and y.dtype == np.int64
        c, h, w = art.manifest["input"]["shape"]
        assert 1 <= c <= 3 and 4 <= h <= 8 and 4 <= w <= 8
        for layer in art.manifest["layers"][:-1]:
            assert all(s["out"]["shape"][0] <= 8 for s in _stages(layer))
        assert 2 <= classes <= 10
        assert all(2 <= s["weight_bits"] <= 8 for l in art.manifest["layers"] for s in _stages(l) if "kind" in s)
        assert all(2 <= out["bits"] <= 8 for out, _ in _requantized(art).values())


def test_every_op_and_variant_appears_across_seeds(sweep):
    layers = [l for art in sweep for l in art.manifest["layers"]]
    assert {l["op"] for l in layers} == set(OPS)
    shortcuts = {l["op"] for l in layers if l["name"].endswith(".shortcut")}
    assert shortcuts == {"requant", "conv", "lowrank"}
    assert {l["op"] for l in layers if l["name"] == "fc"} == {"linear", "lowrank"}
    adds = [l for l in layers if l["op"] == "add"]
    assert any(l["align"] == [0, 0] for l in adds) and any(l["align"] != [0, 0] for l in adds)
    stages = [s for l in layers for s in _stages(l) if "weight" in s]
    assert {s["requant"]["shift"] < 0 for s in stages if s["requant"]} == {True, False}   # left shifts too
    assert {s["bias"] is None for s in stages} == {True, False}
    inner = [s["out"]["signed"] for l in layers if l["op"] == "tucker2" for s in l["stages"][:2]]
    assert set(inner) == {True, False}
    assert {art.manifest["input"]["signed"] for art in sweep} == {True, False}
    assert len({(l["kernel"], l["stride"], l["padding"]) for l in layers if l["op"] == "maxpool"}) >= 3
    assert len({s["weight_bits"] for s in stages}) == 7 and len({l["out"]["bits"] for l in layers}) >= 7


def test_options():
    art = random_resnet(1, shortcut="identity", stages=3, blocks=2, maxpool=False, lowrank=())
    ops = [l["op"] for l in art.manifest["layers"]]
    assert ops == ["conv"] + ["tucker2", "tucker2", "requant", "add"] * 6 + ["global_sum_pool", "linear"]
    stem_shape = art.layer("conv1")["out"]["shape"]
    assert all(l["out"]["shape"] == stem_shape for l in art.manifest["layers"][:-2])

    art = random_resnet(2, shortcut="strided", stages=3, lowrank=(), maxpool=True)
    assert art.manifest["layers"][1]["op"] == "maxpool"
    projections = [l for l in art.manifest["layers"] if l["name"].endswith(".shortcut") and l["op"] == "conv"]
    assert [l["name"] for l in projections] == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert all((l["kernel"], l["stride"], l["padding"]) == (1, 2, 0) for l in projections)

    art = random_resnet(3, lowrank="shortcut")
    low = [l for l in art.manifest["layers"] if l["op"] == "lowrank"]
    assert low and all(l["name"].endswith(".shortcut") and l["stages"][0]["stride"] == 2 for l in low)
    assert art.layer("fc")["op"] == "linear"
    art = random_resnet(3, lowrank={"classifier"}, shortcut="identity")
    assert [l["name"] for l in art.manifest["layers"] if l["op"] == "lowrank"] == ["fc"]
    assert all(s["kind"] == "linear" for s in art.layer("fc")["stages"])

    art = random_resnet(4, weight_bits=3, act_bits=5, in_bits=4, in_signed=False, height=5, width=7, in_channels=2,
                        channels=6, classes=4, stages=1, blocks=1)
    assert art.manifest["input"] == {"shape": [2, 5, 7], "bits": 4, "signed": False, "exponent": -4}
    assert {s["weight_bits"] for l in art.manifest["layers"] for s in _stages(l) if "weight_bits" in s} == {3}
    assert {out["bits"] for out, _ in _requantized(art).values()} == {5}
    assert art.layer("fc")["out"]["shape"] == [4] and art.layer("conv1")["out"]["shape"] == [6, 5, 7]
    art = random_resnet(5, weight_bits=(2, 3), act_bits=(7, 8), in_signed=True)
    assert {s["weight_bits"] for l in art.manifest["layers"] for s in _stages(l) if "weight_bits" in s} == {2, 3}
    assert {out["bits"] for out, _ in _requantized(art).values()} == {7, 8} and art.manifest["input"]["signed"]

    for bad in ({"shortcut": "dense"}, {"lowrank": "conv1"}, {"lowrank": "shortcut", "shortcut": "identity"},
                {"stages": 1, "shortcut": "strided"}, {"weight_bits": 1}, {"act_bits": (4, 17)}, {"channels": (3, 2)}):
        with pytest.raises(ValueError):
            random_resnet(0, **bad)


def _degeneracy(art, x):
    """Per requantized tensor: (name, bits, constant?, fraction at a clamp bound other than 0)."""
    values = golden.run(art, x, collect=True)
    rows = []
    for name, (out, rq) in _requantized(art).items():
        v = values[name]
        lo, hi = rq["clamp"]
        rows.append((name, out["bits"], bool(v.min() == v.max()), float(((v == hi) | ((v == lo) & (lo != 0))).mean())))
    return rows


def test_outputs_use_their_range(sweep):
    """Shifts fitted on a calibration batch: on other random inputs no tensor is constant and
    few values sit at a clamp bound. At 2 bits the pooled vector of i.i.d. noise images can be
    the same for every image, so there only the layers before the pool must vary."""
    rows = [r for seed, art in zip(SEEDS, sweep) for r in _degeneracy(art, random_input(art, 32, 100 + seed))]
    assert not [r for r in rows if r[2]]
    wide = [r[3] for r in rows if r[1] >= 4]
    assert np.mean(wide) < 0.15 and max(wide) < 0.5
    for seed in range(4):
        art = random_resnet(seed, weight_bits=2, act_bits=2, in_bits=2)
        rows = _degeneracy(art, random_input(art, 32, seed))
        assert not [r for r in rows if r[2] and not r[0].startswith(("pool", "fc"))]
        art = random_resnet(seed, weight_bits=8, act_bits=8, in_bits=8)
        rows = _degeneracy(art, random_input(art, 32, seed))
        assert not [r for r in rows if r[2]] and max(r[3] for r in rows) < 0.5
        logits = golden.run(art, random_input(art, 32, seed))
        assert (logits.min(0) < logits.max(0)).all()


def test_deterministic_per_seed():
    a, b, c = random_resnet(7, maxpool=True), random_resnet(7, maxpool=True), random_resnet(8, maxpool=True)
    assert a.manifest == b.manifest and a.tensors.keys() == b.tensors.keys()
    assert all(np.array_equal(a.tensors[k], b.tensors[k]) and a.tensors[k].dtype == b.tensors[k].dtype
               for k in a.tensors)
    assert a.manifest != c.manifest


def test_save_load_round_trip(tmp_path):
    for i, options in enumerate(({}, {"maxpool": True, "lowrank": ("shortcut", "classifier")},
                                 {"shortcut": "identity", "weight_bits": 2, "act_bits": 2, "in_bits": 2})):
        art = random_resnet(i, **options)
        path = save_artifact(tmp_path / f"a{i}", art.manifest, art.tensors)
        loaded = load_artifact(path)
        assert loaded.manifest == art.manifest and loaded.tensors.keys() == art.tensors.keys()
        x = random_input(art, 4, seed=i)
        got, want = golden.run(loaded, x, collect=True), golden.run(art, x, collect=True)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
