"""An edge's shard store: content-addressed blobs on disk, metadata in SQLAlchemy.

Layout under ``root`` (mode 0700)::

    blobs/ab/<sha256 hex>     one shard per file, mode 0600, named by its SHA-256
    tmp/                      writes in progress (swept by gc())
    shards.db                 SQLite metadata (or any SQLAlchemy URL given)

A shard is written to ``tmp/`` (O_EXCL, 0600), fsynced, renamed into place
and the directory fsynced, and only then recorded in the database, so a crash
leaves at worst an unrecorded file that :meth:`ShardStore.gc` removes. A
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

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
    ) -> None:
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
        self._engine = sa.create_engine(db_url or f"sqlite:///{self.root / 'shards.db'}")
        _meta.create_all(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ paths

    def blob_path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / "blobs" / name[:2] / name

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------------ usage

    def _used(self, conn: sa.Connection, owner: str | None = None) -> int:
        if owner is None:
            shards = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_shards.c.size), 0)))
            mans = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(_manifests.c.blob)), 0))
            )
        else:
            shards = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(_refs.c.size), 0)).where(
                    _refs.c.owner == owner
                )
            )
            mans = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(sa.func.length(_manifests.c.blob)), 0)
                ).where(_manifests.c.owner == owner)
            )
        return int(shards.scalar_one()) + int(mans.scalar_one())

    def _check_quota(self, conn: sa.Connection, owner: str, extra: int) -> None:
        if self._used(conn) + extra > self.quota_bytes:
            raise QuotaExceeded("node storage quota exceeded")
        if self._used(conn, owner) + extra > self.owner_quota_bytes:
            raise QuotaExceeded("owner storage quota exceeded")

    def stats(self) -> StoreStats:
        with self._engine.connect() as conn:
            shards = conn.execute(sa.select(sa.func.count()).select_from(_shards)).scalar_one()
            mans = conn.execute(sa.select(sa.func.count()).select_from(_manifests)).scalar_one()
            return StoreStats(int(shards), self._used(conn), int(mans))

    # ----------------------------------------------------------------- shards

    def put(self, digest: bytes, data: bytes | memoryview, *, owner: str, object_id: str) -> bool:
        """Store a shard under its content address; False if it was already there."""
        if len(data) > MAX_SHARD_SIZE:
            raise QuotaExceeded("shard too large")
        if shard_hash(data) != digest:
            raise ShardCorrupt("shard bytes do not match their hash")
        key = digest.hex()
        with self._lock, self._engine.begin() as conn:
            exists = conn.execute(sa.select(_shards.c.size).where(_shards.c.hash == key)).first()
            ref = conn.execute(
                sa.select(_refs.c.hash).where(
                    _refs.c.hash == key, _refs.c.owner == owner, _refs.c.object_id == object_id
                )
            ).first()
            if ref is not None:
                return False
            self._check_quota(conn, owner, 0 if exists else len(data))
            held = conn.execute(
                sa.select(sa.func.count()).select_from(_refs).where(_refs.c.owner == owner)
            ).scalar_one()
            if held >= self.max_shards_per_owner:  # tiny shards must not grow rows unbounded
                raise QuotaExceeded("too many shards for this owner")
            if exists is None:
                self._write_blob(digest, data)
                conn.execute(
                    _shards.insert().values(hash=key, size=len(data), created_ms=self._now_ms())
                )
            conn.execute(
                _refs.insert().values(hash=key, owner=owner, object_id=object_id, size=len(data))
            )
            return exists is None

    def _write_blob(self, digest: bytes, data: bytes | memoryview) -> None:
        path = self.blob_path(digest)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = self.root / "tmp" / f"{digest.hex()}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
        with self._lock, self._engine.begin() as conn:
            gone = conn.execute(
                _refs.delete().where(
                    _refs.c.hash == key, _refs.c.owner == owner, _refs.c.object_id == object_id
                )
            ).rowcount
            if not gone:
                return False
            left = conn.execute(sa.select(_refs.c.hash).where(_refs.c.hash == key)).first()
            if left is None:
                conn.execute(_shards.delete().where(_shards.c.hash == key))
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
        with self._lock, self._engine.begin() as conn:
            old = conn.execute(
                sa.select(sa.func.length(_manifests.c.blob)).where(
                    _manifests.c.owner == owner, _manifests.c.name == name
                )
            ).first()
            if old is None:
                count = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(_manifests)
                    .where(_manifests.c.owner == owner)
                ).scalar_one()
                if count >= self.max_manifests_per_owner:
                    raise QuotaExceeded("too many manifests for this owner")
            self._check_quota(conn, owner, len(blob) - (int(old[0]) if old else 0))
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
        with self._lock, self._engine.begin() as conn:
            return bool(
                conn.execute(
                    _manifests.delete().where(
                        _manifests.c.owner == owner, _manifests.c.name == name
                    )
                ).rowcount
            )

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
            with self._engine.begin() as conn:
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
            for sub in (self.root / "blobs").iterdir():
                for blob in sub.iterdir():
                    if blob.name not in live:
                        with contextlib.suppress(FileNotFoundError):
                            blob.unlink()
                        removed += 1
        return removed
