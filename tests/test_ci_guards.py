"""CI guards: what `.ci/run` must run beyond the fast set, and the set-up stamp.

Fast: the Makefile's `test`/`demo`/`test-slow`/`test-ci` targets depend on the set-up stamp
(installed once, again when pyproject.toml changes, always by `make setup`), `.ci/run`
calls `make test` and then `make test-ci`, and the guards `make test-ci` names exist, are
slow (not in the fast set) and cover an ECP5 build, an iCE40 build and the host tool
against the simulated board. The Makefile is run for real, in a copy, with a stub
interpreter that only records its arguments.

Slow (run by `make test-ci`): the tools are installed, and the host tool
(`python -m deploy.host`) against the Verilated board top, bit-exact.
"""
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAMP = "build/.setup-stamp"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


# --- the Makefile and .ci/run (fast) ------------------------------------------------


@pytest.fixture
def mk(tmp_path):
    """Run the repository's Makefile in a copy, PYTHON = a stub that logs its arguments."""
    for f in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "hw").mkdir()                                 # `$(MAKE) -C hw` runs even under make -n
    (tmp_path / "hw" / "Makefile").write_text("sim:\n\t@true\n")
    log = tmp_path / "calls.log"
    stub = tmp_path / "stub-python"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    stub.chmod(0o755)

    def run(*args, python=str(stub), dry=False):
        log.unlink(missing_ok=True)
        r = subprocess.run(["make", "-s", *(["-n"] if dry else []), *args, f"PYTHON={python}"], cwd=tmp_path,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout if dry else (log.read_text().splitlines() if log.exists() else [])
    run.dir = tmp_path
    run.stub = stub
    return run


def _installs(calls):
    return [c for c in calls if c.startswith("-m pip install")]


@needs_make
def test_test_installs_once_then_again_when_pyproject_changes(mk):
    calls = mk("test")
    assert _installs(calls) == ["-m pip install -q -e .[all]"]
    assert calls[-1] == "-m pytest -q -m not slow"             # the tests run after the install
    stamp = mk.dir / STAMP
    assert stamp.read_text().strip() == str(mk.stub)
    assert mk("test") == ["-m pytest -q -m not slow"]        # the second run does not reinstall
    past = time.time() - 60
    os.utime(stamp, (past, past))                             # pyproject.toml is newer: reinstall
    assert _installs(mk("test"))
    assert not _installs(mk("test"))


@needs_make
def test_demo_and_every_test_target_install_when_missing(mk):
    for target in ("demo", "test-slow", "test-ci"):
        (mk.dir / STAMP).unlink(missing_ok=True)
        out = mk(target, dry=True)
        assert "pip install -q -e '.[all]'" in out, (target, out)
        mk.dir.joinpath(STAMP).parent.mkdir(exist_ok=True)
        (mk.dir / STAMP).write_text(f"{mk.stub}\n")
        assert "pip install" not in mk(target, dry=True), target


@needs_make
def test_setup_always_reinstalls_and_another_interpreter_does_too(mk):
    mk("setup")
    assert _installs(mk("setup"))                            # make setup refreshes even a fresh stamp
    assert not _installs(mk("test"))
    other = mk.dir / "other-python"
    shutil.copy(mk.stub, other)
    assert _installs(mk("test", python=str(other)))          # the stamp was another interpreter's
    assert (mk.dir / STAMP).read_text().strip() == str(other)


def _ci_commands():
    """The commands of .ci/run, comments and blank lines dropped."""
    lines = [l.split("#", 1)[0].strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [l for l in lines if l]


def test_ci_runs_make_test_then_the_guards_and_stops_on_failure():
    cmds = _ci_commands()
    assert "set -euo pipefail" in cmds or "set -e" in cmds
    make = [shlex.split(c) for c in cmds if re.search(r"(^|\s)make\s", c)]
    goals = [next(w for w in argv[argv.index("make") + 1:] if not w.startswith("-") and "=" not in w) for argv in make]
    assert "test" in goals and "test-ci" in goals, cmds
    assert goals.index("test") < goals.index("test-ci")
    # nothing may swallow a failing make (`|| true`, `; true`) on those lines
    for c in cmds:
        if re.search(r"make\s.*\btest", c):
            assert "||" not in c and "true" not in c.split(), c


def _guards(mk):
    out = mk("test-ci", dry=True)
    line = next(l for l in out.splitlines() if "-m pytest" in l)
    ids = [w for w in shlex.split(line) if "::" in w]
    assert ids, line
    return ids


def _function(node_id):
    path, name = node_id.split("::")
    tree = ast.parse((ROOT / path).read_text())
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert fn is not None, f"{node_id} named by `make test-ci` does not exist"
    return fn, ast.get_source_segment((ROOT / path).read_text(), fn)


@needs_make
def test_the_guards_exist_are_slow_and_cover_both_families_and_the_host_path(mk):
    (mk.dir / STAMP).parent.mkdir(exist_ok=True)
    (mk.dir / STAMP).write_text(f"{mk.stub}\n")
    ids = _guards(mk)
    sources = {}
    for node_id in ids:
        fn, src = _function(node_id)
        marks = [ast.unparse(d) for d in fn.decorator_list]
        assert "pytest.mark.slow" in marks, f"{node_id} must be slow (the fast set already ran)"
        assert not any("skip" in m for m in marks), node_id
        sources[node_id] = src
    builds = [s for i, s in sources.items() if i.startswith("tests/test_fpga_build.py::")]
    assert any('"ulx3s-' in s for s in builds), "no ECP5 build among the CI guards"
    assert any('BOARD=icebreaker' in s or '"icebreaker"' in s for s in builds), "no iCE40 build among the CI guards"
    assert all('["dsp"]' in s and '["multipliers"]' in s for s in builds)     # the report's DSPs are checked
    assert any("host=True" in s or '"--host"' in s for s in sources.values()), "no host-tool simulation guard"
    out = mk("test-ci", dry=True)
    assert "--junitxml" in out and "skipped" in out                # a skipped guard fails test-ci


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_stamp_is_ignored_by_git():
    r = subprocess.run(["git", "check-ignore", "-q", STAMP], cwd=ROOT)
    assert r.returncode == 0, f"{STAMP} is not ignored by git"


# --- the guards themselves (slow; `make test-ci`) --------------------------------------


@pytest.mark.slow
def test_ci_tools_are_installed():
    """A guard that skips guards nothing: every tool the other guards need is here."""
    from deploy.fpga.build import YOWASP, yowasp_env
    from sim.toolchain import check_cocotb, verilator_env
    env = yowasp_env()
    assert set(YOWASP) <= set(env), f"missing open-FPGA tools: {sorted(set(YOWASP) - set(env))}"
    check_cocotb()
    verilator_env()


@pytest.mark.slow
def test_host_tool_against_the_verilated_board_top(tmp_path):
    """The whole path at a small size: artifact -> board top (host link + engine) as Verilog ->
    Verilator -> cocotb drives the UART from a TCP socket -> `python -m deploy.host infer --check`
    (a subprocess) sends two frames and compares them with the golden model."""
    from artifact import save_artifact
    from artifact.synth import random_tucker2
    art = random_tucker2(2, channels=4, out_channels=4, ranks=(2, 2), height=4, width=4, in_signed=True,
                         out_signed=True, name="tiny")
    path = save_artifact(tmp_path / "art", art.manifest, art.tensors)
    out = tmp_path / "sim"
    r = subprocess.run([sys.executable, "-m", "deploy.fpga", "sim", "--artifact", str(path), "--layer", "tiny",
                        "--host", "--frames", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^host_bridge\s+PASS", r.stdout, re.M) and re.search(r"^protocol\s+PASS", r.stdout, re.M)
    res = json.loads((out / "host_result.json").read_text())
    assert res["bit_exact"] and res["returncode"] == 0 and len(res["frames"]) == 2
    assert all(f["mismatches"] == 0 and f["out_shape"] == [4, 4, 4] for f in res["frames"])
    assert "2/2 bit-exact against the golden model" in (out / "host.log").read_text()
