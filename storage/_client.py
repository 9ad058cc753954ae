"""The storage client: drives put/get plans over a node's requests, n transfers in parallel.

``StorageClient`` needs something that sends a REQUEST and returns the
verified reply: a :class:`~securemesh.node.NodeContext` (a service on a
node), or an adapter over the SDK device. It never sees a socket.

* ``put(name, bytes | binary file)`` — asks ``index`` (the cloud) for the live
  storage nodes (``storage.nodes``), places the object by rendezvous hashing,
  then for each segment sends its n shards to the n nodes concurrently and
  waits for all of them before reading the next segment: peak memory is about
  ``segment_size * (1 + n/k)``, whatever the object's size. The signed
  manifest goes to ``manifest_copies`` nodes chosen by rendezvous hashing on
  ``owner/name``, so any reader computes the same nodes.
* ``get(name)`` / ``get_into(name, write)`` — finds the manifest (the first
  copy whose owner signature verifies; a forged one is skipped), unwraps the
  data key, and for each segment asks k nodes at once, then others for every
  shard that is missing, refused or corrupt (hash checked by the plan); the
  report lists them.
* ``stat`` (the verified manifest), ``list`` and ``delete``.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from pydantic import BaseModel

from securemesh.crypto.signing import Signer
from securemesh.errors import LocalError, RemoteCallError, SecureMeshError
from securemesh.storage._errors import ObjectUnreadable
from securemesh.storage._manifest import Manifest, open_manifest
from securemesh.storage._messages import (
    MSG_MANIFEST_DELETE,
    MSG_MANIFEST_GET,
    MSG_MANIFEST_LIST,
    MSG_MANIFEST_PUT,
    MSG_NODES,
    MSG_SHARD_DELETE,
    MSG_SHARD_GET,
    MSG_SHARD_PUT,
    Done,
    ManifestRef,
    NameList,
    NodeList,
    ObjectRef,
    ShardPutBody,
    ShardRef,
)
from securemesh.storage._placement import Candidate, place, rendezvous_score
from securemesh.storage._plan import (
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SEGMENT_SIZE,
    GetPlan,
    PutPlan,
    ShardGet,
    ShardPut,
)

__all__ = ["GetReport", "ReplyLike", "Requester", "StorageClient"]


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
        signer: Signer,
        kx_secret: bytes,
        kx_public: bytes,
        index: str,
        k: int = DEFAULT_K,
        n: int = DEFAULT_N,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        manifest_copies: int = 3,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._req = requester
        self.node_id = node_id
        self._signer = signer
        self._kx_secret = kx_secret
        self._kx_public = kx_public
        self.index = index
        self.k, self.n, self.segment_size = k, n, segment_size
        self.manifest_copies = manifest_copies
        self.timeout = timeout
        self._clock = clock
        self._rng = rng

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
            signer=self._signer,
            size=size,
            placement=placement,
            readers={self.node_id: self._kx_public, **(readers or {})},
            k=self.k,
            n=self.n,
            segment_size=self.segment_size,
            created_ms=int(self._clock() * 1000),
            rng=self._rng,
        )
        for index in range(plan.count):
            want = min(self.segment_size, size - index * self.segment_size)
            chunk = stream.read(want)
            if len(chunk) != want:
                raise LocalError(f"{name}: the file ended early (segment {index})")
            puts = plan.segment(chunk)
            del chunk
            await asyncio.gather(*(self._put_shard(plan, put) for put in puts))
            if plan.failed_shards:
                seg, idx, why = plan.failed_shards[0]
                await self._abort(plan.object_id.hex(), placement)
                raise LocalError(
                    f"{name}: shard {idx} of segment {seg} was refused by "
                    f"{placement[idx]} ({why}); nothing was kept"
                )
        manifest, blob = plan.finish()
        await self._put_manifest(manifest, blob, candidates)
        return manifest

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
        verify_key = owner_key or (self._signer.verify_key if owner == self.node_id else None)
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
    ) -> GetReport:
        """Stream the object into ``write`` segment by segment; the report of what failed."""
        manifest = await self.stat(name, owner=owner, owner_key=owner_key, nodes=nodes)
        plan = GetPlan.for_reader(manifest, self.node_id, self._kx_secret)
        for segment in range(plan.count):
            while not plan.ready(segment):
                wanted = plan.wanted(segment)
                await asyncio.gather(*(self._get_shard(plan, want) for want in wanted))
            write(plan.plaintext(segment))
        return GetReport(manifest, list(plan.corrupt), list(plan.missing_shards))

    async def get(self, name: str, **kwargs: object) -> tuple[bytes, GetReport]:
        """The whole object in memory (small objects; use :meth:`get_into` to stream)."""
        out = io.BytesIO()
        report = await self.get_into(name, out.write, **kwargs)  # type: ignore[arg-type]
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
