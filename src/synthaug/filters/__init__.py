"""Filters between generation and training: keep or reject every synthetic image with a reason and a score.

Registered by name (:data:`FILTERS`): ``confidence`` (a real-only classifier trained on the training split),
``clip-score`` (CLIP image–text similarity to the class prompt), ``near-duplicate`` (memorised copies of
real images, repeats of synthetic ones) and ``in-distribution`` (feature distance to the class's real centre
within the class's own real spread). Configs live in :mod:`synthaug.filters.config` (no torch); the
decisions files in :mod:`synthaug.filters.decisions`; the
run stage that scores and decides in :mod:`synthaug.runner.filter` (filters never import the runner).
"""

from synthaug.filters.config import FILTERS

__all__ = ["FILTERS"]
