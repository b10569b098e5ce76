"""A whole run: :func:`preflight` (every conflict named before anything runs), then the stages in order
(:func:`run_stages`), which is what ``synthaug run`` does."""

from __future__ import annotations

import fnmatch
import logging
from typing import Any, Callable, Sequence

from synthaug.config import ArmConfig
from synthaug.errors import SettingError, StageMismatch
from synthaug.runner.arms import left_out_reason, train_arms
from synthaug.runner.context import RunContext
from synthaug.runner.data import data_stage
from synthaug.runner.filter import filter_stage
from synthaug.runner.generate import synthetic_stage
from synthaug.runner.judge import judge_stage
from synthaug.runner.report import report_stage
from synthaug.runner.studies import studies_stage

log = logging.getLogger(__name__)

# stages that are redone on their own when their inputs change: --force-redo never needs to name them
DERIVED = ("data", "synthetic", "pseudo", "filter", "filter-scores/*", "judge", "evaluation/*", "report")


def preflight(ctx: RunContext, arms: list[ArmConfig] | None = None, *, generator: bool | None = None,
              force_redo: Sequence[str] = ()) -> list[str]:
    """Plan, then act: checks, before anything runs or is written, every stage the command would reuse that was
    made (or started) with other inputs: the generator and each classifier arm and seed (with the arms that
    label the pseudo-labelled control and score the filters). Derived data (data, synthetic, pseudo, filter,
    judge) is redone when its inputs change, so it conflicts only through what was trained on it.

    Args:
        arms: the arms the command trains (None: every arm); their seeds are ``seeds``.
        generator: whether the command uses the generator (None: when an arm uses synthetic images).
        force_redo: conflicting stages to redo rather than refuse (``--force-redo``): stage folders as the
            refusal names them (``generator``, ``train/<arm>/seed<k>``), ``train/<arm>`` for every seed, or
            globs (``train/*``). The conflicting stages trained on a redone one are redone too.

    Returns:
        The conflicting stages that will be redone (registered with the run's records).

    Raises:
        SettingError: a ``force_redo`` name that matches no stage of this command (lists the valid names).
        StageMismatch: listing every conflicting stage not redone, what changed, and the fix.
    """
    cfg = ctx.cfg
    arms = cfg.arms if arms is None else arms
    if generator is None:
        generator = any(a.synthetic != "none" for a in arms)
    for arm in arms:
        ctx.synthetic_shares(arm)  # a train.synthetic_ratio key that names no class fails before anything runs
    checks = _checks(ctx, arms, generator)
    forced = _named(force_redo, list(checks))
    conflicts = {rel: c for rel, (parts, restartable, _) in checks.items() if (ctx.dir / rel).is_dir()
                 and (c := ctx.records.conflict(rel, parts(), restartable=restartable))}
    for rel in [r for r in forced if r not in conflicts]:
        log.info("--force-redo %s: the stage %s, nothing to redo (delete %s to retrain it anyway).", rel,
                 "is not there yet" if not (ctx.dir / rel).is_dir() else "matches this config", ctx.dir / rel)
    redo = {rel for rel in conflicts if rel in forced}
    for rel in checks:  # downstream of a redone stage: what was trained on it is redone too
        if rel in conflicts and any(dep in redo for dep in _closure(rel, checks)):
            redo.add(rel)
    refused = {rel: c for rel, c in conflicts.items() if rel not in redo}
    if refused:
        listed = "\n".join(f"  - {rel} ({c}): {ctx.dir / rel}" for rel, c in refused.items())
        flags = " ".join(f"--force-redo {rel}" for rel in refused)
        accepted = f" (--force-redo accepted: {', '.join(sorted(redo))})" if redo else ""
        raise StageMismatch(
            f"This command would reuse or retrain finished work that was made with other inputs; nothing was run "
            f"or written{accepted}. Conflicting stage(s):\n{listed}\nTo redo them with this config, delete those "
            f"folders (the stages after them are redone too), or rerun with {flags} (the old folders are deleted "
            f"once the new ones are complete; add --keep-stale to keep them as <stage>.stale-<hash>), or keep them "
            f"and use a new experiment name (--set name=...); or undo the change.")
    for rel in sorted(redo):
        log.warning("--force-redo: %s (%s) is redone.", rel, conflicts[rel])
    ctx.records.redo_policy(force=redo)
    return sorted(redo)


def _checks(ctx: RunContext, arms: list[ArmConfig], generator: bool) -> dict[str, tuple[Callable[[], dict[str, Any]],
                                                                                       bool, list[str]]]:
    """Every trained stage the command reuses: stage folder → (its parts, restartable, the trained stages it
    depends on)."""
    cfg, first = ctx.cfg, ctx.cfg.seeds[0]
    checks: dict[str, tuple[Callable[[], dict[str, Any]], bool, list[str]]] = {}
    if generator:
        checks["generator"] = (lambda: ctx.generator_parts, ctx.generator_trains_nothing, [])
    trained = {(a.name, seed): a for a in arms for seed in cfg.seeds}
    helpers = []  # real-only arms whose first-seed classifier makes another arm's synthetic images
    if any(a.synthetic == "pseudo" for a in arms) and ctx.pseudo_control is not None:
        helpers.append(cfg.pseudo.classifier_arm)
    if cfg.filters and any(a.synthetic == "generated" and a.use_filters for a in arms):
        helpers += [f.classifier_arm for f in cfg.filters if getattr(f, "classifier_arm", None) is not None]
    trained = {**{(name, first): cfg.arm(name) for name in dict.fromkeys(helpers)}, **trained}
    for (name, seed), arm in trained.items():
        if left_out_reason(ctx, arm) is not None:
            continue  # left out of the run (its generator has no pseudo-labelled control)
        deps = []
        if arm.synthetic != "none":
            deps.append("generator")
        if arm.synthetic == "pseudo":
            deps.append(ctx.arm_rel(cfg.pseudo.classifier_arm, first))
        if arm.synthetic == "generated" and arm.use_filters and cfg.filters:
            deps += [ctx.arm_rel(f.classifier_arm, first) for f in cfg.filters
                     if getattr(f, "classifier_arm", None) is not None]
        checks[ctx.arm_rel(name, seed)] = (lambda a=arm, k=seed: ctx.arm_parts(a, k), False, deps)
    return checks


def _closure(rel: str, checks: dict[str, tuple[Any, bool, list[str]]]) -> set[str]:
    """The checked stages ``rel`` depends on, directly or through others."""
    seen: set[str] = set()
    todo = list(checks[rel][2])
    while todo:
        dep = todo.pop()
        if dep in checks and dep not in seen:
            seen.add(dep)
            todo += checks[dep][2]
    return seen


def _named(patterns: Sequence[str], stages: list[str]) -> set[str]:
    """The stages ``patterns`` name: a stage folder, ``train/<arm>`` (every seed) or a glob (``train/*``).

    Raises:
        SettingError: a pattern that names none of ``stages`` (lists them; says when it names derived data).
    """
    named = set()
    for pattern in patterns:
        pattern = pattern.strip().rstrip("/")
        hits = [s for s in stages if fnmatch.fnmatchcase(s, pattern) or fnmatch.fnmatchcase(s, pattern + "/*")]
        if not hits:
            derived = any(fnmatch.fnmatchcase(pattern, d) or fnmatch.fnmatchcase(d, pattern) for d in DERIVED)
            why = (f"{pattern} is derived data, redone on its own when its inputs change; --force-redo names "
                   "trained stages" if derived else f"--force-redo {pattern} names no stage of this command")
            raise SettingError(f"{why}. Valid names: {', '.join(stages) or 'none (this command trains nothing)'}, "
                               "train/<arm> for every seed of an arm, or a glob such as 'train/*'.")
        named.update(hits)
    return named


def run_stages(ctx: RunContext, *, only: Callable[[ArmConfig], bool] | None = None, force_redo: Sequence[str] = (),
               keep_stale: bool = False) -> dict | None:
    """Every stage in order (``only``: the arms to train; None: all).

    Args:
        force_redo: conflicting trained stages to redo (see :func:`preflight`) instead of refusing the run.
        keep_stale: keep a redone stage's old folder as ``<stage>.stale-<hash>`` (default: deleted once the new
            one is complete).

    Returns:
        The report (see :func:`synthaug.report.tables.build_report`; ``summary`` among its keys), or None on a
        process other than the main one under ``accelerate launch``.
    """
    arms = [a for a in ctx.cfg.arms if only is None or only(a)]
    ctx.records.redo_policy(keep_stale=keep_stale)
    preflight(ctx, arms, force_redo=force_redo)  # refuses before anything runs
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
