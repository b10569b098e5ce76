"""Accuracy overall, per label group, per class and per many/medium/few-shot group, and confusion matrices."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from synthaug.data.schema import LabelSchema
from synthaug.data.stats import ShotThresholds
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
