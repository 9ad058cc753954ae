"""Alembic environment for the audit log (online mode only).

:func:`securemesh.audit.store.upgrade_schema` passes an open SQLAlchemy
connection in ``config.attributes["connection"]``; the migration runs in it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from securemesh.audit._schema import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):  # pragma: no cover - misuse guard
    raise RuntimeError("run the audit migrations through securemesh.audit.store.upgrade_schema")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="audit_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
