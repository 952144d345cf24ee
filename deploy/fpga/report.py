"""Reading what yosys and nextpnr say about a build: utilisation, Fmax, pass/fail.

Sources, all written into the amaranth build folder:

* nextpnr ``--report FILE.json`` (nextpnr >= 0.4)::

      {"utilization": {"<bel type>": {"used": N, "available": M}, ...},
       "fmax": {"<clock net>": {"achieved": MHz, "constraint": MHz}, ...},
       "critical_paths": [{"from": clk, "to": clk, "path": [{"type", "net", "delay", "budget",
                           "from": {"cell", "port", "loc"}, "to": {...}}, ...]}, ...]}

* nextpnr's log (``top.tim``): the "Device utilisation" table, which is there even
  when placement fails because the design does not fit (no JSON report then);
* yosys ``stat -json`` (``top.stat.json``): cell counts after technology mapping.

:func:`summarise` turns them into the flow's ``report.json`` record (LUTs, FFs, DSP /
multiplier blocks, block RAMs, per-clock Fmax against its constraint, pass/fail);
:func:`format_summary` prints it; :func:`overflow_from_log` finds the resources that
did not fit.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["parse_nextpnr_report", "parse_utilisation_log", "overflow_from_log", "parse_yosys_stat",
           "summarise", "format_summary", "FAMILY_CELLS"]

#: Which nextpnr bel types / yosys cells count as what, per family.
FAMILY_CELLS = {
    "ecp5": {"lut": {"nextpnr": ["TRELLIS_COMB"], "yosys": ["LUT4"]},
             "ff": {"nextpnr": ["TRELLIS_FF"], "yosys": ["TRELLIS_FF"]},
             "dsp": {"nextpnr": ["MULT18X18D"], "yosys": ["MULT18X18D"]},
             "bram": {"nextpnr": ["DP16KD"], "yosys": ["DP16KD"]},
             "lutram": {"nextpnr": ["TRELLIS_RAMW"], "yosys": ["TRELLIS_DPR16X4"]},
             "carry": {"nextpnr": [], "yosys": ["CCU2C"]},
             "io": {"nextpnr": ["TRELLIS_IO"], "yosys": []},
             "logic_cells": {"nextpnr": ["TRELLIS_COMB"], "yosys": []}},
    "ice40": {"lut": {"nextpnr": [], "yosys": ["SB_LUT4"]},
              "ff": {"nextpnr": [], "yosys": ["SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
                                             "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN",
                                             "SB_DFFNE", "SB_DFFNSR", "SB_DFFNR", "SB_DFFNS", "SB_DFFNESR",
                                             "SB_DFFNER", "SB_DFFNES", "SB_DFFNSS", "SB_DFFNESS"]},
              "dsp": {"nextpnr": ["ICESTORM_DSP"], "yosys": ["SB_MAC16"]},
              "bram": {"nextpnr": ["ICESTORM_RAM"], "yosys": ["SB_RAM40_4K"]},
              "spram": {"nextpnr": ["ICESTORM_SPRAM"], "yosys": ["SB_SPRAM256KA"]},
              "carry": {"nextpnr": [], "yosys": ["SB_CARRY"]},
              "io": {"nextpnr": ["SB_IO"], "yosys": []},
              "logic_cells": {"nextpnr": ["ICESTORM_LC"], "yosys": []}},
}

_UTIL_LINE = re.compile(r"^Info:\s+([A-Za-z0-9_$]+):\s+(\d+)\s*/\s*(\d+)\s+(\d+)%")


def parse_nextpnr_report(data) -> dict:
    """``{"utilization": {bel: {"used", "available"}}, "fmax": {clk: {"achieved", "constraint"}},
    "critical_paths": [...]}`` from a nextpnr JSON report (a dict, JSON text or a path).
    ValueError (one line) if it is not one."""
    if isinstance(data, (str, Path)) and not str(data).lstrip().startswith("{"):
        data = Path(data).read_text()
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"nextpnr report is not JSON: {e}") from None
    if not isinstance(data, dict) or "utilization" not in data:
        raise ValueError("nextpnr report has no 'utilization' section (was it written by nextpnr --report?)")
    util = {}
    for bel, rec in data["utilization"].items():
        if not isinstance(rec, dict) or "used" not in rec or "available" not in rec:
            raise ValueError(f"nextpnr report: utilization entry {bel!r} lacks used/available")
        util[bel] = {"used": int(rec["used"]), "available": int(rec["available"])}
    fmax = {}
    for clk, rec in (data.get("fmax") or {}).items():
        fmax[clk] = {"achieved": float(rec["achieved"]), "constraint": float(rec["constraint"])}
    return {"utilization": util, "fmax": fmax, "critical_paths": data.get("critical_paths") or []}


def parse_utilisation_log(text: str) -> dict:
    """The last "Device utilisation" table of a nextpnr log: ``{bel: {"used", "available"}}``."""
    tables, cur = [], None
    for line in text.splitlines():
        if "Device utilisation" in line:
            cur = {}
            tables.append(cur)
            continue
        mt = _UTIL_LINE.match(line)
        if mt and cur is not None:
            cur[mt.group(1)] = {"used": int(mt.group(2)), "available": int(mt.group(3))}
        elif cur and line.strip() in ("Info:", ""):
            cur = None
    return tables[-1] if tables else {}


def overflow_from_log(text: str) -> list[str]:
    """Resources used beyond what the part has, e.g. ``["TRELLIS_COMB 30012/24288 (124%)"]``."""
    out = []
    for bel, r in parse_utilisation_log(text).items():
        if r["used"] > r["available"]:
            pct = 100.0 * r["used"] / max(r["available"], 1)
            out.append(f"{bel} {r['used']}/{r['available']} ({pct:.0f}%)")
    if not out:      # nextpnr-ice40 / ecp5 may also say it in an ERROR line
        for line in text.splitlines():
            mt = re.search(r"(?:Design uses|uses) (\d+) ([A-Za-z0-9_]+)(?: cells)?, but (?:the )?device (?:only )?"
                           r"(?:has|contains) (\d+)", line)
            if mt:
                out.append(f"{mt.group(2)} {mt.group(1)}/{mt.group(3)}")
    return out


def yosys_internal_error(text: str) -> str | None:
    """The pass and message of an internal assertion in a yosys log (a yosys bug, not the
    design's), e.g. ``"ABC_OPS_REINTEGRATE: Assert `...' failed in kernel/rtlil.cc:3091"``;
    None when the log has none."""
    assert_line = re.search(r"^ERROR: (Assert .*)$", text, flags=re.MULTILINE)
    if assert_line is None:
        return None
    passes = re.findall(r"^[\d.]+ Executing (\S+) pass", text[:assert_line.start()], flags=re.MULTILINE)
    message = assert_line.group(1).strip().rstrip(".")
    where = re.sub(r"\S*/(kernel|passes|techlibs|frontends|backends)/", r"\1/", message)   # the source path
    return f"{passes[-1]}: {where}" if passes else where


def parse_yosys_stat(data) -> dict:
    """Cell counts of the top module from ``stat -json`` output: ``{cell type: count}``."""
    if isinstance(data, (str, Path)) and not str(data).lstrip().startswith("{"):
        data = Path(data).read_text()
    if isinstance(data, str):
        # `tee -o` may put log lines before the JSON object
        data = json.loads(data[data.index("{"):])
    design = data.get("design") or {}
    cells = design.get("num_cells_by_type")
    if cells is None:
        mods = data.get("modules") or {}
        cells = {}
        for mod in mods.values():
            for k, v in (mod.get("num_cells_by_type") or {}).items():
                cells[k] = cells.get(k, 0) + int(v)
    return {k: int(v) for k, v in cells.items()}


def _count(names, table, key="used"):
    if not names:
        return None
    vals = [table[n][key] if key else table[n] for n in names if n in table]
    return sum(vals) if vals else 0


def summarise(family: str, nextpnr: dict | None, yosys_cells: dict | None = None, *, device: str = "",
              board: str = "", extra: dict | None = None) -> dict:
    """The flow's report record from the parsed nextpnr report and yosys cell counts."""
    cells = FAMILY_CELLS.get(family, {})
    util = (nextpnr or {}).get("utilization", {})
    ycells = yosys_cells or {}
    resources = {}
    for what, src in cells.items():
        used = _count(src["nextpnr"], util)
        avail = _count(src["nextpnr"], util, "available")
        if used is None or (used == 0 and not any(n in util for n in src["nextpnr"])):
            used = _count(src["yosys"], ycells, None)
            avail = None
            if what == "lut" and family == "ice40" and "ICESTORM_LC" in util:
                avail = util["ICESTORM_LC"]["available"]
            if what == "ff" and family == "ice40" and "ICESTORM_LC" in util:
                avail = util["ICESTORM_LC"]["available"]
        if used is None:
            continue
        resources[what] = {"used": used, "available": avail,
                           "percent": (round(100.0 * used / avail, 1) if avail else None)}
    clocks = {}
    for clk, f in (nextpnr or {}).get("fmax", {}).items():
        clocks[clk] = {"fmax_mhz": round(f["achieved"], 2), "constraint_mhz": round(f["constraint"], 2),
                       "slack_ns": round(1e3 / f["constraint"] - 1e3 / f["achieved"], 3) if f["achieved"] else None,
                       "pass": f["achieved"] >= f["constraint"]}
    fits = all(r["available"] is None or r["used"] <= r["available"] for r in resources.values())
    rec = {"format": "elrt-fpga-report", "version": 1, "family": family, "device": device, "board": board,
           "resources": resources, "utilization": util, "yosys_cells": ycells, "clocks": clocks,
           "timing_pass": bool(clocks) and all(c["pass"] for c in clocks.values()), "fits": fits}
    if extra:
        rec.update(extra)
    return rec


def format_summary(rec: dict) -> str:
    """A readable multi-line summary of a report record."""
    lines = [f"{rec.get('board') or rec.get('device')}: {rec.get('device', '')} ({rec['family']})"]
    if rec.get("layer"):
        lines.append(f"layer {rec['layer']} ({rec.get('op', '')}), {rec.get('multipliers', '?')} multipliers, "
                     f"{rec.get('cycles_per_frame', '?')} cycles/frame")
    names = {"lut": "LUTs", "ff": "FFs", "logic_cells": "logic cells", "dsp": "DSP blocks", "bram": "block RAMs",
             "spram": "SPRAMs", "lutram": "LUT RAMs", "carry": "carry cells", "io": "IOs"}
    for key, label in names.items():
        r = rec["resources"].get(key)
        if r is None:
            continue
        if r["available"]:
            lines.append(f"  {label:12s} {r['used']:7d} / {r['available']:<7d} {r['percent']:5.1f}%")
        else:
            lines.append(f"  {label:12s} {r['used']:7d}")
    for clk, c in rec["clocks"].items():
        lines.append(f"  clock {clk}: Fmax {c['fmax_mhz']:.2f} MHz vs constraint {c['constraint_mhz']:.2f} MHz "
                     f"-> {'PASS' if c['pass'] else 'FAIL'}")
    if not rec["clocks"]:
        lines.append("  (no clock timing in the report)")
    if rec.get("fps_at_fmax"):
        lines.append(f"  {rec['fps_at_fmax']:.0f} frames/s at Fmax (engine, {rec.get('cycles_per_frame')} cycles/frame)")
    if rec.get("build_s") is not None:
        router = f", nextpnr {rec['router'] or 'router1'} ({rec['router_reason']})" if rec.get("router_reason") else ""
        lines.append(f"  built in {rec['build_s']:.0f} s{router}")
    if rec.get("outreg"):
        o = rec["outreg"]
        left = sum(o["skipped"].values())
        lines.append(f"  block RAM output registers: {o['ports']} read ports ({o['flip_flops']} flip-flops "
                     f"absorbed), {left} left as they were")
    return "\n".join(lines)
