"""The training subset: long-tailed profiles (the exponential profile of CIFAR-LT, Cao et al., 2019), validation
carved from the images a long tail leaves out, few-shot draws, and the subset's fingerprint."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.data.sources import DataSplits, balanced_holdout
from synthaug.errors import SettingError

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------------------
# The exact CIFAR-LT construction of LDAM-DRW (Cao et al., 2019, ``IMBALANCECIFAR``)


def cao2019_counts(img_max: float, num_classes: int, imbalance_ratio: float) -> list[int]:
    """LDAM-DRW's ``get_img_num_per_cls``: n_c = int(img_max · (1/ρ)^(c/(C−1))), floored.

    Args:
        img_max: images of the head class; the reference uses len(training set) / C (5,000.0 for CIFAR-10).
        num_classes: C, at least 2.
        imbalance_ratio: ρ, at least 1.
    """
    if imbalance_ratio < 1:
        raise SettingError(f"imbalance_ratio must be >= 1, but got {imbalance_ratio=}.")
    if num_classes < 2:
        raise SettingError(f"The cao2019 long-tail profile needs at least 2 classes, but got {num_classes=}.")
    imb_factor = 1 / imbalance_ratio
    # the reference's expression, operation for operation, so every float (and so every floor) is the same
    return [int(img_max * (imb_factor ** (cls_idx / (num_classes - 1.0)))) for cls_idx in range(num_classes)]


def cao2019_indices(labels: np.ndarray, num_classes: int, imbalance_ratio: float) -> np.ndarray:
    """The rows LDAM-DRW's ``IMBALANCECIFAR`` keeps, in its order (class by class, shuffled within a class).

    1. img_max = N / C and the floored counts of :func:`cao2019_counts`;
    2. one legacy ``RandomState(0)`` (the reference's ``np.random.seed(0)``), used class by class in index order:
       ``idx = np.where(labels == c)[0]; shuffle(idx); keep idx[:n_c]``.

    Args:
        labels: (N,) class indices of the full official training set, in its order (CIFAR: data_batch_1..5).
        num_classes: C.
        imbalance_ratio: ρ (the reference's ``imb_factor`` is 1/ρ).

    Raises:
        SettingError: a class with fewer images than its count (the training set is not the full balanced one).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = cao2019_counts(len(labels) / num_classes, num_classes, imbalance_ratio)
    rng = np.random.RandomState(0)
    kept = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        if len(idx) < n:
            raise SettingError(f"The cao2019 long-tail profile keeps {n} images of class {c}, but it has {len(idx)}: "
                               "the profile reproduces CIFAR-LT from the full, balanced official training set. Use "
                               "data.longtail.profile: rounded for other data.")
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept)


def cao2019_subsample(
    images: LabeledImages, *, imbalance_ratio: float, class_order: str | Sequence[str] | None = None,
    n_max: int | None = None,
) -> LabeledImages:
    """The CIFAR-LT training subset of Cao et al. (2019) exactly (first label group): independent of any seed.

    Raises:
        SettingError: ``class_order`` other than natural or an ``n_max`` (the reference takes classes in index order
            and the full class size), or a class too small (see :func:`cao2019_indices`).
    """
    if class_order not in (None, "natural") or n_max is not None:
        raise SettingError(
            f"data.longtail.profile cao2019 reproduces CIFAR-LT exactly: classes in index order, the head class at its "
            f"full size; it takes no class_order or n_max, but got class_order={class_order!r}, n_max={n_max!r}. "
            "Remove them, or use profile: rounded.")
    group = images.schema.groups[0]
    return images.subset(np.sort(cao2019_indices(images.labels[:, 0], len(group.classes), imbalance_ratio)))


def apply_longtail_profile(
    images: LabeledImages, *, profile: str, imbalance_ratio: float, seed: int,
    class_order: str | Sequence[str] | None = None, n_max: int | None = None,
) -> LabeledImages:
    """The long-tailed training subset of ``profile``: "rounded" (:func:`longtail_subsample`, seeded by ``seed``) or
    "cao2019" (:func:`cao2019_subsample`, no seed)."""
    if profile == "rounded":
        return longtail_subsample(images, imbalance_ratio=imbalance_ratio, seed=seed, class_order=class_order,
                                  n_max=n_max)
    if profile == "cao2019":
        return cao2019_subsample(images, imbalance_ratio=imbalance_ratio, class_order=class_order, n_max=n_max)
    raise SettingError(f"data.longtail.profile must be 'rounded' or 'cao2019', but got {profile!r}.")


# --------------------------------------------------------------------------------------------------------
# Validation carved from training images the training subset does not use


@dataclass
class SplitsWithoutValidation(DataSplits):
    """Splits of a source with no validation set of its own (CIFAR): ``train`` is the full official training set,
    ``val`` is empty, and :func:`carve_validation` carves ``val_per_class`` images per class with ``split_seed``
    after any long tail, from the training images it leaves out, so the training subset stays the reference one."""

    val_per_class: int = 0
    split_seed: int = 0


def carve_validation(
    full: LabeledImages, kept: LabeledImages | None, *, per_class: int, seed: int
) -> tuple[LabeledImages, LabeledImages, LabeledImages]:
    """Class-balanced validation images from the training images not kept (first label group).

    Args:
        full: the full training set.
        kept: the long-tailed subset of ``full``, or None without a long tail (then validation comes from ``full``
            itself, as :func:`~synthaug.data.sources.balanced_holdout` carves it).
        per_class: validation images per class; a class with fewer left-out images gives all it has (the head
            class of a CIFAR-LT profile keeps every image, so it has none), with a warning.
        seed: the split seed.

    Returns:
        (training split, validation split, ``full`` without the validation images: the balanced pool).
    """
    if kept is None:
        if per_class == 0:
            return full, full.subset([]), full
        (val_idx,), rest = balanced_holdout(full.labels[:, 0], (per_class,), seed=seed)
        train = full.subset(rest)
        return train, full.subset(val_idx), train
    kept_ids = set(kept.ids)
    left_out = np.array([i for i, image_id in enumerate(full.ids) if image_id not in kept_ids], dtype=np.int64)
    rng = np.random.default_rng(seed)
    group = full.schema.groups[0]
    val, short = [], []
    for c, name in enumerate(group.classes):
        idx = rng.permutation(left_out[full.labels[left_out, 0] == c])
        val.append(idx[:per_class])
        if len(idx) < per_class:
            short.append(f"{name!r} ({len(idx)})")
    if short:
        log.warning("The long tail keeps (nearly) every training image of class(es) %s, so the validation split "
                    "has fewer than data.val_per_class=%d of them (left-out images in brackets); the test split is "
                    "unaffected.", ", ".join(short), per_class)
    val_idx = np.sort(np.concatenate(val))
    return kept, full.subset(val_idx), full.subset(np.setdiff1d(np.arange(len(full)), val_idx))


# --------------------------------------------------------------------------------------------------------
# Few-shot draws (seed 002's k-shot protocol)


def fewshot_subsample(images: LabeledImages, *, shots: int, draw: int) -> LabeledImages:
    """Keeps ``shots`` images of every class (first label group), drawn with ``default_rng([draw, class index])``:
    independent of the experiment seed, so every arm and generator trains on the same k images of a draw.

    Raises:
        SettingError: naming the classes with fewer than ``shots`` images.
    """
    group = images.schema.groups[0]
    counts = images.class_counts(0)
    short = [f"{name!r} ({counts[c]})" for c, name in enumerate(group.classes) if counts[c] < shots]
    if short:
        raise SettingError(f"data.fewshot.shots is {shots}, but class(es) {', '.join(short)} have fewer training "
                           "images (after any long tail); lower data.fewshot.shots or the long tail's imbalance_ratio.")
    keep = [np.random.default_rng([draw, c]).choice(np.flatnonzero(images.labels[:, 0] == c), shots, replace=False)
            for c in range(len(group.classes))]
    return images.subset(np.sort(np.concatenate(keep)))


# --------------------------------------------------------------------------------------------------------
# The training subset's fingerprint

_TRAIN_INDEX_ID = re.compile(r"^([\w.-]+):train:(\d+)$")


def official_train_indices(ids: Sequence[str]) -> np.ndarray | None:
    """Indices into the source's full official training set, from ids ``<source>:train:<index>`` (as the CIFAR
    sources write them); None when the ids are not all of that form, from one source."""
    matches = [_TRAIN_INDEX_ID.match(image_id) for image_id in ids]
    if not matches or any(m is None for m in matches) or len({m.group(1) for m in matches}) != 1:
        return None
    return np.array([int(m.group(2)) for m in matches], dtype=np.int64)


def training_subset_sha256(indices: Iterable[int]) -> str:
    """SHA-256 (hex) of the sorted indices written as decimal text, one per line, each line ending in a newline."""
    text = "".join(f"{i}\n" for i in sorted(int(i) for i in indices))
    return hashlib.sha256(text.encode("ascii")).hexdigest()
