"""Engines, migrations and locking of the audit store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from audit_log_helpers import make_events
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from securemesh.audit import _schema as s
from securemesh.audit.log import AuditLog, open_log
from securemesh.audit.store import (
    create_audit_engine,
    normalise_url,
    upgrade_schema,
    write_transaction,
)
from securemesh.audit.verify import verify_log
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import ConfigError

TABLES = {
    "audit_leaves",
    "audit_tree_nodes",
    "audit_tree_heads",
    "audit_sequencer",
    "audit_origins",
    "audit_alembic_version",
}


def test_normalise_url(tmp_path: Path) -> None:
    assert normalise_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert normalise_url("postgresql+psycopg://x@h/db") == "postgresql+psycopg://x@h/db"
    with pytest.raises(ConfigError):
        normalise_url("")
    with pytest.raises(ConfigError):
        create_audit_engine("sqlite://")
    with pytest.raises(ConfigError):
        create_audit_engine("mysql://u@h/db")
    with pytest.raises(ConfigError):
        create_audit_engine(tmp_path / "b.db", synchronous="sometimes")


def test_sqlite_engine_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    engine = create_audit_engine(tmp_path / "sub" / "a.db", busy_timeout_s=5)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_migrations_create_schema_and_are_idempotent(audit_db_url: str) -> None:
    engine = create_audit_engine(audit_db_url)
    upgrade_schema(engine)
    upgrade_schema(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM audit_alembic_version")).scalar() == (
            "a0002"
        )
        assert conn.execute(text("SELECT size FROM audit_sequencer WHERE id = 1")).scalar() == 0
    engine.dispose()


def test_sqlite_write_transactions_exclude_each_other(tmp_path: Path) -> None:
    engine = create_audit_engine(tmp_path / "a.db", busy_timeout_s=0.2)
    upgrade_schema(engine)
    with write_transaction(engine):
        other = create_audit_engine(tmp_path / "a.db", busy_timeout_s=0.2)
        with pytest.raises(Exception, match="locked"), write_transaction(other):
            pass
        other.dispose()
    engine.dispose()


def _open(url: str) -> None:
    open_log(url).close()


@pytest.mark.slow
def test_concurrent_first_open_migrates_once(audit_db_url: str) -> None:
    """Several processes opening the same fresh database at once all succeed."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open, args=(audit_db_url,)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with open_log(audit_db_url) as log:
        assert log.size() == 0


def test_origin_key_history_migration_keeps_existing_rows(audit_db_url: str) -> None:
    """A log created at a0001 (one key per node) upgrades with its registry and leaves intact."""
    log_signer = Ed25519Signer.from_seed(b"L" * 32)
    old = {name: Ed25519Signer.from_seed(name.encode().ljust(32, b"-")) for name in ("e1", "e2")}
    engine = create_audit_engine(audit_db_url)
    upgrade_schema(engine, "a0001")
    log = AuditLog(engine, signer=log_signer, clock=lambda: 1_800_000_000.0)
    for name, signer in old.items():
        log.register_node(name, signer.verify_key, now=1_700_000_000.0 + len(name))
    log.append(make_events(old["e1"], "e1", 30) + make_events(old["e2"], "e2", 30))
    new_key = Ed25519Signer.from_seed(b"n" * 32)
    with pytest.raises(IntegrityError), write_transaction(engine) as conn:
        # at a0001 a node cannot have a second key
        conn.execute(
            s.origins.insert().values(node_id="e1", verify_key=new_key.verify_key, registered_ms=1)
        )
    with engine.connect() as conn:
        before = sorted(conn.execute(text("SELECT * FROM audit_origins")).all())
        leaves_before = conn.execute(text("SELECT idx, entry FROM audit_leaves ORDER BY idx")).all()

    upgrade_schema(engine)

    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM audit_alembic_version")).scalar() == (
            "a0002"
        )
        assert sorted(conn.execute(text("SELECT * FROM audit_origins")).all()) == before
        assert (
            conn.execute(text("SELECT idx, entry FROM audit_leaves ORDER BY idx")).all()
            == leaves_before
        )
    assert len(before) == 2
    log = AuditLog(engine, signer=log_signer, clock=lambda: 1_800_000_000.0)
    assert log.register_node("e1", new_key.verify_key) is True
    assert log.append(make_events(new_key, "e1", 10, start=100)) == list(range(60, 70))
    report = verify_log(engine, log_verify_key=log_signer.verify_key, log_origin=log.origin)
    assert report.size == 70
    log.close()


def test_origin_key_history_downgrade_keeps_the_newest_key_per_node(audit_db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from securemesh.audit import store

    engine = create_audit_engine(audit_db_url)
    upgrade_schema(engine)
    log = AuditLog(engine)
    keys = [Ed25519Signer.from_seed(bytes([k]) * 32).verify_key for k in (1, 2, 3)]
    log.register_node("a", keys[0], now=1)
    log.register_node("a", keys[1], now=2)
    log.register_node("b", keys[2], now=1)
    cfg = Config()
    scripts = Path(store.__file__).resolve().parent / "migrations"
    cfg.set_main_option("script_location", str(scripts))
    with write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "a0001")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT node_id, verify_key FROM audit_origins ORDER BY node_id"))
        assert [(r[0], bytes(r[1])) for r in rows] == [("a", keys[1]), ("b", keys[2])]
    upgrade_schema(engine)
    assert AuditLog(engine).registered_nodes() == {"a": [keys[1]], "b": [keys[2]]}
    engine.dispose()
