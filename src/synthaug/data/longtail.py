"""Long-tailed subsampling with the exponential profile of CIFAR-LT (Cao et al., 2019)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Images per class rank c = 0..C-1: n_c = round(n_max · (1/ρ)^(c/(C−1))), at least 1.

    Rounding to nearest (CIFAR-LT code floors) keeps n_max / n_min closest to the requested ρ.

    Args:
        n_max: images of the head class (rank 0).
        num_classes: C.
        imbalance_ratio: ρ = n_max / n_min, at least 1.
    """
    if imbalance_ratio < 1:
        raise SettingError(f"imbalance_ratio must be >= 1, but got {imbalance_ratio=}.")
    if num_classes < 1 or n_max < 1:
        raise SettingError(f"Need num_classes >= 1 and n_max >= 1, but got {num_classes=}, {n_max=}.")
    if num_classes == 1:
        return [n_max]
    return [max(1, round(n_max * (1.0 / imbalance_ratio) ** (c / (num_classes - 1)))) for c in range(num_classes)]


def class_ranking(classes: Sequence[str], class_order: str | Sequence[str] | None, seed: int) -> list[int]:
    """Class indices from head (most images) to tail.

    ``class_order`` is None/"natural" (index order), "reverse", "random" (seeded), or a list of all class
    names from head to tail.
    """
    n = len(classes)
    if class_order in (None, "natural"):
        return list(range(n))
    if class_order == "reverse":
        return list(range(n))[::-1]
    if class_order == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]
    if isinstance(class_order, str):
        raise SettingError(f"class_order must be 'natural', 'reverse', 'random' or a list of class names, "
                         f"but got {class_order!r}.")
    names = [str(c) for c in class_order]
    if sorted(names) != sorted(classes):
        raise SettingError(f"class_order must list every class exactly once; got {names}, classes are {list(classes)}.")
    return [list(classes).index(c) for c in names]


def longtail_subsample(
    images: LabeledImages, *, imbalance_ratio: float, seed: int, class_order: str | Sequence[str] | None = None,
    n_max: int | None = None,
) -> LabeledImages:
    """Keeps n_c images of the class ranked c (first label group); deterministic for a given seed.

    ``n_max`` defaults to the smallest class size, so every class can supply its quota.
    """
    group = images.schema.groups[0]
    counts = images.class_counts(0)
    n_max = int(counts.min()) if n_max is None else n_max
    ranking = class_ranking(group.classes, class_order, seed)
    quota = longtail_counts(n_max, len(group.classes), imbalance_ratio)
    rng = np.random.default_rng(seed)
    keep = []
    for rank, c in enumerate(ranking):
        idx = np.flatnonzero(images.labels[:, 0] == c)
        if len(idx) < quota[rank]:
            raise SettingError(f"Class {group.classes[c]!r} has {len(idx)} images but the long-tail profile asks "
                             f"for {quota[rank]}; lower data.longtail.n_max.")
        keep.append(rng.permutation(idx)[: quota[rank]])
    return images.subset(np.sort(np.concatenate(keep)))
