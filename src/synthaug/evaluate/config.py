"""The ``evaluation:`` section of an experiment config (plain data: no torch import).

Every study trains with the training settings of one real-only arm (``baseline_arm``), so its numbers compare
with that arm's; every study writes JSON/CSV under ``runs/<name>/evaluation/<study>/`` with a ``done.json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FidelityConfig(_Strict):
    enabled: bool = True
    # the features every fidelity figure is computed on (and named after): classifier (offline default),
    # inception (FID), clip (adds CMMD, Jayasumana et al. 2024), dinov2 (FD-DINOv2, Stein et al. 2023)
    extractor: Literal["classifier", "inception", "clip", "dinov2"] = "classifier"
    # classifier: a model folder (None: train/<baseline_arm>/seed<first seed>/model, trained on the long-tailed
    # training split); inception: the local weights file; clip: a model folder or hub id (e.g.
    # openai/clip-vit-large-patch14-336, CMMD's); dinov2: a model folder or hub id (e.g. facebook/dinov2-large,
    # Stein et al.'s ViT-L/14); hub ids load offline only once cached
    extractor_source: str | None = None
    k: int = Field(3, ge=1)  # improved precision/recall: the k-th neighbour sets each ball's radius
    kid_subset_size: int = Field(100, ge=2)  # lowered to the smaller set's size per class
    kid_subsets: int = Field(50, ge=1)
    pixel_threshold: float = Field(0.05, ge=0)  # memorisation: near-copy at or under this RMS pixel distance
    feature_ratio: float = Field(0.1, ge=0)  # ... or feature distance ≤ this × the class's real NN spacing
    pairs: int = Field(32, ge=1)  # closest pairs shown in the picture


class CASConfig(_Strict):
    """Classification Accuracy Score: a classifier trained on the synthetic set alone, tested on real images."""

    enabled: bool = True


class OracleConfig(_Strict):
    """The same classifier on the balanced real pool (the training split before long-tailing): an upper bound."""

    enabled: bool = True


class ReplacementConfig(_Strict):
    """Replace x % of every class's real training images with synthetic ones of that class."""

    enabled: bool = True
    percents: list[float] = Field(default_factory=lambda: [2, 4, 6, 8, 10, 12])

    @field_validator("percents")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0 < p <= 100]
        if bad:
            raise ValueError(f"replacement percents must be in (0, 100], got {bad}")
        return sorted(v)


class TargetedConfig(_Strict):
    """Add ``count`` synthetic images to each chosen class vs real-only, with a pseudo-labelled control of the
    same total count (where the generator can draw class-agnostic images). Off by default: it generates
    ``count`` images per targeted class plus as many pseudo-labelled ones (turn it on per experiment)."""

    enabled: bool = False
    count: int = Field(500, ge=1)  # synthetic images per targeted class
    classes: list[str] | None = None  # None: the two rarest classes of the training split
    rarest: int = Field(2, ge=1)  # how many rarest classes when `classes` is None


class FewShotConfig(_Strict):
    """The few-shot protocol of the augmentation-conditioning study (after DA-Fusion, Trabucco et al. 2023): k
    real images per class, a frozen pretrained backbone (the fidelity extractor) with only a linear last layer
    trained, the best validation accuracy across epochs, mean ± std over trials, with and without synthetic
    images (``synthetic_per_real`` per real image, from the synthetic set of the class)."""

    enabled: bool = True
    shots: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    trials: int = Field(3, ge=1)
    epochs: int = Field(50, ge=1)
    lr: float = Field(0.01, gt=0)
    synthetic_per_real: int = Field(10, ge=1)


# the evaluation studies, in the order `synthaug run` and `synthaug study` run them (one folder each under
# evaluation/); the study functions are keyed by these names in synthaug.runner.studies.STUDIES
STUDY_NAMES: tuple[str, ...] = ("samples", "fidelity", "cas", "oracle", "replacement", "targeted", "few_shot")


class EvaluationConfig(_Strict):
    enabled: bool = True  # False: `synthaug run` runs no study (the report then shows none)
    baseline_arm: str | None = None  # a real-only arm (synthetic: none); None: real-ce if present, else the first
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    cas: CASConfig = Field(default_factory=CASConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    replacement: ReplacementConfig = Field(default_factory=ReplacementConfig)
    targeted: TargetedConfig = Field(default_factory=TargetedConfig)
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    seeds: list[int] | None = None  # classifier seeds of the studies (None: the experiment's first seed only)
    report_top_k: int = Field(10, ge=1)  # beyond 50 classes, per-class pictures show the top and bottom k
