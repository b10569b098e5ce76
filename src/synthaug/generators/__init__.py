"""Generators, one registry (:data:`GENERATORS`, declared in :mod:`synthaug.generators.configs`).

Built-in generators are declared by name and imported on first use, so importing this package (or validating
a config) imports neither torch nor diffusers. The names below resolve lazily (PEP 562).
"""

from synthaug.generators.configs import GENERATORS, GeneratorConfig, generator_config

_LAZY = {"Generated", "Generator", "create_generator", "fill_store", "register_generator"}


def __getattr__(name: str):
    if name in _LAZY:
        from synthaug.generators import base

        return getattr(base, name)
    raise AttributeError(f"module 'synthaug.generators' has no attribute {name!r}")


def load_all() -> None:
    """Imports every declared generator (e.g. to list their config classes or run contract tests)."""
    for name in GENERATORS.names():
        GENERATORS.get(name)


__all__ = ["GENERATORS", "Generated", "GeneratorConfig", "create_generator", "fill_store", "generator_config", "load_all",
           "register_generator"]
