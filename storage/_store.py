"""An edge's shard store: content-addressed blobs on disk, metadata in SQLAlchemy.

Layout under ``root`` (mode 0700)::

    blobs/ab/<sha256 hex>     one shard per file, mode 0600, named by its SHA-256
    tmp/                      writes in progress (swept by gc())
    shards.db                 SQLite metadata, WAL, 0600 (or a PostgreSQL URL given)

A shard is written to ``tmp/`` (O_EXCL, 0600) and fsynced outside the
store's lock; under the lock it is renamed into place and recorded in one
transaction, and the directory is fsynced after the commit, before the put
returns. A crash leaves at worst an unrecorded file, or a row whose file did
not survive (the put was not acknowledged), both of which
:meth:`ShardStore.gc` removes. A
shard whose bytes do not hash to the address it is offered under is refused
(:class:`ShardCorrupt`) before anything is written; on read the bytes are
hashed again, so a blob damaged on disk is reported, not served.

Bounds: ``quota_bytes`` over all shards and manifests, ``owner_quota_bytes``
per owner (the node id that stored them), ``max_shards_per_owner`` and
``max_manifests_per_owner`` (so tiny shards cannot grow the tables without
bound inside a byte quota).
Every reference records its owner; a shard is deleted when its last
reference is.

The store is synchronous and thread-safe (one lock); the service calls it in
a worker thread so disk I/O never blocks the event loop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from securemesh.audit.store import create_audit_engine, write_transaction
from securemesh.errors import LocalError
from securemesh.storage._codec import shard_hash
from securemesh.storage._errors import QuotaExceeded, ShardCorrupt, ShardNotFound
from securemesh.storage._manifest import MAX_MANIFEST_SIZE

__all__ = ["ShardStore", "StoreStats"]

MAX_SHARD_SIZE = 64 * 1024 * 1024

_meta = sa.MetaData()
_shards = sa.Table(
    "storage_shards",
    _meta,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)
_refs = sa.Table(
    "storage_shard_refs",
    _meta,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("object_id", sa.String(32), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
)
_manifests = sa.Table(
    "storage_manifests",
    _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("object_id", sa.String(32), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

#: the index's repairs: shard column ``column`` of ``object_id``, placed on ``from_node`` by
#: the owner's manifest, now lives on ``node`` (regenerated there by the repairer)
_relocations = sa.Table(
    "storage_relocations",
    _meta,
    sa.Column("object_id", sa.String(32), primary_key=True),
    sa.Column("column", sa.Integer, primary_key=True),
    sa.Column("from_node", sa.String(64), nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

_usage = sa.Table(
    "storage_usage",
    _meta,
    # one row per owner, and TOTAL for the node (unique shard bytes + manifests)
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("shards", sa.BigInteger, nullable=False),
    sa.Column("manifests", sa.BigInteger, nullable=False),
)
TOTAL = "*"  # not a node id (those start with a letter or digit)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class StoreStats:
    shards: int
    bytes: int
    manifests: int


class ShardStore:
    """Content-addressed shard blobs and their metadata (module doc)."""

    def __init__(
        self,
        root: Path,
        *,
        db_url: str | None = None,
        quota_bytes: int = 10 * 1024**3,
        owner_quota_bytes: int | None = None,
        max_manifests_per_owner: int = 100_000,
        max_shards_per_owner: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        engine: Engine | None = None,
    ) -> None:
        """``engine`` (instead of ``db_url``): a database shared with others, such as the
        cloud's audit log (``create_audit_engine``); the store's tables are ``storage_*``."""
        if quota_bytes <= 0:
            raise LocalError("a storage quota is positive")
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(mode=0o700, exist_ok=True)
        (self.root / "tmp").mkdir(mode=0o700, exist_ok=True)
        self.quota_bytes = quota_bytes
        self.owner_quota_bytes = owner_quota_bytes or quota_bytes
        self.max_manifests_per_owner = max_manifests_per_owner
        self.max_shards_per_owner = max_shards_per_owner
        self._clock = clock
        self._lock = threading.Lock()
        #: the node's TOTAL usage row (bytes, shards, manifests) as last committed, so that
        #: stats() -- the status tick, on the event loop -- reads no database; None: unknown
        self._totals: tuple[int, int, int] | None = None
        self._pending: list[tuple[int, int, int]] = []  # TOTAL changes of the open transaction
        # its own database is set up like the audit log's (create_audit_engine): SQLite
        # in WAL mode with synchronous=FULL, so a commit is durable once it returns at
        # the cost of one WAL fsync (a rollback journal costs three or four), BEGIN
        # IMMEDIATE for writes, the file 0600
        self._engine = engine or create_audit_engine(db_url or self.root / "shards.db")
        _meta.create_all(self._engine)
        with self._writing() as conn:
            self._recount(conn)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """The store's lock and a write transaction; after the commit, the cached totals
        take the transaction's changes to the TOTAL row (a rollback discards them)."""
        with self._lock:
            self._pending.clear()
            with write_transaction(self._engine) as conn:
                yield conn
            totals = self._totals
            if totals is not None and self._pending:
                size, shards, manifests = totals
                for d_size, d_shards, d_manifests in self._pending:
                    size, shards, manifests = (
                        size + d_size,
                        shards + d_shards,
                        manifests + d_manifests,
                    )
                self._totals = (size, shards, manifests)
            self._pending.clear()

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ paths

    def blob_path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / "blobs" / name[:2] / name

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------------ usage

    # Usage is kept in `storage_usage`, updated in the same transaction as every
    # change, so a quota check is two primary-key reads, not a scan; it is
    # recounted from the tables when the store opens and after gc().

    def _recount(self, conn: sa.Connection) -> None:
        self._totals = None  # read again by the next stats()
        conn.execute(_usage.delete())
        rows: dict[str, list[int]] = {}
        shard_rows = conn.execute(
            sa.select(_refs.c.owner, sa.func.sum(_refs.c.size), sa.func.count()).group_by(
                _refs.c.owner
            )
        )
        for owner, size, count in shard_rows:
            rows.setdefault(str(owner), [0, 0, 0])[:2] = [int(size), int(count)]
        manifest_rows = conn.execute(
            sa.select(
                _manifests.c.owner, sa.func.sum(sa.func.length(_manifests.c.blob)), sa.func.count()
            ).group_by(_manifests.c.owner)
        )
        total = [0, 0, 0]
        for owner, size, count in manifest_rows:
            row = rows.setdefault(str(owner), [0, 0, 0])
            row[0] += int(size)
            row[2] = int(count)
            total[0] += int(size)
            total[2] += int(count)
        unique = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(_shards.c.size), 0), sa.func.count())
        ).one()
        total[0] += int(unique[0])
        total[1] = int(unique[1])
        rows[TOTAL] = total
        for owner, (size, shards, manifests) in rows.items():
            conn.execute(
                _usage.insert().values(owner=owner, bytes=size, shards=shards, manifests=manifests)
            )

    @staticmethod
    def _usage_of(conn: sa.Connection, owner: str) -> tuple[int, int, int]:
        row = conn.execute(
            sa.select(_usage.c.bytes, _usage.c.shards, _usage.c.manifests).where(
                _usage.c.owner == owner
            )
        ).first()
        return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def _bump(
        self, conn: sa.Connection, owner: str, size: int, shards: int = 0, manifests: int = 0
    ) -> None:
        if owner == TOTAL:
            self._pending.append((size, shards, manifests))
        done = conn.execute(
            _usage.update()
            .where(_usage.c.owner == owner)
            .values(
                bytes=_usage.c.bytes + size,
                shards=_usage.c.shards + shards,
                manifests=_usage.c.manifests + manifests,
            )
        ).rowcount
        if not done:
            conn.execute(
                _usage.insert().values(owner=owner, bytes=size, shards=shards, manifests=manifests)
            )

    def _check_quota(self, conn: sa.Connection, owner: str, node_extra: int, extra: int) -> None:
        if self._usage_of(conn, TOTAL)[0] + node_extra > self.quota_bytes:
            raise QuotaExceeded("node storage quota exceeded")
        if self._usage_of(conn, owner)[0] + extra > self.owner_quota_bytes:
            raise QuotaExceeded("owner storage quota exceeded")

    def stats(self) -> StoreStats:
        """Shards, bytes and manifests held: the cached totals (no database read), read
        from the database only when unknown (after opening or gc)."""
        totals = self._totals  # one attribute read: writers replace the tuple whole
        if totals is None:
            with self._lock:
                if self._totals is None:
                    with self._engine.connect() as conn:
                        self._totals = self._usage_of(conn, TOTAL)
                totals = self._totals
        size, shards, manifests = totals
        return StoreStats(shards, size, manifests)

    # ----------------------------------------------------------------- shards

    def put(self, digest: bytes, data: bytes | memoryview, *, owner: str, object_id: str) -> bool:
        """Store a shard under its content address; False if it was already there.

        The blob is written to ``tmp/`` and fsynced *before* the lock is taken,
        so puts running in parallel (one per worker thread) overlap their disk
        waits; the lock and the write transaction cover the metadata (two
        reads, then the rows and the usage counters) and the rename into place.
        The directory is fsynced after the commit, before the put returns: a
        put is acknowledged only once blob, directory entry and row are all
        durable, and a crash in between leaves what :meth:`gc` already removes
        (an unrecorded temp file, or a row whose blob vanished). A shard
        already held (another object's, or another owner's) costs one blob
        write that is thrown away -- unless the held blob is missing or damaged
        on disk (:meth:`get` would refuse it): then the new bytes, which match
        the address, replace it. That is how an owner's repair refills a shard
        on the node that lost it (``True`` is returned then, as for a new one).
        """
        if len(data) > MAX_SHARD_SIZE:
            raise QuotaExceeded("shard too large")
        if shard_hash(data) != digest:
            raise ShardCorrupt("shard bytes do not match their hash")
        key = digest.hex()
        size = len(data)
        tmp = self._write_temp(digest, data)
        placed = False
        try:
            with self._writing() as conn:
                # the shard's row and whether this owner's reference exists, in one read
                # (a reference never outlives its shard's row: delete and gc keep it so)
                row = conn.execute(
                    sa.select(
                        _shards.c.size,
                        sa.exists()
                        .where(
                            _refs.c.hash == key,
                            _refs.c.owner == owner,
                            _refs.c.object_id == object_id,
                        )
                        .correlate(None),
                    ).where(_shards.c.hash == key)
                ).first()
                fresh = row is None
                if not fresh and not self._blob_intact(digest):
                    self.blob_path(digest).parent.mkdir(mode=0o700, exist_ok=True)
                    tmp.replace(self.blob_path(digest))  # verified above: same address
                    placed = True
                if row is not None and row[1]:
                    return placed
                usage = self._usages(conn, (TOTAL, owner))
                node_bytes = usage[TOTAL][0]
                owner_bytes, owner_shards = usage[owner][0], usage[owner][1]
                if node_bytes + (size if fresh else 0) > self.quota_bytes:
                    raise QuotaExceeded("node storage quota exceeded")
                if owner_bytes + size > self.owner_quota_bytes:
                    raise QuotaExceeded("owner storage quota exceeded")
                if owner_shards >= self.max_shards_per_owner:
                    raise QuotaExceeded("too many shards for this owner")  # tiny shards, many rows
                if fresh:
                    path = self.blob_path(digest)
                    path.parent.mkdir(mode=0o700, exist_ok=True)
                    tmp.replace(path)
                    placed = True
                    conn.execute(
                        _shards.insert().values(hash=key, size=size, created_ms=self._now_ms())
                    )
                    self._bump(conn, TOTAL, size, shards=1)
                conn.execute(
                    _refs.insert().values(hash=key, owner=owner, object_id=object_id, size=size)
                )
                self._bump(conn, owner, size, shards=1)
        finally:
            if not placed:
                tmp.unlink(missing_ok=True)
        if placed:
            _fsync_dir(self.blob_path(digest).parent)
        return fresh or placed

    @staticmethod
    def _usages(conn: sa.Connection, owners: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
        """:meth:`_usage_of` for several owners in one read (absent ones are zero)."""
        rows = conn.execute(
            sa.select(_usage.c.owner, _usage.c.bytes, _usage.c.shards, _usage.c.manifests).where(
                _usage.c.owner.in_(owners)
            )
        )
        found = {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        return {owner: found.get(owner, (0, 0, 0)) for owner in owners}

    def _blob_intact(self, digest: bytes) -> bool:
        """The blob of a recorded shard is on disk and still hashes to its address."""
        try:
            return shard_hash(self.blob_path(digest).read_bytes()) == digest
        except OSError:
            return False

    def _write_temp(self, digest: bytes, data: bytes | memoryview) -> Path:
        """``data`` in a new file of ``tmp/`` (0600), written and fsynced; its path."""
        tmp = self.root / "tmp" / f"{digest.hex()}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def get(self, digest: bytes) -> bytes:
        """The shard's bytes, re-verified: ShardNotFound or ShardCorrupt (damaged on disk)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(_shards.c.size).where(_shards.c.hash == digest.hex())
            ).first()
        if row is None:
            raise ShardNotFound("no such shard")
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise ShardNotFound("shard file missing") from exc
        if shard_hash(data) != digest:
            raise ShardCorrupt("stored shard is damaged")
        return data

    def has(self, digest: bytes) -> bool:
        with self._engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(_shards.c.hash).where(_shards.c.hash == digest.hex())
                ).first()
                is not None
            )

    def delete(self, digest: bytes, *, owner: str, object_id: str) -> bool:
        """Drop ``owner``'s reference; the blob goes with the last reference. False if none."""
        key = digest.hex()
        with self._writing() as conn:
            where = (_refs.c.hash == key, _refs.c.owner == owner, _refs.c.object_id == object_id)
            ref = conn.execute(sa.select(_refs.c.size).where(*where)).first()
            if ref is None:
                return False
            conn.execute(_refs.delete().where(*where))
            self._bump(conn, owner, -int(ref[0]), shards=-1)
            left = conn.execute(sa.select(_refs.c.hash).where(_refs.c.hash == key)).first()
            if left is None:
                conn.execute(_shards.delete().where(_shards.c.hash == key))
                self._bump(conn, TOTAL, -int(ref[0]), shards=-1)
                self.blob_path(digest).unlink(missing_ok=True)
            return True

    def delete_object(self, *, owner: str, object_id: str) -> int:
        """Drop every reference ``owner`` holds for ``object_id``; how many were dropped."""
        with self._engine.connect() as conn:
            keys = [
                str(r[0])
                for r in conn.execute(
                    sa.select(_refs.c.hash).where(
                        _refs.c.owner == owner, _refs.c.object_id == object_id
                    )
                )
            ]
        return sum(
            self.delete(bytes.fromhex(key), owner=owner, object_id=object_id) for key in keys
        )

    # -------------------------------------------------------------- manifests

    def put_manifest(self, *, owner: str, name: str, object_id: str, blob: bytes) -> None:
        """Store (or replace) ``owner``'s manifest for ``name`` (already verified by the caller)."""
        if len(blob) > MAX_MANIFEST_SIZE:
            raise QuotaExceeded("manifest too large")
        with self._writing() as conn:
            old = conn.execute(
                sa.select(sa.func.length(_manifests.c.blob)).where(
                    _manifests.c.owner == owner, _manifests.c.name == name
                )
            ).first()
            if old is None and self._usage_of(conn, owner)[2] >= self.max_manifests_per_owner:
                raise QuotaExceeded("too many manifests for this owner")
            delta = len(blob) - (int(old[0]) if old else 0)
            self._check_quota(conn, owner, delta, delta)
            new = 0 if old else 1
            self._bump(conn, owner, delta, manifests=new)
            self._bump(conn, TOTAL, delta, manifests=new)
            values = {"object_id": object_id, "blob": blob, "created_ms": self._now_ms()}
            if old is None:
                conn.execute(_manifests.insert().values(owner=owner, name=name, **values))
            else:
                conn.execute(
                    _manifests.update()
                    .where(_manifests.c.owner == owner, _manifests.c.name == name)
                    .values(**values)
                )

    def get_manifest(self, *, owner: str, name: str) -> bytes:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(_manifests.c.blob).where(
                    _manifests.c.owner == owner, _manifests.c.name == name
                )
            ).first()
        if row is None:
            raise ShardNotFound("no such manifest")
        return bytes(row[0])

    def delete_manifest(self, *, owner: str, name: str) -> bool:
        where = (_manifests.c.owner == owner, _manifests.c.name == name)
        with self._writing() as conn:
            old = conn.execute(
                sa.select(sa.func.length(_manifests.c.blob), _manifests.c.object_id).where(*where)
            ).first()
            if old is None:
                return False
            conn.execute(_manifests.delete().where(*where))
            conn.execute(_relocations.delete().where(_relocations.c.object_id == str(old[1])))
            self._bump(conn, owner, -int(old[0]), manifests=-1)
            self._bump(conn, TOTAL, -int(old[0]), manifests=-1)
            return True

    def manifest_at(self, position: int) -> tuple[str, bytes] | None:
        """(owner, signed manifest) number ``position`` modulo the count; None when empty.

        The challenger picks ``position`` at random: every stored manifest is as likely.
        """
        with self._engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(_manifests)).scalar_one()
            if not count:
                return None
            row = conn.execute(
                sa.select(_manifests.c.owner, _manifests.c.blob)
                .order_by(_manifests.c.owner, _manifests.c.name)
                .offset(position % int(count))
                .limit(1)
            ).first()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def manifests_after(
        self, key: tuple[str, str] | None, limit: int = 100
    ) -> list[tuple[str, str, bytes]]:
        """Up to ``limit`` (owner, name, signed manifest) after ``key`` in (owner, name)
        order: a repairer pages through every manifest without holding them all."""
        query = sa.select(_manifests.c.owner, _manifests.c.name, _manifests.c.blob)
        if key is not None:
            query = query.where(sa.tuple_(_manifests.c.owner, _manifests.c.name) > key)
        with self._engine.connect() as conn:
            rows = conn.execute(
                query.order_by(_manifests.c.owner, _manifests.c.name).limit(limit)
            ).all()
        return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def relocate(self, *, object_id: str, column: int, from_node: str, node: str) -> None:
        """Record that ``column`` of ``object_id`` moved from ``from_node`` to ``node``."""
        with self._writing() as conn:
            conn.execute(
                _relocations.delete().where(
                    _relocations.c.object_id == object_id, _relocations.c.column == column
                )
            )
            conn.execute(
                _relocations.insert().values(
                    object_id=object_id,
                    column=column,
                    from_node=from_node,
                    node=node,
                    created_ms=self._now_ms(),
                )
            )

    def relocations(self, object_id: str) -> dict[int, tuple[str, str]]:
        """column -> (the manifest's node, the node holding the column now)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(_relocations.c.column, _relocations.c.from_node, _relocations.c.node)
                .where(_relocations.c.object_id == object_id)
                .order_by(_relocations.c.column)
            ).all()
        return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}

    def list_manifests(self, *, owner: str, limit: int = 1000) -> list[str]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(_manifests.c.name)
                .where(_manifests.c.owner == owner)
                .order_by(_manifests.c.name)
                .limit(limit)
            )
            return [str(r[0]) for r in rows]

    # --------------------------------------------------------------------- gc

    def gc(self) -> int:
        """Remove orphans; returns how many things were removed.

        Orphans are: files in ``tmp/`` (interrupted writes), blob files with no
        row (a crash between rename and commit), and rows whose last reference
        is gone or whose file vanished.
        """
        removed = 0
        with self._lock:
            for tmp in (self.root / "tmp").iterdir():
                tmp.unlink(missing_ok=True)
                removed += 1
            with write_transaction(self._engine) as conn:
                known = {str(r[0]) for r in conn.execute(sa.select(_shards.c.hash))}
                referenced = {str(r[0]) for r in conn.execute(sa.select(_refs.c.hash).distinct())}
                for key in known - referenced:
                    conn.execute(_shards.delete().where(_shards.c.hash == key))
                    self.blob_path(bytes.fromhex(key)).unlink(missing_ok=True)
                    removed += 1
                live = known & referenced
                for key in list(live):
                    if not self.blob_path(bytes.fromhex(key)).exists():
                        conn.execute(_refs.delete().where(_refs.c.hash == key))
                        conn.execute(_shards.delete().where(_shards.c.hash == key))
                        live.discard(key)
                        removed += 1
                self._recount(conn)
            for sub in (self.root / "blobs").iterdir():
                for blob in sub.iterdir():
                    if blob.name not in live:
                        with contextlib.suppress(FileNotFoundError):
                            blob.unlink()
                        removed += 1
        return removed
