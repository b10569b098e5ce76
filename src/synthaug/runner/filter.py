"""Stage ``filter`` (and its score caches ``filter-scores/<name>``): every configured filter keeps or rejects
every generated image; the arms with ``use_filters`` train on the selected ones.

For each filter the stage resolves what it scores with beforehand (:func:`scoring_inputs`): the scoring
classifier's model folder (trained through :func:`synthaug.runner.train.train_arm` when needed), the fidelity
feature extractor, the real training images. A filter's scores are recomputed only when what they depend on
changes (the set, the scoring config, the classifier, the extractor); the decisions are redone (old folder kept
aside) when the thresholds, the targets or the set change. Decision files: :mod:`synthaug.filters.decisions`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.filters.base import Filter, ScoringInputs, create_filter
from synthaug.filters.decisions import selected_ids, write_decisions
from synthaug.runner.baseline import extractor_id, fidelity_extractor
from synthaug.runner.context import RunContext
from synthaug.runner.generate import synthetic_images, synthetic_stage
from synthaug.runner.train import train_arm
from synthaug.utils import read_json, write_json

log = logging.getLogger(__name__)


def generated_in_plan_order(ctx: RunContext) -> LabeledImages:
    """Every image of the current plan (over-generated ones included), in plan order."""
    items = ctx.plan_items
    images = synthetic_stage(ctx).load(mode=ctx.splits.train.mode, ids=[it.item_id for it in items])
    position = {item_id: i for i, item_id in enumerate(images.ids)}
    return images.subset([position[it.item_id] for it in items if it.item_id in position])


def scoring_parts(ctx: RunContext, flt: Filter) -> dict[str, Any]:
    """What ``flt``'s inputs are, as fingerprint parts (computed without training anything)."""
    parts: dict[str, Any] = {}
    if "classifier" in flt.needs:
        parts["classifier"] = ctx.arm_fp(ctx.cfg.arm(flt.classifier_arm), ctx.cfg.seeds[0])
    if "real" in flt.needs:
        parts["data"] = ctx.data_fp
    if "features" in flt.needs:
        parts["extractor"] = extractor_id(ctx)
    return parts


def scoring_inputs(ctx: RunContext, flt: Filter) -> ScoringInputs:
    """What ``flt`` scores with: its classifier's model folder (trained if needed), the fidelity extractor, the
    real training images, as it declares in ``needs``."""
    given: dict[str, Any] = {"device": ctx.device}
    if "classifier" in flt.needs:
        record = train_arm(ctx, ctx.cfg.arm(flt.classifier_arm), ctx.cfg.seeds[0])  # a real-only arm
        given["classifier"] = ctx.dir / record["folder"] / "model"
    if "real" in flt.needs:
        given["real"] = ctx.splits.train
    if "features" in flt.needs:
        given["features"] = fidelity_extractor(ctx)[0]
    return ScoringInputs(**given)


def filter_scores(ctx: RunContext, flt: Filter, images: LabeledImages) -> dict[str, np.ndarray]:
    """Stage ``filter-scores/<name>``: the filter's scores of ``images`` (computed once per scoring input)."""
    rel = f"filter-scores/{flt.name}"
    parts = {"synthetic": ctx.generated_fp, "scoring": flt.config.scoring_part(), **scoring_parts(ctx, flt)}
    path = ctx.dir / rel / "scores.json"
    with ctx.records.record(rel, parts, redo=True) as summary:
        if summary is not None:
            inputs = scoring_inputs(ctx, flt)
            log.info("Filter %s: scoring %d synthetic images.", flt.name, len(images))
            scores = flt.score(images, inputs, progress=ctx.cfg.progress)
            write_json(path, {"item_ids": images.ids, "scores": {k: np.asarray(v, dtype=np.float64).tolist()
                                                                 for k, v in scores.items()}})
            summary.update(images=len(images))
    saved = read_json(path)
    if saved["item_ids"] != images.ids:  # the fingerprint covers the plan, so this is a damaged folder
        raise SettingError(f"{path} scores other images than the current plan; delete {ctx.dir / rel} to rescore.")
    return {k: np.asarray(v, dtype=np.float64) for k, v in saved["scores"].items()}


def filter_stage(ctx: RunContext) -> dict:
    """Stage ``filter``: decisions for every generated image.

    Returns:
        The stage record (planned, kept, selected, short per class).

    Raises:
        SettingError: no filter is configured, or the data has several label groups.
    """
    if not ctx.cfg.filters:
        raise SettingError("No filters are configured; add a `filters:` list to the config (see README, Filters).")
    if not ctx.splits.schema.is_single_label:
        raise SettingError(f"filters keep per-class counts of single-label data, but this data has "
                           f"{len(ctx.splits.schema.groups)} label groups; remove `filters`.")
    images = generated_in_plan_order(ctx)
    folder = ctx.dir / "filter"
    with ctx.records.record("filter", ctx.filter_parts, redo=True) as summary:
        if summary is not None:
            names = list(images.schema.groups[0].classes)
            decisions = {}
            for cfg in ctx.cfg.filters:
                flt = create_filter(cfg)
                decisions[flt.name] = flt.decide(filter_scores(ctx, flt, images), images.labels[:, 0], names)
            summary.update(write_decisions(images, decisions, ctx.plan_counts, folder,
                                           overgenerate=ctx.cfg.plan.overgenerate))
    return ctx.records.done("filter")


def filtered_images(ctx: RunContext) -> LabeledImages:
    """The images arms with ``use_filters`` train on (runs the stage if needed): the first target count of images
    per class that every filter kept, in plan order; the unfiltered target items when no filter is configured.
    Loaded once per run."""
    if not ctx.cfg.filters:
        return synthetic_images(ctx)

    def load() -> LabeledImages:
        filter_stage(ctx)
        return synthetic_images(ctx, ids=selected_ids(ctx.dir / "filter"))

    return ctx.memo("filtered-images", load)
