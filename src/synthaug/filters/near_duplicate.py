"""``near-duplicate``: reject memorised copies of real training images and repeats of synthetic ones.

Distances as in the memorisation check (:mod:`synthaug.evaluate.memorisation`, whose nearest-neighbour code
this uses): RMS pixel distance (images in [0, 1]) and feature distance divided by the class's typical
real-to-real nearest-neighbour distance, both to the nearest real training image *of the same class*, and to
the nearest *earlier* synthetic image of the same class in plan order (so the first of a group is kept). The
real training images and the feature extractor (the fidelity one: by default the baseline arm's classifier) are
handed to the filter in its :class:`~synthaug.filters.base.ScoringInputs`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from synthaug.data.schema import LabeledImages
from synthaug.filters.base import Decision, Filter, ScoringInputs
from synthaug.filters.config import FILTERS, NearDuplicateFilterConfig

CHUNK = 1024


def nearest_earlier_same_class(x: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Per row, the distance to the nearest earlier row of the same class (inf for the first of a class)."""
    labels = np.asarray(labels)
    dist = np.full(len(x), np.inf)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rows = x[idx].double()
        for start in range(1, len(idx), CHUNK):
            stop = min(start + CHUNK, len(idx))
            d = torch.cdist(rows[start:stop], rows[:stop])
            earlier = torch.arange(stop)[None, :] < torch.arange(start, stop)[:, None]
            dist[idx[start:stop]] = d.masked_fill(~earlier, float("inf")).min(1).values.numpy()
    return dist


@FILTERS.register("near-duplicate")
class NearDuplicateFilter(Filter):
    name = "near-duplicate"
    config: NearDuplicateFilterConfig

    needs = frozenset({"real", "features"})

    def score(self, images: LabeledImages, inputs: ScoringInputs, *, progress: bool = False) -> dict[str, np.ndarray]:
        from synthaug.evaluate.memorisation import nearest_same_class, real_spacing
        from synthaug.imaging import load_tensor
        from synthaug.train.loop import image_size_of

        inputs.require(self.needs, self.name)
        train, extractor = inputs.real, inputs.features
        f_real, f_synth = extractor(train), extractor(images)
        size = image_size_of(train)
        p_real = load_tensor(train, size=size, progress=progress, desc="near-duplicate: real").flatten(1)
        p_synth = load_tensor(images, size=size, progress=progress, desc="near-duplicate: synthetic").flatten(1)
        y_real, y_synth = train.labels[:, 0], images.labels[:, 0]
        spacing = real_spacing(f_real, y_real, len(train.schema.groups[0].classes))
        scale = np.maximum(spacing[y_synth], 1e-12)
        rms = np.sqrt(p_synth.shape[1])
        real_pix, _ = nearest_same_class(p_synth, y_synth, p_real, y_real)
        real_feat, _ = nearest_same_class(f_synth, y_synth, f_real, y_real)
        return {"real_pixel_rms": real_pix / rms, "real_feature_ratio": real_feat / scale,
                "synthetic_pixel_rms": nearest_earlier_same_class(p_synth, y_synth) / rms,
                "synthetic_feature_ratio": nearest_earlier_same_class(f_synth, y_synth) / scale}

    def decide(self, scores: dict[str, np.ndarray], classes: np.ndarray, class_names: Sequence[str]) -> Decision:
        c = self.config
        reject = np.zeros(len(classes), dtype=bool)
        reasons: list[list[str]] = [[] for _ in classes]
        for target in c.against:
            for kind, limit, unit in (("pixel_rms", c.pixel_threshold, "RMS pixel distance"),
                                      ("feature_ratio", c.feature_ratio, "feature distance / real spacing")):
                value = scores[f"{target}_{kind}"]
                hit = value <= limit
                reject |= hit
                for i in np.flatnonzero(hit):
                    what = "a real training image" if target == "real" else "an earlier synthetic image"
                    reasons[i].append(f"{unit} {value[i]:.3g} <= {limit:g} to {what} of its class")
        distance = np.min([scores[f"{t}_pixel_rms"] for t in c.against], axis=0)
        return Decision(~reject, distance, ["; ".join(r) if r else None for r in reasons])
