"""Improved precision and recall of a generated set against a real one (Kynkäänniemi et al., NeurIPS 2019,
"Improved Precision and Recall Metric for Assessing Generative Models"), on features of shape (N, d)."""

from __future__ import annotations

import torch


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every sample to its k-th nearest neighbour within the same set (itself excluded)."""
    d = torch.cdist(features, features)
    # the smallest distance is the sample to itself (0), so the k-th neighbour is at sorted position k
    return d.kthvalue(k + 1, dim=1).values


def coverage_share(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``queries`` inside at least one ball B(support_j, radii_j) (the k-NN estimate of a manifold)."""
    inside = torch.cdist(queries, support) <= radii.unsqueeze(0)
    return float(inside.any(dim=1).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> dict[str, float | int | None]:
    """Improved precision (share of fake samples on the real manifold) and recall (share of real samples on the
    fake manifold), each manifold the union of k-NN balls around its samples.

    Args:
        real: (N, d) features of real images.
        fake: (M, d) features of generated images.
        k: the neighbour that sets each ball's radius (the paper uses 3); lowered to ``n - 1`` for a set of n.

    Returns:
        ``{"precision", "recall", "k"}``; precision and recall are None when either set has fewer than 2 samples.
    """
    real, fake = real.double(), fake.double()
    k_used = min(k, len(real) - 1, len(fake) - 1)
    if k_used < 1:
        return {"precision": None, "recall": None, "k": k_used}
    # 1. radii of the real and of the fake k-NN balls; 2. membership of the other set in them
    precision = coverage_share(fake, real, knn_radii(real, k_used))
    recall = coverage_share(real, fake, knn_radii(fake, k_used))
    return {"precision": precision, "recall": recall, "k": k_used}
