"""Fixtures for the CLI tests: the PostgreSQL schema fixtures of tests/pg_support.py."""

from __future__ import annotations

from pg_support import audit_pg_base_url, audit_pg_url  # noqa: F401 - fixtures
