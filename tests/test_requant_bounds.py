"""The requantizer at the edges of the format (docs/artifact.md 2.1, rule 11): the golden
model, the Amaranth requantizer and the hls4ml fixed-point types agree on every shift
the format allows, for accumulators up to 64 bits, element by element."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from artifact import golden, int_range

# (acc_bits, shift, out_bits, out_signed): right shifts up to and past the width,
# left shifts up to the 64-bit bound (acc_bits - shift <= 64).
CASES = [
    (8, 1, 8, True), (8, 7, 4, True), (8, 8, 4, True), (8, 9, 2, True), (8, 64, 8, False),
    (20, 3, 8, False), (33, 31, 8, True), (33, 32, 8, True), (62, 40, 24, True),
    (64, 1, 63, True), (64, 62, 8, True), (64, 63, 8, True), (64, 64, 8, True),
    (8, 0, 8, True), (8, -1, 16, True), (8, -56, 63, False), (16, -48, 64, True), (63, -1, 64, True),
]


def _values(acc_bits: int, n: int = 64, seed: int = 0) -> np.ndarray:
    lo, hi = int_range(acc_bits, True)
    rng = np.random.default_rng(seed + acc_bits)
    edges = [lo, lo + 1, -1, 0, 1, hi - 1, hi]
    # ties and near-ties of small shifts, and the halfway points of large ones
    for s in (1, 2, acc_bits - 1, acc_bits - 2):
        if 0 < s < acc_bits:
            for k in (-3, -1, 1, 3):
                v = k << (s - 1)
                if lo <= v <= hi:
                    edges += [v, v - 1, v + 1] if lo <= v - 1 and v + 1 <= hi else [v]
    rand = rng.integers(lo, hi, size=n, dtype=np.int64, endpoint=True)
    return np.unique(np.concatenate([np.array(edges, dtype=np.int64), rand]))


def _golden(acc, shift, out_bits, out_signed):
    lo, hi = int_range(out_bits, out_signed)
    return golden.requantize(acc, {"shift": shift, "clamp": [lo, hi]})


def _exact(acc, shift, out_bits, out_signed):
    """Python-integer reference of docs/artifact.md 2.1."""
    lo, hi = int_range(out_bits, out_signed)
    out = []
    for a in acc.tolist():
        if shift > 0:
            f, rem = a >> shift, a - ((a >> shift) << shift)
            half = 1 << (shift - 1)
            r = f + (1 if rem > half or (rem == half and f & 1) else 0)
        else:
            r = a << -shift
        out.append(min(max(r, lo), hi))
    return out


@pytest.mark.parametrize("acc_bits,shift,out_bits,out_signed", CASES)
def test_golden_is_exact_at_the_bounds(acc_bits, shift, out_bits, out_signed):
    acc = _values(acc_bits)
    assert _golden(acc, shift, out_bits, out_signed).tolist() == _exact(acc, shift, out_bits, out_signed)


def test_round_shift_past_64_bits_and_overflowing_left_shift():
    assert golden.round_shift(np.array([5, -5, 0]), 64).tolist() == [0, 0, 0]
    assert golden.round_shift(np.array([5, -5, 0]), 200).tolist() == [0, 0, 0]
    big = np.array([-(2**63), 2**62, 2**62 + 1, -(2**62), 2**63 - 1])
    assert golden.round_shift(big, 63).tolist() == [-1, 0, 1, 0, 1]
    with pytest.raises(OverflowError):
        golden.round_shift(np.array([1 << 40]), -30)
    assert golden.round_shift(np.array([-(1 << 33)]), -30).tolist() == [-(1 << 63)]


@pytest.mark.parametrize("acc_bits,shift,out_bits,out_signed", CASES)
def test_amaranth_requantizer_agrees(acc_bits, shift, out_bits, out_signed):
    pytest.importorskip("amaranth")
    from amaranth import signed, unsigned
    from amaranth.sim import Simulator

    from hw.requant import Requantizer

    lo, hi = int_range(out_bits, out_signed)
    dut = Requantizer(acc_bits, shift, lo, hi, (signed if out_signed else unsigned)(out_bits))
    acc = _values(acc_bits, n=24)
    want = _golden(acc, shift, out_bits, out_signed).tolist()
    got = []

    async def bench(ctx):
        for v in acc.tolist():
            ctx.set(dut.acc, v)
            await ctx.tick()
            await ctx.tick()
            got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def _ap_types_dir():
    hls4ml = pytest.importorskip("hls4ml")
    path = os.path.join(os.path.dirname(hls4ml.__file__), "templates", "vivado", "ap_types")
    if not os.path.isfile(os.path.join(path, "ap_fixed.h")) or shutil.which("g++") is None:
        pytest.skip("hls4ml's ap_types headers or g++ not available")
    return path


def test_hls4ml_types_agree(tmp_path):
    """The accumulator type and the requant result type the hls4ml path uses
    (deploy/hls4ml/precision.py), compiled with the ap_types headers hls4ml bundles.
    Shifts past the accumulator's width need the widened accumulator type: with the
    plain one ap_fixed's rounding aborts (SIGABRT, "read bit beyond MSB")."""
    from deploy.hls4ml.precision import accumulator_type, ap_string, requant_type

    include = _ap_types_dir()
    lines = ['#include "ap_fixed.h"', "#include <cstdio>", "int main() {"]
    expected = []
    for i, (acc_bits, shift, out_bits, out_signed) in enumerate(CASES):
        acc = _values(acc_bits, n=16)
        lo, hi = int_range(out_bits, out_signed)
        # accumulator integers with exponent -shift; the result has exponent 0
        acc_t = ap_string(accumulator_type(acc_bits, -shift, shift))
        out_t = ap_string(requant_type([lo, hi], 0, f"case {i}"))
        vals = ", ".join(f"{v}LL" if v != -(2**63) else "(-9223372036854775807LL - 1)" for v in acc.tolist())
        lines += [f"  {{ long long v[] = {{{vals}}};",
                  f"    for (unsigned j = 0; j < sizeof(v) / sizeof(v[0]); ++j) {{",
                  f"      {acc_t} a; ap_int<64> raw = v[j]; a.range({acc_bits - 1}, 0) = raw.range({acc_bits - 1}, 0);",
                  f"      {out_t} r = a;",
                  '      printf("%lld\\n", (long long) r.to_int64()); } }']
        expected += _golden(acc, shift, out_bits, out_signed).tolist()
    lines.append("  return 0;\n}")
    src = tmp_path / "requant.cpp"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "requant"
    subprocess.run(["g++", "-std=c++14", "-O0", f"-I{include}", str(src), "-o", str(exe)], check=True,
                   capture_output=True)
    got = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    assert got == expected


def test_hls4ml_refuses_shifts_past_a_source_it_does_not_type():
    """A requant layer shifting past its input's width has no exact hls4ml form: a
    one-line HLSConversionError, not a SIGABRT in the C simulation."""
    pytest.importorskip("hls4ml")
    from deploy.hls4ml.precision import HLSConversionError, check_shift_readable

    check_shift_readable(8, 8, "rq")
    with pytest.raises(HLSConversionError, match="rq: shift 9 exceeds the 8-bit source"):
        check_shift_readable(8, 9, "rq")
