"""Tests for securemesh.audit.proofs: offline proof bundles checked with only the log key."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit.checkpoint import Checkpoint, key_id, note_signers, sign_checkpoint
from securemesh.audit.events import SignedEvent, new_event, sign_event
from securemesh.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
)
from securemesh.audit.proofs import (
    BUNDLE_FORMAT,
    CONSISTENCY_FORMAT,
    MAX_BUNDLE_SIZE,
    build_consistency_bundle,
    build_proof_bundle,
    bundle_format,
    verify_consistency_bundle,
    verify_proof_bundle,
)
from securemesh.crypto.certs import Authority
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import (
    AuthenticationError,
    CertificateError,
    ConsistencyProofError,
    DecodeError,
    InclusionProofError,
    LocalError,
    RemoteError,
    SizeLimitExceeded,
)

LOG = "audit.mesh.example/log"
T0 = 1_700_000_000.0


@dataclass
class World:
    log_signer: Ed25519Signer
    node: NodeIdentity
    entries: list[bytes]
    note: bytes

    @property
    def hashes(self) -> list[bytes]:
        return [leaf_hash(e) for e in self.entries]

    def bundle(self, index: int, **overrides: Any) -> bytes:
        args: dict[str, Any] = {
            "entry": self.entries[index],
            "leaf_index": index,
            "tree_size": len(self.entries),
            "inclusion_proof": inclusion_proof(index, self.hashes),
            "checkpoint_note": self.note,
            "origin_verify_key": self.node.verify_key,
        }
        args.update(overrides)
        return build_proof_bundle(**args)

    def verify(self, data: bytes, **kwargs: Any) -> Any:
        return verify_proof_bundle(
            data, log_key_name=LOG, log_verify_key=self.log_signer.verify_key, **kwargs
        )


def make_world(n: int = 13, extra: list[bytes] | None = None) -> World:
    log_signer = Ed25519Signer.from_seed(bytes([1]) * 32)
    node = NodeIdentity.from_seeds(bytes([2]) * 32, bytes([3]) * 32, bytes([4]) * 32)
    entries = [
        sign_event(
            new_event(
                "object.put",
                origin="edge-1",
                subject=("object", f"obj-{i}"),
                details={"i": i},
                now=T0 + i,
                event_id=i.to_bytes(16, "big"),
            ),
            node.signer,
        ).to_bytes()
        for i in range(n)
    ]
    entries.extend(extra or [])
    cp = Checkpoint(LOG, len(entries), root_from_leaf_hashes([leaf_hash(e) for e in entries]))
    return World(log_signer, node, entries, sign_checkpoint(cp, key_name=LOG, signer=log_signer))


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


def edit(data: bytes, **changes: Any) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


# ------------------------------------------------------------ the happy path


def test_every_leaf_proves(world: World) -> None:
    for i in range(len(world.entries)):
        vp = world.verify(world.bundle(i), log_origin=LOG)
        assert vp.leaf_index == i
        assert vp.event.subject.id == f"obj-{i}"
        assert vp.checkpoint.size == len(world.entries)
        assert vp.signed_event.to_bytes() == world.entries[i]
        assert vp.origin_verify_key == world.node.verify_key
        assert vp.origin_key_source == "bundle"
        assert vp.origin_certificate is None


def test_bundle_is_readable_json(world: World) -> None:
    doc = json.loads(world.bundle(3))
    assert doc["format"] == BUNDLE_FORMAT
    assert doc["version"] == 1
    assert doc["leaf_index"] == 3
    assert doc["checkpoint"].startswith(f"{LOG}\n13\n")
    assert base64.b64decode(doc["entry"]) == world.entries[3]


def test_caller_supplied_origin_key(world: World) -> None:
    vp = world.verify(world.bundle(0), origin_verify_key=world.node.verify_key)
    assert vp.origin_key_source == "caller"
    with pytest.raises(AuthenticationError):
        world.verify(world.bundle(0), origin_verify_key=bytes(32))


def test_certificate_binding(world: World) -> None:
    authority = Authority.create("root", now=T0 - 100, signer=Ed25519Signer.from_seed(bytes(32)))
    cert = authority.issue(
        "edge-1", "edge", [], world.node.public(), lifetime_s=3600, now=T0 - 10
    ).to_bytes()
    trust = authority.trust_store()
    vp = world.verify(world.bundle(2, origin_certificate=cert), trust=trust)
    assert vp.origin_key_source == "certificate"
    assert vp.origin_certificate == cert
    # No certificate in the bundle.
    with pytest.raises(AuthenticationError):
        world.verify(world.bundle(2), trust=trust)
    # A valid certificate for another node.
    other = authority.issue(
        "edge-2", "edge", [], world.node.public(), lifetime_s=3600, now=T0 - 10
    ).to_bytes()
    with pytest.raises(CertificateError):
        world.verify(world.bundle(2, origin_certificate=other), trust=trust)
    # A certificate that was not valid when the event was signed.
    late = authority.issue(
        "edge-1", "edge", [], world.node.public(), lifetime_s=3600, now=T0 + 1000
    ).to_bytes()
    with pytest.raises(CertificateError):
        world.verify(world.bundle(2, origin_certificate=late), trust=trust)
    # A certificate from an authority we do not trust.
    rogue = Authority.create("root", now=T0 - 100, signer=Ed25519Signer.from_seed(bytes([9]) * 32))
    forged = rogue.issue(
        "edge-1", "edge", [], world.node.public(), lifetime_s=3600, now=T0 - 10
    ).to_bytes()
    with pytest.raises(CertificateError):
        world.verify(world.bundle(2, origin_certificate=forged), trust=trust)


# ------------------------------------------------------------ what must fail


def test_only_the_log_key_opens_the_checkpoint(world: World) -> None:
    data = world.bundle(1)
    with pytest.raises(AuthenticationError):
        verify_proof_bundle(data, log_key_name=LOG, log_verify_key=bytes(range(32)))
    with pytest.raises(AuthenticationError):
        verify_proof_bundle(
            data, log_key_name="other/log", log_verify_key=world.log_signer.verify_key
        )
    with pytest.raises(AuthenticationError):
        world.verify(data, log_origin="other/log")


def test_tampered_entries_and_proofs(world: World) -> None:
    good = world.bundle(5)
    doc = json.loads(good)
    entry = bytearray(world.entries[5])
    entry[-3] ^= 1
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, entry=base64.b64encode(bytes(entry)).decode()))
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, entry=base64.b64encode(world.entries[6]).decode()))
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, leaf_index=6))
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, tree_size=12))
    proof = list(doc["inclusion_proof"])
    proof[0] = base64.b64encode(bytes(32)).decode()
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, inclusion_proof=proof))
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, inclusion_proof=doc["inclusion_proof"][:-1]))
    # Someone else's valid checkpoint (a different tree) does not cover the entry.
    other = make_world(14)
    with pytest.raises(InclusionProofError):
        world.verify(edit(good, checkpoint=other.note.decode(), tree_size=14))


def test_log_operator_cannot_forge_a_nodes_event(world: World) -> None:
    """The log signs a tree containing an event it made up under a key of its own."""
    fake_key = Ed25519Signer.from_seed(bytes([66]) * 32)
    forged = sign_event(
        new_event("cert.revoked", origin="edge-1", subject=("node", "edge-1"), now=T0), fake_key
    ).to_bytes()
    w = make_world(4, extra=[forged])
    # With the node's real key, the forgery is refused ...
    data = w.bundle(4, origin_verify_key=fake_key.verify_key)
    with pytest.raises(AuthenticationError):
        w.verify(data, origin_verify_key=w.node.verify_key)
    # ... and claiming the node's key in the bundle does not verify the signature.
    with pytest.raises(AuthenticationError):
        w.verify(w.bundle(4))
    # Without any binding it "verifies", and the result says the key came from the bundle.
    assert w.verify(data).origin_key_source == "bundle"


def test_entry_in_tree_with_bad_signature() -> None:
    node = Ed25519Signer.from_seed(bytes([2]) * 32)
    wire = bytearray(
        sign_event(
            new_event("he.job", origin="edge-1", subject=("task", "t"), now=T0), node
        ).to_bytes()
    )
    wire[20] ^= 1  # inside the signature
    w = make_world(2, extra=[bytes(wire)])
    with pytest.raises(AuthenticationError):
        w.verify(w.bundle(2))
    garbage = make_world(2, extra=[b"not an event"])
    with pytest.raises(DecodeError):
        garbage.verify(garbage.bundle(2))


B64_32 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"version": True},
        {"format": "something-else"},
        {"leaf_index": True},
        {"leaf_index": -1},
        {"leaf_index": 1.0},
        {"tree_size": "13"},
        {"entry": "not base64!"},
        {"entry": "QQ"},  # unpadded
        {"origin_verify_key": B64_32[:-4]},
        {"origin_verify_key": None},
        {"origin_certificate": 5},
        {"inclusion_proof": "x"},
        {"inclusion_proof": [B64_32] * 65},
        {"inclusion_proof": [base64.b64encode(bytes(31)).decode()]},
        {"checkpoint": None},
        {"extra": 1},
    ],
    ids=str,
)
def test_strict_parsing(world: World, change: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        world.verify(edit(world.bundle(0), **change))


def test_strict_parsing_structure(world: World) -> None:
    good = world.bundle(0)
    doc = json.loads(good)
    del doc["origin_certificate"]
    for bad in [
        json.dumps(doc).encode(),
        b"[]",
        b"",
        b"\xff",
        good.replace(b'"leaf_index": 0', b'"leaf_index": 0, "leaf_index": 0'),
        good.replace(b'"leaf_index": 0', b'"leaf_index": NaN'),
        b"[" * 100_000,
    ]:
        with pytest.raises(DecodeError):
            world.verify(bad)
    with pytest.raises(SizeLimitExceeded):
        world.verify(b" " * (MAX_BUNDLE_SIZE + 1))


def test_build_rejects_misuse(world: World) -> None:
    with pytest.raises(LocalError):
        world.bundle(0, leaf_index=13)
    with pytest.raises(LocalError):
        world.bundle(0, inclusion_proof=[b"short"])
    with pytest.raises(LocalError):
        world.bundle(0, origin_verify_key=b"short")
    with pytest.raises(LocalError):
        world.bundle(0, checkpoint_note=b"\xff")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_corruption_never_verifies_something_else(data: st.DataObject) -> None:
    w = make_world(5)
    good = w.bundle(3)
    pos = data.draw(st.integers(0, len(good) - 1), "position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != good[pos]), "byte")
    bad = good[:pos] + bytes([new]) + good[pos + 1 :]
    try:
        vp = w.verify(bad)
    except RemoteError:
        return
    # Only changes JSON ignores (insignificant whitespace) may pass, with the same result.
    assert vp.leaf_index == 3
    assert vp.signed_event == SignedEvent.from_bytes(w.entries[3])


# ------------------------------------------------------------ consistency files


def _signed_head(w: World, size: int) -> bytes:
    cp = Checkpoint(LOG, size, root_from_leaf_hashes(w.hashes[:size]))
    return sign_checkpoint(cp, key_name=LOG, signer=w.log_signer)


def _consistency(w: World, old: int, new: int) -> bytes:
    return build_consistency_bundle(
        old_note=_signed_head(w, old),
        new_note=_signed_head(w, new),
        proof=consistency_proof(old, w.hashes[:new]),
    )


def _verify_consistency(w: World, data: bytes, key: bytes | None = None) -> Any:
    vk = w.log_signer.verify_key if key is None else key
    return verify_consistency_bundle(data, log_key_name=LOG, log_verify_key=vk, log_origin=LOG)


def test_consistency_file_round_trip(world: World) -> None:
    data = _consistency(world, 5, 13)
    assert bundle_format(data) == CONSISTENCY_FORMAT
    assert bundle_format(world.bundle(2)) == BUNDLE_FORMAT
    both = _verify_consistency(world, data)
    assert (both.old.size, both.new.size) == (5, 13)
    assert both.new.root_hash == root_from_leaf_hashes(world.hashes)


def test_consistency_file_refusals(world: World) -> None:
    data = _consistency(world, 5, 13)
    with pytest.raises(AuthenticationError):  # another log's key
        _verify_consistency(world, data, Ed25519Signer.from_seed(b"x" * 32).verify_key)
    doc = json.loads(data)
    # a proof between other sizes, or a forked old head, does not verify
    other = json.loads(_consistency(world, 6, 13))
    with pytest.raises(ConsistencyProofError):
        _verify_consistency(world, edit(data, consistency_proof=other["consistency_proof"]))
    forked = [*world.entries[:4], b"forged"]  # another tree of size 5, signed by the log
    fork_root = root_from_leaf_hashes([leaf_hash(e) for e in forked])
    fork_note = sign_checkpoint(
        Checkpoint(LOG, 5, fork_root), key_name=LOG, signer=world.log_signer
    )
    with pytest.raises(ConsistencyProofError):
        _verify_consistency(world, edit(data, old_checkpoint=fork_note.decode()))
    # strict: exactly the fields, the format, version 1, canonical hashes
    for change in (
        {"extra": 1},
        {"format": BUNDLE_FORMAT},
        {"version": 2},
        {"consistency_proof": ["AA=="]},
        {"consistency_proof": "nope"},
        {"old_checkpoint": 5},
    ):
        with pytest.raises(DecodeError):
            _verify_consistency(world, edit(data, **change))
    without = {k: v for k, v in doc.items() if k != "new_checkpoint"}
    with pytest.raises(DecodeError):
        _verify_consistency(world, json.dumps(without).encode())
    with pytest.raises(SizeLimitExceeded):
        _verify_consistency(world, b" " * (MAX_BUNDLE_SIZE + 1))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_consistency_decoder_only_raises_remote_errors(junk: bytes) -> None:
    w = make_world(3)
    with pytest.raises(RemoteError):
        _verify_consistency(w, junk)


def test_note_signers_names_keys_without_verifying(world: World) -> None:
    assert note_signers(world.note) == [(LOG, key_id(LOG, world.log_signer.verify_key))]
    with pytest.raises(DecodeError):
        note_signers(b"no signature block\n")


# ------------------------------------------------------------ public surface (httpx-style lock)

EXPORTS = {
    "securemesh.audit.merkle": (
        "CompactRange EMPTY_ROOT GetNode HASH_SIZE MAX_PROOF_LENGTH MerkleAccumulator Node NodeId "
        "consistency_proof consistency_proof_from_nodes consistency_proof_plan hash_plan "
        "inclusion_proof inclusion_proof_from_nodes inclusion_proof_plan leaf_hash node_hash "
        "peak_ids root root_from_leaf_hashes subtree_node_ids verify_consistency verify_inclusion"
    ),
    "securemesh.audit.checkpoint": (
        "Checkpoint MAX_CHECKPOINT_SIZE MAX_SIGNATURES NoteVerifier SIG_TYPE_ED25519 "
        "TIME_EXTENSION format_verifier_key key_id note_signers open_checkpoint open_note "
        "parse_verifier_key sign_checkpoint sign_note"
    ),
    "securemesh.audit.events": (
        "AuditEvent DetailValue EVENT_SIGNATURE_DOMAIN EVENT_VERSION EventKind MAX_DETAIL_KEYS "
        "MAX_DETAIL_KEY_LENGTH MAX_DETAIL_STR_LENGTH MAX_EVENT_SIZE MAX_SIGNED_EVENT_SIZE Outcome "
        "REQUIRED_DETAILS SignedEvent Subject SubjectType event_key_id new_event sign_event "
        "BUILTIN_NAMESPACES KIND_PATTERN MAX_KIND_LENGTH KindStr is_valid_kind kind_namespace"
    ),
    "securemesh.audit.proofs": (
        "BUNDLE_FORMAT BUNDLE_VERSION CONSISTENCY_FORMAT MAX_BUNDLE_SIZE VerifiedConsistency "
        "VerifiedProof build_consistency_bundle build_proof_bundle bundle_format "
        "verify_consistency_bundle verify_proof_bundle"
    ),
}


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_public_surface_is_locked(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPORTS[module].split())
    for name in mod.__all__:
        assert hasattr(mod, name)


def test_package_reexports_the_core() -> None:
    from securemesh import audit

    core = {
        "AuditEvent", "Checkpoint", "EventKind", "Outcome", "SignedEvent", "Subject",
        "SubjectType", "VerifiedProof", "build_proof_bundle", "format_verifier_key", "new_event",
        "open_checkpoint", "parse_verifier_key", "sign_checkpoint", "sign_event",
        "verify_proof_bundle",
    }  # fmt: skip
    assert core <= set(audit.__all__)
    assert all(hasattr(audit, name) for name in core)
