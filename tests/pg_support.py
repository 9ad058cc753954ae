"""PostgreSQL test fixtures shared by the test packages (imported by their conftest/tests).

PostgreSQL is read from ``SECUREMESH_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); tests that need it skip
with a clear reason only when the server cannot be reached. Each test gets its
own schema (through ``search_path``), dropped afterwards, so parallel runs never
share tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

__all__ = ["DEFAULT_PG_URL", "audit_pg_base_url", "audit_pg_url"]

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_base_url() -> str:
    return os.environ.get("SECUREMESH_TEST_PG_URL", DEFAULT_PG_URL)


@pytest.fixture(scope="session")
def audit_pg_base_url() -> str:
    url = _pg_base_url()
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to reach the server
        pytest.skip(f"PostgreSQL at {make_url(url).render_as_string()} is unreachable: {exc}")
    return url


@pytest.fixture
def audit_pg_url(audit_pg_base_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh schema, dropped afterwards."""
    schema = f"t_audit_{secrets.token_hex(6)}"
    admin = create_engine(audit_pg_base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(audit_pg_base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
