"""Fixtures of the storage tests: PostgreSQL (tests/pg_support.py)."""

from pg_support import audit_pg_base_url, audit_pg_url  # noqa: F401 - fixtures
