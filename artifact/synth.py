"""Random artifacts without torch: single Tucker-2 / dense conv layers of any shape, and
whole residual networks shaped like the trained ResNet (:func:`random_resnet`).

Used by the hardware, simulation and HLS tests to cover layer shapes, bit widths and
graphs that the trained model does not have. Shifts are chosen from the accumulator's
typical magnitude so that outputs use their range instead of saturating: for a single
layer estimated from the input's range, for a network measured on a calibration batch
run through the layers built so far (the estimate overstates every layer's input, and
through a deep chain the signal would shrink to zero).
"""
from __future__ import annotations

import math

import numpy as np

from . import golden
from .base import conv_out_hw, dtype_for_bits, int_range, signed_bits
from .bounds import acc_bits
from .io import FORMAT, FORMAT_VERSION, Artifact, validate
from .ops import pool_divisor_log2


def _tensor(shape, bits, signed, exponent) -> dict:
    return {"shape": [int(s) for s in shape], "bits": int(bits), "signed": bool(signed), "exponent": int(exponent)}


def _shift_for(level: float, out_hi: int) -> int:
    """The right shift that brings a magnitude ``level`` to about half of ``out_hi`` (within a
    factor sqrt(2)): outputs use their range and clamp rarely. Negative: a left shift."""
    return round(math.log2(max(level, 1) / max(out_hi, 1))) + 1


def _fitted_shift(acc: np.ndarray, bits: int, signed: bool) -> int:
    """:func:`_shift_for` the RMS of what a ``bits``-wide output keeps of the accumulators
    ``acc``: all of them when signed, the positive part when unsigned (clamped at 0: the
    negative part would make the shift too large and the survivors round to 0)."""
    kept = acc if signed else np.maximum(acc, 0)
    # 2**(bits-1) or 2**bits, not the largest value: a 2-bit signed stream ([-2, 1]) aimed at
    # RMS 1/2 would be mostly zeros.
    return _shift_for(float(np.sqrt(np.mean(np.square(kept, dtype=np.float64)))), int_range(bits, signed)[1] + 1)


def _accumulate(x: np.ndarray, weight: np.ndarray, bias, stage: dict) -> np.ndarray:
    """The exact accumulator of a conv (N, C, H, W) or linear (N, C) stage on the batch ``x``."""
    if stage["kind"] == "conv":
        return golden.conv_accumulate(x, weight, bias, stage)
    return x @ weight.T + (0 if bias is None else bias)


def _random_stage(rng, stage: dict, weight_key, in_spec, weight_shape, out_hw: list, *, weight_bits, out_bits,
                  out_signed, bias, requant, calib=None) -> tuple[dict, dict]:
    """Fill ``stage`` (name, kind, geometry) with random weights/bias, accumulator and requant.

    Without ``calib`` the bias range and the shift assume inputs uniform over the input's
    range, the shift is never a left shift and ``weight_exponent = -(weight_bits - 1)``.
    ``calib`` is an integer batch of the stage's real input ((N, C, H, W) or (N, C)); the
    accumulator is measured on it instead:

    * no output channel has all-zero weights (it would be constant);
    * the bias puts a random quantile in [1/4, 3/4] of each channel's accumulator just above
      half an output step, so that after rounding and a clamp at 0 (ReLU) at least a quarter
      of the channel's calibration outputs are non-zero;
    * the shift fits the biased accumulator's RMS (:func:`_fitted_shift`, left shifts included);
    * ``weight_exponent`` makes the output's exponent ``-(bits - 1)`` (signed) or ``-bits``
      (unsigned), plus a random -1, 0 or 1: real values stay about in [-1, 1] however deep
      the chain (exponents do not drift), and residual operands need alignment shifts.
    """
    cout, fan_in = weight_shape[0], int(np.prod(weight_shape[1:]))
    wlo, whi = int_range(weight_bits, True)
    weight = rng.integers(wlo + 1, whi + 1, size=weight_shape, dtype=np.int64)
    if calib is not None:
        rows = weight.reshape(cout, -1)
        rows[~rows.any(axis=1), 0] = whi
    tensors = {weight_key: weight.astype(dtype_for_bits(weight_bits))}
    bias_key = weight_key.rsplit(".", 1)[0] + ".bias" if bias else None
    b = None
    w_exp = -(weight_bits - 1)
    if calib is None:
        x_hi = int_range(in_spec["bits"], in_spec["signed"])[1]
        typical = math.sqrt(fan_in) * max(whi, 1) * max(x_hi, 1) / 2
        if bias:
            b = rng.integers(-int(typical) - 1, int(typical) + 2, size=cout)
        shift = max(0, _shift_for(typical, int_range(out_bits, out_signed)[1]))
    else:
        acc = _accumulate(calib, weight, None, stage)
        if bias:
            per_channel = np.sort(np.moveaxis(acc, 1, 0).reshape(cout, -1), axis=1)
            at = (rng.uniform(0.25, 0.75, cout) * (per_channel.shape[1] - 1)).astype(np.int64)
            b = 1 - per_channel[np.arange(cout), at]
        if requant:
            shift = _fitted_shift(acc if b is None else acc + b.reshape(1, cout, *(1,) * (acc.ndim - 2)),
                                  out_bits, out_signed)
            if b is not None and shift > 0:
                b += 1 << (shift - 1)
            out_exp = -(out_bits - 1 if out_signed else out_bits) + int(rng.integers(-1, 2))
            w_exp = out_exp - shift - in_spec["exponent"]
    acc_exp = in_spec["exponent"] + w_exp
    stage.update({"weight": weight_key, "bias": bias_key, "in": dict(in_spec),
                  "weight_bits": weight_bits, "weight_exponent": w_exp,
                  "acc": {"bits": acc_bits(weight, b, in_spec["bits"], in_spec["signed"]), "exponent": acc_exp}})
    if bias:
        stage["bias_bits"] = stage["acc"]["bits"]
        tensors[bias_key] = b.astype(dtype_for_bits(stage["bias_bits"]))
    if requant:
        stage["requant"] = {"shift": shift, "clamp": list(int_range(out_bits, out_signed))}
        stage["out"] = _tensor([cout, *out_hw], out_bits, out_signed, acc_exp + shift)
    else:
        stage["requant"] = None
        stage["out"] = _tensor([cout, *out_hw], stage["acc"]["bits"], True, acc_exp)
    return stage, tensors


def make_conv_stage(rng, name, weight_key, in_spec, cout, *, kernel=1, stride=1, padding=0, groups=1,
                    weight_bits=8, out_bits=8, out_signed=True, bias=True, requant=True,
                    calib=None) -> tuple[dict, dict]:
    """A random conv stage record and its tensors. ``in_spec`` is the input tensor record;
    ``calib`` an optional (N, C, H, W) batch of real inputs to fit bias and shift to."""
    cin, h, w = in_spec["shape"]
    stage = {"name": name, "kind": "conv", "kernel": kernel, "stride": stride, "padding": padding, "groups": groups}
    return _random_stage(rng, stage, weight_key, in_spec, (cout, cin // groups, kernel, kernel),
                         list(conv_out_hw(h, w, kernel, stride, padding)), weight_bits=weight_bits,
                         out_bits=out_bits, out_signed=out_signed, bias=bias, requant=requant, calib=calib)


def make_linear_stage(rng, name, weight_key, in_spec, cout, *, weight_bits=8, out_bits=8, out_signed=False,
                      bias=True, requant=True, calib=None) -> tuple[dict, dict]:
    """A random linear stage record (``in_spec`` shape [C]) and its tensors; ``calib`` an
    optional (N, C) batch of real inputs to fit bias and shift to."""
    stage = {"name": name, "kind": "linear"}
    return _random_stage(rng, stage, weight_key, in_spec, (cout, in_spec["shape"][0]), [], weight_bits=weight_bits,
                         out_bits=out_bits, out_signed=out_signed, bias=bias, requant=requant, calib=calib)


def _artifact(in_spec: dict, layers: list, tensors: dict, name: str) -> Artifact:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": {"name": name, "synthetic": True},
                "input": in_spec, "output": layers[-1]["name"], "layers": layers}
    validate(manifest, tensors)
    return Artifact(manifest, tensors)


def random_tucker2(seed=0, *, channels=8, out_channels=8, ranks=(4, 4), kernel=3, stride=1, padding=None,
                   height=6, width=6, in_bits=8, in_signed=False, in_exponent=-4, weight_bits=8, act_bits=8,
                   out_signed=False, bias=True, name="t2") -> Artifact:
    """A one-layer artifact: a random Tucker-2 layer (U1 1x1, G kxk, U2 1x1).

    Intermediate streams (after U1 and G) are signed ``act_bits`` wide; the output is
    ``act_bits`` wide, unsigned (ReLU) unless ``out_signed``.
    """
    rng = np.random.default_rng(seed)
    padding = kernel // 2 if padding is None else padding
    in_spec = _tensor([channels, height, width], in_bits, in_signed, in_exponent)
    r1, r2 = ranks
    u1, t1 = make_conv_stage(rng, "u1", f"{name}.u1.weight", in_spec, r1, weight_bits=weight_bits,
                             out_bits=act_bits, out_signed=True, bias=False)
    g, t2 = make_conv_stage(rng, "g", f"{name}.g.weight", u1["out"], r2, kernel=kernel, stride=stride,
                            padding=padding, weight_bits=weight_bits, out_bits=act_bits, out_signed=True, bias=False)
    u2, t3 = make_conv_stage(rng, "u2", f"{name}.u2.weight", g["out"], out_channels, weight_bits=weight_bits,
                             out_bits=act_bits, out_signed=out_signed, bias=bias)
    layer = {"name": name, "op": "tucker2", "inputs": ["input"], "rank": [r1, r2],
             "kernel": kernel, "stride": stride, "padding": padding,
             "in": in_spec, "out": u2["out"], "stages": [u1, g, u2]}
    return _artifact(in_spec, [layer], {**t1, **t2, **t3}, f"random_tucker2_{seed}")


def random_conv(seed=0, *, channels=8, out_channels=8, kernel=3, stride=1, padding=None, height=6, width=6,
                in_bits=8, in_signed=False, weight_bits=8, act_bits=8, out_signed=False, bias=True,
                name="conv") -> Artifact:
    """A one-layer artifact: a random dense k x k convolution (the baseline engine's layer)."""
    rng = np.random.default_rng(seed)
    padding = kernel // 2 if padding is None else padding
    in_spec = _tensor([channels, height, width], in_bits, in_signed, -4)
    stage, tensors = make_conv_stage(rng, name, f"{name}.weight", in_spec, out_channels, kernel=kernel,
                                     stride=stride, padding=padding, weight_bits=weight_bits,
                                     out_bits=act_bits, out_signed=out_signed, bias=bias)
    layer = {**stage, "op": "conv", "inputs": ["input"]}
    return _artifact(in_spec, [layer], tensors, f"random_conv_{seed}")


# (kernel, stride, padding) of the optional max pool after the stem: halving, and keeping the size.
_MAXPOOL_GEOMETRIES = ((2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0))
_LOWRANK_PLACES = ("shortcut", "classifier")
_SHORTCUTS = (None, "identity", "strided")
_CALIB_BATCH = 64
_REDRAWS = 4


def _draw(rng, spec, what: str, minimum: int, maximum: int | None = None) -> int:
    """``spec`` itself when it is an int, else a uniform draw from the inclusive range
    ``(lo, hi)``; ValueError when it leaves ``[minimum, maximum]``."""
    lo, hi = (spec, spec) if isinstance(spec, (int, np.integer)) else (int(v) for v in spec)
    if not minimum <= lo <= hi or (maximum is not None and hi > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{what} must be an int or an inclusive range (lo, hi), {bound}; got {spec!r}")
    return lo if lo == hi else int(rng.integers(lo, hi + 1))


class _Network:
    """A network under construction: layers and tensors, each layer's ``out`` record and its
    output on a calibration batch, which every shift and bias is fitted to."""

    def __init__(self, rng, in_spec: dict, calib: np.ndarray, weight_bits, act_bits):
        self.rng, self.weight_bits, self.act_bits = rng, weight_bits, act_bits
        self.layers: list = []
        self.tensors: dict = {}
        self.out = {"input": in_spec}
        self.values = {"input": calib}

    def wbits(self) -> int:
        return _draw(self.rng, self.weight_bits, "weight_bits", 2, 16)

    def abits(self) -> int:
        return _draw(self.rng, self.act_bits, "act_bits", 2, 16)

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def bias(self, out_signed: bool, last: bool) -> bool:
        """Whether a stage has a bias: always when clamped at 0 (without one a channel can be
        all zero) and for a layer's last stage (a folded BatchNorm's; without one a residual
        operand can be mostly negative and the add's ReLU all zero), else at random."""
        return not out_signed or last or self.coin()

    def append(self, layer: dict, tensors: dict) -> str:
        self.tensors.update(tensors)
        out, _ = golden.run_layer(layer, [self.values[s] for s in layer["inputs"]], self.tensors)
        self.values[layer["name"]], self.out[layer["name"]] = out, layer["out"]
        self.layers.append(layer)
        return layer["name"]

    def stage(self, kind: str, name: str, weight_key: str, in_spec: dict, x: np.ndarray, width: int, *,
              out_signed: bool, bias: bool, requant: bool = True, **geometry) -> tuple[dict, dict, np.ndarray]:
        """A random ``conv`` or ``linear`` stage fitted to its input batch ``x``: (record, tensors,
        its output on ``x``). One whose output is constant is drawn again, up to ``_REDRAWS``
        times in all: on tiny images a kernel's few in-bounds taps can all see constant pixels,
        and a constant stream makes every layer after it constant too."""
        make, run = (make_conv_stage, golden.conv_stage) if kind == "conv" else (make_linear_stage, golden.linear_stage)
        for _ in range(_REDRAWS):
            stage, tensors = make(self.rng, name, weight_key, in_spec, width, **geometry, weight_bits=self.wbits(),
                                  out_bits=self.abits(), out_signed=out_signed, bias=bias, requant=requant, calib=x)
            y = run(x, stage, tensors)
            if y.min() < y.max():
                break
        return stage, tensors, y

    def conv(self, name: str, src: str, cout: int, *, kernel: int, stride: int, padding: int,
             out_signed: bool) -> str:
        stage, tensors, _ = self.stage("conv", name, f"{name}.weight", self.out[src], self.values[src], cout,
                                       out_signed=out_signed, bias=self.bias(out_signed, True), kernel=kernel,
                                       stride=stride, padding=padding)
        return self.append({**stage, "op": "conv", "inputs": [src]}, tensors)

    def factorized(self, name: str, src: str, op: str, plan: list, **fields) -> str:
        """A ``tucker2`` or ``lowrank`` layer from ``plan`` rows ``(stage, kind, width, geometry,
        out_signed)``. Inner streams have a requant; the last stage has one unless it is a
        classifier (``linear``, logits = accumulator)."""
        spec, x, stages, tensors = self.out[src], self.values[src], [], {}
        for i, (stage_name, kind, width, geometry, out_signed) in enumerate(plan):
            last = i == len(plan) - 1
            stage, t, x = self.stage(kind, stage_name, f"{name}.{stage_name}.weight", spec, x, width,
                                     out_signed=out_signed, bias=self.bias(out_signed, last and kind == "conv"),
                                     requant=not (last and kind == "linear"), **geometry)
            spec = stage["out"]
            stages.append(stage)
            tensors.update(t)
        layer = {"name": name, "op": op, "inputs": [src], **fields, "in": dict(self.out[src]), "out": spec,
                 "stages": stages}
        return self.append(layer, tensors)

    def tucker2(self, name: str, src: str, cout: int, *, stride: int, out_signed: bool) -> str:
        r1, r2 = (int(self.rng.integers(1, c + 1)) for c in (self.out[src]["shape"][0], cout))
        plan = [("u1", "conv", r1, {}, self.coin()),
                ("g", "conv", r2, {"kernel": 3, "stride": stride, "padding": 1}, self.coin()),
                ("u2", "conv", cout, {}, out_signed)]
        return self.factorized(name, src, "tucker2", plan, rank=[r1, r2], kernel=3, stride=stride, padding=1)

    def lowrank_shortcut(self, name: str, src: str, cout: int, *, stride: int) -> str:
        """A factorized 1x1 projection; U1 carries the stride."""
        r = int(self.rng.integers(1, min(self.out[src]["shape"][0], cout) + 1))
        plan = [("u1", "conv", r, {"stride": stride}, self.coin()), ("u2", "conv", cout, {}, True)]
        return self.factorized(name, src, "lowrank", plan, rank=[r])

    def requant(self, name: str, src: str) -> str:
        """An identity shortcut: the block input as a signed stream at a fitted scale."""
        spec, bits = self.out[src], self.abits()
        shift = _fitted_shift(self.values[src], bits, True)
        layer = {"name": name, "op": "requant", "inputs": [src], "in": dict(spec),
                 "requant": {"shift": shift, "clamp": list(int_range(bits, True))},
                 "out": _tensor(spec["shape"], bits, True, spec["exponent"] + shift)}
        return self.append(layer, {})

    def add(self, name: str, a: str, b: str) -> str:
        """ReLU(a + b), both aligned to the finer exponent (docs/artifact.md 3.3)."""
        specs = (self.out[a], self.out[b])
        e = min(s["exponent"] for s in specs)
        align = [s["exponent"] - e for s in specs]
        lo = sum(int_range(s["bits"], s["signed"])[0] << sh for s, sh in zip(specs, align))
        hi = sum(int_range(s["bits"], s["signed"])[1] << sh for s, sh in zip(specs, align))
        bits = self.abits()
        total = (self.values[a] << align[0]) + (self.values[b] << align[1])
        shift = _fitted_shift(total, bits, False)
        layer = {"name": name, "op": "add", "inputs": [a, b], "align": align,
                 "acc": {"bits": signed_bits(lo, hi), "exponent": e},
                 "requant": {"shift": shift, "clamp": list(int_range(bits, False))},
                 "out": _tensor(specs[0]["shape"], bits, False, e + shift)}
        return self.append(layer, {})

    def maxpool(self, name: str, src: str) -> str:
        """A max pool of a random geometry among those that fit the image."""
        spec = self.out[src]
        c, h, w = spec["shape"]
        fits = [g for g in _MAXPOOL_GEOMETRIES if min(conv_out_hw(h, w, *g)) >= 1]
        k, s, p = fits[int(self.rng.integers(len(fits)))]
        layer = {"name": name, "op": "maxpool", "inputs": [src], "kernel": k, "stride": s, "padding": p,
                 "in": dict(spec), "out": {**spec, "shape": [c, *conv_out_hw(h, w, k, s, p)]}}
        return self.append(layer, {})

    def global_pool(self, name: str, src: str) -> str:
        """Sum over H, W, requantized to an unsigned vector; the shift includes divisor_log2."""
        spec = self.out[src]
        c, h, w = spec["shape"]
        k = pool_divisor_log2(h, w)
        lo, hi = (v * h * w for v in int_range(spec["bits"], spec["signed"]))
        bits = self.abits()
        shift = _fitted_shift(self.values[src].sum(axis=(2, 3)), bits, False)
        layer = {"name": name, "op": "global_sum_pool", "inputs": [src], "divisor_log2": k, "in": dict(spec),
                 "acc": {"bits": signed_bits(lo, hi), "exponent": spec["exponent"]},
                 "requant": {"shift": shift, "clamp": list(int_range(bits, False))},
                 "out": _tensor([c], bits, False, spec["exponent"] + shift - k)}
        return self.append(layer, {})

    def classifier(self, name: str, src: str, classes: int, *, lowrank: bool) -> str:
        """Logits = the accumulator (requant null), dense or factorized."""
        if lowrank:
            r = int(self.rng.integers(1, min(self.out[src]["shape"][0], classes) + 1))
            plan = [("u1", "linear", r, {}, self.coin()), ("u2", "linear", classes, {}, True)]
            return self.factorized(name, src, "lowrank", plan, rank=[r])
        stage, tensors, _ = self.stage("linear", name, f"{name}.weight", self.out[src], self.values[src], classes,
                                       out_signed=True, bias=self.coin(), requant=False)
        return self.append({**stage, "op": "linear", "inputs": [src]}, tensors)


def random_resnet(seed=0, *, stages=None, blocks=(1, 2), channels=(1, 8), in_channels=(1, 3), height=(4, 8),
                  width=(4, 8), classes=(2, 10), weight_bits=(2, 8), act_bits=(2, 8), in_bits=(2, 8),
                  in_signed=None, shortcut=None, maxpool=None, lowrank=None) -> Artifact:
    """A whole random residual network, shaped like the trained ResNet (layer names and ops
    of tests/fixtures/resnet20_digits), validated:

        input [C_in, H, W] -> conv1 (conv 3x3 pad 1, unsigned: ReLU)
        -> [maxpool] -> layer{i}.{j} blocks -> pool (global_sum_pool, unsigned) -> fc (logits)

    Block ``layer{i}.{j}``: ``.conv1`` (tucker2 3x3, the block's stride, unsigned: ReLU),
    ``.conv2`` (tucker2 3x3, signed), ``.shortcut`` from the block input (an identity
    ``requant`` layer to a signed stream, or where the block downsamples a 1x1 stride-2
    ``conv`` projection, or a ``lowrank`` one whose U1 carries the stride), and ``.add``
    (``add`` of conv2 and shortcut, aligned to the finer exponent, unsigned: ReLU). The
    first block of stage i > 1 may downsample (stride 2 and a new channel count); every
    other block keeps shape and channels. Ranks are random, R1 <= C_in and R2 <= C_out
    (lowrank: R <= min of both); inner Tucker-2/lowrank streams are signed or unsigned at
    random; stages clamped at 0 and the last stage of every conv layer have a bias (as after
    a folded BatchNorm), the others at random; ``fc`` is ``linear`` or ``lowrank`` with
    requant null, so the output is the accumulator.

    Each of these options is an int or an inclusive range ``(lo, hi)`` to draw from (bit
    widths anew for every stage and tensor, ``blocks`` for every stage, ``channels`` for the
    stem and every downsampling stage): ``stages`` (default 1..3; 2..3 with ``shortcut="strided"``), ``blocks`` per stage,
    ``channels`` (kept by stages that do not downsample), ``in_channels``,
    ``height``, ``width``, ``classes``; ``weight_bits``, ``act_bits`` (every requantized
    tensor) and ``in_bits`` within 2..16. ``in_signed``: the input's signedness (None:
    random). ``shortcut``: None (each later stage downsamples at random), ``"identity"``
    (none does: every shortcut is a ``requant`` layer) or ``"strided"`` (every later one
    does). ``maxpool``: a ``maxpool`` layer after the stem (kernel/stride/padding 2/2/0,
    3/2/1, 3/1/1 or 2/1/0, one that fits); None: at random. ``lowrank``: where ``lowrank``
    layers go, a subset of ``{"shortcut", "classifier"}`` (or one of the names); asking
    for ``"shortcut"`` implies ``shortcut="strided"``; None: each at random.

    Every shift and bias is fitted to what its layer computes on a calibration batch of
    uniform random images (drawn from ``seed``): on such inputs tensors use their range
    instead of saturating or being all zero, and a stage whose output on it is constant is
    drawn again. (The global pool of i.i.d. noise images is about the same vector for every
    image, so at 2-4 bits ``pool`` and ``fc`` can be constant on them.) The same seed and
    options give the same artifact; ValueError for an option out of range.
    """
    rng = np.random.default_rng(seed)
    if shortcut not in _SHORTCUTS:
        raise ValueError(f"shortcut must be one of {_SHORTCUTS}, got {shortcut!r}")
    if lowrank is None:
        places = {p for p in _LOWRANK_PLACES if rng.random() < 1 / 3}
    else:
        places = {lowrank} if isinstance(lowrank, str) else set(lowrank)
        if not places <= set(_LOWRANK_PLACES):
            raise ValueError(f"lowrank places are a subset of {_LOWRANK_PLACES}, got {lowrank!r}")
        if "shortcut" in places:
            if shortcut == "identity":
                raise ValueError("a lowrank shortcut is a projection: it needs shortcut='strided', not 'identity'")
            shortcut = "strided"
    n_stages = _draw(rng, (2 if shortcut == "strided" else 1, 3) if stages is None else stages, "stages",
                     2 if shortcut == "strided" else 1)
    bits = _draw(rng, in_bits, "in_bits", 2, 16)
    signed = bool(rng.random() < 0.5) if in_signed is None else bool(in_signed)
    in_spec = _tensor([_draw(rng, in_channels, "in_channels", 1), _draw(rng, height, "height", 1),
                       _draw(rng, width, "width", 1)], bits, signed, -(bits - 1) if signed else -bits)
    lo, hi = int_range(bits, signed)
    net = _Network(rng, in_spec, rng.integers(lo, hi + 1, size=(_CALIB_BATCH, *in_spec["shape"])),
                   weight_bits, act_bits)
    c = _draw(rng, channels, "channels", 1)
    src = net.conv("conv1", "input", c, kernel=3, stride=1, padding=1, out_signed=False)
    use_maxpool = net.coin(1 / 3) if maxpool is None else maxpool
    if use_maxpool:
        src = net.maxpool("maxpool", src)
    for i in range(1, n_stages + 1):
        down = i > 1 and (shortcut == "strided" or (shortcut is None and net.coin()))
        cout = _draw(rng, channels, "channels", 1) if down else c
        for j in range(_draw(rng, blocks, "blocks", 1)):
            name, stride = f"layer{i}.{j}", 2 if down and j == 0 else 1
            y = net.tucker2(f"{name}.conv1", src, cout, stride=stride, out_signed=False)
            y = net.tucker2(f"{name}.conv2", y, cout, stride=1, out_signed=True)
            if stride == 1:
                sc = net.requant(f"{name}.shortcut", src)
            elif "shortcut" in places:
                sc = net.lowrank_shortcut(f"{name}.shortcut", src, cout, stride=stride)
            else:
                sc = net.conv(f"{name}.shortcut", src, cout, kernel=1, stride=stride, padding=0, out_signed=True)
            src = net.add(f"{name}.add", y, sc)
        c = cout
    net.classifier("fc", net.global_pool("pool", src), _draw(rng, classes, "classes", 1),
                   lowrank="classifier" in places)
    return _artifact(in_spec, net.layers, net.tensors, f"random_resnet_{seed}")


def random_input(artifact: Artifact, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Uniform random integer input of the artifact's declared shape and range."""
    spec = artifact.manifest["input"]
    lo, hi = int_range(spec["bits"], spec["signed"])
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(batch, *spec["shape"]), dtype=np.int64)


def dense_twin(artifact: Artifact, seed: int = 0) -> Artifact:
    """The same network with every ``tucker2`` and ``lowrank`` layer replaced by one dense
    layer of the same name, input record and output record: a ``conv`` of the layer's
    kernel, stride and padding (a Tucker-2 layer's core G, a low-rank layer's U1) and
    groups 1, or a ``linear`` where the factors are linear stages. Every other layer and
    tensor is kept as it is, so the rest of the graph stays valid; the result is validated.

    The dense layer's weights are random at the factors' widest weight width; it has a
    bias where the factorized layer's last stage has one and that stage's clamp; bias
    and shift are fitted like :func:`make_conv_stage` with ``calib``: to what the layer
    computes, in the twin built so far, on a batch of uniform random images drawn from
    ``seed``, so outputs use their range rather than saturating. The weight exponent then
    makes the output exponent the factorized layer's. A last stage without requant
    (logits = accumulator) keeps none: that layer's output record follows the new
    accumulator, which is valid only where nothing reads it but the manifest's output
    (ArtifactError otherwise). ``model`` says ``dense_twin_of`` the original's name;
    the original's accuracy and rank fields are dropped (they describe other weights).
    """
    rng = np.random.default_rng(seed)
    manifest = artifact.manifest
    in_spec = manifest["input"]
    lo, hi = int_range(in_spec["bits"], in_spec["signed"])
    values = {"input": rng.integers(lo, hi + 1, size=(_CALIB_BATCH, *in_spec["shape"]))}
    tensors = dict(artifact.tensors)
    layers = []
    for layer in manifest["layers"]:
        if layer["op"] in ("tucker2", "lowrank"):
            stages, x = layer["stages"], values[layer["inputs"][0]]
            for s in stages:
                tensors.pop(s["weight"])
                if s["bias"] is not None:
                    tensors.pop(s["bias"])
            last, name, out = stages[-1], layer["name"], layer["out"]
            options = dict(weight_bits=max(s["weight_bits"] for s in stages), out_bits=out["bits"],
                           out_signed=out["signed"], bias=last["bias"] is not None,
                           requant=last["requant"] is not None, calib=x)
            if last["kind"] == "conv":
                core = stages[1] if layer["op"] == "tucker2" else stages[0]
                stage, new = make_conv_stage(rng, name, f"{name}.weight", layer["in"], out["shape"][0],
                                             kernel=core["kernel"], stride=core["stride"], padding=core["padding"],
                                             **options)
            else:
                stage, new = make_linear_stage(rng, name, f"{name}.weight", layer["in"], out["shape"][0], **options)
            if last["requant"] is not None:
                shift = stage["requant"]["shift"]
                stage["weight_exponent"] = out["exponent"] - shift - layer["in"]["exponent"]
                stage["acc"]["exponent"] = out["exponent"] - shift
                stage["requant"]["clamp"] = list(last["requant"]["clamp"])
                stage["out"] = dict(out)
            tensors.update(new)
            layer = {**stage, "op": last["kind"], "inputs": list(layer["inputs"])}
        values[layer["name"]], _ = golden.run_layer(layer, [values[t] for t in layer["inputs"]], tensors)
        layers.append(layer)
    model = {k: v for k, v in manifest["model"].items()
             if k not in ("ranks", "test_acc", "inference_reduction", "dense")}
    model.update({"name": f"{manifest['model']['name']}_dense_twin", "dense": True, "synthetic": True,
                  "dense_twin_of": manifest["model"]["name"]})
    new_manifest = {**manifest, "model": model, "layers": layers}
    validate(new_manifest, tensors)
    return Artifact(new_manifest, tensors)
