"""The board top's host link under cocotb + Verilator, driven through its serial line.

Fast: a tiny Tucker-2 layer (4 channels, 4x4), INFO, frames compared with the golden
model and every bad-frame case of the protocol. Slow: a bigger layer, and the host
tool (`python -m deploy.host`) talking to the simulated board over a TCP socket.
"""
import pytest

from artifact import save_artifact
from artifact.synth import random_tucker2

pytest.importorskip("cocotb")


def _ok_or_skip():
    from sim.toolchain import ToolError, check_cocotb, verilator_env
    try:
        check_cocotb()
        verilator_env()
    except ToolError as e:
        pytest.skip(str(e))


def _run(tmp_path, art, layer, **kw):
    from deploy.fpga.simrun import simulate
    _ok_or_skip()
    path = save_artifact(tmp_path / "art", art.manifest, art.tensors)
    res = simulate(path, layer, tmp_path / "sim", **kw)
    msg = "; ".join(f"{r['test']}: {r.get('error')}" for r in res["tests"] if not r["passed"])
    assert res["passed"], msg
    return res


def test_host_link_protocol_tiny(tmp_path):
    art = random_tucker2(1, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="tiny")
    res = _run(tmp_path, art, "tiny", frames=2, multipliers=3)
    proto = [r for r in res["tests"] if r["test"] == "protocol"][0]
    assert any("bit-exact" in c for c in proto["checks"])
    assert any("bad CRC" in c for c in proto["checks"]) and any("TIMEOUT" in c for c in proto["checks"])


@pytest.mark.slow
def test_host_link_and_host_tool_against_the_simulation(tmp_path):
    art = random_tucker2(4, channels=8, out_channels=16, ranks=(4, 6), height=6, width=6, in_signed=True,
                         out_signed=True, name="t2")
    res = _run(tmp_path, art, "t2", frames=3, host=True)
    bridge = [r for r in res["tests"] if r["test"] == "host_bridge"][0]
    assert bridge["passed"] and bridge["bytes_out"] > 0
    log = (tmp_path / "sim" / "host.log").read_text()
    assert "2/2 bit-exact against the golden model" in log


def test_whole_network_board_top_answers_logits_class_and_cycles(tmp_path):
    """The whole network behind the host link (a small random ResNet: stem, a Tucker-2 block
    with a strided shortcut, pooling, classifier): INFER answers bit-exact logits, the
    board's argmax and a cycle count; the host tool over the serial line checks every
    frame and prints the accuracy from the labels beside the inputs."""
    import numpy as np

    from artifact import golden, int_range
    from artifact.synth import random_resnet
    # seed 5: the argmax varies over these inputs (classes 0..3), no ties
    art = random_resnet(5, stages=2, blocks=1, channels=(2, 4), height=4, width=4, classes=4, shortcut="strided")
    rec = art.manifest["input"]
    lo, hi = int_range(rec["bits"], rec["signed"])
    x = np.random.default_rng(3).integers(lo, hi + 1, size=(6, *rec["shape"]))
    np.save(tmp_path / "test_inputs.npy", x)
    labels = np.argmax(golden.run(art, x).reshape(len(x), -1), axis=1)
    assert len(set(labels.tolist())) > 2
    labels[0] = (labels[0] + 1) % 4                    # one wrong label: accuracy 5/6
    np.save(tmp_path / "test_labels.npy", labels)
    from hw.network import plan_network, select_layers
    # the fewest multipliers: the engine, not the serial feed, sets the pace, so the later
    # frames of a batch wait behind the earlier ones (each answer carries its own frame's count)
    stages = sum(len(s) for s in plan_network(art, select_layers(art)[0]).specs.values())
    res = _run(tmp_path, art, None, frames=2, host=True, inputs=tmp_path / "test_inputs.npy", multipliers=stages)
    info = res["info"]
    assert info["op"] == "network" and info["layers"] == len(art.layers()) and info["batch"] == 16
    proto = next(r for r in res["tests"] if r["test"] == "protocol")
    assert proto["cycles"] and all(c > info["cycles_per_frame"] for c in proto["cycles"])
    batch = proto["batch_cycles"]
    assert len(batch) == 16 and batch[0] == proto["cycles"][0] < min(batch[1:]), batch
    log = (tmp_path / "sim" / "host.log").read_text()
    assert "6/6 bit-exact against the golden model" in log and "accuracy of the board's classes: 83.33%" in log


@pytest.mark.slow
def test_default_network_board_classifies_the_360_held_out_images(tmp_path):
    """The trained ResNet-20 (tests/fixtures/resnet20_digits) on the Verilated board top: the
    host tool sends the 360 held-out digits test images (batches of 16) and every answer
    (logits and class) equals the golden model's; the accuracy is printed from the labels."""
    import json
    from pathlib import Path

    import numpy as np

    from artifact import golden, load_artifact
    from deploy.fpga.simrun import simulate
    _ok_or_skip()
    fixtures = Path(__file__).parent / "fixtures"
    res = simulate(fixtures / "resnet20_digits", None, tmp_path / "sim", frames=1, host=True,
                   inputs=fixtures / "test_inputs.npy")
    assert res["passed"], "; ".join(f"{r['test']}: {r.get('error')}" for r in res["tests"] if not r["passed"])
    host = json.loads((tmp_path / "sim" / "host_result.json").read_text())
    assert host["bit_exact"] and len(host["frames"]) == 360
    x, labels = np.load(fixtures / "test_inputs.npy"), np.load(fixtures / "test_labels.npy")
    want = np.argmax(golden.run(load_artifact(fixtures / "resnet20_digits"), x).reshape(len(x), -1), axis=1)
    assert [f["class"] for f in host["frames"]] == want.tolist()
    assert host["accuracy"] == pytest.approx(float(np.mean(want == labels)))
