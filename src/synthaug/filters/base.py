"""What every filter is: a scorer (slow: a classifier, CLIP, nearest neighbours) and a decision on the cached
scores (fast: thresholds), so a new threshold re-decides without rescoring or regenerating.

A filter is handed what it scores with, never the run: the synthetic images (plan order) and a
:class:`ScoringInputs` holding the inputs it declares in :attr:`Filter.needs` (a scoring classifier's model
folder, a feature extractor, the real training images), resolved by the caller beforehand (the runner's filter
stage trains a scoring classifier through the train stage when it needs one). :meth:`Filter.score` returns
named score arrays; :meth:`Filter.decide` turns them into a keep mask, one headline score per image and a
reason per rejected image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.filters.config import FILTERS, FilterConfig

# what a filter may ask for (Filter.needs)
INPUTS = ("classifier", "real", "features")


@dataclass(frozen=True)
class ScoringInputs:
    """What a filter scores with, resolved before scoring.

    Attributes:
        device: the torch device to score on.
        classifier: the model folder of a trained classifier (``classifier.json`` + weights), for filters that
            need ``"classifier"``.
        real: the real training images, for filters that need ``"real"``.
        features: a feature extractor (images → a float tensor of one row per image), for filters that need
            ``"features"``.
    """

    device: Any = "cpu"
    classifier: Path | None = None
    real: LabeledImages | None = None
    features: Callable[[LabeledImages], Any] | None = None

    def require(self, needs: frozenset[str], name: str) -> None:
        """Raises a :class:`SettingError` naming each input of ``needs`` that is missing."""
        missing = [n for n in INPUTS if n in needs and getattr(self, n) is None]
        if missing:
            raise SettingError(f"filter {name} scores with {', '.join(missing)}, which the caller did not give; pass "
                               f"them in ScoringInputs({', '.join(f'{m}=...' for m in missing)}).")


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
    """Base of every filter; subclasses set ``name`` and ``needs`` and implement :meth:`score` and
    :meth:`decide`."""

    name: str = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # of INPUTS: what score() reads from its ScoringInputs

    def __init__(self, config: FilterConfig):
        self.config = config

    @property
    def classifier_arm(self) -> str | None:
        """The arm whose classifier the filter scores with (filters that need ``"classifier"``)."""
        return None

    def score(self, images: LabeledImages, inputs: ScoringInputs, *, progress: bool = False) -> dict[str, np.ndarray]:
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
