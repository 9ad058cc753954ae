"""Z85 (ZeroMQ RFC 32): the RFC's example, CurveZMQ keys, and pyzmq as a second opinion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.crypto.z85 import z85_decode, z85_encode
from securemesh.errors import DecodeError, LocalError


def test_rfc32_example() -> None:
    data = bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
    assert z85_encode(data) == "HelloWorld"
    assert z85_decode("HelloWorld") == data


@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_roundtrip_and_agrees_with_pyzmq(data: bytes) -> None:
    from zmq.utils import z85 as zmq_z85  # an independent implementation, tests only

    text = z85_encode(data)
    assert text == zmq_z85.encode(data).decode("ascii")
    assert z85_decode(text) == data


def test_curve_keypair_matches_pyzmq() -> None:
    import zmq

    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    from securemesh.crypto.identity import NodeIdentity

    public_z85, secret_z85 = zmq.curve_keypair()
    ident = NodeIdentity.from_seeds(bytes(32), bytes(32), z85_decode(secret_z85.decode()))
    assert ident.curve_public_z85 == public_z85.decode()
    assert ident.curve_secret_z85() == secret_z85.decode()


@pytest.mark.parametrize("bad", ["abcd", "Hello Worl", "HelloWorl~", "%nSc1", "#####"])
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(DecodeError):
        z85_decode(bad)


def test_encode_rejects_unaligned() -> None:
    with pytest.raises(LocalError):
        z85_encode(b"abc")
