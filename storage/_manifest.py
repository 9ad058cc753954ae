"""The object manifest: what an object is, where its shards are, who may read it; owner-signed.

Format (docs/storage.md §2)
---------------------------
A manifest is canonical JSON (keys sorted, no whitespace, ASCII) of
:class:`Manifest`. Its signed form, the one stored on edges and sent on the
wire as a raw frame, is ::

    b"SMM1" || u32be(len(json)) || json || Ed25519 signature (64)

where the signature (RFC 8032) is the owner's identity key over
``"securemesh.storage.manifest.v1\\0" || json``. :func:`open_manifest` checks
the size, then the signature against the verify key the *caller* trusts for
the owner (its certificate), and only then parses: strictly (pydantic strict
mode, every field bounded, unknown fields refused) and canonically (the bytes
must re-serialize identically, so duplicate keys or any second encoding of
the same manifest are refused). It returns the verified :class:`Manifest` or
raises; :func:`peek_owner_unverified` reads the claimed owner to look up that
key and says in its name that nothing is checked yet.

The shard hashes are leaves of an RFC 9162 Merkle tree (segment-major,
``MTH`` over ``SHA-256(0x00 || shard_hash)``, :mod:`securemesh.audit.merkle`),
whose root ``merkle_root`` is what a proof-of-storage audit compares against.
The data key is wrapped with a sealed box (:mod:`securemesh.crypto.boxes`)
to each reader's X25519 key (``readers``: node id -> hex); a node without an
entry cannot decrypt.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Annotated, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from securemesh.audit.merkle import leaf_hash, root_from_leaf_hashes
from securemesh.crypto import boxes
from securemesh.crypto.signing import Signer, verify_signature
from securemesh.errors import AuthenticationError, DecodeError, LocalError, SizeLimitExceeded
from securemesh.storage._codec import HASH_SIZE, MAX_N, OBJECT_ID_SIZE, SEGMENT_OVERHEAD

__all__ = [
    "KeyOpener",
    "MAX_MANIFEST_SIZE",
    "MAX_READERS",
    "MAX_SEGMENT_SIZE",
    "MAX_SEGMENTS",
    "Manifest",
    "SegmentEntry",
    "merkle_root_of",
    "open_manifest",
    "peek_owner_unverified",
    "share_manifest",
    "sign_manifest",
    "unshare_manifest",
    "unwrap_data_key",
]

MAGIC: Final = b"SMM1"
_HEAD = struct.Struct(">4sI")
_SIG_SIZE = 64
_DOMAIN: Final = b"securemesh.storage.manifest.v1\x00"
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
MAX_SEGMENTS: Final = 65_536
MAX_SEGMENT_SIZE: Final = 64 * 1024 * 1024
MIN_SEGMENT_SIZE: Final = 1024
MAX_READERS: Final = 256
MAX_OBJECT_SIZE: Final = MAX_SEGMENTS * MAX_SEGMENT_SIZE

NodeIdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ObjectName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,255}$")]
WrappedHex = Annotated[str, Field(pattern=r"^[0-9a-f]{2,512}$")]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")


class SegmentEntry(BaseModel):
    """One segment: its sealed size, the zero padding before coding, its n shard hashes."""

    model_config = _STRICT

    cipher_size: int = Field(ge=SEGMENT_OVERHEAD, le=MAX_SEGMENT_SIZE + SEGMENT_OVERHEAD)
    padding: int = Field(ge=0, lt=MAX_N)
    shards: list[Hex32] = Field(min_length=1, max_length=MAX_N)


class Manifest(BaseModel):
    """A verified object description (only :func:`open_manifest` returns one from bytes)."""

    model_config = _STRICT

    version: Literal[1] = 1
    object_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    name: ObjectName
    owner: NodeIdStr
    size: int = Field(ge=0, le=MAX_OBJECT_SIZE)
    segment_size: int = Field(ge=MIN_SEGMENT_SIZE, le=MAX_SEGMENT_SIZE)
    k: int = Field(ge=1, le=MAX_N)
    n: int = Field(ge=1, le=MAX_N)
    created_ms: int = Field(ge=0, lt=2**63)
    placement: list[NodeIdStr] = Field(min_length=1, max_length=MAX_N)
    segments: list[SegmentEntry] = Field(max_length=MAX_SEGMENTS)
    merkle_root: Hex32
    readers: dict[NodeIdStr, WrappedHex] = Field(min_length=1, max_length=MAX_READERS)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.k > self.n:
            raise ValueError("k exceeds n")
        if len(self.placement) != self.n or len(set(self.placement)) != self.n:
            raise ValueError("placement must name n distinct nodes")
        count = math.ceil(self.size / self.segment_size)
        if len(self.segments) != count:
            raise ValueError("segment count does not match size and segment_size")
        for i, seg in enumerate(self.segments):
            plain = self.segment_size if i < count - 1 else self.size - i * self.segment_size
            if seg.cipher_size != plain + SEGMENT_OVERHEAD:
                raise ValueError(f"segment {i}: cipher_size does not match its plaintext size")
            if seg.padding != (-seg.cipher_size) % self.k or len(seg.shards) != self.n:
                raise ValueError(f"segment {i}: padding or shard count inconsistent with k/n")
        if self.merkle_root != merkle_root_of(self.segments).hex():
            raise ValueError("merkle_root does not match the shard hashes")
        return self

    # convenience views ---------------------------------------------------

    @property
    def object_id_bytes(self) -> bytes:
        return bytes.fromhex(self.object_id)

    def shard_hash(self, segment: int, index: int) -> bytes:
        return bytes.fromhex(self.segments[segment].shards[index])

    def plaintext_size(self, segment: int) -> int:
        return self.segments[segment].cipher_size - SEGMENT_OVERHEAD

    def canonical(self) -> bytes:
        """The canonical JSON bytes (what the owner signs)."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()


def merkle_root_of(segments: list[SegmentEntry]) -> bytes:
    """RFC 9162 MTH over every shard hash, segment-major (empty object: the empty root)."""
    return root_from_leaf_hashes(
        [leaf_hash(bytes.fromhex(h)) for seg in segments for h in seg.shards]
    )


def sign_manifest(manifest: Manifest, signer: Signer) -> bytes:
    """The signed, framed manifest (module doc)."""
    body = manifest.canonical()
    if len(body) + _HEAD.size + _SIG_SIZE > MAX_MANIFEST_SIZE:
        raise LocalError("manifest too large: use a larger segment size")
    return _HEAD.pack(MAGIC, len(body)) + body + signer.sign(_DOMAIN + body)


def _split(blob: bytes | memoryview) -> tuple[bytes, bytes]:
    data = bytes(blob)
    if len(data) > MAX_MANIFEST_SIZE:
        raise SizeLimitExceeded("manifest too large")
    if len(data) < _HEAD.size + _SIG_SIZE:
        raise DecodeError("manifest too short")
    magic, length = _HEAD.unpack_from(data)
    if magic != MAGIC or _HEAD.size + length + _SIG_SIZE != len(data):
        raise DecodeError("not a signed manifest")
    return data[_HEAD.size : _HEAD.size + length], data[_HEAD.size + length :]


def peek_owner_unverified(blob: bytes | memoryview) -> str:
    """The owner the manifest *claims* (to find its key); NOT verified."""
    body, _ = _split(blob)
    try:
        owner = json.loads(body).get("owner")
    except (ValueError, AttributeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise DecodeError("manifest is not a JSON object") from exc
    if not isinstance(owner, str):
        raise DecodeError("manifest names no owner")
    return owner


def open_manifest(blob: bytes | memoryview, owner_verify_key: bytes) -> Manifest:
    """Verify the owner's signature, then parse strictly and canonically; or raise."""
    body, signature = _split(blob)
    verify_signature(owner_verify_key, _DOMAIN + body, signature)
    try:
        manifest = Manifest.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise DecodeError("manifest does not validate") from exc
    if manifest.canonical() != body:
        raise DecodeError("manifest is not in canonical form")
    return manifest


#: How a reader opens its wrapped data key: its raw X25519 private key, or a
#: function that opens a sealed box addressed to it (a node service's
#: ``NodeContext.unwrap_key``, so that the node's key never leaves the runtime).
KeyOpener: TypeAlias = "bytes | Callable[[bytes], bytes]"


def unwrap_data_key(manifest: Manifest, reader_id: str, reader_kx_private: KeyOpener) -> bytes:
    """The object's data key for ``reader_id``; AuthenticationError if it has none."""
    wrapped = manifest.readers.get(reader_id)
    if wrapped is None:
        raise AuthenticationError(f"{reader_id!r} is not a reader of this object")
    blob = bytes.fromhex(wrapped)
    if callable(reader_kx_private):
        key = reader_kx_private(blob)
    else:
        key = boxes.unwrap_key(reader_kx_private, blob)
    if len(key) != 32:
        raise AuthenticationError("wrapped data key has the wrong size")
    return key


def share_manifest(
    manifest: Manifest,
    *,
    data_key: bytes,
    reader_id: str,
    reader_kx_public: bytes,
    created_ms: int,
) -> Manifest:
    """A new version of ``manifest`` that ``reader_id`` can read too (sign it to publish).

    ``data_key`` (the owner's, from :func:`unwrap_data_key`) is wrapped in a
    sealed box to ``reader_kx_public`` (the reader certificate's ``kx_key``);
    the shards, placement and Merkle root are unchanged, ``created_ms`` dates
    the version. Sharing with a reader already listed re-wraps its key.
    """
    if len(data_key) != 32 or len(reader_kx_public) != 32:
        raise LocalError("a data key and an X25519 key are 32 bytes")
    wrapped = boxes.wrap_key(reader_kx_public, data_key).hex()
    return _with(manifest, readers={**manifest.readers, reader_id: wrapped}, created_ms=created_ms)


def unshare_manifest(manifest: Manifest, *, reader_id: str, created_ms: int) -> Manifest:
    """A new version of ``manifest`` without ``reader_id``'s wrapped key.

    This affects *future* reads through manifests only: a reader that already
    unwrapped the data key can still decrypt the shards written under it
    (docs/storage.md §3). The owner cannot remove itself.
    """
    if reader_id == manifest.owner:
        raise LocalError("the owner stays a reader of its own objects")
    if reader_id not in manifest.readers:
        raise LocalError(f"{reader_id!r} is not a reader of {manifest.name!r}")
    readers = {rid: w for rid, w in manifest.readers.items() if rid != reader_id}
    return _with(manifest, readers=readers, created_ms=created_ms)


def _with(manifest: Manifest, **changes: object) -> Manifest:
    try:
        return Manifest.model_validate({**manifest.model_dump(), **changes}, strict=True)
    except ValidationError as exc:
        raise LocalError(f"the new manifest does not validate: {exc.errors()[0]['msg']}") from exc


def check_hash(value: bytes) -> bytes:
    if len(value) != HASH_SIZE:
        raise DecodeError(f"a shard hash is {HASH_SIZE} bytes")
    return value


def check_object_id(value: bytes) -> bytes:
    if len(value) != OBJECT_ID_SIZE:
        raise DecodeError(f"an object id is {OBJECT_ID_SIZE} bytes")
    return value
