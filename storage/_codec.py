"""One segment: encrypt on the writer, erasure-code k-of-n, hash each shard (sans-I/O).

Theory of operation
-------------------
A segment's plaintext ``P`` (at most the object's segment size) is sealed with
XChaCha20-Poly1305 (:mod:`securemesh.crypto.aead`, draft-irtf-cfrg-xchacha /
RFC 8439) under the object's random data key, with a fresh random 24-byte nonce
per segment and the associated data ::

    "securemesh.storage.segment.v1\\0" || object_id (16) || u64be(index) || u64be(count)

so a segment authenticates only at its own position in its own object of that
many segments: swapped, reordered, truncated or transplanted segments fail to
open. The sealed blob ``C = nonce || ciphertext || tag`` (``len(P) + 40``
bytes) is zero-padded to ``k * shard_size`` (``padding = (-len(C)) mod k``,
recorded in the manifest), cut into ``k`` primary blocks and erasure-coded
with zfec (Reed-Solomon over GF(2^8), Rizzo's "Effective erasure codes", 1997)
into ``n`` shards, of which any ``k`` rebuild ``C``. Each shard's content
address is the RFC 9162 Merkle root over its 4 KiB blocks (SHA-256 leaves and
nodes, :mod:`securemesh.storage._proof`); a shard whose bytes do not hash to
its address is corrupt and treated as missing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import zfec

from securemesh.crypto import aead
from securemesh.errors import LocalError
from securemesh.storage._proof import shard_address

__all__ = [
    "HASH_SIZE",
    "MAX_N",
    "OBJECT_ID_SIZE",
    "SEGMENT_OVERHEAD",
    "EncodedSegment",
    "decode_segment",
    "encode_segment",
    "regenerate_shards",
    "segment_aad",
    "shard_hash",
]

OBJECT_ID_SIZE = 16
HASH_SIZE = 32
SEGMENT_OVERHEAD = aead.OVERHEAD  # 24-byte nonce + 16-byte tag
MAX_N = 32  # at most 32 shards per segment (zfec allows 256; placement wants distinct nodes)
_AAD_DOMAIN = b"securemesh.storage.segment.v1\x00"
_U64X2 = struct.Struct(">QQ")


def shard_hash(data: bytes | memoryview) -> bytes:
    """A shard's content address: the RFC 9162 Merkle root over its 4 KiB blocks.

    (:func:`securemesh.storage._proof.shard_address`; a Merkle root rather than a
    flat SHA-256 so that proof-of-storage challenges can check single blocks.)
    """
    return shard_address(data)


def segment_aad(object_id: bytes, index: int, count: int) -> bytes:
    """The associated data binding a segment to its object, position and segment count."""
    if len(object_id) != OBJECT_ID_SIZE:
        raise LocalError(f"an object id is {OBJECT_ID_SIZE} bytes")
    return _AAD_DOMAIN + bytes(object_id) + _U64X2.pack(index, count)


def check_coding(k: int, n: int) -> None:
    """``1 <= k <= n <= MAX_N`` or LocalError."""
    if not (type(k) is int and type(n) is int and 1 <= k <= n <= MAX_N):
        raise LocalError(f"erasure coding needs 1 <= k <= n <= {MAX_N}, got k={k}, n={n}")


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """The n shards of one sealed segment, their hashes and the padding added before coding."""

    index: int
    cipher_size: int
    padding: int
    shards: tuple[bytes, ...]
    hashes: tuple[bytes, ...]


def encode_segment(  # noqa: PLR0917 - the coding parameters of one segment
    key: bytes,
    object_id: bytes,
    index: int,
    count: int,
    plaintext: bytes | memoryview,
    k: int,
    n: int,
    *,
    rng: Callable[[int], bytes] | None = None,
) -> EncodedSegment:
    """Seal ``plaintext`` as segment ``index`` of ``count`` and code it into ``n`` shards.

    ``rng`` supplies the nonce (tests pin it); None means the AEAD's own CSPRNG nonce.
    """
    check_coding(k, n)
    nonce = None if rng is None else rng(aead.NONCE_SIZE)
    plain = plaintext if isinstance(plaintext, bytes) else bytes(plaintext)
    sealed = aead.seal(key, plain, aad=segment_aad(object_id, index, count), nonce=nonce)
    del plain
    cipher_size = len(sealed)
    padding = (-cipher_size) % k
    if padding:
        sealed += bytes(padding)
    size = len(sealed) // k
    view = memoryview(sealed)  # primary blocks are views: no copy of the segment
    blocks = tuple(view[i * size : (i + 1) * size] for i in range(k))
    shards = tuple(bytes(s) for s in zfec.Encoder(k, n).encode(blocks))
    del blocks, view, sealed
    return EncodedSegment(
        index=index,
        cipher_size=cipher_size,
        padding=padding,
        shards=shards,
        hashes=tuple(shard_hash(s) for s in shards),
    )


def decode_segment(  # noqa: PLR0917 - the coding parameters of one segment
    key: bytes,
    object_id: bytes,
    index: int,
    count: int,
    cipher_size: int,
    shards: Mapping[int, bytes],
    k: int,
    n: int,
) -> bytes:
    """Rebuild and open a segment from any ``k`` verified shards (index -> bytes).

    Raises :class:`~securemesh.errors.AuthenticationError` when the rebuilt
    blob does not open under this object, index and count (a swapped,
    reordered or forged segment), LocalError for misuse (too few shards).
    """
    check_coding(k, n)
    chosen = sorted(i for i in shards if 0 <= i < n)[:k]
    if len(chosen) < k:
        raise LocalError(f"segment {index} needs {k} shards, got {len(chosen)}")
    size = len(shards[chosen[0]])
    if any(len(shards[i]) != size for i in chosen) or size * k < cipher_size:
        raise LocalError(f"segment {index}: shards of unequal or too small size")
    blocks = zfec.Decoder(k, n).decode(tuple(shards[i] for i in chosen), tuple(chosen))
    sealed = b"".join(blocks)[:cipher_size]
    return aead.open_sealed(key, sealed, aad=segment_aad(object_id, index, count))


def regenerate_shards(
    shards: Mapping[int, bytes], k: int, n: int, wanted: Sequence[int]
) -> dict[int, bytes]:
    """Shards ``wanted`` rebuilt from any ``k`` others, without the key (repair).

    zfec is deterministic, so a regenerated shard is byte-identical to the one
    first written and keeps its content address in the manifest.
    """
    check_coding(k, n)
    chosen = sorted(i for i in shards if 0 <= i < n)[:k]
    if len(chosen) < k:
        raise LocalError(f"regenerating needs {k} shards, got {len(chosen)}")
    if any(not 0 <= j < n for j in wanted):
        raise LocalError(f"shard indexes are 0..{n - 1}")
    blocks = zfec.Decoder(k, n).decode(tuple(shards[i] for i in chosen), tuple(chosen))
    out = zfec.Encoder(k, n).encode(tuple(blocks), tuple(wanted))
    return {j: bytes(s) for j, s in zip(wanted, out, strict=True)}
