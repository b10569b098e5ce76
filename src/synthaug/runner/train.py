"""Classifier stages: train one classifier (resumably), test it on the test split, record it.

:func:`train_stage` is the one classifier stage every other uses (the arms, the scoring classifier of a filter,
tuning's retrain-best); :func:`train_arm` is one arm and seed of the config, given the synthetic images it
trains on (resolved by :mod:`synthaug.runner.arms`). The epoch checkpoint is kept until the test metrics and
``done.json`` are written, so a crash at any point resumes instead of retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthaug.config import ArmConfig
from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.evaluate.metrics import classification_metrics, save_metrics
from synthaug.runner.context import RunContext
from synthaug.runner.data import data_stage
from synthaug.train import TrainConfig, load_classifier, predict, train_classifier
from synthaug.train.checkpoint import remove as remove_checkpoint
from synthaug.utils import read_json, write_json


def train_stage(ctx: RunContext, rel: str, parts: dict[str, Any], tcfg: TrainConfig,
                synthetic: LabeledImages | None, seed: int) -> dict:
    """One classifier stage in ``rel``: train (resumable; every process its share), evaluate on the test split,
    record ``done.json``; the epoch checkpoint is removed only after that.

    Returns:
        The stage's record (``folder``, ``accuracy``, ``synthetic``: the number of synthetic images).
    """
    folder = ctx.dir / rel
    main = ctx.is_main
    with ctx.records.record(rel, parts, shared=True) as summary:  # every process trains its share
        if summary is not None:
            if main:
                write_json(folder / "train_config.json", tcfg.model_dump(mode="json"))
            model = train_classifier(ctx.splits.train, synthetic, tcfg, folder, val=ctx.splits.val,
                                     device=ctx.device, seed=seed, progress=ctx.cfg.progress,
                                     keep_checkpoint=True, processes=ctx.processes)
            if main:
                metrics = evaluate_classifier(ctx, model, folder)
                summary.update(folder=rel, accuracy=metrics["accuracy"],
                               synthetic=0 if synthetic is None else len(synthetic))
    ctx.processes.barrier()  # done.json is written
    if main:  # only now: a crash before done.json resumes instead of retraining
        remove_checkpoint(folder / "last")
    return ctx.records.done(rel)


def train_arm(ctx: RunContext, arm: ArmConfig, seed: int, synthetic: LabeledImages | None = None) -> dict:
    """Stage ``train/<arm>/seed<k>``: the arm's classifier, trained on the training split plus ``synthetic`` (the
    images the arm's ``synthetic`` setting names; None for a real-only arm). Returns the stage's record."""
    takes = arm.synthetic != "none" or ctx.arm_train(arm).relabel.weight > 0
    if takes == (synthetic is None):
        raise SettingError(f"arm {arm.name!r} has synthetic: {arm.synthetic} and relabel weight "
                           f"{ctx.arm_train(arm).relabel.weight}, so it trains {'on' if takes else 'on no'} "
                           f"synthetic images; pass {'them' if takes else 'none'} (synthaug.runner.arms.train_arm "
                           "resolves them from the config).")
    rel = ctx.arm_rel(arm, seed)
    parts = ctx.arm_parts(arm, seed)
    ctx.records.reuse(rel, parts)  # before any stage of this run writes anything
    data_stage(ctx)
    done = train_stage(ctx, rel, parts, ctx.arm_train(arm), synthetic, seed)
    if ctx.is_main:
        (ctx.dir / "train" / arm.name / "left_out.json").unlink(missing_ok=True)
    return done


def evaluate_classifier(ctx: RunContext, model, folder: Path) -> dict:
    """Tests ``model`` (saved in ``folder/model``) on the test split; writes ``metrics.json`` and
    ``per_class.csv`` into ``folder`` and returns the metrics."""
    meta_size = read_json(folder / "model" / "classifier.json")["image_size"]
    logits = predict(model, ctx.splits.test, meta_size, device=ctx.device)
    metrics = classification_metrics(logits, ctx.splits.test.labels, ctx.splits.schema, ctx.train_counts,
                                     ctx.thresholds)
    save_metrics(metrics, folder)
    return metrics



def evaluate_arms(ctx: RunContext) -> None:
    """Re-evaluates every trained classifier of the config's arms on the test split (metrics.json,
    per_class.csv)."""
    ctx.records.hold_lock()
    for arm in ctx.cfg.arms:
        for seed in ctx.cfg.seeds:
            folder = ctx.dir / ctx.arm_rel(arm, seed)
            if (folder / "model" / "classifier.json").is_file():
                model, _ = load_classifier(folder / "model", ctx.device)
                evaluate_classifier(ctx, model, folder)
