"""Augmentations of the conditioning image for augmentation-conditioned unCLIP generation (``unclip-augcond``):
blends of two images (Mixup, CutMix) and embedding dropout.

Chen, Zhang & Romero-Soriano, "Augmented Conditioning Is Enough For Effective Training Image Generation",
2025 (arXiv:2502.04475). The generator conditions on the CLIP image embedding of a real training image;
these functions make that conditioning diverse: a blend of two images of the same class by Mixup (Zhang et al.,
2018) or CutMix (Yun et al., 2019), in pixel space or in embedding space, and dropout on the embedding.

Method names (``METHODS``) read ``[embed-]<blend>[-dropout]``; "random-image" (the baseline) conditions on
one unchanged image and "dropout" on its embedding with dropout. Every random draw comes from the
``numpy.random.Generator`` passed in, so an item's seed alone fixes its conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from synthaug.generators.configs import METHODS, Method  # noqa: E402  (plain data)
from synthaug.errors import SettingError


@dataclass(frozen=True)
class Recipe:
    """What a method name asks for.

    Attributes:
        blend: how two images are blended, "mixup" or "cutmix"; None: one image, no blend.
        space: where the two images are blended: "pixel" (before the CLIP image encoder) or "embedding".
        dropout: whether dropout is applied to the final image embedding.
    """

    blend: Literal["mixup", "cutmix"] | None
    space: Literal["pixel", "embedding"]
    dropout: bool

    @property
    def num_images(self) -> int:
        return 1 if self.blend is None else 2


def parse_method(name: str) -> Recipe:
    """The recipe behind a method name.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in METHODS:
        raise SettingError(f"Unknown augmentation-conditioning method {name!r}; valid: {', '.join(METHODS)}.")
    dropout = name == "dropout" or name.endswith("-dropout")
    core = name.removesuffix("-dropout")
    space = "embedding" if core.startswith("embed-") else "pixel"
    blend = core.removeprefix("embed-")
    return Recipe(blend=blend if blend in ("mixup", "cutmix") else None, space=space, dropout=dropout)


def sample_lambda(alpha: float, rng: np.random.Generator) -> float:
    """λ ~ Beta(α, α), the mixing weight of Mixup and CutMix (α = 1 gives λ ~ U(0, 1))."""
    if alpha <= 0:
        raise SettingError(f"mix_alpha must be > 0, but got {alpha=}.")
    return float(rng.beta(alpha, alpha))


def mixup(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """Mixup (Zhang et al., 2018): the convex combination λ·first + (1 − λ)·second (same shapes)."""
    if first.shape != second.shape:
        raise SettingError(f"mixup needs equal shapes, but got {tuple(first.shape)} and {tuple(second.shape)}.")
    return lam * first + (1.0 - lam) * second


def _cut(length: int, cut_length: int, rng: np.random.Generator) -> tuple[int, int]:
    """One side of the CutMix box: a uniform centre, ``cut_length`` wide, clipped to ``0..length``."""
    centre = int(rng.integers(length))
    return max(centre - cut_length // 2, 0), min(centre + cut_length // 2, length)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The CutMix box of Yun et al. (2019), Eq. (2): ``(top, bottom, left, right)``, bottom/right exclusive.

    1. side lengths r_h = H·√(1 − λ), r_w = W·√(1 − λ), so the unclipped area is (1 − λ)·H·W;
    2. centre (c_y, c_x) uniform over the image;
    3. the box is clipped at the image border (which can make it smaller, see :func:`cutmix`).
    """
    cut = float(np.sqrt(1.0 - lam))
    top, bottom = _cut(height, int(height * cut), rng)
    left, right = _cut(width, int(width * cut), rng)
    return top, bottom, left, right


def cutmix(
    first: torch.Tensor, second: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """CutMix of two images (..., H, W): a box of ``second`` pasted into ``first``.

    Returns:
        The mixed image and λ adjusted to the exact pasted area: 1 − box area / (H·W).
    """
    if first.shape != second.shape:
        raise SettingError(f"cutmix needs equal shapes, but got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}.")
    height, width = first.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, rng)
    mixed = first.clone()
    mixed[..., top:bottom, left:right] = second[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def cutmix_embedding(
    first: torch.Tensor, second: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """CutMix along the last axis of embeddings (..., D): a span of ``second`` pasted into ``first``.

    The 1-D form of :func:`cutmix_box`: span length (1 − λ)·D, centre uniform, clipped at the ends.

    Returns:
        The mixed embedding and λ adjusted to the exact pasted length: 1 − span / D.
    """
    if first.shape != second.shape:
        raise SettingError(f"cutmix needs equal shapes, but got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}.")
    dim = first.shape[-1]
    lo, hi = _cut(dim, int(dim * (1.0 - lam)), rng)
    mixed = first.clone()
    mixed[..., lo:hi] = second[..., lo:hi]
    return mixed, 1.0 - (hi - lo) / dim


def embedding_dropout(
    embedding: torch.Tensor, p: float, rng: np.random.Generator, *, rescale: bool = True
) -> torch.Tensor:
    """Zeroes each entry with probability ``p``, as ``torch.nn.functional.dropout`` does in training mode.

    With ``rescale`` the kept entries are multiplied by 1 / (1 − p), as ``F.dropout`` does, so the
    expected embedding is unchanged; without it they keep their values and the norm shrinks.
    """
    if not 0.0 <= p < 1.0:
        raise SettingError(f"dropout p must be in [0, 1), but got {p=}.")
    keep = torch.from_numpy(rng.random(tuple(embedding.shape)) >= p).to(embedding.device)
    out = embedding * keep.to(embedding.dtype)
    return out / (1.0 - p) if rescale else out
