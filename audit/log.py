"""The cloud's append-only audit log: sequencing, signed tree heads and proofs.

Theory of operation
-------------------
:class:`AuditLog` is an RFC 9162 Merkle log stored in SQL (:mod:`._schema`).

**Append.** ``append(events)`` first decodes each signed event strictly,
resolves the verify key its origin and key id name in the registry (a
node may have several: re-enrollment adds keys; unknown origin →
:class:`~securemesh.errors.UnknownOrigin`, a known origin without that key
id → :class:`~securemesh.errors.AuthenticationError`) and hashes the leaf
(``SHA-256(0x00 ‖ entry)``); each chunk of 32 decoded entries has its
origins' Ed25519 signatures checked — in worker processes (:mod:`._sigpool`)
for calls of 64 entries or more, else on a thread pool — while this thread
decodes the next chunk and then sequences the first batch; its commit
waits for the verdict, and any bad signature
(→ :class:`~securemesh.errors.AuthenticationError`) rolls the transaction
back, so nothing unverified is ever committed. Per batch of at most
:data:`MAX_BATCH` entries, one write transaction:

1. take the sequencing lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
   ``SELECT … FOR UPDATE`` on the single sequencer row) and read the tree
   size and compact-range peaks;
2. look up which event ids are already in the log (appends are idempotent:
   a known event id returns its existing index; a duplicate inside the batch
   gets the index of its first copy);
3. give the new entries the contiguous indices ``size, size+1, …``; feed
   their leaf hashes to a :class:`~securemesh.audit.merkle.CompactRange`
   resumed from the stored peaks, which hands back every perfect subtree each
   leaf completes (leaf ``i`` completes ``trailing_ones(i)`` of them);
4. insert the leaves and the completed nodes (level 0 included) with one
   ``executemany`` each,
   sign a checkpoint (C2SP signed note, :mod:`.checkpoint`) of the new
   ``(size, root)`` with the log key, store it in the tree-head history,
   update the sequencer row, commit.

Because the size is read and written under the lock, concurrent appenders —
threads, processes or hosts — can never fork, gap or duplicate the tree; the
``UNIQUE(event_id)`` and ``PRIMARY KEY(idx)`` constraints are a second line of
defence that turns a locking bug into an error instead of a corrupt log.

**Proofs.** Every hash an RFC 9162 proof needs is a perfect subtree node or a
right fold of O(log n) of them (:func:`~securemesh.audit.merkle.inclusion_proof_plan`).
We ask the plan which ``(level, index)`` nodes it needs, fetch them all with
one query, and fold: one indexed query per proof at any size.

**Batching.** :class:`AuditBatcher` is the service front: callers submit
events from any thread and block until their batch commits; a single worker
thread commits up to :data:`MAX_BATCH` entries or whatever arrived within
``max_delay`` seconds, whichever comes first.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from securemesh.audit import _schema as s
from securemesh.audit._entry import Decoded, decode_entry, verify_decoded
from securemesh.audit._registry import load_registry, unknown_key
from securemesh.audit._sigpool import CODE_OTHER_KEY, SignaturePool, shared_pool
from securemesh.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from securemesh.audit.events import event_key_id
from securemesh.audit.merkle import (
    HASH_SIZE,
    CompactRange,
    NodeId,
    consistency_proof_plan,
    hash_plan,
    inclusion_proof_plan,
    leaf_hash,
    verify_inclusion,
)
from securemesh.audit.store import (
    check_schema,
    create_audit_engine,
    describe_url,
    is_sqlite,
    read_transaction,
    upgrade_schema,
    write_transaction,
)
from securemesh.crypto.signing import VERIFY_KEY_SIZE, Signer
from securemesh.errors import (
    AuthenticationError,
    LocalError,
    RemoteError,
    UnknownOrigin,
)

__all__ = [
    "DEFAULT_LOG_ORIGIN",
    "MAX_BATCH",
    "AppendOutcome",
    "AuditBatcher",
    "AuditLog",
    "KeyResolver",
    "TreeHead",
    "open_log",
]

_VERIFY_CHUNK: Final = 32
_SQL_INSERT_LEAVES: Final = (
    "INSERT INTO audit_leaves (idx, event_id, entry, leaf_hash, origin, kind, subject_type, "
    "subject_id, outcome, time_ms, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_INSERT_NODES: Final = "INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (?, ?, ?)"
_SQL_SELECT_NODES: Final = "SELECT level, idx, hash FROM audit_tree_nodes WHERE "
_SQL_NODE_TERM: Final = "(level = ? AND idx = ?)"

MAX_BATCH: Final = 256
"""Most entries sequenced in one transaction (and covered by one checkpoint)."""

DEFAULT_LOG_ORIGIN: Final = "securemesh.audit/log"
"""Default checkpoint origin line and signed-note key name of the cloud log."""

KeyResolver = Callable[[str, bytes], bytes]
"""``key_resolver(origin_node_id, key_id) -> 32-byte Ed25519 verify key``.

Raises UnknownOrigin (no key for the node) or AuthenticationError (none with
that key id), as :meth:`AuditLog.registered_key` does.

``key_id`` is the 8-byte key id an entry carries (:func:`~.events.event_key_id`).
"""


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A stored, signed tree head: ``note`` is the C2SP signed checkpoint."""

    size: int
    root: bytes
    note: bytes
    time_ms: int


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """Per-event result of :meth:`AuditLog.append_entries`: an index or a rejection."""

    event_id: str | None
    index: int | None
    error: RemoteError | None

    @property
    def accepted(self) -> bool:
        return self.index is not None


def _now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


def _tree_head(row: Row[Any]) -> TreeHead:
    """A ``tree_heads`` row as a TreeHead."""
    return TreeHead(int(row.size), bytes(row.root), bytes(row.note), int(row.time_ms))


class AuditLog:
    """The cloud audit log over one SQL database (SQLite file or PostgreSQL URL).

    ``signer`` is the log key (Ed25519) that signs checkpoints; it is needed to
    append, not to read. ``key_resolver`` maps an origin node id and an entry's
    key id to that node's Ed25519 verify key; by default the log's own
    registry, a key history per node (:meth:`register_node`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: Signer | None = None,
        origin: str = DEFAULT_LOG_ORIGIN,
        key_name: str | None = None,
        key_resolver: KeyResolver | None = None,
        clock: Callable[[], float] = time.time,
        max_batch: int = MAX_BATCH,
        verify_threads: int = 2,
        verify_processes: bool | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise LocalError(f"max_batch must be in 1..{MAX_BATCH}")
        self._engine = engine
        self._sqlite = is_sqlite(engine)
        self._signer = signer
        self.origin = origin
        self.key_name = key_name if key_name is not None else origin
        self._resolver: KeyResolver = (
            key_resolver if key_resolver is not None else self.registered_key
        )
        self._clock = clock
        self._max_batch = max_batch
        self._key_cache: dict[tuple[str, bytes], bytes] = {}
        self._verify_threads = max(1, verify_threads)
        # Large appends check signatures in worker processes (see ._sigpool);
        # by default when there is more than one core.
        self._verify_processes = (
            (os.cpu_count() or 1) > 1 if verify_processes is None else verify_processes
        )
        self._executor: ThreadPoolExecutor | None = None
        # Driver-level executemany (no per-row SQLAlchemy parameter processing).
        mark = "?" if self._sqlite else "%s"
        self._mark = mark
        self._sql_leaves = _SQL_INSERT_LEAVES.replace("?", mark)
        self._sql_nodes = _SQL_INSERT_NODES.replace("?", mark)
        self._sql_known = "SELECT event_id, idx FROM audit_leaves WHERE event_id IN ("

    # ------------------------------------------------------------ lifecycle

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def log_verify_key(self) -> bytes:
        if self._signer is None:
            raise LocalError("this AuditLog was opened without the log key")
        return self._signer.verify_key

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self._engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------- origin registry

    def register_node(self, node_id: str, verify_key: bytes, *, now: float | None = None) -> bool:
        """Add an Ed25519 verify key to ``node_id``'s key history (done at enrollment).

        Idempotent: True if the key was added, False if it was already
        registered for the node. Keys are never replaced or removed, so a node
        that re-enrolls with new keys keeps its older entries verifiable. A
        key whose key id equals that of a *different* key already registered
        for the node is refused (LocalError): entries name their key by key id.
        """
        vk = bytes(verify_key)
        if len(vk) != VERIFY_KEY_SIZE:
            raise LocalError(f"a verify key is {VERIFY_KEY_SIZE} bytes")
        if not node_id or len(node_id) > 128:
            raise LocalError("node id must be 1..128 characters")
        t = _now_ms(self._clock) if now is None else int(now * 1000)
        kid = event_key_id(vk)
        try:
            with write_transaction(self._engine) as conn:
                have = conn.execute(
                    select(s.origins.c.verify_key).where(s.origins.c.node_id == node_id)
                ).all()
                for (old,) in have:
                    if bytes(old) == vk:
                        return False
                    if event_key_id(bytes(old)) == kid:
                        raise LocalError(
                            f"{node_id!r} already has a different key with key id {kid.hex()}"
                        )
                conn.execute(
                    insert(s.origins).values(node_id=node_id, verify_key=vk, registered_ms=t)
                )
        except IntegrityError:  # another writer registered the same key meanwhile
            if vk in self.registered_keys(node_id).values():
                return False
            raise
        return True

    def registered_key(self, node_id: str, key_id: bytes) -> bytes:
        """The registry's key resolver: ``node_id``'s verify key with ``key_id``.

        Raises UnknownOrigin if the node has no registered key, and
        AuthenticationError (:class:`~._registry.UnregisteredKey`) if none of
        its keys has that id.
        Found keys are cached per ``(node id, key id)`` (registered keys never
        change); a miss asks the database again, so a key registered since —
        by this process or another — is found.
        """
        cached = self._key_cache.get((node_id, key_id))
        if cached is not None:
            return cached
        keys = self.registered_keys(node_id)
        for kid, vk in keys.items():
            self._key_cache[(node_id, kid)] = vk
        found = keys.get(bytes(key_id))
        if found is None:
            if not keys:
                raise UnknownOrigin(f"origin {node_id!r} is not a registered node")
            raise unknown_key(node_id, bytes(key_id))
        return found

    def registered_keys(self, node_id: str) -> dict[bytes, bytes]:
        """``node_id``'s registered keys, ``{key id: verify key}``, oldest first (maybe empty)."""
        with read_transaction(self._engine) as conn:
            rows = conn.execute(
                select(s.origins.c.verify_key)
                .where(s.origins.c.node_id == node_id)
                .order_by(s.origins.c.registered_ms, s.origins.c.verify_key)
            ).all()
        return {event_key_id(bytes(r[0])): bytes(r[0]) for r in rows}

    def registered_nodes(self) -> dict[str, list[bytes]]:
        """Every registered node id with its verify keys, oldest first."""
        with read_transaction(self._engine) as conn:
            registry = load_registry(conn)
        return {node: list(keys.values()) for node, keys in registry.items()}

    # ----------------------------------------------------------------- append

    def check_entry(self, entry: bytes) -> Decoded:
        """Decode ``entry`` and verify its origin signature; return the decoded event.

        Raises :class:`~securemesh.errors.RemoteError` subclasses: DecodeError,
        UnknownOrigin, AuthenticationError.
        """
        decoded = decode_entry(entry)
        verify_decoded(decoded, self._resolver(decoded.origin, decoded.signed.key_id))
        return decoded

    def append(self, signed_events: Sequence[object]) -> list[int]:
        """Append signed events (``SignedEvent`` or their bytes); return their leaf indices.

        All-or-nothing on validation: if any event fails its checks, the error
        is raised and nothing from this call is appended. Re-appending an event
        already in the log returns its existing index.
        """
        checked, wait = self._prepare([_entry_bytes(e) for e in signed_events])
        try:
            for _, err in checked:
                if err is not None:
                    raise err

            def gate() -> None:
                failures = wait()
                if failures:
                    raise failures[0][1]

            decoded = [d for d, _ in checked if d is not None]
            if not decoded:
                gate()
            return self._sequence(decoded, gate=gate)
        finally:
            wait()  # (idempotent) the started checks end before this call does

    def append_entries(self, entries: Sequence[bytes]) -> list[AppendOutcome]:
        """Append what verifies, reject the rest individually (the ingestion path).

        A rejected event that decoded carries its (unverified) event id so the
        edge can drop it from its outbox. Sequencing runs optimistically while
        the signatures are checked; if any fails, the transaction is rolled
        back and the batch sequenced again without it.
        """
        checked, wait = self._prepare([bytes(e) for e in entries])
        failures: list[tuple[int, RemoteError]] | None = None

        def gate() -> None:
            nonlocal failures
            failures = wait()
            if failures:
                raise _RollBack

        good = [d for d, err in checked if err is None and d is not None]
        indices: list[int] = []
        try:
            with contextlib.suppress(_RollBack):  # a forged event: sequence again without it
                indices = self._sequence(good, gate=gate)
        finally:
            if failures is None:
                failures = wait()
        if failures:
            for i, failure in failures:
                checked[i] = (checked[i][0], failure)
            good = [d for d, err in checked if err is None and d is not None]
            indices = self._sequence(good)
        it = iter(indices)
        out: list[AppendOutcome] = []
        for d, err in checked:
            if err is not None:
                out.append(AppendOutcome(None if d is None else d.event_id, None, err))
            elif d is not None:
                out.append(AppendOutcome(d.event_id, next(it), None))
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._verify_threads, thread_name_prefix="audit-verify"
            )
        return self._executor

    def _prepare(
        self, entries: Sequence[bytes]
    ) -> tuple[
        list[tuple[Decoded | None, RemoteError | None]],
        Callable[[], list[tuple[int, RemoteError]]],
    ]:
        """Decode every entry and resolve its origin's key (this thread); check signatures.

        Signature checks start as soon as each chunk of :data:`_VERIFY_CHUNK`
        entries is decoded, on the thread pool (libsodium, through pynacl/cffi,
        releases the GIL), so the pool's threads use the other core while this
        thread decodes the rest and then sequences the batch (everything but
        the commit, which waits for the verdict). Returns the decoded entries
        (or their decode/origin errors) and a waiter for the signature failures.
        """
        results: list[tuple[Decoded | None, RemoteError | None]] = []
        procs: SignaturePool | None = None
        if self._verify_processes and len(entries) >= 2 * _VERIFY_CHUNK:
            procs = shared_pool()
            if not procs.try_acquire():
                procs = None  # busy with another append (or unavailable): threads
        pooled = procs is None and self._verify_threads > 1 and len(entries) > _VERIFY_CHUNK
        futures: list[Future[list[tuple[int, RemoteError]]]] = []
        sent: list[tuple[int | None, list[tuple[int, Decoded, bytes]]]] = []
        todo: list[tuple[int, Decoded, bytes]] = []
        resolve = self._resolver
        try:
            for i, entry in enumerate(entries):
                try:
                    d = decode_entry(entry)
                except RemoteError as exc:
                    results.append((None, exc))
                    continue
                try:
                    vk = resolve(d.origin, d.signed.key_id)
                except RemoteError as exc:
                    results.append((d, exc))
                    continue
                results.append((d, None))
                todo.append((i, d, vk))
                if len(todo) == _VERIFY_CHUNK:
                    if procs is not None and all(len(k) == VERIFY_KEY_SIZE for _, _, k in todo):
                        sent.append((procs.send([(j, x.entry, k) for j, x, k in todo]), todo))
                        todo = []
                    elif pooled:
                        futures.append(self._pool().submit(_verify_chunk, todo))
                        todo = []
            done = _verify_chunk(todo) if todo else []  # the tail, here
        except BaseException:
            if procs is not None:
                _drain(procs, sent)
            raise
        outcome: list[list[tuple[int, RemoteError]]] = []

        def wait() -> list[tuple[int, RemoteError]]:
            if not outcome:  # once: later calls return the same verdict
                got = _drain(procs, sent) if procs is not None else []
                got += [f for fut in futures for f in fut.result()]
                outcome.append(got + done)
            return outcome[0]

        return results, wait

    def _check_all(
        self, entries: Sequence[bytes]
    ) -> list[tuple[Decoded | None, RemoteError | None]]:
        """Decode and verify every entry (no sequencing)."""
        results, wait = self._prepare(entries)
        for i, err in wait():
            results[i] = (results[i][0], err)
        return results

    def _sequence(
        self, decoded: Sequence[Decoded], *, gate: Callable[[], None] | None = None
    ) -> list[int]:
        """Sequence in batches; ``gate()`` runs before the first commit and may veto it."""
        out: list[int] = []
        for start in range(0, len(decoded), self._max_batch):
            batch = decoded[start : start + self._max_batch]
            out.extend(self._sequence_batch(batch, gate=gate if start == 0 else None))
        return out

    def _lock_sequencer(self, conn: Connection) -> tuple[int, bytes, bytes]:
        q = select(s.sequencer.c.size, s.sequencer.c.root, s.sequencer.c.frontier).where(
            s.sequencer.c.id == s.SEQUENCER_ROW_ID
        )
        if not self._sqlite:
            q = q.with_for_update()
        row = conn.execute(q).one()
        return int(row.size), bytes(row.root), bytes(row.frontier)

    def _sequence_batch(
        self, batch: Sequence[Decoded], *, gate: Callable[[], None] | None = None
    ) -> list[int]:
        if not batch:
            if gate is not None:
                gate()
            return []
        if self._signer is None:
            raise LocalError("appending needs the log key (open the log with a signer)")
        values = [d.row_values() for d in batch]  # (event_id, entry, leaf_hash, …)
        ids = tuple(dict.fromkeys(v[0] for v in values))
        with write_transaction(self._engine) as conn:
            size, _root, frontier = self._lock_sequencer(conn)
            known: dict[str, int] = {
                str(eid): int(idx)
                for eid, idx in conn.exec_driver_sql(
                    self._sql_known + ",".join([self._mark] * len(ids)) + ")", ids
                )
            }
            cr = CompactRange.from_peaks(
                size, [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
            )
            leaf_rows: list[tuple[object, ...]] = []
            node_rows: list[tuple[int, int, bytes]] = []
            result: list[int] = []
            append_into = cr.append_into
            for v in values:
                idx = known.get(v[0])
                if idx is None:
                    idx = cr.size
                    known[v[0]] = idx
                    append_into(v[2], node_rows)
                    leaf_rows.append((idx, *v))
                result.append(idx)
            if leaf_rows:
                new_root = cr.root()
                now = _now_ms(self._clock)
                note = sign_checkpoint(
                    Checkpoint(self.origin, cr.size, new_root),
                    key_name=self.key_name,
                    signer=self._signer,
                )
                conn.exec_driver_sql(self._sql_leaves, leaf_rows)
                conn.exec_driver_sql(self._sql_nodes, node_rows)
                conn.execute(
                    insert(s.tree_heads).values(size=cr.size, root=new_root, note=note, time_ms=now)
                )
                conn.execute(
                    update(s.sequencer)
                    .where(s.sequencer.c.id == s.SEQUENCER_ROW_ID)
                    .values(size=cr.size, root=new_root, frontier=b"".join(cr.peaks))
                )
            if gate is not None:
                gate()  # raising here rolls the whole batch back
        return result

    # ------------------------------------------------------------------ reads

    def size(self) -> int:
        with read_transaction(self._engine) as conn:
            return int(
                conn.execute(
                    select(s.sequencer.c.size).where(s.sequencer.c.id == s.SEQUENCER_ROW_ID)
                ).scalar_one()
            )

    def get_entry(self, index: int) -> bytes:
        """The exact signed-event bytes of leaf ``index``."""
        return self._leaf_column(s.leaves.c.entry, index)

    def _leaf_column(self, column: ColumnElement[Any], index: int) -> bytes:
        """One bytes column of leaf ``index``; LocalError if there is no such leaf."""
        with read_transaction(self._engine) as conn:
            value = conn.execute(select(column).where(s.leaves.c.idx == index)).scalar_one_or_none()
        if value is None:
            raise LocalError(f"no leaf {index} in the log")
        return bytes(value)

    def index_of(self, event_id: str) -> int | None:
        with read_transaction(self._engine) as conn:
            idx = conn.execute(
                select(s.leaves.c.idx).where(s.leaves.c.event_id == event_id)
            ).scalar_one_or_none()
        return None if idx is None else int(idx)

    def latest_tree_head(self) -> TreeHead | None:
        with read_transaction(self._engine) as conn:
            row = conn.execute(
                select(s.tree_heads).order_by(s.tree_heads.c.size.desc()).limit(1)
            ).one_or_none()
        if row is None:
            return None
        return _tree_head(row)

    def latest_checkpoint(self) -> bytes | None:
        """The latest signed checkpoint note (C2SP signed note), or None for an empty log."""
        head = self.latest_tree_head()
        return None if head is None else head.note

    def tree_head(self, size: int) -> TreeHead:
        with read_transaction(self._engine) as conn:
            row = conn.execute(
                select(s.tree_heads).where(s.tree_heads.c.size == size)
            ).one_or_none()
        if row is None:
            raise LocalError(f"no signed tree head of size {size}")
        return _tree_head(row)

    def tree_heads(self) -> Iterator[TreeHead]:
        with read_transaction(self._engine) as conn:
            for row in conn.execute(select(s.tree_heads).order_by(s.tree_heads.c.size)):
                yield _tree_head(row)

    def open_checkpoint(self, note: bytes, verify_key: bytes | None = None) -> Checkpoint:
        """Verify a checkpoint note against the log key (ours unless given)."""
        vk = self.log_verify_key if verify_key is None else verify_key
        return open_checkpoint(note, key_name=self.key_name, verify_key=vk, origin=self.origin)

    def _fetch_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored node hashes for ``(level, index)`` keys: one query, one PK probe each.

        Runs on a raw DB-API connection (a single autocommit SELECT on SQLite):
        at ~20 nodes per proof, SQLAlchemy statement compilation and an explicit
        BEGIN/ROLLBACK would cost more than the lookups. (A row-value
        ``(level, idx) IN (…)`` is not planned as index lookups by SQLite.)
        """
        got: dict[tuple[int, int], bytes] = {}
        if not keys:
            return got
        sql = _SQL_SELECT_NODES + " OR ".join([_SQL_NODE_TERM] * len(keys))
        if not self._sqlite:
            sql = sql.replace("?", "%s")
        params = [x for key in keys for x in key]
        raw = self._engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, params)
            for level, idx, h in cur.fetchall():
                got[(int(level), int(idx))] = bytes(h)
            cur.close()
        finally:
            raw.close()
        return got

    def _proof_from_plan(self, plan: list[list[NodeId]], tree_size: int) -> list[bytes]:
        got = self._fetch_nodes(sorted({(n.level, n.index) for group in plan for n in group}))

        def get_node(level: int, index: int) -> bytes:
            try:
                return got[(level, index)]
            except KeyError:
                raise LocalError(
                    f"tree node ({level}, {index}) is not in the log "
                    f"(is the tree size {tree_size} larger than the log?)"
                ) from None

        return hash_plan(plan, get_node)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 audit path for leaf ``index`` in the tree of ``tree_size``.

        ``tree_size`` defaults to the current size. One indexed query.
        """
        n = self.size() if tree_size is None else tree_size
        return self._proof_from_plan(inclusion_proof_plan(index, n), n)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof between two tree sizes."""
        n = self.size() if new_size is None else new_size
        return self._proof_from_plan(consistency_proof_plan(old_size, n), n)

    def leaf_hash(self, index: int) -> bytes:
        return self._leaf_column(s.leaves.c.leaf_hash, index)

    def prove_entry(self, index: int) -> tuple[bytes, TreeHead, list[bytes]]:
        """Entry bytes, the latest signed tree head and the inclusion proof against it.

        The proof is checked here before it is handed out (verifier returns or raises).
        """
        head = self.latest_tree_head()
        if head is None or index >= head.size:
            raise LocalError(f"leaf {index} is not covered by a signed tree head")
        entry = self.get_entry(index)
        proof = self.inclusion_proof(index, head.size)
        verify_inclusion(leaf_hash(entry), index, head.size, proof, head.root)
        return entry, head, proof

    def count_rows(self) -> int:
        with read_transaction(self._engine) as conn:
            return int(conn.execute(select(func.count()).select_from(s.leaves)).scalar_one())


class _RollBack(Exception):
    """Internal: a signature failed after optimistic sequencing; undo the batch."""


def _verify_chunk(items: list[tuple[int, Decoded, bytes]]) -> list[tuple[int, RemoteError]]:
    """Check origin signatures; return the failures as ``(position, error)``."""
    bad: list[tuple[int, RemoteError]] = []
    for i, d, vk in items:
        try:
            verify_decoded(d, vk)
        except RemoteError as exc:
            bad.append((i, exc))
            continue
        d.row_values()  # the query projection, computed here while other threads verify
    return bad


def _drain(
    pool: SignaturePool, sent: list[tuple[int | None, list[tuple[int, Decoded, bytes]]]]
) -> list[tuple[int, RemoteError]]:
    """Collect the worker processes' verdicts on ``sent`` chunks, then free the pool.

    A chunk whose worker is gone (or never got it) is checked here instead.
    """
    bad: list[tuple[int, RemoteError]] = []
    try:
        for worker, items in sent:
            got = pool.receive(worker) if worker is not None and pool.usable else None
            if got is None:
                bad.extend(_verify_chunk(items))
                continue
            for pos, code in got:
                bad.append(
                    (
                        pos,
                        AuthenticationError(
                            "event was signed by a different key"
                            if code == CODE_OTHER_KEY
                            else "signature does not verify"
                        ),
                    )
                )
    finally:
        sent.clear()
        pool.release()
    return bad


def _entry_bytes(e: object) -> bytes:
    if isinstance(e, bytes | bytearray | memoryview):
        return bytes(e)
    to_bytes = getattr(e, "to_bytes", None)
    if to_bytes is None:
        raise LocalError(f"cannot append {type(e).__name__}: expected SignedEvent or bytes")
    out = to_bytes()
    if not isinstance(out, bytes):
        raise LocalError("SignedEvent.to_bytes() did not return bytes")
    return out


def open_log(
    url: str,
    *,
    signer: Signer | None = None,
    origin: str = DEFAULT_LOG_ORIGIN,
    key_name: str | None = None,
    key_resolver: KeyResolver | None = None,
    clock: Callable[[], float] = time.time,
    synchronous: str = "FULL",
    migrate: bool = True,
    read_only: bool = False,
) -> AuditLog:
    """Open (and by default migrate to ``head``) the audit log at ``url``.

    ``url`` is a SQLite file path / ``sqlite:///`` URL or a PostgreSQL URL.
    ``read_only`` opens an existing log for reading only: nothing is created
    or migrated, and a missing or foreign database is a ConfigError
    (:func:`~securemesh.audit.store.check_schema`).
    """
    engine = create_audit_engine(url, synchronous=synchronous, read_only=read_only)
    if read_only:
        try:
            check_schema(engine, describe_url(url))
        except BaseException:
            engine.dispose()
            raise
    elif migrate:
        upgrade_schema(engine)
    return AuditLog(
        engine,
        signer=signer,
        origin=origin,
        key_name=key_name,
        key_resolver=key_resolver,
        clock=clock,
    )


# ------------------------------------------------------------------ batching


class AuditBatcher:
    """Collects appends from many threads and commits them together.

    ``submit(entry)`` returns a :class:`~concurrent.futures.Future` resolving to
    an :class:`AppendOutcome`; ``append(entries)`` submits and waits. A batch is
    committed when :data:`MAX_BATCH` entries are waiting or ``max_delay``
    seconds after its first entry arrived.
    """

    def __init__(self, log: AuditLog, *, max_delay: float = 0.25, max_batch: int = MAX_BATCH):
        self._log = log
        self._max_delay = max_delay
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, Future[AppendOutcome]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-batcher", daemon=True)
        self._thread.start()

    def submit(self, entry: bytes) -> Future[AppendOutcome]:
        fut: Future[AppendOutcome] = Future()
        with self._cond:
            if self._closed:
                raise LocalError("the batcher is closed")
            self._queue.append((bytes(entry), fut))
            self._cond.notify()
        return fut

    def append(self, entries: Sequence[bytes]) -> list[AppendOutcome]:
        futs = [self.submit(e) for e in entries]
        return [f.result() for f in futs]

    def _take(self) -> list[tuple[bytes, Future[AppendOutcome]]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self._max_delay
            while len(self._queue) < self._max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                outcomes = self._log.append_entries([e for e, _ in batch])
            except BaseException as exc:  # hand the failure to every waiter
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                fut.set_result(outcome)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
