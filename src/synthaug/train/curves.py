"""Training curves: one row per epoch (epoch, phase, lr, train/val loss and accuracy) as CSV and a plot."""

from __future__ import annotations

import csv
from pathlib import Path


def write_curves(path: Path, curves: list[dict]) -> None:
    if not curves:
        return
    keys = list(dict.fromkeys(k for row in curves for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(curves)


def training_curves_plot(curves_csv: Path, path: Path) -> Path:
    """Loss and accuracy per epoch (train and, when present, validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(curves_csv) as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    epochs = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    for key, ax in (("loss", a1), ("acc", a2)):
        for split in ("train", "val"):
            if f"{split}_{key}" in rows[0]:
                ax.plot(epochs, [r[f"{split}_{key}"] for r in rows], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
