"""Wall-clock cost of float vs QAT (Brevitas and fused quantizers) and dense vs low-rank ResNet-20.

Builds, per input size and layout, the dense ResNet-20 and one 2x low-rank (ELRT Tucker-2)
model per rank multiple, each in float and in QAT with every ``--quant-impl`` (Brevitas'
quantizers as shipped, and ``model/fastquant.py``'s fused ones), and times them in one run,
interleaved (model A step, model B step, ..., repeated) so that a busy or throttling
machine affects all alike:

* training step: forward + cross-entropy + backward + SGD step, in train mode;
* inference (``--infer``): forward in eval mode under ``torch.inference_mode``.

QAT is timed in the phase a training run spends almost all its steps in, after the
activation scales were initialised from statistics (``--phase learned``: Brevitas collects
statistics for 300 steps, then learns the power-of-two scales), and/or in that first
statistics phase (``--phase statistics``; the default digits run, 240 steps, is all of it).
Printed per model: step time, QAT step / float step of the same model, low-rank step /
dense step in the same mode beside the training-FLOPs ratio (what a compute-bound machine
would give), and the fused path's speed-up over Brevitas'. Nothing is asserted: this is a
benchmark, not a test.

    python bench/train_speed.py                                # both sizes, channels_last, both impls
    python bench/train_speed.py --sizes 32 --repeats 3 --warmup 1 --threads 1
    python bench/train_speed.py --layouts nchw channels_last --phase both --infer
    python bench/train_speed.py --device cuda                  # on a machine with a GPU
    python bench/train_speed.py --stages --compile              # per-stage float layers; torch.compile
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.build import build  # noqa: E402
from model.quant import IMPLS  # noqa: E402
from artifact.cli import Parser, UsageError, check_out_file, fail, float_range, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402

PROG = "python bench/train_speed.py"
from host import cpu_model, load_average  # noqa: E402  (bench/host.py)


def hardware(device: str, threads) -> dict:
    hw = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
          "torch_threads": threads, "python": platform.python_version(), "device": device,
          "load_average": load_average()}
    if device == "cuda":
        hw["gpu"] = torch.cuda.get_device_name()
    return hw


def make(dense: bool, shape, mode: str, reduction: float, multiple: int = 1):
    """ResNet-20 (dense, or low-rank at ``reduction`` with ranks a multiple of ``multiple``) in
    ``mode``: ``float`` or a quantizer implementation (``brevitas``, ``fused``)."""
    cfg = {"model": "resnet20", "quant": mode != "float",
           **({"quant_impl": mode} if mode != "float" else {}),
           **({"dense": True} if dense else {"flops_reduction": reduction, "rank_multiple": multiple})}
    torch.manual_seed(0)
    return build(cfg, shape, 10)


def learn_scales(model: nn.Module, x, y) -> None:
    """Put the activation quantizers in their learned-scale phase, as after Brevitas' statistics
    steps: one training step collects one batch of statistics, ``init_scale`` turns them into
    the learned power-of-two scale parameter."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
    _steps(model, x, y, train=True)()
    for m in model.modules():
        if isinstance(m, ParameterFromRuntimeStatsScaling):
            m.init_scale()


def _steps(model, x, y, train: bool):
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    return step


def interleaved(fns: list, repeats: int, warmup: int, sync=lambda: None) -> list[float]:
    """Median seconds of each function, timed in turn ``repeats`` times after ``warmup`` calls
    (``sync`` waits for queued device work, so a GPU step is timed to its end)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def measure(shape, batch: int, layout: str, impls, phases, reduction: float, multiples, repeats: int,
            warmup: int, compile_: bool, infer: bool, device: str) -> list[dict]:
    """Every (model, mode) of one input size and layout, timed interleaved; one row each."""
    dev = torch.device(device)
    x, y = torch.randn(batch, *shape, device=dev), torch.randint(0, 10, (batch,), device=dev)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    variants = [("float", None)] + [(impl, phase) for impl in impls for phase in phases]
    nets = [("dense", 1)] + [("low-rank", m) for m in multiples]
    rows, models = [], []
    for kind, multiple in nets:
        for mode, phase in variants:
            built = make(kind == "dense", shape, mode, reduction, multiple)
            model = built.model.to(dev)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            if phase == "learned":
                learn_scales(model, x, y)
            models.append(torch.compile(model) if compile_ else model)
            rows.append({"size": f"{shape[1]}x{shape[2]}x{shape[0]}", "batch": batch, "layout": layout,
                         "device": device, "compiled": compile_, "model": kind,
                         "rank_multiple": multiple if kind == "low-rank" else None,
                         "mode": "float" if mode == "float" else f"qat-{mode}", "phase": phase,
                         "flops_ratio_train": 1 / built.totals["training_reduction"],
                         "flops_ratio_infer": 1 / built.totals["inference_reduction"]})
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for phase_name in ("train", "infer") if infer else ("train",):
        times = interleaved([_steps(m, x, y, phase_name == "train") for m in models], repeats, warmup, sync)
        for row, t in zip(rows, times):
            row[f"{phase_name}_ms"] = 1e3 * t
    for phase_name in ("train", "infer") if infer else ("train",):
        key = f"{phase_name}_ms"
        by = {(r["model"], r["rank_multiple"], r["mode"], r["phase"]): r[key] for r in rows}
        for r in rows:
            own_float = by[(r["model"], r["rank_multiple"], "float", None)]
            dense = by[("dense", None, r["mode"], r["phase"])]
            r[f"{phase_name}_over_float"] = r[key] / own_float
            r[f"{phase_name}_over_dense"] = r[key] / dense
            brevitas = by.get((r["model"], r["rank_multiple"], "qat-brevitas", r["phase"]))
            if r["mode"] == "qat-fused" and brevitas is not None:
                r[f"{phase_name}_speedup_over_brevitas"] = brevitas / r[key]
    return rows


def stage_breakdown(batch: int, layout: str, repeats: int, warmup: int, reduction: float) -> list[dict]:
    """One 3x3 conv of each ResNet-20 stage (CIFAR 32x32), dense vs its Tucker-2 layer at the
    ranks rank selection gives: forward + backward time ratio beside the FLOPs ratio (float)."""
    from model.build import choose_ranks
    from model.layers import Tucker2Conv2d
    ranks = choose_ranks({"model": "resnet20", "flops_reduction": reduction}, (3, 32, 32), 10)
    out = []
    for name, c, hw in (("layer1.1.conv1", 16, 32), ("layer2.1.conv1", 32, 16), ("layer3.1.conv1", 64, 8)):
        r1, r2 = ranks[name]
        dense = nn.Conv2d(c, c, 3, padding=1, bias=False)
        low = Tucker2Conv2d(c, c, 3, (r1, r2), padding=1)
        x = torch.randn(batch, c, hw, hw)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
            dense, low = dense.to(memory_format=torch.channels_last), low.to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        td, tl = interleaved([lambda m=m: m(x).sum().backward() for m in (dense, low)], repeats, warmup)
        flops_ratio = (c * r1 * hw * hw + r1 * r2 * 9 * hw * hw + r2 * c * hw * hw) / (9 * c * c * hw * hw)
        out.append({"layer": name, "geometry": f"{c}->{c} 3x3 @{hw}x{hw}", "ranks": [r1, r2], "layout": layout,
                    "dense_ms": 1e3 * td, "lowrank_ms": 1e3 * tl, "ratio": tl / td, "flops_ratio": flops_ratio})
    return out


HEAD = (f"{'input':<9}{'batch':>6}{'thr':>4} {'layout':<14}{'model':<9}{'mul':>4} {'mode':<13}{'phase':<11}"
        f"{'train ms':>10}{'QAT/float':>10}{'/dense':>8}{'FLOPs':>7}{'vs brev':>8}")


def _row_text(r: dict) -> str:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    qat = r["mode"] != "float"
    text = (f"{r['size']:<9}{r['batch']:>6}{r['threads']:>4} {r['layout']:<14}{r['model']:<9}"
            f"{num(r['rank_multiple'], 'd'):>4} {r['mode']:<13}{r['phase'] or '-':<11}"
            f"{r['train_ms']:>10.1f}{num(r['train_over_float'] if qat else None, '.2f'):>10}"
            f"{r['train_over_dense']:>8.2f}{r['flops_ratio_train']:>7.2f}"
            f"{num(r.get('train_speedup_over_brevitas'), '.2f'):>8}")
    if "infer_ms" in r:
        text += (f"   infer {r['infer_ms']:.1f} ms ({r['infer_over_float']:.2f} of float, "
                 f"{r['infer_over_dense']:.2f} of dense)")
    return text


def main(argv=None) -> list[dict]:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int_range(4, 512), default=[32, 8],
                   help="32: 3x32x32 (CIFAR), 8: 1x8x8 (digits), other S: 1xSxS")
    p.add_argument("--batch", nargs="+", type=int_range(1, 65536), default=[128])
    p.add_argument("--layouts", nargs="+", default=["channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--threads", nargs="+", type=int_range(1, 1024), default=[torch.get_num_threads()])
    p.add_argument("--reduction", type=float_range(1.0, 1e4, lo_open=True), default=2.0,
                   help="FLOPs reduction of the low-rank model")
    p.add_argument("--rank-multiple", nargs="+", type=int_range(1, 1024), default=[1, 8],
                   help="rank selection granularity: one low-rank model per value (1: any rank)")
    p.add_argument("--quant-impl", nargs="+", choices=IMPLS, default=["brevitas", "fused"],
                   help="QAT quantizer implementations to time (beside float)")
    p.add_argument("--phase", choices=["learned", "statistics", "both"], default="learned",
                   help="QAT phase: learned scales (after Brevitas' 300 statistics steps), the statistics "
                        "steps themselves, or both")
    p.add_argument("--infer", action="store_true", help="also time inference (eval forward)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd models instead of eager")
    p.add_argument("--repeats", type=int_range(1, 10_000), default=7)
    p.add_argument("--warmup", type=int_range(0, 10_000), default=2)
    p.add_argument("--stages", action="store_true",
                   help="also time one 3x3 conv per ResNet-20 stage, dense vs Tucker-2 (float, fwd + bwd)")
    p.add_argument("--json", type=Path, help="write the results here (FILE.json)")
    args = p.parse_args(argv)
    if args.json is not None:
        try:
            check_out_file(args.json, ".json", "--json")
        except UsageError as e:
            p.error(str(e))
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available; use --device cpu")

    phases = ["learned", "statistics"] if args.phase == "both" else [args.phase]
    hw = hardware(args.device, args.threads)
    print(f"# {hw['cpu']}, {hw['logical_cpus']} logical CPUs, torch {hw['torch']}, device {args.device}"
          f"{' (' + hw['gpu'] + ')' if 'gpu' in hw else ''}, threads {args.threads}, load average "
          f"{hw['load_average']} (other jobs on the machine skew absolute times, not ratios as much)")
    print("# train step = forward + cross-entropy + backward + SGD; QAT/float: the same model's float step; "
          "/dense: the dense model's step in the same mode; FLOPs: low-rank / dense training FLOPs; "
          "vs brev: Brevitas QAT step / fused QAT step")
    print(HEAD)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            shape = (3, 32, 32) if size == 32 else (1, size, size)
            for batch in args.batch:
                for layout in args.layouts:
                    rows = measure(shape, batch, layout, args.quant_impl, phases, args.reduction,
                                   args.rank_multiple, args.repeats, args.warmup, args.compile, args.infer,
                                   args.device)
                    for r in rows:
                        r["threads"] = threads
                        results.append(r)
                        print(_row_text(r), flush=True)
    stages = []
    if args.stages:
        print("# per-stage layer (float), forward + backward, batch", args.batch[0], "threads",
              torch.get_num_threads())
        for layout in args.layouts:
            for r in stage_breakdown(args.batch[0], layout, args.repeats, args.warmup, args.reduction):
                stages.append(r)
                print(f"{r['layer']:<16}{r['geometry']:<20}ranks {r['ranks'][0]:>2}x{r['ranks'][1]:<3}{layout:<14}"
                      f"{r['dense_ms']:>8.1f}/{r['lowrank_ms']:<8.1f} ratio {r['ratio']:.2f}  FLOPs "
                      f"{r['flops_ratio']:.2f}", flush=True)
    hw["load_average_end"] = load_average()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"hardware": hw, "results": results, "stages": stages}, indent=2))
    return results


def cli(argv=None) -> int:
    """``main`` as a command: bad input is one line on stderr and exit status 2."""
    from model.ranks import RankError
    try:
        main(argv)
    except (UsageError, RankError, OSError) as e:
        return fail(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
