"""The storage client: drives put/get plans over a node's requests, n transfers in parallel.

``StorageClient`` needs something that sends a REQUEST and returns the
verified reply: a :class:`~securemesh.node.NodeContext` (a service on a
node), or an adapter over the SDK device. It never sees a socket.

* ``put(name, bytes | binary file)`` — asks ``index`` (the cloud) for the live
  storage nodes (``storage.nodes``), places the object by rendezvous hashing,
  then for each segment sends its n shards to the n nodes concurrently, with
  at most ``parallel_segments`` (2) segments in flight: peak memory is about
  ``parallel_segments * segment_size * (1 + n/k)``, whatever the object's size. The signed
  manifest goes to ``manifest_copies`` nodes chosen by rendezvous hashing on
  ``owner/name``, so any reader computes the same nodes.
* ``get(name)`` / ``get_into(name, write)`` — finds the manifest (the first
  copy whose owner signature verifies; a forged one is skipped), unwraps the
  data key, asks the index where repaired columns moved (``storage.locate``),
  and for each segment asks k nodes at once, then others for every shard that
  is missing, refused or corrupt (hash checked by the plan); up to
  ``parallel_segments`` segments are fetched ahead and written in order; the
  report lists what failed.
* Sealing/coding (put) and rebuilding/opening (get) run in one worker thread
  of the call's own, so the event loop keeps moving frames meanwhile.
* ``stat`` (the verified manifest), ``list``, ``delete``, ``share`` /
  ``unshare`` (a new manifest version with a reader's wrapped key added or
  removed, audited ``storage.share``), ``repair`` (the owner's, re-signing)
  and ``challenge``.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import concurrent.futures
import contextlib
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeVar

from pydantic import BaseModel

from securemesh.crypto.signing import Signer
from securemesh.errors import (
    InclusionProofError,
    LocalError,
    RemoteCallError,
    SecureMeshError,
    TransportError,
)
from securemesh.node import AuditRecorderLike
from securemesh.storage._codec import regenerate_shards, shard_hash
from securemesh.storage._errors import ObjectUnreadable
from securemesh.storage._manifest import (
    KeyOpener,
    Manifest,
    open_manifest,
    share_manifest,
    sign_manifest,
    unshare_manifest,
    unwrap_data_key,
)
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
    NodeList,
    ObjectRef,
    ProofReply,
    ShardPutBody,
    ShardRef,
)
from securemesh.storage._placement import Candidate, place, rendezvous_score, replacements
from securemesh.storage._plan import (
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SEGMENT_SIZE,
    GetPlan,
    PutPlan,
    ShardGet,
    ShardPut,
)
from securemesh.storage._proof import (
    NONCE_SIZE,
    StorageProof,
    check_paths,
    verify_storage_proof,
)

__all__ = [
    "KIND_CHALLENGE",
    "KIND_SHARE",
    "GetReport",
    "RepairReport",
    "ReplyLike",
    "Requester",
    "StorageClient",
    "challenge_shard",
]


T = TypeVar("T")
KIND_CHALLENGE = "storage.challenge"
KIND_SHARE = "storage.share"


class ReplyLike(Protocol):
    """A verified reply: what ``NodeContext.request`` returns (``VerifiedMessage``)."""

    @property
    def body_bytes(self) -> bytes: ...

    @property
    def raw_frames(self) -> tuple[memoryview, ...]: ...


class Requester(Protocol):
    """Sends a REQUEST and returns its verified reply (``NodeContext`` is one)."""

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
    ) -> ReplyLike: ...


@dataclass
class GetReport:
    """What a read met on the way: shards that were corrupt or did not arrive."""

    manifest: Manifest
    corrupt: list[tuple[int, int, str]] = field(default_factory=list)
    missing: list[tuple[int, int, str, str]] = field(default_factory=list)


@dataclass
class RepairReport:
    """What a repair did: the (re-signed) manifest and each moved shard column."""

    manifest: Manifest
    #: shard index -> (old node, new node)
    moved: dict[int, tuple[str, str]] = field(default_factory=dict)
    shards_rebuilt: int = 0
    #: shard index -> node: columns rebuilt onto the live node that had lost them
    #: (no other node was free to take them)
    refilled: dict[int, str] = field(default_factory=dict)


async def challenge_shard(
    requester: Requester,
    manifest: Manifest,
    segment: int,
    index: int,
    *,
    nonce: bytes,
    count: int = 8,
    timeout: float = 30.0,
    node: str | None = None,
) -> str:
    """Challenge shard ``index`` of ``segment`` on its node; "ok" or why it failed.

    ``nonce`` must be fresh (from a CSPRNG); ``count`` blocks are checked
    against the shard's address in the verified manifest (``_proof``). ``node``
    overrides the manifest's placement (a column the index relocated).
    """
    entry = manifest.segments[segment]
    shard_size = (entry.cipher_size + entry.padding) // manifest.k
    body = Challenge(hash=entry.shards[index], nonce=nonce.hex(), count=count)
    try:
        reply = await requester.request(
            node or manifest.placement[index], MSG_CHALLENGE, body, timeout=timeout
        )
        paths = ProofReply.model_validate_json(reply.body_bytes, strict=True).paths
        proof = StorageProof(tuple(bytes(f) for f in reply.raw_frames), check_paths(paths))
        verify_storage_proof(bytes.fromhex(entry.shards[index]), shard_size, nonce, count, proof)
    except InclusionProofError:
        return "bad_proof"
    except (SecureMeshError, TimeoutError) as exc:
        return _reason(exc)
    return "ok"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RemoteCallError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class StorageClient:
    """The library client (module doc)."""

    def __init__(
        self,
        requester: Requester,
        *,
        node_id: str,
        signer: Signer | None,
        kx_secret: KeyOpener,
        kx_public: bytes,
        index: str,
        k: int = DEFAULT_K,
        n: int = DEFAULT_N,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        manifest_copies: int = 3,
        parallel_segments: int = 2,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        audit: AuditRecorderLike | None = None,
    ) -> None:
        self._req = requester
        self._audit = audit
        self.node_id = node_id
        self._signer = signer
        self._kx_secret = kx_secret
        self._kx_public = kx_public
        self.index = index
        self.k, self.n, self.segment_size = k, n, segment_size
        self.manifest_copies = manifest_copies
        if not 1 <= parallel_segments <= 16:
            raise LocalError("parallel_segments is 1..16")
        self.parallel_segments = parallel_segments
        self.timeout = timeout
        self._clock = clock
        self._rng = rng
        # put/get seal, code and hash in one worker thread of their own (a segment at a
        # time, so the loop keeps moving frames): one thread means one malloc arena, not
        # one per pool thread each holding freed segment buffers (peak RSS)
        self._codec: concurrent.futures.ThreadPoolExecutor | None = None

    async def _in_codec(self, fn: Callable[..., T], *args: object) -> T:
        if self._codec is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._codec, fn, *args)

    @contextlib.contextmanager
    def _codec_thread(self) -> Iterator[None]:
        """The codec worker for one put/get (nested calls share the outer one)."""
        if self._codec is not None:
            yield
            return
        self._codec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="storage-codec")
        try:
            yield
        finally:
            self._codec.shutdown(wait=True)
            self._codec = None

    def _writer(self) -> Signer:
        """The owner's signer: a client built without one only reads (a task's executor)."""
        if self._signer is None:
            raise LocalError("this storage client reads only (it has no signer)")
        return self._signer

    # ---------------------------------------------------------------- nodes

    async def nodes(self) -> list[Candidate]:
        """The live storage nodes, from the index node's ``storage.nodes``."""
        reply = await self._req.request(self.index, MSG_NODES, b"{}", timeout=self.timeout)
        listed = NodeList.model_validate_json(reply.body_bytes, strict=True)
        return [Candidate(e.node_id, e.failure_domain) for e in listed.nodes]

    @staticmethod
    def _name_key(owner: str, name: str) -> bytes:
        return hashlib.sha256(f"{owner}\x00{name}".encode()).digest()[:16]

    # ------------------------------------------------------------------ put

    async def put(
        self,
        name: str,
        data: bytes | BinaryIO,
        *,
        size: int | None = None,
        readers: dict[str, bytes] | None = None,
        nodes: list[Candidate] | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> Manifest:
        """Store ``data`` (bytes or a binary file read segment by segment) as ``name``.

        ``readers`` maps other node ids to their X25519 keys (certificates'
        ``kx_key``); the owner is always a reader.
        """
        stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        if size is None:
            size = (
                os.fstat(stream.fileno()).st_size
                if not isinstance(data, bytes | bytearray)
                else len(data)
            )
        candidates = nodes if nodes is not None else await self.nodes()
        object_key = self._rng(16)
        placement = place(object_key, candidates, self.n)
        plan = PutPlan(
            name=name,
            owner=self.node_id,
            signer=self._writer(),
            size=size,
            placement=placement,
            readers={self.node_id: self._kx_public, **(readers or {})},
            k=self.k,
            n=self.n,
            segment_size=self.segment_size,
            created_ms=int(self._clock() * 1000),
            rng=self._rng,
        )
        # up to `parallel_segments` segments' transfers in flight: the next segment is
        # sealed and coded while the previous one's shards travel
        with self._codec_thread():
            inflight: collections.deque[asyncio.Future[list[None]]] = collections.deque()
            try:
                for index in range(plan.count):
                    want = min(self.segment_size, size - index * self.segment_size)
                    chunk = stream.read(want)
                    if len(chunk) != want:
                        raise LocalError(f"{name}: the file ended early (segment {index})")
                    # seal + code + hash off the loop: acknowledgements keep flowing meanwhile
                    encoded = await self._in_codec(plan.encode, index, chunk)
                    del chunk
                    puts = plan.accept(encoded)
                    del encoded
                    inflight.append(asyncio.gather(*(self._put_shard(plan, p) for p in puts)))
                    del puts
                    while len(inflight) >= self.parallel_segments or (
                        inflight and index == plan.count - 1
                    ):
                        await inflight.popleft()
                        self._check_put(plan, name, placement)
                        if progress is not None:
                            progress(plan.count - plan.pending_segments(), plan.count)
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)
                await self._abort(plan.object_id.hex(), placement)
                raise
        manifest, blob = plan.finish()
        await self._put_manifest(manifest, blob, candidates)
        return manifest

    @staticmethod
    def _check_put(plan: PutPlan, name: str, placement: Sequence[str]) -> None:
        if plan.failed_shards:
            seg, idx, why = plan.failed_shards[0]
            raise LocalError(
                f"{name}: shard {idx} of segment {seg} was refused by "
                f"{placement[idx]} ({why}); nothing was kept"
            )

    async def _put_shard(self, plan: PutPlan, put: ShardPut) -> None:
        body = ShardPutBody(object_id=put.object_id.hex(), hash=put.hash.hex())
        try:
            await self._req.request(put.node, MSG_SHARD_PUT, body, [put.data], timeout=self.timeout)
        except (SecureMeshError, TimeoutError) as exc:
            plan.failed(put.segment, put.index, _reason(exc))
        else:
            plan.stored(put.segment, put.index)

    async def _abort(self, object_id: str, placement: Sequence[str]) -> None:
        await asyncio.gather(
            *(
                self._quiet(node, MSG_SHARD_DELETE, ObjectRef(object_id=object_id))
                for node in placement
            )
        )

    async def _quiet(self, node: str, msg_type: str, body: BaseModel) -> bool:
        try:
            reply = await self._req.request(node, msg_type, body, timeout=self.timeout)
        except (SecureMeshError, TimeoutError):
            return False
        return Done.model_validate_json(reply.body_bytes, strict=True).changed

    def _manifest_nodes(self, owner: str, name: str, candidates: Sequence[Candidate]) -> list[str]:
        key = self._name_key(owner, name)
        return sorted(
            {c.node_id for c in candidates}, key=lambda node: -rendezvous_score(key, node)
        )

    async def _put_manifest(
        self, manifest: Manifest, blob: bytes, candidates: Sequence[Candidate]
    ) -> None:
        ref = ManifestRef(owner=self.node_id, name=manifest.name)
        copies = min(self.manifest_copies, len(candidates))
        stored = 0
        # the index (cloud) keeps a copy too: it challenges the shards' holders
        if self.index not in {c.node_id for c in candidates}:
            with contextlib.suppress(SecureMeshError, TimeoutError):
                await self._req.request(
                    self.index, MSG_MANIFEST_PUT, ref, [blob], timeout=self.timeout
                )
        for node in self._manifest_nodes(self.node_id, manifest.name, candidates):
            try:
                await self._req.request(node, MSG_MANIFEST_PUT, ref, [blob], timeout=self.timeout)
            except (SecureMeshError, TimeoutError):
                continue
            stored += 1
            if stored == copies:
                return
        raise LocalError(
            f"{manifest.name}: the manifest was stored on {stored} nodes, not {copies}"
        )

    # ------------------------------------------------------------------ get

    async def stat(
        self,
        name: str,
        *,
        owner: str | None = None,
        owner_key: bytes | None = None,
        nodes: list[Candidate] | None = None,
    ) -> Manifest:
        """The verified manifest of ``owner``'s (default: our) object ``name``."""
        owner = owner or self.node_id
        own = self._signer.verify_key if self._signer is not None else None
        verify_key = owner_key or (own if owner == self.node_id else None)
        if verify_key is None:
            raise LocalError("reading another owner's object needs the owner's verify key")
        candidates = nodes if nodes is not None else await self.nodes()
        ref = ManifestRef(owner=owner, name=name)
        refused = 0
        for node in self._manifest_nodes(owner, name, candidates):
            try:
                reply = await self._req.request(node, MSG_MANIFEST_GET, ref, timeout=self.timeout)
                if len(reply.raw_frames) != 1:
                    refused += 1
                    continue
                return open_manifest(reply.raw_frames[0], verify_key)
            except (SecureMeshError, TimeoutError) as exc:
                if not isinstance(exc, RemoteCallError) or exc.code != "not_found":
                    refused += 1
        raise ObjectUnreadable(
            f"{owner}/{name}: no valid manifest on {len(candidates)} nodes ({refused} refused)"
        )

    async def get_into(
        self,
        name: str,
        write: Callable[[bytes], object],
        *,
        owner: str | None = None,
        owner_key: bytes | None = None,
        nodes: list[Candidate] | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> GetReport:
        """Stream the object into ``write`` segment by segment; the report of what failed."""
        manifest = await self.stat(name, owner=owner, owner_key=owner_key, nodes=nodes)
        placement = await self.locate(manifest)
        plan = GetPlan.for_reader(manifest, self.node_id, self._kx_secret, placement)
        # up to `parallel_segments` segments fetched and decoded ahead, written in order
        with self._codec_thread():
            ahead: collections.deque[asyncio.Task[bytes]] = collections.deque()
            written = 0
            try:
                for segment in range(plan.count):
                    ahead.append(asyncio.ensure_future(self._fetch_segment(plan, segment)))
                    while len(ahead) >= self.parallel_segments or (
                        ahead and segment == plan.count - 1
                    ):
                        write(await ahead.popleft())
                        written += 1
                        if progress is not None:
                            progress(written, plan.count)
            finally:
                for task in ahead:
                    task.cancel()
                await asyncio.gather(*ahead, return_exceptions=True)
        return GetReport(manifest, list(plan.corrupt), list(plan.missing_shards))

    async def locate(self, manifest: Manifest) -> builtins.list[str]:
        """Where each shard column of ``manifest`` is now: its placement with the index's
        automatic repairs applied (``storage.locate``); the placement if the index does not
        answer. Not trusted for integrity: every shard is checked against the manifest."""
        placement = list(manifest.placement)
        try:
            reply = await self._req.request(
                self.index, MSG_LOCATE, ObjectRef(object_id=manifest.object_id),
                timeout=self.timeout,
            )  # fmt: skip
            moves = Located.model_validate_json(reply.body_bytes, strict=True).moves
        except (SecureMeshError, TimeoutError, ValueError):
            return placement
        for move in moves:
            column = move.column
            if (
                column < manifest.n
                and placement[column] == move.from_node
                and move.node not in placement
            ):
                placement[column] = move.node
        return placement

    async def _fetch_segment(self, plan: GetPlan, segment: int) -> bytes:
        """k verified shards of ``segment`` (others asked for each that fails), then the
        segment rebuilt and opened in a worker thread."""
        while not plan.ready(segment):
            wanted = plan.wanted(segment)
            await asyncio.gather(*(self._get_shard(plan, want) for want in wanted))
        return await self._in_codec(plan.decode, segment, plan.take(segment))

    async def get(
        self,
        name: str,
        *,
        owner: str | None = None,
        owner_key: bytes | None = None,
        nodes: builtins.list[Candidate] | None = None,
    ) -> tuple[bytes, GetReport]:
        """The whole object in memory (small objects; use :meth:`get_into` to stream)."""
        out = io.BytesIO()
        report = await self.get_into(name, out.write, owner=owner, owner_key=owner_key, nodes=nodes)
        return out.getvalue(), report

    async def _get_shard(self, plan: GetPlan, want: ShardGet) -> None:
        try:
            reply = await self._req.request(
                want.node, MSG_SHARD_GET, ShardRef(hash=want.hash.hex()), timeout=self.timeout
            )
        except (SecureMeshError, TimeoutError) as exc:
            plan.missing(want.segment, want.index, _reason(exc))
            return
        if len(reply.raw_frames) != 1:
            plan.missing(want.segment, want.index, "malformed")
            return
        plan.received(want.segment, want.index, reply.raw_frames[0])

    # ---------------------------------------------------------- list/delete

    async def list(self, *, nodes: builtins.list[Candidate] | None = None) -> builtins.list[str]:
        """Our object names, as the storage nodes know them (union of their manifests)."""
        candidates = nodes if nodes is not None else await self.nodes()
        names: set[str] = set()
        for c in candidates:
            try:
                reply = await self._req.request(
                    c.node_id, MSG_MANIFEST_LIST, b"{}", timeout=self.timeout
                )
            except (SecureMeshError, TimeoutError):
                continue
            names.update(NameList.model_validate_json(reply.body_bytes, strict=True).names)
        return sorted(names)

    async def delete(self, name: str, *, nodes: builtins.list[Candidate] | None = None) -> Manifest:
        """Delete our object: its shards on the placement nodes, then its manifests."""
        candidates = nodes if nodes is not None else await self.nodes()
        manifest = await self.stat(name, nodes=candidates)
        await self._abort(manifest.object_id, manifest.placement)
        ref = ManifestRef(owner=self.node_id, name=name)
        await asyncio.gather(
            *(self._quiet(c.node_id, MSG_MANIFEST_DELETE, ref) for c in candidates)
        )
        return manifest

    # --------------------------------------------------------------- repair

    async def repair(
        self, name: str, *, nodes: builtins.list[Candidate] | None = None
    ) -> RepairReport:
        """Restore full redundancy of our object ``name`` onto other live nodes.

        Pass 1 reads every shard of every segment (hash-checked); a placement
        column with any missing or corrupt shard is moved. Pass 2 rebuilds
        those shards from k good ones per segment (:func:`regenerate_shards`:
        byte-identical, so the hashes and Merkle root stay), stores them on
        replacement nodes (:func:`replacements`, same failure-domain rule),
        re-signs the manifest with the new placement and stores it; the old
        nodes' references are dropped where they still answer. Memory is one
        segment's shards at a time; an unreachable node is asked once.

        Columns on unreachable nodes get replacements first; a column whose
        node answered but lost or damaged shards moves too if a free node is
        left, else it is **refilled in place** (that node takes the rebuilt
        shards back: :meth:`ShardStore.put` rewrites a missing or damaged blob
        of the same address) -- with exactly ``n`` storage nodes there is no
        other place, and a column left short would stay short.
        """
        candidates = nodes if nodes is not None else await self.nodes()
        manifest = await self.stat(name, nodes=candidates)
        m, dead = manifest, set[str]()
        lost: set[int] = set()
        for seg in range(len(m.segments)):
            got = await asyncio.gather(*(self._fetch(m, seg, j, dead) for j in range(m.n)))
            lost.update(j for j, data in enumerate(got) if data is None)
        if not lost:
            return RepairReport(manifest)
        kept = [node for j, node in enumerate(m.placement) if j not in lost]
        if len(kept) < m.k:
            raise ObjectUnreadable(f"{name}: only {len(kept)} of {m.k} needed shard columns remain")
        columns = sorted(lost)
        live = {c.node_id for c in candidates}
        gone = [j for j in columns if m.placement[j] in dead or m.placement[j] not in live]
        spare = len(live - set(m.placement))
        move = gone + [j for j in columns if j not in gone][: max(0, spare - len(gone))]
        fresh = replacements(m.object_id_bytes, candidates, m.placement, len(move))
        new_node = dict(zip(move, fresh, strict=True))
        refill = {j: m.placement[j] for j in columns if j not in new_node}
        new_node.update(refill)
        rebuilt = 0
        for seg in range(len(m.segments)):
            good: dict[int, bytes] = {}
            for j in (j for j in range(m.n) if j not in lost):
                data = await self._fetch(m, seg, j, dead)
                if data is not None:
                    good[j] = data
                if len(good) == m.k:
                    break
            if len(good) < m.k:
                raise ObjectUnreadable(f"{name}: segment {seg} lost shards during repair")
            regenerated = regenerate_shards(good, m.k, m.n, columns)
            del good
            await asyncio.gather(
                *(self._store_shard(new_node[j], m.object_id, regenerated[j]) for j in columns)
            )
            rebuilt += len(columns)
        placement = [new_node.get(j, node) for j, node in enumerate(m.placement)]
        repaired = Manifest.model_validate({**m.model_dump(), "placement": placement})
        await self._put_manifest(repaired, sign_manifest(repaired, self._writer()), candidates)
        await asyncio.gather(
            *(
                self._quiet(m.placement[j], MSG_SHARD_DELETE, ObjectRef(object_id=m.object_id))
                for j in move
                if m.placement[j] not in dead
            )
        )
        moved = {j: (m.placement[j], new_node[j]) for j in move}
        return RepairReport(repaired, moved, rebuilt, refill)

    async def _fetch(self, m: Manifest, seg: int, j: int, dead: set[str]) -> bytes | None:
        """Shard j of segment seg if its node delivers it intact; None otherwise."""
        node = m.placement[j]
        if node in dead:
            return None
        try:
            reply = await self._req.request(
                node, MSG_SHARD_GET, ShardRef(hash=m.segments[seg].shards[j]), timeout=self.timeout
            )
        except (TimeoutError, TransportError):
            dead.add(node)
            return None
        except SecureMeshError:
            return None
        if len(reply.raw_frames) != 1:
            return None
        data = bytes(reply.raw_frames[0])
        return data if shard_hash(data) == m.shard_hash(seg, j) else None

    async def _store_shard(self, node: str, object_id: str, data: bytes) -> None:
        body = ShardPutBody(object_id=object_id, hash=shard_hash(data).hex())
        await self._req.request(node, MSG_SHARD_PUT, body, [data], timeout=self.timeout)

    # ---------------------------------------------------------------- share

    async def share(
        self,
        name: str,
        reader_id: str,
        reader_kx_public: bytes,
        *,
        nodes: builtins.list[Candidate] | None = None,
    ) -> Manifest:
        """Let ``reader_id`` read our object ``name``: wrap its data key for the reader.

        ``reader_kx_public`` is the reader's X25519 key (its certificate's
        ``kx_key``). The data key is unwrapped with our key, sealed to the
        reader's (:func:`share_manifest`), and the manifest is re-signed as a
        new version (later ``created_ms``; shards unchanged) and stored where
        the old one was. The reader then ``get``s it with ``owner=`` our node id
        and ``owner_key=`` our verify key. Recorded as ``storage.share``
        (details: reader, action) through the client's audit recorder.
        """
        candidates = nodes if nodes is not None else await self.nodes()
        manifest = await self.stat(name, nodes=candidates)
        data_key = unwrap_data_key(manifest, self.node_id, self._kx_secret)
        shared = share_manifest(
            manifest,
            data_key=data_key,
            reader_id=reader_id,
            reader_kx_public=reader_kx_public,
            created_ms=self._next_version(manifest),
        )
        del data_key
        await self._publish(shared, candidates, reader_id, "share")
        return shared

    async def unshare(
        self, name: str, reader_id: str, *, nodes: builtins.list[Candidate] | None = None
    ) -> Manifest:
        """Drop ``reader_id``'s wrapped key from a new manifest version of ``name``.

        Unsharing affects future versions only: a reader that already unwrapped
        the data key can decrypt the shards written under it for as long as they
        exist; put the object again (a fresh data key) to cut it off for good.
        """
        candidates = nodes if nodes is not None else await self.nodes()
        manifest = await self.stat(name, nodes=candidates)
        unshared = unshare_manifest(
            manifest, reader_id=reader_id, created_ms=self._next_version(manifest)
        )
        await self._publish(unshared, candidates, reader_id, "unshare")
        return unshared

    def _next_version(self, manifest: Manifest) -> int:
        return max(int(self._clock() * 1000), manifest.created_ms + 1)

    async def _publish(
        self, manifest: Manifest, candidates: Sequence[Candidate], reader: str, action: str
    ) -> None:
        await self._put_manifest(manifest, sign_manifest(manifest, self._writer()), candidates)
        if self._audit is not None:
            self._audit.record(
                KIND_SHARE,
                ("object", manifest.object_id),
                details={"name": manifest.name, "reader": reader, "action": action},
            )

    # ------------------------------------------------------------ challenge

    async def challenge(
        self, manifest: Manifest, segment: int, index: int, *, count: int = 8
    ) -> tuple[bool, str]:
        """Challenge the node holding shard ``index`` of ``segment`` to prove it has it.

        A fresh nonce picks ``count`` blocks; the node answers with them and
        their Merkle paths, checked against the shard's address in the
        (verified) manifest. Returns (passed, reason) and records a
        ``storage.challenge`` audit event when the client has an audit hook.
        """
        node = manifest.placement[index]
        reason = await challenge_shard(
            self._req,
            manifest,
            segment,
            index,
            nonce=self._rng(NONCE_SIZE),
            count=count,
            timeout=self.timeout,
        )
        passed = reason == "ok"
        if self._audit is not None:
            self._audit.record(
                KIND_CHALLENGE,
                ("object", manifest.object_id),
                outcome="success" if passed else "failure",
                details={"node": node, "segment": segment, "shard": index, "result": reason},
            )
        return passed, reason
