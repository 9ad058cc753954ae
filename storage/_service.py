"""The storage service on the node seam: an edge's shard and manifest store, served over the bus.

Load it from ``node.toml``::

    services = ["securemesh.storage:make_service"]

    [[policy.allow]]                 # the operator's outer bound
    types = ["storage.*"]
    tiers = ["end", "edge", "cloud"]

Handlers (bodies in :mod:`securemesh.storage._messages`; a shard or a signed
manifest is the one raw frame, never JSON/base64):

* ``storage.shard.put`` — store the frame under its SHA-256 for the sender;
  refused if the hash does not match (``shard_corrupt``) or a quota is full
  (``quota_exceeded``); both audited (``storage.shard_refused``).
* ``storage.shard.get`` — the shard as the reply's frame; a blob damaged on
  disk is refused (``shard_corrupt``) and audited (``storage.shard_corrupt``).
* ``storage.shard.delete`` — drop the sender's shards of an object.
* ``storage.manifest.put|get|delete|list`` — manifests: stored only when their
  owner is the sender and the owner's signature verifies against its
  certificate (``object.put``/``object.delete`` audited); read by the owner
  or a reader the manifest names.
* ``storage.challenge`` — a proof of storage: the blocks a fresh nonce picks
  from a shard, with their Merkle inclusion paths (:mod:`._proof`).
* ``storage.nodes`` — (any node, useful on the cloud) the child nodes whose
  heartbeats report the ``storage`` service, with their failure domains.

Every type is also relayed (``relay_policy``), so a device's request crosses
its edge and the cloud to the edge holding the shard. The service's policy
narrows the operator's to the tiers it is built with; each sender has at most
``max_inflight_per_peer`` requests in the store at once (more are refused
``busy``), and the store's per-owner quota bounds what a peer can grow.
Disk and SQL work runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from securemesh.audit.store import create_audit_engine
from securemesh.errors import (
    AuthorizationError,
    DecodeError,
    LocalError,
    RemoteError,
    SecureMeshError,
)
from securemesh.node import NodeContext, Reply, Service, VerifiedMessage
from securemesh.policy import AllowTypes
from securemesh.storage._client import KIND_CHALLENGE, challenge_shard
from securemesh.storage._codec import regenerate_shards, shard_hash
from securemesh.storage._errors import QuotaExceeded, ShardCorrupt
from securemesh.storage._manifest import Manifest, open_manifest
from securemesh.storage._messages import (
    MSG_CHALLENGE,
    MSG_LOCATE,
    MSG_MANIFEST_DELETE,
    MSG_MANIFEST_GET,
    MSG_MANIFEST_LIST,
    MSG_MANIFEST_PUT,
    MSG_NODES,
    MSG_SHARD_DELETE,
    MSG_SHARD_GET,
    MSG_SHARD_PUT,
    Challenge,
    Done,
    Located,
    ManifestRef,
    NameList,
    NodeEntry,
    NodeList,
    ObjectRef,
    ProofReply,
    Relocation,
    ShardPutBody,
    ShardRef,
)
from securemesh.storage._placement import Candidate, replacements
from securemesh.storage._proof import prove_storage
from securemesh.storage._store import ShardStore

__all__ = [
    "KIND_SHARD_CORRUPT",
    "KIND_SHARD_REFUSED",
    "StorageService",
    "make_cloud_service",
    "make_service",
]

KIND_OBJECT_PUT = "object.put"
KIND_OBJECT_DELETE = "object.delete"
KIND_SHARD_REFUSED = "storage.shard_refused"
KIND_SHARD_CORRUPT = "storage.shard_corrupt"
KIND_REPAIR = "storage.repair"

T = TypeVar("T")
AUDIT_DB_FILE = "audit.db"  # the cloud log's default file in the node's data dir
_MAX_TRACKED = 4096  # nodes whose failed challenges are counted


class Busy(RemoteError):
    """The sender already has its maximum of requests in this node's store."""

    reason = "busy"


class StorageService(Service):
    """Shards and manifests on this node's disk (module doc)."""

    name = "storage"
    audit_kinds = (
        KIND_OBJECT_PUT,
        KIND_OBJECT_DELETE,
        KIND_SHARD_REFUSED,
        KIND_SHARD_CORRUPT,
        KIND_CHALLENGE,
        KIND_REPAIR,
    )

    def __init__(
        self,
        *,
        quota_bytes: int = 10 * 1024**3,
        owner_quota_bytes: int | None = None,
        tiers: Iterable[str] = ("end", "edge", "cloud"),
        max_inflight_per_peer: int = 8,
        db_url: str | None = None,
        root: Path | None = None,
        challenge_interval: float | None = None,
        unhealthy_after: int = 5,
        challenge_blocks: int = 8,
        repair_interval: float | None = None,
        loss_grace: float = 300.0,
        index_in_audit_db: bool = False,
    ) -> None:
        if max_inflight_per_peer < 1:
            raise LocalError("max_inflight_per_peer is at least 1")
        if challenge_interval is not None and not 0.01 <= challenge_interval <= 86_400:
            raise LocalError("the challenge interval is between 0.01 and 86400 seconds")
        if unhealthy_after < 1:
            raise LocalError("unhealthy_after is at least 1")
        #: seconds between proof-of-storage challenges (None: this node does not challenge)
        self.challenge_interval = challenge_interval
        self.unhealthy_after = unhealthy_after
        #: on a cloud: keep the store's tables (the object index) in the audit log's database
        self.index_in_audit_db = index_in_audit_db
        #: seconds between automatic repair rounds (None: this node does not repair)
        self.repair_interval = repair_interval
        #: a storage node absent from this node's peers this long is lost (its shards repaired)
        self.loss_grace = loss_grace
        #: node -> when it was first found absent (bounded like ``failures``)
        self._absent_since: dict[str, float] = {}
        #: storage peer -> (its last reported uptime, when that report was new)
        self._reported: dict[str, tuple[float, float]] = {}
        self.challenge_blocks = challenge_blocks
        #: node -> consecutive failed challenges (bounded: _MAX_TRACKED nodes)
        self.failures: dict[str, int] = {}
        self.unhealthy: set[str] = set()
        self.quota_bytes = quota_bytes
        self.owner_quota_bytes = owner_quota_bytes
        self.tiers = list(tiers)
        self.max_inflight_per_peer = max_inflight_per_peer
        self._db_url = db_url
        self._root = root
        self._ctx: NodeContext | None = None
        self._store: ShardStore | None = None
        self._inflight: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "shards_stored": 0,
            "shards_served": 0,
            "shards_refused": 0,
            "shards_corrupt": 0,
            "manifests_stored": 0,
            "busy": 0,
            "challenges_answered": 0,
            "challenges_sent": 0,
            "challenges_failed": 0,
            "repair_rounds": 0,
            "shards_repaired": 0,
            "repairs_failed": 0,
        }

    # ------------------------------------------------------------------ seam

    @property
    def ctx(self) -> NodeContext:
        if self._ctx is None:
            raise LocalError("the storage service is not installed")
        return self._ctx

    @property
    def store(self) -> ShardStore:
        if self._store is None:
            raise LocalError("the storage service is not installed")
        return self._store

    def install(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        engine = None
        if self.index_in_audit_db and self._db_url is None and ctx.tier == "cloud":
            # the object index scales with the log: SQLite by default, PostgreSQL when
            # [audit] log_db names one (ctx.data_dir is <node data_dir>/services/storage)
            url = ctx.config.audit.log_db or str(ctx.data_dir.parent.parent / AUDIT_DB_FILE)
            engine = create_audit_engine(url)
        self._store = ShardStore(
            self._root or ctx.data_dir,
            db_url=self._db_url,
            quota_bytes=self.quota_bytes,
            owner_quota_bytes=self.owner_quota_bytes,
            clock=ctx.clock,
            engine=engine,
        )
        handlers: Mapping[str, Callable[[VerifiedMessage], Awaitable[object]]] = {
            MSG_SHARD_PUT: self._shard_put,
            MSG_SHARD_GET: self._shard_get,
            MSG_SHARD_DELETE: self._shard_delete,
            MSG_MANIFEST_PUT: self._manifest_put,
            MSG_MANIFEST_GET: self._manifest_get,
            MSG_MANIFEST_DELETE: self._manifest_delete,
            MSG_MANIFEST_LIST: self._manifest_list,
            MSG_NODES: self._nodes,
            MSG_CHALLENGE: self._challenge,
            MSG_LOCATE: self._locate,
        }
        for msg_type, handler in handlers.items():
            policy = AllowTypes(types=[msg_type], tiers=self.tiers)
            ctx.on(msg_type, handler, policy=policy, relay_policy=policy)

    async def start(self) -> None:
        await asyncio.to_thread(self.store.gc)
        if self.challenge_interval is not None:
            self.ctx.spawn(self._challenge_loop(self.challenge_interval), name="challenges")
        if self.repair_interval is not None:
            self.ctx.spawn(self._repair_loop(self.repair_interval), name="repairs")

    async def stop(self) -> None:
        if self._store is not None:
            self._store.close()

    def status(self) -> Mapping[str, object]:
        stats = self.store.stats() if self._store is not None else None
        return {
            **self.counters,
            "shards": stats.shards if stats else 0,
            "bytes": stats.bytes if stats else 0,
            "manifests": stats.manifests if stats else 0,
            "quota_bytes": self.quota_bytes,
            "unhealthy": sorted(self.unhealthy),
            "lost": sorted(self.lost()),
        }

    # --------------------------------------------------------------- helpers

    async def _in_store(self, sender: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread, at most ``max_inflight_per_peer`` per sender."""
        if self._inflight.get(sender, 0) >= self.max_inflight_per_peer:
            self.counters["busy"] += 1
            raise Busy("too many storage requests in flight from this node")
        self._inflight[sender] = self._inflight.get(sender, 0) + 1
        try:
            return await asyncio.to_thread(fn)
        finally:
            left = self._inflight[sender] - 1
            if left:
                self._inflight[sender] = left
            else:
                del self._inflight[sender]

    @staticmethod
    def _one_frame(msg: VerifiedMessage) -> memoryview:
        if len(msg.raw_frames) != 1:
            raise DecodeError("expected exactly one raw frame")
        return msg.raw_frames[0]

    def _refused(self, msg: VerifiedMessage, object_id: str, exc: RemoteError) -> None:
        self.counters["shards_refused"] += 1
        self.ctx.audit.record(
            KIND_SHARD_REFUSED,
            ("object", object_id),
            outcome="denied",
            details={"from": msg.sender, "reason": exc.reason},
        )

    # -------------------------------------------------------------- handlers

    async def _shard_put(self, msg: VerifiedMessage) -> Done:
        body = msg.body(ShardPutBody)
        frame = self._one_frame(msg)
        digest = bytes.fromhex(body.hash)
        try:
            fresh = await self._in_store(
                msg.sender,
                lambda: self.store.put(digest, frame, owner=msg.sender, object_id=body.object_id),
            )
        except (ShardCorrupt, QuotaExceeded) as exc:
            self._refused(msg, body.object_id, exc)
            raise
        self.counters["shards_stored"] += 1
        return Done(changed=fresh)

    async def _shard_get(self, msg: VerifiedMessage) -> Reply:
        body = msg.body(ShardRef)
        digest = bytes.fromhex(body.hash)
        try:
            data = await self._in_store(msg.sender, lambda: self.store.get(digest))
        except ShardCorrupt as exc:
            self.counters["shards_corrupt"] += 1
            self.ctx.audit.record(
                KIND_SHARD_CORRUPT,
                ("node", self.ctx.node_id),
                outcome="failure",
                details={"hash": body.hash, "reason": exc.reason},
            )
            raise
        self.counters["shards_served"] += 1
        return Reply(Done(changed=False), frames=[data])

    async def _shard_delete(self, msg: VerifiedMessage) -> Done:
        body = msg.body(ObjectRef)
        gone = await self._in_store(
            msg.sender, lambda: self.store.delete_object(owner=msg.sender, object_id=body.object_id)
        )
        return Done(changed=gone > 0)

    async def _manifest_put(self, msg: VerifiedMessage) -> Done:
        ref = msg.body(ManifestRef)
        blob = bytes(self._one_frame(msg))
        if ref.owner != msg.sender or msg.certificate is None:
            raise AuthorizationError("a node stores only its own manifests")
        manifest = open_manifest(blob, msg.certificate.verify_key)
        if manifest.owner != msg.sender or manifest.name != ref.name:
            raise AuthorizationError("the manifest names another owner or object")
        await self._in_store(
            msg.sender,
            lambda: self.store.put_manifest(
                owner=msg.sender, name=ref.name, object_id=manifest.object_id, blob=blob
            ),
        )
        self.counters["manifests_stored"] += 1
        self.ctx.audit.record(
            KIND_OBJECT_PUT,
            ("object", manifest.object_id),
            details={
                "owner": manifest.owner,
                "size": manifest.size,
                "k": manifest.k,
                "n": manifest.n,
                "merkle_root": manifest.merkle_root,
            },
        )
        return Done(changed=True)

    async def _manifest_get(self, msg: VerifiedMessage) -> Reply:
        ref = msg.body(ManifestRef)
        blob = await self._in_store(
            msg.sender, lambda: self.store.get_manifest(owner=ref.owner, name=ref.name)
        )
        if msg.sender != ref.owner:
            owner_cert = self.ctx.certificates.get(ref.owner)
            if owner_cert is None:
                raise AuthorizationError("the owner's certificate is unknown here")
            if msg.sender not in open_manifest(blob, owner_cert.verify_key).readers:
                raise AuthorizationError("not a reader of this object")
        return Reply(Done(changed=False), frames=[blob])

    async def _manifest_delete(self, msg: VerifiedMessage) -> Done:
        ref = msg.body(ManifestRef)
        if ref.owner != msg.sender:
            raise AuthorizationError("a node deletes only its own manifests")
        gone = await self._in_store(
            msg.sender, lambda: self.store.delete_manifest(owner=msg.sender, name=ref.name)
        )
        if gone:
            self.ctx.audit.record(
                KIND_OBJECT_DELETE, ("object", f"{msg.sender}/{ref.name}"), details={}
            )
        return Done(changed=gone)

    async def _manifest_list(self, msg: VerifiedMessage) -> NameList:
        names = await self._in_store(
            msg.sender, lambda: self.store.list_manifests(owner=msg.sender)
        )
        return NameList(names=names)

    async def _challenge(self, msg: VerifiedMessage) -> Reply:
        body = msg.body(Challenge)
        digest, nonce = bytes.fromhex(body.hash), bytes.fromhex(body.nonce)

        def prove() -> tuple[tuple[bytes, ...], list[list[str]]]:
            proof = prove_storage(self.store.get(digest), nonce, body.count)
            return proof.blocks, [[h.hex() for h in path] for path in proof.paths]

        blocks, paths = await self._in_store(msg.sender, prove)
        self.counters["challenges_answered"] += 1
        return Reply(ProofReply(paths=paths), frames=list(blocks))

    async def _nodes(self, msg: VerifiedMessage) -> NodeList:
        del msg
        return NodeList(
            nodes=[
                NodeEntry(node_id=c.node_id, failure_domain=c.failure_domain)
                for c in self._connected()
                if c.node_id not in self.unhealthy
            ]
        )

    async def _locate(self, msg: VerifiedMessage) -> Located:
        body = msg.body(ObjectRef)
        moves = await self._in_store(msg.sender, lambda: self.store.relocations(body.object_id))
        return Located(
            moves=[
                Relocation(column=column, from_node=old, node=new)
                for column, (old, new) in sorted(moves.items())
            ]
        )

    # ------------------------------------------------------ proof of storage

    async def _challenge_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.challenge_once()

    def _pick(self, bound: int) -> int:
        return int.from_bytes(self.ctx.rng(8), "big") % bound

    async def challenge_once(self) -> str | None:
        """Challenge one random shard of one random manifest this node holds; its result.

        The manifest is verified against its owner's certificate first. The
        result is recorded as ``storage.challenge``; ``unhealthy_after``
        consecutive failures mark the node unhealthy (left out of
        ``storage.nodes``) until it passes one again. None: nothing to check.
        """
        picked = await asyncio.to_thread(self.store.manifest_at, self._pick(2**31))
        if picked is None:
            return None
        owner, blob = picked
        cert = self.ctx.certificates.get(owner)
        if cert is None:
            return None
        try:
            manifest = open_manifest(blob, cert.verify_key)
        except SecureMeshError:  # stored verified; a key rotated since: skip it
            return None
        if not manifest.segments:
            return None
        segment, index = self._pick(len(manifest.segments)), self._pick(manifest.n)
        node = (await self._placement(manifest))[index]
        if node == self.ctx.node_id:
            return None
        result = await challenge_shard(
            self.ctx,
            manifest,
            segment,
            index,
            nonce=self.ctx.rng(32),
            count=self.challenge_blocks,
            timeout=max(self.challenge_interval or 0.0, 5.0),
            node=node,
        )
        self.counters["challenges_sent"] += 1
        if result == "ok":
            self.failures.pop(node, None)
            self.unhealthy.discard(node)
        else:
            self.counters["challenges_failed"] += 1
            if node in self.failures or len(self.failures) < _MAX_TRACKED:
                self.failures[node] = self.failures.get(node, 0) + 1
                if self.failures[node] >= self.unhealthy_after:
                    self.unhealthy.add(node)
        self.ctx.audit.record(
            KIND_CHALLENGE,
            ("object", manifest.object_id),
            outcome="success" if result == "ok" else "failure",
            details={"node": node, "segment": segment, "shard": index, "result": result},
        )
        return result

    # ------------------------------------------------------- automatic repair

    async def _repair_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.repair_once()
            except SecureMeshError:  # a round that cannot finish is retried next time
                self.counters["repairs_failed"] += 1

    def _connected(self) -> list[Candidate]:
        """The storage nodes among this node's peers that still report, healthy or not.

        A peer's link can outlive its process (a SIGKILLed edge stays a child until
        the link is dropped), so a peer whose report has not changed (its
        ``uptime_s``) for ``loss_grace`` s counts as gone.
        """
        now = self.ctx.clock()
        peers = {
            node_id: report
            for node_id, report in self.ctx.peers().items()
            if self.name in (report.services or ())
        }
        for node_id in [n for n in self._reported if n not in peers]:
            del self._reported[node_id]
        fresh = []
        for node_id, report in sorted(peers.items()):
            seen = self._reported.get(node_id)
            if seen is None or seen[0] != report.uptime_s:
                self._reported[node_id] = seen = (report.uptime_s, now)
            if now - seen[1] < self.loss_grace:
                fresh.append(Candidate(node_id, report.failure_domain or ""))
        return fresh

    def lost(self) -> set[str]:
        """Storage nodes absent from this node's peers for longer than ``loss_grace``."""
        now = self.ctx.clock()
        return {n for n, since in self._absent_since.items() if now - since >= self.loss_grace}

    def _note_absent(self, nodes: Iterable[str], live: set[str]) -> None:
        now = self.ctx.clock()
        for node in live:
            self._absent_since.pop(node, None)
        for node in nodes:
            tracked = node in self._absent_since or len(self._absent_since) < _MAX_TRACKED
            if node not in live and node != self.ctx.node_id and tracked:
                self._absent_since.setdefault(node, now)

    async def _placement(self, manifest: Manifest) -> list[str]:
        """The manifest's placement with this index's relocations applied."""
        moves = await asyncio.to_thread(self.store.relocations, manifest.object_id)
        placement = list(manifest.placement)
        for column, (old, new) in moves.items():
            if column < manifest.n and placement[column] == old and new not in placement:
                placement[column] = new
        return placement

    async def repair_once(self, *, batch: int = 100) -> int:
        """One repair round over every manifest this node indexes; shards regenerated.

        A shard column is repaired when its node is unhealthy (failed
        ``unhealthy_after`` challenges in a row) or lost (absent from this node's
        peers for ``loss_grace`` s). Its shards are rebuilt from k others per
        segment (:func:`regenerate_shards`, byte-identical: no key, no re-signing)
        onto a live node chosen like the owner's repair (:func:`replacements`), and
        the move is recorded (``storage.locate`` tells readers; ``storage.repair``
        audited). Memory: one segment's k shards at a time.
        """
        self.counters["repair_rounds"] += 1
        connected = self._connected()
        present = {c.node_id for c in connected}
        live = [c for c in connected if c.node_id not in self.unhealthy]
        repaired = 0
        key: tuple[str, str] | None = None
        while True:
            page = await asyncio.to_thread(self.store.manifests_after, key, batch)
            if not page:
                return repaired
            for owner, _, blob in page:
                cert = self.ctx.certificates.get(owner)
                if cert is None:
                    continue
                try:
                    manifest = open_manifest(blob, cert.verify_key)
                except SecureMeshError:
                    continue
                placement = await self._placement(manifest)
                self._note_absent(placement, present)
                bad = self.unhealthy | self.lost()
                columns = [j for j, node in enumerate(placement) if node in bad]
                if columns and manifest.segments:
                    repaired += await self._repair_object(manifest, placement, columns, live)
            key = (page[-1][0], page[-1][1])

    async def _repair_object(
        self, m: Manifest, placement: list[str], columns: list[int], live: list[Candidate]
    ) -> int:
        sources = [j for j in range(m.n) if j not in columns]
        if len(sources) < m.k:
            return 0  # not enough columns left to rebuild from (or to try now)
        try:
            fresh = replacements(m.object_id_bytes, live, placement, len(columns))
        except LocalError:
            return 0  # no spare node yet: the next round tries again
        target = dict(zip(columns, fresh, strict=True))
        lost = self.lost()
        for seg in range(len(m.segments)):
            good: dict[int, bytes] = {}
            for j in sources:
                data = await self._fetch_shard(placement[j], m.shard_hash(seg, j))
                if data is not None:
                    good[j] = data
                if len(good) == m.k:
                    break
            if len(good) < m.k:
                self.counters["repairs_failed"] += 1
                return 0
            rebuilt = await asyncio.to_thread(regenerate_shards, good, m.k, m.n, columns)
            del good
            for j in columns:
                body = ShardPutBody(object_id=m.object_id, hash=m.segments[seg].shards[j])
                await self.ctx.request(target[j], MSG_SHARD_PUT, body, [rebuilt[j]], timeout=60)
        for j in columns:
            await asyncio.to_thread(
                self.store.relocate,
                object_id=m.object_id,
                column=j,
                from_node=m.placement[j],
                node=target[j],
            )
            self.ctx.audit.record(
                KIND_REPAIR,
                ("object", m.object_id),
                details={
                    "column": j,
                    "from": placement[j],
                    "to": target[j],
                    "segments": len(m.segments),
                    "reason": "lost" if placement[j] in lost else "unhealthy",
                },
            )
        self.counters["shards_repaired"] += len(columns) * len(m.segments)
        return len(columns)

    async def _fetch_shard(self, node: str, digest: bytes) -> bytes | None:
        try:
            reply = await self.ctx.request(
                node, MSG_SHARD_GET, ShardRef(hash=digest.hex()), timeout=30
            )
        except (SecureMeshError, TimeoutError):
            return None
        if len(reply.raw_frames) != 1:
            return None
        data = bytes(reply.raw_frames[0])
        return data if shard_hash(data) == digest else None


def _env_seconds(name: str, default: str) -> float:
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError as exc:
        raise LocalError(f"{name} is a number of seconds") from exc
    if not 0.01 <= value <= 86_400:
        raise LocalError(f"{name} is 0.01..86400 seconds")
    return value


def make_cloud_service() -> StorageService:
    """The cloud's factory: also challenges edges (``SECUREMESH_STORAGE_CHALLENGE_INTERVAL``
    s, default 60) and repairs automatically (``SECUREMESH_STORAGE_REPAIR_INTERVAL`` s,
    default 60; a node absent ``SECUREMESH_STORAGE_LOSS_GRACE`` s, default 300, is lost);
    its object index (manifests, relocations) lives in the audit log's database."""
    service = make_service()
    service.challenge_interval = _env_seconds("SECUREMESH_STORAGE_CHALLENGE_INTERVAL", "60")
    service.repair_interval = _env_seconds("SECUREMESH_STORAGE_REPAIR_INTERVAL", "60")
    service.loss_grace = _env_seconds("SECUREMESH_STORAGE_LOSS_GRACE", "300")
    service.index_in_audit_db = True
    return service


def _env_mib(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise LocalError(f"{name} is a whole number of MiB") from exc
    if value < 1:
        raise LocalError(f"{name} is at least 1 MiB")
    return value * 1024 * 1024


def make_service() -> StorageService:
    """The ``node.toml`` factory: ``SECUREMESH_STORAGE_QUOTA_MB`` sets the node's quota
    (default 10 GiB) and ``SECUREMESH_STORAGE_OWNER_QUOTA_MB`` each sender's (default a
    quarter of the node's: no one peer fills a node)."""
    quota = _env_mib("SECUREMESH_STORAGE_QUOTA_MB") or 10 * 1024**3
    owner = _env_mib("SECUREMESH_STORAGE_OWNER_QUOTA_MB") or max(quota // 4, 1024 * 1024)
    return StorageService(quota_bytes=quota, owner_quota_bytes=min(owner, quota))
