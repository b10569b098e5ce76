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
    from synthaug.report.results import run_config, seed_results

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


# ------------------------------------------------------------------------------------------ evaluation pictures
MAX_LABELLED_CLASSES = 50  # beyond this many classes, per-class pictures show the top and bottom k or aggregate


def shown_classes(counts, top_k: int = 10) -> list[int]:
    """Class indices head → tail by count; beyond :data:`MAX_LABELLED_CLASSES`, the ``top_k`` largest and
    ``top_k`` smallest only."""
    order = np.argsort(-np.asarray(counts), kind="stable").tolist()
    return order if len(order) <= MAX_LABELLED_CLASSES else order[:top_k] + order[-top_k:]


def real_vs_synthetic_grid(real, synthetic, path: Path, *, top_k: int = 10, per_side: int = 6,
                           min_size: int = 32) -> Path:
    """One row per class (head → tail; top and bottom ``top_k`` beyond 50 classes): ``per_side`` real training
    images, a gap, then ``per_side`` synthetic images of the class (blank where a class has fewer)."""
    from PIL import Image, ImageDraw

    counts = real.class_counts()
    rows = shown_classes(counts, top_k)
    w, h = real.image(0).size
    scale = max(1, -(-min_size // max(w, h)))
    cw, ch, gap, label_w = w * scale, h * scale, 12, 60
    canvas = Image.new("RGB", (label_w + 2 * per_side * cw + gap, len(rows) * (ch + 2) + 14), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 1), "real (training)", fill="black")
    draw.text((label_w + per_side * cw + gap, 1), "synthetic", fill="black")
    classes = real.schema.groups[0].classes
    for r, c in enumerate(rows):
        y = 14 + r * (ch + 2)
        draw.text((2, y + ch // 2 - 5), f"{classes[c]} ({counts[c]})"[:10], fill="black")
        for side, images in enumerate((real, synthetic)):
            idx = np.flatnonzero(images.labels[:, 0] == c)[:per_side]
            for k, i in enumerate(idx):
                im = images.image(int(i)).convert("RGB").resize((cw, ch), Image.NEAREST)
                canvas.paste(im, (label_w + side * (per_side * cw + gap) + k * cw, y))
    canvas.save(path)
    return Path(path)


def class_counts_stacked(classes, real, synthetic, path: Path) -> Path:
    """Stacked bars per class (head → tail): real training images and the synthetic images added; tick labels
    only up to 50 classes (beyond, the bars show the profile)."""
    plt = _pyplot()
    real, synthetic = np.asarray(real), np.asarray(synthetic)
    order = np.argsort(-real, kind="stable")
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.45 * len(classes))), 3.4))
    ax.bar(x, real[order], color="#4c72b0", label="real")
    ax.bar(x, synthetic[order], bottom=real[order], color="#dd8452", label="synthetic")
    if len(classes) <= MAX_LABELLED_CLASSES:
        ax.set_xticks(x, [classes[i] for i in order], fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(classes)} classes, head → tail")
    ax.set_ylabel("training images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def per_class_comparison(classes, counts, series: dict, path: Path, *, shot_of: dict | None = None,
                         top_k: int = 10, ylabel: str = "test accuracy (%)") -> Path:
    """Grouped bars of a per-class value (fractions, shown in %) for a few named series (e.g. baseline vs
    augmented), classes head → tail. Beyond 50 classes: the mean per many/medium/few-shot group when
    ``shot_of`` (class → group) is given, else the top and bottom ``top_k`` classes."""
    plt = _pyplot()
    counts = np.asarray(counts)
    names = list(series)

    def value(name, c):
        v = series[name].get(classes[c])
        return np.nan if v is None else 100 * v

    if len(classes) > MAX_LABELLED_CLASSES and shot_of:
        groups = [g for g in ("many", "medium", "few") if any(s == g for s in shot_of.values())]
        labels = groups
        data = {n: [np.nanmean([value(n, c) for c in range(len(classes)) if shot_of.get(classes[c]) == g])
                    for g in groups] for n in names}
    else:
        shown = shown_classes(counts, top_k)
        labels = [f"{classes[c]}\n({counts[c]})" for c in shown]
        data = {n: [value(n, c) for c in shown] for n in names}
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(labels) * max(1, len(names) / 2))), 3.4))
    for k, n in enumerate(names):
        ax.bar(np.arange(len(labels)) + k * width, data[n], width, label=n)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def confusion_plot(confusion, classes, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class); class names on the axes up to 50 classes."""
    plt = _pyplot()
    m = np.asarray(confusion, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    size = 3.2 if n <= 10 else min(9, 0.16 * n + 2) if n <= MAX_LABELLED_CLASSES else 6
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), classes, fontsize=6, rotation=90)
        ax.set_yticks(range(n), classes, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def replacement_curve(percents, accuracy, accuracy_std, path: Path, title: str) -> Path:
    """Test accuracy (%) against the share of real training images replaced by synthetic ones."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(percents, 100 * np.asarray(accuracy), yerr=100 * np.asarray(accuracy_std), marker="o", capsize=3)
    ax.set_xlabel("real training images replaced by synthetic (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def fidelity_per_class_plot(classes, counts, fid: dict, reference: dict, path: Path, extractor: str,
                            *, top_k: int = 10) -> Path:
    """Per-class FID of the synthetic set beside that of the real training images (both against the real test
    images), classes head → tail (top and bottom ``top_k`` beyond 50)."""
    plt = _pyplot()
    shown = [c for c in shown_classes(counts, top_k) if classes[c] in fid]
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(shown))), 3.2))
    get = lambda d, c: np.nan if d.get(classes[c], {}).get("fid") is None else d[classes[c]]["fid"]  # noqa: E731
    ax.bar(x - 0.2, [get(fid, c) for c in shown], 0.4, label="synthetic vs real test")
    ax.bar(x + 0.2, [get(reference, c) for c in shown], 0.4, label="real training vs real test")
    ax.set_xticks(x, [f"{classes[c]}\n({counts[c]})" for c in shown], fontsize=8)
    ax.set_ylabel(f"FID ({extractor.split(':')[0]} features)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
