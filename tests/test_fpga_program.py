"""`python -m deploy.fpga program` / `make -C hw program`: openFPGALoader where installed,
a plain one-line error where it is not (fast: a stand-in loader records its arguments)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "deploy.fpga", "program", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def _bitstream(tmp_path, board="ulx3s-85f", folder="network", name="top.bit"):
    p = tmp_path / "fpga" / board / folder / name
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\xff" * 16)
    return p


def test_loads_the_whole_networks_bitstream_with_openfpgaloader(tmp_path):
    bit = _bitstream(tmp_path)
    log = tmp_path / "args.txt"
    fake = tmp_path / "openFPGALoader"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    fake.chmod(0o755)
    r = _run(["--board", "ulx3s-85f", "--out", str(tmp_path / "fpga")], OPENFPGALOADER=str(fake))
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["-b", "ulx3s", str(bit)]
    ice = _bitstream(tmp_path, "icebreaker", "l1", "top.bin")
    r = _run(["--board", "icebreaker", "--out", str(tmp_path / "fpga"), "--layer", "l1", "--flash"],
             OPENFPGALOADER=str(fake))
    assert r.returncode == 0 and log.read_text().split() == ["-b", "icebreaker", "-f", str(ice)]


def test_missing_loader_bitstream_or_board_is_one_line_exit_2(tmp_path):
    _bitstream(tmp_path)
    r = _run(["--board", "ulx3s-85f", "--out", str(tmp_path / "fpga")], OPENFPGALOADER="no-such-loader-here")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "openFPGALoader is not installed" in r.stderr
    r = _run(["--board", "ulx3s-45f", "--out", str(tmp_path / "fpga")])
    assert r.returncode == 2 and "no bitstream at" in r.stderr and "make -C hw bitstream" in r.stderr
    r = _run(["--board", "nope", "--out", str(tmp_path / "fpga")])
    assert r.returncode == 2 and "unknown board" in r.stderr and r.stderr.count("\n") == 1
