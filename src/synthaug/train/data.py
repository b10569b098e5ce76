"""Datasets that feed classifier training: real and synthetic images as one indexable set."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from synthaug.data.schema import LabeledImages


class ImageSet(Dataset):
    """Real images (indices < len(real)) followed by synthetic ones; decoded once and cached as uint8.

    Items are (transformed image, label vector, is_synthetic).
    """

    def __init__(self, real: LabeledImages, synthetic: LabeledImages | None, transform: Callable, image_size: int):
        self.parts = [real] + ([synthetic] if synthetic is not None and len(synthetic) else [])
        self.num_real = len(real)
        self.labels = np.concatenate([p.labels for p in self.parts])
        self.transform = transform
        self._resize = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def _raw(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            part, j = (self.parts[0], i) if i < self.num_real else (self.parts[1], i - self.num_real)
            self._cache[i] = self._resize(part.image(j))
        return self._cache[i]

    def __getitem__(self, i: int):
        return self.transform(self._raw(i)), torch.as_tensor(self.labels[i]), i >= self.num_real
