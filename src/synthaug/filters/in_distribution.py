"""``in-distribution``: keep synthetic images that lie about as close to their class's real centre, in a
classifier's feature space, as the class's own real images do (DiffuLT's "approximately in-distribution"
samples; Shao et al., NeurIPS 2024).

The classifier (handed to the filter as a model folder) is a real-only arm trained on the long-tailed training
split alone (``classifier_arm``, by default ``oversample``), and its penultimate features are what is measured.
Per class c:

1. the centre μ_c is the mean feature of the class's real training images (cosine: of their unit-length features);
2. each real image's own distance is taken to the centre of the *other* real images of its class (leave one out),
   so it is measured as a synthetic image is, by a centre it did not help make;
3. a synthetic image's score is where its distance to μ_c falls among those real distances (its empirical
   quantile, ties counted half); it is kept when that is at most ``quantile``.

A class with fewer than ``min_class_images`` real images (4 in MNIST-LT's rarest class) has too few distances
for a quantile of its own: its distances are divided by its median real distance and placed among the pooled,
likewise divided real distances of the classes that have enough, so the shape of the spread comes from all
classes and its scale from the class itself. A class with one real image takes the median scale of the others.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from synthaug.data.schema import LabeledImages
from synthaug.filters.base import Decision, Filter, ScoringInputs
from synthaug.filters.config import FILTERS, InDistributionFilterConfig


def leave_one_out_distances(features: np.ndarray) -> np.ndarray:
    """Each row's distance to the mean of the other rows (empty for fewer than two rows)."""
    n = len(features)
    if n < 2:
        return np.zeros(0)
    others = (features.sum(0, keepdims=True) - features) / (n - 1)
    return np.linalg.norm(features - others, axis=1)


def empirical_quantile(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per value, the share of ``reference`` below it (ties count half): 0 below all, 1 above all."""
    reference = np.sort(reference)
    below = np.searchsorted(reference, values, side="left")
    at_or_below = np.searchsorted(reference, values, side="right")
    return (below + at_or_below) / (2.0 * len(reference))


def real_quantiles(f_real: np.ndarray, y_real: np.ndarray, f_synth: np.ndarray, y_synth: np.ndarray, *,
                   num_classes: int, min_class_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The distance of each synthetic feature row to its class's real centre, and its empirical quantile among
    the class's leave-one-out real distances (pooled and scaled for classes with fewer than ``min_class_images``
    real rows; see the module docstring). Classes with no real row give NaN (no centre to measure from)."""
    distance = np.full(len(f_synth), np.nan)
    quantile = np.full(len(f_synth), np.nan)
    own: dict[int, np.ndarray] = {}
    for c in range(num_classes):
        real = f_real[y_real == c]
        synth = y_synth == c
        own[c] = leave_one_out_distances(real)
        if len(real) and synth.any():
            distance[synth] = np.linalg.norm(f_synth[synth] - real.mean(0), axis=1)
    scale = {c: float(np.median(d)) for c, d in own.items() if len(d) and np.median(d) > 0}
    large = [c for c in scale if len(own[c]) >= min_class_images] or list(scale)
    pooled = np.concatenate([own[c] / scale[c] for c in large]) if large else np.zeros(0)
    fallback_scale = float(np.median([scale[c] for c in large])) if large else 1.0
    for c in range(num_classes):
        synth = (y_synth == c) & ~np.isnan(distance)
        if not synth.any():
            continue
        if len(own[c]) >= min_class_images and c in scale:
            quantile[synth] = empirical_quantile(distance[synth], own[c])
        elif len(pooled):
            quantile[synth] = empirical_quantile(distance[synth] / scale.get(c, fallback_scale), pooled)
    return distance, quantile


@FILTERS.register("in-distribution")
class InDistributionFilter(Filter):
    name = "in-distribution"
    config: InDistributionFilterConfig

    needs = frozenset({"classifier", "real"})

    @property
    def classifier_arm(self) -> str:
        return self.config.classifier_arm

    def _features(self, extractor, images: LabeledImages) -> np.ndarray:
        f = extractor(images).double()
        if self.config.distance == "cosine":
            f = torch.nn.functional.normalize(f, dim=1)
        return f.numpy()

    def score(self, images: LabeledImages, inputs: ScoringInputs, *, progress: bool = False) -> dict[str, np.ndarray]:
        from synthaug.evaluate.features import create_extractor

        inputs.require(self.needs, self.name)
        extractor = create_extractor("classifier", inputs.classifier, device=inputs.device)
        real = inputs.real
        distance, quantile = real_quantiles(
            self._features(extractor, real), real.labels[:, 0], self._features(extractor, images),
            images.labels[:, 0], num_classes=len(real.schema.groups[0].classes),
            min_class_images=self.config.min_class_images)
        return {"centre_distance": distance, "real_quantile": quantile}

    def decide(self, scores: dict[str, np.ndarray], classes: np.ndarray, class_names: Sequence[str]) -> Decision:
        q, limit = scores["real_quantile"], self.config.quantile
        no_centre = np.isnan(q)
        reject = no_centre | (np.nan_to_num(q, nan=1.0) > limit)
        reasons = [None if not r else
                   (f"class {class_names[k]} has no real training image to measure from" if no_centre[i] else
                    f"distance to the {class_names[k]} centre {scores['centre_distance'][i]:.3g} lies at real "
                    f"quantile {q[i]:.3f} > {limit:g}")
                   for i, (r, k) in enumerate(zip(reject, classes))]
        return Decision(~reject, q, reasons)
