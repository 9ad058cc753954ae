"""verify_signature: the same decisions as pynacl's VerifyKey.verify on both of its paths."""

from __future__ import annotations

import threading

import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto.signing import Ed25519Signer, signature_opener, verify_signature
from securemesh.errors import AuthenticationError, LocalError

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
OTHER = Ed25519Signer.from_seed(bytes(range(1, 33)))


def _pynacl_accepts(key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def _ours_accepts(key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        assert verify_signature(key, data, signature) == data
    except AuthenticationError:
        return False
    return True


# data sizes on both sides of the 4 KiB reusable buffer (and the pynacl fallback)
_data = st.one_of(st.binary(max_size=64), st.binary(min_size=4000, max_size=4100))


@given(data=_data, flip=st.integers(min_value=-1, max_value=8 * 64 - 1), other_key=st.booleans())
@settings(max_examples=150)
def test_same_decisions_as_pynacl(data: bytes, flip: int, other_key: bool) -> None:
    signature = bytearray(SIGNER.sign(data))
    if flip >= 0:
        signature[flip // 8] ^= 1 << (flip % 8)
    key = OTHER.verify_key if other_key else SIGNER.verify_key
    expected = _pynacl_accepts(key, data, bytes(signature))
    assert _ours_accepts(key, data, bytes(signature)) is expected
    assert expected is (flip < 0 and not other_key)


def test_bad_lengths_and_degenerate_keys_are_refused() -> None:
    data = b"message"
    good = SIGNER.sign(data)
    for key, sig in ((SIGNER.verify_key[:31], good), (SIGNER.verify_key, good[:63])):
        with pytest.raises(AuthenticationError):
            verify_signature(key, data, sig)
    for key in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32):  # identity, small order, invalid
        assert not _ours_accepts(key, data, good)
        assert not _pynacl_accepts(key, data, good)


def test_an_opener_checks_its_arguments_and_each_thread_has_its_own() -> None:
    opener = signature_opener(100)
    data = b"x" * 36
    assert opener(SIGNER.sign(data) + data, SIGNER.verify_key)
    with pytest.raises(LocalError):
        opener(SIGNER.sign(b"y" * 37) + b"y" * 37, SIGNER.verify_key)  # 101 bytes
    with pytest.raises(LocalError):
        opener(SIGNER.sign(data) + data, SIGNER.verify_key[:31])
    results: list[bool] = []

    def worker() -> None:
        for i in range(200):
            msg = bytes([i]) * (i % 50)
            results.append(_ours_accepts(SIGNER.verify_key, msg, SIGNER.sign(msg)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 800
