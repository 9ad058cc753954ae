"""The binary header: byte layout as documented, strict rejection of every deviation."""

from __future__ import annotations

import struct

import pytest
from wire_testlib import CORRELATION, MAC_KEY, NOW_MS, SESSION_ID, SIGNER, as_bytes, signed

from securemesh.errors import AuthenticationError, DecodeError, RemoteError
from securemesh.wire import ZERO_ID, AuthMode, Flags, decode, encode_mac
from securemesh.wire._header import FIXED_SIZE

LAYOUT = struct.Struct(">2sBBHHQQ16s16sBBB")


def raw_header(
    *,
    magic: bytes = b"SM",
    version: int = 1,
    mode: int = 1,
    flags: int = 0,
    raw_count: int = 0,
    sequence: int = 1,
    timestamp: int = NOW_MS,
    correlation: bytes = ZERO_ID,
    key_id: bytes = ZERO_ID,
    msg_type: bytes = b"t",
    sender: bytes = b"s",
    recipient: bytes = b"",
    lengths: tuple[int, int, int] | None = None,
    trailing: bytes = b"",
) -> bytes:
    t, s, r = lengths or (len(msg_type), len(sender), len(recipient))
    return (
        LAYOUT.pack(
            magic,
            version,
            mode,
            flags,
            raw_count,
            sequence,
            timestamp,
            correlation,
            key_id,
            t,
            s,
            r,
        )
        + msg_type
        + sender
        + recipient
        + trailing
    )


def test_fixed_part_is_59_bytes() -> None:
    assert FIXED_SIZE == LAYOUT.size == 59


def test_header_bytes_follow_the_documented_layout() -> None:
    header = as_bytes(signed())[0]
    assert header[0:2] == b"SM"
    assert header[2] == 1  # version
    assert header[3] == AuthMode.SIGNED
    assert int.from_bytes(header[4:6], "big") == Flags.REQUEST
    assert int.from_bytes(header[6:8], "big") == 2  # raw frames
    assert int.from_bytes(header[8:16], "big") == 7  # sequence
    assert int.from_bytes(header[16:24], "big") == NOW_MS
    assert header[24:40] == CORRELATION
    assert header[40:56] == ZERO_ID
    assert (header[56], header[57], header[58]) == (14, 5, 6)
    assert header[59:] == b"sensor.reading" + b"dev-1" + b"edge-1"
    assert (
        raw_header(
            mode=1,
            flags=1,
            raw_count=2,
            sequence=7,
            correlation=CORRELATION,
            msg_type=b"sensor.reading",
            sender=b"dev-1",
            recipient=b"edge-1",
        )
        == header
    )


def test_mac_header_carries_the_session_id() -> None:
    frames = encode_mac(
        msg_type="t",
        sender="s",
        recipient="",
        sequence=1,
        timestamp_ms=NOW_MS,
        body=b"{}",
        session_id=SESSION_ID,
        key=MAC_KEY,
    )
    assert bytes(frames[0]) == raw_header(mode=2, key_id=SESSION_ID)
    assert decode(frames).header.is_broadcast


def _decode_with_header(header: bytes, *, raws: int = 0, auth_size: int = 64) -> None:
    decode([header, b"{}", *([b"r"] * raws), b"\x00" * auth_size])


def test_a_hand_built_header_decodes() -> None:
    _decode_with_header(raw_header())
    _decode_with_header(raw_header(raw_count=2), raws=2)
    _decode_with_header(raw_header(mode=2, key_id=SESSION_ID), auth_size=32)
    _decode_with_header(raw_header(msg_type=b"a" * 64, sender=b"B" * 64, recipient=b"c" * 64))
    _decode_with_header(raw_header(sequence=2**64 - 1, timestamp=2**64 - 1))


@pytest.mark.parametrize(
    ("header", "raws", "auth_size"),
    [
        pytest.param(raw_header(magic=b"SN"), 0, 64, id="magic"),
        pytest.param(raw_header(version=0), 0, 64, id="version-0"),
        pytest.param(raw_header(version=2), 0, 64, id="version-2"),
        pytest.param(raw_header(mode=0), 0, 64, id="mode-0"),
        pytest.param(raw_header(mode=3), 0, 64, id="mode-3"),
        pytest.param(raw_header(flags=4), 0, 64, id="reserved-flag"),
        pytest.param(raw_header(flags=0x8000, correlation=CORRELATION), 0, 64, id="high-flag"),
        pytest.param(raw_header(flags=3, correlation=CORRELATION), 0, 64, id="request+reply"),
        pytest.param(raw_header(flags=1), 0, 64, id="request-without-correlation"),
        pytest.param(raw_header(flags=2), 0, 64, id="reply-without-correlation"),
        pytest.param(raw_header(key_id=SESSION_ID), 0, 64, id="signed-with-key-id"),
        pytest.param(raw_header(mode=2), 0, 32, id="mac-with-zero-key-id"),
        pytest.param(raw_header(msg_type=b""), 0, 64, id="empty-type"),
        pytest.param(raw_header(sender=b""), 0, 64, id="empty-sender"),
        pytest.param(raw_header(msg_type=b"a" * 65), 0, 64, id="long-type"),
        pytest.param(raw_header(sender=b"a" * 65), 0, 64, id="long-sender"),
        pytest.param(raw_header(recipient=b"a" * 65), 0, 64, id="long-recipient"),
        pytest.param(raw_header(msg_type=b"Upper"), 0, 64, id="type-upper"),
        pytest.param(raw_header(msg_type=b"a/b"), 0, 64, id="type-slash"),
        pytest.param(raw_header(msg_type=b"a\n"), 0, 64, id="type-newline"),
        pytest.param(raw_header(sender=b"a b"), 0, 64, id="sender-space"),
        pytest.param(raw_header(sender=b"\x00"), 0, 64, id="sender-nul"),
        pytest.param(raw_header(sender=b"\xc3\xa9"), 0, 64, id="sender-utf8"),
        pytest.param(raw_header(recipient=b"x\n"), 0, 64, id="recipient-newline"),
        pytest.param(raw_header(trailing=b"\x00"), 0, 64, id="trailing-byte"),
        pytest.param(raw_header()[:-1], 0, 64, id="truncated"),
        pytest.param(raw_header()[:58], 0, 64, id="shorter-than-fixed"),
        pytest.param(raw_header(lengths=(1, 1, 1)), 0, 64, id="lengths-exceed-data"),
        pytest.param(raw_header(raw_count=1), 0, 64, id="raw-count-too-high"),
        pytest.param(raw_header(), 1, 64, id="raw-count-too-low"),
        pytest.param(raw_header(), 0, 32, id="signed-with-mac-sized-auth"),
        pytest.param(raw_header(mode=2, key_id=SESSION_ID), 0, 64, id="mac-with-sig-sized-auth"),
        pytest.param(b"", 0, 64, id="empty-header"),
    ],
)
def test_malformed_headers_are_rejected(header: bytes, raws: int, auth_size: int) -> None:
    with pytest.raises(DecodeError):
        _decode_with_header(header, raws=raws, auth_size=auth_size)


def test_a_well_formed_but_unsigned_header_fails_authentication_only() -> None:
    with pytest.raises(AuthenticationError):
        decode([raw_header(), b"{}", b"\x00" * 64]).verify_signature(SIGNER.verify_key)


def test_every_error_is_a_remote_error() -> None:
    with pytest.raises(RemoteError):
        _decode_with_header(raw_header(version=9))
