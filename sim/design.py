"""The generated design as the testbench sees it: sources, top module, ports, timing.

:func:`normalize` turns the JSON description written by ``hw.generate`` into one flat
dict (the *design record*) that the runner passes to the testbench::

    {"top": str, "sources": [verilog paths], "clk": "clk", "rst": "rst",
     "input":  {"valid": name, "ready": name, "payload": name, "width": int},
     "output": {"valid": name, "ready": name, "payload": name, "width": int},
     "expected_cycles": int | None, "multipliers": int | None, "folding": ... | None,
     "description": the original dict}

It accepts the few spellings a description may reasonably use (``in``/``input``,
``ports.input.valid`` or ``ports.i_valid`` ...), so a rename in hw/ fails with a
message naming the missing field rather than a KeyError deep in a simulation.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DesignError", "normalize", "load_description"]


class DesignError(ValueError):
    """The hardware description lacks something the testbench needs (one-line message)."""


def _first(d: dict, *keys, default=None):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return default


def _stream(desc: dict, ports: dict, which: str) -> dict:
    aliases = {"input": ("input", "in", "i", "sink", "s_axis", "stream_in"),
               "output": ("output", "out", "o", "source", "m_axis", "stream_out")}[which]
    rec = _first(ports, *aliases) or _first(desc, *[a + "_stream" for a in aliases], *aliases)
    out = {}
    for sig in ("valid", "ready", "payload"):
        name = None
        if isinstance(rec, dict):
            name = _first(rec, sig, sig[0] if sig != "payload" else "data", "data" if sig == "payload" else sig)
        if name is None:
            name = _first(ports, *[f"{a}_{sig}" for a in aliases], *[f"{a}__{sig}" for a in aliases])
        if name is None:
            raise DesignError(f"hardware description has no {which} stream '{sig}' port name "
                              f"(looked in ports.{which}.{sig} and ports.{which}_{sig}); regenerate with hw.generate")
        out[sig] = name
    width = None
    if isinstance(rec, dict):
        width = _first(rec, "width", "payload_width", "bits")
    if width is None:
        width = _first(desc, f"{which}_width", f"{which}_payload_width")
    out["width"] = int(width) if width is not None else None
    return out


def normalize(desc: dict, base: Path | None = None) -> dict:
    """Design record (see module doc) from a ``hw.generate`` description dict."""
    base = Path(base) if base is not None else Path(".")
    ports = _first(desc, "ports", default={}) or {}
    top = _first(desc, "top", "top_module", "module", "toplevel")
    if not top:
        raise DesignError("hardware description has no top module name ('top'); regenerate with hw.generate")
    srcs = _first(desc, "verilog", "sources", "files", "verilog_files")
    if srcs is None:
        raise DesignError("hardware description names no Verilog file ('verilog'); regenerate with hw.generate")
    if isinstance(srcs, (str, Path)):
        srcs = [srcs]
    sources = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in srcs]
    for s in sources:
        if not Path(s).is_file():
            raise DesignError(f"Verilog file {s} named by the hardware description does not exist")
    timing = _first(desc, "timing", "performance", default={}) or {}
    expected = _first(desc, "cycles_per_frame", "expected_cycles_per_frame", "expected_cycles") or \
        _first(timing, "cycles_per_frame", "expected_cycles_per_frame", "expected_cycles")
    return {
        "top": top,
        "sources": sources,
        "clk": _first(ports, "clk", "clock", default="clk"),
        "rst": _first(ports, "rst", "reset", default="rst"),
        "input": _stream(desc, ports, "input"),
        "output": _stream(desc, ports, "output"),
        "expected_cycles": int(expected) if expected is not None else None,
        "multipliers": _multipliers(desc),
        "folding": _first(desc, "folding"),
        "payload": _first(desc, "payload"),
        "stages": _internal_streams(desc),
        "description": desc,
    }


def _multipliers(desc: dict):
    m = _first(desc, "multipliers", "total_multipliers")
    if isinstance(m, dict):
        m = _first(m, "used", "multipliers", "budget")
    return int(m) if m is not None else None


def _internal_streams(desc: dict) -> list[dict]:
    """Where each stage's output stream can be watched inside the engine.

    ``hw.engine.LayerEngine`` instantiates stage ``s`` as submodule ``<s>_mvu`` (after
    ``<s>_swg`` for k x k stages), and Amaranth keeps that hierarchy in the Verilog.
    A stage's output pixels (same beat format as the engine ports) are seen on its
    own ``pix_out`` or, equivalently, on the next unit's input (``<next>_swg.pix_in``
    or ``<next>_mvu.vec_in`` for a 1x1 stage). Every candidate is listed; the
    testbench uses the first whose three handles exist and fails when none does.
    The last stage is the engine output, checked anyway.
    """
    layer = _first(desc, "layer", default={}) or {}
    names = [n if isinstance(n, str) else n.get("name") for n in (_first(layer, "stages", default=[]) or [])]
    out = []
    for i, n in enumerate(names[:-1]):
        nxt = names[i + 1]
        cands = [[f"{n}_mvu.pix_out__{s}" for s in ("valid", "ready", "payload")],
                 [f"{nxt}_swg.pix_in__{s}" for s in ("valid", "ready", "payload")],
                 [f"{nxt}_mvu.vec_in__{s}" for s in ("valid", "ready", "payload")]]
        out.append({"stage": n, "candidates": cands})
    return out


def load_description(path) -> dict:
    """Read a description JSON file and normalize it (paths relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise DesignError(f"hardware description {path} does not exist; generate it with `python -m hw.generate`")
    return normalize(json.loads(path.read_text()), base=path.parent)
