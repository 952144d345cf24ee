"""Generate Verilog and its JSON description from an artifact: the whole network, a
segment of it, or one layer.

Command line::

    python -m hw.generate --artifact DIR --out DIR [--layers FIRST:LAST] [--multipliers N] [--top NAME]
    python -m hw.generate --artifact DIR --out DIR --layer NAME [--multipliers N] [--top NAME]

writes ``OUT/<top>.v`` (``amaranth.back.verilog``) and ``OUT/<top>.json`` (the
description returned by :func:`generate_network` or, with ``--layer``, :func:`generate`).
Bad input (no such artifact or layer, an op the hardware cannot build, a segment that
is not contiguous, a budget below one multiplier per stage) is reported as one line on
stderr with exit status 2, before anything is written. No torch, no training code.

Whole-network description (``format: "elrt-hw-network"``, ``version: 1``): ``top``,
``verilog``, ``segment`` [first, last], ``ports`` and ``payload`` (as below, for the
segment's input and output tensors), ``multipliers`` {budget, used},
``cycles_per_frame`` (expected, steady state: the slowest unit's), ``bottleneck``,
``ideal_cycles_per_frame``, ``utilisation``, ``macs_per_frame``, ``units`` (per layer:
name, op, rtl instance, inputs, output tensor, cycles per frame, latency, multipliers and
for MAC layers the per-stage ``folding``), ``forks``, ``skip_fifos`` (add, operand,
depth, width) and ``streams`` (every inter-unit stream: name, producer, consumer,
channels, bits, signed).

Layer description:

(``format: "elrt-hw-description"``, ``version: 1``):

``top``, ``verilog``
    Top module name and Verilog file name.
``layer``
    ``{"name", "op", "stages"}`` of the artifact layer.
``ports``
    ``{"clk", "rst", "in": {"valid", "ready", "payload", "width"}, "out": {...}}``;
    names exactly as in the Verilog module header.
``reset``
    ``{"port", "synchronous": true, "active_high": true, "note"}``.
``payload``
    ``{"in": layout, "out": layout}`` with layout ``{"shape": [C, H, W], "channels",
    "bits", "signed", "width", "beats_per_frame", "order", "channel_lsb"}``: one beat is
    one pixel with all channels, channel ``c`` at bits ``[c*bits, (c+1)*bits)``
    (two's complement when signed), pixels in raster order, frames back to back.
``folding``
    Per stage: pe, simd, nf, sf, multipliers, cycles per vector/frame, MACs, widths
    (in/weight/out/acc/adder-tree bits), requant, FIFO depth, line buffer.
``multipliers``
    ``{"budget", "used", "min_utilisation"}``.
``cycles_per_frame``, ``ideal_cycles_per_frame``, ``utilisation``, ``macs_per_frame``
    Expected steady-state cycles per frame (frames back to back, no back-pressure),
    total MACs / multipliers used, and their ratio.
``accumulator_bits``
    ``{stage_name: bits}``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from artifact import Artifact, ArtifactError, load_artifact
from artifact.cli import Parser, UsageError, check_number, check_out_dir, fail, int_range, unit_float
from artifact.files import atomic_write_text

from .engine import LayerEngine, check_engine
from .planner import DEFAULT_MIN_UTILISATION, plan_folding
from .spec import HwError, layer_stages

__all__ = ["generate", "generate_network", "parse_segment", "describe", "top_name_for", "check_top_name", "check_options", "main", "DESCRIPTION_FORMAT",
           "MAX_MULTIPLIERS", "MAX_LINE_ROWS"]

DESCRIPTION_FORMAT = "elrt-hw-description"
NETWORK_FORMAT = "elrt-hw-network"
#: Part of the whole-network resource estimate when none is given.
DEFAULT_PART = "LFE5U-85F"
DESCRIPTION_VERSION = 1
#: The largest multiplier budget accepted (the largest FPGAs have about 12,000 DSP blocks).
MAX_MULTIPLIERS = 100_000
#: The most line buffers per sliding-window generator accepted (the default is kernel + stride).
MAX_LINE_ROWS = 256
_VERILOG_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def top_name_for(layer_name: str) -> str:
    """Default Verilog top module name for a layer: ``elrt_<layer>`` (non-identifier chars -> ``_``)."""
    return "elrt_" + re.sub(r"[^A-Za-z0-9_]", "_", layer_name)


def check_top_name(top: str) -> str:
    """``top`` if it is a plain Verilog identifier (it also names the output files), else HwError."""
    if not isinstance(top, str) or not _VERILOG_ID.match(top) or len(top) > 200:
        raise HwError(f"top module name {top!r} is not a Verilog identifier (letters, digits, _; not starting "
                      f"with a digit); choose another --top")
    return top


def check_options(multipliers=None, line_rows=None, min_utilisation=None) -> None:
    """HwError (one line) for a budget, line-buffer count or utilisation floor out of range
    (NaN and inf included): the checks :func:`generate` makes before any work."""
    if multipliers is not None:
        if check_number(multipliers, "multiplier budget", integer=True, error=HwError) < 1:
            raise HwError(f"multiplier budget {multipliers} is too small: each stage needs at least one multiplier")
        check_number(multipliers, "multiplier budget", 1, MAX_MULTIPLIERS, integer=True, error=HwError)
    if line_rows is not None:
        check_number(line_rows, "line_rows", 1, MAX_LINE_ROWS, integer=True, error=HwError)
    if min_utilisation is not None:
        check_number(min_utilisation, "min_utilisation", 0.0, 1.0, error=HwError)


def _layout(ch: int, h: int, w: int, bits: int, is_signed: bool) -> dict:
    return {"shape": [ch, h, w], "channels": ch, "bits": bits, "signed": is_signed, "width": ch * bits,
            "beats_per_frame": h * w, "order": "raster (row-major), one pixel per beat",
            "channel_lsb": "channel c at bits [c*bits, (c+1)*bits)"}


def describe(engine: LayerEngine, layer: dict, top: str, verilog_file: str | None = None) -> dict:
    """The JSON description of an engine (see the module docstring)."""
    first, last, plan = engine.stages[0], engine.stages[-1], engine.plan

    def port(name: str, width: int) -> dict:
        return {"valid": f"{name}__valid", "ready": f"{name}__ready", "payload": f"{name}__payload", "width": width}

    return {
        "format": DESCRIPTION_FORMAT,
        "version": DESCRIPTION_VERSION,
        "top": top,
        "verilog": verilog_file,
        "layer": {"name": layer["name"], "op": layer["op"], "stages": [s.name for s in engine.stages]},
        "ports": {"clk": "clk", "rst": "rst",
                  "in": port("pix_in", first.in_pixel_bits), "out": port("pix_out", last.out_pixel_bits)},
        "reset": {"port": "rst", "synchronous": True, "active_high": True,
                  "note": "one cycle of reset returns the engine to the start of a frame"},
        "payload": {"in": _layout(first.in_ch, first.height, first.width, first.in_bits, first.in_signed),
                    "out": _layout(last.out_ch, last.out_height, last.out_width, last.out_bits, last.out_signed)},
        "folding": engine.describe(),
        "multipliers": {"budget": plan.budget, "used": plan.multipliers},
        "cycles_per_frame": plan.cycles_per_frame,
        "ideal_cycles_per_frame": plan.ideal_cycles,
        "utilisation": plan.utilisation,
        "macs_per_frame": plan.macs,
        "accumulator_bits": {s.name: s.acc_bits for s in engine.stages},
    }


def _check_ports(verilog_text: str, top: str, desc: dict) -> None:
    """Make sure every port name recorded in the description is in the top module header."""
    match = re.search(rf"module {re.escape(top)}\s*\(([^)]*)\)", verilog_text)
    if not match:
        raise HwError(f"generated Verilog has no module {top!r}")
    names = {n.strip() for n in match.group(1).split(",")}
    p = desc["ports"]
    wanted = [p["clk"], p["rst"]] + [p[d][k] for d in ("in", "out") for k in ("valid", "ready", "payload")]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise HwError(f"generated Verilog module {top} lacks ports {missing} (has {sorted(names)})")


def generate(artifact, layer_name: str, multipliers: int | None = None, out_dir="build/hw", *,
             top: str | None = None, line_rows: int | None = None, min_utilisation: float | None = None) -> dict:
    """Write ``<out_dir>/<top>.v`` and ``<out_dir>/<top>.json`` for one layer; return the description.

    ``artifact`` is an :class:`artifact.Artifact` or an artifact directory path.
    ``multipliers`` is the budget for the folding planner (default
    :data:`hw.planner.DEFAULT_MULTIPLIERS`); ``min_utilisation`` is the planner's
    utilisation floor (default :data:`hw.planner.DEFAULT_MIN_UTILISATION`, 0 for the
    fastest folding; see :func:`hw.planner.plan_folding`).
    ``line_rows`` overrides the line buffers per sliding window. Raises ArtifactError /
    HwError (one line).
    """
    from amaranth.back import verilog

    check_options(multipliers, line_rows, min_utilisation)
    top = check_top_name(top) if top else top_name_for(layer_name)
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    layer = art.layer(layer_name)
    stages = layer_stages(art, layer_name)
    plan = plan_folding(stages, multipliers, min_utilisation=min_utilisation)
    check_engine(stages, plan, line_rows)
    engine = LayerEngine(stages, plan, line_rows=line_rows)
    out = Path(out_dir)
    vfile = f"{top}.v"
    desc = describe(engine, layer, top, vfile)
    if art.path is not None:
        desc["artifact"] = str(art.path)
    desc["model"] = art.manifest.get("model", {}).get("name")
    desc["multipliers"]["min_utilisation"] = DEFAULT_MIN_UTILISATION if min_utilisation is None else min_utilisation
    text = verilog.convert(engine, name=top, emit_src=False)
    _check_ports(text, top, desc)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / vfile, text)
    atomic_write_text(out / f"{top}.json", json.dumps(desc, indent=2) + "\n")
    return desc


def _tensor_layout(record: dict) -> dict:
    shape = record["shape"] if len(record["shape"]) == 3 else [record["shape"][0], 1, 1]
    return _layout(*(int(v) for v in shape), int(record["bits"]), bool(record["signed"]))


def parse_segment(text: str | None) -> tuple[str | None, str | None]:
    """``"FIRST:LAST"`` (either side may be empty: from the start / to the output) ->
    ``(first, last)``; HwError for anything else."""
    if text is None:
        return None, None
    if text.count(":") != 1:
        raise HwError(f"--layers {text!r} is not FIRST:LAST (two layer names, either may be empty)")
    first, last = (p.strip() or None for p in text.split(":"))
    return first, last


def generate_network(artifact, multipliers: int | None = None, out_dir="build/hw", *, top: str | None = None,
                     first: str | None = None, last: str | None = None, line_rows: int | None = None,
                     part: str | None = None) -> dict:
    """Write ``<out_dir>/<top>.v`` and ``<out_dir>/<top>.json`` for the whole network (or the
    segment ``first..last``) and return the description (module docstring). ``multipliers``
    is the network's budget (default :data:`hw.network.DEFAULT_NETWORK_MULTIPLIERS`, or
    the part's multipliers when fewer), balanced over every MAC stage by
    :func:`hw.network.plan_network`. The description's ``resources`` are the estimate
    (:mod:`hw.resources`) on ``part`` (default :data:`DEFAULT_PART`, reported only); a
    ``part`` that is given must hold the design (HwError naming the resource otherwise).
    Everything is checked before anything is written; ArtifactError / HwError (one line)."""
    from amaranth.back import verilog

    from . import resources
    from .network import DEFAULT_NETWORK_MULTIPLIERS, NetworkEngine, plan_network, select_layers

    check_options(multipliers, line_rows)
    target = resources.part(part or DEFAULT_PART)
    if multipliers is None and part is not None:
        multipliers = min(DEFAULT_NETWORK_MULTIPLIERS, target.multipliers)
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    seg, entry, entry_rec = select_layers(art, first, last)
    top = check_top_name(top) if top else top_name_for(art.manifest.get("model", {}).get("name") or "network")
    plan = plan_network(art, seg, multipliers, dsps=target.multipliers)   # the rest in logic
    engine = NetworkEngine(art, plan, first, last, line_rows=line_rows)
    per_unit, total = engine.resources(target)
    fits = True
    try:
        resources.check_fit(total, target)
    except HwError:
        if part is not None:
            raise
        fits = False
    vfile = f"{top}.v"

    def port(name: str, width: int) -> dict:
        return {"valid": f"{name}__valid", "ready": f"{name}__ready", "payload": f"{name}__payload", "width": width}

    out_rec = seg[-1]["out"]
    in_layout, out_layout = _tensor_layout(entry_rec), _tensor_layout(out_rec)
    desc = {
        "format": NETWORK_FORMAT, "version": DESCRIPTION_VERSION, "top": top, "verilog": vfile,
        "artifact": str(art.path) if art.path is not None else None,
        "model": art.manifest.get("model", {}).get("name"),
        "segment": [seg[0]["name"], seg[-1]["name"]], "input_tensor": entry,
        "ports": {"clk": "clk", "rst": "rst", "in": port("pix_in", in_layout["width"]),
                  "out": port("pix_out", out_layout["width"])},
        "reset": {"port": "rst", "synchronous": True, "active_high": True,
                  "note": "one cycle of reset returns every unit to the start of a frame"},
        "payload": {"in": in_layout, "out": out_layout},
        "multipliers": {"budget": plan.budget, "used": plan.multipliers},
        "cycles_per_frame": plan.cycles_per_frame, "bottleneck": plan.bottleneck,
        "ideal_cycles_per_frame": plan.ideal_cycles, "utilisation": plan.utilisation, "macs_per_frame": plan.macs,
        **engine.describe(),
        "resources": {"part": target.name, "estimate": "hw.resources (yosys-calibrated model; see docs/hw.md)",
                      "fits": fits, "total": total.as_dict(), "utilisation": resources.utilisation(total, target),
                      "units": {name: r.as_dict() for name, r in per_unit.items()}},
    }
    text = verilog.convert(engine, name=top, emit_src=False)
    _check_ports(text, top, desc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / vfile, text)
    atomic_write_text(out / f"{top}.json", json.dumps(desc, indent=2) + "\n")
    return desc


def main(argv=None) -> int:
    ap = Parser(prog="python -m hw.generate",
                description="Generate Verilog and a JSON description: the whole network, a segment, or one layer.")
    ap.add_argument("--artifact", required=True, help="artifact directory (manifest.yaml + tensors.npz)")
    ap.add_argument("--layer", default=None, help="one layer of the manifest (default: the whole network)")
    ap.add_argument("--layers", default=None, metavar="FIRST:LAST",
                    help="a contiguous segment of the network (either name may be empty); not with --layer")
    ap.add_argument("--multipliers", type=int_range(1, MAX_MULTIPLIERS), default=None,
                    help=f"multiplier budget (1..{MAX_MULTIPLIERS:,}; default 128 for a network, 64 for a layer)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--top", default=None,
                    help="top module name, a Verilog identifier (default elrt_<layer> or elrt_<model>)")
    ap.add_argument("--min-utilisation", type=unit_float, default=None,
                    help="--layer only: only consider foldings with at least this utilisation, ideal/cycles (0..1; "
                         "default 1/1.05: cycles within 5%% of ideal; 0: fastest folding in the budget)")
    ap.add_argument("--line-rows", type=int_range(1, MAX_LINE_ROWS), default=None,
                    help=f"line buffers per sliding-window generator (1..{MAX_LINE_ROWS}; at least kernel+stride; "
                         f"default kernel+stride)")
    ap.add_argument("--part", default=None,
                    help="the network must fit this FPGA part by the resource estimate (e.g. LFE5U-85F, LFE5U-25F, "
                         "iCE40UP5K, XC7A35T); default: estimate for LFE5U-85F, not enforced")
    args = ap.parse_args(argv)
    try:
        if args.layer is not None and not args.layer.strip():
            raise UsageError("--layer is empty; give a layer name of the manifest")
        if args.layer is not None and args.layers is not None:
            raise UsageError("--layer and --layers exclude each other: one layer, or a segment of the network")
        if args.layer is not None and args.part is not None:
            raise UsageError("--part applies to the whole network (or --layers); drop --layer")
        if args.part is not None:
            from .resources import part as lookup_part
            lookup_part(args.part)
        if args.layer is None and args.min_utilisation is not None:
            raise UsageError("--min-utilisation applies to --layer; the network planner balances the whole budget")
        first, last = parse_segment(args.layers)
        if args.top is not None:
            check_top_name(args.top)
        check_out_dir(args.out)
        if args.layer is not None:
            desc = generate(args.artifact, args.layer, args.multipliers, args.out, top=args.top,
                            line_rows=args.line_rows, min_utilisation=args.min_utilisation)
        else:
            desc = generate_network(args.artifact, args.multipliers, args.out, top=args.top, first=first, last=last,
                                    line_rows=args.line_rows, part=args.part)
    except (UsageError, ArtifactError, OSError) as e:
        return fail(ap.prog, e)
    what = "" if args.layer is not None else f"{len(desc['units'])} layers, "
    print(f"{Path(args.out) / desc['verilog']}: {desc['top']}, {what}{desc['multipliers']['used']} multipliers, "
          f"{desc['cycles_per_frame']} cycles/frame (ideal {desc['ideal_cycles_per_frame']:.1f})")
    if args.layer is None:
        res = desc["resources"]
        use = ", ".join(f"{k} {v['percent']}%" for k, v in res["utilisation"].items() if v["percent"] is not None)
        print(f"estimated on {res['part']}: {use}" + ("" if res["fits"] else " - does NOT fit"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
