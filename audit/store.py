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

**Read-only** (``read_only=True``, what ``audit query|tail|show|verify|…``
use): nothing is created and nothing is migrated. A SQLite file must exist
and is opened through a ``file:…?mode=ro`` URI (with ``PRAGMA query_only``);
a PostgreSQL session is made ``READ ONLY``. :func:`check_schema` then refuses
a database that holds no audit log, or one at another schema revision, with
a :class:`~securemesh.errors.ConfigError` saying so (SQLite may still add its
``-wal``/``-shm`` side files next to an existing WAL database).

Schema changes are Alembic migrations shipped inside the package
(``securemesh/audit/migrations``); :func:`upgrade_schema` runs
``alembic upgrade head`` programmatically with a :class:`alembic.config.Config`
built in code, under a lock (SQLite write lock / PostgreSQL advisory lock), so
several processes opening the same fresh database at once are safe.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from securemesh._fileio import enable_wal, private_sqlite_file
from securemesh.errors import ConfigError

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "check_schema",
    "create_audit_engine",
    "db_error_reason",
    "describe_url",
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
_VERSION_TABLE: Final = "audit_alembic_version"  # as migrations/env.py configures it
_SQL_VERSION: Final = "SELECT version_num FROM audit_alembic_version"
_READ_CONNECT_TIMEOUT_S: Final = 10  # a reader gives up on an unreachable server
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


def create_audit_engine(  # noqa: PLR0915 - one place per backend: SQLite ro/rw, PostgreSQL
    url: str | Path,
    *,
    synchronous: str = "FULL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    pool: bool = True,
    read_only: bool = False,
) -> Engine:
    """An :class:`~sqlalchemy.engine.Engine` set up for the audit log (see module doc).

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` (ignored for PostgreSQL).
    ``read_only`` opens an existing log without creating or changing anything
    (module doc); a SQLite path that does not exist is a ConfigError.
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
        if read_only:
            if db_path.is_dir():
                raise ConfigError(f"{db_path} is a directory, not an audit log")
            if not db_path.is_file():
                raise ConfigError(f"no audit log at {db_path}")
            uri = db_path.as_uri() + "?mode=ro"  # never creates the file (sqlite.org/uri.html)
            kwargs["creator"] = lambda: sqlite3.connect(
                uri, uri=True, timeout=busy_timeout_s, check_same_thread=False
            )
        else:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            # 0600, and so the -wal/-shm SQLite creates beside it
            private_sqlite_file(db_path, create=parsed.query.get("mode") != "ro")
        engine = create_engine(full, connect_args={"timeout": busy_timeout_s}, **kwargs)
        busy_ms = int(busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if read_only:
                cur.execute("PRAGMA query_only = 1")
            else:
                enable_wal(dbapi_conn, busy_timeout_s)
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
    if read_only and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": _READ_CONNECT_TIMEOUT_S}
    engine = create_engine(full, **kwargs)
    if read_only:

        @event.listens_for(engine, "connect")
        def _read_only_session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()  # SET is transactional in PostgreSQL

    return engine


def describe_url(url: str | Path) -> str:
    """``url`` for a message: a SQLite file's path, a server URL without its password."""
    s = str(url)
    if "://" not in s:
        return s
    try:
        parsed = make_url(s)
    except Exception:  # any unparsable URL is shown as "the given URL"
        return "the given database URL"
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or s
    return parsed.render_as_string(hide_password=True)


def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - only for read-only opens

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    return ScriptDirectory.from_config(cfg).get_current_head()


def check_schema(engine: Engine, where: str) -> None:
    """Refuse (ConfigError) a database that is not an audit log at this code's schema.

    Used on read-only opens, which never migrate: a database without the log's
    tables is "no audit log", one at another revision must be opened once by a
    writing command (which migrates it) first. ``where`` names it in messages.
    """
    try:
        with read_transaction(engine) as conn:
            tables = set(inspect(conn).get_table_names())
            if _VERSION_TABLE not in tables or "audit_leaves" not in tables:
                raise ConfigError(f"no audit log at {where}")
            have = conn.execute(text(_SQL_VERSION)).scalars().all()
    except OperationalError as exc:  # cannot connect / open (not "not a database")
        raise ConfigError(
            f"cannot open the audit database {where}: {db_error_reason(exc)}"
        ) from exc
    except SQLAlchemyError as exc:
        raise ConfigError(f"{where} is not a readable audit log: {db_error_reason(exc)}") from exc
    head = _head_revision()
    if list(have) != [head]:
        raise ConfigError(
            f"the audit log at {where} has schema {', '.join(have) or 'none'}, this version "
            f"reads {head}: open it once with a writing command (e.g. audit rebuild-index)"
        )


def db_error_reason(exc: BaseException) -> str:
    """The driver's one-line reason inside a SQLAlchemy error (no SQL, no parameters)."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


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
