"""``confidence``: keep synthetic images whose intended class a real-only classifier believes.

The classifier (handed to the filter as a model folder) is a real-only arm of the experiment (``classifier_arm``,
by default ``oversample``), trained by the runner's filter stage on
the long-tailed *training split* alone: never on the validation or test split nor on the balanced pool the
judge and the oracle use. A class-balanced one by default: a cross-entropy classifier trained on long-tailed
data gives the tail classes low probabilities and would reject most tail images, the ones that matter. Of the
balanced ones, oversampling (every class drawn equally often) made the better filter in bench/downstream.py:
at p >= 0.5 the Balanced-Softmax classifier kept 0 of 564 class-9 images (4 real ones) and left the filtered
arms worse than the unfiltered ones; the oversampled one kept 502 and made them better (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from synthaug.data.schema import LabeledImages
from synthaug.filters.base import Decision, Filter, ScoringInputs, lowest_per_class
from synthaug.filters.config import FILTERS, ConfidenceFilterConfig
from synthaug.utils import read_json


@FILTERS.register("confidence")
class ConfidenceFilter(Filter):
    name = "confidence"
    config: ConfidenceFilterConfig

    needs = frozenset({"classifier"})

    @property
    def classifier_arm(self) -> str:
        return self.config.classifier_arm

    def score(self, images: LabeledImages, inputs: ScoringInputs, *, progress: bool = False) -> dict[str, np.ndarray]:
        from synthaug.train import load_classifier, predict

        inputs.require(self.needs, self.name)
        model, _ = load_classifier(inputs.classifier, inputs.device)
        size = read_json(Path(inputs.classifier) / "classifier.json")["image_size"]
        groups = images.schema.group_sizes
        logits = predict(model, images, size, device=inputs.device)[:, :groups[0]]
        probs = torch.softmax(logits, dim=1).numpy()
        intended = images.labels[:, 0]
        return {"probability": probs[np.arange(len(images)), intended], "predicted": probs.argmax(1).astype(np.float64)}

    def decide(self, scores: dict[str, np.ndarray], classes: np.ndarray, class_names: Sequence[str]) -> Decision:
        p, predicted = scores["probability"], scores["predicted"].astype(np.int64)
        c = self.config
        if c.keep_top_percent is not None:
            reject = lowest_per_class(p, classes, 1 - c.keep_top_percent / 100)
            why = f"not in the top {c.keep_top_percent:g} % of its class"
        else:
            reject = p < c.min_probability
            why = f"< {c.min_probability:g}"
        reasons = [None if not r else f"p({class_names[k]}) = {p[i]:.3f} {why} (predicted {class_names[predicted[i]]})"
                   for i, (r, k) in enumerate(zip(reject, classes))]
        return Decision(~reject, p, reasons)
