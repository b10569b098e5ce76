"""Generators, one registry. Importing this package registers every built-in generator."""

from synthaug.generators.base import (
    GENERATORS, Generator, GeneratorConfig, create_generator, fill_store, generator_config, register_generator,
)
from synthaug.generators import ddpm as _ddpm  # noqa: F401  (registers "ddpm")
from synthaug.generators import sd_text2img as _sd_text2img  # noqa: F401  (registers "sd-text2img")
from synthaug.generators import pseudo_label as _pseudo_label  # noqa: F401  (registers "pseudo-label")


__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "create_generator", "fill_store", "generator_config",
           "register_generator"]
