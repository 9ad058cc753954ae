"""Bounded reads of small local files (certificates, trust, state, status).

Theory of operation: every file SecureMesh reads back from its data directory
is small and written by us (atomically, via
:func:`securemesh.crypto.keystore.write_file_atomic`), yet a corrupt or
hostile file must not make us read gigabytes. :func:`read_small_file` reads at
most ``limit + 1`` bytes, so an oversized file is detected without reading it
all, and turns every failure into a :class:`~securemesh.errors.LocalError`
naming the file: missing, unreadable, or too large.

:func:`private_sqlite_file` makes a SQLite database owner-only *before*
SQLite opens it. SQLite creates a database's ``-wal``, ``-shm`` and
``-journal`` side files with the permission bits of the database file itself
(``robust_open`` with the mode from ``findCreateFileMode`` in its
``os_unix.c``), so a database file created ``0600`` by us (instead of by
SQLite, which uses ``0644`` minus the umask) gets ``0600`` side files — with no
process-wide umask change, which would race with other threads. Side files
left by an earlier version are tightened too. Every SQLite file the project
creates goes through it: the audit log, the audit outbox, the token store.

Switching a database into WAL mode needs an exclusive lock, and SQLite answers
``PRAGMA journal_mode = WAL`` with "database is locked" *at once*, without its
busy handler, when another connection holds a lock it would otherwise deadlock
with (two processes opening one fresh database together).
:func:`enable_wal` skips the switch when the file is already in WAL mode (the
mode is persistent) and otherwise retries it until a deadline.

Private leaf module: it imports nothing but :mod:`securemesh.errors`, so the
enrollment state, the SDK and the node daemon can all share it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from securemesh.errors import ConfigError, LocalError

__all__ = ["SQLITE_SIDE_SUFFIXES", "enable_wal", "private_sqlite_file", "read_small_file"]

SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database ``x.db``: ``x.db-wal`` and so on."""


def private_sqlite_file(path: Path, *, create: bool = True) -> None:
    """Create the SQLite database ``path`` as an empty ``0600`` file if it does not exist
    (unless ``create`` is false: a read-only opening), and make it and its existing side
    files ``0600`` (see the module doc).

    A file we may not change (another owner) is left as it is.
    """
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
    for name in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if os.stat(name).st_mode & 0o777 != 0o600:
                os.chmod(name, 0o600)


def enable_wal(conn: Any, timeout_s: float) -> None:
    """Put the SQLite database of DB-API connection ``conn`` into WAL mode (module doc).

    A no-op when it already is; otherwise retries "database is locked" for up to
    ``timeout_s`` seconds, then raises it.
    """
    cur = conn.cursor()
    try:
        if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                cur.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        cur.close()


def read_small_file(
    path: Path,
    *,
    limit: int,
    what: str,
    hint: str = "",
    too_large: type[LocalError] = ConfigError,
) -> bytes:
    """Return the contents of ``path`` if it holds at most ``limit`` bytes.

    Raises ConfigError ``"{what} not found: {path}{hint}"`` if it is missing,
    ConfigError ``"cannot read {what} {path}: …"`` on any other OSError, and
    ``too_large`` (ConfigError unless told) if it is longer than ``limit``.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}{hint}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    if len(data) > limit:
        raise too_large(f"{what} {path} is too large")
    return data
