"""The whole network (or a contiguous segment of it) as one streaming dataflow engine.

One hardware unit per artifact layer, FINN style, all running concurrently, pixels
streaming between them (design.md section 4a):

* ``conv``, ``tucker2``, ``lowrank``, ``linear``: a :class:`~hw.engine.LayerEngine`
  (sliding-window generator + folded matrix-vector unit per stage);
* ``requant``, ``add``, ``global_sum_pool``, ``maxpool``: the units of :mod:`hw.units`;
* a tensor read by several layers goes through a :class:`~hw.units.Fork`; the input of
  an ``add`` whose branch runs ahead of the other gets a skip FIFO
  (:class:`~hw.units.PixelFIFO`) sized by :func:`skip_depths`.

How each op lowers is registered in the op table (:func:`artifact.ops.register_lowering`
with back end ``"hw"``), beside the golden and hls4ml lowerings. Every unit and stream
has the artifact's hierarchical name (``layer1.0.conv1``, its stages ``layer1.0.conv1.u1``
...); RTL instance names are those names with ``.`` replaced by ``__``.

Stream contract of the engine: ``pix_in`` is the segment's input tensor, ``pix_out`` its
output (for the whole network the classifier's logits, one beat per frame), both typed
pixel streams (:func:`hw.units.pixel_signature`), frames back to back. A synchronous
reset returns every unit to the start of a frame.

Throughput: the units run concurrently, so a frame takes the slowest unit's cycles
(:attr:`NetworkPlan.cycles_per_frame`); the MAC stages share one multiplier budget,
balanced by :func:`plan_network`.
"""
from __future__ import annotations

import abc
import bisect
import math
from dataclasses import dataclass, field

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from artifact import ArtifactError
from artifact.ops import lowering, register_lowering

from . import resources
from .dsp import soft_stages
from .engine import LayerEngine, check_engine, keeps_rate
from .mvu import mvu_latency, refill_cycles
from .planner import StageFold, _preference, fixed_folding, stage_options
from .resources import Resources
from .spec import HwError, StageSpec, layer_stages
from .swg import WINDOW_READ_LATENCY
from .units import (OP_CREDIT_LOOP, OP_FIFO_DEPTH, OP_FIFO_DEPTHS, OP_LATENCY, AddUnit, Fork, GlobalSumPoolUnit, MaxPoolUnit, PixelFIFO, RawStreamAdapter,
                    RequantUnit, SERIAL_LATENCY, connect_pixels, credited_fifo_depth, op_cycles, serial_groups, serial_period, signature_of)

__all__ = ["DEFAULT_NETWORK_MULTIPLIERS", "SKIP_MARGIN", "select_layers", "NetworkPlan", "plan_network",
           "skip_depths", "NetworkEngine", "rtl_name"]

#: Network budget when none is given (design.md 4a: 128 multipliers at 150 MHz on an ECP5-85F).
DEFAULT_NETWORK_MULTIPLIERS = 128
#: Skip-FIFO slots beyond the branch lead of :func:`skip_depths` (the fork's and the
#: add's own hand-over registers).
SKIP_MARGIN = 2


def rtl_name(name: str) -> str:
    """RTL instance name of a unit: the hierarchical name with ``.`` -> ``__``."""
    return name.replace(".", "__").replace("-", "_")


# ----------------------------------------------------------------------------- the graph

def select_layers(artifact, first: str | None = None, last: str | None = None) -> tuple[list[dict], str, dict]:
    """The layers of the segment ``first..last`` (default: the whole network, up to the
    manifest's ``output``), the name of the tensor that feeds it and that tensor's record.

    HwError (one line) when a name is unknown, ``last`` precedes ``first``, or the cut is
    not a segment with one input and one output: a layer inside reads a tensor from
    before ``first`` other than the segment's input, or a tensor made inside is read
    after ``last`` (a skip edge crosses the cut).
    """
    layers = artifact.manifest["layers"]
    names = [l["name"] for l in layers]
    first = first or names[0]
    last = last or artifact.manifest["output"]
    for what, n in (("first", first), ("last", last)):
        if n not in names:
            raise HwError(f"segment {what} layer {n!r} is not in the artifact (layers: {', '.join(names)})")
    i, j = names.index(first), names.index(last)
    if j < i:
        raise HwError(f"segment {first}:{last} is empty: {last!r} comes before {first!r} in the artifact")
    seg = layers[i:j + 1]
    inside = {l["name"] for l in seg}
    entry = seg[0]["inputs"][0]
    for l in seg:
        for t in l["inputs"]:
            if t not in inside and t != entry:
                raise HwError(f"segment {first}:{last} is not contiguous: {l['name']!r} reads {t!r} from before "
                              f"the segment (a skip edge crosses the cut); start the segment at or before it")
    for l in layers[j + 1:]:
        for t in l["inputs"]:
            if t in inside and t != last:
                raise HwError(f"segment {first}:{last} is not contiguous: {l['name']!r} after the segment reads "
                              f"{t!r} from inside it (a skip edge crosses the cut); end the segment at or after it")
    record = artifact.manifest["input"] if entry == "input" else artifact.layer(entry)["out"]
    return seg, entry, record


def _records(seg: list[dict], entry: str, entry_record: dict) -> dict:
    """Tensor name -> tensor record, for the segment's input (first) and every layer's output."""
    recs = {entry: entry_record}
    recs.update({l["name"]: l["out"] for l in seg})
    return recs


# ----------------------------------------------------------------------------- lowerings

class _Lowering(abc.ABC):
    """How an op lowers to hardware. ``stages`` gives its MAC stages (planned together for
    the network's budget), ``build`` its unit (a Component with In ports named by
    ``in_ports`` and an Out port ``o``), ``cycles`` its cycles per frame, ``ready_table``
    the availability of its output (see :func:`skip_depths`)."""

    in_ports = ("i",)
    #: output FIFO depths the unit can be built with (:data:`hw.units.OP_FIFO_DEPTHS`; the
    #: planner picks the smallest that keeps the network's rate); empty: none to choose
    fifo_depths: tuple = ()
    #: whether the unit can be built serial (``lanes`` requantizers, see :mod:`hw.units`;
    #: the planner picks the fewest lanes that keep the network's rate)
    serial = False

    def stages(self, artifact, layer: dict) -> list[StageSpec]:
        return []

    @abc.abstractmethod
    def build(self, layer: dict, operands: list[dict], folds: list[StageFold], line_rows, specs,
              fifo_depth: int | None = None, rate: int | None = None, hold_last: bool = True,
              lanes: int | None = None, soft_stages=frozenset()):
        """The unit's component for ``layer`` (operand records, its stages' folds and specs,
        the output FIFO depth and the lanes the plan chose, if it chose them; for a layer
        engine the network's rate, whether its last stage keeps the hold buffer and which
        stages have their products in logic, see :class:`hw.engine.LayerEngine`)."""

    def cycles(self, layer: dict, folds: list[StageFold], fifo_depth: int | None = None,
               lanes: int | None = None, held: int = 0) -> int:
        """Cycles per frame: one pixel per cycle, or what ``fifo_depth`` credits pass with its
        consumers holding the output ``held`` cycles a frame (:func:`hw.units.op_cycles`), or
        a pixel per :func:`hw.units.serial_period`."""
        pixels = _stream_pixels(layer)
        if lanes is not None:
            return pixels * serial_period(_channels(layer), lanes)
        return pixels if fifo_depth is None else op_cycles(pixels, fifo_depth, held)

    def ready_table(self, layer: dict, specs: list[StageSpec]) -> np.ndarray:
        """``t[k]``: output pixels the unit can produce once it has ``k`` input pixels of a frame."""
        return np.arange(_pixels(layer["out"]) + 1)

    def held_cycles(self, layer: dict, folds, specs: list[StageSpec], pixels: int) -> int:
        """Cycles per frame the unit holds its producer's output register, ``pixels`` pixels
        a frame: an op unit takes a pixel within its credit loop (serial: its one-lane period)."""
        if self.serial:
            return pixels * max(OP_CREDIT_LOOP, serial_period(_channels(layer), 1))
        return pixels * OP_CREDIT_LOOP

    def latency(self, layer: dict, folds: list[StageFold], specs: list[StageSpec], lanes: int | None = None) -> int:
        """Cycles from a pixel entering the unit to the output it completes leaving it, with
        the unit otherwise idle: operand register, requantizer, output FIFO (serial: the
        groups, then the last one's operand register and requantizer)."""
        if lanes is not None:
            return serial_groups(_channels(layer), lanes) + SERIAL_LATENCY + 2
        return OP_LATENCY + 2

    def resources(self, layer: dict, component, part) -> Resources:
        """Estimated resources of the unit on ``part`` (:mod:`hw.resources`)."""
        out = layer["out"]
        rq = layer["requant"]
        width = int(out["shape"][0]) * int(out["bits"])
        body = resources.elementwise(int(out["shape"][0]), int(layer["in"]["bits"]), int(out["bits"]),
                                     shift=int(rq["shift"]), clamp=_clamp(layer),
                                     in_signed=bool(layer["in"]["signed"]), lanes=component.lanes)
        return body if component.lanes else body + resources.fifo(width, credited_fifo_depth(component.fifo_depth), part)


def _clamp(layer: dict) -> tuple[int, int]:
    """The layer's requantizer clamp ``(lo, hi)`` as ints."""
    lo, hi = layer["requant"]["clamp"]
    return int(lo), int(hi)


def _channels(layer: dict) -> int:
    return int(layer["out"]["shape"][0])


def _pixels(record: dict) -> int:
    shape = record["shape"]
    return int(shape[1]) * int(shape[2]) if len(shape) == 3 else 1


def _stream_pixels(layer: dict) -> int:
    """Pixels per frame through an op unit: its input's (a pool's output is one beat)."""
    return _pixels(layer["in"] if "in" in layer else layer["out"])


def _window_table(h: int, w: int, kernel: int, stride: int, padding: int, oh: int, ow: int) -> np.ndarray:
    """Availability of a sliding window's outputs: window ``(oy, ox)`` needs input pixel
    ``(min(oy*S-P+K-1, H-1), min(ox*S-P+K-1, W-1))`` and the frame's last window needs the
    whole frame (:mod:`hw.swg`); windows leave in raster order."""
    need = np.empty(oh * ow, dtype=np.int64)
    for oy in range(oh):
        r = min(oy * stride - padding + kernel - 1, h - 1)
        for ox in range(ow):
            need[oy * ow + ox] = r * w + min(ox * stride - padding + kernel - 1, w - 1)
    need[-1] = h * w - 1
    need = np.maximum.accumulate(need)              # in order: a window waits for the ones before it
    # outputs available with k inputs = number of windows whose need index < k
    return np.searchsorted(need, np.arange(h * w + 1), side="left").astype(np.int64)


class _MacLowering(_Lowering):
    """``conv``, ``tucker2``, ``lowrank``, ``linear``: a layer engine of its stages."""

    def stages(self, artifact, layer):
        return layer_stages(artifact, layer["name"])

    def build(self, layer, operands, folds, line_rows, specs, fifo_depth=None, rate=None, hold_last=True,
              lanes=None, soft_stages=frozenset()):
        plan = fixed_folding(specs, [f.key for f in folds])
        check_engine(specs, plan, line_rows)
        engine = LayerEngine(specs, plan, line_rows=line_rows, input_fifo=False, rate=rate, hold_last=hold_last,
                             soft_stages=soft_stages)
        return RawStreamAdapter(engine, signature_of(operands[0]), signature_of(layer["out"]))

    def cycles(self, layer, folds, fifo_depth=None, lanes=None, held=0):
        return max(f.cycles_per_frame for f in folds)

    def held_cycles(self, layer, folds, specs, pixels):
        # a window generator copies a pixel in a cycle; a 1x1 stage reads it in place for its
        # whole vector
        return pixels if specs[0].needs_window else folds[0].cycles_per_frame

    def latency(self, layer, folds, specs, lanes=None):
        # per stage (the engine has no input FIFO in a network): the window read, the
        # vector's folds, the MVU pipeline and its output buffer
        total = 0
        for spec, f in zip(specs, folds):
            total += (WINDOW_READ_LATENCY if spec.needs_window else 0) + f.period \
                + mvu_latency(f.simd, spec.requant is not None) + 2 + refill_cycles(f.nf, False)
        return total

    def resources(self, layer, component, part):
        return sum(component.inner.resources(part).values(), Resources())

    def ready_table(self, layer, specs):
        table = None
        for spec in specs:
            if spec.needs_window:
                t = _window_table(spec.height, spec.width, spec.kernel, spec.stride, spec.padding,
                                  spec.out_height, spec.out_width)
            else:
                t = np.arange(spec.vectors + 1)
            table = t if table is None else t[table]
        return table


class _RequantLowering(_Lowering):
    fifo_depths = OP_FIFO_DEPTHS
    serial = True

    def build(self, layer, operands, folds, line_rows, specs, fifo_depth=None, rate=None, hold_last=True,
              lanes=None, soft_stages=frozenset()):
        return RequantUnit(layer, fifo_depth or OP_FIFO_DEPTH, lanes)


class _AddLowering(_Lowering):
    in_ports = ("a", "b")
    fifo_depths = OP_FIFO_DEPTHS
    serial = True

    def resources(self, layer, component, part):
        out = layer["out"]
        ch, ob = int(out["shape"][0]), int(out["bits"])
        body = resources.elementwise(ch, max(r["bits"] for r in component.records), ob, inputs=2,
                                     acc_bits=int(layer["acc"]["bits"]), shift=int(layer["requant"]["shift"]),
                                     clamp=_clamp(layer), lanes=component.lanes)
        return body if component.lanes else body + resources.fifo(ch * ob, credited_fifo_depth(component.fifo_depth), part)

    def build(self, layer, operands, folds, line_rows, specs, fifo_depth=None, rate=None, hold_last=True,
              lanes=None, soft_stages=frozenset()):
        return AddUnit(layer, operands[0], operands[1], fifo_depth or OP_FIFO_DEPTH, lanes)


class _PoolLowering(_Lowering):
    # one result per frame: a credit is needed only for a frame's last pixel, so the pool
    # keeps one pixel per cycle with the output register alone (serial: a pixel per period)
    fifo_depths = (1,)
    serial = True

    def cycles(self, layer, folds, fifo_depth=None, lanes=None, held=0):
        return super().cycles(layer, folds, None, lanes)

    def resources(self, layer, component, part):
        out = layer["out"]
        ch, ob = int(out["shape"][0]), int(out["bits"])
        body = resources.accumulate(ch, int(layer["acc"]["bits"]), ob, shift=int(layer["requant"]["shift"]),
                                    pixels=_pixels(layer["in"]), clamp=_clamp(layer), lanes=component.lanes,
                                    in_bits=int(layer["in"]["bits"]))
        if component.lanes:
            return body
        return body + resources.fifo(ch * ob, credited_fifo_depth(component.fifo_depth), part)

    def build(self, layer, operands, folds, line_rows, specs, fifo_depth=None, rate=None, hold_last=True,
              lanes=None, soft_stages=frozenset()):
        return GlobalSumPoolUnit(layer, fifo_depth or OP_FIFO_DEPTH, lanes)

    def ready_table(self, layer, specs):
        n = _pixels(layer["in"])
        t = np.zeros(n + 1, dtype=np.int64)
        t[n] = 1
        return t


class _MaxPoolLowering(_Lowering):
    def resources(self, layer, component, part):
        c, h, w = (int(v) for v in layer["in"]["shape"])
        bits = int(layer["in"]["bits"])
        k = int(layer["kernel"])
        window = resources.swg(c, bits, w, k, int(layer["stride"]), component.swg.rows, part,
                               height=h, padding=int(layer["padding"]), simd=c)
        return window + resources.running_max(c, bits, k * k) + resources.fifo(c * bits, OP_FIFO_DEPTH, part)

    def build(self, layer, operands, folds, line_rows, specs, fifo_depth=None, rate=None, hold_last=True,
              lanes=None, soft_stages=frozenset()):
        return MaxPoolUnit(layer, line_rows)

    def cycles(self, layer, folds, fifo_depth=None, lanes=None, held=0):
        return max(_pixels(layer["in"]), _pixels(layer["out"]) * int(layer["kernel"]) ** 2)

    def held_cycles(self, layer, folds, specs, pixels):
        return pixels                   # its window generator copies a pixel in a cycle

    def ready_table(self, layer, specs):
        c, h, w = layer["in"]["shape"]
        _, oh, ow = layer["out"]["shape"]
        return _window_table(h, w, int(layer["kernel"]), int(layer["stride"]), int(layer["padding"]), oh, ow)


for _op in ("conv", "tucker2", "lowrank", "linear"):
    register_lowering("hw", _op)(_MacLowering())
register_lowering("hw", "requant")(_RequantLowering())
register_lowering("hw", "add")(_AddLowering())
register_lowering("hw", "global_sum_pool")(_PoolLowering())
register_lowering("hw", "maxpool")(_MaxPoolLowering())


def _lowering(layer: dict) -> _Lowering:
    try:
        return lowering("hw", layer["op"])
    except ArtifactError as e:
        raise HwError(f"layer {layer['name']!r}: {e}") from None


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class NetworkPlan:
    """The folding of every MAC stage of a network for one multiplier budget.

    ``folds`` maps a layer name to its stages' foldings (in stream order), ``specs`` to
    its stages (:class:`~hw.spec.StageSpec`; empty for op units); ``unit_cycles`` maps
    every unit (MAC layers and op units) to its cycles per frame; ``fifo_depths`` maps an
    op unit to the output FIFO depth it is built with, ``op_lanes`` a serial op unit to its
    lanes (:mod:`hw.units`); ``soft_stages`` holds the ``(layer, stage)`` names of the MAC
    stages whose products are built in logic because the part has fewer DSPs than the plan
    has multipliers (:func:`hw.dsp.soft_stages`).
    """

    budget: int
    folds: dict
    specs: dict = field(repr=False, compare=False)
    unit_cycles: dict
    macs: int
    fifo_depths: dict = field(default_factory=dict)
    op_lanes: dict = field(default_factory=dict)
    soft_stages: frozenset = field(default_factory=frozenset)

    @property
    def multipliers(self) -> int:
        return sum(f.multipliers for fs in self.folds.values() for f in fs)

    @property
    def soft_multipliers(self) -> int:
        """Products built in logic (the stages of ``soft_stages``); the rest are DSPs."""
        return sum(f.multipliers for name, fs in self.folds.items() for f in fs if (name, f.stage) in self.soft_stages)

    @property
    def cycles_per_frame(self) -> int:
        """Expected steady-state cycles per frame: the slowest unit's."""
        return max(self.unit_cycles.values())

    @property
    def bottleneck(self) -> str:
        return max(self.unit_cycles, key=self.unit_cycles.get)

    @property
    def ideal_cycles(self) -> float:
        """Total MACs / multipliers used."""
        return self.macs / self.multipliers if self.multipliers else 0.0

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles_per_frame

    def as_dict(self) -> dict:
        return {"budget": self.budget, "multipliers": self.multipliers, "soft_multipliers": self.soft_multipliers,
                "macs": self.macs, "cycles_per_frame": self.cycles_per_frame, "ideal_cycles": self.ideal_cycles,
                "utilisation": self.utilisation, "bottleneck": self.bottleneck}


def _balanced(options: list[list[StageFold]], budget: int) -> list[StageFold]:
    """The fastest choice of one fold per stage within ``budget`` multipliers: the smallest
    cycle target that every stage meets with the cheapest fold that meets it. (The
    multipliers needed fall as the target rises, so the target is found by bisection.)"""
    targets = sorted({f.cycles_per_frame for opts in options for f in opts})

    def choose(target):
        chosen = []
        for opts in options:
            fits = [f for f in opts if f.cycles_per_frame <= target]
            if not fits:
                return None
            chosen.append(min(fits, key=_preference))
        return chosen

    def fits(i):
        c = choose(targets[i])
        return c is not None and sum(f.multipliers for f in c) <= budget

    i = bisect.bisect_left(range(len(targets)), True, key=fits)
    return choose(targets[i])


def plan_network(artifact, layers: list[dict], multipliers: int | None = None, *,
                 dsps: int | None = None) -> NetworkPlan:
    """Balance one multiplier budget (default :data:`DEFAULT_NETWORK_MULTIPLIERS`) over every
    MAC stage of ``layers`` so that no unit throttles the rest. ``dsps``: the DSP multipliers
    the part has (None: as many as needed); the products beyond them are built in logic,
    whole stages at a time (:attr:`NetworkPlan.soft_stages`), so a budget may exceed the
    part's DSPs at the cost of LUTs.

    HwError (one line) if a layer has no hardware lowering or an unsupported geometry,
    the budget is below one multiplier per MAC stage, or ``dsps`` is not a non-negative integer.
    """
    budget = DEFAULT_NETWORK_MULTIPLIERS if multipliers is None else multipliers
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise HwError(f"multiplier budget must be a positive integer, got {budget!r}")
    if dsps is not None and (isinstance(dsps, bool) or not isinstance(dsps, int) or dsps < 0):
        raise HwError(f"DSP count must be a non-negative integer, got {dsps!r}")
    specs = {}
    for layer in layers:
        low = _lowering(layer)
        specs[layer["name"]] = low.stages(artifact, layer)
    n_stages = sum(len(s) for s in specs.values())
    if budget < n_stages:
        raise HwError(f"multiplier budget {budget} is too small: the network has {n_stages} MAC stages and each "
                      f"needs at least one multiplier; give at least {n_stages}")
    flat = [s for ss in specs.values() for s in ss]
    chosen = iter(_balanced([stage_options(s) for s in flat], budget)) if flat else iter(())
    folds, cycles = {}, {}
    for layer in layers:
        name = layer["name"]
        folds[name] = tuple(next(chosen) for _ in specs[name])
        cycles[name] = _lowering(layer).cycles(layer, folds[name])
    # an op unit's output FIFO: the shallowest that does not slow the network below the rate
    # its slowest unit sets at full depth, its consumers' holding of the output counted
    rate = max(cycles.values())
    depths = {}
    for layer in layers:
        low, name = _lowering(layer), layer["name"]
        if low.fifo_depths:
            held = _held_by_consumers(layer, layers, folds, specs)
            depths[name] = next((d for d in low.fifo_depths if low.cycles(layer, (), d, held=held) <= rate),
                                low.fifo_depths[-1])
            cycles[name] = low.cycles(layer, (), depths[name], held=held)
    lanes = {}
    for layer in layers:
        low, name = _lowering(layer), layer["name"]
        if low.serial:
            chosen_lanes = _serial_lanes(layer, layers, folds, specs, rate)
            if chosen_lanes is not None:
                lanes[name], depths[name] = chosen_lanes, 1
                cycles[name] = low.cycles(layer, (), lanes=chosen_lanes)
    soft = frozenset() if dsps is None else \
        soft_stages({(name, f.stage): f.multipliers for name, fs in folds.items() for f in fs}, dsps)
    return NetworkPlan(budget, folds, specs, cycles, sum(s.macs for s in flat), depths, lanes, soft)


def _producer_refill(layer: dict, folds: dict) -> int:
    """The most cycles a producer of ``layer``'s inputs leaves its output register empty
    after a pixel leaves (a MAC layer's last stage without a hold buffer; 0 for others)."""
    return max((refill_cycles(folds[t][-1].nf, False) for t in layer["inputs"] if folds.get(t)), default=0)


def _consume_cycles(user: dict, folds: dict, specs: dict, pixels: int) -> int:
    """Cycles per frame that ``user`` holds a producer's output register (``pixels`` pixels a
    frame; :meth:`_Lowering.held_cycles`)."""
    name = user["name"]
    return _lowering(user).held_cycles(user, folds.get(name, ()), specs.get(name, []), pixels)


def _held_by_consumers(layer: dict, layers: list[dict], folds: dict, specs: dict) -> int:
    """The most cycles per frame one consumer of ``layer``'s output holds its output register."""
    pixels = _pixels(layer["out"])
    return max((_consume_cycles(u, folds, specs, pixels) for u in layers if layer["name"] in u["inputs"]), default=0)


def _serial_lanes(layer: dict, layers: list[dict], folds: dict, specs: dict, rate: int) -> int | None:
    """The fewest lanes (powers of two below the channels) with which a serial op unit
    keeps ``rate`` cycles per frame; None: none does (the unit stays one requantizer per
    channel). Its inputs: a pixel per period plus its producers' refill. Its output: it
    starts a pixel only once the last has left, so a consumer that holds the output register
    (a 1x1 stage reading it in place) adds its holding time to the unit's periods."""
    channels, pixels = _channels(layer), _stream_pixels(layer)
    refill = _producer_refill(layer, folds)
    held = _held_by_consumers(layer, layers, folds, specs)
    options = [1 << k for k in range(channels.bit_length()) if 1 << k < channels]
    for n in options:
        period = serial_period(channels, n)
        if pixels * (period + refill) <= rate and held + pixels * period <= rate:
            return n
    return None


# ----------------------------------------------------------------------------- skip FIFOs

def _branch(tensor: str, producer: dict, consumers: dict, entry: str) -> tuple[list[str], str]:
    """``(path, root)``: the layers from the nearest forked tensor ``root`` (read by more than
    one layer, or the segment's input) down to ``tensor``, in stream order."""
    path = []
    while tensor != entry and len(consumers[tensor]) < 2:
        layer = producer[tensor]
        if len(layer["inputs"]) != 1:
            raise HwError(f"{layer['name']!r}: a residual branch holds another join ({layer['op']}); nested "
                          f"residual branches are not supported by the network engine")
        path.append(tensor)
        tensor = layer["inputs"][0]
    return path[::-1], tensor


def skip_depths(layers: list[dict], records: dict, plan: NetworkPlan) -> dict:
    """Skip-FIFO depth (pixels) per ``(add layer, operand index)``: the deadlock bound plus
    what keeps the network at its planned rate.

    Both operands of an ``add`` come from one forked tensor ``X`` through branches of
    single-input units. With ``k`` pixels of ``X``'s frame delivered, branch ``i`` can
    produce ``r_i(k)`` pixels (the composition of its units' availability tables: a
    k x k window waits for its last input pixel, a pool for the whole frame). The add
    consumes pixels in pairs, so the branch that runs ahead must hold its *lead*
    ``max_k (r_i(k) - r_j(k))``: with fewer slots the fork stalls on it while the other
    branch waits for input, a deadlock. Bubbles and back-pressure only slow the units,
    never change what they can produce from a given input, so the lead bounds the
    deadlock-free depth under any input timing.

    At the planned rate a pixel reaches the add every ``P = cycles_per_frame / pixels``
    cycles, and the slower branch's pixels come ``L`` cycles after the faster one's
    (the difference of the branches' :meth:`_Lowering.latency` sums); the FIFO holds the
    ``ceil(L / P)`` pixels that arrive meanwhile, so the fork never waits on it.
    Depth = lead + ``ceil(L / P)`` + :data:`SKIP_MARGIN`. HwError (one line) for a join
    the engine cannot build (nested branches, operands from different forks).
    """
    entry = next(t for t in records if t not in {l["name"] for l in layers})
    producer = {l["name"]: l for l in layers}
    consumers: dict = {}
    for l in layers:
        for t in l["inputs"]:
            consumers.setdefault(t, []).append(l["name"])
    depths = {}
    for l in layers:
        if len(l["inputs"]) != 2:
            continue
        branches = [_branch(t, producer, consumers, entry) for t in l["inputs"]]
        roots = [root for _, root in branches]
        if roots[0] != roots[1]:
            raise HwError(f"{l['name']!r}: its operands come from {roots[0]!r} and {roots[1]!r}, not from one forked "
                          f"tensor; the network engine joins the branches of one fork only")
        tables, latency = [], []
        for path, root in branches:
            t, cycles = np.arange(_pixels(records[root]) + 1), 0
            for name in path:
                low, layer = _lowering(producer[name]), producer[name]
                t = low.ready_table(layer, plan.specs.get(name, []))[t]
                cycles += low.latency(layer, plan.folds.get(name, ()), plan.specs.get(name, []),
                                      plan.op_lanes.get(name))
            tables.append(t)
            latency.append(cycles)
        period = plan.cycles_per_frame / _pixels(l["out"])
        for i in (0, 1):
            lead = int(np.max(tables[i] - tables[1 - i]))
            wait = max(0, latency[1 - i] - latency[i])
            if lead > 0 or wait > 0:
                depths[(l["name"], i)] = lead + math.ceil(wait / period) + SKIP_MARGIN
    return depths


# ----------------------------------------------------------------------------- the engine

def _needs_hold(layer: dict, layers: list[dict], plan: NetworkPlan) -> bool:
    """Whether a MAC layer's last stage needs the hold buffer (:class:`hw.engine.LayerEngine`):
    unless every consumer of its output keeps the plan's rate behind an output register
    that refills after each pixel (a MAC layer by its first stage, :func:`hw.engine.keeps_rate`;
    an op unit or a skip FIFO copies a pixel within :data:`hw.units.OP_CREDIT_LOOP` cycles, a
    serial op unit within its :func:`hw.units.serial_period`)."""
    folds = plan.folds.get(layer["name"], ())
    if not folds or folds[-1].nf == 1:
        return True
    nf, rate = folds[-1].nf, plan.cycles_per_frame
    pixels = _pixels(layer["out"])
    for user in layers:
        if layer["name"] not in user["inputs"]:
            continue
        ufolds, uspecs = plan.folds.get(user["name"], ()), plan.specs.get(user["name"], [])
        if ufolds:
            if not keeps_rate(uspecs[0], ufolds[0], nf, rate):
                return True
        else:
            lanes = plan.op_lanes.get(user["name"])
            copy = OP_CREDIT_LOOP if lanes is None else max(OP_CREDIT_LOOP, serial_period(_channels(user), lanes))
            if pixels * (refill_cycles(nf, False) + copy) > rate:
                return True
    return False


@dataclass
class _Unit:
    name: str
    layer: dict
    component: object
    folds: tuple = field(default=())


class NetworkEngine(wiring.Component):
    """A network segment as one component.

    Parameters
    ----------
    artifact : artifact.Artifact
    plan : NetworkPlan
        From :func:`plan_network` for the same layers.
    first, last : str or None
        Segment bounds (default: the whole network), as :func:`select_layers`.
    line_rows : int or None
        Line buffers per sliding-window generator (default :func:`hw.swg.default_rows`).

    Members
    -------
    pix_in : In(pixel stream of the segment's input tensor)
    pix_out : Out(pixel stream of the segment's output tensor)

    After construction, ``units`` lists the layer units in order, ``forks`` the forks
    (by tensor name), ``skip_fifos`` the skip FIFOs (by ``(add, operand)``) and
    ``streams`` every inter-unit stream: name -> (producer unit, port, consumer unit, port).
    """

    def __init__(self, artifact, plan: NetworkPlan, first: str | None = None, last: str | None = None,
                 line_rows: int | None = None):
        seg, entry, entry_record = select_layers(artifact, first, last)
        if set(plan.folds) != {l["name"] for l in seg}:
            raise HwError("the network plan was made for other layers than this segment; plan it with plan_network")
        self.layers, self.entry, self.plan = seg, entry, plan
        records = _records(seg, entry, entry_record)
        self.records = records
        self.units = []
        for layer in seg:
            name = layer["name"]
            operands = [records[t] for t in layer["inputs"]]
            comp = _lowering(layer).build(layer, operands, list(plan.folds[name]), line_rows, plan.specs[name],
                                          plan.fifo_depths.get(name), rate=plan.cycles_per_frame,
                                          hold_last=_needs_hold(layer, seg, plan), lanes=plan.op_lanes.get(name),
                                          soft_stages={s for l, s in plan.soft_stages if l == name})
            self.units.append(_Unit(name, layer, comp, plan.folds[name]))
        self.skip_depth = skip_depths(seg, records, plan)
        consumers: dict = {}
        for u in self.units:
            for k, t in enumerate(u.layer["inputs"]):
                consumers.setdefault(t, []).append((u, _lowering(u.layer).in_ports[k]))
        self.forks = {t: Fork(signature_of(records[t]), len(c)) for t, c in consumers.items() if len(c) > 1}
        self.skip_fifos = {key: PixelFIFO(signature_of(records[self._operand(key)]), depth)
                           for key, depth in self.skip_depth.items()}
        self._consumers = consumers
        self.output = seg[-1]["name"]
        super().__init__({"pix_in": In(signature_of(entry_record)), "pix_out": Out(signature_of(records[self.output]))})

    def _operand(self, key) -> str:
        add, i = key
        return next(u for u in self.units if u.name == add).layer["inputs"][i]

    def unit(self, name: str) -> _Unit:
        return next(u for u in self.units if u.name == name)

    def elaborate(self, platform):
        m = Module()
        for u in self.units:
            m.submodules[rtl_name(u.name)] = u.component
        # the source of each tensor: the entry port or a unit's output, through a fork if shared
        sources = {self.entry: wiring.flipped(self.pix_in)}
        sources.update({u.name: u.component.o for u in self.units})
        taps: dict = {}
        for t, fork in self.forks.items():
            m.submodules[f"fork__{rtl_name(t)}"] = fork
            connect_pixels(m, sources[t], fork.i, f"fork of {t}")
            taps[t] = iter(fork.outputs())
        for u in self.units:
            for k, t in enumerate(u.layer["inputs"]):
                src = next(taps[t]) if t in taps else sources[t]
                dst = getattr(u.component, _lowering(u.layer).in_ports[k])
                fifo = self.skip_fifos.get((u.name, k))
                if fifo is not None:
                    m.submodules[f"skip__{rtl_name(u.name)}__{k}"] = fifo
                    connect_pixels(m, src, fifo.i, f"skip FIFO of {u.name}")
                    src = fifo.o
                connect_pixels(m, src, dst, f"{t} -> {u.name}")
        connect_pixels(m, sources[self.output], wiring.flipped(self.pix_out), f"{self.output} -> pix_out")
        return m

    def resources(self, part) -> tuple[dict, Resources]:
        """Estimated resources on ``part`` (:mod:`hw.resources`): ``({unit name: Resources},
        total)``, the units being the layers, the forks and the skip FIFOs."""
        per = {u.name: _lowering(u.layer).resources(u.layer, u.component, part) for u in self.units}
        for t, f in self.forks.items():
            per[f"fork__{t}"] = resources.fork(f.n)
        for (a, i), f in self.skip_fifos.items():
            per[f"skip__{a}__{i}"] = resources.pixel_fifo(f.width, f.depth, part)
        return per, sum(per.values(), Resources())

    def describe(self) -> dict:
        """Per-unit and per-stream parameters (the ``units``, ``forks``, ``skip_fifos`` and
        ``streams`` of the network description, :mod:`hw.generate`)."""
        units = []
        for u in self.units:
            low = _lowering(u.layer)
            rec = {"name": u.name, "op": u.layer["op"], "rtl": rtl_name(u.name), "inputs": list(u.layer["inputs"]),
                   "out": {k: u.layer["out"][k] for k in ("shape", "bits", "signed")},
                   "cycles_per_frame": self.plan.unit_cycles[u.name],
                   "latency_cycles": low.latency(u.layer, u.folds, self.plan.specs[u.name],
                                                 self.plan.op_lanes.get(u.name)),
                   "multipliers": sum(f.multipliers for f in u.folds)}
            if isinstance(u.component, RawStreamAdapter):
                rec["folding"] = u.component.inner.describe()
            if u.name in self.plan.fifo_depths:
                rec["output_fifo_depth"] = self.plan.fifo_depths[u.name]
            if u.name in self.plan.op_lanes:
                rec["lanes"] = self.plan.op_lanes[u.name]
            units.append(rec)
        forks = [{"tensor": t, "outputs": f.n, "rtl": f"fork__{rtl_name(t)}"} for t, f in self.forks.items()]
        skips = [{"add": a, "operand": i, "tensor": self._operand((a, i)), "depth": f.depth, "width": f.width,
                  "rtl": f"skip__{rtl_name(a)}__{i}"} for (a, i), f in self.skip_fifos.items()]
        streams = []
        for t, users in self._consumers.items():
            rec = self.records[t]
            for u, port in users:
                streams.append({"name": t if len(users) == 1 else f"{t}->{u.name}", "tensor": t,
                                "producer": t if t != self.entry else "pix_in", "consumer": f"{u.name}.{port}",
                                "channels": int(rec["shape"][0]), "bits": int(rec["bits"]),
                                "signed": bool(rec["signed"])})
        out = self.records[self.output]
        streams.append({"name": self.output, "tensor": self.output, "producer": self.output, "consumer": "pix_out",
                        "channels": int(out["shape"][0]), "bits": int(out["bits"]), "signed": bool(out["signed"])})
        return {"units": units, "forks": forks, "skip_fifos": skips, "streams": streams}
