"""MixUp and CutMix (config key ``train.batch_mix``): mixed-sample augmentation of a training batch, for multi-head
(grouped) labels; the variants are registered by name in :data:`MIXUP_CUTMIX`.

torchvision's ``v2.CutMix`` / ``v2.MixUp`` mix image i with image i−1 of the batch and one-hot labels with
the same weights. Calling them with labels ``arange(B)`` and ``num_classes = B`` returns that mixing
matrix W (B, B) itself; every label group's one-hot targets are then mixed as ``W @ one_hot`` — the same
λ and the same box for every group — and concatenated into (B, Σ C_g) soft targets, which
:class:`synthaug.train.losses.GroupedLoss` accepts. Each group's soft targets sum to 1. Labels that are already
soft (B, Σ C_g) (Diff-Mix translation targets) are mixed the same way, ``W @ targets``.

Per-item loss weights v (the synthetic loss weight ω: 1 for real images, ω for synthetic ones) follow the label
shares: a mixed item's loss is Σ_j W_ij v_j · loss(logits_i, y_j), each share's loss weighted by the image it came
from. Since the loss is linear in its target, that is the weight m_i = Σ_j W_ij v_j times the loss against the
target Σ_j W_ij v_j y_j / m_i, which :meth:`MixupCutmix.mix` returns (a real image with a box of a synthetic one:
weight λ + (1 − λ) ω, target shares λ : (1 − λ) ω). Items of weight 0 keep ``W @ y`` as target.

Not to be confused with how batches are drawn from the real and synthetic sets (``train.mixing``,
:mod:`synthaug.train.batch_composition`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from synthaug.train.config import MIXUP_CUTMIX  # noqa: F401  (re-exported)
from synthaug.errors import SettingError


class MixupCutmix:
    """Base of the MixUp / CutMix variants: mixes the images of a batch pairwise, and their grouped labels alike.

    Args:
        group_sizes: classes per label group.
        alpha: λ ~ Beta(α, α).
    """

    def __init__(self, group_sizes: Sequence[int], alpha: float = 1.0):
        if alpha <= 0:
            raise SettingError(f"batch_mix_alpha must be > 0, but got {alpha=}.")
        self.group_sizes = list(group_sizes)
        self.alpha = alpha

    def transform(self, batch_size: int) -> v2.Transform | None:
        """The torchvision transform that mixes a batch, or None for no mixing."""
        return None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mixed images, soft targets (B, Σ C_g)); a batch of one is returned with one-hot targets."""
        images, targets, _ = self.mix(images, labels)
        return images, targets

    def mix(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(mixed images, soft targets (B, Σ C_g), mixed per-item loss weights or None).

        Args:
            labels: class indices (B, G), or soft targets (B, Σ C_g).
            weights: per-item loss weights (B,), or None (all 1).
        """
        b = len(images)
        t = self.transform(b)
        if t is None or b < 2:
            matrix = torch.eye(b, device=images.device)  # the mixing matrix W (module docstring)
        else:
            images, matrix = t(images, torch.arange(b, device=images.device))
        targets = soft_targets(labels, self.group_sizes).to(matrix.dtype)
        if weights is None:
            return images, matrix @ targets, None
        weights = weights.to(matrix.dtype)
        mixed_weights = matrix @ weights
        weighted = matrix @ (weights[:, None] * targets)
        kept = mixed_weights > 0
        mixed = torch.where(kept[:, None], weighted / torch.where(kept, mixed_weights, 1)[:, None], matrix @ targets)
        return images, mixed, mixed_weights


@MIXUP_CUTMIX.register("none")
class NoMixupCutmix(MixupCutmix):
    """No MixUp or CutMix: images and hard (B, G) labels pass through unchanged."""

    def mix(self, images, labels, weights=None):
        return images, labels, weights


@MIXUP_CUTMIX.register("cutmix")
class CutMix(MixupCutmix):
    """CutMix (Yun et al., 2019): a box of image i−1 pasted into image i; λ is the kept area."""

    def transform(self, batch_size):
        return v2.CutMix(num_classes=batch_size, alpha=self.alpha)


@MIXUP_CUTMIX.register("mixup")
class MixUp(MixupCutmix):
    """MixUp (Zhang et al., 2018): λ·image i + (1 − λ)·image i−1."""

    def transform(self, batch_size):
        return v2.MixUp(num_classes=batch_size, alpha=self.alpha)


@MIXUP_CUTMIX.register("cutmix-or-mixup")
class CutMixOrMixUp(MixupCutmix):
    """CutMix or MixUp, chosen with equal probability per batch (as in torchvision's reference recipes)."""

    def transform(self, batch_size):
        return v2.RandomChoice([v2.CutMix(num_classes=batch_size, alpha=self.alpha),
                                v2.MixUp(num_classes=batch_size, alpha=self.alpha)])


def create_mixup_cutmix(name: str, group_sizes: Sequence[int], alpha: float = 1.0) -> MixupCutmix:
    """The MixUp / CutMix variant registered as ``name`` ("none", "cutmix", "mixup", "cutmix-or-mixup")."""
    return MIXUP_CUTMIX.get(name)(group_sizes, alpha)


def soft_targets(labels: torch.Tensor, group_sizes: Sequence[int]) -> torch.Tensor:
    """(B, Σ C_g) float targets: class indices (B, G) one-hot per group; soft targets returned as they are."""
    if labels.dtype.is_floating_point:
        return labels
    return torch.cat([F.one_hot(labels[:, g].long(), k).float() for g, k in enumerate(group_sizes)], 1)


def hard_labels(targets: torch.Tensor, group_sizes: Sequence[int]) -> torch.Tensor:
    """(B, G) class indices: per group, the class with the largest share of a soft target (B, Σ C_g)."""
    return torch.stack([t.argmax(1) for t in torch.split(targets, list(group_sizes), 1)], 1)
