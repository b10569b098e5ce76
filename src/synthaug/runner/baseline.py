"""The baseline every evaluation study (and the near-duplicate filter) builds on: the real-only arm whose
training settings the studies use, the seeds they train, and the feature extractor of
``evaluation.fidelity`` (by default the baseline arm's classifier, trained through the train stage)."""

from __future__ import annotations

from typing import Any

from synthaug.config import ArmConfig, ExperimentConfig
from synthaug.errors import SettingError
from synthaug.runner.context import RunContext
from synthaug.runner.train import train_arm


class StudySkipped(Exception):
    """A study that does not apply to this run; the message says why."""


def baseline_arm(cfg: ExperimentConfig) -> ArmConfig:
    """The real-only arm whose training settings every study uses (``evaluation.baseline_arm``; default
    ``real-ce`` when it is a real-only arm, else the first real-only arm).

    Raises:
        SettingError: ``evaluation.baseline_arm`` names no real-only arm.
        StudySkipped: the config has no real-only arm.
    """
    name = cfg.evaluation.baseline_arm
    # the studies add their own synthetic images to these settings: an arm with stand-ins (train.relabel) is not one
    real_only = [a for a in cfg.arms if a.synthetic == "none" and not cfg.arm_train(a).relabel.weight]
    if name is not None:
        arm = next((a for a in cfg.arms if a.name == name), None)
        if arm not in real_only:
            raise SettingError(f"evaluation.baseline_arm {name!r} must name an arm with synthetic: none and no "
                               f"train.relabel; such arms: {[a.name for a in real_only]}.")
        return arm
    if not real_only:
        raise StudySkipped("the config has no real-only arm (synthetic: none, no train.relabel) to take training "
                           "settings from")
    return next((a for a in real_only if a.name == "real-ce"), real_only[0])


def study_seeds(cfg: ExperimentConfig) -> list[int]:
    """``evaluation.seeds``, else the experiment's first seed (each study trains one classifier per seed)."""
    return cfg.evaluation.seeds or cfg.seeds[:1]


def baseline_folders(ctx: RunContext) -> list[str]:
    """The baseline arm's stage folders, one per study seed (trained if needed)."""
    arm = baseline_arm(ctx.cfg)
    return [train_arm(ctx, arm, seed)["folder"] for seed in study_seeds(ctx.cfg)]


def extractor_id(ctx: RunContext) -> list[Any]:
    """What the fidelity extractor's features depend on, without training anything: ``[extractor, source]``
    (the source is the baseline classifier's stage fingerprint by default)."""
    fc = ctx.cfg.evaluation.fidelity
    if fc.extractor == "classifier" and fc.extractor_source is None:
        return [fc.extractor, ctx.arm_fp(baseline_arm(ctx.cfg), study_seeds(ctx.cfg)[0])]
    return [fc.extractor, fc.extractor_source]


def fidelity_extractor(ctx: RunContext):
    """The fidelity feature extractor (``evaluation.fidelity``), the baseline arm's classifier trained first
    when it is the default one. Returns (extractor, the fingerprint of its source)."""
    from synthaug.evaluate.features import create_extractor

    fc = ctx.cfg.evaluation.fidelity
    if fc.extractor == "classifier" and fc.extractor_source is None:
        arm, seed = baseline_arm(ctx.cfg), study_seeds(ctx.cfg)[0]
        folder = ctx.dir / train_arm(ctx, arm, seed)["folder"] / "model"
        extractor = create_extractor("classifier", folder, device=ctx.device)
        extractor.source = str(folder.relative_to(ctx.dir))
        return extractor, ctx.arm_fp(arm, seed)
    return create_extractor(fc.extractor, fc.extractor_source, device=ctx.device), fc.extractor_source
