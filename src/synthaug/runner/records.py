"""Stage records: one ``done.json`` (and, while a stage runs, ``started.json``) per stage folder of a run.

A record holds the stage's fingerprint (the hash of its named input parts), each part's own fingerprint (so a
mismatch says what changed) and the stage's summary. :class:`StageRecords` is the only writer of records and
of ``config.yaml``; its public API is three verbs:

- :meth:`StageRecords.done`: the finished record of a stage;
- :meth:`StageRecords.reuse`: the previous record when it may be reused (or is derived data that is redone),
  a :class:`~synthaug.errors.StageMismatch` when finished work was made with other inputs;
- :meth:`StageRecords.record`: a context manager that runs a stage's body only when it is not done, and
  records it done after the body succeeded.

It also owns the run folder's write lock (:mod:`synthaug.runlock`) on behalf of a run: :meth:`hold_lock` is
called before the first write. Under ``accelerate launch`` rank 0 alone writes records.

**Redoing a stage.** Derived data whose inputs changed, and a trained stage named by ``--force-redo``
(:meth:`StageRecords.redo_policy`), is redone: its old folder is renamed to ``<stage>.stale-<old fingerprint>``
(one rename, so at every moment the old result is complete on disk under one of its two names), the new one is
made in ``<stage>``, and the old folder is deleted only after the new ``done.json`` is written, unless
``keep_stale`` keeps it. A run killed midway leaves the old result in ``<stage>.stale-<fp>`` and the new one
half made in ``<stage>`` (named in its ``started.json``, ``replaces``); the rerun resumes the new one and deletes
the old once it is done. A run killed between the new ``done.json`` and the deletion leaves the old folder for
``synthaug clean``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from synthaug.clean import stale_folder
from synthaug.config import ExperimentConfig, dump_config, fingerprint
from synthaug.errors import StageMismatch
from synthaug.processes import Processes
from synthaug.runlock import RunLock
from synthaug.utils import read_json, write_json

log = logging.getLogger(__name__)


def changed_parts(previous: dict, part_fps: dict[str, str]) -> list[str]:
    """The names of the parts whose fingerprints differ from ``previous``'s (or "its inputs")."""
    return [k for k, v in part_fps.items() if previous.get("parts", {}).get(k) != v] or ["its inputs"]


class StageRecords:
    """The stage records of one run folder, written by the main process alone.

    Args:
        cfg: the run's config (written as ``config.yaml`` when the first stage is accepted).
        processes: the processes of this run (rank 0 writes; the others wait at the barriers).
        lock: the run folder's write lock, taken before the first write (None: the caller keeps to one writer).
    """

    def __init__(self, cfg: ExperimentConfig, processes: Processes, lock: RunLock | None = None):
        self.cfg, self.dir, self.processes, self.lock = cfg, cfg.run_dir, processes, lock
        # shared with with_processes() copies: config.yaml written once; the stages --force-redo redoes; whether
        # a redone stage's old folder is kept
        self._session: dict[str, Any] = {"config_written": False, "force_redo": set(), "keep_stale": False}

    def with_processes(self, processes: Processes) -> StageRecords:
        """The same records under other processes (the main process alone: see ``RunContext.main_alone``)."""
        other = copy.copy(self)  # shares the lock and the session (config.yaml written once)
        other.processes = processes
        return other

    # ------------------------------------------------------------------------------------------ lock
    def hold_lock(self) -> None:
        """Takes the run folder's write lock, if there is one, on the main process (the ranks of one
        ``accelerate launch`` write as one: rank 0 alone writes records). Called before anything is written."""
        if self.lock is not None and self.processes.is_main:
            self.lock.acquire()

    def _accept_config(self) -> None:
        """Writes ``config.yaml`` once a stage of this run is accepted (a rejected re-run leaves it alone)."""
        if not self._session["config_written"] and self.processes.is_main:
            self.hold_lock()
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(dump_config(self.cfg))
            (self.dir / "config.resolved.yaml").write_text(dump_config(self.cfg, resolved=True))
            self._session["config_written"] = True

    def redo_policy(self, *, force: Iterable[str] = (), keep_stale: bool | None = None) -> None:
        """How this run redoes stages: ``force``, trained stages (``generator``, ``train/<arm>/seed<k>``) to redo
        although they were made with other inputs (checked by :func:`synthaug.runner.preflight` first);
        ``keep_stale``, keep a redone stage's old folder as ``<stage>.stale-<fp>`` (default: deleted once the new
        one is complete)."""
        self._session["force_redo"].update(force)
        if keep_stale is not None:
            self._session["keep_stale"] = bool(keep_stale)

    # ------------------------------------------------------------------------------------------ the verbs
    def done(self, rel: str) -> dict:
        """The finished record (``done.json``) of stage ``rel``."""
        return read_json(self.dir / rel / "done.json")

    def is_done(self, rel: str, parts: dict[str, Any]) -> bool:
        """Whether stage ``rel`` is recorded done with exactly these inputs."""
        record = self.dir / rel / "done.json"
        return record.is_file() and read_json(record).get("fingerprint") == fingerprint(parts)

    def reuse(self, rel: str, parts: dict[str, Any], *, redo: bool = False, restartable: bool = False) -> dict | None:
        """The stage's previous record (done or started), or None; a :class:`StageMismatch` when it was made
        with other inputs and may not be redone. Called before anything of a run is written.

        Args:
            parts: the stage's inputs by name (each JSON-able or a fingerprint).
            redo: derived data, redone when its inputs change (no mismatch is raised).
            restartable: the stage keeps nothing a rerun resumes from (a generator that trains nothing), so a
                ``started`` record without ``done`` is no record at all.
        """
        previous = self._previous(rel, restartable=restartable)
        if previous is None or redo or rel in self._session["force_redo"] \
                or previous.get("fingerprint") == fingerprint(parts):
            return previous
        state, changed = self._mismatch(rel, parts, restartable=restartable)
        raise StageMismatch(
            f"Stage {rel} in {self.dir / rel} was {state} with other inputs ({', '.join(changed)} changed). Delete "
            f"{self.dir / rel} to redo it (and the stages after it), or use a new experiment name (--set name=...).")

    def _previous(self, rel: str, *, restartable: bool = False) -> dict | None:
        """The stage's ``done.json``, else its ``started.json`` (unless ``restartable``), else None."""
        folder = self.dir / rel
        record, started = folder / "done.json", folder / "started.json"
        if record.is_file():
            return read_json(record)
        return read_json(started) if started.is_file() and not restartable else None

    def conflict(self, rel: str, parts: dict[str, Any], *, restartable: bool = False) -> str | None:
        """How stage ``rel`` on disk conflicts with ``parts`` (``completed with other inputs: train changed``),
        or None when it was made with these inputs or is not there. Derived data conflicts too (it is redone on
        its own: the caller decides)."""
        mismatch = self._mismatch(rel, parts, restartable=restartable)
        return None if mismatch is None else f"{mismatch[0]} with other inputs: {', '.join(mismatch[1])} changed"

    def _mismatch(self, rel: str, parts: dict[str, Any], *, restartable: bool) -> tuple[str, list[str]] | None:
        """("completed" or "started", the changed parts' names) when stage ``rel`` was made with other inputs."""
        previous = self._previous(rel, restartable=restartable)
        if previous is None or previous.get("fingerprint") == fingerprint(parts):
            return None
        state = "completed" if (self.dir / rel / "done.json").is_file() else "started"
        return state, changed_parts(previous, {k: fingerprint(v) for k, v in parts.items()})

    @contextmanager
    def record(self, rel: str, parts: dict[str, Any], *, redo: bool = False, shared: bool = False,
               restartable: bool = False) -> Iterator[dict | None]:
        """Yields None when ``rel`` is done with the same inputs; else a dict to fill with the stage's summary,
        recorded in ``done.json`` when the body returns.

        Args:
            parts: the stage's inputs by name (each JSON-able or a fingerprint); their hash is the stage's
                fingerprint, and the names let a mismatch say what changed.
            redo: for derived data: when the inputs changed, move the old folder aside (``<stage>.stale-<fp>``)
                and redo the stage. Otherwise a changed finished (or started) stage is a :class:`StageMismatch`.
            shared: under several processes every rank runs the stage's body (rank 0 prepares the folder
                first and records the stage after all are through); otherwise rank 0 alone runs it and the
                others are told it is done. Rank 0 alone writes records either way.
            restartable: the stage keeps nothing to resume from: a body that fails removes the ``started``
                record (and the folder, when this attempt made it), so the fixed rerun starts fresh.
        """
        barrier = self.processes.barrier
        if not self.processes.is_main:
            if not shared:  # rank 0 runs the stage alone: wait until it is recorded
                barrier()
                yield None
                return
            barrier()  # rank 0 has prepared the folder (or found the stage done)
            yield None if self.is_done(rel, parts) else {}
            barrier()
            return
        with self._main_record(rel, parts, redo=redo, shared=shared, restartable=restartable) as summary:
            yield summary
        if not shared:
            barrier()  # the others wait for this record

    @contextmanager
    def _main_record(self, rel: str, parts: dict[str, Any], *, redo: bool, shared: bool,
                     restartable: bool) -> Iterator[dict | None]:
        wait = self.processes.barrier if shared else (lambda: None)
        folder = self.dir / rel
        fp = fingerprint(parts)
        part_fps = {k: fingerprint(v) for k, v in parts.items()}
        record, started = folder / "done.json", folder / "started.json"
        for locked in (False, True):  # a done stage is read without the lock; else read again under it
            if locked:
                self.hold_lock()  # another writer may have made the stage meanwhile (under --wait)
            previous = self.reuse(rel, parts, redo=redo, restartable=restartable)
            if previous is not None and previous.get("fingerprint") == fp and record.is_file():
                wait()
                yield None
                wait()
                return
        # the old folders this attempt replaces: set aside by an interrupted attempt with these inputs, or now
        replaces = list(previous.get("replaces", [])) if previous is not None and not record.is_file() else []
        aside = None
        if previous is not None and previous.get("fingerprint") != fp:
            changed = changed_parts(previous, part_fps)
            aside = stale_folder(folder, previous["fingerprint"])
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)  # one rename: the old result stays whole, under its new name
            replaces = [*replaces, aside.name]
            keep = "kept in" if self._session["keep_stale"] else "deleted once the new one is complete; until then in"
            log.warning("Stage %s: %s changed; redoing it (the previous result is %s %s).",
                        rel, ", ".join(changed), keep, aside)
        self._accept_config()
        made_now = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(started, {"fingerprint": fp, "parts": part_fps, **({"replaces": replaces} if replaces else {})})
        summary: dict[str, Any] = {}
        start = time.time()
        wait()
        try:
            yield summary
        except BaseException:
            if restartable:  # nothing to resume: the fixed rerun finds the stage fresh
                if made_now:
                    shutil.rmtree(folder, ignore_errors=True)
                    if aside is not None:  # ... and the old result back in its place
                        aside.rename(folder)
                else:
                    started.unlink(missing_ok=True)
            raise
        wait()
        write_json(record, {"fingerprint": fp, "parts": part_fps, "seconds": round(time.time() - start, 1),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})
        if not self._session["keep_stale"]:  # the new result is complete: the old one may go
            for name in replaces:
                shutil.rmtree(folder.with_name(name), ignore_errors=True)

    def folder(self, rel: str) -> Path:
        """The folder of stage ``rel``."""
        return self.dir / rel
