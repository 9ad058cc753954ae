"""Origin registry becomes a key history: one row per (node id, verify key).

Revision ID: a0002
Revises: a0001
Create Date: 2026-11-25

``audit_origins`` had the node id as its primary key (one key per node,
replaced on re-registration). A node that re-enrolls with new keys must keep
its old key registered, or its older entries stop verifying. The primary key
becomes ``(node_id, verify_key)``; every existing row is kept. SQLite cannot
change a primary key in place, so (on both backends, the same way) the rows
are copied into a new table that then takes the old name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision: str | None = "a0001"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = "node_id, verify_key, registered_ms"


def _create(name: str, pk: sa.PrimaryKeyConstraint) -> None:
    op.create_table(
        name,
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("verify_key", sa.LargeBinary(32), nullable=False),
        sa.Column("registered_ms", sa.BigInteger, nullable=False),
        pk,
    )


def upgrade() -> None:
    _create(
        "audit_origins_new",
        sa.PrimaryKeyConstraint("node_id", "verify_key", name="pk_audit_origins_keys"),
    )
    op.execute(
        f"INSERT INTO audit_origins_new ({_COLUMNS}) SELECT {_COLUMNS} FROM audit_origins"  # noqa: S608 - constants
    )
    op.drop_table("audit_origins")
    op.rename_table("audit_origins_new", "audit_origins")


def downgrade() -> None:
    """Back to one key per node: the most recently registered key of each node is kept."""
    _create("audit_origins_old", sa.PrimaryKeyConstraint("node_id"))
    op.execute(
        f"INSERT INTO audit_origins_old ({_COLUMNS}) "  # noqa: S608 - constants
        f"SELECT {_COLUMNS} FROM audit_origins o WHERE NOT EXISTS ("
        "SELECT 1 FROM audit_origins n WHERE n.node_id = o.node_id AND "
        "(n.registered_ms > o.registered_ms OR "
        "(n.registered_ms = o.registered_ms AND n.verify_key > o.verify_key)))"
    )
    op.drop_table("audit_origins")
    op.rename_table("audit_origins_old", "audit_origins")
