"""Export a trained QAT model to the integer deployment artifact (docs/artifact.md).

A network describes its own dataflow by implementing ``export(emitter)``: it calls
the :class:`Emitter` methods in execution order (``input``, ``conv``, ``requant``,
``add``, ``maxpool``, ``global_pool``, ``linear``), and the emitter turns each
Brevitas module into integer tensors and manifest records:

* a tensor's exponent is log2 of its Brevitas scale (all scales are powers of two);
* a stage's accumulator exponent is ``in_exponent + weight_exponent``; its bias is
  the Brevitas Int32Bias integer (units of the accumulator);
* a requantizer's ``shift`` is ``out_exponent - acc_exponent`` and its ``clamp`` the
  output quantizer's integer range (``[0, 2^b - 1]`` after ReLU);
* accumulator widths come from :func:`artifact.bounds.acc_range` (worst case).

The emitter also records *taps*: which module call produces each artifact tensor,
so :func:`qat_intermediates` can read the QAT model's integers for comparison.

CLI: ``python -m model.export RUN_DIR [--out DIR] [--qonnx FILE]``. Before any work it
checks (:func:`check_paths`) that ``--out`` is not the run folder, does not contain it or
any of its files, is not a file, and is either new or an existing artifact (a folder that
holds only an artifact's files, ``artifact.is_artifact_dir``), which alone it replaces;
and that ``--qonnx`` ends in ``.onnx``, is not a folder, lies outside ``--out`` and has a
writable parent. Errors are one line, exit status 2, nothing touched. Both outputs are
written atomically (a temp folder / file, then a rename).
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from artifact import FORMAT, FORMAT_VERSION, ArtifactError, int_range, is_artifact_dir, save_artifact
from artifact.bounds import acc_range, signed_bits
from artifact.cli import Parser, UsageError, check_out_dir, check_out_file, fail

from .blocks import ConvBN, GlobalSumPool
from .layers import LowRankConv2d, LowRankLinear, Tucker2Conv2d


class ExportError(ValueError):
    """The model cannot be expressed exactly as an integer artifact (one-line message)."""


def _exponent(scale, what: str) -> int:
    s = float(torch.as_tensor(scale).detach().reshape(-1)[0])
    e = math.log2(s)
    if s <= 0 or e != round(e):
        raise ExportError(f"{what}: scale {s} is not a power of two; only fixed-point quantizers export")
    return int(round(e))


def _int_tensor(x: np.ndarray, bits: int) -> np.ndarray:
    dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64
    return x.astype(dtype)


class Emitter:
    """Collects manifest layers, integer tensors and taps while a network exports itself."""

    def __init__(self, in_shape):
        self.in_shape = [int(s) for s in in_shape]
        self.layers: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.specs: dict[str, dict] = {}
        self.taps: dict[str, tuple[nn.Module, int]] = {}
        self.input_spec = None

    # -- quantizer introspection -------------------------------------------------
    @staticmethod
    def _act_spec(module: nn.Module, shape, what: str) -> dict:
        quant = getattr(module, "act_quant", None)
        if quant is None:
            raise ExportError(f"{what}: {type(module).__name__} is not a Brevitas activation quantizer "
                              f"(was the model trained with quant: true?)")
        return {"shape": [int(s) for s in shape], "bits": int(quant.bit_width()),
                "signed": bool(quant.is_signed), "exponent": _exponent(quant.scale(), what)}

    def _tap(self, name: str, module: nn.Module, call: int = 0) -> None:
        self.taps[name] = (module, call)

    # -- graph construction --------------------------------------------------------
    def input(self, quant_module: nn.Module) -> str:
        self.input_spec = self._act_spec(quant_module, self.in_shape, "input quantizer")
        self.specs["input"] = self.input_spec
        self._tap("input", quant_module)
        return "input"

    def _stage(self, name: str, tensor_prefix: str, conv: nn.Module, in_spec: dict, out_quant, out_call: int,
               tap_name: str, kind: str = "conv") -> dict:
        """One MAC stage (dense conv, U1, G, U2 or linear) and its tensors."""
        qw = conv.quant_weight()
        w_exp = _exponent(qw.scale, f"{tap_name} weight")
        w_bits = int(qw.bit_width)
        weight = qw.int().detach().cpu().numpy().astype(np.int64)
        acc_exp = in_spec["exponent"] + w_exp
        bias = None
        if conv.bias is not None:
            bias = torch.round(conv.bias.detach().double() * 2.0 ** -acc_exp).cpu().numpy().astype(np.int64)
        lo, hi = acc_range(weight, bias, in_spec["bits"], in_spec["signed"])
        acc_bits = signed_bits(lo, hi)
        stage = {"name": name, "kind": kind, "weight": f"{tensor_prefix}.weight",
                 "bias": f"{tensor_prefix}.bias" if bias is not None else None}
        if kind == "conv":
            k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
            if d != 1:
                raise ExportError(f"{tap_name}: dilation {d} is not supported by the artifact format")
            c, h, w = in_spec["shape"]
            ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            stage.update(kernel=k, stride=s, padding=p, groups=conv.groups)
            out_shape = [conv.out_channels, ho, wo]
        else:
            out_shape = [conv.out_features]
        stage.update({"in": dict(in_spec), "weight_bits": w_bits, "weight_exponent": w_exp})
        if bias is not None:
            stage["bias_bits"] = signed_bits(int(bias.min()), int(bias.max()))
        stage["acc"] = {"bits": acc_bits, "exponent": acc_exp}
        if out_quant is None:
            stage["requant"] = None
            stage["out"] = {"shape": out_shape, "bits": acc_bits, "signed": True, "exponent": acc_exp}
        else:
            out = self._act_spec(out_quant, out_shape, tap_name)
            stage["requant"] = {"shift": out["exponent"] - acc_exp, "clamp": list(int_range(out["bits"], out["signed"]))}
            stage["out"] = out
            self._tap(tap_name, out_quant, out_call)
        self.tensors[stage["weight"]] = _int_tensor(weight, w_bits)
        if bias is not None:
            self.tensors[stage["bias"]] = _int_tensor(bias, stage["bias_bits"])
        return stage

    def conv(self, name: str, unit: ConvBN, src: str, out_quant: nn.Module | None = None, call: int = 0) -> str:
        """A ConvBN unit (BatchNorm folded) as a dense ``conv``, ``tucker2`` or ``lowrank`` layer.

        ``out_quant`` overrides the unit's own output quantizer (e.g. a block's shared
        residual requantizer, whose ``call``-th invocation is this unit's output)."""
        if not unit.folded:
            raise ExportError(f"{name}: BatchNorm is not folded; export a model trained past fold_bn_at "
                              f"(blocks.fold_batchnorm)")
        out_quant, call = (unit.act, 0) if out_quant is None else (out_quant, call)
        conv, in_spec = unit.conv, self.specs[src]
        if isinstance(conv, Tucker2Conv2d):
            plan = [("u1", conv.u1, conv.q1, 0), ("g", conv.g, conv.q2, 0), ("u2", conv.u2, out_quant, call)]
        elif isinstance(conv, LowRankConv2d):
            plan = [("u1", conv.u1, conv.q1, 0), ("u2", conv.u2, out_quant, call)]
        else:
            stage = self._stage(name, name, conv, in_spec, out_quant, call, name)
            return self._add_layer({**stage, "name": name, "op": "conv", "inputs": [src]})
        stages, spec = [], in_spec
        for stage_name, module, quant_module, stage_call in plan:
            tap = name if stage_name == "u2" else f"{name}.{stage_name}"
            stage = self._stage(stage_name, f"{name}.{stage_name}", module, spec, quant_module, stage_call, tap)
            stages.append(stage)
            spec = stage["out"]
        layer = {"name": name, "op": "tucker2" if len(stages) == 3 else "lowrank", "inputs": [src],
                 "rank": list(conv.ranks), "in": dict(in_spec), "out": spec, "stages": stages}
        if len(stages) == 3:
            layer.update(kernel=conv.kernel_size, stride=conv.stride, padding=conv.padding)
        return self._add_layer(layer)

    def linear(self, name: str, fc: nn.Module, src: str, out_quant: nn.Module | None = None) -> str:
        """A (low-rank) linear classifier; without ``out_quant`` its output is the accumulator."""
        in_spec = self.specs[src]
        if isinstance(fc, LowRankLinear):
            s1 = self._stage("u1", f"{name}.u1", fc.u1, in_spec, fc.q1, 0, f"{name}.u1", "linear")
            s2 = self._stage("u2", f"{name}.u2", fc.u2, s1["out"], out_quant, 0, name, "linear")
            return self._add_layer({"name": name, "op": "lowrank", "inputs": [src], "rank": list(fc.ranks),
                                    "in": dict(in_spec), "out": s2["out"], "stages": [s1, s2]})
        stage = self._stage(name, name, fc, in_spec, out_quant, 0, name, "linear")
        return self._add_layer({**stage, "name": name, "op": "linear", "inputs": [src]})

    def requant(self, name: str, src: str, out_quant: nn.Module, call: int = 0) -> str:
        """Requantize a tensor to another quantizer's scale and range (e.g. a shortcut)."""
        in_spec = self.specs[src]
        out = self._act_spec(out_quant, in_spec["shape"], name)
        self._tap(name, out_quant, call)
        return self._add_layer({"name": name, "op": "requant", "inputs": [src], "in": dict(in_spec),
                                "requant": {"shift": out["exponent"] - in_spec["exponent"],
                                            "clamp": list(int_range(out["bits"], out["signed"]))}, "out": out})

    def add(self, name: str, a: str, b: str, out_quant: nn.Module, call: int = 0) -> str:
        """``requant((a << sa) + (b << sb))`` with both operands aligned to the finer exponent."""
        sa_spec, sb_spec = self.specs[a], self.specs[b]
        if sa_spec["shape"] != sb_spec["shape"]:
            raise ExportError(f"{name}: cannot add shapes {sa_spec['shape']} and {sb_spec['shape']}")
        e = min(sa_spec["exponent"], sb_spec["exponent"])
        align = [sa_spec["exponent"] - e, sb_spec["exponent"] - e]
        lo = sum(int_range(s["bits"], s["signed"])[0] << sh for s, sh in zip((sa_spec, sb_spec), align))
        hi = sum(int_range(s["bits"], s["signed"])[1] << sh for s, sh in zip((sa_spec, sb_spec), align))
        out = self._act_spec(out_quant, sa_spec["shape"], name)
        self._tap(name, out_quant, call)
        return self._add_layer({"name": name, "op": "add", "inputs": [a, b], "align": align,
                                "acc": {"bits": signed_bits(lo, hi), "exponent": e},
                                "requant": {"shift": out["exponent"] - e,
                                            "clamp": list(int_range(out["bits"], out["signed"]))}, "out": out})

    def maxpool(self, name: str, src: str, pool: nn.MaxPool2d) -> str:
        in_spec = self.specs[src]
        k, s, p = (v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding))
        c, h, w = in_spec["shape"]
        out = {**in_spec, "shape": [c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1]}
        self._tap(name, pool)
        return self._add_layer({"name": name, "op": "maxpool", "inputs": [src], "kernel": k, "stride": s,
                                "padding": p, "in": dict(in_spec), "out": out})

    def global_pool(self, name: str, src: str, pool: GlobalSumPool) -> str:
        """``requant(sum over H, W)``; the pool's 2^-divisor_log2 is folded into the shift."""
        in_spec = self.specs[src]
        c, h, w = in_spec["shape"]
        k = math.ceil(math.log2(h * w))
        lo, hi = (v * h * w for v in int_range(in_spec["bits"], in_spec["signed"]))
        out = self._act_spec(pool.act, [c], name)
        self._tap(name, pool.act)
        return self._add_layer({"name": name, "op": "global_sum_pool", "inputs": [src], "divisor_log2": k,
                                "in": dict(in_spec), "acc": {"bits": signed_bits(lo, hi), "exponent": in_spec["exponent"]},
                                "requant": {"shift": out["exponent"] - (in_spec["exponent"] - k),
                                            "clamp": list(int_range(out["bits"], out["signed"]))}, "out": out})

    def _add_layer(self, layer: dict) -> str:
        self.layers.append(layer)
        self.specs[layer["name"]] = layer["out"]
        return layer["name"]

    def manifest(self, output: str, model_info: dict) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_info,
                "input": self.input_spec, "output": output, "layers": self.layers}


def export_model(model: nn.Module, in_shape, model_info: dict | None = None) -> tuple[dict, dict, dict]:
    """(manifest, tensors, taps) of an eval-mode, BN-folded QAT model."""
    if not hasattr(model, "export"):
        raise ExportError(f"{type(model).__name__} has no integer export (it is not integer-deployable)")
    model.eval()
    emitter = Emitter(in_shape)
    with torch.no_grad():
        output = model.export(emitter)
    return emitter.manifest(output, model_info or {"name": type(model).__name__}), emitter.tensors, emitter.taps


def qat_intermediates(model: nn.Module, x: torch.Tensor, taps: dict) -> dict:
    """Run the QAT model (float64, eval) on ``x`` and return ``{tensor name: int64 array}``
    for every tapped tensor, plus ``"logits"`` (the model's float output)."""
    calls: dict[nn.Module, list] = {}
    handles = []
    for module in {m for m, _ in taps.values()}:
        calls[module] = []
        handles.append(module.register_forward_hook(lambda m, args, out: calls[m].append(out)))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    result = {}
    for name, (module, call) in taps.items():
        out = calls[module][call]
        if not hasattr(out, "int"):
            raise ExportError(f"{name}: the QAT model produces a float tensor here, not a quantized one")
        result[name] = out.int().cpu().numpy().astype(np.int64)
    result["logits"] = logits.cpu().numpy()
    return result


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(run_dir, out=None, qonnx=None, must_exist: bool = True) -> tuple[Path, Path | None]:
    """Validate the export's paths before any work; returns (artifact folder, QONNX file or None).

    UsageError (one line, nothing touched) when: the run folder is missing (``must_exist``);
    ``out`` is the run folder, contains it or any of its files (symbolic links followed), is
    a file, sits under a file, is not writable, or is an existing folder that is not an
    artifact; ``qonnx`` lacks the ``.onnx`` suffix, is a folder, lies inside ``out`` or has
    no writable parent."""
    run_dir = Path(run_dir)
    if must_exist and not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist (or is not a folder); give a folder written by "
                         f"model/train_qat.py")
    given = out is not None
    if given and str(out).strip() == "":
        raise UsageError("--out is empty; give a folder")
    out = Path(out) if given else run_dir / "artifact"
    flag = "--out" if given else "artifact folder"
    out_r, run_r = out.resolve(), run_dir.resolve()
    if _inside(run_r, out_r):
        what = "the run folder" if out_r == run_r else "a folder that contains the run folder"
        raise UsageError(f"{flag} {out} is {what} {run_dir}; exporting would replace it: give a new folder for "
                         f"the artifact")
    if run_dir.is_dir():
        for entry in run_dir.iterdir():
            target = entry.resolve()
            if target == out_r:
                continue                                    # e.g. RUN/artifact itself: checked below
            if _inside(target, out_r):
                raise UsageError(f"{flag} {out} contains {entry} of the run folder (or is it); give a new folder for "
                                 f"the artifact")
    check_out_dir(out, flag)                                # not a file, nor under one; writable
    if out.exists():
        parent = out_r.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {out}: {parent} is not writable, so the artifact cannot be replaced; choose "
                             f"another folder")
        if not is_artifact_dir(out):
            raise UsageError(f"{flag} {out} exists and is not an artifact folder (only manifest.yaml + tensors.npz); "
                             f"it is never replaced: give a new folder, or remove it yourself")
    qonnx_path = None
    if qonnx is not None:
        qonnx_path = check_out_file(qonnx, ".onnx", "--qonnx")
        if _inside(qonnx_path.resolve(), out_r):
            raise UsageError(f"--qonnx {qonnx} lies inside the artifact folder {out}, which holds only the artifact; "
                             f"write it elsewhere (e.g. {run_dir / 'model.onnx'})")
    return out, qonnx_path


def export_run(run_dir, out: str | Path | None = None, qonnx: str | Path | None = None) -> Path:
    """Export the final model of a training run; writes ``out`` (default RUN_DIR/artifact)
    and, if ``qonnx`` is a path, the same model as a QONNX graph there.

    Every path is checked first (:func:`check_paths`), then the checkpoint is loaded and the
    artifact validated, and only then is anything written."""
    from .checkpoint import load_trained_model  # training-side loader (torch)

    run_dir = Path(run_dir)
    out_path, qonnx_path = check_paths(run_dir, out, qonnx)
    model, cfg, in_shape, info = load_trained_model(run_dir)
    manifest, tensors, _ = export_model(model, in_shape, info)
    path = save_artifact(out_path, manifest, tensors)            # validates before writing
    if qonnx_path is not None:
        from . import qonnx_export
        qonnx_export.export(model, in_shape, qonnx_path)
    return path


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    parser = Parser(prog="python -m model.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run folder (holds checkpoint.pt and config.yaml)")
    parser.add_argument("--out", help="artifact directory to write (default RUN_DIR/artifact); an existing one "
                                      "must be an artifact, which is replaced")
    parser.add_argument("--qonnx", metavar="FILE.onnx", help="also write the QAT model as QONNX (FINN/hls4ml "
                                                             "interchange)")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir, args.out, args.qonnx)
    except (UsageError, CheckpointError, ExportError, ArtifactError, OSError) as e:
        return fail(parser.prog, e)
    print(f"artifact written to {path}" + (f"; QONNX graph written to {args.qonnx}" if args.qonnx else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
