"""Proof of storage: spot checks of a shard's blocks against its content address (sans-I/O).

A shard's content address (:func:`shard_address`) is the RFC 9162 Merkle tree
hash over its 4 KiB blocks (``MTH``, leaf = ``SHA-256(0x00 || block)``,
:mod:`securemesh.audit.merkle`), so anyone who knows the address, and the
shard's size from the manifest, can check single blocks without the rest.

A challenge is a fresh random 32-byte nonce and a count ``c`` (1..16). The
block indexes are ``u64be(SHA-256(nonce || u32be(i))[:8]) mod blocks`` for
``i < c``: the prover cannot choose them and cannot know them before the
nonce. It answers with those blocks and their inclusion proofs (RFC 9162
§2.1.3.1); :func:`verify_storage_proof` checks each proof against the address
(§2.1.3.2). An edge that dropped a fraction ``p`` of a shard's blocks passes
with probability ``(1 - p)^c``; one that dropped the shard cannot answer.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from securemesh.audit.merkle import (
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_inclusion,
)
from securemesh.errors import InclusionProofError, LocalError

__all__ = [
    "BLOCK_SIZE",
    "MAX_CHALLENGE_BLOCKS",
    "NONCE_SIZE",
    "StorageProof",
    "challenge_indexes",
    "prove_storage",
    "shard_address",
    "verify_storage_proof",
]

BLOCK_SIZE = 4096
NONCE_SIZE = 32
MAX_CHALLENGE_BLOCKS = 16
_U32 = struct.Struct(">I")


def _block_leaf(block: memoryview) -> bytes:
    """``leaf_hash(block)`` (RFC 9162 §2.1.1: SHA-256(0x00 || d)) without copying the block."""
    h = hashlib.sha256(b"\x00")
    h.update(block)
    return h.digest()


def _leaves(data: bytes | memoryview) -> list[bytes]:
    view = memoryview(data)
    return [_block_leaf(view[i : i + BLOCK_SIZE]) for i in range(0, max(len(view), 1), BLOCK_SIZE)]


def shard_address(data: bytes | memoryview) -> bytes:
    """A shard's content address: the RFC 9162 MTH over its 4 KiB blocks."""
    return root_from_leaf_hashes(_leaves(data))


def block_count(shard_size: int) -> int:
    return max(1, -(-shard_size // BLOCK_SIZE))


def challenge_indexes(nonce: bytes, shard_size: int, count: int) -> list[int]:
    """The blocks a nonce asks for (module doc)."""
    if len(nonce) != NONCE_SIZE or not 1 <= count <= MAX_CHALLENGE_BLOCKS or shard_size < 1:
        raise LocalError("a challenge is a 32-byte nonce and 1..16 blocks of a non-empty shard")
    blocks = block_count(shard_size)
    return [
        int.from_bytes(hashlib.sha256(nonce + _U32.pack(i)).digest()[:8], "big") % blocks
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class StorageProof:
    """The challenged blocks and, for each, its inclusion proof."""

    blocks: tuple[bytes, ...]
    paths: tuple[tuple[bytes, ...], ...]


def prove_storage(shard: bytes, nonce: bytes, count: int) -> StorageProof:
    """The prover's answer (on the edge holding the shard)."""
    leaves = _leaves(shard)
    indexes = challenge_indexes(nonce, len(shard), count)
    return StorageProof(
        blocks=tuple(shard[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] for i in indexes),
        paths=tuple(tuple(inclusion_proof(i, leaves)) for i in indexes),
    )


def verify_storage_proof(
    address: bytes, shard_size: int, nonce: bytes, count: int, proof: StorageProof
) -> None:
    """Check every block against the address, or raise InclusionProofError."""
    indexes = challenge_indexes(nonce, shard_size, count)
    if len(proof.blocks) != len(indexes) or len(proof.paths) != len(indexes):
        raise InclusionProofError("the proof does not answer the challenge")
    total = block_count(shard_size)
    for index, block, path in zip(indexes, proof.blocks, proof.paths, strict=True):
        expected = min(BLOCK_SIZE, shard_size - index * BLOCK_SIZE)
        if len(block) != expected:
            raise InclusionProofError(f"block {index} has the wrong size")
        verify_inclusion(leaf_hash(block), index, total, list(path), address)


def check_paths(paths: Sequence[Sequence[str]]) -> tuple[tuple[bytes, ...], ...]:
    """Hex paths from a reply body as bytes (the verifier checks them)."""
    return tuple(tuple(bytes.fromhex(h) for h in path) for path in paths)
