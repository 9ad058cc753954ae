"""Alembic revision scripts for the audit log."""
