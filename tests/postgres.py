"""A throw-away PostgreSQL server for tests (Debian's ``postgresql`` package, installed by
``scripts/system-packages.sh``): ``initdb`` into a temporary folder, listen on a free loopback port (and a unix
socket in that folder), stop and delete it in teardown. As root, the server runs as the ``postgres`` user
(PostgreSQL refuses to run as root).

Where the binaries are missing or the server cannot start, the tests that need it are skipped with a loud
reason that says how to get it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

HOW = "install Debian's postgresql package (`bash scripts/system-packages.sh`, run by `make test`, does it as root)"


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip(reason: str) -> None:
    pytest.skip(f"!!! POSTGRESQL TESTS SKIPPED: {reason}; {HOW} !!!")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Starts a server and yields its URL (``postgresql://synthaug@127.0.0.1:<port>/postgres``)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _skip("initdb / pg_ctl not found (neither on PATH nor in /usr/lib/postgresql/*/bin)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="synthaug-pg-"))  # short: unix socket paths are limited to ~100 bytes
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            _skip("running as root and there is no `postgres` user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        runner = shutil.which("runuser") or shutil.which("su")
        prefix = [runner, "-u", "postgres", "--"] if runner.endswith("runuser") else None
        if prefix is None:
            shutil.rmtree(root, ignore_errors=True)
            _skip("running as root and `runuser` is missing, so the server cannot run as `postgres`")
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    done = run(initdb, "-D", str(data), "-U", "synthaug", "--auth=trust", "-E", "UTF8", "--no-sync")
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _skip(f"initdb failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    started = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60", "start")
    if started.returncode != 0:
        log = (root / "server.log").read_text()[-800:] if (root / "server.log").is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        _skip(f"the server did not start (exit {started.returncode}): {started.stderr.strip()} {log}")
    try:
        yield f"postgresql://synthaug@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
