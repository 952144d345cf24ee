"""`python -m deploy.host` against the Python board model behind a pty and a TCP socket."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from artifact import save_artifact
from artifact.golden import quantize_input, run_layer
from artifact.synth import random_conv, random_input, random_tucker2
from deploy import host
from deploy.fpga.board_model import BoardModel, model_info, serve

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("serial")


@pytest.fixture(scope="module")
def t2_dir(tmp_path_factory):
    art = random_tucker2(2, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, name="t2")
    return save_artifact(tmp_path_factory.mktemp("art") / "t2", art.manifest, art.tensors)


class _Served:
    def __init__(self, art, layer, kind="pty"):
        self.stop = threading.Event()
        got = threading.Event()
        self.addr = None

        def ready(a):
            self.addr = a
            got.set()
        self.model = model = BoardModel(art, layer, model_info(art, layer, timeout_s=0.01))
        self.thread = threading.Thread(target=serve, args=(model, kind, 0, ready, self.stop), daemon=True)
        self.thread.start()
        assert got.wait(10)

    def close(self):
        self.stop.set()
        self.thread.join(5)


def test_host_infer_over_pty_is_bit_exact(t2_dir, tmp_path, capsys):
    from artifact import load_artifact
    art = load_artifact(t2_dir)
    x = random_input(art, 3, seed=4)
    np.save(tmp_path / "x.npy", x)
    srv = _Served(art, "t2", "pty")
    try:
        assert srv.addr.startswith("/dev/")
        rc = host.main(["--port", srv.addr, "--json", str(tmp_path / "info.json"), "info"])
        assert rc == 0 and "tucker2 layer, input [4, 4, 4]" in capsys.readouterr().out
        rc = host.main(["--port", srv.addr, "--json", str(tmp_path / "r.json"), "infer", "--npy",
                        str(tmp_path / "x.npy"), "--artifact", str(t2_dir), "--layer", "t2", "--check", "--out",
                        str(tmp_path / "y.npy")])
        out = capsys.readouterr().out
    finally:
        srv.close()
    assert rc == 0, out
    assert "3/3 bit-exact against the golden model" in out
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["bit_exact"] is True and len(rec["frames"]) == 3
    want, _ = run_layer(art.layer("t2"), [x], art.tensors)
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


def test_host_digits_are_quantised_with_the_artifact_input(tmp_path, capsys):
    art = random_conv(5, channels=1, out_channels=2, height=8, width=8, name="conv1")
    d = -6 - art.manifest["input"]["exponent"]       # inputs in [-1, 1] at 8 bits unsigned: 2**-6 steps
    art.manifest["input"]["exponent"] += d
    for rec in (art.layer("conv1")["in"], art.layer("conv1")["acc"], art.layer("conv1")["out"]):
        rec["exponent"] += d                           # keep acc = in + weight exponents (rule 8)
    path = save_artifact(tmp_path / "a", art.manifest, art.tensors)
    srv = _Served(art, "conv1", "tcp")
    try:
        rc = host.main(["--port", srv.addr, "--json", str(tmp_path / "d.json"), "infer", "--digits", "4",
                        "--artifact", str(path), "--layer", "conv1", "--check"])
        out = capsys.readouterr().out
    finally:
        srv.close()
    assert rc == 0, out
    assert "(label 0)" in out and "4/4 bit-exact" in out
    x, labels = host.digits_images(art, 4)
    from sklearn.datasets import load_digits
    d = load_digits()
    assert np.array_equal(x, quantize_input(d.data[:4].reshape(-1, 1, 8, 8) / 8.0 - 1.0, art.manifest["input"]))
    assert x.min() >= 0 and x.max() <= 255 and list(labels) == list(d.target[:4])


def test_host_bad_input(t2_dir, tmp_path, capsys):
    from artifact import load_artifact
    art = load_artifact(t2_dir)
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 4, 4), dtype=np.int64))
    np.save(tmp_path / "float.npy", np.zeros((1, 4, 4, 4)))
    srv = _Served(art, "t2", "pty")
    try:
        assert host.main(["--port", srv.addr, "infer", "--npy", str(tmp_path / "wrong.npy")]) == 2
        assert "the board's layer takes (4, 4, 4)" in capsys.readouterr().err
        assert host.main(["--port", srv.addr, "infer", "--npy", str(tmp_path / "float.npy")]) == 2
        assert "expected integer tensors" in capsys.readouterr().err
    finally:
        srv.close()
    assert host.main(["--port", str(tmp_path / "no-such-tty"), "info"]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_host_checks_frames_against_the_board_before_sending(t2_dir, tmp_path, capsys):
    """Without an artifact the board's own input record is the check: out-of-range values are
    bad input (exit 2, one line) and no frame is sent; --out must end in .npy."""
    from artifact import load_artifact
    art = load_artifact(t2_dir)
    np.save(tmp_path / "big.npy", np.full((2, 4, 4, 4), 10**6, dtype=np.int64))
    srv = _Served(art, "t2", "pty")
    try:
        rc = host.main(["--port", srv.addr, "infer", "--npy", str(tmp_path / "big.npy")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "outside the input's" in err, err
        assert srv.model.frames == 0
    finally:
        srv.close()
    np.save(tmp_path / "x.npy", random_input(art, 1, seed=1))
    rc = host.main(["--port", "loop://", "infer", "--npy", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y")])
    assert rc == 2 and "must end in .npy" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.npy").exists()


def test_host_out_is_written_atomically_at_the_path(t2_dir, tmp_path, capsys):
    from artifact import load_artifact
    art = load_artifact(t2_dir)
    x = random_input(art, 2, seed=3)
    np.save(tmp_path / "x.npy", x[0])                # one (C, H, W) frame is a batch of one
    srv = _Served(art, "t2", "tcp")
    try:
        rc = host.main(["--port", srv.addr, "infer", "--npy", str(tmp_path / "x.npy"), "--artifact", str(t2_dir),
                        "--layer", "t2", "--check", "--out", str(tmp_path / "y.out.npy")])
    finally:
        srv.close()
    assert rc == 0, capsys.readouterr()
    want, _ = run_layer(art.layer("t2"), [x[:1]], art.tensors)
    assert np.array_equal(np.load(tmp_path / "y.out.npy"), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.out.npy"]     # no temp file left


def test_host_module_entry_point_over_a_socket(t2_dir, tmp_path):
    """`python -m deploy.host` as a user runs it, against `python -m deploy.host serve --tcp`."""
    from artifact import load_artifact
    x = random_input(load_artifact(t2_dir), 2, seed=9)
    np.save(tmp_path / "x.npy", x)
    server = subprocess.Popen([sys.executable, "-m", "deploy.host", "serve", "--artifact", str(t2_dir), "--tcp", "0"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        addr = line.split(" on ")[1].split()[0]
        r = subprocess.run([sys.executable, "-m", "deploy.host", "--port", addr, "infer", "--npy",
                            str(tmp_path / "x.npy"), "--artifact", str(t2_dir), "--check"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 0, r.stderr
    assert "2/2 bit-exact" in r.stdout
