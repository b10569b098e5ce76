"""A tiny deterministic generator for store tests: a noise image drawn from the item's seed."""

import time

import numpy as np
from PIL import Image

from synthaug.generators import GENERATORS, Generated, Generator, GeneratorConfig, register_generator


class NoiseConfig(GeneratorConfig):
    size: int = 8
    delay: float = 0.0  # seconds per image, to let a test kill the process mid-run


if "test-noise" not in GENERATORS:

    @register_generator("test-noise")
    class NoiseGenerator(Generator):
        config_class = NoiseConfig

        pseudo_control = "noise images from unlabelled items' seeds"

        def sample(self, items):
            time.sleep(self.config.delay * len(items))
            out = []
            for it in items:
                rng = np.random.default_rng(it.seed)
                pixels = rng.integers(0, 255, (self.config.size,) * 2, dtype=np.uint8)
                out.append(Generated(Image.fromarray(pixels), {"noise_mean": round(float(pixels.mean()), 3)}))
            return out
