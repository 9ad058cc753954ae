"""Join tokens: round trips, strict decoding (fuzzed), derivations against an independent HKDF."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
from pathlib import Path

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto import Tier
from securemesh.enroll import MAX_TOKEN_LENGTH, JoinToken
from securemesh.enroll._token import CURVE_LABEL, PROOF_LABEL, TokenRecord
from securemesh.errors import DecodeError, EncodeError, LocalError, SizeLimitExceeded

DATA = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "v1" / "join_token.json"

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
roles = st.lists(st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True), max_size=6, unique=True)
endpoints = st.builds(
    lambda host, port: f"tcp://{host}:{port}",
    st.sampled_from(["127.0.0.1", "edge-1.example", "[::1]", "localhost"]),
    st.integers(1, 65535),
)


@st.composite
def tokens(draw: st.DrawFn) -> JoinToken:
    tier = draw(st.sampled_from(list(Tier)))
    return JoinToken(
        authority_id=draw(ids),
        root_key=draw(st.binary(min_size=32, max_size=32)),
        server_key=draw(st.binary(min_size=32, max_size=32)),
        server_id=draw(ids),
        endpoint=draw(endpoints),
        token_id=draw(st.binary(min_size=16, max_size=16)),
        secret=draw(st.binary(min_size=32, max_size=32)),
        expires_at=draw(st.integers(1, 2**63 - 1)),
        tier=tier,
        roles=tuple(sorted(draw(roles))),
        delegate=tier is Tier.EDGE and draw(st.booleans()),
        name_prefix=draw(
            st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)
        ),
    )


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 with an empty salt, written out with hmac (independent of the library)."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _vector_token() -> JoinToken:
    return JoinToken(
        authority_id="mesh",
        root_key=bytes(range(32)),
        server_key=bytes(range(32, 64)),
        server_id="cloud-1",
        endpoint="tcp://127.0.0.1:7100",
        token_id=bytes(range(100, 116)),
        secret=bytes(range(200, 232)),
        expires_at=1_800_003_600,
        tier=Tier.EDGE,
        roles=("gateway", "storage"),
        delegate=True,
    )


@given(tokens())
def test_round_trip(token: JoinToken) -> None:
    text = token.encode()
    assert text.startswith("smj1.")
    assert len(text) <= MAX_TOKEN_LENGTH
    assert JoinToken.decode(text) == token
    assert JoinToken.decode(f"  {text}\n") == token  # pasted from a shell


@settings(max_examples=300)
@given(st.text(max_size=1200))
def test_any_string_is_a_token_or_decode_error(text: str) -> None:
    try:
        token = JoinToken.decode(text)
    except DecodeError:
        return
    assert JoinToken.decode(token.encode()) == token


@settings(max_examples=300)
@given(tokens(), st.data())
def test_mutated_tokens_decode_strictly_or_fail(token: JoinToken, data: st.DataObject) -> None:
    payload = bytearray(token.to_payload())
    i = data.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(payload)))
    mutated = bytes(payload[:cut]) if data.draw(st.booleans()) else bytes(payload)
    text = "smj1." + base64.urlsafe_b64encode(mutated).rstrip(b"=").decode()
    try:
        decoded = JoinToken.decode(text)
    except DecodeError:
        return
    assert decoded.to_payload() == mutated  # one encoding per token: nothing was "repaired"


def test_decoder_refuses_non_canonical_and_oversize() -> None:
    text = _vector_token().encode()
    with pytest.raises(DecodeError):
        JoinToken.decode(text + "=")  # padding
    with pytest.raises(DecodeError):
        JoinToken.decode("smj2." + text[5:])
    with pytest.raises(DecodeError):
        JoinToken.decode(text.replace("-", "+").replace("_", "/"))  # standard alphabet
    payload = _vector_token().to_payload() + b"\x00"
    with pytest.raises(DecodeError, match="trailing"):
        JoinToken.decode("smj1." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode())
    with pytest.raises(SizeLimitExceeded):
        JoinToken.decode("smj1." + "A" * 2000)
    with pytest.raises(DecodeError):
        JoinToken.decode(b"smj1.AAAA")  # type: ignore[arg-type]
    flags = bytearray(_vector_token().to_payload())
    flags[-1] = 0x04
    with pytest.raises(DecodeError, match="reserved"):
        JoinToken.from_payload(bytes(flags))
    flags[-1] = 0x02  # "a name prefix follows", and none does
    with pytest.raises(DecodeError, match="truncated"):
        JoinToken.from_payload(bytes(flags))
    for bad_prefix in (b"\x00", b"\x02.a", b"\x40" + b"a" * 64):
        with pytest.raises(DecodeError, match="name prefix"):
            JoinToken.from_payload(bytes(flags) + bad_prefix)


def test_name_prefix_round_trip_and_node_id_check() -> None:
    """An edge's token carries its namespace; the old layout is unchanged without it."""
    plain = _vector_token()
    token = dataclasses.replace(plain, tier=Tier.END, delegate=False, name_prefix="edge-1.")
    payload = token.to_payload()
    assert payload.endswith(b"\x02\x07edge-1.")
    assert JoinToken.decode(token.encode()) == token
    assert dataclasses.replace(token, name_prefix=None).to_payload() == payload[:-9] + b"\x00"
    assert token.check_node_id("edge-1.sensor-7") == "edge-1.sensor-7"
    for outside in ("sensor-7", "edge-1.", "edge-10.x", "cloud-1"):
        with pytest.raises(LocalError, match=re.escape("choose an id starting with 'edge-1.'")):
            token.check_node_id(outside)
    assert plain.check_node_id("anything") == "anything"
    with pytest.raises(LocalError):
        dataclasses.replace(plain, name_prefix="")


def test_validation_on_construction() -> None:
    good = _vector_token()
    with pytest.raises(LocalError):
        dataclasses.replace(good, endpoint="ipc:///tmp/x")
    with pytest.raises(LocalError):
        dataclasses.replace(good, endpoint="tcp://h:0")
    with pytest.raises(LocalError):
        dataclasses.replace(good, secret=b"short")
    with pytest.raises(LocalError):
        dataclasses.replace(good, roles=("b", "a"))
    with pytest.raises(LocalError, match="edge"):
        dataclasses.replace(good, tier=Tier.END)  # delegate=True needs an edge
    big = dataclasses.replace(
        good,
        authority_id="a" * 64,
        endpoint="tcp://" + "h" * 100 + ":7100",
        roles=tuple(f"{i:02d}" + "r" * 30 for i in range(16)),
    )
    with pytest.raises(EncodeError):
        big.encode()


def test_secret_never_in_repr() -> None:
    token = _vector_token()
    for text in (repr(token), str(token), repr(token.first_contact_curve_keypair())):
        assert token.secret.hex() not in text
        assert token.first_contact_curve_keypair().secret.hex() not in text
    record = TokenRecord.for_token(token, issuer="mesh", created_at=1)
    assert token.secret.hex() not in repr(record)
    assert token.secret not in (record.proof_key, record.secret_sha256, record.curve_key)


def test_known_answer_vector() -> None:
    vector = json.loads(DATA.read_text())
    token = _vector_token()
    assert token.encode() == vector["token"]
    assert JoinToken.decode(vector["token"]) == token
    pair = token.first_contact_curve_keypair()
    assert pair.public.hex() == vector["first_contact_public"]
    assert token.proof_key().hex() == vector["proof_key"]
    # Independent derivations: RFC 5869 by hand, X25519 base point via libsodium (clamps).
    seed = _hkdf(token.secret, CURVE_LABEL)
    assert nacl.bindings.crypto_scalarmult_base(seed).hex() == vector["first_contact_public"]
    assert _hkdf(token.secret, PROOF_LABEL).hex() == vector["proof_key"]
    assert token.secret_sha256() == hashlib.sha256(token.secret).digest()


def test_record_checks_secret() -> None:
    token = _vector_token()
    record = TokenRecord.for_token(token, issuer="mesh", created_at=1)
    record.check_secret(token.secret)
    with pytest.raises(LocalError):
        record.check_secret(bytes(32))
    assert record.usable_at(1_800_003_599)
    assert not record.usable_at(1_800_003_600)
