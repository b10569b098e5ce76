"""The runner: a run of an experiment config as stages over a read-only run context.

- :mod:`~synthaug.runner.context`: :class:`RunContext` (config, folders, splits, plan, fingerprints, devices);
- :mod:`~synthaug.runner.records`: :class:`StageRecords` (done / reuse / record, the run folder's lock);
- one module per stage, each a public function from the context (plus its inputs) to its outputs:
  :mod:`~synthaug.runner.data`, :mod:`~synthaug.runner.generate`, :mod:`~synthaug.runner.filter`,
  :mod:`~synthaug.runner.train` and :mod:`~synthaug.runner.arms` (with :mod:`~synthaug.runner.pseudo`, the
  pseudo-labelled control), :mod:`~synthaug.runner.judge`, :mod:`~synthaug.runner.studies`,
  :mod:`~synthaug.runner.report`, and :mod:`~synthaug.runner.tune`;
- :mod:`~synthaug.runner.pipeline`: :func:`preflight` and the stages in order (``synthaug run``).

Nothing outside the runner imports it, except the command line and the package's public API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from synthaug.config import ArmConfig, ExperimentConfig, load_config
from synthaug.runlock import RunLock
from synthaug.runner.context import RunContext
from synthaug.runner.pipeline import preflight, run_stages
from synthaug.runner.records import StageRecords

__all__ = ["RunContext", "StageRecords", "open_run", "preflight", "run", "run_stages"]


def open_run(config: ExperimentConfig, *, lock: RunLock | None = None) -> RunContext:
    """The run context of ``config`` (nothing is loaded or written yet).

    Args:
        lock: the run folder's write lock, taken by the main process before its first write (the command line
            passes one; from Python, pass one or keep to one writer yourself).
    """
    return RunContext(config, lock=lock)


def run(config_or_path: ExperimentConfig | str | Path, overrides: list[str] | None = None, *,
        only: Callable[[ArmConfig], bool] | None = None, wait: bool = False, force_redo: Sequence[str] = (),
        keep_stale: bool = False) -> dict | None:
    """Runs (or resumes) a whole experiment, as ``synthaug run`` does, holding the run folder's lock.

    Args:
        config_or_path: an experiment config, or the path of its YAML file.
        overrides: ``KEY=VALUE`` changes, as ``--set`` takes them (values parsed as YAML).
        only: the arms to train (None: every arm).
        wait: wait for another writer of the run folder instead of refusing at once.
        force_redo: trained stages made with other inputs to redo instead of refusing the run, as
            ``--force-redo`` takes them (``generator``, ``train/<arm>/seed<k>``, ``train/<arm>``, globs).
        keep_stale: keep a redone stage's old folder as ``<stage>.stale-<hash>`` (``--keep-stale``).

    Returns:
        The run's summary (what ``report/summary.json`` holds: ``rows``, one per arm with its test accuracies,
        ``judge`` and ``markdown``), or None on a process other than the main one
        under ``accelerate launch``.

    Raises:
        ConfigError: the config is invalid (names the field and the fix).
        StageMismatch: finished work in the run folder was made with other inputs.
    """
    from synthaug.runlock import check_folder_path

    if isinstance(config_or_path, ExperimentConfig):
        cfg = config_or_path
        if overrides:
            from synthaug.config import build_config

            cfg = build_config(cfg.model_dump(mode="json", exclude_unset=True), list(overrides))
    else:
        cfg = load_config(config_or_path, list(overrides or []))
    check_folder_path(cfg.run_dir)
    lock = RunLock(cfg.run_dir, wait=wait)
    try:
        return run_stages(open_run(cfg, lock=lock), only=only, force_redo=force_redo, keep_stale=keep_stale)
    finally:
        lock.release()
