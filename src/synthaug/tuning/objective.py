"""One Optuna trial = one training run of the tuned arm with the trial's parameters.

:class:`TuneContext` holds what every trial of a worker shares: the training and validation splits, the
tuned arm's training section, and the synthetic sets (made once by the ``make_sets`` it is handed: the runner's
own stages, see :mod:`synthaug.runner.tune`) and loaded once. It never sees the run itself. :class:`TrialObjective` suggests the parameters, trains (reporting each epoch's validation
metric for pruning) and returns the objective: the mean of the last k validation losses (the DeepFashion
study's) or the best validation accuracy.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import math
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from synthaug.config import ArmConfig, ExperimentConfig
from synthaug.data.schema import LabeledImages
from synthaug.data.stats import ShotThresholds
from synthaug.errors import SettingError
from synthaug.train import checkpoint
from synthaug.train.config import REAL_ONLY, TrainConfig
from synthaug.train.data import with_stand_ins
from synthaug.train.batch_composition import SHOT_GROUPS, class_shares, keep_by_share
from synthaug.tuning.config import MAIN_SET, RATIO, ParamSpec, TuneConfig
from synthaug.utils import derive_seed

log = logging.getLogger(__name__)


@dataclass
class TrialInputs:
    """Everything one training run of a trial needs."""

    real: LabeledImages
    synthetic: LabeledImages | None
    val: LabeledImages
    train: TrainConfig
    workdir: Path
    device: torch.device
    seed: int


def train_trial(inputs: TrialInputs, on_epoch_end: Callable[[int, dict], None]) -> None:
    """Trains one trial's classifier, calling ``on_epoch_end(epoch, row)`` with each epoch's curve row."""
    from synthaug.train import train_classifier

    train_classifier(inputs.real, inputs.synthetic, inputs.train, inputs.workdir, val=inputs.val,
                     device=inputs.device, seed=inputs.seed, progress=False, on_epoch_end=on_epoch_end)


def suggest(trial: optuna.Trial, path: str, spec: ParamSpec) -> Any:
    """The trial's value of parameter ``path`` (Optuna's suggest_float / suggest_int / suggest_categorical)."""
    if spec.type == "float":
        return trial.suggest_float(path, spec.low, spec.high, log=spec.log, step=spec.step)
    if spec.type == "int":
        return trial.suggest_int(path, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return trial.suggest_categorical(path, spec.choices)


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a train section as a dict) with the ``train.*`` entries of ``params`` put in place."""
    out = copy.deepcopy(base)
    for path, value in params.items():
        parts = path.split(".")
        if parts[0] != "train":
            continue
        if path.startswith(RATIO):  # one key's share; the arm's other keys stay
            out["synthetic_ratio"] = {**(out.get("synthetic_ratio") or {}), path[len(RATIO):]: value}
        elif parts[1] == "betas":
            betas = list(out.get("betas", TrainConfig.model_fields["betas"].default))
            betas[int(parts[2])] = value
            out["betas"] = betas
        elif parts[1] == "model":
            out.setdefault("model", {})[parts[2]] = value
        else:
            out[parts[1]] = value
    return out


def objective_value(rows: list[dict], tune: TuneConfig) -> float:
    """The objective after the epochs in ``rows``: mean of the last k validation losses (fewer while fewer
    epochs have run), or the best validation accuracy so far. At the last epoch it is the trial's result."""
    if tune.objective == "mean-val-loss":
        return float(np.mean([r["val_loss"] for r in rows[-tune.last_k:]]))
    return float(max(r["val_acc"] for r in rows))


def per_class_subset(images: LabeledImages, per_class: int, seed: int) -> LabeledImages:
    """At most ``per_class`` images of each class (first label group), a fixed random choice per class; a
    smaller count keeps a subset of a larger one's images."""
    keep = []
    for c in np.unique(images.labels[:, 0]):
        idx = np.flatnonzero(images.labels[:, 0] == c)
        keep.extend(np.random.default_rng(derive_seed(seed, "tune-per-class", int(c))).permutation(idx)[:per_class])
    return images.subset(np.sort(np.asarray(keep, dtype=np.int64)))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between the processes of this machine (e.g. workers preparing the same set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


SetMaker = Callable[[list[str]], dict[str, tuple[LabeledImages, Any]]]


class TuneContext:
    """The tuned arm of an experiment, its data and synthetic sets, shared by all trials of a worker.

    Args:
        cfg: the experiment config (the arms, the tuned arm's training settings, the seeds).
        tune: the ``tune:`` section (with command-line changes); its ``synthetic_ratio`` becomes one
            ``train.synthetic_ratio.<key>`` entry of the space per shot group present in ``real`` or per class.
        real, val: the training and validation splits trials train and score on.
        device: the torch device trials train on.
        run_dir: the run folder (trials under ``tune/trials``, a lock file for the sets).
        make_sets: makes the synthetic sets trials may train on (generated once; a no-op when done), by name:
            ``{name: (images, what identifies them)}``. The runner passes its own (synthaug.runner.tune).
    """

    def __init__(self, cfg: ExperimentConfig, tune: TuneConfig, *, real: LabeledImages, val: LabeledImages,
                 device: torch.device, run_dir: Path, make_sets: SetMaker | None = None):
        self.cfg, self.tune, self.real, self.val, self.device, self.run_dir = cfg, tune, real, val, device, run_dir
        self.make_sets = make_sets
        names = [a.name for a in cfg.arms]
        if tune.arm is not None and tune.arm not in names:
            raise SettingError(f"tune.arm {tune.arm!r} is not an arm of this config; arms: {names}")
        self.arm: ArmConfig = cfg.arm(tune.arm) if tune.arm else cfg.arms[0]
        self.tuned_name = tune.tuned_arm or f"tuned-{self.arm.name}"
        if self.tuned_name in names:
            raise SettingError(f"tune.tuned_arm {self.tuned_name!r} is already an arm of this config; set "
                               "tune.tuned_arm to another folder name")
        self.base = cfg.arm_train(self.arm).model_dump(exclude_unset=True)
        self.classes = list(real.schema.groups[0].classes)
        self.real_counts = real.class_counts()
        self.thresholds = ShotThresholds(cfg.data.shots.many, cfg.data.shots.few)
        self.tune = tune.with_ratio_space(self._ratio_keys(tune))
        self._check_synthetic_knobs()
        self._check_ratio_keys()
        self._sets: dict[str, tuple[LabeledImages, Any]] = {}

    def _ratio_keys(self, tune: TuneConfig) -> list[str]:
        """The keys ``tune.synthetic_ratio`` searches: the shot groups that hold a class of the training split
        (many, medium, few), or every class."""
        if tune.synthetic_ratio is None or tune.synthetic_ratio.per == "class":
            return self.classes
        present = {self.thresholds.group(int(n)) for n in self.real_counts}
        return [g for g in SHOT_GROUPS if g in present]

    # ------------------------------------------------------------------------------------------ checks
    def _check_ratio_keys(self) -> None:
        """A ``train.synthetic_ratio`` key (the arm's, or a searched one) that names no class or shot group."""
        searched = {p[len(RATIO):]: 1.0 for p in self.tune.space if p.startswith(RATIO)}
        self.shares(searched, where=f"tune.space.{RATIO}<key>")
        self.shares(self.base.get("synthetic_ratio"), where=f"train.synthetic_ratio of arm {self.arm.name!r}")

    def shares(self, ratio: dict[str, float] | None, where: str = "train.synthetic_ratio") -> np.ndarray:
        """Per class, the share of its synthetic images a trial with ``ratio`` uses (1 for all when None).

        Raises:
            SettingError: a key that names no class of the training split and no shot group.
        """
        return class_shares(ratio, self.classes, self.real_counts, self.thresholds, where=where)

    def _check_synthetic_knobs(self) -> None:
        space, arm = self.tune.space, self.arm
        mixings = set(space["train.mixing"].choices) if "train.mixing" in space else set()
        needs = sorted(p for p in space if p.startswith("synthetic.") or p.startswith(RATIO))
        needs += [f"train.mixing {sorted(mixings - REAL_ONLY)}"] if mixings - REAL_ONLY else []
        if needs and arm.synthetic == "none":
            raise SettingError(f"tune.space searches {', '.join(needs)}, but the tuned arm {arm.name!r} has "
                               "synthetic: none; tune an arm with synthetic: generated (tune.arm)")
        if "synthetic.set" in space and arm.synthetic != "generated":
            raise SettingError(f"tune.space.synthetic.set chooses among generated sets, but arm {arm.name!r} has "
                               f"synthetic: {arm.synthetic}; tune an arm with synthetic: generated")
        if self.val is None or not len(self.val):
            raise SettingError("tuning scores trials on the validation split, which is empty; set "
                               "data.val_per_class (or give the data a val split)")

    def set_names(self) -> list[str]:
        """The synthetic sets trials may train on (none for a real-only arm)."""
        if self.arm.synthetic == "none":
            return []
        return list(self.tune.space["synthetic.set"].choices) if "synthetic.set" in self.tune.space else [MAIN_SET]

    # ------------------------------------------------------------------------------------------ synthetic sets
    def prepare_sets(self) -> None:
        """Makes every set trials may use, once, and loads them. Local workers take turns through a lock file,
        so a set is never generated twice at once."""
        names = self.set_names()
        if not names:
            return
        if self.make_sets is None:
            raise SettingError(f"arm {self.arm.name!r} trains on synthetic images, but this TuneContext was given "
                               "no make_sets; build it with synthaug.runner.tune.tune_context")
        with file_lock(self.run_dir / "tune" / "sets.lock"):
            self._sets = self.make_sets(names)

    def synthetic_for(self, params: dict[str, Any], train: TrainConfig) -> tuple[LabeledImages | None, Any]:
        """(the synthetic images a trial with ``params`` trains on, or None; what identifies them): the arm's
        synthetic images, then ``train.relabel``'s stand-ins where the trial's mixing trains on synthetic images."""
        if train.mixing in REAL_ONLY:
            return None, None
        images, identity = (None, None) if self.arm.synthetic == "none" else self._made_for(params, train)
        if train.relabel.weight > 0:
            images = with_stand_ins(images, self.real, train.relabel, self.cfg.seed)
            identity = [identity, "relabel", train.relabel.model_dump()]
        return images, identity

    def _made_for(self, params: dict[str, Any], train: TrainConfig) -> tuple[LabeledImages, Any]:
        """The generated (or pseudo-labelled) images a trial trains on, and what identifies them."""
        if not self._sets:
            self.prepare_sets()
        name = params.get("synthetic.set", MAIN_SET)
        images, identity = self._sets[name]
        per_class = params.get("synthetic.per_class")
        if per_class is not None:
            images = per_class_subset(images, int(per_class), self.cfg.seed)
        if train.synthetic_ratio is not None:  # the first round(r × n_c) of each class, in plan order
            images = images.subset(keep_by_share(images.labels, self.shares(train.synthetic_ratio)))
        return images, [name, identity, per_class]

    # ------------------------------------------------------------------------------------------ configs
    def train_config(self, params: dict[str, Any], epochs: int) -> TrainConfig:
        """The tuned arm's training config with ``params`` applied and ``epochs`` epochs.

        Raises:
            SettingError: the combination is not a valid training config (names the field).
        """
        merged = apply_params(self.base, params)
        merged["epochs"] = epochs
        try:
            return TrainConfig(**merged)
        except ValidationError as e:
            raise SettingError("; ".join(f"train.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                         for err in e.errors())) from None


class TrialObjective:
    """The Optuna objective of one search step: ``names`` are searched, ``fixed`` (values carried from earlier
    sequential steps) are held."""

    def __init__(self, ctx: TuneContext, names: list[str], fixed: dict[str, Any], *, budget: int,
                 trials_dir: Path):
        self.ctx, self.names, self.fixed, self.budget, self.trials_dir = ctx, names, fixed, budget, trials_dir

    def __call__(self, trial: optuna.Trial) -> float:
        over_budget(trial, self.budget)
        tune = self.ctx.tune
        # TPE draws each parameter when it is suggested: seeded by the trial's number, workers that claim
        # trials at the same moment draw different points, and one worker's search is reproducible
        trial.study.sampler = trial_sampler(tune, trial.study.study_name, trial.number)
        params = {**self.fixed, **{p: suggest(trial, p, tune.space[p]) for p in self.names}}
        trial.set_user_attr("fixed", self.fixed)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        earlier = completed_twin(trial, self.fixed)
        if earlier is not None:  # every trial trains on the same seed: the same point gives the same value
            trial.set_user_attr("repeat_of", earlier.number)
            return float(earlier.value)
        try:
            train = self.ctx.train_config(params, tune.epochs)
        except SettingError as e:  # a combination that cannot train (e.g. a batch too small to mix): worst
            trial.set_user_attr("invalid", str(e))
            raise optuna.TrialPruned(f"invalid combination: {e}") from None
        synthetic, _ = self.ctx.synthetic_for(params, train)
        rows: list[dict] = []

        def report(epoch: int, row: dict) -> None:
            rows.append(row)
            value = objective_value(rows, tune)
            if not math.isfinite(value):
                trial.set_user_attr("diverged_epoch", epoch + 1)
                raise optuna.TrialPruned(f"validation metric {value} at epoch {epoch + 1}: diverged")
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} ({tune.objective} {value:.4g})")

        workdir = self.trials_dir / f"trial{trial.number}"
        shutil.rmtree(workdir, ignore_errors=True)  # never resume another study's trial of the same number
        ctx = self.ctx
        try:
            train_trial(TrialInputs(ctx.real, synthetic, ctx.val, train, workdir, ctx.device, ctx.cfg.seeds[0]),
                        report)
        finally:
            _drop_weights(workdir)
        if len(rows) < tune.epochs:
            raise RuntimeError(f"trial {trial.number} reported {len(rows)} of {tune.epochs} epochs")
        return objective_value(rows, tune)


def completed_twin(trial: optuna.Trial, fixed: dict[str, Any]) -> FrozenTrial | None:
    """The earliest complete trial of the study with ``trial``'s parameters (and the same held values), if any.

    TPE draws a point it has drawn before, often on a small categorical space (the per-group ratios: 4 choices
    for each of 3 groups); such a trial takes the earlier one's value instead of training again (the remedy
    Optuna's maintainers give in optuna/optuna#2021). It still counts against ``n_trials``, so a search that
    keeps drawing its best point ends rather than looping."""
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == trial.params and t.user_attrs.get("fixed") == fixed:
            return t
    return None


def trial_sampler(tune: TuneConfig, study_name: str, number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler for trial ``number`` of ``study_name``, seeded from (tune.seed, study, number)."""
    return optuna.samplers.TPESampler(seed=derive_seed(tune.seed, study_name, number) % 2**32,
                                      n_startup_trials=tune.startup_trials)


class OverBudget(Exception):
    """A trial claimed after the study's budget was taken by other workers (never trained; marked FAIL)."""


def over_budget(trial: optuna.Trial, budget: int) -> None:
    """Raises :class:`OverBudget` when ``budget`` trials before this one are finished, running or waiting: two
    workers that claim the last slot at once both see the other, and only the earlier trial number runs."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    if len(before) >= budget:
        trial.set_user_attr("over_budget", True)
        raise OverBudget(f"trial {trial.number}: the budget of {budget} trials is taken; not run")


def _drop_weights(workdir: Path) -> None:
    """Removes a trial's checkpoint and model (kept: curves.csv / curves.png)."""
    checkpoint.remove(workdir / "last")
    shutil.rmtree(workdir / "model", ignore_errors=True)
