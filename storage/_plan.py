"""Put and get *plans*: the storage protocol as pure state machines (no sockets, no files).

Like h11's connection object, a plan takes events in and hands out the frames
to send; the client (:mod:`securemesh.storage._client`) only moves them.

**PutPlan** (writer) ::

    OPEN --segment(p), len(p) == segment_size--> OPEN
    OPEN --segment(p), len(p) <  segment_size--> SEALED   (the last, maybe empty)
    OPEN/SEALED --finish()--> DONE                          (all shards acknowledged)

``segment`` seals and codes one segment and returns its n :class:`ShardPut`
(node, address, bytes); the caller sends them and reports each result with
``stored`` / ``failed``. The plan keeps hashes only, never a segment after it
returns: memory is one segment's shards, whatever the object's size. The
object's segment count is part of every segment's associated data, so the
writer must know the object size up front (``size``).
``finish`` requires every shard to be acknowledged and returns the signed
manifest.

**GetPlan** (reader), per segment ::

    wanted(i) -> the next shards to fetch (k at first, more after failures)
    received(i, j, data) -> verified against the manifest's hash, else corrupt
    missing(i, j)        -> that node did not deliver
    plaintext(i)         -> once k verified shards arrived: rebuild and open

A corrupt or missing shard is recorded (``corrupt``, ``missing``) and
replaced by another; a node that failed once is asked last for later
segments. When fewer than k shards can still arrive, the plan raises
:class:`ObjectUnreadable`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from securemesh.crypto import aead, boxes
from securemesh.crypto.signing import Signer
from securemesh.errors import LocalError
from securemesh.storage._codec import (
    OBJECT_ID_SIZE,
    EncodedSegment,
    check_coding,
    decode_segment,
    encode_segment,
    shard_hash,
)
from securemesh.storage._errors import ObjectUnreadable
from securemesh.storage._manifest import (
    MAX_OBJECT_SIZE,
    MAX_READERS,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    KeyOpener,
    Manifest,
    SegmentEntry,
    merkle_root_of,
    sign_manifest,
    unwrap_data_key,
)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_N",
    "DEFAULT_SEGMENT_SIZE",
    "GetPlan",
    "PutPlan",
    "ShardGet",
    "ShardPut",
]

DEFAULT_K = 4
DEFAULT_N = 6
DEFAULT_SEGMENT_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ShardPut:
    """Send ``data`` (content address ``hash``) to ``node`` as shard ``index`` of ``segment``."""

    node: str
    object_id: bytes
    segment: int
    index: int
    hash: bytes
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ShardGet:
    """Fetch the shard with content address ``hash`` from ``node``."""

    node: str
    segment: int
    index: int
    hash: bytes


class _PutState(Enum):
    OPEN = "open"
    SEALED = "sealed"
    DONE = "done"


class PutPlan:
    """The writer's side of one object (module doc)."""

    def __init__(
        self,
        *,
        name: str,
        owner: str,
        signer: Signer,
        size: int,
        placement: Sequence[str],
        readers: Mapping[str, bytes],
        k: int = DEFAULT_K,
        n: int = DEFAULT_N,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        created_ms: int = 0,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        check_coding(k, n)
        if len(placement) != n or len(set(placement)) != n:
            raise LocalError(f"placement must name {n} distinct nodes")
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise LocalError(f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE} bytes")
        if not 0 <= size <= MAX_OBJECT_SIZE:
            raise LocalError(f"object size must be 0..{MAX_OBJECT_SIZE} bytes")
        if not 1 <= len(readers) <= MAX_READERS:
            raise LocalError(f"an object has 1..{MAX_READERS} readers")
        self.name, self.owner, self.size = name, owner, size
        self.k, self.n, self.segment_size = k, n, segment_size
        self.placement = list(placement)
        self.count = math.ceil(size / segment_size)
        self._signer = signer
        self._rng = rng
        self._created_ms = created_ms
        self.object_id = rng(OBJECT_ID_SIZE)
        self._key = rng(aead.KEY_SIZE)
        self._readers = {rid: boxes.wrap_key(kx, self._key).hex() for rid, kx in readers.items()}
        self._segments: list[SegmentEntry] = []
        self._unacked: set[tuple[int, int]] = set()
        self.failed_shards: list[tuple[int, int, str]] = []
        self.state = _PutState.OPEN if self.count else _PutState.SEALED

    def segment(self, plaintext: bytes | memoryview) -> list[ShardPut]:
        """Seal and code the next segment; returns its n shard transfers."""
        return self.accept(self.encode(len(self._segments), plaintext))

    def encode(self, index: int, plaintext: bytes | memoryview) -> EncodedSegment:
        """Seal and code segment ``index`` without touching the plan's state.

        The CPU-heavy half of :meth:`segment`, safe to run in a worker thread
        while the plan's owner keeps handling acknowledgements; hand the result
        to :meth:`accept` (in order) on the owner's side.
        """
        if self.state is not _PutState.OPEN:
            raise LocalError(f"put plan is {self.state.value}: no more segments")
        if not 0 <= index < self.count:
            raise LocalError(f"no segment {index}")
        last = index == self.count - 1
        expected = self.size - index * self.segment_size if last else self.segment_size
        if len(plaintext) != expected:
            raise LocalError(f"segment {index} must be {expected} bytes, got {len(plaintext)}")
        return encode_segment(
            self._key, self.object_id, index, self.count, plaintext, self.k, self.n, rng=self._rng
        )

    def accept(self, enc: EncodedSegment) -> list[ShardPut]:
        """Record the next encoded segment (from :meth:`encode`); its n shard transfers."""
        if self.state is not _PutState.OPEN:
            raise LocalError(f"put plan is {self.state.value}: no more segments")
        index = len(self._segments)
        if enc.index != index or len(enc.shards) != self.n:
            raise LocalError(f"expected segment {index}, got segment {enc.index}")
        self._segments.append(
            SegmentEntry(
                cipher_size=enc.cipher_size,
                padding=enc.padding,
                shards=[h.hex() for h in enc.hashes],
            )
        )
        if index == self.count - 1:
            self.state = _PutState.SEALED
        self._unacked.update((index, j) for j in range(self.n))
        return [
            ShardPut(self.placement[j], self.object_id, index, j, enc.hashes[j], enc.shards[j])
            for j in range(self.n)
        ]

    def stored(self, segment: int, index: int) -> None:
        """Shard ``index`` of ``segment`` is acknowledged by its node."""
        self._unacked.discard((segment, index))

    def failed(self, segment: int, index: int, reason: str) -> None:
        """Its node refused or did not answer: the put cannot finish (recorded)."""
        self.failed_shards.append((segment, index, reason))

    @property
    def pending(self) -> int:
        """Shards sent and not yet acknowledged."""
        return len(self._unacked)

    def pending_segments(self) -> int:
        """Segments not yet given or with a shard not yet acknowledged."""
        return self.count - len(self._segments) + len({seg for seg, _ in self._unacked})

    def finish(self) -> tuple[Manifest, bytes]:
        """Every segment given and every shard acknowledged: the manifest and its signed form."""
        if self.state is not _PutState.SEALED:
            raise LocalError(f"put plan is {self.state.value}: segments missing")
        if self._unacked or self.failed_shards:
            raise LocalError(
                f"{len(self._unacked)} shards unacknowledged, {len(self.failed_shards)} failed"
            )
        manifest = Manifest(
            object_id=self.object_id.hex(),
            name=self.name,
            owner=self.owner,
            size=self.size,
            segment_size=self.segment_size,
            k=self.k,
            n=self.n,
            created_ms=self._created_ms,
            placement=self.placement,
            segments=self._segments,
            merkle_root=merkle_root_of(self._segments).hex(),
            readers=self._readers,
        )
        self.state = _PutState.DONE
        self._key = b""
        return manifest, sign_manifest(manifest, self._signer)


class _Segment:
    __slots__ = ("asked", "good", "lost")

    def __init__(self) -> None:
        self.asked: set[int] = set()
        self.good: dict[int, bytes] = {}
        self.lost: set[int] = set()


class GetPlan:
    """The reader's side of one verified manifest (module doc)."""

    def __init__(
        self, manifest: Manifest, data_key: bytes, placement: Sequence[str] | None = None
    ) -> None:
        if len(data_key) != aead.KEY_SIZE:
            raise LocalError("a data key is 32 bytes")
        if placement is not None and len(placement) != manifest.n:
            raise LocalError(f"a placement names {manifest.n} nodes")
        self.manifest = manifest
        #: where each shard column is asked for: the manifest's placement, or the index's
        #: view after repairs (a wrong node only costs a missing shard: hashes decide)
        self.placement = list(placement if placement is not None else manifest.placement)
        self._key = data_key
        self._segments: dict[int, _Segment] = {}
        self._bad_nodes: set[str] = set()
        #: (segment, shard index, node) of every shard that arrived but did not verify
        self.corrupt: list[tuple[int, int, str]] = []
        #: (segment, shard index, node, reason) of every shard that did not arrive
        self.missing_shards: list[tuple[int, int, str, str]] = []

    @classmethod
    def for_reader(
        cls,
        manifest: Manifest,
        reader_id: str,
        reader_kx_private: KeyOpener,
        placement: Sequence[str] | None = None,
    ) -> GetPlan:
        """Unwrap the data key for this reader (AuthenticationError if it has none)."""
        return cls(manifest, unwrap_data_key(manifest, reader_id, reader_kx_private), placement)

    @property
    def count(self) -> int:
        return len(self.manifest.segments)

    def _seg(self, segment: int) -> _Segment:
        if not 0 <= segment < self.count:
            raise LocalError(f"no segment {segment}")
        return self._segments.setdefault(segment, _Segment())

    def wanted(self, segment: int) -> list[ShardGet]:
        """The shards to ask for now so that k good ones can arrive (may be empty)."""
        m, seg = self.manifest, self._seg(segment)
        outstanding = len(seg.asked) - len(seg.good) - len(seg.lost)
        need = m.k - len(seg.good) - outstanding
        fresh = [j for j in range(m.n) if j not in seg.asked]
        if len(seg.good) + outstanding + len(fresh) < m.k:
            raise ObjectUnreadable(
                f"segment {segment} of {m.name!r}: only {len(seg.good) + outstanding} of "
                f"{m.k} needed shards can still arrive"
            )
        fresh.sort(key=lambda j: (self.placement[j] in self._bad_nodes, j))
        picks = fresh[: max(need, 0)]
        seg.asked.update(picks)
        return [ShardGet(self.placement[j], segment, j, m.shard_hash(segment, j)) for j in picks]

    def received(self, segment: int, index: int, data: bytes | memoryview) -> bool:
        """A shard arrived: kept if it hashes to the manifest's address, else recorded corrupt."""
        seg = self._seg(segment)
        if index not in seg.asked or index in seg.good or index in seg.lost:
            raise LocalError(f"shard {index} of segment {segment} was not asked for")
        node = self.placement[index]
        if shard_hash(data) != self.manifest.shard_hash(segment, index):
            seg.lost.add(index)
            self.corrupt.append((segment, index, node))
            self._bad_nodes.add(node)
            return False
        seg.good[index] = bytes(data)
        return True

    def missing(self, segment: int, index: int, reason: str) -> None:
        """The shard's node did not deliver it (refused, unknown, unreachable)."""
        seg = self._seg(segment)
        if index not in seg.asked or index in seg.good or index in seg.lost:
            raise LocalError(f"shard {index} of segment {segment} was not asked for")
        seg.lost.add(index)
        node = self.placement[index]
        self.missing_shards.append((segment, index, node, reason))
        self._bad_nodes.add(node)

    def ready(self, segment: int) -> bool:
        return len(self._seg(segment).good) >= self.manifest.k

    def plaintext(self, segment: int) -> bytes:
        """Rebuild and authenticate the segment from k verified shards; frees them."""
        return self.decode(segment, self.take(segment))

    def take(self, segment: int) -> dict[int, bytes]:
        """The k verified shards of a ready segment, handed over (the plan forgets them)."""
        m, seg = self.manifest, self._seg(segment)
        if len(seg.good) < m.k:
            raise LocalError(f"segment {segment} has {len(seg.good)} of {m.k} shards")
        del self._segments[segment]
        return seg.good

    def decode(self, segment: int, shards: Mapping[int, bytes]) -> bytes:
        """Rebuild and open ``segment`` from shards :meth:`take` returned (thread-safe:
        reads only the manifest and the key)."""
        m = self.manifest
        return decode_segment(
            self._key,
            m.object_id_bytes,
            segment,
            self.count,
            m.segments[segment].cipher_size,
            shards,
            m.k,
            m.n,
        )
