"""``noise``: uniform noise images drawn from each item's seed, in microseconds.

No model, nothing to train: it exists to exercise and measure everything around a generator (the store, the
plan slicing under several processes, resume, the data path) at scale, e.g. in ``bench/store.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.generators.configs import NoiseConfig
from synthaug.plan import PlanItem


@register_generator("noise")
class NoiseGenerator(Generator):
    config_class = NoiseConfig
    pseudo_control = "noise images from unlabelled items' seeds"

    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        size, channels = self.config.image_size, self.config.channels
        shape = (size, size) if channels == 1 else (size, size, channels)
        out = []
        for it in items:
            pixels = np.random.default_rng(it.seed).integers(0, 256, shape, dtype=np.uint8)
            out.append(Generated(Image.fromarray(pixels)))
        return out
