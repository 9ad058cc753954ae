"""Initial audit log schema: leaves, tree nodes, tree heads, sequencer, origins.

Revision ID: a0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# RFC 9162 §2.1.1: the hash of an empty list is the hash of an empty string.
_EMPTY_ROOT = hashlib.sha256(b"").digest()


def upgrade() -> None:
    op.create_table(
        "audit_leaves",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("origin", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_leaves_origin_time", "audit_leaves", ["origin", "time_ms"])
    op.create_index("ix_audit_leaves_kind_time", "audit_leaves", ["kind", "time_ms"])
    op.create_index("ix_audit_leaves_subject", "audit_leaves", ["subject_type", "subject_id"])
    op.create_index("ix_audit_leaves_time", "audit_leaves", ["time_ms"])
    op.create_table(
        "audit_tree_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_tree_heads",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
    )
    sequencer = op.create_table(
        "audit_sequencer",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
    )
    op.bulk_insert(sequencer, [{"id": 1, "size": 0, "root": _EMPTY_ROOT, "frontier": b""}])
    op.create_table(
        "audit_origins",
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("verify_key", sa.LargeBinary(32), nullable=False),
        sa.Column("registered_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in (
        "audit_origins",
        "audit_sequencer",
        "audit_tree_heads",
        "audit_tree_nodes",
        "audit_leaves",
    ):
        op.drop_table(name)
