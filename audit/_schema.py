"""The audit log's tables (SQLAlchemy Core), shared by the store and the migrations.

Theory of operation
-------------------
* ``audit_leaves`` is the log: one row per leaf, ``idx`` is the leaf index
  (RFC 9162 §2.1), ``entry`` the exact signed-event bytes that were hashed,
  ``leaf_hash`` = SHA-256(0x00 ‖ entry). The other columns (origin, kind,
  subject, outcome, time, details) are a *projection* for queries: they are
  derived from ``entry`` at append time and can be rebuilt from it at any time
  (:func:`securemesh.audit.query.rebuild_index`). Nobody trusts them:
  ``verify`` checks every row's columns against its entry, and a query
  checks each hit against its entry and the tree before returning it.
* ``audit_tree_nodes`` holds the hash of every complete (perfect) subtree of
  height ``level`` at position ``idx`` (the leaves ``idx·2^level`` …
  ``(idx+1)·2^level - 1``), level 0 (the leaf hashes) included. Every proof
  node of RFC 9162 §2.1.3/§2.1.4 is either one of these or built from
  O(log n) of them, so a proof costs one indexed query at any size. Keeping
  level 0 here too (not only in ``audit_leaves.leaf_hash``) means a rewritten
  or moved leaf row cannot spoil its neighbours' proofs, which is what lets
  ``verify`` name exactly the tampered entries.
* ``audit_tree_heads`` is the history of signed tree heads: one C2SP signed
  note (checkpoint) per appended batch.
* ``audit_sequencer`` is a single row (``id = 1``) with the current tree size,
  root and compact-range frontier. Writers lock it (``SELECT … FOR UPDATE`` on
  PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) for the whole batch, which is what
  makes concurrent appenders unable to fork, gap or duplicate the tree.
* ``audit_origins`` is the registry of origin nodes' Ed25519 verify keys: a
  key *history*, one row per ``(node_id, verify_key)`` (a node that
  re-enrolls with new keys keeps its old ones, so its older entries still
  verify). Rows are added at enrollment and never replaced or deleted by
  registration. An entry names its key by key id (first 8 bytes of
  SHA-256(verify key)), which the readers derive from ``verify_key``.
  Verifiers trust it (docs/audit.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

__all__ = [
    "metadata",
    "leaves",
    "tree_nodes",
    "tree_heads",
    "sequencer",
    "origins",
    "SEQUENCER_ROW_ID",
]

SEQUENCER_ROW_ID = 1

metadata = MetaData()

leaves = Table(
    "audit_leaves",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("entry", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    # --- query projection (rebuildable from ``entry``) ---
    Column("origin", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject_type", String(32), nullable=False),
    Column("subject_id", String(256), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("details", Text, nullable=False),
    Index("ix_audit_leaves_origin_time", "origin", "time_ms"),
    Index("ix_audit_leaves_kind_time", "kind", "time_ms"),
    Index("ix_audit_leaves_subject", "subject_type", "subject_id"),
    Index("ix_audit_leaves_time", "time_ms"),
)

tree_nodes = Table(
    "audit_tree_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

tree_heads = Table(
    "audit_tree_heads",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", LargeBinary, nullable=False),
    Column("time_ms", BigInteger, nullable=False),
)

sequencer = Table(
    "audit_sequencer",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    # concatenated 32-byte roots of the perfect subtrees covering [0, size),
    # largest first (the RFC 9162 compact range / "frontier")
    Column("frontier", LargeBinary, nullable=False),
)

origins = Table(
    "audit_origins",
    metadata,
    Column("node_id", String(128), nullable=False),
    Column("verify_key", LargeBinary(32), nullable=False),
    Column("registered_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("node_id", "verify_key", name="pk_audit_origins_keys"),
)
