"""Plots rendered from result files: per-class accuracy per arm, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.utils import read_json


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_accuracy_plot(run_dir: Path, path: Path) -> Path:
    """Grouped bars: mean per-class test accuracy (first label group) of every arm, classes head → tail."""
    from synthaug.report.tables import run_config, seed_results

    plt = _pyplot()
    cfg = run_config(run_dir)
    counts_by_class = read_json(Path(run_dir) / "data" / "stats.json")["groups"][0]["counts"]
    classes = list(counts_by_class)
    counts = np.asarray([counts_by_class[c] for c in classes])
    arms = []
    for arm in cfg.arms:
        accs = []
        for m in seed_results(run_dir, arm.name, cfg.seeds):
            pc = next(iter(m["groups"].values()))["per_class"]
            accs.append([np.nan if pc[c] is None else pc[c] for c in classes])
        if accs:
            arms.append((arm.name, np.nanmean(np.asarray(accs, dtype=float), 0)))
    order = np.argsort(-counts, kind="stable")
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * max(1, len(arms) / 3)), 3.6))
    for k, (name, acc) in enumerate(arms):
        ax.bar(np.arange(len(classes)) + k * width, 100 * acc[order], width, label=name)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2,
                  [f"{classes[i]}\n({counts[i]})" for i in order], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("class (training images)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
