"""One writer per run folder: an advisory lock on ``<run folder>/.lock`` for the whole command.

The lock is ``flock`` on the lock file, so it dies with its process: a run killed by ``kill -9`` or a crash never
leaves a lock that blocks the next one. While held, the file names the holder (pid, host, start time, command
line); it is emptied on release. Under ``accelerate launch`` rank 0 alone takes it (the ranks of one launch are
one writer; only rank 0 writes stage records). Readers (``synthaug report``, ``stats`` on a finished run) take
no lock. Locks are re-entrant within a process: two :class:`RunLock` s on one folder in one process share it.

``synthaug tune`` workers take it *shared*: any number of them write one run folder together (they take turns
on what they share through their own lock files), while every other writer, which takes it exclusively, is
refused (or waits) until the last of them ends, and the other way round.

``flock`` is advisory: it keeps synthaug processes apart, not other programs. On NFS, Linux maps it to POSIX
locks, which work when the server supports locking.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from synthaug.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# errors that are the file system's answer to what the user pointed at, not bugs: named in one line
USER_IO_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system", errno.ENOTDIR: "a file where a folder is expected",
                  errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "disk quota exceeded"}


class RunFolderBusy(UserError, RuntimeError):
    """Another process is writing the run folder (its holder is named in the message)."""


class RunFolderNotWritable(UserError, PermissionError):
    """The run folder (or a path on the way to it) cannot be created or written."""


def io_problem(e: OSError, what: str = "") -> str | None:
    """One line naming the path, what is wrong with it and the fix, for an :class:`OSError` the user can fix
    (permission, read-only file system, a file where a folder should be, a full disk); None for any other."""
    if e.errno not in USER_IO_ERRNOS:
        return None
    path = e.filename or what or "a file"
    if e.errno == errno.ENOTDIR:
        return (f"{path}: {USER_IO_ERRNOS[e.errno]} ({e.strerror}). Point output_dir at a folder (--set "
                "output_dir=...), or move the file out of the way.")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: {USER_IO_ERRNOS[e.errno]}. Free some space (or use another output_dir) and rerun."
    return (f"{path}: {USER_IO_ERRNOS[e.errno]}; synthaug must write there. Make it writable (e.g. `chmod -R u+w` "
            "on the run folder, or remount it read-write), or use another output_dir / name (--set name=...). "
            "Nothing was left half-written; rerun the same command once it is writable.")


def check_folder_path(folder: Path) -> None:
    """Raises :class:`RunFolderNotWritable` when ``folder`` or the nearest of its parents that exists is not a
    folder (``output_dir`` that is a regular file); writes nothing."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderNotWritable(
                    f"{parent} is a file, not a folder, so the run folder {folder} cannot be made there. Point "
                    "output_dir at a folder (--set output_dir=...), or move the file out of the way.")
            return


def _make_folder(folder: Path) -> None:
    """Creates ``folder`` (and its parents), naming the path at fault when it cannot."""
    check_folder_path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = io_problem(e, str(folder))
        if problem is None:
            raise
        raise RunFolderNotWritable(problem) from None


def holder(folder: Path) -> dict | None:
    """Who holds (or last held) the lock of the run folder ``folder``, as written in its lock file; None when
    nobody wrote there."""
    try:
        text = (folder / LOCK_NAME).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


class RunLock:
    """The write lock of one run folder (see the module docstring).

    Args:
        folder: the run folder (``output_dir/name``).
        wait: when another process holds it, wait for it (logging who) instead of raising
            :class:`RunFolderBusy`.
        shared: take it shared with the other shared holders (``tune`` workers), not exclusively.
    """

    _held: dict[Path, tuple[int, int]] = {}  # run folder → (file descriptor, users) held by this process

    def __init__(self, folder: str | os.PathLike, *, wait: bool = False, shared: bool = False):
        self.folder = Path(folder)
        self.wait = wait
        self.shared = shared
        self.holding = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def _key(self) -> Path:
        return self.folder.resolve()

    def acquire(self) -> None:
        """Takes the lock (creating the run folder if needed); a no-op when this object holds it already.

        Raises:
            RunFolderBusy: another process holds it and ``wait`` is False (names the holder and the fix).
            RunFolderNotWritable: the run folder cannot be made or written (names the path and the fix).
        """
        if self.holding:
            return
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock (a warning, not a refusal)
            log.warning("No file locking on this system: nothing keeps two processes off %s.", self.folder)
            self.holding = True
            return
        _make_folder(self.folder)
        key = self._key()
        if key in self._held:  # this process holds it (another run context, or main() called twice)
            fd, users = self._held[key]
            self._held[key] = (fd, users + 1)
            self.holding = True
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            problem = io_problem(e, str(self.path))
            if problem is None:
                raise
            raise RunFolderNotWritable(problem) from None
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.wait:
                    raise RunFolderBusy(self._busy_message()) from None
                log.warning("%s; waiting for it to finish (--wait).", self._busy_message(short=True))
                fcntl.flock(fd, mode)
            os.ftruncate(fd, 0)  # a shared holder names itself (the last of them to start is named)
            os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "command": " ".join(sys.argv), "shared": self.shared}) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # closing the file releases the lock, if it was taken
            raise
        self._held[key] = (fd, 1)
        self.holding = True

    def release(self) -> None:
        """Empties the lock file and releases the lock (once every user in this process has released it)."""
        if not self.holding:
            return
        self.holding = False
        key = self._key()
        if key not in self._held:
            return
        fd, users = self._held.pop(key)
        if users > 1:
            self._held[key] = (fd, users - 1)
            return
        try:
            if self.shared:  # emptied by the last shared holder alone (the others still hold it)
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)  # the file stays (removing it would race with a process opening it)
        except OSError:  # BlockingIOError: another shared holder is still there
            pass
        os.close(fd)

    def _busy_message(self, *, short: bool = False) -> str:
        who = holder(self.folder) or {}
        pid, command = who.get("pid", "?"), who.get("command", "an unknown command")
        host = who.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        others = " (and maybe other tune workers)" if who.get("shared") else ""
        head = (f"Run folder {self.folder} is in use by another synthaug process (pid {pid}{where}, since "
                f"{who.get('started', '?')}: {command}){others}")
        if short:
            return head
        return (f"{head}. One process at a time writes a run folder. Wait for it to finish (or add --wait to wait "
                f"for it), stop it (kill {pid}), or use another name (--set name=...).")

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def command_lock(folder: str | os.PathLike, *, wait: bool = False, shared: bool = False, now: bool | None = None,
                 on_exit=None) -> RunLock:
    """The run folder's lock for one command, released when the command ends.

    Taken at once (on rank 0 of an ``accelerate launch``, or a plain process) when ``now`` is True, or, with
    ``now`` None, when the run folder exists, so that a second writer is refused before anything loads; else
    the run context takes it before its first write.

    Args:
        folder: the run folder.
        wait: wait for another holder instead of raising :class:`RunFolderBusy` (``--wait``).
        shared: shared with the other shared holders (``tune`` workers).
        now: take it now (True), at the first write (False), or now if the folder exists (None).
        on_exit: a :class:`contextlib.ExitStack` that releases it when the command ends.

    Raises:
        RunFolderBusy, RunFolderNotWritable: as :meth:`RunLock.acquire`.
    """
    folder = Path(folder)
    check_folder_path(folder)  # output_dir that is a file: named before anything loads
    lock = RunLock(folder, wait=wait, shared=shared)
    if on_exit is not None:
        on_exit.callback(lock.release)
    if (folder.is_dir() if now is None else now) and os.environ.get("RANK", "0") == "0":
        lock.acquire()
    return lock
