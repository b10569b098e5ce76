"""Classification losses over one or more label groups, registered by name.

Every loss is cross-entropy per label group on that group's slice of the logits, summed over groups;
single-label data is the one-group case. Targets are class indices (B, G) or soft targets (B, Σ C_g): CutMix /
MixUp, soft translation labels (Diff-Mix). Optional per-item weights (B,) multiply each item's loss (the
synthetic loss weight ω); the batch loss is Σ_b weight_b · loss_b / B, so a weight of 0 drops an item's
gradient and leaves the others' as they were.

``class_counts`` are, per group, the images of each class that the training batches hold (per epoch, possibly
fractional expectations: see :func:`synthaug.train.batch_composition.batch_prior`); plain cross-entropy ignores them.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthaug.train.config import LOSSES  # noqa: F401  (re-exported)
from synthaug.errors import SettingError



class GroupedLoss(nn.Module):
    """Base: ``forward(logits (B, Σ C_g), labels (B, G) or (B, Σ C_g), weights (B,) | None) -> scalar``;
    subclasses adjust the per-group, per-item terms."""

    def __init__(self, class_counts: Sequence[np.ndarray], *, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise SettingError(f"label_smoothing must be in [0, 1), but got {label_smoothing=}.")
        self.group_sizes = [len(c) for c in class_counts]
        self.label_smoothing = label_smoothing

    def group_term(self, g: int, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Group ``g``'s loss of every item, (B,)."""
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, reduction="none")

    def forward(self, logits: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        if labels.dtype.is_floating_point:  # soft targets: (B, Σ C_g) probabilities
            parts = zip(torch.split(logits, self.group_sizes, 1), torch.split(labels, self.group_sizes, 1))
        else:
            parts = zip(torch.split(logits, self.group_sizes, 1), labels.unbind(1))
        per_item = sum(self.group_term(g, lg, t) for g, (lg, t) in enumerate(parts))
        if weights is not None:
            per_item = per_item * weights.to(per_item.dtype)
        return per_item.mean()


@LOSSES.register("ce")
class CrossEntropy(GroupedLoss):
    """Plain cross-entropy (with optional label smoothing)."""


@LOSSES.register("weighted-ce")
class WeightedCrossEntropy(GroupedLoss):
    """Cross-entropy with class weights w_i = k / N_i (N_i = images of class i in the training batches), as the
    DeepFashion study's w_i = 250 / (11 N_i).

    The loss is the unnormalised weighted sum over the batch divided by the batch size,
    ``Σ_b Σ_c w_c ỹ_bc (−log p_bc) / B`` (ỹ: the one-hot or soft target, label-smoothed), not PyTorch's
    weighted mean (which divides by Σ_b w_{y_b}, so that k cancels): k scales the loss linearly. Its
    expectation is k · Σ_c CE_c / N, a class-balanced loss. Hard and soft (CutMix/MixUp) targets give the same
    value for the same one-hot target.
    """

    def __init__(self, class_counts, *, label_smoothing: float = 0.0, weight_k: float = 1.0):
        super().__init__(class_counts, label_smoothing=label_smoothing)
        if weight_k <= 0:
            raise SettingError(f"weight_k must be > 0, but got {weight_k=}.")
        for g, w in enumerate(class_weights(class_counts, weight_k)):
            self.register_buffer(f"weight_{g}", w)

    def group_term(self, g, logits, target):
        weight = getattr(self, f"weight_{g}")
        k = logits.shape[1]
        if not target.dtype.is_floating_point:
            target = F.one_hot(target.long(), k).to(logits.dtype)
        # 1. label smoothing, as PyTorch: (1 − ε) y + ε / C;  2. Σ_b Σ_c w_c ỹ_bc (−log p_bc) / B
        smoothed = target * (1 - self.label_smoothing) + self.label_smoothing / k
        return -(weight * smoothed * F.log_softmax(logits, 1)).sum(1)


@LOSSES.register("balanced-softmax")
class BalancedSoftmax(GroupedLoss):
    """Balanced Softmax (Ren et al., NeurIPS 2020): cross-entropy on logits + log prior(class).

    Training against the label prior makes the plain logits estimate a class-balanced posterior at test time.
    Soft targets take the same adjustment: cross-entropy of the adjusted logits against the soft target.
    """

    def __init__(self, class_counts, *, label_smoothing: float = 0.0):
        super().__init__(class_counts, label_smoothing=label_smoothing)
        for g, counts in enumerate(class_counts):
            prior = torch.as_tensor(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))
            self.register_buffer(f"log_prior_{g}", torch.log(prior / prior.sum()).float())

    def group_term(self, g, logits, target):
        return F.cross_entropy(logits + getattr(self, f"log_prior_{g}"), target,
                               label_smoothing=self.label_smoothing, reduction="none")


def class_weights(class_counts: Sequence[np.ndarray], k: float = 1.0) -> list[torch.Tensor]:
    """w_i = k / N_i per label group (classes with no images get the weight of a class with one)."""
    return [torch.as_tensor(k / np.maximum(np.asarray(c, dtype=np.float64), 1.0)).float() for c in class_counts]


def create_loss(name: str, class_counts: Sequence[np.ndarray], *, label_smoothing: float = 0.0,
                weight_k: float = 1.0) -> GroupedLoss:
    """Builds the loss registered as ``name`` ("ce", "weighted-ce", "balanced-softmax"), passing it only the
    options it takes (``weight_k``: weighted-ce only; :meth:`TrainConfig.inapplicable` reports the others).

    Raises:
        UnknownNameError: an unknown name; the message lists the valid names.
    """
    cls = LOSSES.get(name)
    options = {"label_smoothing": label_smoothing, "weight_k": weight_k}
    return cls(class_counts, **{k: v for k, v in options.items() if k in inspect.signature(cls).parameters})
