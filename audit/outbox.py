"""The edge's durable audit outbox: write locally first, ship, delete on acknowledgement.

Theory of operation
-------------------
An edge (or any node) records each audit event in a local SQLite file *before*
it does anything else with it; :meth:`Outbox.put` returns only once the row
is committed with ``synchronous=FULL`` in WAL mode, i.e. survives a crash or
power loss. A shipper then repeatedly:

1. takes the oldest pending entries (:meth:`Outbox.pending`),
2. sends them to the cloud (``send_batch(list[bytes]) -> list[(event_id, index)]``,
   any transport — the mesh bus's ``audit.append`` in production
   (:mod:`securemesh.node._audit_bus`, with :func:`ship_once_async`), or the
   standalone :mod:`securemesh.audit.ingest` endpoint),
3. deletes exactly the acknowledged rows (:meth:`Outbox.ack`).

If the cloud is unreachable, or dies after appending but before its reply
arrives, the rows stay and are sent again. Delivery is therefore
*at-least-once*; the cloud's append is idempotent by event id, so each event
is in the log *exactly once*. An acknowledgement with index
:data:`REJECTED` means the cloud refused the event for good (bad signature,
origin not allowed): the row is moved to a ``rejected`` table for an operator
instead of being retried forever.

:data:`DEFERRED` means "not now": the cloud does not know the event's origin,
or not the key it was signed with, *yet* — typically a device that re-enrolled
with new keys whose new certificate has not reached the cloud when its edge
relays the device's first events. The row stays, is not offered again before
``retry_after`` (1 s, doubling to 5 min) and does not hold up newer rows (the
shipper takes the oldest *due* rows); after ``max_deferrals`` deferrals
(default 32, ≈ 2 h) it is moved to ``rejected`` like a refusal.

The outbox uses only the standard library's :mod:`sqlite3` on purpose: edge
and device images should not need SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from securemesh._fileio import enable_wal, private_sqlite_file
from securemesh.audit._entry import entry_of, event_id_of
from securemesh.errors import LocalError, RemoteError

__all__ = [
    "DEFERRED",
    "MAX_ENTRY_SIZE",
    "REJECTED",
    "Ack",
    "AsyncSendBatch",
    "Outbox",
    "PendingEntry",
    "SendBatch",
    "ShipResult",
    "ship_once",
    "ship_once_async",
]

REJECTED: Final = -1
"""Leaf index in an acknowledgement meaning "refused for good, do not resend"."""

DEFERRED: Final = -2
"""Leaf index in an acknowledgement meaning "origin or key not known yet: resend later"."""

DEFER_FIRST_S: Final = 1.0
DEFER_MAX_S: Final = 300.0
MAX_DEFERRALS: Final = 32

MAX_ENTRY_SIZE: Final = 64 * 1024
"""Largest signed event the outbox accepts (the ingestion endpoint's limit too)."""

Ack = tuple[str, int]
"""``(event_id, leaf_index)``; ``REJECTED`` for a permanent refusal, ``DEFERRED`` for "later"."""

SendBatch = Callable[[list[bytes]], list[Ack]]
AsyncSendBatch = Callable[[list[bytes]], Awaitable[list[Ack]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    entry BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    deferrals INTEGER NOT NULL DEFAULT 0,
    retry_after_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rejected (
    event_id TEXT PRIMARY KEY,
    entry BLOB NOT NULL,
    rejected_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shipped (
    event_id TEXT PRIMARY KEY,
    leaf_index INTEGER NOT NULL,
    acked_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class PendingEntry:
    seq: int
    event_id: str
    entry: bytes


@dataclass(frozen=True, slots=True)
class ShipResult:
    sent: int
    acked: int
    rejected: int
    deferred: int = 0


class Outbox:
    """A durable FIFO of signed audit events in one SQLite file.

    ``keep_receipts=True`` keeps ``(event_id, leaf_index)`` of every
    acknowledged event in a ``shipped`` table (tests and operators use it to
    check what the cloud acknowledged).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        keep_receipts: bool = False,
        busy_timeout_s: float = 30.0,
        max_deferrals: int = MAX_DEFERRALS,
    ) -> None:
        self.path = Path(path)
        self._max_deferrals = max_deferrals
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_sqlite_file(self.path)  # 0600, and so the -wal/-shm SQLite creates beside it
        self._clock = clock
        self._keep_receipts = keep_receipts
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        enable_wal(self._db, busy_timeout_s)
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column in ("deferrals", "retry_after_ms"):  # an outbox from before deferrals
            if column not in columns:
                self._db.execute(f"ALTER TABLE outbox ADD {column} INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def put_entry(self, event_id: str, entry: bytes) -> None:
        """Store one signed event durably (idempotent by ``event_id``)."""
        if not event_id or len(event_id) > 64:
            raise LocalError("event id must be 1..64 characters")
        if len(entry) > MAX_ENTRY_SIZE:
            raise LocalError(f"audit entry is larger than {MAX_ENTRY_SIZE} bytes")
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, entry, created_ms) VALUES (?, ?, ?)",
                (event_id, bytes(entry), self._now_ms()),
            )

    def put(self, signed_event: object) -> str:
        """Store a ``SignedEvent`` durably before returning; return its event id."""
        entry = entry_of(signed_event)
        event_id = event_id_of(signed_event)
        self.put_entry(event_id, entry)
        return event_id

    def pending(self, limit: int = 256) -> list[PendingEntry]:
        """The oldest ``limit`` entries not yet acknowledged and due, oldest first.

        Deferred entries are due again at their ``retry_after`` time.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, entry FROM outbox WHERE retry_after_ms <= ? "
                "ORDER BY seq LIMIT ?",
                (self._now_ms(), int(limit)),
            ).fetchall()
        return [PendingEntry(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def pending_count(self) -> int:
        """Entries not yet acknowledged (deferred ones included)."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def deferred_count(self) -> int:
        """Entries the cloud deferred at least once and that still wait."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE deferrals > 0").fetchone()
        return int(n)

    def _defer(self, event_id: str, now: int) -> bool:
        """Push ``event_id`` back (True), or give up on it: moved to ``rejected`` (False)."""
        row = self._db.execute(
            "SELECT deferrals FROM outbox WHERE event_id = ?", (event_id,)
        ).fetchone()
        if row is None:
            return True
        deferrals = int(row[0]) + 1
        if deferrals > self._max_deferrals:
            return False
        wait = min(DEFER_MAX_S, DEFER_FIRST_S * 2 ** (deferrals - 1))
        self._db.execute(
            "UPDATE outbox SET deferrals = ?, retry_after_ms = ? WHERE event_id = ?",
            (deferrals, now + int(wait * 1000), event_id),
        )
        return True

    def ack(self, acks: Iterable[Ack]) -> int:
        """Delete acknowledged rows (only those named); return how many were removed.

        An ack with index :data:`REJECTED` moves the row to the ``rejected``
        table; :data:`DEFERRED` keeps it for later (see the module docstring),
        or moves it to ``rejected`` once it was deferred too often.
        """
        removed = 0
        now = self._now_ms()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event_id, index in acks:
                    if index == DEFERRED and self._defer(event_id, now):
                        continue
                    if index in (REJECTED, DEFERRED):
                        self._db.execute(
                            "INSERT OR REPLACE INTO rejected (event_id, entry, rejected_ms) "
                            "SELECT event_id, entry, ? FROM outbox WHERE event_id = ?",
                            (now, event_id),
                        )
                    elif index < 0:
                        raise LocalError(f"bad leaf index {index} in an acknowledgement")
                    cur = self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))
                    removed += cur.rowcount
                    if cur.rowcount and index >= 0 and self._keep_receipts:
                        self._db.execute(
                            "INSERT OR REPLACE INTO shipped (event_id, leaf_index, acked_ms) "
                            "VALUES (?, ?, ?)",
                            (event_id, int(index), now),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return removed

    def receipts(self) -> dict[str, int]:
        """``event_id -> leaf_index`` of acknowledged events (``keep_receipts=True``)."""
        with self._lock:
            rows = self._db.execute("SELECT event_id, leaf_index FROM shipped").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def rejected(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT event_id FROM rejected ORDER BY event_id").fetchall()
        return [str(r[0]) for r in rows]


def _batch(outbox: Outbox, limit: int, max_bytes: int | None) -> list[PendingEntry]:
    batch = outbox.pending(limit)
    if max_bytes is not None:
        total = 0
        for n, p in enumerate(batch):
            total += len(p.entry)
            if total > max_bytes and n > 0:
                return batch[:n]
    return batch


def _apply_acks(outbox: Outbox, batch: list[PendingEntry], acks: object) -> ShipResult:
    """Delete the acknowledged rows of ``batch``; ignore acks for ids not in it."""
    if not isinstance(acks, list):
        raise RemoteError("malformed acknowledgement")
    sent_ids = {p.event_id for p in batch}
    valid: list[Ack] = []
    for ack in acks:
        if not (isinstance(ack, tuple) and len(ack) == 2):
            raise RemoteError("malformed acknowledgement")
        event_id, index = ack
        if not isinstance(event_id, str) or not isinstance(index, int):
            raise RemoteError("malformed acknowledgement")
        if event_id in sent_ids:
            valid.append((event_id, index))
    rejected = sum(1 for _, i in valid if i == REJECTED)
    deferred = sum(1 for _, i in valid if i == DEFERRED)
    outbox.ack(valid)
    return ShipResult(len(batch), len(valid) - rejected - deferred, rejected, deferred)


def ship_once(
    outbox: Outbox, send_batch: SendBatch, *, limit: int = 256, max_bytes: int | None = None
) -> ShipResult:
    """Send up to ``limit`` pending entries once and delete those acknowledged.

    ``max_bytes`` bounds the batch's total entry size (at least one entry is
    sent). Acknowledgements for event ids that were not in this batch are
    ignored (a confused or malicious peer cannot make us drop other events).
    Transport errors propagate; nothing is deleted then.
    """
    batch = _batch(outbox, limit, max_bytes)
    if not batch:
        return ShipResult(0, 0, 0)
    return _apply_acks(outbox, batch, send_batch([p.entry for p in batch]))


async def ship_once_async(
    outbox: Outbox, send_batch: AsyncSendBatch, *, limit: int = 256, max_bytes: int | None = None
) -> ShipResult:
    """:func:`ship_once` with an ``async`` sender (the mesh bus: ``node.request``)."""
    batch = _batch(outbox, limit, max_bytes)
    if not batch:
        return ShipResult(0, 0, 0)
    return _apply_acks(outbox, batch, await send_batch([p.entry for p in batch]))
