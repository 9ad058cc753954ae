"""The published vectors (docs/vectors/v1, protocol.md §13) against the encoders and decoders.

Each vector is decoded, verified and, where the encoding is deterministic,
re-encoded byte for byte. Envelopes, certificates, the hybrid KEM and the
join token of ``join_token.json`` have their own vector tests
(tests/wire/test_wire_vectors.py, tests/crypto/test_crypto_certs.py,
tests/crypto/test_crypto_kem.py, tests/enroll/test_enroll_token.py), which read
the same files.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from pydantic import BaseModel

from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.kem import HybridPrivateKey, derive_session_keys
from securemesh.crypto.signing import Ed25519Signer
from securemesh.enroll import EnrollRequest, JoinToken, build_enroll_request
from securemesh.enroll._client import open_enroll_request
from securemesh.messages import (
    MESH_ERROR,
    NODE_HELLO,
    NODE_REPORT,
    ErrorReply,
    NodeHello,
    NodeReport,
)
from securemesh.node._attach import sign_attachment, verify_attachment
from securemesh.session import Accept, Finish, Handshake, Hello
from securemesh.transport._zmq import pack_batch, unpack_batch
from securemesh.wire import Flags, decode, dump_body, encode_mac, encode_signed, parse_body

DOCS = Path(__file__).resolve().parents[2] / "docs" / "vectors"
V1 = DOCS / "v1"


def load(name: str) -> Any:
    return json.loads((V1 / name).read_text(encoding="utf-8"))


def hexes(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in items]


def test_the_readme_documents_every_published_file() -> None:
    readme = (DOCS / "README.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in V1.glob("*.json"))
    assert files == sorted(set(re.findall(r"`v1/([a-z_]+\.json)`", readme)))


def test_the_generated_files_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate_vectors", DOCS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for name, make in gen.GENERATED.items():
        assert (V1 / name).read_text(encoding="utf-8") == gen._text(make()), name


# ----------------------------------------------------------------------- batches


@pytest.mark.parametrize("case", load("batches.json")["valid"], ids=lambda c: c["name"])
def test_batch_vectors(case: dict[str, Any]) -> None:
    messages = [hexes(m) for m in case["messages"]]
    payload = bytes.fromhex(case["batch"])
    assert pack_batch(messages) == payload
    assert unpack_batch(payload, 16) == messages


@pytest.mark.parametrize("case", load("batches.json")["invalid"], ids=lambda c: c["name"])
def test_invalid_batches_are_dropped_whole(case: dict[str, Any]) -> None:
    assert unpack_batch(bytes.fromhex(case["batch"]), 16) is None


# -------------------------------------------------------------------- enrollment


def test_join_token_derived_keys_and_enroll_request() -> None:
    v = load("enrollment.json")
    token = JoinToken.decode(v["token"])
    fields = v["token_fields"]
    assert token.to_payload().hex() == v["token_payload"]
    assert token.encode() == v["token"]
    assert (token.authority_id, token.server_id, token.endpoint) == (
        fields["authority_id"],
        fields["server_id"],
        fields["endpoint"],
    )
    assert token.secret.hex() == fields["secret"]
    assert token.name_prefix == fields["name_prefix"]
    pair = token.first_contact_curve_keypair()
    assert pair.secret.hex() == v["first_contact_curve_secret"]
    assert pair.public.hex() == v["first_contact_curve_public"]
    assert token.proof_key().hex() == v["proof_key"]

    seeds = {k: bytes.fromhex(x) for k, x in v["node_seeds"].items()}
    ident = NodeIdentity.from_seeds(**seeds)
    assert ident.public().verify_key.hex() == v["node_keys"]["verify_key"]
    request = build_enroll_request(token, ident, v["node_id"])
    transcript = bytes.fromhex(v["request_transcript"])
    assert request.transcript() == transcript
    proof_input = b"securemesh/enroll-proof/v1\x00" + transcript
    assert hmac.new(token.proof_key(), proof_input, "sha256").hexdigest() == v["proof"]
    assert request.proof.hex() == v["proof"]
    nacl.signing.VerifyKey(ident.public().verify_key).verify(
        b"securemesh/enroll-pop/v1\x00" + transcript, bytes.fromhex(v["signature"])
    )
    body = v["request_body"].encode()
    assert dump_body(request) == body
    assert parse_body(EnrollRequest, body) == request

    frames = hexes(v["envelope"]["frames"])
    env, parsed = open_enroll_request(frames)  # the server's decoder: self-signed, strict
    assert parsed == request
    assert env.flags is Flags.REQUEST
    assert (env.sender, env.recipient) == (v["node_id"], token.server_id)
    again = encode_signed(
        msg_type="enroll.request",
        sender=v["node_id"],
        recipient=token.server_id,
        sequence=v["envelope"]["sequence"],
        timestamp_ms=v["envelope"]["timestamp_ms"],
        correlation_id=bytes.fromhex(v["envelope"]["correlation_id"]),
        flags=Flags.REQUEST,
        body=request,
        signer=ident.signer,
    )
    assert [bytes(f) for f in again] == frames


# ------------------------------------------------------------------------ bodies

MODELS: dict[str, type[BaseModel]] = {
    NODE_HELLO: NodeHello,
    NODE_REPORT: NodeReport,
    MESH_ERROR: ErrorReply,
}


@pytest.mark.parametrize("case", load("bodies.json")["bodies"], ids=lambda c: c["name"])
def test_body_vectors_parse_and_re_encode(case: dict[str, Any]) -> None:
    body = case["body"].encode()
    model = parse_body(MODELS[case["type"]], body)
    assert dump_body(model) == body
    assert b"null" not in body
    spaced = json.dumps(json.loads(body), indent=1).encode()  # whitespace is free
    assert parse_body(MODELS[case["type"]], spaced) == model


def test_attachment_statement_vector() -> None:
    v = load("bodies.json")["attachment"]
    signer = Ed25519Signer.from_seed(bytes.fromhex(v["ed25519_seed"]))
    assert signer.verify_key.hex() == v["verify_key"]
    signed = bytes.fromhex(v["signed"])
    statement = verify_attachment(signed, signer.verify_key, node_id=v["node_id"])
    assert statement.parent_key.hex() == v["parent_curve_key"]
    assert (statement.sequence, statement.timestamp_ms) == (v["sequence"], v["timestamp_ms"])
    assert signed.startswith(bytes.fromhex(v["statement"]))
    again = sign_attachment(
        signer,
        v["node_id"],
        bytes.fromhex(v["parent_curve_key"]),
        sequence=v["sequence"],
        timestamp_ms=v["timestamp_ms"],
    )
    assert again == signed


# ----------------------------------------------------------------------- session


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def test_session_handshake_transcript() -> None:
    v = load("session.json")
    i, r = v["initiator"], v["responder"]
    hello, accept, finish = (bytes.fromhex(v[k]) for k in ("hello", "accept", "finish"))
    label = b"securemesh/v1 session handshake"

    # HELLO follows from the initiator's seeds; FINISH and the keys from ACCEPT
    draws = [bytes.fromhex(i[k]) for k in ("x25519_secret", "mlkem_seed", "nonce")]
    keys = {
        i["node_id"]: bytes.fromhex(i["verify_key"]),
        r["node_id"]: bytes.fromhex(r["verify_key"]),
    }
    init = Handshake.initiator(
        node_id=i["node_id"],
        peer_id=r["node_id"],
        signer=Ed25519Signer.from_seed(bytes.fromhex(i["ed25519_seed"])),
        resolve_peer=keys.__getitem__,
        rng=lambda n: draws.pop(0),
    )
    assert init.initiate() == hello
    assert init.receive(accept) == finish
    session = init.session
    assert session.session_id.hex() == v["session_id"]

    # the same, computed from the spec text (session-and-transport.md §2) alone
    h = Hello.decode(hello)
    a = Accept.decode(accept)
    f = Finish.decode(finish)
    assert (h.initiator_id, h.responder_id) == (i["node_id"], r["node_id"])
    assert a.nonce.hex() == r["nonce"]
    kem_key = HybridPrivateKey.from_seeds(
        bytes.fromhex(i["x25519_secret"]), bytes.fromhex(i["mlkem_seed"])
    )
    secret = kem_key.decapsulate(a.ciphertext, context=_sha256(label, hello, a.nonce))
    th1 = _sha256(label, hello, accept[: 2 + 32 + 1120])
    derived = derive_session_keys(secret, th1)
    assert derived.session_id.hex() == v["session_id"]
    verify_r = nacl.signing.VerifyKey(keys[r["node_id"]])
    verify_r.verify(b"securemesh/v1 handshake signature: responder" + th1, a.signature)
    th2 = _sha256(th1, a.signature)
    assert hmac.new(derived.responder_confirm, th2, "sha256").digest() == a.confirm
    th3 = _sha256(th2, a.confirm)
    verify_i = nacl.signing.VerifyKey(keys[i["node_id"]])
    verify_i.verify(b"securemesh/v1 handshake signature: initiator" + th3, f.signature)
    assert hmac.new(derived.initiator_confirm, _sha256(th3, f.signature), "sha256").digest() == (
        f.confirm
    )

    # envelope MAC keys (protocol.md §5) and a MAC envelope under the i2r key
    mac_label = b"securemesh/v1 envelope mac"
    i2r = hmac.new(derived.initiator_to_responder, mac_label, "sha256").digest()
    r2i = hmac.new(derived.responder_to_initiator, mac_label, "sha256").digest()
    assert (i2r.hex(), r2i.hex()) == (v["envelope_mac_key_i2r"], v["envelope_mac_key_r2i"])
    assert session.envelope_mac_keys() == (i2r, r2i)
    frames = hexes(v["mac_envelope"])
    env = decode(frames).verify_mac(i2r)
    assert env.key_id == derived.session_id
    again = encode_mac(
        msg_type=env.msg_type,
        sender=env.sender,
        recipient=env.recipient,
        sequence=env.sequence,
        timestamp_ms=env.timestamp_ms,
        body=env.body_bytes,
        session_id=derived.session_id,
        key=i2r,
    )
    assert [bytes(x) for x in again] == frames
