"""securemesh._fileio: enable_wal against a second connection holding the write lock.

SQLite answers ``PRAGMA journal_mode = WAL`` with "database is locked" at once,
busy handler or not, while another connection holds RESERVED (a writer
mid-transaction: another process migrating the fresh database). That made
several processes opening one new audit log at once fail now and then.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from securemesh._fileio import enable_wal


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)


def _one_writing(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Two connections to a fresh rollback-journal database; the first holds RESERVED."""
    writer, other = _connect(tmp_path / "x.db"), _connect(tmp_path / "x.db")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    return writer, other


def test_the_bare_pragma_fails_at_once_while_another_connection_writes(tmp_path: Path) -> None:
    """The SQLite behaviour enable_wal exists for (if this stops failing, it is not needed)."""
    writer, other = _one_writing(tmp_path)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("PRAGMA journal_mode = WAL")
    writer.execute("COMMIT")
    writer.close()
    other.close()


def test_enable_wal_waits_for_the_writer(tmp_path: Path) -> None:
    writer, other = _one_writing(tmp_path)
    writer.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        enable_wal(other, 10.0)
    finally:
        release.join()
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]  # nothing lost
    writer.close()
    other.close()


def test_enable_wal_gives_up_at_its_deadline(tmp_path: Path) -> None:
    writer, other = _one_writing(tmp_path)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(other, 0.2)
    writer.execute("COMMIT")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    writer.close()
    other.close()


def test_enable_wal_on_a_wal_database_needs_no_lock(tmp_path: Path) -> None:
    """WAL is persistent: a database already in it is not switched again (no exclusive lock)."""
    first = _connect(tmp_path / "x.db")
    enable_wal(first, 1.0)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")
    second = _connect(tmp_path / "x.db")
    enable_wal(second, 0.0)  # no wait allowed, and none needed
    assert second.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first.execute("COMMIT")
    first.close()
    second.close()
