"""Configs of the synthetic-image filters, as plain data (pydantic only: no torch).

Each filter config has two roles of fields: *scoring* fields (what the per-image scores depend on: the
classifier, the CLIP model, the prompt) and *decision* fields (thresholds). Scores are cached per filter under
``filter-scores/<name>/``, so a new threshold re-decides without rescoring, and nothing is regenerated.
:data:`FILTERS` declares every filter by name and import path, so validating a config imports no torch.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthaug.errors import SettingError
from synthaug.registry import Registry

FILTERS: Registry = Registry("filter", {
    "confidence": "synthaug.filters.confidence:ConfidenceFilter",
    "clip-score": "synthaug.filters.clip_score:ClipScoreFilter",
    "near-duplicate": "synthaug.filters.near_duplicate:NearDuplicateFilter",
    "in-distribution": "synthaug.filters.in_distribution:InDistributionFilter",
})


class FilterConfig(BaseModel):
    """Base of every filter config: unknown keys are errors; ``decision_fields`` only re-decide."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    decision_fields: ClassVar[frozenset[str]] = frozenset()

    def scoring_part(self) -> dict[str, Any]:
        """The fields the scores depend on (what the cached scores' record protects)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.decision_fields}


class ConfidenceFilterConfig(FilterConfig):
    """Keeps images whose intended class a classifier trained on the long-tailed *training split* predicts
    with probability >= ``min_probability`` (or the ``keep_top_percent`` most confident per class)."""

    decision_fields: ClassVar[frozenset[str]] = frozenset({"min_probability", "keep_top_percent"})
    name: Literal["confidence"] = "confidence"
    # a real-only arm (synthetic: none) whose first-seed classifier scores the images; a class-balanced one
    # (oversampling) by default, since a cross-entropy classifier trained on long-tailed data is unsure of the
    # tail classes (and a Balanced-Softmax one rejected nearly all tail images in bench/downstream.py)
    classifier_arm: str = "oversample"
    min_probability: float | None = Field(0.5, gt=0, le=1)  # τ: keep p(intended class) >= τ
    keep_top_percent: float | None = Field(None, gt=0, le=100)  # or: keep the top q % per class

    @model_validator(mode="after")
    def _one_rule(self):
        if self.keep_top_percent is not None:
            if "min_probability" in self.model_fields_set and self.min_probability is not None:
                raise SettingError(f"filter confidence: give min_probability or keep_top_percent, not both (got "
                                   f"min_probability={self.min_probability}, keep_top_percent={self.keep_top_percent}).")
            self.min_probability = None
        elif self.min_probability is None:
            raise SettingError("filter confidence needs min_probability (τ) or keep_top_percent (q).")
        return self


class ClipScoreFilterConfig(FilterConfig):
    """Rejects the ``reject_bottom_percent`` % of each class with the lowest CLIP image–text similarity to the
    class prompt (Diff-Mix drops the bottom 10 %)."""

    decision_fields: ClassVar[frozenset[str]] = frozenset({"reject_bottom_percent"})
    name: Literal["clip-score"] = "clip-score"
    model: str  # a CLIP model: a local folder (config, weights, tokenizer, preprocessor) or a hub id
    prompt: str = "a photo of a {label}"  # {label}: the class name (underscores as spaces)
    reject_bottom_percent: float = Field(10.0, ge=0, lt=100)

    @model_validator(mode="after")
    def _prompt_names_class(self):
        if "{label}" not in self.prompt:
            raise SettingError(f"filter clip-score: prompt {self.prompt!r} must contain {{label}} (the class name), "
                               "e.g. 'a photo of a {label}'.")
        return self


class NearDuplicateFilterConfig(FilterConfig):
    """Rejects memorised copies: synthetic images within a threshold of a real training image of their class,
    or of an earlier synthetic image of their class (the first of a group of duplicates is kept), in pixels
    (RMS, images in [0, 1]) or in the feature space of ``evaluation.fidelity.extractor`` (by default the
    baseline real-only arm's classifier) relative to the class's real nearest-neighbour spacing."""

    decision_fields: ClassVar[frozenset[str]] = frozenset({"pixel_threshold", "feature_ratio", "against"})
    name: Literal["near-duplicate"] = "near-duplicate"
    against: list[Literal["real", "synthetic"]] = Field(default_factory=lambda: ["real", "synthetic"], min_length=1)
    pixel_threshold: float = Field(0.05, ge=0)  # a copy at or under this RMS pixel distance
    feature_ratio: float = Field(0.1, ge=0)  # ... or at or under this × the class's real NN feature spacing


class InDistributionFilterConfig(FilterConfig):
    """Keeps images whose feature distance to their class's real centre lies within the ``quantile`` of the
    class's own real images' distances (DiffuLT's approximately in-distribution samples), in the penultimate
    features of a classifier trained on the long-tailed *training split* (``classifier_arm``)."""

    decision_fields: ClassVar[frozenset[str]] = frozenset({"quantile"})
    name: Literal["in-distribution"] = "in-distribution"
    classifier_arm: str = "oversample"  # a real-only arm whose first-seed classifier gives the features
    distance: Literal["cosine", "euclidean"] = "cosine"  # cosine: between unit-length features
    # classes with fewer real images borrow the pooled, scale-free spread of the larger classes (their own scale)
    min_class_images: int = Field(10, ge=2)
    # keep an image whose distance is at most this quantile of its class's real (leave-one-out) distances
    quantile: float = Field(0.95, gt=0, le=1)


AnyFilterConfig = Annotated[Union[ConfidenceFilterConfig, ClipScoreFilterConfig, NearDuplicateFilterConfig,
                                  InDistributionFilterConfig],
                            Field(discriminator="name")]


def check_filters(filters: list[FilterConfig]) -> None:
    """Each filter at most once (its scores are cached under its name)."""
    names = [f.name for f in filters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingError(f"filters: {twice[0]!r} is listed more than once; list each filter once "
                           f"(filters apply in order and an image must pass all of them).")
