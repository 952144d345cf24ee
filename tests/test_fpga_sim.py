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
