"""Datasets that feed classifier training: real and synthetic images as one indexable set, decoded on demand."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from synthaug.data.schema import LabeledImages
from synthaug.train.config import TrainConfig

DEFAULT_CACHE_MB: float = TrainConfig.model_fields["image_cache_mb"].default


class ImageSet(Dataset):
    """Real images (indices < len(real)) followed by synthetic ones, decoded and resized when asked for.

    Decoded, resized images (uint8) are kept in memory until they fill ``cache_mb`` megabytes; later ones are
    decoded each time they are asked for. So a small set is decoded once, and a large one (ImageNet-LT plus a
    million synthetic images) holds at most ``cache_mb`` per loading process rather than every image. With
    loader workers each worker has its own cache (the training loop keeps them alive across epochs).

    Items are (transformed image, label vector, is_synthetic). An item asked for as ``(index, seed)`` is
    augmented with torch's random generator seeded with ``seed`` (the global state is left as it was), so the
    result does not depend on which process loads it or on what ran before (see :func:`seeded_batches`).
    """

    def __init__(self, real: LabeledImages, synthetic: LabeledImages | None, transform: Callable, image_size: int,
                 *, cache_mb: float = DEFAULT_CACHE_MB):
        self.parts = [real] + ([synthetic] if synthetic is not None and len(synthetic) else [])
        self.num_real = len(real)
        self.labels = np.concatenate([p.labels for p in self.parts])
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
        return image, torch.as_tensor(self.labels[i]), i >= self.num_real


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
