"""``synthaug clean RUN_DIR [--dry-run]``: removes what a run folder keeps but no stage reads again.

That is:

- ``<stage>.stale-<hash>``: a redone stage's previous result, kept by ``--keep-stale`` (or left by a run killed
  between the new stage's ``done.json`` and the deletion of the old folder). The old result of a redo that is
  not finished yet (named in the new stage's ``started.json``) is kept: it is the only complete result;
- ``*.partial`` inside a finished stage (one with ``done.json``): a write (checkpoint, model folder) that a
  killed process never completed, which the finished stage no longer needs.

Nested run folders (``fewshot/k<k>-d<d>/``, each with its own lock) are left alone: clean each on its own.
Cleaning takes the run folder's lock (:mod:`synthaug.runlock`), so it never deletes under a running writer;
``--dry-run`` only lists, and takes no lock. Imports no torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from synthaug.errors import MissingFileError

STALE = ".stale-"  # <stage>.stale-<fingerprint[:8]>: a redone stage's previous folder
STALE_NAME = re.compile(r"\.stale-[0-9a-f]{8}$")
PARTIAL = ".partial"


def stale_folder(folder: Path, fingerprint: str) -> Path:
    """Where a redone stage's previous folder (made with inputs of fingerprint ``fingerprint``) is set aside."""
    return folder.with_name(f"{folder.name}{STALE}{fingerprint[:8]}")


@dataclass(frozen=True)
class Leftover:
    """One path ``synthaug clean`` removes (or keeps, with ``keep`` saying why)."""

    path: Path
    size: int  # bytes of its files (symbolic links not followed)
    what: str  # "stale" or "partial"
    keep: str | None = None


def size_of(path: Path) -> int:
    """The bytes of the files under ``path`` (or of the file ``path``), links not followed."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _redo_in_progress(stale: Path) -> str | None:
    """The stage whose unfinished redo still needs ``stale`` (its only complete result), or None."""
    stage = stale.with_name(STALE_NAME.sub("", stale.name))
    started = stage / "started.json"
    if (stage / "done.json").is_file() or not started.is_file():
        return None
    try:
        replaces = json.loads(started.read_text()).get("replaces", [])
    except (OSError, ValueError):
        return None
    return str(stage) if stale.name in replaces else None


def leftovers(run_dir: str | os.PathLike) -> tuple[list[Leftover], list[Path]]:
    """What ``synthaug clean`` would remove under ``run_dir``, and the nested run folders it leaves alone.

    Raises:
        MissingFileError: ``run_dir`` is not a run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / "config.yaml").is_file() or (run_dir / ".lock").is_file()):
        raise MissingFileError(f"{run_dir} is not a run folder (no config.yaml or .lock in it): give the folder "
                               "output_dir/<name>, e.g. runs/demo.")
    found: list[Leftover] = []
    nested: list[Path] = []
    for root, dirs, files in os.walk(run_dir):
        here = Path(root)
        if here != run_dir and (".lock" in files or "config.yaml" in files):
            nested.append(here)
            dirs[:] = []
            continue
        in_finished_stage = any((p / "done.json").is_file() for p in [here, *here.parents] if p.is_relative_to(run_dir))
        for name in sorted([*dirs, *files]):
            path = here / name
            if STALE_NAME.search(name) and path.is_dir():
                found.append(Leftover(path, size_of(path), "stale", _redo_in_progress(path)))
            elif name.endswith(PARTIAL) and in_finished_stage:
                found.append(Leftover(path, size_of(path), "partial"))
        dirs[:] = [d for d in dirs if not (STALE_NAME.search(d) or d.endswith(PARTIAL))]
    return found, nested


def clean(run_dir: str | os.PathLike, *, dry_run: bool = False, wait: bool = False) -> list[Leftover]:
    """Removes the leftovers of ``run_dir`` (see the module docstring), holding its lock; lists them only with
    ``dry_run``.

    Returns:
        Every leftover found (those with ``keep`` set were kept).

    Raises:
        MissingFileError: ``run_dir`` is not a run folder.
        RunFolderBusy: another process writes it (and ``wait`` is False).
    """
    from synthaug.runlock import RunLock

    if dry_run:
        return leftovers(run_dir)[0]
    leftovers(run_dir)  # not a run folder: refused before a lock file is made there
    with RunLock(run_dir, wait=wait):
        found = leftovers(run_dir)[0]  # again, under the lock: what a writer left meanwhile
        for item in found:
            if item.keep is None:
                if item.path.is_dir() and not item.path.is_symlink():
                    shutil.rmtree(item.path)
                else:
                    item.path.unlink()
    return found


def add_parser(subparsers) -> None:
    """Registers ``synthaug clean RUN_DIR [--dry-run] [--wait]``."""
    p = subparsers.add_parser(
        "clean", help="remove a run folder's kept stale results (<stage>.stale-*) and unfinished writes "
                      "(*.partial) of finished stages, listing each with its size",
        description="Lists and removes what no stage reads again: the previous results of redone stages "
                    "(<stage>.stale-<hash>, kept with --keep-stale) and *.partial leftovers inside finished stages. "
                    "Takes the run folder's lock.")
    p.add_argument("run_dir", help="a run folder, e.g. runs/demo")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--wait", action="store_true",
                   help="when another synthaug process is writing the run folder, wait for it to finish (default: "
                        "refuse at once, naming its pid and command)")
    p.set_defaults(func=cmd_clean)


def cmd_clean(args) -> None:
    found = clean(args.run_dir, dry_run=args.dry_run, wait=args.wait)
    run_dir = Path(args.run_dir)
    removed = [f for f in found if f.keep is None]
    for f in found:
        what = "stale result" if f.what == "stale" else "unfinished write in a finished stage"
        state = f"kept: the redo of {f.keep} is not finished (rerun it)" if f.keep else what
        print(f"{human_size(f.size):>10}  {f.path.relative_to(run_dir)}  ({state})")
    verb = "Would remove" if args.dry_run else "Removed"
    print(f"{verb} {len(removed)} item(s), {human_size(sum(f.size for f in removed))}, from {run_dir}.")
    for folder in leftovers(run_dir)[1]:
        print(f"Nested run folder left alone: {folder} (synthaug clean {folder})")
