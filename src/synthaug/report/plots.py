"""Plots rendered from result files: per-class accuracy per arm, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthaug.utils import read_json

if TYPE_CHECKING:
    from synthaug.experiment import Experiment


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_accuracy_plot(exp: "Experiment", path: Path) -> Path:
    """Grouped bars: mean per-class test accuracy (first label group) of every arm, classes head → tail."""
    plt = _pyplot()
    classes = exp.splits.schema.groups[0].classes
    arms = []
    for arm in exp.cfg.arms:
        accs = []
        for seed in exp.cfg.seeds:
            p = exp.dir / "train" / arm.name / f"seed{seed}" / "metrics.json"
            if p.is_file():
                pc = next(iter(read_json(p)["groups"].values()))["per_class"]
                accs.append([np.nan if pc[c] is None else pc[c] for c in classes])
        if accs:
            arms.append((arm.name, np.nanmean(np.asarray(accs, dtype=float), 0)))
    order = np.argsort(-exp.train_counts[0], kind="stable")
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * max(1, len(arms) / 3)), 3.6))
    for k, (name, acc) in enumerate(arms):
        ax.bar(np.arange(len(classes)) + k * width, 100 * acc[order], width, label=name)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2,
                  [f"{classes[i]}\n({exp.train_counts[0][i]})" for i in order], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("class (training images)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves_plot(curves_csv: Path, path: Path) -> Path:
    """Loss and accuracy per epoch (train and, when present, validation)."""
    import csv

    plt = _pyplot()
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
