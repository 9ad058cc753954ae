"""XChaCha20-Poly1305 seal/open: draft-irtf-cfrg-xchacha A.3.1, tampering, misuse."""

from __future__ import annotations

import pytest
from crypto_support import load_vectors
from hypothesis import given
from hypothesis import strategies as st

from securemesh.crypto import aead
from securemesh.errors import AuthenticationError, LocalError

KEY = bytes(range(32))


def test_known_answer_draft_xchacha() -> None:
    vector = load_vectors("aead_vectors.json")["xchacha20poly1305"][0]
    key, nonce = bytes.fromhex(vector["key"]), bytes.fromhex(vector["nonce"])
    aad, plaintext = bytes.fromhex(vector["aad"]), bytes.fromhex(vector["plaintext"])
    expected = bytes.fromhex(vector["ciphertext"] + vector["tag"])
    blob = aead.seal(key, plaintext, aad=aad, nonce=nonce)
    assert blob == nonce + expected
    assert aead.open_sealed(key, blob, aad=aad) == plaintext


def test_sizes() -> None:
    assert (aead.KEY_SIZE, aead.NONCE_SIZE, aead.TAG_SIZE, aead.OVERHEAD) == (32, 24, 16, 40)
    assert len(aead.generate_key()) == aead.KEY_SIZE
    assert aead.generate_key() != aead.generate_key()


def test_random_nonces_differ() -> None:
    assert aead.seal(KEY, b"x")[:24] != aead.seal(KEY, b"x")[:24]


@given(plaintext=st.binary(max_size=200), aad=st.binary(max_size=40))
def test_roundtrip(plaintext: bytes, aad: bytes) -> None:
    blob = aead.seal(KEY, plaintext, aad=aad)
    assert len(blob) == len(plaintext) + aead.OVERHEAD
    assert aead.open_sealed(KEY, blob, aad=aad) == plaintext


def test_every_flipped_bit_is_rejected() -> None:
    blob = aead.seal(KEY, b"attack at dawn", aad=b"hdr")
    for position in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[position // 8] ^= 1 << (position % 8)
        with pytest.raises(AuthenticationError):
            aead.open_sealed(KEY, bytes(tampered), aad=b"hdr")


def test_wrong_key_aad_and_truncation() -> None:
    blob = aead.seal(KEY, b"payload", aad=b"a")
    with pytest.raises(AuthenticationError):
        aead.open_sealed(bytes(32), blob, aad=b"a")
    with pytest.raises(AuthenticationError):
        aead.open_sealed(KEY, blob, aad=b"b")
    with pytest.raises(AuthenticationError):
        aead.open_sealed(KEY, blob[:-1], aad=b"a")
    for length in range(aead.OVERHEAD):
        with pytest.raises(AuthenticationError):
            aead.open_sealed(KEY, blob[:length], aad=b"a")


def test_misuse_is_local() -> None:
    with pytest.raises(LocalError):
        aead.seal(b"short", b"x")
    with pytest.raises(LocalError):
        aead.seal(KEY, b"x", nonce=b"123")
    with pytest.raises(LocalError):
        aead.open_sealed(b"short", b"x" * 64)
