"""Batch-level CutMix and MixUp for multi-head (grouped) labels, registered by name.

torchvision's ``v2.CutMix`` / ``v2.MixUp`` mix image i with image i−1 of the batch and one-hot labels with
the same weights. Calling them with labels ``arange(B)`` and ``num_classes = B`` returns that mixing
matrix W (B, B) itself; every label group's one-hot targets are then mixed as ``W @ one_hot`` — the same
λ and the same box for every group — and concatenated into (B, Σ C_g) soft targets, which
:class:`synthaug.train.losses.GroupedLoss` accepts. Each group's soft targets sum to 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from synthaug.train.config import BATCH_MIXES  # noqa: F401  (re-exported)
from synthaug.errors import SettingError



class BatchMix:
    """Mixes a batch of images and their grouped labels.

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
        b = len(images)
        t = self.transform(b)
        if t is None or b < 2:
            weights = torch.eye(b, device=images.device)
        else:
            images, weights = t(images, torch.arange(b, device=images.device))
        targets = [weights @ F.one_hot(labels[:, g].long(), k).to(weights.dtype)
                   for g, k in enumerate(self.group_sizes)]
        return images, torch.cat(targets, 1)


@BATCH_MIXES.register("none")
class NoMix(BatchMix):
    """No batch mixing: images and hard (B, G) labels pass through unchanged."""

    def __call__(self, images, labels):
        return images, labels


@BATCH_MIXES.register("cutmix")
class CutMix(BatchMix):
    """CutMix (Yun et al., 2019): a box of image i−1 pasted into image i; λ is the kept area."""

    def transform(self, batch_size):
        return v2.CutMix(num_classes=batch_size, alpha=self.alpha)


@BATCH_MIXES.register("mixup")
class MixUp(BatchMix):
    """MixUp (Zhang et al., 2018): λ·image i + (1 − λ)·image i−1."""

    def transform(self, batch_size):
        return v2.MixUp(num_classes=batch_size, alpha=self.alpha)


@BATCH_MIXES.register("cutmix-or-mixup")
class CutMixOrMixUp(BatchMix):
    """CutMix or MixUp, chosen with equal probability per batch (as in torchvision's reference recipes)."""

    def transform(self, batch_size):
        return v2.RandomChoice([v2.CutMix(num_classes=batch_size, alpha=self.alpha),
                                v2.MixUp(num_classes=batch_size, alpha=self.alpha)])


def create_batch_mix(name: str, group_sizes: Sequence[int], alpha: float = 1.0) -> BatchMix:
    """The batch mixer registered as ``name`` ("none", "cutmix", "mixup", "cutmix-or-mixup")."""
    return BATCH_MIXES.get(name)(group_sizes, alpha)


def hard_labels(targets: torch.Tensor, group_sizes: Sequence[int]) -> torch.Tensor:
    """(B, G) class indices: per group, the class with the largest share of a soft target (B, Σ C_g)."""
    return torch.stack([t.argmax(1) for t in torch.split(targets, list(group_sizes), 1)], 1)
