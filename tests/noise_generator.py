"""A tiny deterministic generator for store tests: a noise image drawn from the item's seed."""

import time

import numpy as np
from PIL import Image

from synthaug.generators import GENERATORS, Generator, GeneratorConfig, register_generator


class NoiseConfig(GeneratorConfig):
    size: int = 8
    delay: float = 0.0  # seconds per image, to let a test kill the process mid-run


if "test-noise" not in GENERATORS:

    @register_generator("test-noise")
    class NoiseGenerator(Generator):
        config_class = NoiseConfig

        def generate(self, items):
            time.sleep(self.config.delay * len(items))
            out = []
            for it in items:
                rng = np.random.default_rng(it.seed)
                out.append(Image.fromarray(rng.integers(0, 255, (self.config.size,) * 2, dtype=np.uint8)))
            return out
