"""Fixtures for the audit log tests: real SQLite files and real PostgreSQL schemas.

PostgreSQL is read from ``SECUREMESH_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); tests that need it skip
with a clear reason only when the server cannot be reached. Each PostgreSQL
test gets its own schema (through ``search_path``), dropped afterwards, so
parallel runs never share tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# the PostgreSQL fixtures live in tests/pg_support.py (tests/cli uses them too)
from pg_support import audit_pg_base_url, audit_pg_url  # noqa: F401 - fixtures

from securemesh.crypto.signing import Ed25519Signer


@pytest.fixture(params=["sqlite", "postgres"])
def audit_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The main log tests run on both backends."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("auditdb") / "audit.db")
    url: str = request.getfixturevalue("audit_pg_url")
    return url


@pytest.fixture
def log_signer() -> Ed25519Signer:
    return Ed25519Signer.from_seed(b"L" * 32)


@pytest.fixture
def edge_signers() -> dict[str, Ed25519Signer]:
    return {
        "edge-1": Ed25519Signer.from_seed(b"1" * 32),
        "edge-2": Ed25519Signer.from_seed(b"2" * 32),
    }


#: Events in :func:`populated_log`: edge-1 then edge-2, half each; heads at 100, 356 and 600.
POPULATED = 600


@pytest.fixture
def populated_log(
    audit_db_url: str, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> Iterator[Any]:
    """An :class:`AuditLog` of :data:`POPULATED` events appended in two calls (100, 500)."""
    from audit_log_helpers import make_events

    from securemesh.audit.log import open_log

    lg = open_log(audit_db_url, signer=log_signer, clock=lambda: 1_800_000_000.0)
    for name, signer in edge_signers.items():
        lg.register_node(name, signer.verify_key)
    events = make_events(edge_signers["edge-1"], "edge-1", POPULATED // 2)
    events += make_events(edge_signers["edge-2"], "edge-2", POPULATED // 2)
    lg.append(events[:100])
    lg.append(events[100:])
    yield lg
    lg.close()
