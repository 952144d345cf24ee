"""ELRT's first experiment on the data at hand: accuracy of dense vs low-rank training.

Variants (ResNet-20 by default), each trained from scratch over several seeds with
``model.train_qat.train(cfg)``:

    dense            the dense baseline
    elrt-2x / -3x    Tucker-2 at 2x / 3x fewer inference FLOPs, DSO regulariser (ELRT)
    elrt-2x-noreg    2x, no regulariser
    so/mc/srip-2x    2x with the other orthogonality regularisers (Bansal et al. 2018)

Prints a table (mean +- sample std of the final test accuracy, FLOPs reduction,
parameters), writes ``accuracy.json`` and ``accuracy.png`` into ``--out``.

    python bench/accuracy.py                                   # digits, affordable default
    python bench/accuracy.py --data cifar10 --data-dir ~/cifar-10-batches-py --epochs 200 --quant

Every option, the ``--out`` folder, the ``--include`` files and each variant's training
configuration are checked before the first run: bad input is one line
``python bench/accuracy.py: error: ...`` and exit status 2, with nothing written. A run
whose loss becomes NaN/inf (``model.train_qat.TrainingDiverged``) is counted as diverged.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from artifact.cli import (Parser, UsageError, check_in_file, check_out_dir, fail, float_range,  # noqa: E402
                          int_range, nonneg_int, positive_int)
from artifact.files import atomic_write_text  # noqa: E402

PROG = "python bench/accuracy.py"

VARIANTS = {
    "dense": {"dense": True, "regularizer": "none"},
    "elrt-2x": {"flops_reduction": 2.0, "regularizer": "dso"},
    "elrt-3x": {"flops_reduction": 3.0, "regularizer": "dso"},
    "elrt-2x-noreg": {"flops_reduction": 2.0, "regularizer": "none"},
    "so-2x": {"flops_reduction": 2.0, "regularizer": "so"},
    "mc-2x": {"flops_reduction": 2.0, "regularizer": "mc"},
    "srip-2x": {"flops_reduction": 2.0, "regularizer": "srip"},
}


def summarize(name: str, runs: list[dict]) -> dict:
    """Mean / sample std over the runs that finished; diverged runs (NaN loss) are counted apart."""
    done = [r for r in runs if "test_acc" in r]
    accs = [r["test_acc"] for r in done]
    t = done[0].get("totals", {}) if done else {}
    nan = float("nan")
    return {"variant": name, "n": len(accs), "diverged": len(runs) - len(done), "test_acc": accs,
            "errors": [r["error"] for r in runs if "error" in r],
            "mean": statistics.fmean(accs) if accs else nan,
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "min": min(accs, default=nan), "max": max(accs, default=nan),
            "inference_reduction": t.get("inference_reduction"), "training_reduction": t.get("training_reduction"),
            "params": t.get("params"), "wall_s": sum(r.get("wall_time_s", 0.0) for r in runs)}


def plot(rows: list[dict], path: Path, title: str) -> None:
    rows = [r for r in rows if r["n"] or r["diverged"]]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["variant"] for r in rows]
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["test_acc"]), [100 * a for a in r["test_acc"]], color="0.6", s=12, zorder=2)
    ax.errorbar(range(len(rows)), [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows],
                fmt="o", color="C0", capsize=4, zorder=3)
    ax.set_xticks(range(len(rows)), [f"{n}\n{r['inference_reduction']:.2f}x" if r["inference_reduction"] else n
                                     for n, r in zip(names, rows)], fontsize=8)
    for i, r in enumerate(rows):
        if r["diverged"]:
            ax.annotate(f"{r['diverged']} diverged", (i, 100 * (r["min"] if r["n"] else 50)), fontsize=7,
                        xytext=(0, -14), textcoords="offset points", ha="center", color="C3")
    ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _included_rows(paths) -> list[dict]:
    """The result rows of earlier accuracy.json files (UsageError if one is missing or not one)."""
    rows = []
    for path in paths:
        check_in_file(path, "--include")
        try:
            results = json.loads(Path(path).read_text())["results"]
            if not isinstance(results, list) or not all(isinstance(r, dict) and "variant" in r for r in results):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UsageError(f"--include {path} is not an accuracy.json written by this bench") from None
        rows += results
    return rows


def main(argv=None) -> list[dict]:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=["digits", "cifar10", "synthetic"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int_range(1, 100_000), default=5)
    p.add_argument("--seeds", type=int_range(1, 1000), default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--quant", action="store_true", help="Brevitas QAT (default: float, faster)")
    p.add_argument("--reg-weight", type=float_range(0.0, 1e4), default=None, help="lambda (default: train_qat's)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=float_range(0.0, 1e3, lo_open=True), default=None)
    p.add_argument("--threads", type=nonneg_int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/accuracy"))
    p.add_argument("--include", type=Path, nargs="*", default=[],
                   help="accuracy.json files of earlier runs (same settings) to table and plot with these "
                        "variants, e.g. to finish an interrupted sweep")
    args = p.parse_args(argv)

    from model import config as config_mod
    from model.train_qat import TrainingDiverged, train

    # --- everything is checked before the first run
    check_out_dir(args.out, "--out")
    for name in ("accuracy.json", "accuracy.png"):
        if (args.out / name).is_dir():
            raise UsageError(f"--out {args.out}: {args.out / name} is a folder; choose another --out")
    rows = _included_rows(args.include)
    common = {"model": args.model, "data": args.data, "epochs": args.epochs, "quant": args.quant,
              "export": False, "threads": args.threads}
    if args.data_dir:
        common["data_dir"] = os.path.expanduser(args.data_dir)
    for key in ("reg_weight", "batch_size", "lr"):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    for name in args.variants:
        config_mod.resolve({**common, **VARIANTS[name]})

    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = tempfile.mkdtemp(prefix="elrt-acc-")
    common["out_dir"] = runs_dir
    t0 = time.time()
    for name in args.variants:
        runs = []
        for seed in range(args.seeds):
            cfg = {**common, **VARIANTS[name], "seed": seed, "run_name": f"{name}-s{seed}"}
            print(f"== {name} seed {seed}", flush=True)
            try:
                runs.append(train(cfg))
                print(f"== {name} seed {seed}: test_acc {runs[-1]['test_acc']:.4f}", flush=True)
            except TrainingDiverged as e:        # the loss became NaN/inf: a diverged run
                runs.append({"error": f"seed {seed}: {e}"})
                print(f"== {name} seed {seed}: diverged ({e})", flush=True)
        rows.append(summarize(name, runs))

    title = (f"{args.model} on {args.data}, {'QAT' if args.quant else 'float'}, {args.epochs} epochs, "
             f"{args.seeds} seeds (mean +- std)")
    print("\n" + title)
    print(f"{'variant':<15}{'FLOPs red.':>11}{'params':>10}{'test acc %':>18}{'min..max':>16}{'diverged':>10}")
    for r in rows:
        red = f"{r['inference_reduction']:.2f}x" if r["inference_reduction"] else "-"
        print(f"{r['variant']:<15}{red:>11}{r['params'] or 0:>10,}{100 * r['mean']:>11.2f} +- {100 * r['std']:<4.2f}"
              f"{100 * r['min']:>8.2f}..{100 * r['max']:<6.2f}{r['diverged']:>7}/{r['n'] + r['diverged']}")
    print(f"total wall time {time.time() - t0:.0f} s; runs in {runs_dir}")
    atomic_write_text(args.out / "accuracy.json", json.dumps(
        {"config": {**common, "out_dir": None, "seeds": args.seeds}, "title": title, "results": rows}, indent=2))
    plot(rows, args.out / "accuracy.png", title)
    print(f"wrote {args.out / 'accuracy.json'} and {args.out / 'accuracy.png'}")
    return rows


def cli(argv=None) -> int:
    """``main`` as a command: bad input is one line on stderr and exit status 2."""
    from model.data import DataError
    from model.ranks import RankError
    try:
        main(argv)
    except (UsageError, DataError, RankError, OSError) as e:
        return fail(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
