"""The long fuzz run: 100,000 inputs per network decoder (``pytest tests/fuzz --fuzz-long``).

Hypothesis spends about a millisecond per example on these machines before
a decoder runs (its engine, then the strategies), so 100,000 inputs for each
of some forty decoders would take hours. This run keeps hypothesis' role for
the default run (the other files: strategies, shrinking, a small budget) and
drives the same properties with a seeded mutation loop: each input is a
random edit sequence of one of the decoder's valid encodings
(:func:`fuzz_support.mutate`: bit flips, byte sets, truncation, extension,
insertion, deletion, swapped and duplicated slices, zeroed runs), or, one
time in ten, random bytes. Inputs are reproducible from the target's seed
(CRC-32 of its name) and the index a failure reports.

Each target states its property as the hypothesis tests do: only the
decoder's documented errors, within the hang bound (:func:`fuzz_support.run`),
and no acceptance of a changed signed object.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import test_fuzz_audit as audit_t
import test_fuzz_crypto as crypto_t
import test_fuzz_enroll as enroll_t
import test_fuzz_fl as fl_t
import test_fuzz_he as he_t
import test_fuzz_storage as storage_t
import test_fuzz_tasks as tasks_t
import test_fuzz_wire as wire_t
from fuzz_support import LONG_EXAMPLES, documents, long_mode, mutate, run

from securemesh import session as sm
from securemesh.audit import ingest
from securemesh.audit._entry import decode_entry, event_fields, verify_decoded
from securemesh.audit.checkpoint import open_checkpoint
from securemesh.audit.events import AuditEvent, SignedEvent
from securemesh.audit.proofs import verify_consistency_bundle, verify_proof_bundle
from securemesh.crypto import aead, boxes
from securemesh.crypto.certs import RevocationList, verify_certificate, verify_revocation_list
from securemesh.crypto.shamir import Share
from securemesh.enroll import JoinToken
from securemesh.enroll._client import open_enroll_request
from securemesh.errors import (
    AuthenticationError,
    CertificateError,
    DecodeError,
    InclusionProofError,
    RemoteError,
)
from securemesh.fl._messages import decode as fl_decode
from securemesh.he import load_chunk, load_public_context
from securemesh.storage import GetPlan, open_manifest, peek_owner_unverified
from securemesh.storage._proof import StorageProof, verify_storage_proof
from securemesh.tasks._model import SignedTaskResult
from securemesh.tasks._service import verify_result
from securemesh.wire import AuthMode, decode, decode_packed, pack_frames
from securemesh.wire._json import parse_body

pytestmark = pytest.mark.skipif(
    not long_mode(), reason="the long fuzz run: pytest tests/fuzz --fuzz-long"
)


@dataclass(frozen=True)
class Target:
    name: str
    make: Callable[[random.Random], Any]
    check: Callable[[Any], None]
    count: int = LONG_EXAMPLES
    #: a decoder that parses ~100 kB per input (TenSEAL) stops at this many seconds
    budget_s: float = float("inf")


def _bytes_from(corpus: Callable[[], list[bytes]]) -> Callable[[random.Random], bytes]:
    def make(rng: random.Random) -> bytes:
        if rng.random() < 0.1:
            return rng.randbytes(rng.choice((0, 1, 8, 64, 512, 4096)))
        return mutate(rng.choice(corpus()), rng)

    return make


def _frames_from(originals: list[list[bytes]]) -> Callable[[random.Random], list[bytes]]:
    def make(rng: random.Random) -> list[bytes]:
        out = list(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            op, i = (
                rng.choice(("mutate", "swap", "drop", "dup", "append")),
                rng.randrange(len(out) or 1),
            )
            if op == "mutate" and out:
                out[i] = mutate(out[i], rng)
            elif op == "swap" and len(out) > 1:
                j = rng.randrange(len(out))
                out[i], out[j] = out[j], out[i]
            elif op == "drop" and out:
                del out[i]
            elif op == "dup" and out:
                out.insert(rng.randint(0, len(out)), out[i])
            else:
                out.append(rng.randbytes(rng.randint(0, 40)))
        return out

    return make


# ---------------------------------------------------------------- the checks


def _wire(frames: list[bytes]) -> None:
    unverified = run("wire.decode(multipart)", lambda: decode(frames))
    if unverified is None:
        return
    if unverified.auth_mode is AuthMode.SIGNED:
        ok = run("wire.verify", lambda: unverified.verify_signature(wire_t.SIGNER.verify_key))
    else:
        ok = run("wire.verify", lambda: unverified.verify_mac(wire_t.MAC_KEY))
    assert ok is None or frames in wire_t.ORIGINALS.values()


_PACKED = [pack_frames(f) for f in wire_t.ORIGINALS.values()]


def _packed(data: bytes) -> None:
    unverified = run("wire.decode_packed", lambda: decode_packed(data))
    if unverified is not None and unverified.auth_mode is AuthMode.SIGNED:
        ok = run("wire.verify", lambda: unverified.verify_signature(wire_t.SIGNER.verify_key))
        assert ok is None or data in _PACKED


def _handshake(data: bytes) -> None:
    msg = run("session.decode_handshake_message", lambda: sm.decode_handshake_message(data))
    assert msg is None or msg.encode() == data


def _cert(data: bytes) -> None:
    cert = run(
        "crypto.verify_certificate",
        lambda: verify_certificate(data, trust=crypto_t.TRUST, now=crypto_t.NOW + 1),
        CertificateError,
    )
    assert cert is None or data in (crypto_t.CERT, crypto_t.EDGE_CERT)


def _chain(data: bytes) -> None:
    cert = run(
        "crypto.verify_certificate(chain)",
        lambda: verify_certificate(
            data, trust=crypto_t.TRUST, now=crypto_t.NOW + 1, intermediates=[crypto_t.EDGE_CERT]
        ),
        CertificateError,
    )
    assert cert is None or data in (crypto_t.DELEGATED, crypto_t.EDGE_CERT)


def _rl(data: bytes) -> None:
    rl = run(
        "crypto.verify_revocation_list",
        lambda: verify_revocation_list(data, trust=crypto_t.TRUST),
        CertificateError,
    )
    assert rl is None or data == crypto_t.REVOKED


def _rl_bytes(data: bytes) -> None:
    rl = run(
        "crypto.RevocationList.from_bytes",
        lambda: RevocationList.from_bytes(data),
        CertificateError,
    )
    assert rl is None or rl.to_bytes() == data


def _sealed(data: bytes) -> None:
    plain = run(
        "crypto.aead.open_sealed",
        lambda: aead.open_sealed(crypto_t.KEY, data, aad=b"aad"),
        AuthenticationError,
    )
    assert plain is None or data == crypto_t.SEALED
    key = run(
        "crypto.boxes.unwrap_key",
        lambda: boxes.unwrap_key(crypto_t.DEVICE.kx_secret(), data),
        AuthenticationError,
    )
    assert key is None or data == crypto_t.WRAPPED


def _share(data: bytes) -> None:
    share = run("crypto.Share.from_bytes", lambda: Share.from_bytes(data), DecodeError)
    assert share is None or share.to_bytes() == data


def _enroll(frames: list[bytes]) -> None:
    opened = run("enroll.open_enroll_request", lambda: open_enroll_request(frames))
    assert opened is None or frames == enroll_t.FRAMES


def _token(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    token = run("enroll.JoinToken.decode", lambda: JoinToken.decode(text), RemoteError)
    assert token is None or token == enroll_t.TOKEN or token.encode() == text


def _manifest(data: bytes) -> None:
    m = run(
        "storage.open_manifest",
        lambda: open_manifest(data, storage_t.WRITER.verify_key),
        storage_t.MANIFEST_ERRORS,
    )
    assert m is None or data == storage_t.BLOB


def _owner_signed(body: bytes) -> None:
    blob = storage_t._owner_signed(body)
    m = run(
        "storage.open_manifest(owner-signed)",
        lambda: open_manifest(blob, storage_t.WRITER.verify_key),
        DecodeError,
    )
    assert m is None or m.canonical() == body


def _peek(data: bytes) -> None:
    owner = run("storage.peek_owner_unverified", lambda: peek_owner_unverified(data), DecodeError)
    assert owner is None or isinstance(owner, str)


_SHARD_AT = (0, 0)


def _shard(frame: bytes) -> None:
    segment, index = _SHARD_AT
    plan = GetPlan.for_reader(storage_t.MANIFEST, "reader", storage_t.READER.kx_secret())
    while not plan.ready(segment):
        for want in plan.wanted(segment):
            at = want.index
            data = frame if at == index else storage_t.SHARDS[segment, at]
            kept = run(
                "storage.shard_frame",
                lambda at=at, data=data: plan.received(segment, at, data),  # type: ignore[misc]
            )
            assert kept == (data == storage_t.SHARDS[segment, at])
    assert plan.plaintext(segment) == storage_t.DATA[: storage_t.SEG]


def _proof(block: bytes) -> None:
    original = storage_t._PROOF
    proof = StorageProof((block, *original.blocks[1:]), original.paths)
    passed = run(
        "storage.verify_storage_proof",
        lambda: (
            verify_storage_proof(
                storage_t._ADDRESS, len(storage_t._SHARD), storage_t._NONCE, 4, proof
            )
            or True
        ),
        InclusionProofError,
    )
    assert not passed or block == original.blocks[0]


def _entry(data: bytes) -> None:
    decoded = run("audit.decode_entry", lambda: decode_entry(data))
    if decoded is not None:
        event = run(
            "audit.verify_decoded", lambda: verify_decoded(decoded, audit_t.NODE.verify_key)
        )
        assert event is None or data in audit_t.ENTRIES


def _event_body(data: bytes) -> None:
    event = run(
        "audit.AuditEvent.from_canonical_bytes", lambda: AuditEvent.from_canonical_bytes(data)
    )
    assert event is None or event.canonical_bytes() == data
    run("audit.event_fields", lambda: event_fields(data), ())


def _checkpoint(data: bytes) -> None:
    cp = run(
        "audit.open_checkpoint",
        lambda: open_checkpoint(
            data, key_name=audit_t.LOG, verify_key=audit_t.LOG_SIGNER.verify_key, origin=audit_t.LOG
        ),
    )
    assert cp is None or cp.root_hash == audit_t.root_from_leaf_hashes(audit_t.HASHES[: cp.size])


def _bundle(data: bytes) -> None:
    proof = run(
        "audit.verify_proof_bundle",
        lambda: verify_proof_bundle(
            data,
            log_key_name=audit_t.LOG,
            log_verify_key=audit_t.LOG_SIGNER.verify_key,
            log_origin=audit_t.LOG,
        ),
    )
    assert proof is None or proof.signed_event.to_bytes() == audit_t.ENTRIES[4]


def _consistency(data: bytes) -> None:
    result = run(
        "audit.verify_consistency_bundle",
        lambda: verify_consistency_bundle(
            data,
            log_key_name=audit_t.LOG,
            log_verify_key=audit_t.LOG_SIGNER.verify_key,
            log_origin=audit_t.LOG,
        ),
    )
    assert result is None or result.new.root_hash == audit_t.root_from_leaf_hashes(audit_t.HASHES)


def _acks(data: bytes) -> None:
    acks = run("audit.ingest.decode_acks", lambda: ingest._decode_acks(data))
    assert acks is None or isinstance(acks, list)


def _fl(data: bytes) -> None:
    msg = run("fl.decode", lambda: fl_decode(data), DecodeError)
    assert msg is None or msg.encode() == data  # type: ignore[attr-defined]


def _chunk(data: bytes) -> None:
    owner = he_t._world()[0]
    vec = run("he.load_chunk", lambda: load_chunk(owner.public.ts, he_t.FAST, data, 8), DecodeError)
    assert vec is None or vec.size() == 8


def _context(data: bytes) -> None:
    public = run(
        "he.load_public_context", lambda: load_public_context(data, he_t.FAST), DecodeError
    )
    assert public is None or not public.ts.has_secret_key()


def _task_result(data: bytes) -> None:
    result = run("tasks.SignedTaskResult", lambda: parse_body(SignedTaskResult, data), DecodeError)
    if result is not None:
        outcome = run("tasks.verify_result", lambda: verify_result(result, tasks_t.CERT))
        assert outcome is None or outcome == tasks_t.OUTCOME


# ------------------------------------------------------------- JSON bodies


@functools.cache
def _body_corpus(models: tuple[type, ...]) -> list[tuple[type, bytes]]:
    """A few schema-shaped documents per model (hypothesis draws them once), as seeds."""
    out: list[tuple[type, bytes]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .example() outside a test: wanted here
        for model in models:
            strategy = documents(model)
            for _ in range(8):
                doc = strategy.example()
                out.append((model, json.dumps(doc, separators=(",", ":")).encode()))
    return out


def _bodies(package: str, models: list[type], real: tuple[tuple[type, bytes], ...] = ()) -> Target:
    """``package``'s body models; ``real``: valid encodings seen on the wire, as seeds too."""
    key = tuple(models)

    def make(rng: random.Random) -> tuple[type, bytes]:
        model, seed = rng.choice(real if real and rng.random() < 0.5 else _body_corpus(key))
        return model, mutate(seed, rng) if rng.random() < 0.9 else seed

    def check(case: tuple[type, bytes]) -> None:
        model, data = case
        value = run(f"{package}.parse_body", lambda: parse_body(model, data), DecodeError)
        if value is not None:
            assert parse_body(model, value.model_dump_json().encode()) == value

    return Target(f"{package}.parse_body", make, check)


TARGETS = [
    Target("wire.decode(multipart)", _frames_from(list(wire_t.ORIGINALS.values())), _wire),
    Target("wire.decode_packed", _bytes_from(lambda: _PACKED), _packed),
    Target(
        "session.decode_handshake_message",
        _bytes_from(lambda: [wire_t.HELLO, wire_t.ACCEPT, wire_t.FINISH]),
        _handshake,
    ),
    Target(
        "crypto.verify_certificate", _bytes_from(lambda: [crypto_t.CERT, crypto_t.EDGE_CERT]), _cert
    ),
    Target("crypto.verify_certificate(chain)", _bytes_from(lambda: [crypto_t.DELEGATED]), _chain),
    Target("crypto.verify_revocation_list", _bytes_from(lambda: [crypto_t.REVOKED]), _rl),
    Target(
        "crypto.RevocationList.from_bytes", _bytes_from(lambda: [crypto_t._LIST_BYTES]), _rl_bytes
    ),
    Target(
        "crypto.open_sealed/unwrap_key",
        _bytes_from(lambda: [crypto_t.SEALED, crypto_t.WRAPPED]),
        _sealed,
    ),
    Target("crypto.Share.from_bytes", _bytes_from(lambda: [Share(3, 12345).to_bytes()]), _share),
    Target("enroll.open_enroll_request", _frames_from([enroll_t.FRAMES]), _enroll),
    Target("enroll.JoinToken.decode", _bytes_from(lambda: [enroll_t.TEXT.encode()]), _token),
    Target("storage.open_manifest", _bytes_from(lambda: [storage_t.BLOB]), _manifest),
    Target(
        "storage.open_manifest(owner-signed)",
        _bytes_from(lambda: [storage_t.MANIFEST.canonical()]),
        _owner_signed,
    ),
    Target("storage.peek_owner_unverified", _bytes_from(lambda: [storage_t.BLOB]), _peek),
    Target("storage.shard_frame", _bytes_from(lambda: [storage_t.SHARDS[_SHARD_AT]]), _shard),
    Target(
        "storage.verify_storage_proof", _bytes_from(lambda: [storage_t._PROOF.blocks[0]]), _proof
    ),
    _bodies("storage", storage_t.BODY_MODELS),
    Target("audit.decode_entry+verify", _bytes_from(lambda: audit_t.ENTRIES), _entry),
    Target(
        "audit.event_body",
        _bytes_from(lambda: [SignedEvent.from_bytes(e).event_bytes for e in audit_t.ENTRIES]),
        _event_body,
    ),
    Target(
        "audit.open_checkpoint", _bytes_from(lambda: [audit_t.NOTE, audit_t.OLD_NOTE]), _checkpoint
    ),
    Target("audit.verify_proof_bundle", _bytes_from(lambda: [audit_t.BUNDLE]), _bundle),
    Target(
        "audit.verify_consistency_bundle", _bytes_from(lambda: [audit_t.CONSISTENCY]), _consistency
    ),
    Target("audit.ingest.decode_acks", _bytes_from(lambda: [audit_t.ACKS]), _acks),
    Target("fl.decode", _bytes_from(fl_t._all_frames), _fl),
    _bodies("fl", [fl_t.JoinBody, fl_t.RoundBody, fl_t.RunBody, fl_t.HERoundBody]),
    Target("he.load_chunk", _bytes_from(lambda: list(he_t._world()[2:])), _chunk),
    Target(
        "he.load_public_context", _bytes_from(lambda: [he_t._world()[1]]), _context, budget_s=600
    ),
    _bodies("he", he_t.BODY_MODELS),
    Target(
        "tasks.SignedTaskResult+verify", _bytes_from(lambda: [tasks_t.SIGNED_JSON]), _task_result
    ),
    _bodies("tasks", tasks_t.BODY_MODELS, ((SignedTaskResult, tasks_t.SIGNED_JSON),)),
    _bodies(
        "enroll",
        [enroll_t.EnrollRequest, enroll_t.EnrollReply, enroll_t.RenewRequest, enroll_t.RenewReply],
        ((enroll_t.EnrollRequest, enroll_t.FRAMES[1]),),
    ),
]
#: ``SECUREMESH_FUZZ_SHARD=i/n`` runs every n-th target from the i-th (parallel runs).
_shard, _, _of = os.environ.get("SECUREMESH_FUZZ_SHARD", "0/1").partition("/")
TARGETS = TARGETS[int(_shard) :: int(_of)]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_long(target: Target, record_property: Callable[[str, object], None]) -> None:
    seed = zlib.crc32(target.name.encode())
    rng = random.Random(seed)
    start = time.perf_counter()
    done = 0
    for i in range(target.count):
        case = target.make(rng)
        try:
            target.check(case)
        except BaseException as exc:
            exc.add_note(f"long target {target.name!r}, seed {seed}, input {i}: {case!r:.2000}")
            raise
        done = i + 1
        if time.perf_counter() - start > target.budget_s:
            break
    record_property("inputs", done)
    record_property("seconds", round(time.perf_counter() - start, 1))
    print(f"\nLONG {target.name}: {done} inputs in {time.perf_counter() - start:.0f} s")
