"""Database plumbing for the audit log: engines, migrations, locking.

Theory of operation
-------------------
The log lives in one SQL database reached through SQLAlchemy 2.0 Core:

* **SQLite** (default; a file path or ``sqlite:///…`` URL). Every connection
  gets ``journal_mode=WAL`` (readers never block the writer), a busy timeout
  (writers queue instead of failing) and ``synchronous=FULL`` by default (a
  committed batch survives power loss, so an acknowledgement to an edge is
  never a lie). pysqlite's own implicit transactions are switched off and we
  emit ``BEGIN`` ourselves — ``BEGIN IMMEDIATE`` for writers — following the
  SQLAlchemy "serializable isolation / savepoints" recipe for pysqlite.
  ``BEGIN IMMEDIATE`` takes SQLite's single RESERVED lock up front, so two
  sequencers (threads or processes) can never read the same tree size.
* **PostgreSQL** (``postgresql+psycopg://…``). Writers run
  ``SELECT … FROM audit_sequencer WHERE id = 1 FOR UPDATE``; the row lock
  serialises sequencing across processes and hosts for the length of the
  transaction, while readers (READ COMMITTED) are never blocked.

Schema changes are Alembic migrations shipped inside the package
(``securemesh/audit/migrations``); :func:`upgrade_schema` runs
``alembic upgrade head`` programmatically with a :class:`alembic.config.Config`
built in code, under a lock (SQLite write lock / PostgreSQL advisory lock), so
several processes opening the same fresh database at once are safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from securemesh._fileio import private_sqlite_file
from securemesh.errors import ConfigError

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "create_audit_engine",
    "is_sqlite",
    "normalise_url",
    "read_transaction",
    "upgrade_schema",
    "write_transaction",
]

DEFAULT_BUSY_TIMEOUT_S: Final = 60.0
_WRITE_OPTION: Final = "securemesh_audit_write"
# pg_advisory_xact_lock key for migrations: "SMAUDIT" packed into an int64.
_PG_MIGRATION_LOCK: Final = 0x534D4155444954
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


def normalise_url(url: str | Path) -> str:
    """Turn a plain file path into a ``sqlite:///`` URL; keep real URLs as they are."""
    s = str(url)
    if "://" in s:
        return s
    if not s:
        raise ConfigError("empty database path")
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def create_audit_engine(
    url: str | Path,
    *,
    synchronous: str = "FULL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    pool: bool = True,
) -> Engine:
    """An :class:`~sqlalchemy.engine.Engine` set up for the audit log (see module doc).

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` (ignored for PostgreSQL).
    """
    full = normalise_url(url)
    parsed = make_url(full)
    kwargs: dict[str, Any] = {}
    if not pool:
        kwargs["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("the audit log needs a SQLite *file* (WAL needs one)")
        db_path = Path(parsed.database or "")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # 0600, and so the -wal/-shm SQLite creates beside it (a read-only URL creates nothing)
        private_sqlite_file(db_path, create=parsed.query.get("mode") != "ro")
        engine = create_engine(full, connect_args={"timeout": busy_timeout_s}, **kwargs)
        busy_ms = int(busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {sync}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(_WRITE_OPTION):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"unsupported audit database {parsed.get_backend_name()!r}")
    return create_engine(full, **kwargs)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the database's sequencing lock once the body starts.

    SQLite: ``BEGIN IMMEDIATE``. PostgreSQL: the caller locks the sequencer row
    with ``FOR UPDATE`` as its first statement (:mod:`securemesh.audit.log`).
    """
    with engine.connect() as plain:
        conn = plain.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only snapshot (SQLite deferred ``BEGIN``; PostgreSQL READ COMMITTED)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Run the packaged Alembic migrations up to ``revision`` (idempotent, process-safe).

    Only tests name an older revision (to check a migration over existing rows).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    with write_transaction(engine) as conn:
        if not is_sqlite(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
