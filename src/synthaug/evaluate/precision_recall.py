"""k-NN manifold metrics of a generated set against a real one, on features of shape (N, d):

- improved precision and recall (Kynkäänniemi et al., NeurIPS 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models"): each manifold is the union of k-NN balls around its samples;
- density and coverage (Naeem et al., ICML 2020, "Reliable Fidelity and Diversity Metrics for Generative
  Models"): only the *real* samples' k-NN balls, so outliers among the fakes cannot inflate the real manifold.

Every figure is a mean over per-sample values (:func:`manifold_scores`), which is what the bootstrap intervals
of :mod:`synthaug.evaluate.fidelity` resample.
"""

from __future__ import annotations

import numpy as np
import torch


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every sample to its k-th nearest neighbour within the same set (itself excluded)."""
    d = torch.cdist(features, features)
    # the smallest distance is the sample to itself (0), so the k-th neighbour is at sorted position k
    return d.kthvalue(k + 1, dim=1).values


def in_balls(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(len(queries), len(support)) booleans: query i lies in the closed ball B(support_j, radii_j)."""
    return torch.cdist(queries, support) <= radii.unsqueeze(0)


def manifold_scores(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3,
                    density_k: int = 5) -> dict[str, np.ndarray | int] | None:
    """Per-sample values whose means are precision, recall, density and coverage.

    Args:
        real: (N, d) features of real images.
        fake: (M, d) features of generated images.
        k: the neighbour that sets each ball's radius for precision/recall (Kynkäänniemi et al. use 3).
        density_k: the same for density/coverage (Naeem et al. recommend 5).
        Each k is lowered to ``n - 1`` for a set of n.

    Returns:
        ``{"precision", "density"}`` per fake sample, ``{"recall", "coverage"}`` per real sample, and the
        ``k`` and ``density_k`` used; None when either set has fewer than 2 samples.
    """
    real, fake = real.double(), fake.double()
    k = min(k, len(real) - 1, len(fake) - 1)
    density_k = min(density_k, len(real) - 1)
    if k < 1:
        return None
    # 1. improved precision/recall: each set's membership in the other set's k-NN balls
    precision = in_balls(fake, real, knn_radii(real, k)).any(dim=1)
    recall = in_balls(real, fake, knn_radii(fake, k)).any(dim=1)
    # 2. density: how many real balls hold each fake, over k (expected 1 when fake ~ real);
    #    coverage: the real samples whose ball holds at least one fake
    fake_in_real = in_balls(fake, real, knn_radii(real, density_k))  # (M, N)
    density = fake_in_real.sum(dim=1) / density_k
    coverage = fake_in_real.any(dim=0)
    return {"precision": precision.double().numpy(), "recall": recall.double().numpy(),
            "density": density.double().numpy(), "coverage": coverage.double().numpy(), "k": k,
            "density_k": density_k}


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3,
                     density_k: int = 5) -> dict[str, float | int | None]:
    """Improved precision (share of fake samples on the real manifold) and recall (share of real samples on the
    fake manifold), density (mean number of real k-NN balls holding a fake, over k) and coverage (share of real
    samples whose k-NN ball holds a fake).

    Returns:
        ``{"precision", "recall", "density", "coverage", "k", "density_k"}``; the four figures are None when
        either set has fewer than 2 samples.
    """
    scores = manifold_scores(real, fake, k=k, density_k=density_k)
    if scores is None:
        k_used = min(k, len(real) - 1, len(fake) - 1)
        return {"precision": None, "recall": None, "density": None, "coverage": None, "k": k_used,
                "density_k": min(density_k, len(real) - 1)}
    return {name: (float(v.mean()) if isinstance(v, np.ndarray) else v) for name, v in scores.items()}
