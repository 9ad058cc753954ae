"""Storage decoders: signed manifests, shard frames, storage proofs and the JSON bodies.

Already fuzzed elsewhere (not repeated): random bytes into ``open_manifest``
(tests/storage/test_storage_core.py); a single corrupted shard in a read.
Here: mutations of a *valid* signed manifest never verify; an owner who signs
a malformed body still gets only DecodeError; ``peek_owner_unverified`` on
anything; every shard frame a holder can return is kept only if it is the
addressed shard; storage proofs under mutation; every message body model.
"""

from __future__ import annotations

import json
import random
import struct

from fuzz_support import body_inputs, documents, fuzz, json_mutated, mutated, run
from hypothesis import given
from hypothesis import strategies as st

from securemesh.crypto.identity import NodeIdentity
from securemesh.errors import AuthenticationError, DecodeError, InclusionProofError
from securemesh.storage import (
    GetPlan,
    Manifest,
    PutPlan,
    open_manifest,
    peek_owner_unverified,
)
from securemesh.storage import _messages as storage_messages
from securemesh.storage._proof import (
    BLOCK_SIZE,
    StorageProof,
    prove_storage,
    shard_address,
    verify_storage_proof,
)
from securemesh.wire._json import parse_body

WRITER = NodeIdentity.from_seeds(bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32)
READER = NodeIdentity.from_seeds(bytes([4]) * 32, bytes([5]) * 32, bytes([6]) * 32)
SEG = 1024
DATA = bytes(random.Random(7).randbytes(2 * SEG + 100))
_DOMAIN = b"securemesh.storage.manifest.v1\x00"


def _put() -> tuple[Manifest, bytes, dict[tuple[int, int], bytes]]:
    plan = PutPlan(
        name="obj/x",
        owner="writer",
        signer=WRITER.signer,
        size=len(DATA),
        placement=["edge-0", "edge-1", "edge-2"],
        readers={"writer": WRITER.kx_public, "reader": READER.kx_public},
        k=2,
        n=3,
        segment_size=SEG,
        rng=random.Random(1).randbytes,
    )
    shards: dict[tuple[int, int], bytes] = {}
    for i in range(plan.count):
        for put in plan.segment(DATA[i * SEG : (i + 1) * SEG]):
            shards[put.segment, put.index] = bytes(put.data)
            plan.stored(put.segment, put.index)
    manifest, blob = plan.finish()
    return manifest, blob, shards


MANIFEST, BLOB, SHARDS = _put()
MANIFEST_ERRORS = (AuthenticationError, DecodeError)


def _owner_signed(body: bytes) -> bytes:
    return struct.pack(">4sI", b"SMM1", len(body)) + body + WRITER.signer.sign(_DOMAIN + body)


@fuzz(100)
@given(st.one_of(mutated(BLOB), st.binary(max_size=600)))
def test_a_mutated_signed_manifest_never_verifies(blob: bytes) -> None:
    manifest = run(
        "storage.open_manifest", lambda: open_manifest(blob, WRITER.verify_key), MANIFEST_ERRORS
    )
    if manifest is not None:
        assert blob == BLOB
        assert manifest == MANIFEST


_valid_doc = json.loads(MANIFEST.canonical())
manifest_bodies = st.one_of(
    documents(Manifest),
    st.just(_valid_doc).flatmap(json_mutated),
    documents(Manifest).flatmap(json_mutated),
).map(lambda d: json.dumps(d, separators=(",", ":"), sort_keys=True).encode())


@fuzz(50)
@given(
    st.one_of(
        manifest_bodies,
        manifest_bodies.flatmap(mutated),
        st.just(MANIFEST.canonical()).flatmap(mutated),
    )
)
def test_an_owner_signed_malformed_manifest_is_only_a_decode_error(body: bytes) -> None:
    """A hostile owner signs what it likes: strict parsing still stands between it and the store."""
    blob = _owner_signed(body)
    manifest = run(
        "storage.open_manifest(owner-signed)",
        lambda: open_manifest(blob, WRITER.verify_key),
        DecodeError,
    )
    if manifest is not None:
        assert manifest.canonical() == body
        # the cross-field rules held: n distinct nodes, segment sizes, the Merkle root
        assert len(set(manifest.placement)) == manifest.n >= manifest.k


@fuzz(50)
@given(
    st.one_of(
        mutated(BLOB),
        manifest_bodies.map(_owner_signed),
        st.sampled_from([b"[" * 5000, b'{"owner":' * 3000, b"{}", b'"x"']).map(_owner_signed),
        st.binary(max_size=300),
    )
)
def test_peek_owner_reads_a_claim_or_refuses(blob: bytes) -> None:
    owner = run("storage.peek_owner_unverified", lambda: peek_owner_unverified(blob), DecodeError)
    assert owner is None or isinstance(owner, str)


@fuzz(100)
@given(
    st.sampled_from(sorted(SHARDS)),
    st.one_of(
        st.sampled_from(sorted(SHARDS)).map(SHARDS.__getitem__).flatmap(mutated),
        st.binary(max_size=800),
    ),
)
def test_a_shard_frame_is_kept_only_if_it_is_the_addressed_shard(
    at: tuple[int, int], frame: bytes
) -> None:
    """Whatever a holder returns for one shard, the read still yields the object's bytes."""
    segment, index = at
    plan = GetPlan.for_reader(MANIFEST, "reader", READER.kx_secret())
    while not plan.ready(segment):
        for want in plan.wanted(segment):
            at, data = want.index, frame if want.index == index else SHARDS[segment, want.index]
            kept = run(
                "storage.shard_frame",
                lambda at=at, data=data: plan.received(segment, at, data),  # type: ignore[misc]
            )
            assert kept == (data == SHARDS[segment, want.index])
    plain = run("storage.segment_open", lambda: plan.plaintext(segment))
    assert plain == DATA[segment * SEG : (segment + 1) * SEG]


_SHARD = bytes(random.Random(3).randbytes(5 * BLOCK_SIZE + 17))
_ADDRESS = shard_address(_SHARD)
_NONCE = bytes(range(32))
_PROOF = prove_storage(_SHARD, _NONCE, 4)


@fuzz(100)
@given(st.data())
def test_a_mutated_storage_proof_never_passes(data: st.DataObject) -> None:
    blocks = list(_PROOF.blocks)
    paths = [list(p) for p in _PROOF.paths]
    where = data.draw(st.sampled_from(["block", "path", "drop", "extra"]))
    i = data.draw(st.integers(0, len(blocks) - 1))
    if where == "block":
        blocks[i] = data.draw(mutated(blocks[i]))
    elif where == "path" and paths[i]:
        j = data.draw(st.integers(0, len(paths[i]) - 1))
        paths[i][j] = data.draw(mutated(paths[i][j]))
    elif where == "drop":
        del blocks[i], paths[i]
    else:
        paths[i].append(data.draw(st.binary(min_size=32, max_size=32)))
    proof = StorageProof(tuple(blocks), tuple(tuple(p) for p in paths))
    changed = proof != _PROOF
    passed = run(
        "storage.verify_storage_proof",
        lambda: verify_storage_proof(_ADDRESS, len(_SHARD), _NONCE, 4, proof) or True,
        InclusionProofError,
    )
    assert not (passed and changed)


BODY_MODELS = sorted(
    (
        value
        for value in vars(storage_messages).values()
        if isinstance(value, type) and value.__module__ == storage_messages.__name__
    ),
    key=lambda m: m.__name__,
)


@fuzz(60)
@given(st.sampled_from(BODY_MODELS).flatmap(lambda m: st.tuples(st.just(m), body_inputs(m))))
def test_storage_bodies_parse_strictly(case: tuple[type, bytes]) -> None:
    model, data = case
    value = run(f"storage.body.{model.__name__}", lambda: parse_body(model, data), DecodeError)
    if value is not None:
        assert parse_body(model, value.model_dump_json().encode()) == value
