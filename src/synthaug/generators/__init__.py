"""Generators, one registry. Importing this package registers every built-in generator."""

from synthaug.generators.base import (
    GENERATORS, Generator, GeneratorConfig, create_generator, fill_store, generator_config, register_generator,
)
from synthaug.generators import ddpm as _ddpm  # noqa: F401  (registers "ddpm")
from synthaug.generators import sd_text2img as _sd_text2img  # noqa: F401  (registers "sd-text2img")
from synthaug.generators import sd_finetune as _sd_finetune  # noqa: F401  (registers "sd-finetune")
from synthaug.generators import pseudo_label as _pseudo_label  # noqa: F401  (registers "pseudo-label")
from synthaug.generators import unclip_augcond as _unclip_augcond  # noqa: F401  (registers "unclip-augcond")
from synthaug.generators import mvc as _mvc  # noqa: F401  (registers "mvc")


__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "create_generator", "fill_store", "generator_config",
           "register_generator"]
