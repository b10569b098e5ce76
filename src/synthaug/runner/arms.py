"""The classifier arms of the config: each arm and seed trained on the training split plus the synthetic images
its ``synthetic`` setting names (none; the generated set, filtered when the arm has ``use_filters``; the
pseudo-labelled control), resolved here before the train stage runs."""

from __future__ import annotations

import logging

from synthaug.config import ArmConfig
from synthaug.data.schema import LabeledImages
from synthaug.runner.context import RunContext
from synthaug.runner.filter import filtered_images
from synthaug.runner.generate import synthetic_images, synthetic_stage
from synthaug.runner.pseudo import pseudo_stage
from synthaug.runner import train
from synthaug.train.data import attach_translation_targets, with_stand_ins
from synthaug.train.batch_composition import keep_by_share
from synthaug.utils import write_json

log = logging.getLogger(__name__)


def arm_synthetic(ctx: RunContext, arm: ArmConfig) -> LabeledImages | None:
    """The synthetic images ``arm`` trains on (made first when needed; with ``train.synthetic_ratio``, each class's
    share of them; with ``train.relabel``, followed by the stand-ins made from real images of other classes), or
    None for a real-only arm."""
    images = None if arm.synthetic == "none" else _made_images(ctx, arm)
    return with_stand_ins(images, ctx.splits.train, ctx.arm_train(arm).relabel, ctx.cfg.seed)


def _made_images(ctx: RunContext, arm: ArmConfig) -> LabeledImages:
    """The generated or pseudo-labelled images of ``arm`` (soft translation targets attached, ratio applied)."""
    if arm.synthetic == "generated":
        images, store = (filtered_images(ctx) if arm.use_filters else synthetic_images(ctx)), synthetic_stage(ctx)
    else:
        labeller, seed = ctx.pseudo_labeller
        store = pseudo_stage(ctx, ctx.dir / train_arm(ctx, labeller, seed)["folder"] / "model")
        images = store.load(mode=ctx.splits.train.mode)
    labels = ctx.arm_train(arm).translation_labels
    if labels.mode == "soft":  # Diff-Mix's mixture targets for translated items (train.translation_labels)
        images = attach_translation_targets(images, store.records(), ctx.splits.train, gamma=labels.gamma)
    shares = ctx.synthetic_shares(arm)
    if shares is not None:  # train.synthetic_ratio: the first round(r × n_c) of each class, in plan order
        images = images.subset(keep_by_share(images.labels, shares))
    return images


def train_arm(ctx: RunContext, arm: ArmConfig, seed: int) -> dict:
    """Stage ``train/<arm>/seed<k>`` of a configured arm: its synthetic images resolved, then trained and tested
    (see :func:`synthaug.runner.train.train_arm`). Returns the stage's record.

    Raises:
        StageMismatch: the arm's stage was made with other inputs (checked before anything is generated).
    """
    ctx.records.reuse(ctx.arm_rel(arm, seed), ctx.arm_parts(arm, seed))  # before any stage of this run writes
    return train.train_arm(ctx, arm, seed, arm_synthetic(ctx, arm))


def left_out_reason(ctx: RunContext, arm: ArmConfig) -> str | None:
    """Why ``arm`` is left out of this run (a pseudo-labelled arm whose generator has no control), or None."""
    if arm.synthetic == "pseudo" and ctx.pseudo_control is None:
        return (f"generator {ctx.cfg.generator.name!r} cannot draw class-agnostic images, so it has no "
                "pseudo-labelled control")
    return None


def train_arms(ctx: RunContext, arms: list[ArmConfig]) -> list[dict]:
    """Every seed of every arm in ``arms``, in order; an arm that cannot run here is left out with
    ``train/<arm>/left_out.json`` saying why. Returns the records of the trained stages."""
    records = []
    for arm in arms:
        reason = left_out_reason(ctx, arm)
        if reason is not None:
            log.warning("Arm %s left out: %s.", arm.name, reason)
            if ctx.is_main:
                ctx.records.hold_lock()
                write_json(ctx.dir / "train" / arm.name / "left_out.json", {"arm": arm.name, "reason": reason})
            continue
        records.extend(train_arm(ctx, arm, seed) for seed in ctx.cfg.seeds)
    return records
