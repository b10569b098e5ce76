"""Datasets that feed classifier training: real and synthetic images as one indexable set, decoded on demand;
and the soft targets of translated synthetic images (Diff-Mix)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.train.config import Relabel, TrainConfig
from synthaug.utils import derive_seed

DEFAULT_CACHE_MB: float = TrainConfig.model_fields["image_cache_mb"].default


class ImageSet(Dataset):
    """Real images (indices < len(real)) followed by synthetic ones, decoded and resized when asked for.

    Decoded, resized images (uint8) are kept in memory until they fill ``cache_mb`` megabytes; later ones are
    decoded each time they are asked for. So a small set is decoded once, and a large one (ImageNet-LT plus a
    million synthetic images) holds at most ``cache_mb`` per loading process rather than every image. With
    loader workers each worker has its own cache (the training loop keeps them alive across epochs).

    Items are (transformed image, label vector, is_synthetic); with ``soft_targets`` the label is a float target
    (Σ C_g): the synthetic set's :attr:`LabeledImages.targets` where it has them, else the one-hot of the label
    vector. An item asked for as ``(index, seed)`` is
    augmented with torch's random generator seeded with ``seed`` (the global state is left as it was), so the
    result does not depend on which process loads it or on what ran before (see :func:`seeded_batches`).
    """

    def __init__(self, real: LabeledImages, synthetic: LabeledImages | None, transform: Callable, image_size: int,
                 *, cache_mb: float = DEFAULT_CACHE_MB, soft_targets: bool = False):
        self.parts = [real] + ([synthetic] if synthetic is not None and len(synthetic) else [])
        self.num_real = len(real)
        self.labels = np.concatenate([p.labels for p in self.parts])
        self.soft_targets = soft_targets
        self._group_sizes = real.schema.group_sizes
        self.transform = transform
        self._resize = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_budget, self.cached_bytes = int(cache_mb * 2**20), 0

    def __len__(self) -> int:
        return len(self.labels)

    def _raw(self, i: int) -> torch.Tensor:
        if i in self._cache:
            return self._cache[i]
        part, j = (self.parts[0], i) if i < self.num_real else (self.parts[1], i - self.num_real)
        image = self._resize(part.image(j))
        if self.cached_bytes + image.numel() <= self._cache_budget:
            self._cache[i] = image
            self.cached_bytes += image.numel()
        return image

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            image = self.transform(self._raw(i))
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that records a
                # stack trace, ~1 ms per call on CPU-only machines, i.e. most of a small model's epoch
                torch.random.default_generator.manual_seed(seed)
                image = self.transform(self._raw(i))
        return image, self._label(i), i >= self.num_real

    def _label(self, i: int) -> torch.Tensor:
        if not self.soft_targets:
            return torch.as_tensor(self.labels[i])
        targets = self.parts[1].targets if i >= self.num_real else None
        if targets is not None:
            return torch.as_tensor(targets[i - self.num_real])
        return torch.as_tensor(one_hot_targets(self.labels[i : i + 1], self._group_sizes)[0])


def one_hot_targets(labels: np.ndarray, group_sizes: Sequence[int]) -> np.ndarray:
    """float32 (N, Σ C_g): each label group's class index (``labels``: (N, G)) as a one-hot slice."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), len(group_sizes))
    out = np.zeros((len(labels), sum(group_sizes)), dtype=np.float32)
    offsets = np.cumsum([0, *group_sizes[:-1]])
    out[np.arange(len(labels))[:, None], offsets + labels] = 1.0
    return out


def translation_targets(records: Iterable[dict[str, Any]], real_labels: Mapping[str, Sequence[int]],
                        group_sizes: Sequence[int], gamma: float) -> dict[str, np.ndarray | None]:
    """Diff-Mix soft targets (Wang et al., CVPR 2024, §3.3) of a synthetic set's translated images, by item id.

    A manifest line made by translation (ddpm's ``translate_from`` other than "none") names its real source in
    ``source_ids`` and its ``strength`` s. With a the source's label vector (``real_labels``) and b the line's
    ``label_ids``, its target is, per label group, (1 − λ) · onehot(a) + λ · onehot(b) with λ = s^γ (so s = 1,
    a run from pure noise, gives onehot(b); a translation within the class gives onehot(b) at any s).

    Args:
        records: the set's manifest lines (:meth:`synthaug.store.SyntheticStore.records`).
        real_labels: label vector of every real training image, by id.
        group_sizes: classes per label group.
        gamma: γ of λ(s) = s^γ.

    Returns:
        ``{item_id: float32 (Σ C_g) target, or None for a line made from noise}``; unlabelled lines are left out.

    Raises:
        SettingError: a translation line without exactly one source id or a strength in (0, 1], or whose source
            is not in ``real_labels`` (the set was made from other training images).
    """
    if not gamma > 0:
        raise SettingError(f"train.translation_labels.gamma must be > 0, but got {gamma=}.")
    out: dict[str, np.ndarray | None] = {}
    for rec in records:
        item_id, target = rec.get("item_id"), rec.get("label_ids")
        if target is None:
            continue
        if rec.get("translate_from", "none") == "none":
            out[item_id] = None
            continue
        sources, strength = rec.get("source_ids") or [], rec.get("strength")
        where = f"synthetic item {item_id!r} (translate_from: {rec['translate_from']})"
        if len(sources) != 1 or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise SettingError(f"{where} needs one source id and a strength in (0, 1] in its manifest line, but has "
                               f"source_ids={sources} and strength={strength!r}; regenerate the set, or use "
                               "train.translation_labels.mode: hard.")
        if sources[0] not in real_labels:
            raise SettingError(f"{where} was translated from real image {sources[0]!r}, which is not in the real "
                               "training split: the set was made from other training data. Regenerate it from this "
                               "split, or use train.translation_labels.mode: hard.")
        lam = float(strength) ** gamma
        source, made = one_hot_targets(np.stack([real_labels[sources[0]], target]), group_sizes)
        out[item_id] = ((1 - lam) * source + lam * made).astype(np.float32)
    return out


def attach_translation_targets(synthetic: LabeledImages, records: Iterable[dict[str, Any]], real: LabeledImages,
                               *, gamma: float) -> LabeledImages:
    """``synthetic`` with :attr:`LabeledImages.targets`: Diff-Mix soft targets for its translated images (see
    :func:`translation_targets`), the one-hot of its labels for images made from noise.

    Args:
        records: the manifest lines of the store ``synthetic`` was loaded from (any order, extra lines ignored).
        real: the real training split the translations started from.

    Raises:
        SettingError: an image of ``synthetic`` with no manifest line, or a bad translation line.
    """
    soft = translation_targets(records, dict(zip(real.ids, real.labels)), synthetic.schema.group_sizes, gamma)
    missing = [i for i in synthetic.ids if i not in soft]
    if missing:
        raise SettingError(f"{len(missing)} synthetic image(s) have no labelled manifest line among the records "
                           f"given, e.g. {missing[:3]}; pass the records of the store the images were loaded from.")
    targets = one_hot_targets(synthetic.labels, synthetic.schema.group_sizes)
    for i, item_id in enumerate(synthetic.ids):
        if soft[item_id] is not None:
            targets[i] = soft[item_id]
    return dataclasses.replace(synthetic, targets=targets)


def relabelled_images(real: LabeledImages, *, weight: float, target: int | None, seed: int) -> LabeledImages:
    """Stand-ins for the rarer classes made from real training images of the other classes (``train.relabel``,
    :class:`synthaug.train.config.Relabel`): for each class c, ``target − n_c`` images drawn at random (seeded)
    from the training images not of class c, without replacement while there are enough. Each is labelled c
    (for batch composition) with the soft target ``weight · onehot(c) + (1 − weight) · onehot(source class)``.

    Args:
        real: the training split (single-label).
        weight: class c's share of each stand-in's target, in (0, 1).
        target: fill every class up to this many images; None: the largest class's count.
        seed: the draw (the same for every classifier seed, like a synthetic set).

    Returns:
        The stand-ins, class by class, with :attr:`LabeledImages.targets`; ids ``relabel:<c>:<k>:<source id>``.

    Raises:
        SettingError: multi-label data (more than one label group), or a weight outside (0, 1).
    """
    if len(real.schema.groups) != 1:
        raise SettingError(f"train.relabel applies to single-label data, but this data has "
                           f"{len(real.schema.groups)} label groups; set train.relabel.weight: 0.")
    if not 0 < weight < 1:
        raise SettingError(f"train.relabel.weight must be in (0, 1), got {weight}.")
    labels = real.labels[:, 0]
    counts = real.class_counts()
    fill = int(counts.max()) if target is None else target
    rng = np.random.default_rng(seed)
    sources, made = [], []
    for c, n in enumerate(counts):
        others = np.flatnonzero(labels != c)
        k = max(fill - int(n), 0)
        if k and len(others):
            sources.append(rng.choice(others, size=k, replace=k > len(others)))
            made.append(np.full(k, c))
    src = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    made_labels = np.concatenate(made) if made else np.zeros(0, dtype=np.int64)
    group = real.schema.group_sizes
    targets = weight * one_hot_targets(made_labels, group) + (1 - weight) * one_hot_targets(labels[src], group)
    picked = real.subset(src)
    ids = [f"relabel:{c}:{k}:{real.ids[i]}" for k, (c, i) in enumerate(zip(made_labels.tolist(), src.tolist()))]
    return dataclasses.replace(picked, labels=made_labels.reshape(-1, 1), ids=ids, captions=None, skipped=[],
                               targets=targets.astype(np.float32))


def with_stand_ins(images: LabeledImages | None, real: LabeledImages, relabel: Relabel,
                   run_seed: int) -> LabeledImages | None:
    """``images`` (an arm's synthetic images, or None) followed by ``train.relabel``'s stand-ins made from
    ``real`` (:func:`relabelled_images`, drawn once per run seed); ``images`` alone when relabel is off."""
    if relabel.weight <= 0:
        return images
    stand_ins = relabelled_images(real, weight=relabel.weight, target=relabel.target,
                                  seed=derive_seed(run_seed, "relabel"))
    return stand_ins if images is None else joined_images([images, stand_ins])


def joined_images(parts: Sequence[LabeledImages]) -> LabeledImages:
    """One set of the images of ``parts`` (of one label schema and image mode), in order, whatever each holds
    (files, arrays, decoders); every part's soft targets, or its one-hot, where any part has targets."""
    first = parts[0]
    if all(p.paths is not None for p in parts):
        store = {"paths": [q for p in parts for q in p.paths]}
    elif all(p.pixels is not None and p.pixels.dtype != object and p.pixels.shape[1:] == first.pixels.shape[1:]
             for p in parts):
        store = {"pixels": np.concatenate([p.pixels for p in parts])}
    else:  # mixed storage: one decoder per image (LabeledImages.image calls it)
        decoders = [functools.partial(p.image, j) for p in parts for j in range(len(p))]
        store = {"pixels": np.empty(len(decoders), dtype=object)}
        store["pixels"][:] = decoders
    targets = None
    if any(p.targets is not None for p in parts):
        targets = np.concatenate([p.targets if p.targets is not None
                                  else one_hot_targets(p.labels, p.schema.group_sizes) for p in parts])
    return LabeledImages(first.schema, np.concatenate([p.labels for p in parts]), [i for p in parts for i in p.ids],
                         mode=first.mode, origin=first.origin, targets=targets, **store)


def seeded_batches(batches: list[np.ndarray], seed: int) -> list[list[tuple[int, int]]]:
    """``batches`` of indices as ``(index, seed)`` keys of :class:`ImageSet`: the k-th image of the epoch gets
    ``seed + k`` (mod 2^63)."""
    keys, k = [], 0
    for batch in batches:
        keys.append([(int(i), (seed + k + j) % (1 << 63)) for j, i in enumerate(batch)])
        k += len(batch)
    return keys


class EpochBatches(Sampler):
    """A batch sampler whose batches are set anew each epoch, so that one ``DataLoader`` (and its persistent
    workers, with their image caches) serves every epoch."""

    def __init__(self):
        super().__init__()
        self.batches: list[list] = []

    def __iter__(self) -> Iterator[list]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
