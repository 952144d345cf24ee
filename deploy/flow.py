"""The flow from a trained run folder to a board-ready result, as named steps.

::

    python -m deploy.flow RUN [--steps a,b | --from STEP --to STEP] [--force]
        [--multipliers N] [--part LFE5U-85F] [--board ulx3s-85f] [--images N] [--waves]

Steps, in order (:data:`STEPS`; each also runs on its own, ``--steps NAME``):

==========  =================================================================  ==========================
step        what it does                                                       checked
==========  =================================================================  ==========================
export      ``python -m model.export RUN`` -> ``RUN/artifact`` (+ QONNX)       the artifact loads
verify      ``python -m model.verify RUN``: QAT model vs integer model         0 mismatching elements,
            (writes ``test_inputs.npy`` / ``test_labels.npy``)                 classes identical
plan        :func:`hw.network.plan_network` + resource estimate on ``--part``  the design fits a ``--part``
                                                                               given (else: reported)
generate    ``python -m hw.generate`` (whole network: Verilog + description)   cycles/frame as planned
rtlsim      ``python -m sim --network``: the RTL in Verilator on the test      0 mismatches, classes
            images, with bubbles, back-pressure and a reset                    identical
hls4ml      ``python -m deploy.hls4ml``: hls4ml C simulation on them           0 mismatches
bitstream   ``python -m deploy.fpga bitstream`` for ``--board``                timing met (not a default
            (opt-in: ``--steps``/``--to``)                                      step: it takes long)
report      ``RUN/flow/report.json`` and a summary of every step's record      every step passed
==========  =================================================================  ==========================

The flow stops at the first step that fails (exit 1). Each step's record (command,
seconds, checks, outputs, fingerprint; on a mismatch the first one: unit, image, pixel,
channel, expected, got) is kept in ``RUN/flow/flow.json`` (written atomically after every
step), its output in ``RUN/flow/logs/STEP.log``. A step whose inputs are unchanged since
its last successful run is skipped: the fingerprint hashes the files the step reads,
the options that change its result and the package sources that produce it, so an
hour-long bitstream is not rebuilt for nothing (``--force`` reruns).

Bad input (an unknown step name, ``--from`` after ``--to``, a run folder without the
artifact or checkpoint the first selected step needs, an option out of range, an
unknown part or board) is one line on stderr, exit 2, before any step runs. This module
runs the training package only as subprocesses (``hw``, ``sim`` and ``deploy`` never
import ``model``).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from artifact import ArtifactError, load_artifact
from artifact.io import MANIFEST
from artifact.cli import Parser, UsageError, fail, int_range
from artifact.files import atomic_write_text

__all__ = ["STEPS", "DEFAULT_STEPS", "FlowContext", "select_steps", "run_flow", "main"]

PROG = "python -m deploy.flow"
REPO = Path(__file__).resolve().parents[1]
RECORD_FORMAT = "elrt-flow"
HLS_PART, HLS_CLOCK_NS = "xc7a35ticsg324-1L", 10


@dataclass
class FlowContext:
    """What every step sees: the run folder and the flow's options."""

    run: Path
    multipliers: int | None = None
    part: str = "LFE5U-85F"
    part_required: bool = False     # True: the plan must fit ``part`` (a --part given); else it is reported
    board: str = "ulx3s-85f"
    images: int | None = None
    waves: bool = False
    python: str = sys.executable

    @property
    def artifact(self) -> Path:
        return self.run / "artifact"

    @property
    def flow_dir(self) -> Path:
        return self.run / "flow"

    @property
    def test_inputs(self) -> Path:
        return self.run / "test_inputs.npy"

    def out(self, name: str) -> Path:
        return self.flow_dir / name


@dataclass(frozen=True)
class Step:
    """A named step: what it reads (for the fingerprint), which option values and package
    sources decide its result, and ``run(ctx, log) -> (checks, outputs)``, which raises
    :class:`StepFailed` when a check fails."""

    name: str
    summary: str
    reads: Callable[[FlowContext], list]
    options: Callable[[FlowContext], dict]
    sources: tuple
    run: Callable
    default: bool = True


class StepFailed(RuntimeError):
    """A step ran but its result is wrong (a command failed, a check did not hold)."""

    def __init__(self, message: str, checks: dict | None = None):
        super().__init__(message)
        self.checks = checks or {}


STEPS: dict[str, Step] = {}


def step(name: str, summary: str, *, reads, options=lambda c: {}, sources=(), default: bool = True):
    """Register the decorated ``run`` function as the step ``name`` (in definition order)."""
    def register(fn):
        STEPS[name] = Step(name, summary, reads, options, tuple(sources), fn, default)
        return fn
    return register


def _command(ctx: FlowContext, log, args: list) -> None:
    """Run ``python -m ...`` ``args`` in the repository, output to ``log``; StepFailed on a non-zero exit."""
    cmd = [ctx.python, *map(str, args)]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    r = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise StepFailed(f"`{' '.join(map(str, args[:3]))} ...` exited {r.returncode}; see {log.name}")


def _json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise StepFailed(f"{path} is missing or not JSON ({e})") from None


def _check(checks: dict, ok: bool, what: str, first_mismatch: dict | None = None) -> None:
    if not ok:
        if first_mismatch:
            checks["first_mismatch"] = first_mismatch
        raise StepFailed(what, checks)


# ----------------------------------------------------------------------------- the steps

@step("export", "QAT checkpoint -> integer artifact (+ QONNX)",
      reads=lambda c: [c.run / "checkpoint.pt", c.run / "config.yaml"], sources=("model", "artifact"))
def _export(ctx, log):
    _command(ctx, log, ["-m", "model.export", ctx.run, "--qonnx", ctx.run / "model.onnx"])
    art = load_artifact(ctx.artifact)
    return {"layers": len(art.layers())}, [ctx.artifact, ctx.run / "model.onnx"]


@step("verify", "QAT model vs integer model on the test set, element by element",
      reads=lambda c: [c.run / "checkpoint.pt", c.run / "config.yaml", c.artifact], sources=("model", "artifact"))
def _verify(ctx, log):
    _command(ctx, log, ["-m", "model.verify", ctx.run])
    r = _json(ctx.run / "verify.json")
    checks = {k: r.get(k) for k in ("images", "elements_compared", "mismatching_elements", "classes_identical",
                                    "qat_accuracy", "integer_accuracy") if k in r}
    _check(checks, r.get("mismatching_elements") == 0 and r.get("classes_identical"),
           f"QAT and integer models differ in {r.get('mismatching_elements')} elements",
           {"tensors": r.get("mismatches_by_tensor")})
    return checks, [ctx.run / "verify.json", ctx.test_inputs, ctx.run / "test_labels.npy"]


@step("plan", "multiplier budget balanced over every MAC stage; resources checked against the part",
      reads=lambda c: [c.artifact],
      options=lambda c: {"multipliers": c.multipliers, "part": c.part, "required": c.part_required},
      sources=("hw", "artifact"))
def _plan(ctx, log):
    from hw import resources
    from hw.network import NetworkEngine, plan_network, select_layers
    art = load_artifact(ctx.artifact)
    seg = select_layers(art)[0]
    # the products beyond the part's DSPs in logic, as generate, rtlsim and bitstream build them
    plan = plan_network(art, seg, ctx.multipliers, dsps=resources.part(ctx.part).multipliers)
    per_unit, total = NetworkEngine(art, plan).resources(ctx.part)
    record = {**plan.as_dict(), "part": ctx.part, "resources": total.as_dict(),
              "utilisation_of_part": resources.utilisation(total, ctx.part)}
    atomic_write_text(ctx.out("plan.json"), json.dumps(record, indent=1, default=str) + "\n")
    log.write(json.dumps(record, indent=1, default=str) + "\n")
    checks = {"multipliers": plan.multipliers, "cycles_per_frame": plan.cycles_per_frame,
              "utilisation": round(plan.utilisation, 4), "part": ctx.part}
    try:
        resources.check_fit(total, ctx.part)
        checks["fits"] = True
    except ArtifactError as e:                      # HwError: the resource, the need, the capacity
        if ctx.part_required:
            raise StepFailed(str(e), checks) from None
        checks["fits"] = False                      # as hw.generate: the default part is reported only
        log.write(f"does not fit {ctx.part} by the estimate: {e}\n")
    return checks, [ctx.out("plan.json")]


@step("generate", "the whole network as Verilog and its JSON description",
      reads=lambda c: [c.artifact], options=lambda c: {"multipliers": c.multipliers, "part": c.part},
      sources=("hw", "artifact"))
def _generate(ctx, log):
    out = ctx.out("hw")
    args = ["-m", "hw.generate", "--artifact", ctx.artifact, "--out", out]
    if ctx.multipliers:
        args += ["--multipliers", ctx.multipliers]
    if ctx.part_required:                           # else hw.generate's default part, the flow's too
        args += ["--part", ctx.part]
    _command(ctx, log, args)
    descs = [p for p in out.glob("*.json") if _json(p).get("format") == "elrt-hw-network"]
    _check({}, len(descs) == 1, f"{out} holds {len(descs)} network descriptions, expected 1")
    desc = _json(descs[0])
    planned = _json(ctx.out("plan.json")).get("cycles_per_frame") if ctx.out("plan.json").is_file() else None
    checks = {"top": desc["top"], "units": len(desc["units"]), "cycles_per_frame": desc["cycles_per_frame"]}
    _check(checks, planned is None or planned == desc["cycles_per_frame"],
           f"generated {desc['cycles_per_frame']} cycles/frame, planned {planned}")
    return checks, [out]


def _first_output_mismatch(ctx, report: dict, inputs: Path) -> dict | None:
    """Unit, image, pixel, channel, expected and got of the first wrong output value."""
    import numpy as np

    from artifact import golden
    try:
        got = np.load(report["outputs"], allow_pickle=False)
        art = load_artifact(ctx.artifact)
        x = np.load(inputs, allow_pickle=False)[:len(got)]
        want = golden.run(art, x).reshape(got.shape)
    except (OSError, KeyError, ValueError, ArtifactError):
        return None
    bad = np.argwhere(got != want)
    if not len(bad):
        return None
    image, index = int(bad[0][0]), int(bad[0][1])
    # the earliest unit whose tapped stream was wrong (taps are in stream order), else the output
    wrong = [name for name, t in report.get("taps", {}).items() if t.get("mismatches")]
    return {"unit": wrong[0] if wrong else art.manifest["output"], "output_unit": art.manifest["output"],
            "image": image, "pixel": 0, "channel": index, "expected": int(want[image, index]),
            "got": int(got[image, index])}


@step("rtlsim", "the RTL in Verilator on the test images (bubbles, back-pressure, reset)",
      reads=lambda c: [c.artifact, c.test_inputs],
      options=lambda c: {"multipliers": c.multipliers, "images": c.images, "waves": c.waves, "part": c.part},
      sources=("hw", "sim", "artifact"))
def _rtlsim(ctx, log):
    from hw import resources
    out = ctx.out("rtlsim")
    args = ["-m", "sim", "--artifact", ctx.artifact, "--network", "--out", out,
            "--dsps", resources.part(ctx.part).multipliers]
    if ctx.multipliers:
        args += ["--multipliers", ctx.multipliers]
    inputs = ctx.test_inputs                        # sim takes the run folder's, with its labels
    if ctx.images:                                  # the first N test images, as a file of their own
        import numpy as np

        from artifact.files import atomic_save_npy
        inputs = out / "inputs.npy"
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(inputs, np.load(ctx.test_inputs, allow_pickle=False)[:ctx.images])
        args += ["--inputs", inputs]
    if ctx.waves:
        args += ["--waves"]
    try:
        _command(ctx, log, args)
    finally:
        report = _json(out / "network" / "network.json") if (out / "network" / "network.json").is_file() else {}
    checks = {k: report.get(k) for k in ("images", "elements", "mismatches", "classes_identical",
                                         "cycles_per_frame_measured", "cycles_per_frame_expected",
                                         "latency_cycles", "accuracy", "golden_accuracy") if k in report}
    _check(checks, report.get("mismatches") == 0 and report.get("classes_identical"),
           f"the RTL differs from the golden model in {report.get('mismatches')} values",
           _first_output_mismatch(ctx, report, inputs))
    return checks, [out / "network"]


@step("hls4ml", "hls4ml C simulation of the whole network on the test images",
      reads=lambda c: [c.artifact, c.test_inputs], sources=("deploy/hls4ml", "artifact"))
def _hls4ml(ctx, log):
    out = ctx.out("hls4ml")
    _command(ctx, log, ["-m", "deploy.hls4ml", "--artifact", ctx.artifact, "--inputs", ctx.test_inputs,
                        "--backend", "Vitis", "--part", HLS_PART, "--clock-ns", HLS_CLOCK_NS, "--out", out])
    r = _json(out / "csim_report.json")
    checks = {k: r.get(k) for k in ("samples", "values", "mismatches", "class_mismatches")}
    _check(checks, r.get("mismatches") == 0 and r.get("class_mismatches") == 0,
           f"the hls4ml C simulation differs in {r.get('mismatches')} values")
    return checks, [out]


@step("bitstream", "board top -> bitstream and report.json (opt-in)",
      reads=lambda c: [c.artifact], options=lambda c: {"board": c.board, "multipliers": c.multipliers},
      sources=("hw", "deploy/fpga", "artifact"), default=False)
def _bitstream(ctx, log):
    out = ctx.out("fpga")
    args = ["-m", "deploy.fpga", "bitstream", "--board", ctx.board, "--artifact", ctx.artifact, "--out", out]
    if ctx.multipliers:
        args += ["--multipliers", ctx.multipliers]
    _command(ctx, log, args)
    reports = sorted(out.glob(f"{ctx.board}/*/report.json"))
    _check({}, bool(reports), f"no report.json under {out / ctx.board}")
    r = _json(reports[-1])
    checks = {k: r.get(k) for k in ("passed", "fmax_mhz", "resources") if k in r}
    return checks, [reports[-1].parent]


@step("report", "every step's record in RUN/flow/report.json", reads=lambda c: [])    # always runs
def _report(ctx, log):
    record = _json(ctx.flow_dir / "flow.json")
    done = {n: s for n, s in record["steps"].items() if n != "report"}
    failed = [n for n, s in done.items() if not s.get("passed")]
    lines = [f"{n:10s} {'ok' if s.get('passed') else 'FAILED':6s} {_brief(s.get('checks', {}))}" for n, s in done.items()]
    text = "\n".join(lines)
    log.write(text + "\n")
    accuracy = {"qat": done.get("verify", {}).get("checks", {}).get("qat_accuracy"),
                "integer": done.get("verify", {}).get("checks", {}).get("integer_accuracy"),
                "rtl": done.get("rtlsim", {}).get("checks", {}).get("accuracy")}
    report = {"format": RECORD_FORMAT + "-report", "run": str(ctx.run), "steps": done, "passed": not failed,
              "accuracy": accuracy}
    atomic_write_text(ctx.out("report.json"), json.dumps(report, indent=1, default=str) + "\n")
    checks = {"steps": ", ".join(done), "passed": len(done) - len(failed),
              **{f"{k}_accuracy": f"{100 * v:.2f}%" for k, v in accuracy.items() if v is not None}}
    _check(checks, not failed, f"steps failed: {', '.join(failed)}")
    return checks, [ctx.out("report.json")]


def _brief(checks: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in checks.items() if not isinstance(v, (dict, list)))


DEFAULT_STEPS = tuple(n for n, s in STEPS.items() if s.default)


# ----------------------------------------------------------------------------- running

def select_steps(steps: str | None = None, first: str | None = None, last: str | None = None) -> list[str]:
    """The steps to run: ``steps`` (comma-separated names, run in flow order), else the
    default steps from ``first`` to ``last`` (all of them when neither is given), and an
    opt-in step (bitstream) only when it is named. UsageError (one line) for unknown names."""
    names = list(STEPS)

    def known(name, what):
        if name not in STEPS:
            raise UsageError(f"{what} {name!r} is not a step; the steps are {', '.join(names)}")
        return name
    if steps is not None:
        if first or last:
            raise UsageError("give --steps or --from/--to, not both")
        chosen = {known(n.strip(), "--steps") for n in steps.split(",") if n.strip()}
        if not chosen:
            raise UsageError("--steps is empty; give step names separated by commas")
        return [n for n in names if n in chosen]
    i = names.index(known(first, "--from")) if first else 0
    j = names.index(known(last, "--to")) if last else len(names) - 1
    if i > j:
        raise UsageError(f"--from {first} comes after --to {last} in the flow ({', '.join(names)})")
    return [n for n in names[i:j + 1] if STEPS[n].default or n in (first, last)]


def _hash_path(h, path: Path) -> None:
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    elif path.is_file():
        h.update(path.read_bytes())
    else:
        h.update(b"<absent>")


def fingerprint(ctx: FlowContext, st: Step) -> str:
    """Hash of what decides the step's result: the files it reads, its options, the package
    sources that implement it."""
    h = hashlib.sha256(st.name.encode())
    for p in st.reads(ctx):
        h.update(str(p).encode())
        _hash_path(h, Path(p))
    h.update(json.dumps(st.options(ctx), sort_keys=True, default=str).encode())
    for src in st.sources:
        for p in sorted((REPO / src).rglob("*.py")):
            h.update(p.read_bytes())
    return h.hexdigest()


def _load_record(ctx: FlowContext) -> dict:
    path = ctx.flow_dir / "flow.json"
    try:
        rec = json.loads(path.read_text())
        if rec.get("format") == RECORD_FORMAT and isinstance(rec.get("steps"), dict):
            return rec
    except (OSError, ValueError):
        pass
    return {"format": RECORD_FORMAT, "version": 1, "run": str(ctx.run), "steps": {}}


def _needs(ctx: FlowContext, names: list[str]) -> None:
    """What the first selected step needs and no selected step makes (UsageError otherwise)."""
    if "export" not in names and any(n in names for n in ("verify", "plan", "generate", "rtlsim", "hls4ml",
                                                            "bitstream")) and not (ctx.artifact / MANIFEST).is_file():
        raise UsageError(f"{ctx.run} has no artifact/{MANIFEST}; run the export step first (--from export)")
    if names[0] in ("export", "verify") and not (ctx.run / "checkpoint.pt").is_file():
        raise UsageError(f"{ctx.run} has no checkpoint.pt: the {names[0]} step needs a training run folder")
    if "verify" not in names and any(n in names for n in ("rtlsim", "hls4ml")) and not ctx.test_inputs.is_file():
        raise UsageError(f"{ctx.run} has no test_inputs.npy; run the verify step first (it writes them)")


def run_flow(ctx: FlowContext, names: list[str], *, force: bool = False, say=print) -> dict:
    """Run the steps ``names`` in order (skipping unchanged ones unless ``force``); return the
    record. Stops at the first failing step (its record says why)."""
    ctx.flow_dir.mkdir(parents=True, exist_ok=True)
    (ctx.flow_dir / "logs").mkdir(exist_ok=True)
    record = _load_record(ctx)
    record["passed"] = None
    atomic_write_text(ctx.flow_dir / "flow.json", json.dumps(record, indent=1, default=str) + "\n")
    for name in names:
        st = STEPS[name]
        fp = fingerprint(ctx, st)
        last = record["steps"].get(name, {})
        if (not force and name != "report" and last.get("passed") and last.get("fingerprint") == fp
                and all(Path(p).exists() for p in last.get("outputs", []))):
            say(f"{name:10s} skipped (unchanged since {last.get('finished')})")
            last["skipped"] = True
            continue
        say(f"{name:10s} {st.summary} ...")
        t0 = time.monotonic()
        entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "fingerprint": fp, "skipped": False,
                 "log": str(ctx.flow_dir / "logs" / f"{name}.log")}
        with open(entry["log"], "w") as log:
            try:
                checks, outputs = st.run(ctx, log)
                entry.update(passed=True, checks=checks, outputs=[str(p) for p in outputs])
            except StepFailed as e:
                entry.update(passed=False, error=str(e), checks=e.checks)
            except (ArtifactError, OSError, ValueError) as e:
                entry.update(passed=False, error=f"{type(e).__name__}: {e}".splitlines()[0], checks={})
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        record["steps"][name] = entry
        atomic_write_text(ctx.flow_dir / "flow.json", json.dumps(record, indent=1, default=str) + "\n")
        if not entry["passed"]:
            say(f"{name:10s} FAILED after {entry['seconds']} s: {entry['error']}"
                + (f"; first mismatch {entry['checks']['first_mismatch']}" if "first_mismatch" in entry["checks"]
                   else ""))
            record["passed"] = False
            break
        say(f"{name:10s} ok in {entry['seconds']} s: {_brief(entry['checks'])}")
    else:
        record["passed"] = True
    atomic_write_text(ctx.flow_dir / "flow.json", json.dumps(record, indent=1, default=str) + "\n")
    return record


def _parser() -> Parser:
    ap = Parser(prog=PROG, description="Run a trained run folder through the flow's named steps "
                                       f"({', '.join(STEPS)}).")
    ap.add_argument("run", help="training run folder (holds checkpoint.pt, or at least artifact/)")
    ap.add_argument("--steps", default=None, help="comma-separated steps to run (in flow order)")
    ap.add_argument("--from", dest="first", default=None, help="first step to run")
    ap.add_argument("--to", dest="last", default=None, help="last step to run")
    ap.add_argument("--force", action="store_true", help="rerun steps whose inputs have not changed")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="network multiplier budget (1..100,000; default 128)")
    ap.add_argument("--part", default=None,
                    help="the part the plan must fit (default: the fit on the LFE5U-85F is reported, not required)")
    ap.add_argument("--board", default="ulx3s-85f", help="board of the bitstream step (default ulx3s-85f)")
    ap.add_argument("--images", type=int_range(1, 100_000), default=None,
                    help="rtlsim: simulate only the first N test images (default: all)")
    ap.add_argument("--waves", action="store_true", help="rtlsim: also write waveforms")
    ap.add_argument("--list", action="store_true", help="list the steps and exit")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for n, s in STEPS.items():
            print(f"{n:10s} {s.summary}")
        return 0
    try:
        names = select_steps(args.steps, args.first, args.last)
        run = Path(args.run)
        if not run.is_dir():
            raise UsageError(f"run folder {run} does not exist; give a training run folder (runs/NAME)")
        from hw import resources
        if args.part is not None:
            resources.part(args.part)               # an unknown part: one line naming the known ones
        if "bitstream" in names:
            from deploy.fpga.boards import BOARDS
            if args.board not in BOARDS:
                raise UsageError(f"--board {args.board!r} is not a known board; known: {', '.join(sorted(BOARDS))}")
        ctx = FlowContext(run.resolve(), args.multipliers, args.part or FlowContext.part, args.part is not None,
                          args.board, args.images, args.waves)
        _needs(ctx, names)
        if ctx.flow_dir.exists() and not ctx.flow_dir.is_dir():
            raise UsageError(f"{ctx.flow_dir} is a file; the flow writes a folder there")
    except (UsageError, ArtifactError, OSError) as e:
        return fail(PROG, e)
    record = run_flow(ctx, names)
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
