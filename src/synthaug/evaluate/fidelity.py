"""Fidelity of a synthetic set against real images: FID, KID (torchmetrics) and improved precision/recall,
overall and per class, on the features of a named extractor (:mod:`synthaug.evaluate.features`).

Features are extracted once per image set and handed to torchmetrics through a ``feature=`` module that
returns them unchanged, so FID, KID, precision/recall and the memorisation check share one forward pass.
Every result carries the extractor's label; results of different extractors are never mixed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from synthaug.evaluate.precision_recall import precision_recall

FIDELITY_COLUMNS = ["class", "n_real", "n_synthetic", "fid", "kid_mean", "kid_std", "precision", "recall"]


class PrecomputedFeatures(nn.Module):
    """The ``feature=`` module torchmetrics calls on each ``update``: the batch *is* the (N, d) features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int = 100, kid_subsets: int = 50,
            seed: int = 0) -> dict[str, float | int | None]:
    """FID and KID (mean, std over random subsets) between two (N, d) feature sets.

    The KID subset size is lowered to the smaller set's size. KID is an unbiased MMD² estimate, so it scatters
    around 0 (slightly negative values included) for samples of one distribution. Sets of fewer than 2 samples
    give None.
    """
    n = min(len(real), len(fake))
    if n < 2:
        return {"fid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None}
    d = real.shape[1]
    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(d))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    subset = min(kid_subset_size, n)
    kid = KernelInceptionDistance(feature=PrecomputedFeatures(d), subset_size=subset, subsets=kid_subsets)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": max(0.0, float(fid.compute())), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": subset}


def fidelity(real: torch.Tensor, real_labels: np.ndarray, fake: torch.Tensor, fake_labels: np.ndarray,
             class_names: Sequence[str], *, extractor: str, k: int = 3, kid_subset_size: int = 100,
             kid_subsets: int = 50, seed: int = 0) -> dict:
    """FID, KID and precision/recall of ``fake`` against ``real`` features, overall and per class.

    Args:
        real, fake: (N, d) and (M, d) features from the same extractor.
        real_labels, fake_labels: class index of every row.
        class_names: names of the classes, by index.
        extractor: the extractor's label, stored with the numbers.

    Returns:
        ``{"extractor", "overall": {...}, "per_class": {class: {...}}}``, each entry with the sample counts,
        ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall`` (None where a class has < 2 images).
    """
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)

    def one(r: torch.Tensor, f: torch.Tensor) -> dict:
        return {"n_real": len(r), "n_synthetic": len(f),
                **fid_kid(r, f, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed),
                **precision_recall(r, f, k=k)}

    per_class = {}
    for c, name in enumerate(class_names):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(f):
            per_class[name] = one(r, f)
    return {"extractor": extractor, "overall": one(real, fake), "per_class": per_class}


def write_fidelity_csv(result: dict, path: str | Path) -> None:
    """One row per class plus ``(all)``; the extractor is in the file name's caller and in every row."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["extractor", *FIDELITY_COLUMNS])
        rows = [("(all)", result["overall"]), *result["per_class"].items()]
        for name, m in rows:
            writer.writerow([result["extractor"], name, m["n_real"], m["n_synthetic"],
                             *("" if m[c] is None else f"{m[c]:.6g}" for c in FIDELITY_COLUMNS[3:])])
