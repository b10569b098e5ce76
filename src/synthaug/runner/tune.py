"""Tuning as a stage of a run: the Optuna search of :mod:`synthaug.tuning` over the run's data and synthetic
sets, then retrain-best as the arm ``train/<tuned_arm>/seed<k>`` (stage records as any arm) and the report.

The sets trials may train on are made here (:func:`make_sets`): the run's own generated set, the pseudo-labelled
control, or a set of other sampling settings (``tune.synthetic_sets``) drawn from the same trained generator in
``tune/sets/<name>/`` (its ``generator`` folder links to the run's).
"""

from __future__ import annotations

import logging
from typing import Any

from synthaug.config import ArmConfig, GeneratorSection, fingerprint
from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.generators import generator_config
from synthaug.runner.arms import arm_synthetic
from synthaug.runner.context import RunContext
from synthaug.runner.data import data_stage
from synthaug.runner.generate import fit_generator, synthetic_images
from synthaug.runner.train import train_stage
from synthaug.train.config import PERFORMANCE
from synthaug.tuning.config import MAIN_SET, TuneConfig
from synthaug.tuning.objective import TuneContext, file_lock
from synthaug.tuning.run import TuneResult, make_storage, run_search, save_plots
from synthaug.utils import write_json

log = logging.getLogger(__name__)


def set_context(ctx: RunContext, tune: TuneConfig, name: str) -> RunContext:
    """The run context that makes set ``name``: the run's own, or one under ``tune/sets/<name>`` that draws
    from the same trained generator (its ``generator`` folder links to the run's) with other sampling settings.

    Raises:
        SettingError: the set changes a generator training field.
    """
    cfg = ctx.cfg
    if name == MAIN_SET:
        return ctx
    params = {**cfg.generator.params, **tune.synthetic_sets[name]}
    ours, theirs = generator_config(cfg.generator.name, cfg.generator.params), generator_config(
        cfg.generator.name, params)
    changed = sorted(k for k, v in theirs.training_part().items() if ours.training_part().get(k) != v)
    if changed:
        raise SettingError(
            f"tune.synthetic_sets.{name} changes generator training field(s) {changed}; a set may change only "
            f"sampling fields ({', '.join(sorted(ours.sampling_fields)) or 'this generator has none'}), so that "
            "every set draws from the one trained model")
    child = cfg.model_copy(update={"name": name, "output_dir": str(ctx.dir / "tune" / "sets"),
                                   "generator": GeneratorSection(name=cfg.generator.name, params=params)})
    other = RunContext(child)
    other.dir.mkdir(parents=True, exist_ok=True)
    link = other.dir / "generator"
    if not link.exists():
        link.symlink_to((ctx.dir / "generator").resolve(), target_is_directory=True)
    return other


def make_sets(ctx: RunContext, tune: TuneConfig, arm: ArmConfig,
              names: list[str]) -> dict[str, tuple[LabeledImages, Any]]:
    """The sets of ``names`` the tuned ``arm`` may train on (stage records make each a no-op when done),
    loaded: ``{name: (images, fingerprint)}``."""
    if arm.synthetic == "generated":
        fit_generator(ctx)
    sets = {}
    for name in names:
        if arm.synthetic == "pseudo":  # the run's pseudo-labelled control (its labeller trained first)
            sets[name] = (arm_synthetic(ctx, arm), fingerprint(ctx.pseudo_parts()))
            continue
        other = set_context(ctx, tune, name)
        if other is ctx:
            # the arm's own images, as it trains on them: filtered (use_filters), with soft translation targets;
            # its per-class share (train.synthetic_ratio) is applied per trial, so it is left out here
            whole = arm.model_copy(update={"train": {**arm.train, "synthetic_ratio": None}})
            sets[name] = (arm_synthetic(ctx, whole), ctx.synthetic_fp(arm))
        else:
            if arm.use_filters and ctx.cfg.filters:
                log.warning("Synthetic set %s of tune.synthetic_sets is not filtered (the filters score the run's "
                            "own set only); its trials train on every image of it.", name)
            sets[name] = (synthetic_images(other), other.synthetic_set_fp)
        log.info("Synthetic set %s: %d images (%s)", name, len(sets[name][0]), other.dir / "synthetic")
    return sets


def tune_context(ctx: RunContext, tune: TuneConfig) -> TuneContext:
    """The tuning context of the run: its splits, device and folder, and :func:`make_sets` for its sets."""
    def sets(names: list[str]) -> dict[str, tuple[LabeledImages, Any]]:
        return make_sets(ctx, tune, tc.arm, names)

    tc = TuneContext(ctx.cfg, tune, real=ctx.splits.train, val=ctx.splits.val, device=ctx.device, run_dir=ctx.dir,
                     make_sets=sets)
    return tc


def retrain_best(ctx: RunContext, tc: TuneContext, result: TuneResult) -> dict[str, Any]:
    """Retrains the best parameters for ``retrain_epochs`` per experiment seed and evaluates on test, as the
    arm ``train/<tuned_arm>/seed<k>/`` (stage records as any arm: a finished seed is not retrained), and writes
    ``train/<tuned_arm>/tuned.json`` for the report's arms table. Local workers take turns (lock file)."""
    tune, name = tc.tune, tc.tuned_name
    epochs = tune.retrain_epochs or ctx.cfg.arm_train(tc.arm).epochs
    train = tc.train_config(result.best_params, epochs)
    synthetic, synthetic_id = tc.synthetic_for(result.best_params, train)
    data_stage(ctx)
    seeds = {}
    with file_lock(ctx.dir / "tune" / "retrain.lock"):
        for seed in ctx.cfg.seeds:
            rel = ctx.arm_rel(name, seed)
            parts = {"data": ctx.data_fp, "train": train.model_dump(mode="json", exclude=PERFORMANCE), "seed": seed,
                     "synthetic": [tc.arm.synthetic, fingerprint(synthetic_id)], "params": result.best_params}
            if train.synthetic_ratio is not None and synthetic is not None:  # shot groups follow data.shots
                parts["synthetic_shares"] = tc.shares(train.synthetic_ratio).tolist()
            seeds[seed] = train_stage(ctx, rel, parts, train, synthetic, seed)["accuracy"]
        record = {"arm": name, "tuned_from": tc.arm.name, "loss": train.loss, "mixing": train.mixing,
                  "synthetic": tc.arm.synthetic, "seeds": list(ctx.cfg.seeds), "params": result.best_params,
                  "best_value": result.best_value, "objective": tune.objective, "studies": result.studies,
                  "best_trial": result.best_trial, "epochs": epochs, "test_accuracy": seeds}
        write_json(ctx.dir / "train" / name / "tuned.json", record)
    return record


def tune_stage(ctx: RunContext, tune: TuneConfig, *, storage_url: str | None, study_name: str, n_trials: int,
               retrain: bool = True) -> TuneResult:
    """Search, then (``retrain``) retrain the best parameters and rebuild the report; plots in ``tune/``.

    Returns:
        The search's result (best parameters and value; ``retrained``: the retrained arm's record).
    """
    with file_lock(ctx.dir / "tune" / "stats.lock"):  # local workers share the run folder's data stage
        data_stage(ctx)
    tc = tune_context(ctx, tune)
    storage = make_storage(storage_url, tune)
    result = run_search(tc, storage, study_name=study_name, n_trials=n_trials)
    write_json(ctx.dir / "tune" / "best.json", {"studies": result.studies, "best_params": result.best_params,
                                                "best_value": result.best_value, "best_trial": result.best_trial,
                                                "objective": tune.objective, "direction": result.direction})
    if tune.plots:
        result.plots = save_plots(storage, result.studies, ctx.dir / "tune")
    if retrain and tune.retrain:
        from synthaug.report.tables import build_report

        result.retrained = retrain_best(ctx, tc, result)
        build_report(ctx.dir)
    return result
