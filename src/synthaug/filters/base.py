"""What every filter is: a scorer (slow: a classifier, CLIP, nearest neighbours) and a decision on the cached
scores (fast: thresholds), so a new threshold re-decides without rescoring or regenerating.

A filter scores the synthetic images in plan order and returns named score arrays; :meth:`Filter.decide`
turns them into a keep mask, one headline score per image and a reason per rejected image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.filters.config import FILTERS, FilterConfig

if TYPE_CHECKING:
    from synthaug.experiment import Experiment


@dataclass
class Decision:
    """A filter's verdict on every image.

    Attributes:
        keep: bool (N,): kept images.
        score: float (N,): the score the decision was made on (higher is better for confidence and clip-score;
            a distance for near-duplicate).
        reasons: per image, why it was rejected (None when kept).
    """

    keep: np.ndarray
    score: np.ndarray
    reasons: list[str | None]


class Filter:
    """Base of every filter; subclasses set ``name`` and implement :meth:`score` and :meth:`decide`."""

    name: str = ""

    def __init__(self, config: FilterConfig):
        self.config = config

    def scoring_inputs(self, exp: Experiment) -> dict[str, Any]:
        """Fingerprint parts of what the scores depend on beyond the synthetic set and the config's scoring
        fields (a classifier, a feature extractor); computed without training anything."""
        return {}

    def score(self, exp: Experiment, images: LabeledImages, *, progress: bool = False) -> dict[str, np.ndarray]:
        """Named score arrays, one value per image of ``images`` (plan order)."""
        raise NotImplementedError

    def decide(self, scores: dict[str, np.ndarray], classes: np.ndarray, class_names: Sequence[str]) -> Decision:
        """The decision under the config's thresholds (pure: no model, no file)."""
        raise NotImplementedError


def lowest_per_class(score: np.ndarray, classes: np.ndarray, share: float) -> np.ndarray:
    """A mask of the round(share × n_c) lowest-scoring images of each class (ties: the later one first)."""
    score, classes = np.asarray(score, dtype=np.float64), np.asarray(classes)
    out = np.zeros(len(score), dtype=bool)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        n = int(np.floor(share * len(idx) + 0.5))
        if n:
            order = idx[np.lexsort((-idx, score[idx]))]
            out[order[:n]] = True
    return out


def create_filter(config: FilterConfig) -> Filter:
    """The filter registered under ``config.name``, built from its config."""
    return FILTERS.get(config.name)(config)
