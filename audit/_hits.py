"""Checking query hits against the signed log before they are shown (private; :mod:`.query`).

The query-index columns of ``audit_leaves`` are a projection that anyone with
write access to the database can edit. A row found through them is shown
only after :class:`HitChecker` has established, within the same read
transaction, that

1. the stored entry decodes strictly and the row's index columns say what the
   entry says (so a forged ``kind``/``origin``/``subject``/… never reaches the
   output; an event *hidden* by an edited column is not found by a query at
   all — ``audit verify`` names it);
2. the entry's origin signature verifies under the registered key its key id
   names (the origin registry, as ``audit show`` and ``audit verify`` use it);
3. SHA-256(0x00 ‖ entry) is leaf ``idx`` of the latest tree head (RFC 9162
   §2.1.3 inclusion proof from the stored subtree hashes, verified by
   §2.1.3.2). With the log's public key the head is first checked as a C2SP
   signed checkpoint, so the answer is bound to what the log signed;
   without it the check is against the stored head (consistency of the
   database, not a proof against its operator).

Any failure raises :class:`~securemesh.errors.LogIntegrityError` naming the
entry: a query never prints a row it could not check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.engine import Connection

from securemesh.audit import _schema as s
from securemesh.audit._entry import INDEX_COLUMNS, decode_entry, verify_decoded
from securemesh.audit.checkpoint import open_checkpoint
from securemesh.audit.events import AuditEvent, event_key_id
from securemesh.audit.merkle import inclusion_proof_plan, verify_inclusion
from securemesh.errors import LogIntegrityError, SecureMeshError

__all__ = ["HIT_COLUMNS", "HitChecker"]

HIT_COLUMNS: Final = ("idx", "event_id", "entry", "leaf_hash", *INDEX_COLUMNS)
"""The ``audit_leaves`` columns a hit is read with, in this order."""

_IN_CHUNK: Final = 500


def _fold(peaks: Sequence[bytes]) -> bytes:
    acc = peaks[-1]
    for p in reversed(peaks[:-1]):
        acc = hashlib.sha256(b"\x01" + p + acc).digest()
    return acc


class HitChecker:
    """Checks rows read with :data:`HIT_COLUMNS` on ``conn`` (one read transaction).

    ``log_key`` is ``(key name, Ed25519 verify key)`` of the log (the name is
    also the checkpoint origin), or None to check against the stored head.
    """

    def __init__(self, conn: Connection, *, log_key: tuple[str, bytes] | None) -> None:
        self._conn = conn
        self._keys: dict[tuple[str, bytes], bytes | None] = {}
        head = conn.execute(
            select(s.tree_heads.c.size, s.tree_heads.c.root, s.tree_heads.c.note)
            .order_by(s.tree_heads.c.size.desc())
            .limit(1)
        ).one_or_none()
        self.size = 0
        self.root = b""
        if head is None:
            return
        size, root = int(head[0]), bytes(head[1])
        if log_key is not None:
            name, vk = log_key
            try:
                cp = open_checkpoint(bytes(head[2]), key_name=name, verify_key=vk, origin=name)
            except SecureMeshError as exc:
                raise LogIntegrityError(
                    f"the latest tree head (size {size}) is not signed by the log key: {exc}"
                ) from exc
            if (cp.size, cp.root_hash) != (size, root):
                raise LogIntegrityError(
                    f"the latest tree head (size {size}) does not match its signed checkpoint"
                )
        self.size, self.root = size, root

    def _key(self, origin: str, key_id: bytes) -> bytes | None:
        slot = (origin, key_id)
        if slot not in self._keys:
            found = None
            for (vk,) in self._conn.execute(
                select(s.origins.c.verify_key).where(s.origins.c.node_id == origin)
            ):
                if event_key_id(bytes(vk)) == key_id:
                    found = bytes(vk)
            self._keys[slot] = found
        return self._keys[slot]

    def _fetch(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        got: dict[tuple[int, int], bytes] = {}
        by_level: dict[int, list[int]] = {}
        for level, i in wanted:
            by_level.setdefault(level, []).append(i)
        t = s.tree_nodes.c
        for level, idxs in sorted(by_level.items()):
            idxs.sort()
            for at in range(0, len(idxs), _IN_CHUNK):
                for r in self._conn.execute(
                    select(t.idx, t.hash).where(
                        t.level == level, t.idx.in_(idxs[at : at + _IN_CHUNK])
                    )
                ):
                    got[(level, int(r[0]))] = bytes(r[1])
        return got

    def check(self, rows: Sequence[Sequence[Any]]) -> list[AuditEvent]:
        """The verified event of each row (same order), or LogIntegrityError."""
        events: list[AuditEvent] = []
        hashes: list[tuple[int, bytes]] = []
        for row in rows:
            idx, event_id, entry, stored = int(row[0]), str(row[1]), bytes(row[2]), bytes(row[3])
            events.append(self._check_entry(idx, event_id, entry, tuple(row[4:])))
            h = hashlib.sha256(b"\x00" + entry).digest()
            if h != stored:
                raise _bad(idx, "its stored leaf hash does not match the entry bytes")
            if idx >= self.size:
                raise _bad(idx, "it is not covered by a signed tree head")
            hashes.append((idx, h))
        plans = {i: inclusion_proof_plan(i, self.size) for i, _ in hashes}
        got = self._fetch({(n.level, n.index) for plan in plans.values() for g in plan for n in g})
        for i, h in hashes:
            try:
                proof = [_fold([got[(n.level, n.index)] for n in group]) for group in plans[i]]
                verify_inclusion(h, i, self.size, proof, self.root)
            except (KeyError, SecureMeshError):
                raise _bad(i, f"it is not included in the tree head of size {self.size}") from None
        return events

    def _check_entry(
        self, idx: int, event_id: str, entry: bytes, index: tuple[Any, ...]
    ) -> AuditEvent:
        try:
            decoded = decode_entry(entry)
        except SecureMeshError:
            raise _bad(idx, "its entry does not decode") from None
        values = decoded.row_values()
        if values[0] != event_id:
            raise _bad(idx, "its entry is not the event this row was appended for")
        wrong = [
            n for n, want, got in zip(INDEX_COLUMNS, values[3:], index, strict=True) if want != got
        ]
        if wrong:
            raise _bad(idx, f"its query index does not match the signed entry ({', '.join(wrong)})")
        key_id = decoded.signed.key_id
        vk = self._key(decoded.origin, key_id)
        if vk is None:
            raise _bad(idx, f"its origin {decoded.origin!r} has no registered key {key_id.hex()}")
        try:
            return verify_decoded(decoded, vk)
        except SecureMeshError:
            raise _bad(idx, "its origin signature does not verify") from None


def _bad(idx: int, why: str) -> LogIntegrityError:
    return LogIntegrityError(
        f"audit entry {idx} failed its check ({why}); nothing from it is shown: "
        "run `securemesh audit verify`",
        entries=[idx],
    )
