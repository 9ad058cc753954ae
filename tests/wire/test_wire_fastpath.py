"""The codec's fast paths (three ``bytes`` frames; ``bytes`` body, no raw frame) agree
byte for byte and error for error with the general paths, and the name caches stay
bounded and never change a result."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st
from wire_testlib import MAC_KEY, SIGNER

from securemesh.errors import RemoteError, SecureMeshError
from securemesh.wire import (
    ZERO_ID,
    AuthMode,
    Flags,
    Limits,
    _header,
    decode,
    encode_mac,
    encode_signed,
)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
node_ids = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=64)
# mostly valid values, sometimes not: both paths must refuse alike
loose_names = st.one_of(names, st.text(max_size=70))
loose_u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(-5, 2**64 + 5))
ids = st.binary(min_size=15, max_size=17)


def _encode(mode: AuthMode, frames: object, **fields: object) -> object:
    try:
        if mode is AuthMode.SIGNED:
            return encode_signed(frames=frames, signer=SIGNER, **fields)  # type: ignore[arg-type]
        return encode_mac(frames=frames, key=MAC_KEY, **fields)  # type: ignore[arg-type]
    except SecureMeshError as exc:
        return (type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(AuthMode),
    msg_type=loose_names,
    sender=st.one_of(node_ids, st.text(max_size=70)),
    recipient=st.one_of(st.just(""), node_ids, st.text(max_size=3)),
    sequence=loose_u64,
    timestamp_ms=loose_u64,
    body=st.binary(max_size=300),
    correlation=st.one_of(ids, st.just(ZERO_ID)),
    session_id=st.one_of(ids, st.just(ZERO_ID)),
    flags=st.sampled_from([Flags.NONE, Flags.REQUEST, Flags.REPLY, Flags(3)]),
)
def test_encode_fast_path_equals_general_path(
    *,
    mode: AuthMode,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: bytes,
    correlation: bytes,
    session_id: bytes,
    flags: Flags,
) -> None:
    fields: dict[str, object] = {
        "msg_type": msg_type,
        "sender": sender,
        "recipient": recipient,
        "sequence": sequence,
        "timestamp_ms": timestamp_ms,
        "body": body,
        "correlation_id": correlation,
        "flags": flags,
    }
    if mode is AuthMode.MAC:
        fields["session_id"] = session_id
    fast = _encode(mode, (), **fields)  # empty tuple + bytes body: the fast path
    general = _encode(mode, [], **fields)  # a list: the general path
    if isinstance(fast, tuple):
        assert fast == general
    else:
        assert [bytes(f) for f in fast] == [bytes(f) for f in general]  # type: ignore[attr-defined]


def _decoded(frames: object, key: bytes) -> object:
    try:
        env = decode(frames, limits=Limits(max_body=200))  # type: ignore[arg-type]
        if env.auth_mode is AuthMode.MAC:
            verified = env.verify_mac(key)
        else:
            verified = env.verify_signature(SIGNER.verify_key)
    except RemoteError as exc:
        return (type(exc), str(exc))
    return (verified.header, verified.body_bytes, verified.auth_tag, verified.raw_frames)


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(AuthMode),
    body=st.binary(max_size=260),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 400))),
    cut=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 400))),
    garbage=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_decode_fast_path_equals_general_path(
    *,
    mode: AuthMode,
    body: bytes,
    flip: tuple[int, int] | None,
    cut: tuple[int, int] | None,
    garbage: bytes | None,
) -> None:
    fields = {
        "msg_type": "app.reading",
        "sender": "device-1",
        "recipient": "edge-1",
        "sequence": 7,
        "timestamp_ms": 1_700_000_000_000,
        "body": body,
    }
    if mode is AuthMode.SIGNED:
        frames = [bytes(f) for f in encode_signed(signer=SIGNER, **fields)]  # type: ignore[arg-type]
    else:
        frames = [
            bytes(f)
            for f in encode_mac(session_id=b"\x05" * 16, key=MAC_KEY, **fields)  # type: ignore[arg-type]
        ]
    if flip is not None:
        i, pos = flip
        buf = bytearray(frames[i])
        if buf:
            buf[pos % len(buf)] ^= 0x40
        frames[i] = bytes(buf)
    if cut is not None:
        i, pos = cut
        frames[i] = frames[i][: pos % (len(frames[i]) + 1)]
    if garbage is not None:
        frames[0] = garbage
    fast = _decoded(list(frames), MAC_KEY)  # a list of three bytes: the fast path
    general = _decoded(tuple(bytearray(f) for f in frames), MAC_KEY)  # the general path
    if isinstance(fast, tuple) and len(fast) == 2:
        assert fast == general
    else:
        assert isinstance(general, tuple)
        assert len(general) == 4
        assert fast[:3] == general[:3]  # type: ignore[index]


def test_name_caches_are_bounded_and_do_not_change_results() -> None:
    for i in range(_header._MAX_CACHED + 10):
        frames = encode_mac(
            msg_type="app.t",
            sender=f"node-{i}",
            recipient="cloud-1",
            sequence=i,
            timestamp_ms=1,
            body=b"{}",
            session_id=b"\x01" * 16,
            key=MAC_KEY,
        )
        assert decode(frames).verify_mac(MAC_KEY).sender == f"node-{i}"
    assert len(_header._ENCODED_NAMES) <= _header._MAX_CACHED
    assert len(_header._DECODED_NAMES) <= _header._MAX_CACHED
