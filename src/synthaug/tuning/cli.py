"""``synthaug tune CONFIG``: Optuna search over the ``tune:`` section, then retrain-best (heavy imports stay in
the command function, so ``synthaug --help`` imports neither torch nor optuna). A command-line layer over
:func:`synthaug.runner.tune.tune_stage`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from synthaug.errors import ConfigError, SettingError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="tune an arm's hyper-parameters with Optuna (one study shared by any number of workers)",
        description="Runs (or joins, or resumes) the Optuna study of the config's `tune:` section, then retrains "
                    "the best parameters and evaluates them on test (arm train/tuned-<arm>/). Start several "
                    "workers on one PostgreSQL storage to share the trials.")
    p.add_argument("config", help="experiment YAML with a `tune:` section (`tune: {}` for the study's defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tune.epochs=5 (repeatable; values parsed as YAML)")
    p.add_argument("--storage", help="Optuna storage URL (default: tune.storage; 'sqlite' = tune/study.db in the "
                                     "run folder), e.g. postgresql://user@host/db for many workers")
    p.add_argument("--study", help="study name (default: tune.study, else the experiment name)")
    p.add_argument("--n-trials", type=int, help="the study's global trial budget (sequential: per parameter)")
    p.add_argument("--threads", type=int, help="torch threads of this worker (default: tune.threads, else the "
                                               "cores it may use / --local-workers, at most OMP_NUM_THREADS)")
    p.add_argument("--local-workers", type=int, default=1,
                   help="workers started on this machine, to share its cores (default 1)")
    p.add_argument("--no-retrain", action="store_true",
                   help="search only (e.g. extra workers); leave retrain-best to one worker")
    p.add_argument("--wait", action="store_true",
                   help="when another synthaug command (other than tune workers, which share the run folder) is "
                        "writing the run folder, wait for it to finish (default: refuse at once, naming it)")
    p.set_defaults(func=cmd_tune)


def worker_threads(requested: int | None, local_workers: int, env: Mapping[str, str] = os.environ) -> int:
    """Torch threads for one worker: as requested, else the cores this process may use / local workers, at most
    ``OMP_NUM_THREADS`` where that is set (the per-process share a caller gave, as torch itself honours it: two
    tune commands side by side with ``OMP_NUM_THREADS=1`` on 2 cores must not take 2 threads each)."""
    if requested is not None:
        if requested < 1:
            raise SettingError(f"--threads must be at least 1, got {requested}")
        return requested
    if local_workers < 1:
        raise SettingError(f"--local-workers must be at least 1, got {local_workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // local_workers)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    return min(threads, int(omp)) if omp.isdigit() and int(omp) >= 1 else threads


def cmd_tune(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from synthaug.config import _format_errors, load_config
    from synthaug.tuning.config import TuneConfig

    cfg = load_config(args.config, args.overrides)
    if cfg.tune is None:
        raise ConfigError(f"{args.config} has no `tune:` section; add one (`tune: {{}}` runs the DeepFashion study's "
                          "joint search of Table 1)")
    changes = {k: v for k, v in (("storage", args.storage), ("study", args.study), ("n_trials", args.n_trials))
               if v is not None}
    if args.n_trials is not None and args.n_trials < 1:
        raise SettingError(f"--n-trials must be at least 1, got {args.n_trials}")
    try:
        tune = TuneConfig(**{**cfg.tune.model_dump(exclude_unset=True), **changes}) if changes else cfg.tune
    except ValidationError as e:
        raise ConfigError(f"Invalid command-line option for {args.config}:\n{_format_errors(e, 'tune', TuneConfig)}") from None
    threads = worker_threads(args.threads if args.threads is not None else tune.threads, args.local_workers)
    from synthaug.runlock import command_lock

    # shared by the tune workers of this run folder, refused to (or by) any other writer; before torch loads
    lock = command_lock(cfg.run_dir, wait=args.wait, shared=True, now=True, on_exit=getattr(args, "on_exit", None))

    import optuna
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress lines say what happens
    from synthaug.runner import open_run
    from synthaug.runner.tune import tune_stage
    from synthaug.tuning.run import redact, storage_url

    ctx = open_run(cfg, lock=lock)
    url = storage_url(tune, ctx.dir)
    study = tune.study or cfg.name
    print(f"[tune] study {study!r} on {redact(url) if url else 'memory'}; worker pid {os.getpid()}, "
          f"{threads} torch thread(s)", flush=True)
    result = tune_stage(ctx, tune, storage_url=url, study_name=study, n_trials=tune.n_trials,
                             retrain=not args.no_retrain)
    print(f"Best {tune.objective}: {result.best_value:.4f} (trial {result.best_trial} of {', '.join(result.studies)})")
    print("Best parameters:")
    for k, v in result.best_params.items():
        print(f"  {k}: {v}")
    for path in result.plots:
        print(f"Plot: {path}")
    if result.retrained:
        r = result.retrained
        accs = [100 * a for a in r["test_accuracy"].values()]
        mean = sum(accs) / len(accs)
        print(f"Retrained {r['arm']} for {r['epochs']} epochs: test accuracy {mean:.2f}% "
              f"(seeds {r['seeds']}: {', '.join(f'{a:.2f}%' for a in accs)})  ({ctx.dir / 'train' / r['arm']})")
