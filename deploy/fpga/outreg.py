"""Move the flip-flops that register an ECP5 block RAM's read data into the block RAM's own
output register (``REGMODE_A`` / ``REGMODE_B`` ``"OUTREG"`` of a DP16KD), in a yosys JSON
netlist, between synthesis and nextpnr.

Why: without its output register a DP16KD's clock-to-out is 4.26 ns on an LFE5U-8 (nextpnr's
timing model), which leaves 2.4 ns of a 150 MHz cycle for the route to the next flip-flop;
with it, 0.72 ns. yosys maps a synchronous read port onto the block RAM's latch but never
uses the output register (it has no pass for that), so the engine's RTL registers every
block RAM's output itself (the weight ROMs' first register, the bias word, the block FIFOs'
output registers), and this pass absorbs those registers. Measured on a one-RAM design:
``DOB -> LUT -> FF`` is 5.51 ns without, 1.97 ns with the output register.

What is absorbed: one read port of a DP16KD (both halves of the read data in the 36-bit
pseudo-dual-port mode, ``DATA_WIDTH_A`` 36, whose read port is B), when every used bit of
its read data drives exactly one ``TRELLIS_FF`` ``DI`` and nothing else, and those
flip-flops share the block RAM port's clock (both not inverted), one clock enable (or
none) and have no set/reset (``LSR`` tied to 0, ``REGSET`` ``"RESET"``); the block RAM
port's reset is tied to 0. Then the read data pins take over the flip-flops' ``Q`` nets,
the flip-flops are removed, ``REGMODE`` becomes ``"OUTREG"`` and the output clock enable
(``OCE``) takes the flip-flops' clock enable. A DP16KD read port in ``NOREG`` mode followed
by a flip-flop with enable ``e`` and a DP16KD in ``OUTREG`` mode with ``OCE = e`` are the
same circuit (the output register is that flip-flop, inside the block RAM); a port that
does not match is left as it is and counted under its reason.

Standalone (standard library only), so that the amaranth build tree stays self-contained:
``python3 outreg.py [--report FILE.json] top.json`` rewrites ``top.json`` in place
(temporary file + rename) and prints one summary line; the build script runs it between
yosys and nextpnr. Exit 2 when the file is not a yosys JSON netlist.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict

__all__ = ["absorb_output_registers", "main"]

RAM = "DP16KD"
FF = "TRELLIS_FF"
DATA_BITS = 18                     # DOA0..17, DOB0..17


class NetlistError(ValueError):
    """The file is not a yosys JSON netlist with a top module."""


def _param(cell: dict, name: str, default: str = "") -> str:
    """A cell parameter as text: yosys writes string parameters that look like binary numbers
    with a trailing space, and numbers as binary strings."""
    v = cell.get("parameters", {}).get(name, default)
    return v.rstrip() if isinstance(v, str) else str(v)


def _width(cell: dict, name: str) -> int:
    v = _param(cell, name, "0")
    try:
        return int(v, 2) if set(v) <= {"0", "1"} and len(v) > 8 else int(v)
    except ValueError:
        return 0


def _top(netlist: dict) -> dict:
    mods = netlist.get("modules") if isinstance(netlist, dict) else None
    if not isinstance(mods, dict):
        raise NetlistError("not a yosys JSON netlist (no modules)")
    tops = [m for m in mods.values() if isinstance(m, dict) and
            str(m.get("attributes", {}).get("top", "0")).strip("0 ") != ""]
    if len(tops) != 1:
        raise NetlistError(f"a yosys JSON netlist needs exactly one top module, found {len(tops)}")
    if not isinstance(tops[0].get("cells"), dict):
        raise NetlistError("the top module has no cells")
    return tops[0]


def _read_groups(cell: dict) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """The block RAM's read ports as ``(port, data pins, REGMODE parameters)``: the port whose
    clock, enables and reset control the pins."""
    pins = {p: [f"DO{p}{i}" for i in range(DATA_BITS)] for p in "AB"}
    if _width(cell, "DATA_WIDTH_A") == 36:                  # pseudo dual port: read port B, 36 bits
        return [("B", pins["A"] + pins["B"], ("REGMODE_A", "REGMODE_B"))]
    return [(p, pins[p], (f"REGMODE_{p}",)) for p in "AB"]


def absorb_output_registers(netlist: dict) -> dict:
    """Absorb the output flip-flops of the top module's DP16KD read ports (module doc), in
    place. Returns ``{"ports": absorbed, "flip_flops": removed, "skipped": {reason: n}}``."""
    top = _top(netlist)
    cells = top["cells"]
    sinks = defaultdict(list)                       # net bit -> [(cell, pin)]
    for name, c in cells.items():
        dirs = c.get("port_directions", {})
        for pin, bits in c.get("connections", {}).items():
            if dirs.get(pin) != "output":
                for b in bits:
                    if isinstance(b, int):
                        sinks[b].append((name, pin))
    for port in top.get("ports", {}).values():      # a module output is a sink no register may take
        for b in port.get("bits", []):
            if isinstance(b, int):
                sinks[b].append(("<port>", ""))

    ports = removed = 0
    skipped = Counter()
    orphans = set()
    for name in sorted(n for n, c in cells.items() if c.get("type") == RAM):
        ram = cells[name]
        conn = ram.get("connections", {})
        for port, pins, regmodes in _read_groups(ram):
            used = [(p, conn[p][0]) for p in pins if p in conn and isinstance(conn[p][0], int) and sinks[conn[p][0]]]
            if not used:
                continue
            why = _why_not(ram, port, regmodes, used, cells, sinks)
            if why:
                skipped[why] += 1
                continue
            ffs = [cells[sinks[b][0][0]] for _, b in used]
            ce = _clock_enable(ffs[0])
            for (pin, bit), ff in zip(used, ffs):
                conn[pin] = [ff["connections"]["Q"][0]]
                orphans.add(bit)
            for _, bit in used:
                del cells[sinks[bit][0][0]]
            for rm in regmodes:
                ram["parameters"][rm] = "OUTREG"
            for p in ("A", "B") if len(regmodes) == 2 else (port,):
                conn[f"OCE{p}"] = [ce]
            ram.setdefault("port_directions", {}).update({f"OCE{p}": "input" for p in "AB" if f"OCE{p}" in conn})
            ports += 1
            removed += len(used)
    for net in list(top.get("netnames", {})):
        bits = top["netnames"][net].get("bits", [])
        if bits and all(b in orphans for b in bits):
            del top["netnames"][net]
        elif any(b in orphans for b in bits):
            top["netnames"][net]["bits"] = ["x" if b in orphans else b for b in bits]
    return {"ports": ports, "flip_flops": removed, "skipped": dict(sorted(skipped.items()))}


def _clock_enable(ff: dict):
    """The flip-flop's clock enable as a net bit or "1" (None when it is inverted or tied off)."""
    mux = _param(ff, "CEMUX", "1")
    if mux == "1":
        return "1"
    if mux == "CE":
        return ff.get("connections", {}).get("CE", ["1"])[0]
    return None


def _why_not(ram: dict, port: str, regmodes, used, cells: dict, sinks) -> str | None:
    """Why this read port's flip-flops cannot become its output register (None: they can)."""
    conn = ram["connections"]
    if any(_param(ram, rm, "NOREG") != "NOREG" for rm in regmodes):
        return "output register already in use"
    if _param(ram, f"CLK{port}MUX", f"CLK{port}") != f"CLK{port}":
        return "inverted block RAM clock"
    if conn.get(f"RST{port}", ["0"])[0] != "0" or (len(regmodes) == 2 and conn.get("RSTA", ["0"])[0] != "0"):
        return "block RAM port reset in use"
    clk = conn.get(f"CLK{port}", [None])[0]
    ce = None
    for _, bit in used:
        s = sinks[bit]
        if len(s) != 1 or s[0][0] == "<port>" or s[0][1] != "DI" or cells[s[0][0]].get("type") != FF:
            return "read data goes to logic"
        ff = cells[s[0][0]]
        fc = ff.get("connections", {})
        if fc.get("CLK", [None])[0] != clk or _param(ff, "CLKMUX", "CLK") != "CLK":
            return "register on another clock"
        if (fc.get("LSR", ["0"])[0] != "0" or _param(ff, "LSRMUX", "LSR") != "LSR"
                or _param(ff, "REGSET", "RESET") != "RESET"):
            return "register with set/reset"
        e = _clock_enable(ff)
        if e is None:
            return "register with an inverted clock enable"
        if ce is not None and e != ce:
            return "registers with different clock enables"
        ce = e
    return None


def _atomic_write_json(path: str, obj) -> None:
    """``obj`` as JSON to ``path`` through a temporary file and a rename, keeping an existing
    file's mode (artifact.files.atomic_write does the same; this script imports nothing of the
    package, so that it runs from the build tree on its own)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".outreg-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="outreg.py", description="Absorb ECP5 block RAM output flip-flops "
                                 "into the DP16KD output registers of a yosys JSON netlist (in place).")
    ap.add_argument("netlist", help="yosys JSON netlist (rewritten in place)")
    ap.add_argument("--report", help="also write the summary as JSON to this file")
    a = ap.parse_args(argv)
    try:
        with open(a.netlist) as f:
            netlist = json.load(f)
        summary = absorb_output_registers(netlist)
    except (OSError, ValueError) as e:                # NetlistError, JSONDecodeError
        print(f"outreg.py: error: {a.netlist}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    _atomic_write_json(a.netlist, netlist)
    if a.report:
        _atomic_write_json(a.report, summary)
    skipped = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items()) or "none"
    print(f"outreg.py: {summary['ports']} block RAM read ports take their output register "
          f"({summary['flip_flops']} flip-flops absorbed); left as they are: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
