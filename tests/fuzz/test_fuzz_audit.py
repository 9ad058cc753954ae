"""Audit decoders: signed events / leaf entries, checkpoints, proof and consistency files, acks.

Already fuzzed elsewhere (not repeated): one changed byte of a signed event,
of a proof bundle and of a checkpoint; random bytes into the consistency
verifier. Here: multi-edit mutations (truncation, extension, swapped slices)
of each, a mutated object never verifying as anything but itself; the entry
decoder of the ingestion path; the event-field reader of ``audit verify``
(a tampered database is input too); the acknowledgement decoder an edge runs
on the cloud's reply.
"""

from __future__ import annotations

import json

from fuzz_support import JSON_VALUES, fuzz, mutated, run
from hypothesis import given
from hypothesis import strategies as st

from securemesh.audit import ingest
from securemesh.audit._entry import decode_entry, event_fields, verify_decoded
from securemesh.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from securemesh.audit.events import AuditEvent, SignedEvent, new_event, sign_event
from securemesh.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
)
from securemesh.audit.proofs import (
    build_consistency_bundle,
    build_proof_bundle,
    verify_consistency_bundle,
    verify_proof_bundle,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import RemoteError

LOG = "audit.mesh.example/log"
T0 = 1_700_000_000.0
LOG_SIGNER = Ed25519Signer.from_seed(bytes([1]) * 32)
NODE = NodeIdentity.from_seeds(bytes([2]) * 32, bytes([3]) * 32, bytes([4]) * 32)
ENTRIES = [
    sign_event(
        new_event(
            "object.put",
            origin="edge-1",
            subject=("object", f"obj-{i}"),
            details={"i": i, "note": 'ü\\"x'},
            now=T0 + i,
            event_id=i.to_bytes(16, "big"),
        ),
        NODE.signer,
    ).to_bytes()
    for i in range(7)
]
HASHES = [leaf_hash(e) for e in ENTRIES]


def _note(size: int) -> bytes:
    cp = Checkpoint(LOG, size, root_from_leaf_hashes(HASHES[:size]), time_ms=int(T0 * 1000))
    return sign_checkpoint(cp, key_name=LOG, signer=LOG_SIGNER)


NOTE = _note(len(ENTRIES))
OLD_NOTE = _note(3)
BUNDLE = build_proof_bundle(
    entry=ENTRIES[4],
    leaf_index=4,
    tree_size=len(ENTRIES),
    inclusion_proof=inclusion_proof(4, HASHES),
    checkpoint_note=NOTE,
    origin_verify_key=NODE.verify_key,
)
CONSISTENCY = build_consistency_bundle(
    old_note=OLD_NOTE, new_note=NOTE, proof=consistency_proof(3, HASHES)
)


@fuzz(100)
@given(st.one_of(st.sampled_from(ENTRIES).flatmap(mutated), st.binary(max_size=400)))
def test_a_mutated_entry_never_verifies(entry: bytes) -> None:
    """The ingestion path: decode a leaf entry, then verify it against the origin's key."""
    decoded = run("audit.decode_entry", lambda: decode_entry(entry))
    if decoded is None:
        return
    event = run("audit.verify_decoded", lambda: verify_decoded(decoded, NODE.verify_key))
    if event is not None:
        assert entry in ENTRIES
    signed = SignedEvent.from_bytes(entry)
    assert run("audit.SignedEvent.verify", lambda: signed.verify(NODE.verify_key)) == event


@fuzz(100)
@given(
    st.one_of(
        st.sampled_from(ENTRIES)
        .map(lambda e: SignedEvent.from_bytes(e).event_bytes)
        .flatmap(mutated),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"[" * 5000, b'{"event_id":' * 3000, b"{}"]),
    )
)
def test_event_bodies_decode_strictly(body: bytes) -> None:
    """``AuditEvent.from_canonical_bytes``, and the field reader ``audit verify`` runs on rows."""
    event = run(
        "audit.AuditEvent.from_canonical_bytes", lambda: AuditEvent.from_canonical_bytes(body)
    )
    if event is not None:
        assert event.canonical_bytes() == body  # only the canonical form is an event
    fields = run("audit.event_fields", lambda: event_fields(body), ())
    assert fields is None or isinstance(fields, tuple)


@fuzz(100)
@given(st.one_of(mutated(NOTE), mutated(OLD_NOTE), st.binary(max_size=300)))
def test_a_mutated_checkpoint_never_opens_as_another(note: bytes) -> None:
    cp = run(
        "audit.open_checkpoint",
        lambda: open_checkpoint(note, key_name=LOG, verify_key=LOG_SIGNER.verify_key, origin=LOG),
    )
    if cp is not None:
        good = {NOTE: len(ENTRIES), OLD_NOTE: 3}
        # the signed text is intact; only unsigned trailing lines (other keys' signatures) may vary
        assert cp.size in good.values()
        assert cp.root_hash == root_from_leaf_hashes(HASHES[: cp.size])


@fuzz(100)
@given(st.one_of(mutated(BUNDLE, max_edits=3), st.binary(max_size=300)))
def test_a_mutated_proof_bundle_never_proves_another_event(data: bytes) -> None:
    proof = run(
        "audit.verify_proof_bundle",
        lambda: verify_proof_bundle(
            data, log_key_name=LOG, log_verify_key=LOG_SIGNER.verify_key, log_origin=LOG
        ),
    )
    if proof is not None:
        assert proof.leaf_index == 4
        assert proof.signed_event.to_bytes() == ENTRIES[4]


@fuzz(100)
@given(st.one_of(mutated(CONSISTENCY, max_edits=3), st.binary(max_size=300)))
def test_a_mutated_consistency_file_never_proves_another_tree(data: bytes) -> None:
    result = run(
        "audit.verify_consistency_bundle",
        lambda: verify_consistency_bundle(
            data, log_key_name=LOG, log_verify_key=LOG_SIGNER.verify_key, log_origin=LOG
        ),
    )
    if result is not None:
        assert (result.old.size, result.new.size) == (3, len(ENTRIES))
        assert result.new.root_hash == root_from_leaf_hashes(HASHES)


ACKS = json.dumps([["00" * 16, 3], ["11" * 16, 4]], separators=(",", ":")).encode()


@fuzz(100)
@given(
    st.one_of(
        mutated(ACKS),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"[" * 5000, b"[[" * 2000, b"error"]),
        st.binary(max_size=200),
    )
)
def test_the_cloud_acknowledgement_decodes_strictly(data: bytes) -> None:
    acks = run("audit.ingest.decode_acks", lambda: ingest._decode_acks(data), RemoteError)
    assert acks is None or isinstance(acks, list)
