"""Alembic migrations for the audit log's schema, shipped as package data.

They are run in code by :func:`securemesh.audit.store.upgrade_schema`
(``alembic.command.upgrade(config, "head")`` with ``script_location`` pointing
here); no ``alembic.ini`` is needed.
"""
