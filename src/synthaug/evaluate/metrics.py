"""Accuracy overall, per label group, per class and per many/medium/few-shot group, confusion matrices, and
percentile bootstrap confidence intervals for any figure computed from samples."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from synthaug.data.schema import LabelSchema
from synthaug.data.stats import ShotThresholds
from synthaug.errors import SettingError
from synthaug.utils import write_json


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor | np.ndarray, schema: LabelSchema,
    train_counts: Sequence[np.ndarray], thresholds: ShotThresholds = ShotThresholds(),
) -> dict:
    """Metrics of one classifier on a labelled test set.

    Args:
        logits: (N, Σ C_g) model outputs.
        labels: (N, G) class indices.
        schema: the label schema.
        train_counts: per group, the training count of every class (defines many/medium/few shot).
        thresholds: shot-group thresholds.

    Returns:
        ``{"accuracy": mean over groups of top-1, "groups": {group: {...}}}``; each group has
        ``accuracy``, ``per_class`` ({class: acc}), ``shots`` ({many/medium/few: mean per-class acc or None}),
        ``confusion`` (rows = true class) and ``loss`` (cross-entropy).
    """
    labels = torch.as_tensor(np.asarray(labels)).long().reshape(len(logits), -1)
    out = {"groups": {}}
    for g, (group, lg) in enumerate(zip(schema.groups, torch.split(logits.float(), schema.group_sizes, 1))):
        k, y = len(group.classes), labels[:, g]
        per_class = multiclass_accuracy(lg, y, num_classes=k, average=None).tolist()
        present = torch.bincount(y, minlength=k) > 0
        shots = {}
        for shot in ("many", "medium", "few"):
            members = [c for c in range(k) if thresholds.group(int(train_counts[g][c])) == shot and present[c]]
            shots[shot] = float(np.mean([per_class[c] for c in members])) if members else None
        out["groups"][group.name] = {
            "accuracy": float((lg.argmax(1) == y).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(lg, y)),
            "per_class": {c: (float(a) if present[i] else None) for i, (c, a) in enumerate(zip(group.classes, per_class))},
            "shots": shots,
            "shot_members": {s: [group.classes[c] for c in range(k)
                                 if thresholds.group(int(train_counts[g][c])) == s] for s in ("many", "medium", "few")},
            "confusion": multiclass_confusion_matrix(lg, y, num_classes=k).tolist(),
        }
    out["accuracy"] = float(np.mean([v["accuracy"] for v in out["groups"].values()]))
    out["loss"] = float(np.sum([v["loss"] for v in out["groups"].values()]))
    return out


def save_metrics(metrics: dict, folder: str | Path) -> None:
    """``metrics.json`` (everything) and ``per_class.csv`` (group, class, accuracy, shot) in ``folder``."""
    folder = Path(folder)
    write_json(folder / "metrics.json", metrics)
    with open(folder / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "class", "accuracy", "shot"])
        for gname, g in metrics["groups"].items():
            shot_of = {c: s for s, members in g["shot_members"].items() for c in members}
            for c, acc in g["per_class"].items():
                writer.writerow([gname, c, "" if acc is None else f"{acc:.4f}", shot_of.get(c, "")])


def bootstrap_ci(values_or_samples: np.ndarray | Sequence[np.ndarray], statistic: Callable[..., float] = np.mean,
                 n_boot: int = 1000, confidence: float = 0.95,
                 seed: int | Sequence[int] = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` (Efron & Tibshirani 1993, ch. 13).

    Args:
        values_or_samples: one array (its rows are resampled; ``statistic(rows)``), or a tuple/list of arrays,
            each resampled on its own with replacement to its own size (``statistic(rows_a, rows_b, ...)``),
            e.g. (real features, synthetic features) for a two-sample figure.
        statistic: maps the resampled array(s) to a number; NaN or None replicates are left out.
        n_boot: bootstrap replicates.
        confidence: the interval's nominal coverage, in (0, 1).
        seed: seeds numpy's generator (an int or a sequence of ints), so the same call gives the same interval.

    Returns:
        ``(lower, upper)``, or None when a sample has fewer than 2 rows or no replicate gives a number.

    Raises:
        SettingError: ``n_boot`` < 1 or ``confidence`` outside (0, 1).
    """
    if n_boot < 1:
        raise SettingError(f"bootstrap_ci: n_boot must be at least 1, got {n_boot=}.")
    if not 0 < confidence < 1:
        raise SettingError(f"bootstrap_ci: confidence must lie in (0, 1), e.g. 0.95, got {confidence=}.")
    two_sample = isinstance(values_or_samples, (tuple, list))
    samples = [np.asarray(s) for s in values_or_samples] if two_sample else [np.asarray(values_or_samples)]
    if min(len(s) for s in samples) < 2:
        return None
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_boot):
        # 1. draw every sample again with replacement, at its own size; 2. the statistic on the redraw
        value = statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples))
        if value is not None and np.isfinite(value):
            replicates.append(float(value))
    if not replicates:
        return None
    # 3. the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the replicates
    lower, upper = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lower), float(upper)
