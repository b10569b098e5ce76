"""A whole run: :func:`preflight` (every conflict named before anything runs), then the stages in order
(:func:`run_stages`), which is what ``synthaug run`` does."""

from __future__ import annotations

from typing import Callable

from synthaug.config import ArmConfig
from synthaug.errors import StageMismatch
from synthaug.runner.arms import left_out_reason, train_arms
from synthaug.runner.context import RunContext
from synthaug.runner.data import data_stage
from synthaug.runner.filter import filter_stage
from synthaug.runner.generate import synthetic_stage
from synthaug.runner.judge import judge_stage
from synthaug.runner.report import report_stage
from synthaug.runner.studies import studies_stage


def preflight(ctx: RunContext, arms: list[ArmConfig] | None = None, *, generator: bool | None = None) -> None:
    """Plan, then act: checks, before anything runs or is written, every stage the command would reuse that was
    made (or started) with other inputs: the generator and each classifier arm and seed (with the arm that
    labels the pseudo-labelled control). Derived data (data, synthetic, pseudo, filter, judge) is redone
    when its inputs change, so it conflicts only through what was trained on it.

    Args:
        arms: the arms the command trains (None: every arm); their seeds are ``seeds``.
        generator: whether the command uses the generator (None: when an arm uses synthetic images).

    Raises:
        StageMismatch: listing every conflicting stage, what changed, and the fix.
    """
    cfg = ctx.cfg
    arms = cfg.arms if arms is None else arms
    if generator is None:
        generator = any(a.synthetic != "none" for a in arms)
    checks = []
    if generator:
        checks.append(("generator", lambda: ctx.generator_parts, ctx.generator_trains_nothing))
    trained = {(a.name, seed): a for a in arms for seed in cfg.seeds}
    if any(a.synthetic == "pseudo" for a in arms) and ctx.pseudo_control is not None:
        labeller = cfg.arm(cfg.pseudo.classifier_arm)
        trained = {(labeller.name, cfg.seeds[0]): labeller, **trained}
    for (name, seed), arm in trained.items():
        if left_out_reason(ctx, arm) is not None:
            continue  # left out of the run (its generator has no pseudo-labelled control)
        checks.append((ctx.arm_rel(name, seed), lambda a=arm, k=seed: ctx.arm_parts(a, k), False))
    conflicts = [c for rel, parts, restartable in checks if (ctx.dir / rel).is_dir()
                 and (c := ctx.records.conflict(rel, parts(), restartable=restartable))]
    if conflicts:
        listed = "\n".join(f"  - {c}" for c in conflicts)
        raise StageMismatch(
            f"This command would reuse or retrain finished work that was made with other inputs; nothing was run "
            f"or written. Conflicting stage(s):\n{listed}\nTo redo them with this config, delete those folders "
            f"(the stages after them are redone too), or keep them and use a new experiment name (--set "
            f"name=...); or undo the change.")


def run_stages(ctx: RunContext, *, only: Callable[[ArmConfig], bool] | None = None) -> dict | None:
    """Every stage in order (``only``: the arms to train; None: all).

    Returns:
        The report (see :func:`synthaug.report.tables.build_report`; ``summary`` among its keys), or None on a
        process other than the main one under ``accelerate launch``.
    """
    arms = [a for a in ctx.cfg.arms if only is None or only(a)]
    preflight(ctx, arms)  # refuses before anything runs
    data_stage(ctx)
    if any(a.synthetic == "generated" for a in arms):
        synthetic_stage(ctx)  # under accelerate launch every rank takes its share of the generation
    train_arms(ctx, arms)
    # the rest on the main process alone (the judge's and the studies' classifiers train single-process)
    report = None
    if ctx.is_main:
        report = _finish(ctx.main_alone())
    ctx.processes.barrier()
    return report


def _finish(ctx: RunContext) -> dict:
    ctx.records.hold_lock()  # the report and the studies write even when every stage was done
    if ctx.cfg.filters and any(a.synthetic == "generated" for a in ctx.cfg.arms):
        filter_stage(ctx)  # done already when a filtered arm ran; else it records the decisions
    judge_stage(ctx)
    studies_stage(ctx)  # the studies of `evaluation:` (fidelity, memorisation, CAS, oracle, replacement, ...)
    return report_stage(ctx.dir)
