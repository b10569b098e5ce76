"""Strategies, the shared-study worker loop, storage and plots (retrain-best runs the train stage: it is in
:mod:`synthaug.runner.tune`).

Any number of ``synthaug tune`` processes, on one machine or many, work on the same Optuna study through its
storage (SQLite for one process, PostgreSQL for many). Each worker repeats: claim a trial, train, tell.
The global budget is exact: a worker claims a trial only while fewer than ``n_trials`` trials are finished,
running or waiting, and a trial that two workers claimed at once is run only by the one with the earlier
number (the other is marked FAIL with ``over_budget``, never trained). Optuna's heartbeat turns the RUNNING
trial of a killed worker into FAIL after the grace period, and ``RetryFailedTrialCallback`` queues it again
with the same parameters (``tune.max_retry`` times). A stopped study resumes where it was.

``joint`` searches all parameters in one study; ``sequential`` searches one parameter per study
(``<study>.<step>-<parameter>``), each step holding the best values of the steps before it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from synthaug.errors import SettingError
from synthaug.tuning.config import TuneConfig
from synthaug.tuning.objective import OverBudget, TrialObjective, TuneContext, trial_sampler

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneResult:
    """What a finished search found (and, after retrain-best, the retrained arm's test accuracy per seed)."""

    studies: list[str]
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    direction: str
    retrained: dict[str, Any] | None = None
    plots: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- storage
def storage_url(tune: TuneConfig, run_dir: Path) -> str | None:
    """The study's storage URL (None: in memory). ``sqlite`` is ``tune/study.db`` in the run folder."""
    if tune.storage == "memory":
        return None
    if tune.storage == "sqlite":
        (run_dir / "tune").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(run_dir / 'tune' / 'study.db').resolve()}"
    return tune.storage


def make_storage(url: str | None, tune: TuneConfig) -> optuna.storages.BaseStorage | None:
    """An RDB storage with heartbeat and retry of dead workers' trials (None for in-memory studies).

    Workers that start at the same moment on a fresh database may race to create Optuna's tables; a failed
    attempt is retried a few times.
    """
    if url is None:
        return None
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=tune.heartbeat_interval,
                                                  grace_period=tune.grace_period, **_retry_callback(tune.max_retry))
        except ImportError as e:
            raise SettingError(f"tune.storage {url.split('://')[0]}://...: the database driver is missing ({e}); "
                               "install it (PostgreSQL: pip install psycopg2-binary)") from None
        except Exception as e:  # noqa: BLE001 (sqlalchemy errors: a table-creation race or a server starting)
            if attempt == 4:
                raise SettingError(f"cannot open the Optuna storage {redact(url)}: {e}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _retry_callback(max_retry: int) -> dict[str, Any]:
    """RDBStorage's keyword for re-queuing a dead worker's trial: Optuna >= 4.9 calls it
    ``heartbeat_stale_trial_callback`` (RetryHeartbeatStaleTrialCallback), earlier ``failed_trial_callback``."""
    if not max_retry:
        return {}
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}


def redact(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


def make_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                           n_warmup_steps=tune.pruner_warmup_epochs)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.epochs)
    return optuna.pruners.NopPruner()


_MEMORY: dict[str, optuna.Study] = {}  # in-memory studies of this process, by name


def open_study(storage, name: str, tune: TuneConfig) -> optuna.Study:
    """Creates the study, or loads it when another worker (or an earlier run) made it."""
    if storage is None and name in _MEMORY:
        return _MEMORY[name]
    study = optuna.create_study(storage=storage, study_name=name, direction=tune.direction,
                                sampler=trial_sampler(tune, name, 0), pruner=make_pruner(tune), load_if_exists=True)
    if storage is None:
        _MEMORY[name] = study
    return study


# ---------------------------------------------------------------------------------------------- progress
def _counts(study: optuna.Study) -> Counter:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    counts["over_budget"] = sum(t.state == TrialState.FAIL and t.user_attrs.get("over_budget", False) for t in trials)
    return counts


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def progress_line(study: optuna.Study, budget: int, trial: FrozenTrial | None = None) -> str:
    """``[tune NAME] trial 3 COMPLETE 0.412 | 4/15 finished: 3 complete, 1 pruned, 0 failed | best ...``."""
    c = _counts(study)
    head = f"[tune {study.study_name}]"
    if trial is not None:
        value = f" {trial.value:.4g}" if trial.value is not None else ""
        repeat = trial.user_attrs.get("repeat_of")
        again = f" (the point of trial {repeat}: its value, not retrained)" if repeat is not None else ""
        head += f" trial {trial.number} {trial.state.name}{value}{again} |"
    best = _best(study)
    best_text = (f"best {best.value:.4g} (trial {best.number}: "
                 f"{', '.join(f'{k}={_short(v)}' for k, v in best.params.items())})" if best else "best: none yet")
    return (f"{head} {c[TrialState.COMPLETE] + c[TrialState.PRUNED]}/{budget} finished: "
            f"{c[TrialState.COMPLETE]} complete, {c[TrialState.PRUNED]} pruned, "
            f"{c[TrialState.FAIL] - c['over_budget']} failed, {c[TrialState.RUNNING]} running | {best_text}")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------- search
def search_step(study: optuna.Study, objective: TrialObjective, tune: TuneConfig, budget: int, *,
                heartbeat: bool) -> None:
    """Claims and runs trials of ``study`` until ``budget`` trials are finished (by any worker); with
    ``heartbeat`` (RDB storages), a worker that waits for others' last trials fails those whose worker died."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        if not trial.user_attrs.get("over_budget"):
            print(progress_line(study, budget, trial), flush=True)

    waiting_said = False
    while True:
        trials = study.get_trials(deepcopy=False)
        c = Counter(t.state for t in trials)
        finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
        if finished >= budget:
            return
        if not c[TrialState.WAITING] and finished + c[TrialState.RUNNING] >= budget:
            if not waiting_said:  # other workers hold the last trials: wait for them (or their heartbeat)
                print(f"[tune {study.study_name}] waiting for {c[TrialState.RUNNING]} running trial(s) of other "
                      "workers", flush=True)
                waiting_said = True
            time.sleep(tune.poll_seconds)
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            continue
        waiting_said = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*over_budget.*|.*budget of.*")
            study.optimize(objective, n_trials=1, catch=(OverBudget,), callbacks=[report])


def study_names(tune: TuneConfig, base: str) -> list[str]:
    """One study (joint) or one per parameter (sequential: ``<base>.<step>-<parameter>``)."""
    if tune.strategy == "joint":
        return [base]
    return [f"{base}.{i + 1}-{names[0]}" for i, names in enumerate(tune.steps())]


def run_search(ctx: TuneContext, storage, *, study_name: str, n_trials: int) -> TuneResult:
    """Runs (or joins, or resumes) the search; returns the best parameters and value.

    Sequential: step i searches parameter i with the best values of steps < i held fixed (read from the
    storage, so every worker holds the same ones); a step whose trials were all pruned carries nothing.
    """
    tune = ctx.tune
    ctx.prepare_sets()
    carried: dict[str, Any] = {}
    names = study_names(tune, study_name)
    best_trial = None
    for name, params in zip(names, tune.steps()):
        study = open_study(storage, name, tune)
        objective = TrialObjective(ctx, params, dict(carried), budget=n_trials,
                                   trials_dir=ctx.run_dir / "tune" / "trials" / name)
        print(f"[tune {name}] searching {', '.join(params)}" + (f" holding {_fmt(carried)}" if carried else "") +
              f"; {n_trials} trials of {tune.epochs} epochs, objective {tune.objective} ({tune.direction})",
              flush=True)
        search_step(study, objective, tune, n_trials, heartbeat=storage is not None)
        best = _best(study)
        print(progress_line(study, n_trials), flush=True)
        if best is None:
            log.warning("Study %s: no trial completed (all pruned or failed); its parameters keep their "
                        "configured values.", name)
            continue
        best_trial = best
        carried.update({p: best.params[p] for p in params})
    if best_trial is None:
        raise SettingError(f"no trial of {names} completed, so there are no best parameters; lower the pruning "
                           "(tune.pruner: none) or check the search ranges")
    return TuneResult(studies=names, best_params=carried, best_value=float(best_trial.value),
                      best_trial=best_trial.number, direction=tune.direction)


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------- plots
def save_plots(storage, names: list[str], folder: Path) -> list[str]:
    """Optimisation history, parameter importances and parallel coordinates of each study, as PNG (Optuna's
    matplotlib backend). A plot that cannot be drawn (e.g. importances from one finished trial) is skipped
    with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage) if storage is not None else _MEMORY[name]
        for kind, plot in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                           ("parallel", ovm.plot_parallel_coordinate)):
            path = folder / f"{name}_{kind}.png"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ax = plot(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.set_size_inches(9, 5)
                fig.tight_layout()
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
                fig.savefig(tmp, dpi=100)
                os.replace(tmp, path)
                saved.append(str(path))
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                log.info("Plot %s of study %s skipped: %s", kind, name, e)
            finally:
                plt.close("all")
    return saved
