"""Run metrics: per-epoch records to ``metrics.json`` / ``metrics.csv`` and a PNG of the curves.

All files are written atomically (temp file + ``os.replace``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

from artifact.files import atomic_write, atomic_write_text

EPOCH_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "reg", "lr", "epoch_time_s",
                "bn_folded")


def _clean(x):
    """JSON-safe: NaN/inf -> None, tuples -> lists, dataclass rows handled by callers."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2) + "\n")


def write_csv(path: str, epochs: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in epochs:
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k)) for k in EPOCH_FIELDS})
    atomic_write_text(path, buf.getvalue())


def plot(path: str, epochs: list[dict], title: str = "", fold_epoch: int | None = None) -> None:
    """Loss, accuracy, regulariser and learning-rate curves in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in epochs], "o-", ms=3, label="train")
    ax.plot(ep, [r["test_loss"] for r in epochs], "o-", ms=3, label="test")
    ax.set_title("cross-entropy loss")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, [100 * r["train_acc"] for r in epochs], "o-", ms=3, label="train")
    ax.plot(ep, [100 * r["test_acc"] for r in epochs], "o-", ms=3, label="test")
    ax.set_title("accuracy (%)")
    ax.legend()
    axes[2].plot(ep, [r["reg"] for r in epochs], "o-", ms=3)
    axes[2].set_title("orthogonality regulariser (weighted)")
    axes[3].plot(ep, [r["lr"] for r in epochs], "o-", ms=3)
    axes[3].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if fold_epoch is not None and ep and fold_epoch <= ep[-1]:
            ax.axvline(fold_epoch + 0.5, color="grey", ls="--", lw=1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=90)
    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)


def write_all(run_dir: str, record: dict, title: str = "", fold_epoch: int | None = None,
              with_plot: bool = True) -> None:
    """metrics.json (``record``), metrics.csv and (``with_plot``) curves.png (``record['epochs']``)."""
    write_json(os.path.join(run_dir, "metrics.json"), record)
    write_csv(os.path.join(run_dir, "metrics.csv"), record["epochs"])
    if with_plot and record["epochs"]:
        plot(os.path.join(run_dir, "curves.png"), record["epochs"], title, fold_epoch)
