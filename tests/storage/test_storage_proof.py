"""Proof-of-storage spot checks: block Merkle paths against a shard's content address."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.errors import InclusionProofError
from securemesh.storage import (
    StorageProof,
    challenge_indexes,
    prove_storage,
    shard_address,
    shard_hash,
    verify_storage_proof,
)
from securemesh.storage._proof import BLOCK_SIZE


@given(
    shard=st.binary(min_size=1, max_size=6 * BLOCK_SIZE + 5),
    nonce=st.binary(min_size=32, max_size=32),
    count=st.integers(1, 16),
)
def test_an_honest_holder_passes(shard: bytes, nonce: bytes, count: int) -> None:
    address = shard_address(shard)
    assert address == shard_hash(shard)  # the content address is the block tree's root
    proof = prove_storage(shard, nonce, count)
    verify_storage_proof(address, len(shard), nonce, count, proof)


@given(nonce=st.binary(min_size=32, max_size=32))
def test_a_holder_missing_a_challenged_block_fails(nonce: bytes) -> None:
    shard = os.urandom(8 * BLOCK_SIZE + 100)
    address = shard_address(shard)
    # the holder lost the first challenged block (kept zeros instead)
    lost = challenge_indexes(nonce, len(shard), 8)[0]
    damaged = bytearray(shard)
    damaged[lost * BLOCK_SIZE : (lost + 1) * BLOCK_SIZE] = bytes(BLOCK_SIZE)
    with pytest.raises(InclusionProofError):
        verify_storage_proof(address, len(shard), nonce, 8, prove_storage(bytes(damaged), nonce, 8))


def test_an_old_answer_does_not_pass_a_fresh_nonce() -> None:
    shard = os.urandom(32 * BLOCK_SIZE)
    address = shard_address(shard)
    old = prove_storage(shard, bytes(32), 8)
    fresh = bytes([1]) * 32
    assert challenge_indexes(fresh, len(shard), 8) != challenge_indexes(bytes(32), len(shard), 8)
    with pytest.raises(InclusionProofError):
        verify_storage_proof(address, len(shard), fresh, 8, old)


def test_forged_paths_and_short_answers_fail() -> None:
    shard = os.urandom(5 * BLOCK_SIZE)
    address, nonce = shard_address(shard), os.urandom(32)
    proof = prove_storage(shard, nonce, 4)
    bad_path = StorageProof(proof.blocks, ((bytes(32),) * len(proof.paths[0]), *proof.paths[1:]))
    with pytest.raises(InclusionProofError):
        verify_storage_proof(address, len(shard), nonce, 4, bad_path)
    with pytest.raises(InclusionProofError):
        verify_storage_proof(
            address, len(shard), nonce, 4, StorageProof(proof.blocks[:3], proof.paths[:3])
        )
    short_block = StorageProof((proof.blocks[0][:-1], *proof.blocks[1:]), proof.paths)
    with pytest.raises(InclusionProofError):
        verify_storage_proof(address, len(shard), nonce, 4, short_block)
