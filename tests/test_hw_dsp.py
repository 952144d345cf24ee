"""hw/dsp.py: registered multipliers, behavioural and as ECP5 MULT18X18D instances.

* Amaranth simulator (platform None): products two cycles after the operands,
  truncated to the product shape, 0 after reset.
* ECP5 elaboration: one MULT18X18D per product with input and output registers
  (no pipeline register), its control-pin constants from LUT4s of its own; a fabric
  fallback for an operand wider than the DSP.
* Products in logic (``soft=True``): the same values and timing in simulation, on ECP5 no
  DSP and no ``*`` for synthesis to map to one; a wrong partial product is caught.
* Verilator with the MULT18X18D and LUT4 models of tests/models/: the ECP5 products against
  an independent delay line, cycle for cycle (the DSP's extreme widths, both
  signednesses, a constant operand, the fallback); and Tucker-2 engines elaborated
  for ECP5 under the cocotb testbench of sim/, every output element against the
  golden model (the second one slow).
"""
import random
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("amaranth")

from amaranth import Const, Module, Signal, signed, unsigned  # noqa: E402
from amaranth.back import verilog  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw.dsp import Multipliers, is_ecp5, soft_stages  # noqa: E402
from rtl_helpers import verilator_binary  # noqa: E402

MODELS = [Path(__file__).parent / "models" / name for name in ("MULT18X18D.v", "LUT4.v")]
CONST = -77
# (a bits, a signed, b bits, b signed, product shape) on the low bits of the a / b words:
# the DSP's extremes, truncated products, an operand one bit too wide for the DSP (index 5:
# fabric fallback on ECP5), a product wider than the DSP's 36 bits (sign-extended); the last
# one multiplies the constant CONST (8 bits, signed).
PAIRS = [(18, True, 18, True, signed(36)), (17, False, 18, True, signed(36)), (17, False, 17, False, unsigned(34)),
         (8, True, 2, False, signed(10)), (16, True, 16, False, signed(20)), (19, True, 8, False, signed(27)),
         (18, True, 17, False, signed(40)), (8, True, 9, False, signed(17))]


def _ecp5():
    ulx3s = pytest.importorskip("amaranth_boards.ulx3s")
    plat = ulx3s.ULX3S_12F_Platform()
    assert is_ecp5(plat)
    return plat


def _value(word: int, bits: int, is_signed: bool) -> int:
    v = word & ((1 << bits) - 1)
    return v - (1 << bits) if is_signed and v >> (bits - 1) else v


def _wrap(v: int, shape) -> int:
    return _value(v, shape.width, shape.signed)


class Pairs(wiring.Component):
    """The products of :data:`PAIRS`; ``bad[i]`` is set while product ``i`` differs from
    an independent delay line (two registers per operand word, then ``*``)."""

    def __init__(self, soft: bool = False):
        self.soft = soft
        super().__init__({"a": In(32), "b": In(32), "bad": Out(len(PAIRS)),
                          **{f"p{i}": Out(shape) for i, (*_, shape) in enumerate(PAIRS)}})

    def elaborate(self, platform):
        m = Module()
        mul = Multipliers(m, platform, soft=self.soft)
        ops = (mul.operand(self.a, "a_op"), mul.operand(Const(CONST, signed(8)), "c_op"))
        b_op = mul.operand(self.b, "b_op")
        a2, b2 = self.a, self.b
        for i in range(2):
            a2, b2 = self._delay(m, a2, f"ra{i}"), self._delay(m, b2, f"rb{i}")
        for i, (ab, asg, bb, bsg, shape) in enumerate(PAIRS):
            a_op, aw = (ops[1], Const(CONST, signed(8))) if i == len(PAIRS) - 1 else (ops[0], a2)
            p = mul.product(a_op.elem(0, ab, asg), b_op.elem(0, bb, bsg), shape, f"p_{i}")
            ref = Signal(shape, name=f"ref_{i}")
            m.d.comb += [ref.eq(_slice(aw, ab, asg) * _slice(b2, bb, bsg)), getattr(self, f"p{i}").eq(p),
                         self.bad[i].eq(p != ref)]
        return m

    @staticmethod
    def _delay(m, v, name):
        r = Signal.like(v, name=name)
        m.d.sync += r.eq(v)
        return r


def _slice(word, bits, is_signed):
    v = word[:bits]
    return v.as_signed() if is_signed else v


def _stimulus(n: int, seed: int) -> list[tuple[int, int]]:
    """Random words, with all-zero, all-one and one-hot words mixed in (extreme operands)."""
    rng = random.Random(seed)

    def word():
        kind = rng.randrange(4)
        return [rng.getrandbits(32), 0, (1 << 32) - 1, 1 << rng.randrange(32)][kind]
    return [(word(), word()) for _ in range(n)]


# ---- behavioural (platform None) ------------------------------------------------------

def _behavioural_fails(dut, n: int = 300) -> list:
    """Cycles where a product of ``dut`` differs from the exact one two cycles earlier."""
    stim = _stimulus(n, 1)
    fails = []

    async def bench(ctx):
        for t, (a, b) in enumerate(stim + [(0, 0)]):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            await ctx.tick()
            # after this tick the products of the operands set one tick earlier are visible
            # (the operand register caught them at the previous tick)
            aa, bb = stim[t - 1] if t >= 1 else (0, 0)
            for i, (ab, asg, bw, bsg, shape) in enumerate(PAIRS):
                av = CONST if i == len(PAIRS) - 1 else _value(aa, ab, asg)
                want = _wrap(av * _value(bb, bw, bsg), shape)
                got = ctx.get(getattr(dut, f"p{i}"))
                if got != want or ctx.get(dut.bad):
                    fails.append((t, i, got, want, ctx.get(dut.bad)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return fails


def test_behavioural_products_two_cycles_after_operands():
    fails = _behavioural_fails(Pairs())
    assert not fails, fails[:5]


def test_soft_products_equal_exact_products_two_cycles_later():
    fails = _behavioural_fails(Pairs(soft=True))
    assert not fails, fails[:5]


def test_soft_products_with_a_wrong_sign_weight_are_caught(monkeypatch):
    """The comparison can fail: the sign bit of a signed ``b`` counted positive."""
    from amaranth import Value
    orig = Multipliers._soft_product

    def unsigned_b(self, a, b, p, name):
        return orig(self, a, Value.cast(b).as_unsigned(), p, name)
    monkeypatch.setattr(Multipliers, "_soft_product", unsigned_b)
    fails = _behavioural_fails(Pairs(soft=True), 60)
    assert {i for _, i, *_ in fails} >= {0, 1}      # the signed-b pairs; unsigned ones stay right


def test_soft_products_leave_no_dsp_and_no_multiplication_to_synthesis():
    text = verilog.convert(Pairs(soft=True), name="pairs", platform=_ecp5(), emit_src=False)
    products = [line for line in text.splitlines() if re.search(r"\w\s\*\s\w", line)]
    assert "MULT18X18D" not in text and products and all("assign ref_" in line for line in products)
    assert "p_0_pp0" in text and "p_0_pp8" in text      # 18-bit b: nine pair registers


def test_behavioural_multipliers_have_no_dsp_instance():
    text = verilog.convert(Pairs(), name="pairs", emit_src=False)
    assert "MULT18X18D" not in text and "a_op" in text


# ---- ECP5 ---------------------------------------------------------------------------

def test_ecp5_elaboration_uses_registered_mult18x18d():
    text = verilog.convert(Pairs(), name="pairs", platform=_ecp5(), emit_src=False)
    insts = re.findall(r"MULT18X18D\s*#\((.*?)\)\s*(\w+)\s*\(", text, re.S)
    assert sorted(name for _, name in insts) == sorted(f"p_{i}_dsp" for i in range(len(PAIRS)) if i != 5)
    for params, _ in insts:
        assert re.findall(r"\.(\w+)\(\"(\w+)\"\)", params) == [
            ("REG_INPUTA_CLK", "CLK0"), ("REG_INPUTB_CLK", "CLK0"), ("REG_OUTPUT_CLK", "CLK0"),
            ("REG_PIPELINE_CLK", "NONE")]
    assert "a_op" not in text                   # the operand registers are the DSPs' own
    # control pins: no constant and no reset; each DSP's own tie LUTs (0 and 1)
    ties = {pin: re.findall(rf"\.{pin}\(\\?(\w+)\s*\)", text) for pin in
            ("CE0", "RST0", "SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB")}
    for pin, nets in ties.items():
        assert len(nets) == len(insts) and all(n.endswith("_tie1" if pin in ("CE0", "SIGNEDA", "SIGNEDB")
                                                          else "_tie0") for n in nets), (pin, nets)
    assert len(set(ties["RST0"])) == len(insts)  # one tie per DSP
    assert len(re.findall(r"LUT4\s*#\(\s*\.INIT\(16'h(?:0000|ffff)\)", text)) == 2 * len(insts)
    assert "p_5_a" in text and "p_5_b" in text  # the too-wide pair: fabric registers


TB = """
module tb;
  logic clk = 0, rst = 1;
  logic [31:0] a = 0, b = 0;
  logic [{n}:0] bad;
  int errors = 0;
  pairs dut(.clk(clk), .rst(rst), .a(a), .b(b), .bad(bad){outs});
  always #5 clk = ~clk;
  function automatic logic [31:0] word();
    case ($urandom % 4)
      0: return $urandom;
      1: return 0;
      2: return '1;
      default: return 32'd1 << ($urandom % 32);
    endcase
  endfunction
  initial begin
    repeat (3) @(posedge clk);
    rst = 0;
    repeat (4000) begin
      @(negedge clk);
      if (bad != 0) begin
        errors++;
        if (errors < 10) $display("mismatch at %0t: bad=%b", $time, bad);
      end
      a = word();
      b = word();
    end
    if (errors == 0) $display("PASS"); else $fatal(1, "%0d mismatching cycles", errors);
    $finish;
  end
endmodule
"""


def test_ecp5_products_under_verilator_match_delay_line(tmp_path):
    """The ECP5 elaboration (MULT18X18D model) checked every cycle, reset included."""
    (tmp_path / "pairs.v").write_text(verilog.convert(Pairs(), name="pairs", platform=_ecp5(), emit_src=False))
    outs = "".join(f", .p{i}()" for i in range(len(PAIRS)))
    (tmp_path / "tb.sv").write_text(TB.format(n=len(PAIRS) - 1, outs=outs))
    run = verilator_binary(tmp_path / "tb.sv", [tmp_path / "pairs.v", *MODELS], tmp_path)
    assert run.returncode == 0 and "PASS" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]


# (channels, out, ranks, kernel, H, W, in_bits, in_signed, weight_bits, act_bits, (PE, SIMD) per
# stage): the first has an unsigned input (U1 zero-extends, G and U2 take signed activations),
# the second a signed 2-bit one and fully parallel 1x1 stages (constant weights in the DSPs)
ENGINES = [(4, 5, (3, 2), 3, 4, 5, 8, False, 8, 8, [(1, 2), (2, 4), (1, 2)]),
           pytest.param(3, 2, (2, 3), 3, 3, 4, 2, True, 3, 4, [(2, 3), (1, 6), (2, 3)], marks=pytest.mark.slow)]


@pytest.mark.parametrize("ch,out,ranks,k,h,w,ib,isg,wb,ab,folding", ENGINES)
def test_ecp5_engine_bit_exact_under_cocotb(tmp_path, ch, out, ranks, k, h, w, ib, isg, wb, ab, folding):
    """A Tucker-2 engine elaborated for ECP5 (its products in MULT18X18D models) under the
    cocotb testbench of sim/: every output element against the golden model."""
    _check_ecp5_engine(tmp_path, ch, out, ranks, k, h, w, ib, isg, wb, ab, folding)


def test_ecp5_folded_weight_roms_bit_exact_under_cocotb(tmp_path, monkeypatch):
    """Every weight ROM a block ROM folded to 4 rows (ROM_ROWS, as a deep ROM is on ECP5: its
    slice multiplexer after the first register), 5 to 7 words each, so that each has a
    partly filled last slice: bit-exact under cocotb like the unfolded engine."""
    import hw.mvu
    monkeypatch.setattr(hw.mvu, "ROM_ROWS", 4)
    monkeypatch.setattr(hw.mvu, "ROM_BLOCK_MIN_BITS", 1)
    eng = _check_ecp5_engine(tmp_path, *ENGINES[0])
    geometry = [mvu.rom_geometry(_ecp5()) for _, mvu in eng.units]
    assert len(geometry) == 3 and all(fold == 2 and rows == 4 for fold, rows in geometry), geometry


def _check_ecp5_engine(tmp_path, ch, out, ranks, k, h, w, ib, isg, wb, ab, folding):
    from artifact import save_artifact
    from artifact.synth import random_tucker2
    from hw.engine import LayerEngine
    from hw.generate import describe
    from hw.planner import fixed_folding
    from hw.spec import layer_stages
    from sim import runner
    from sim.design import normalize
    from sim.toolchain import ToolError
    from sim.vectors import layer_macs

    art = random_tucker2(ib + wb, channels=ch, out_channels=out, ranks=ranks, kernel=k, height=h, width=w,
                         in_bits=ib, in_signed=isg, weight_bits=wb, act_bits=ab, out_signed=isg)
    path = save_artifact(tmp_path / "artifact", art.manifest, art.tensors)
    specs = layer_stages(art, "t2")
    eng = LayerEngine(specs, fixed_folding(specs, folding))
    text = verilog.convert(eng, name="elrt_t2", platform=_ecp5(), emit_src=False)
    assert len(re.findall(r"MULT18X18D\s*#", text)) == eng.plan.multipliers
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "elrt_t2.v").write_text(text)
    design = normalize(describe(eng, art.layer("t2"), "elrt_t2", "elrt_t2.v"), base=rtl)
    design["sources"] += [str(p) for p in MODELS]
    try:
        runner.build(design, tmp_path / "build", log_file=tmp_path / "build.log")
    except ToolError as e:
        pytest.skip(str(e))
    plan = {"name": "ecp5", "seed": 7, "design": design, "golden": {"artifact": str(path), "layer": "t2"},
            "frames": 2, "bubble": 0.3, "backpressure": 0.3, "macs": layer_macs(art, "t2")}
    recs = runner.run(plan, tmp_path / "build", tmp_path / "test", log_file=tmp_path / "sim.log")
    assert recs and all(r["passed"] for r in recs), recs
    return eng


# ---- which stages go to logic ---------------------------------------------------------

def test_soft_stages_make_up_the_excess_with_the_fewest_products():
    stages = {"a": 10, "b": 20, "c": 5, "d": 7}
    assert soft_stages(stages, 42) == soft_stages(stages, 100) == frozenset()
    assert soft_stages(stages, 30) == {"c", "d"}            # 12 exactly, not b's 20
    assert soft_stages(stages, 37) == {"c"}
    assert soft_stages(stages, 0) == set(stages) == soft_stages(stages, -3)
    assert soft_stages({"a": 16, "b": 16, "c": 16}, 32) == {"c"}    # a tie: the latest stage
    for seed in range(20):                                   # against every subset
        import itertools
        rng = random.Random(seed)
        st = {f"s{i}": rng.randrange(1, 40) for i in range(rng.randrange(1, 8))}
        dsps = rng.randrange(0, sum(st.values()) + 1)
        excess = sum(st.values()) - dsps
        got = soft_stages(st, dsps)
        best = min((sum(st[n] for n in c) for r in range(len(st) + 1) for c in itertools.combinations(st, r)
                    if sum(st[n] for n in c) >= excess), default=0)
        assert sum(st[n] for n in got) == (best if excess > 0 else 0), (st, dsps, got)
