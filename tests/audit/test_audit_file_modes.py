"""The audit log and the outbox, and the files SQLite keeps beside them, are owner-only.

(Issue 9, item 8c.) A database created by SQLite itself is ``0644`` minus the
umask, and its ``-wal``/``-shm`` files take the database's mode: the store
creates the file ``0600`` first.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_log_helpers import make_events

from securemesh.audit.log import open_log
from securemesh.audit.outbox import Outbox
from securemesh.crypto.signing import Ed25519Signer


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(path: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in path.parent.iterdir()
        if p.name.startswith(path.name)
    }


def test_audit_log_files_are_0600(tmp_path: Path, edge_signers: dict[str, Ed25519Signer]) -> None:
    db = tmp_path / "audit.db"
    with open_log(db, signer=Ed25519Signer.from_seed(b"L" * 32)) as log:
        log.register_node("edge-1", edge_signers["edge-1"].verify_key)
        log.append(make_events(edge_signers["edge-1"], "edge-1", 3))
        modes = _modes(db)
    assert {"audit.db", "audit.db-wal", "audit.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


def test_outbox_files_are_0600(tmp_path: Path, edge_signers: dict[str, Ed25519Signer]) -> None:
    path = tmp_path / "audit-outbox.db"
    with Outbox(path) as outbox:
        outbox.put(make_events(edge_signers["edge-1"], "edge-1", 1)[0])
        modes = _modes(path)
    assert {"audit-outbox.db", "audit-outbox.db-wal", "audit-outbox.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)
