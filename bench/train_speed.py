"""Wall-clock cost of dense vs low-rank (ELRT Tucker-2) ResNet-20 on this machine.

Measures, in one run and interleaved (dense step, low-rank step, dense step, ...) so a
busy or throttling machine affects both alike:

* training step: forward + cross-entropy + backward + SGD step, in train mode;
* inference: forward in eval mode under ``torch.inference_mode``;

for CIFAR-size 32x32x3 and digits-size 8x8x1 synthetic inputs, in the default
NCHW layout and in channels_last, float and (``--quant``) Brevitas QAT, with ranks chosen
freely and as multiples of 8 (``--rank-multiple``). Figures are
printed as low-rank / dense time ratios next to the FLOPs ratio (a ratio below 1
means low-rank is faster; the FLOPs ratio is what a perfectly compute-bound machine
would give). Nothing is asserted: this is a benchmark, not a test.

    python bench/train_speed.py                       # float, both sizes, both layouts
    python bench/train_speed.py --quant --sizes 32    # Brevitas QAT too
    python bench/train_speed.py --threads 1 2 --batch 32 128 --compile --stages
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
from artifact.cli import Parser, UsageError, check_out_file, fail, float_range, int_range  # noqa: E402
from artifact.files import atomic_write_text  # noqa: E402

PROG = "python bench/train_speed.py"
from host import cpu_model, load_average  # noqa: E402  (bench/host.py)


def hardware() -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average": load_average()}


def make(dense: bool, shape, quant: bool, reduction: float, multiple: int = 1):
    cfg = {"model": "resnet20", "quant": quant,
           **({"dense": True} if dense else {"flops_reduction": reduction, "rank_multiple": multiple})}
    torch.manual_seed(0)
    return build(cfg, shape, 10)


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


def interleaved(fns: list, repeats: int, warmup: int) -> list[float]:
    """Median seconds of each function, timed in turn ``repeats`` times after ``warmup`` calls."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def measure(shape, batch: int, layout: str, quant: bool, reduction: float, repeats: int, warmup: int,
            compile_: bool, multiples=(1,)) -> list[dict]:
    """The dense model and one low-rank model per rank multiple, timed interleaved."""
    built = [make(True, shape, quant, reduction)] + [make(False, shape, quant, reduction, m) for m in multiples]
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    models = [b.model for b in built]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        models = [m.to(memory_format=torch.channels_last) for m in models]
    if compile_:
        models = [torch.compile(m) for m in models]
    outs = [{"size": f"{shape[1]}x{shape[2]}x{shape[0]}", "batch": batch, "layout": layout,
             "mode": "qat" if quant else "float", "compiled": compile_, "rank_multiple": m,
             "flops_ratio_infer": 1 / b.totals["inference_reduction"],
             "flops_ratio_train": 1 / b.totals["training_reduction"]} for m, b in zip(multiples, built[1:])]
    for phase in ("train", "infer"):
        times = interleaved([_steps(m, x, y, phase == "train") for m in models], repeats, warmup)
        for out, tl in zip(outs, times[1:]):
            out[f"{phase}_dense_ms"], out[f"{phase}_lowrank_ms"] = 1e3 * times[0], 1e3 * tl
            out[f"{phase}_ratio"] = tl / times[0]
    return outs


def stage_breakdown(batch: int, layout: str, repeats: int, warmup: int, reduction: float) -> list[dict]:
    """One 3x3 conv of each ResNet-20 stage (CIFAR 32x32), dense vs its Tucker-2 layer at the
    ranks rank selection gives: forward + backward time ratio beside the FLOPs ratio."""
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


def main(argv=None) -> list[dict]:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int_range(4, 512), default=[32, 8],
                   help="32: 3x32x32 (CIFAR), 8: 1x8x8 (digits), other S: 1xSxS")
    p.add_argument("--batch", nargs="+", type=int_range(1, 65536), default=[128])
    p.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--threads", nargs="+", type=int_range(1, 1024), default=[torch.get_num_threads()])
    p.add_argument("--reduction", type=float_range(1.0, 1e4, lo_open=True), default=2.0,
                   help="FLOPs reduction of the low-rank model")
    p.add_argument("--rank-multiple", nargs="+", type=int_range(1, 1024), default=[1, 8],
                   help="rank selection granularity: one low-rank model per value (1: any rank)")
    p.add_argument("--quant", action="store_true", help="also measure Brevitas QAT models")
    p.add_argument("--quant-only", action="store_true")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    p.add_argument("--repeats", type=int_range(1, 10_000), default=7)
    p.add_argument("--warmup", type=int_range(0, 10_000), default=2)
    p.add_argument("--stages", action="store_true",
                   help="also time one 3x3 conv per ResNet-20 stage, dense vs Tucker-2 (fwd + bwd)")
    p.add_argument("--json", type=Path, help="write the results here (FILE.json)")
    args = p.parse_args(argv)
    if args.json is not None:
        try:
            check_out_file(args.json, ".json", "--json")
        except UsageError as e:
            p.error(str(e))

    modes = ([] if args.quant_only else [False]) + ([True] if args.quant or args.quant_only else [])
    results = []
    hw = hardware()
    hw["torch_threads"] = args.threads
    print(f"# {hw['cpu']}, {hw['logical_cpus']} logical CPUs, torch {hw['torch']}, threads {args.threads}, "
          f"load average {hw['load_average']} (other jobs on the machine skew absolute times, not ratios as much)")
    print("# ratio = low-rank time / dense time (< 1: low-rank faster); FLOPs = low-rank / dense FLOPs")
    head = (f"{'mode':<6}{'input':<9}{'batch':>6}{'thr':>4} {'layout':<14}{'cmp':<4}{'mul':>3}"
            f"{'train ms d/lr':>16}{'ratio':>7}{'FLOPs':>7}{'infer ms d/lr':>16}{'ratio':>7}{'FLOPs':>7}")
    print(head)
    for quant in modes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for size in args.sizes:
                shape = (3, 32, 32) if size == 32 else (1, size, size)
                for batch in args.batch:
                    for layout in args.layouts:
                        for comp in ([False, True] if args.compile else [False]):
                            try:
                                rs = measure(shape, batch, layout, quant, args.reduction, args.repeats,
                                             args.warmup, comp, args.rank_multiple)
                            except Exception as e:  # e.g. torch.compile unavailable
                                print(f"# {size} {layout} compile={comp}: failed: {type(e).__name__}: {e}")
                                continue
                            for r in rs:
                                r["threads"] = threads
                                results.append(r)
                                print(f"{r['mode']:<6}{r['size']:<9}{batch:>6}{threads:>4} {layout:<14}"
                                      f"{'yes' if comp else 'no':<4}{r['rank_multiple']:>3}"
                                      f"{r['train_dense_ms']:>8.1f}/{r['train_lowrank_ms']:<7.1f}"
                                      f"{r['train_ratio']:>7.2f}{r['flops_ratio_train']:>7.2f}"
                                      f"{r['infer_dense_ms']:>8.1f}/{r['infer_lowrank_ms']:<7.1f}"
                                      f"{r['infer_ratio']:>7.2f}{r['flops_ratio_infer']:>7.2f}", flush=True)
    stages = []
    if args.stages:
        print("# per-stage layer, forward + backward, batch", args.batch[0], "threads", torch.get_num_threads())
        for layout in args.layouts:
            for r in stage_breakdown(args.batch[0], layout, args.repeats, args.warmup, args.reduction):
                stages.append(r)
                print(f"{r['layer']:<16}{r['geometry']:<20}ranks {r['ranks'][0]:>2}x{r['ranks'][1]:<3}{layout:<14}"
                      f"{r['dense_ms']:>8.1f}/{r['lowrank_ms']:<8.1f} ratio {r['ratio']:.2f}  FLOPs "
                      f"{r['flops_ratio']:.2f}", flush=True)
    hw["load_average_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
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
