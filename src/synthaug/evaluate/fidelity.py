"""Fidelity of a synthetic set against real images, overall and per class, on the features of a named extractor
(:mod:`synthaug.evaluate.features`):

- the Fréchet distance (FID on inception features, FD-DINOv2 on dinov2 ones, Stein et al., NeurIPS 2023);
- KID (torchmetrics), the mean and std over random subsets;
- CMMD (Jayasumana et al., CVPR 2024) on clip features: an RBF-kernel MMD of unit-norm CLIP embeddings;
- improved precision/recall, density and coverage (:mod:`synthaug.evaluate.precision_recall`);
- per class, percentile bootstrap intervals of each figure (:func:`synthaug.evaluate.metrics.bootstrap_ci`).

Features are extracted once per image set, so every figure and the memorisation check share one forward pass.
Every result carries the extractor's label; results of different extractors are never mixed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from synthaug.evaluate.metrics import bootstrap_ci
from synthaug.evaluate.precision_recall import manifold_scores

# per class, each of these figures gets <name>_lower and <name>_upper (a bootstrap interval)
WITH_INTERVALS = ("fid", "cmmd", "precision", "recall", "density", "coverage")
FIDELITY_COLUMNS = ["class", "n_real", "n_synthetic", "fid", "fid_lower", "fid_upper", "kid_mean", "kid_std",
                    "cmmd", "cmmd_lower", "cmmd_upper", *(f"{name}{part}" for name in WITH_INTERVALS[2:]
                                                           for part in ("", "_lower", "_upper"))]
CMMD_SIGMA = 10.0  # the RBF bandwidth of Jayasumana et al. for unit-norm CLIP embeddings
CMMD_SCALE = 1000.0  # their scale, for readable numbers


class PrecomputedFeatures(nn.Module):
    """The ``feature=`` module torchmetrics calls on each ``update``: the batch *is* the (N, d) features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, d) feature sets (Heusel et al. 2017), exact and fast
    for sets of any size: ``|μ_r - μ_f|² + tr Σ_r + tr Σ_f - 2 tr (Σ_r Σ_f)^½``."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    n, m = len(real), len(fake)
    a, b = real - real.mean(0), fake - fake.mean(0)
    # 1. with Σ_r = AᵀA/(n-1), Σ_f = BᵀB/(m-1): the eigenvalues of Σ_r Σ_f are those of (ABᵀ)(ABᵀ)ᵀ/((n-1)(m-1)),
    #    so tr (Σ_r Σ_f)^½ is the sum of ABᵀ's singular values over √((n-1)(m-1))
    # 2. ABᵀ = Q_a R_a R_bᵀ Q_bᵀ has the singular values of R_a R_bᵀ (at most d × d)
    r_a, r_b = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
    cross = np.linalg.svd(r_a @ r_b.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    mean_term = float(((real.mean(0) - fake.mean(0)) ** 2).sum())
    return max(0.0, mean_term + (a ** 2).sum() / (n - 1) + (b ** 2).sum() / (m - 1) - 2 * cross)


def mmd_rbf(x: np.ndarray, y: np.ndarray, *, sigma: float,
            estimator: Literal["biased", "unbiased"] = "biased") -> float:
    """Squared MMD with the Gaussian kernel k(a, b) = exp(-|a - b|² / (2σ²)) (Gretton et al., JMLR 2012).

    Args:
        estimator: ``biased`` (their Eq. 5: every kernel mean over all pairs, self-pairs included; what the
            CMMD reference implementation computes) or ``unbiased`` (Eq. 3: self-pairs left out of the
            within-set means; needs 2 rows per set).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    gamma = 1.0 / (2.0 * sigma ** 2)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.exp(-gamma * np.maximum(sq, 0.0))

    def within(a: np.ndarray) -> float:
        k = kernel(a, a)
        if estimator == "biased":
            return float(k.mean())
        return float((k.sum() - np.trace(k)) / (len(a) * (len(a) - 1)))

    return within(x) + within(y) - 2.0 * float(kernel(x, y).mean())


def cmmd(real: np.ndarray, fake: np.ndarray, *, estimator: Literal["biased", "unbiased"] = "biased") -> float:
    """CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024): 1,000 × the RBF-kernel (σ = 10) squared MMD of
    the CLIP embeddings scaled to unit norm, by default with the estimator of their reference code."""
    real, fake = (np.asarray(e, dtype=np.float64) for e in (real, fake))
    real, fake = (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12) for e in (real, fake))
    return CMMD_SCALE * mmd_rbf(real, fake, sigma=CMMD_SIGMA, estimator=estimator)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int = 100, kid_subsets: int = 50,
            seed: int = 0) -> dict[str, float | int | None]:
    """The Fréchet distance (``fid``) and KID (mean, std over random subsets) between two (N, d) feature sets.

    The KID subset size is lowered to the smaller set's size. KID is an unbiased MMD² estimate, so it scatters
    around 0 (slightly negative values included) for samples of one distribution. Sets of fewer than 2 samples
    give None.
    """
    n = min(len(real), len(fake))
    if n < 2:
        return {"fid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None}
    subset = min(kid_subset_size, n)
    kid = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subset_size=subset,
                                  subsets=kid_subsets)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": frechet_distance(real.numpy(), fake.numpy()), "kid_mean": float(kid_mean),
            "kid_std": float(kid_std), "kid_subset_size": subset}


def fidelity(real: torch.Tensor, real_labels: np.ndarray, fake: torch.Tensor, fake_labels: np.ndarray,
             class_names: Sequence[str], *, extractor: str, k: int = 3, density_k: int = 5,
             kid_subset_size: int = 100, kid_subsets: int = 50, with_cmmd: bool | None = None, n_boot: int = 200,
             confidence: float = 0.95, seed: int = 0) -> dict:
    """Every fidelity figure of ``fake`` against ``real`` features, overall and per class.

    Args:
        real, fake: (N, d) and (M, d) features from the same extractor.
        real_labels, fake_labels: class index of every row.
        class_names: names of the classes, by index.
        extractor: the extractor's label (``name:source``), stored with the numbers.
        k: the k-NN of precision/recall; density_k: that of density/coverage (each lowered for small sets).
        with_cmmd: compute CMMD; None: when the extractor is ``clip`` (CMMD is defined on CLIP embeddings).
        n_boot, confidence: the per-class bootstrap intervals. FID and CMMD resample both sets; precision and
            density resample the synthetic samples, recall and coverage the real ones, the other set held
            fixed (redrawn duplicates would shrink the k-NN radii).
        seed: KID's subsets and the bootstrap draws.

    Returns:
        ``{"extractor", "bootstrap": {...}, "overall": {...}, "per_class": {class: {...}}}``; each entry has the
        sample counts, ``fid``, ``kid_mean``, ``kid_std``, ``cmmd``, ``precision``, ``recall``, ``density``,
        ``coverage`` (None where a class has < 2 images, ``cmmd`` None when not computed), and per class
        ``<figure>_lower`` / ``<figure>_upper`` for each figure in :data:`WITH_INTERVALS`.
    """
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    if with_cmmd is None:
        with_cmmd = extractor.split(":", 1)[0] == "clip"

    def one(r: torch.Tensor, f: torch.Tensor, ci_seed: list[int] | None) -> dict:
        out = {"n_real": len(r), "n_synthetic": len(f),
               **fid_kid(r, f, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed)}
        out["cmmd"] = cmmd(r.numpy(), f.numpy()) if with_cmmd and min(len(r), len(f)) >= 2 else None
        scores = manifold_scores(r, f, k=k, density_k=density_k)
        for name in WITH_INTERVALS[2:]:
            out[name] = None if scores is None else float(scores[name].mean())
        out["k"] = min(k, len(r) - 1, len(f) - 1) if scores is None else scores["k"]
        out["density_k"] = min(density_k, len(r) - 1) if scores is None else scores["density_k"]
        if ci_seed is None:
            return out
        two_sample = {"fid": frechet_distance, "cmmd": cmmd}
        for j, name in enumerate(WITH_INTERVALS):
            interval = None
            if out[name] is not None and name in two_sample:
                interval = bootstrap_ci((r.numpy(), f.numpy()), two_sample[name], n_boot, confidence, [*ci_seed, j])
            elif out[name] is not None:
                interval = bootstrap_ci(scores[name], np.mean, n_boot, confidence, [*ci_seed, j])
            out[f"{name}_lower"], out[f"{name}_upper"] = interval or (None, None)
        return out

    real, fake = real.double().cpu(), fake.double().cpu()
    per_class = {}
    for c, name in enumerate(class_names):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(f):
            per_class[name] = one(r, f, [seed, c])
    return {"extractor": extractor,
            "bootstrap": {"n_boot": n_boot, "confidence": confidence, "seed": seed, "method": "percentile"},
            "overall": one(real, fake, None), "per_class": per_class}


def write_fidelity_csv(result: dict, path: str | Path) -> None:
    """One row per class plus ``(all)``, the extractor's label in every row; empty cells where a figure is None
    or not computed (the ``(all)`` row has no intervals)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["extractor", *FIDELITY_COLUMNS])
        rows = [("(all)", result["overall"]), *result["per_class"].items()]
        for name, m in rows:
            writer.writerow([result["extractor"], name, m["n_real"], m["n_synthetic"],
                             *("" if m.get(c) is None else f"{m[c]:.6g}" for c in FIDELITY_COLUMNS[3:])])
