"""Layer engines: a chain of stages streamed back to back.

* :class:`LayerEngine` - any chain of :class:`~hw.spec.StageSpec` stages: an input
  FIFO, then per stage an optional :class:`~hw.swg.SlidingWindowGenerator` (k x k,
  strided or padded stages; the stage's MVU reads its windows in place, ``SIMD``
  elements per fold) and a :class:`~hw.mvu.MatrixVectorUnit`, each with its own
  folding; every MVU ends in a small FIFO, which decouples the stages.
* :func:`tucker2_engine` - U1 (1x1) -> SWG -> G (k x k) -> U2 (1x1).
* :func:`dense_engine` - SWG -> one k x k MVU: the baseline at the same budget.
* :func:`build_engine` - the engine for an artifact layer and a multiplier budget.

Stream contract (both ports): one beat = one pixel with all channels, pixels in
raster order, frames back to back; channel ``c`` at payload bits
``[c*bits, (c+1)*bits)``, two's complement when signed. Synchronous reset returns
the engine to the start of a frame (mid-frame reset is allowed).
"""
from __future__ import annotations

from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .mvu import MatrixVectorUnit, refill_cycles
from .planner import Plan, flat_elements, plan_folding
from .spec import HwError, StageSpec, layer_stages
from .swg import SlidingWindowGenerator

__all__ = ["LayerEngine", "check_engine", "keeps_rate", "tucker2_engine", "dense_engine", "build_engine", "INPUT_FIFO_DEPTH"]

#: Depth of the input FIFO (registers the input and sustains one pixel per cycle).
INPUT_FIFO_DEPTH = 4


class _StreamFIFO(wiring.Component):
    """SyncFIFOBuffered with stream ports (``r_data`` is a register: payload is stable)."""

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"i": In(stream.Signature(unsigned(width))), "o": Out(stream.Signature(unsigned(width)))})

    def elaborate(self, platform):
        m = Module()
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=self.width, depth=self.depth)
        m.d.comb += [fifo.w_data.eq(self.i.payload), fifo.w_en.eq(self.i.valid), self.i.ready.eq(fifo.w_rdy),
                     self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.o.ready)]
        return m


def keeps_rate(consumer: StageSpec, fold, nf: int, rate: int) -> bool:
    """Whether ``consumer`` (a stage with folding ``fold``) keeps ``rate`` cycles per frame
    behind a producer of ``nf`` groups per pixel without the hold buffer: a window
    generator copies each pixel in one cycle, so its producer refills while it works; a
    1x1 stage reads the pixel in place and then waits :func:`hw.mvu.refill_cycles` for
    the next one."""
    if consumer.needs_window:
        return consumer.height * consumer.width * (refill_cycles(nf, False) + 1) <= rate
    return fold.cycles_per_frame + consumer.height * consumer.width * refill_cycles(nf, False) <= rate


def check_engine(stages: list[StageSpec], plan: Plan, line_rows: int | None = None) -> None:
    """Raise HwError if :class:`LayerEngine` cannot be built from these arguments
    (call it first to fail without creating any Amaranth object)."""
    if len(plan.stages) != len(stages):
        raise HwError(f"plan has {len(plan.stages)} stage foldings for {len(stages)} stages")
    for spec, f in zip(stages, plan.stages):
        if spec.needs_window:
            SlidingWindowGenerator.check(spec.height, spec.width, spec.kernel, spec.stride, spec.padding, line_rows,
                                         channels=spec.in_ch, simd=f.simd, elements=flat_elements(spec, f.flat))


class LayerEngine(wiring.Component):
    """A layer as a chain of folded stages.

    Parameters
    ----------
    stages : list[StageSpec]
        Stages in stream order; each stage's input pixel is the previous one's output.
    plan : Plan
        Folding of every stage (from :func:`hw.planner.plan_folding`).
    line_rows : int or None
        Line buffers per sliding-window generator (default :func:`hw.swg.default_rows`).
    input_fifo : bool
        Start with an input FIFO of :data:`INPUT_FIFO_DEPTH` pixels (a layer on its own,
        fed from outside). Without it (a layer inside a network, whose producers all hold
        a registered payload) the first unit reads ``pix_in`` in place.
    rate : int or None
        The cycles per frame the engine must keep (default: its slowest stage's). A stage
        whose consumer, the next stage, keeps it with the output register refilling after
        each pixel (:func:`hw.mvu.refill_cycles`) is built without the hold buffer.
    hold_last : bool
        Build the last stage with the hold buffer (its consumer is outside the engine).
    soft_stages : set of str
        Stages (by name) whose products are built in logic, not DSPs (:func:`hw.dsp.soft_stages`).

    Members
    -------
    pix_in : In(stream.Signature(unsigned(stages[0].in_ch * stages[0].in_bits)))
    pix_out : Out(stream.Signature(unsigned(stages[-1].out_ch * stages[-1].out_bits)))
    """

    def __init__(self, stages: list[StageSpec], plan: Plan, line_rows: int | None = None, input_fifo: bool = True,
                 rate: int | None = None, hold_last: bool = True, soft_stages=frozenset()):
        check_engine(stages, plan, line_rows)
        self.stages, self.plan, self.line_rows = list(stages), plan, line_rows
        # Build the sub-units now so that their parameters (FIFO depths, buffer sizes) can be reported.
        self.input_fifo = _StreamFIFO(stages[0].in_pixel_bits, INPUT_FIFO_DEPTH) if input_fifo else None
        rate = max(f.cycles_per_frame for f in plan.stages) if rate is None else rate
        self.units = []
        for i, (spec, f) in enumerate(zip(stages, plan.stages)):
            hold = hold_last if i == len(stages) - 1 else \
                not keeps_rate(stages[i + 1], plan.stages[i + 1], f.nf, rate)
            swg = None
            if spec.needs_window:
                swg = SlidingWindowGenerator(spec.in_ch, spec.height, spec.width, spec.in_bits, spec.kernel,
                                             spec.stride, spec.padding, rows=line_rows, simd=f.simd,
                                             signed=spec.in_signed, elements=flat_elements(spec, f.flat))
            self.units.append((swg, MatrixVectorUnit(spec, f.pe, f.simd, window=swg is not None, hold_buffer=hold,
                                                     flat=f.flat, soft=spec.name in soft_stages)))
        super().__init__({
            "pix_in": In(stream.Signature(unsigned(stages[0].in_pixel_bits))),
            "pix_out": Out(stream.Signature(unsigned(stages[-1].out_pixel_bits))),
        })

    def describe(self) -> list[dict]:
        """Per-stage hardware parameters: folding, widths, buffer sizes."""
        out = []
        for spec, f, (swg, mvu) in zip(self.stages, self.plan.stages, self.units):
            out.append({
                "name": spec.name, "kernel": spec.kernel, "stride": spec.stride, "padding": spec.padding,
                "in_shape": [spec.in_ch, spec.height, spec.width],
                "out_shape": [spec.out_ch, spec.out_height, spec.out_width],
                "in_bits": spec.in_bits, "in_signed": spec.in_signed, "weight_bits": spec.weight_bits,
                "out_bits": spec.out_bits, "out_signed": spec.out_signed,
                "pe": f.pe, "simd": f.simd, "nf": f.nf, "sf": f.sf, "flat": f.flat, "multipliers": f.multipliers,
                "soft_products": mvu.soft,
                "cycles_per_vector": f.cycles_per_vector, "cycles_per_frame": f.cycles_per_frame, "macs": f.macs,
                "acc_bits": spec.acc_bits, "adder_tree_bits": spec.tree_bits,
                "requant": (None if spec.requant is None else
                            {"shift": spec.requant[0], "clamp": [spec.requant[1], spec.requant[2]]}),
                "has_bias": spec.bias is not None,
                "weight_rom_bits": spec.out_ch * spec.in_elems * spec.weight_bits,
                "output_fifo_depth": mvu.fifo_depth,
                "line_buffer": (None if swg is None else
                                {"rows": swg.rows, "width": swg.width, "pixel_bits": spec.in_pixel_bits,
                                 "bits": swg.buffer_bits, "read_ports": swg.read_ports, "words_per_window": swg.words,
                                 "shift_ways": swg.shift_ways}),
            })
        return out

    def resources(self, part) -> dict:
        """Estimated resources (:mod:`hw.resources`) on ``part`` per sub-unit, named as the
        submodules: ``{"input_fifo": ... (if built), "<stage>_swg": ..., "<stage>_mvu": ...}``.
        Modelled as built for the part's platform (hw/dsp.py's DSP registers, hw/mvu.py's
        block-RAM ROMs on ECP5)."""
        from . import resources
        per = {} if self.input_fifo is None else \
            {"input_fifo": resources.fifo(self.input_fifo.width, self.input_fifo.depth, part)}
        for spec, (swg, mvu) in zip(self.stages, self.units):
            rq = spec.requant
            # the distinct bit columns of a ROM small enough for soft logic (rom_columns)
            rom_w, bias_w = mvu.rom_width, mvu.pe * spec.acc_bits
            wcols = resources.rom_columns(mvu.weight_words(), rom_w) \
                if rom_w * mvu.cycles_per_vector < 4096 else None
            bcols = resources.rom_columns(mvu.bias_words(), bias_w) \
                if spec.bias is not None and bias_w * mvu.nf < 4096 and not mvu.flat else None
            if swg is not None:
                per[f"{spec.name}_swg"] = resources.swg(spec.in_ch, spec.in_bits, spec.width, spec.kernel,
                                                        spec.stride, swg.rows, part, height=spec.height,
                                                        padding=spec.padding, simd=swg.simd, elements=swg.elements)
            per[f"{spec.name}_mvu"] = resources.mvu(
                mvu.pe, mvu.simd, mvu.nf, mvu.sf, spec.in_bits, spec.weight_bits, spec.acc_bits, spec.out_ch,
                spec.out_bits, spec.bias is not None, rq is not None, mvu.fifo_depth, part, in_signed=spec.in_signed,
                tree_bits=spec.tree_bits, shift=rq[0] if rq is not None else None,
                clamp=rq[1:] if rq is not None else None, weight_columns=wcols, bias_columns=bcols,
                window=swg is not None, hold_buffer=mvu.hold_buffer, flat=mvu.flat, soft=mvu.soft)
        return per

    def elaborate(self, platform):
        m = Module()
        if self.input_fifo is not None:
            m.submodules.input_fifo = self.input_fifo
            wiring.connect(m, wiring.flipped(self.pix_in), self.input_fifo.i)
            src = self.input_fifo.o
        else:
            src = wiring.flipped(self.pix_in)
        for i, (swg, mvu) in enumerate(self.units):
            name = self.stages[i].name
            if swg is not None:
                m.submodules[f"{name}_swg"] = swg
                wiring.connect(m, src, swg.pix_in)
                wiring.connect(m, swg.rd, mvu.win)
                src = swg.win_out
            m.submodules[f"{name}_mvu"] = mvu
            wiring.connect(m, src, mvu.vec_in)
            src = mvu.pix_out
        wiring.connect(m, src, wiring.flipped(self.pix_out))
        return m


def tucker2_engine(stages: list[StageSpec], multipliers: int | None = None, **kw) -> LayerEngine:
    """U1 -> G -> U2 engine with a planner-chosen folding."""
    if len(stages) != 3:
        raise HwError(f"a Tucker-2 engine needs 3 stages (U1, G, U2), got {len(stages)}")
    plan = plan_folding(stages, multipliers)
    check_engine(stages, plan, kw.get("line_rows"))
    return LayerEngine(stages, plan, **kw)


def dense_engine(stage: StageSpec, multipliers: int | None = None, **kw) -> LayerEngine:
    """Dense-conv baseline: sliding window + one folded MVU, planner-chosen folding."""
    plan = plan_folding([stage], multipliers)
    check_engine([stage], plan, kw.get("line_rows"))
    return LayerEngine([stage], plan, **kw)


def build_engine(artifact, layer_name: str, multipliers: int | None = None, *,
                 min_utilisation: float | None = None, **kw) -> LayerEngine:
    """The engine of one artifact layer (tucker2, lowrank, conv or linear) for a budget
    (see :func:`hw.planner.plan_folding`)."""
    stages = layer_stages(artifact, layer_name)
    plan = plan_folding(stages, multipliers, min_utilisation=min_utilisation)
    check_engine(stages, plan, kw.get("line_rows"))
    return LayerEngine(stages, plan, **kw)
