"""Hybrid X25519 + ML-KEM-768 key establishment (securemesh.crypto.kem)."""

from __future__ import annotations

from typing import Any

import pytest
from crypto_support import load_spec_vectors, reference_hkdf
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto import kem
from securemesh.errors import AuthenticationError, DecodeError, LocalError

VECTORS: list[dict[str, Any]] = load_spec_vectors("kem.json")["vectors"]


def test_sizes_match_fips_203_and_the_tls_hybrid_draft() -> None:
    assert kem.HYBRID_PUBLIC_KEY_SIZE == 1184 + 32
    assert kem.HYBRID_CIPHERTEXT_SIZE == 1088 + 32
    key = kem.HybridPrivateKey.generate()
    assert len(key.public_key().to_bytes()) == kem.HYBRID_PUBLIC_KEY_SIZE


def test_round_trip_and_context_binding() -> None:
    key = kem.HybridPrivateKey.generate()
    secret, ct = kem.encapsulate(key.public_key(), context=b"transcript")
    assert len(secret) == 32
    assert key.decapsulate(ct, context=b"transcript") == secret
    assert key.decapsulate(ct, context=b"other transcript") != secret
    assert kem.HybridCiphertext.from_bytes(ct.to_bytes()) == ct


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["context"][:8])
def test_known_answer_vectors(vector: dict[str, Any]) -> None:
    h = bytes.fromhex
    key = kem.HybridPrivateKey.from_seeds(h(vector["x25519_secret"]), h(vector["mlkem_seed"]))
    assert key.public_key().to_bytes() == h(vector["public_key"])
    ct = kem.HybridCiphertext.from_bytes(h(vector["ciphertext"]))
    secret = key.decapsulate(ct, context=h(vector["context"]))
    assert secret == h(vector["secret"])
    # Component secrets from the bare primitives, then the combiner by hand.
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(h(vector["mlkem_seed"])).decapsulate(ct.mlkem)
    ss_x = x25519.X25519PrivateKey.from_private_bytes(h(vector["x25519_secret"])).exchange(
        x25519.X25519PublicKey.from_public_bytes(ct.x25519)
    )
    assert ss_m == h(vector["mlkem_shared_secret"])
    assert ss_x == h(vector["x25519_shared_secret"])
    pk_x = key.public_key().x25519
    ikm = ss_m + ss_x + ct.x25519 + pk_x
    assert reference_hkdf(ikm, kem.COMBINER_LABEL, h(vector["context"]), 32) == secret
    keys = kem.derive_session_keys(secret, h(vector["context"]))
    assert keys.initiator_to_responder == h(vector["i2r"])
    assert keys.responder_to_initiator == h(vector["r2i"])
    assert keys.initiator_confirm == h(vector["initiator_confirm"])
    assert keys.responder_confirm == h(vector["responder_confirm"])
    assert keys.session_id == h(vector["session_id"])


def test_session_keys_are_distinct_and_hidden_from_repr() -> None:
    keys = kem.derive_session_keys(b"\x01" * 32, b"th")
    values = {
        keys.initiator_to_responder,
        keys.responder_to_initiator,
        keys.initiator_confirm,
        keys.responder_confirm,
    }
    assert len(values) == 4
    assert len(keys.session_id) == 16
    text = repr(keys)
    assert all(v.hex() not in text for v in values)
    priv = kem.HybridPrivateKey.generate()
    assert "HybridPrivateKey" in repr(priv)


def test_tampered_mlkem_ciphertext_gives_a_different_secret() -> None:
    key = kem.HybridPrivateKey.generate()
    secret, ct = kem.encapsulate(key.public_key(), context=b"c")
    bad = bytearray(ct.mlkem)
    bad[0] ^= 1
    tampered = kem.HybridCiphertext(mlkem=bytes(bad), x25519=ct.x25519)
    assert key.decapsulate(tampered, context=b"c") != secret  # implicit rejection


def test_low_order_x25519_point_is_refused() -> None:
    key = kem.HybridPrivateKey.generate()
    _, ct = kem.encapsulate(key.public_key(), context=b"c")
    zero = kem.HybridCiphertext(mlkem=ct.mlkem, x25519=bytes(32))
    with pytest.raises(AuthenticationError):
        key.decapsulate(zero, context=b"c")


def test_mlkem_public_key_modulus_check() -> None:
    with pytest.raises(DecodeError):
        kem.HybridPublicKey(mlkem=b"\xff" * 1184, x25519=bytes(range(32)))


def test_deterministic_generation_from_injected_rng() -> None:
    def rng(n: int) -> bytes:
        return bytes([7]) * n

    a = kem.HybridPrivateKey.generate(rng)
    b = kem.HybridPrivateKey.generate(rng)
    assert a.public_key() == b.public_key()


def test_bad_local_arguments() -> None:
    with pytest.raises(LocalError):
        kem.HybridPrivateKey.from_seeds(b"short", bytes(64))
    with pytest.raises(LocalError):
        kem.combine(b"x", bytes(32), bytes(32), bytes(32), context=b"")
    with pytest.raises(LocalError):
        kem.derive_session_keys(b"x", b"")


def test_ratchet_is_one_way_and_deterministic() -> None:
    k0 = bytes(32)
    k1 = kem.next_traffic_key(k0)
    assert k1 != k0
    assert kem.next_traffic_key(k0) == k1
    assert len(k1) == 32


@settings(max_examples=200)
@given(st.binary(max_size=2 * kem.HYBRID_PUBLIC_KEY_SIZE))
def test_public_key_decoder_rejects_or_round_trips(data: bytes) -> None:
    try:
        pk = kem.HybridPublicKey.from_bytes(data)
    except DecodeError:
        return
    assert pk.to_bytes() == data


@settings(max_examples=200)
@given(st.binary(max_size=2 * kem.HYBRID_CIPHERTEXT_SIZE))
def test_ciphertext_decoder_rejects_or_round_trips(data: bytes) -> None:
    try:
        ct = kem.HybridCiphertext.from_bytes(data)
    except DecodeError:
        return
    assert ct.to_bytes() == data
