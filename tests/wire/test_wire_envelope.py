"""Envelope round trips, tamper evidence, modes, forwarding, packed form and body parsing."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from wire_testlib import (
    BODY,
    CORRELATION,
    MAC_KEY,
    NOW_MS,
    OTHER_MAC_KEY,
    OTHER_SIGNER,
    SESSION_ID,
    SIGNER,
    Reading,
    as_bytes,
    maced,
    signed,
)

from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    EncodeError,
    LocalError,
    RemoteError,
)
from securemesh.wire import (
    ZERO_ID,
    AuthMode,
    Envelope,
    Flags,
    UnverifiedEnvelope,
    decode,
    decode_and_verify,
    decode_packed,
    encode_mac,
    encode_signed,
    pack_frames,
)

# --------------------------------------------------------------------- round trip


def test_signed_round_trip_exposes_every_field() -> None:
    frames = signed()
    unverified = decode(frames)
    assert isinstance(unverified, UnverifiedEnvelope)
    assert unverified.auth_mode is AuthMode.SIGNED
    assert (unverified.msg_type, unverified.sender, unverified.recipient) == (
        "sensor.reading",
        "dev-1",
        "edge-1",
    )
    env = unverified.verify_signature(SIGNER.verify_key)
    assert isinstance(env, Envelope)
    assert env.sequence == 7
    assert env.timestamp_ms == NOW_MS
    assert env.correlation_id == CORRELATION
    assert env.key_id == ZERO_ID
    assert env.flags is Flags.REQUEST
    assert env.raw_frame_count == 2
    assert env.body(Reading) == BODY
    assert env.body_bytes == BODY.model_dump_json().encode()
    assert [bytes(f) for f in env.raw_frames] == [b"raw-one", b"raw-two"]
    assert len(env.auth_tag) == 64
    assert as_bytes(env.frames) == as_bytes(frames)
    assert not env.header.is_broadcast


def test_mac_round_trip() -> None:
    env = decode(maced()).verify_mac(MAC_KEY)
    assert env.auth_mode is AuthMode.MAC
    assert env.key_id == SESSION_ID
    assert env.body(Reading) == BODY
    assert len(env.auth_tag) == 32


def test_unverified_envelope_offers_no_body_or_frames() -> None:
    unverified = decode(signed())
    for name in ("body", "body_bytes", "raw_frames", "frames", "auth_tag", "packed"):
        assert not hasattr(unverified, name), name


def test_envelopes_cannot_be_forged_by_construction_and_are_immutable() -> None:
    unverified = decode(signed())
    env = unverified.verify_signature(SIGNER.verify_key)
    with pytest.raises(LocalError):
        Envelope(env.header, env.frames, _token=object())
    with pytest.raises(LocalError):
        UnverifiedEnvelope(env.header, env.frames, _token=object())
    with pytest.raises(AttributeError):
        env._body = b"{}"
    with pytest.raises(AttributeError):
        unverified.header = env.header  # a slot, but read-only like the rest
    with pytest.raises(AttributeError):
        env.header = env.header
    assert all(f.readonly for f in env.frames)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
node_ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-",
    min_size=1,
    max_size=64,
)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.binary(min_size=16, max_size=16)


@settings(max_examples=150, deadline=None)
@given(
    msg_type=names,
    sender=node_ids,
    recipient=st.one_of(st.just(""), node_ids),
    sequence=u64,
    timestamp_ms=u64,
    body=st.binary(max_size=300),
    raws=st.lists(st.binary(max_size=200), max_size=6),
    correlation=ids,
    mode=st.sampled_from(AuthMode),
    session_id=ids.filter(lambda b: b != ZERO_ID),
    flag=st.sampled_from([Flags.NONE, Flags.REQUEST, Flags.REPLY]),
)
def test_round_trip_property(
    *,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: bytes,
    raws: list[bytes],
    correlation: bytes,
    mode: AuthMode,
    session_id: bytes,
    flag: Flags,
) -> None:
    if flag and correlation == ZERO_ID:
        correlation = b"\x01" * 16
    common = {
        "msg_type": msg_type,
        "sender": sender,
        "recipient": recipient,
        "sequence": sequence,
        "timestamp_ms": timestamp_ms,
        "body": body,
        "frames": [bytearray(r) if i % 2 else r for i, r in enumerate(raws)],
        "correlation_id": correlation,
        "flags": flag,
    }
    if mode is AuthMode.SIGNED:
        frames = encode_signed(**common, signer=SIGNER)  # type: ignore[arg-type]
        env = decode(frames).verify_signature(SIGNER.verify_key)
    else:
        frames = encode_mac(**common, session_id=session_id, key=MAC_KEY)  # type: ignore[arg-type]
        env = decode(frames).verify_mac(MAC_KEY)
        assert env.key_id == session_id
    assert (env.msg_type, env.sender, env.recipient) == (msg_type, sender, recipient)
    assert (env.sequence, env.timestamp_ms, env.correlation_id) == (
        sequence,
        timestamp_ms,
        correlation,
    )
    assert env.flags == flag
    assert env.body_bytes == body
    assert [bytes(r) for r in env.raw_frames] == raws
    # the packed form and forwarding keep verifying
    again = decode_packed(env.packed())
    if mode is AuthMode.SIGNED:
        forwarded = again.verify_signature(SIGNER.verify_key)
    else:
        forwarded = again.verify_mac(MAC_KEY)
    assert as_bytes(forwarded.frames) == as_bytes(frames)


# ------------------------------------------------------------------ tamper evidence


def _fails(frames: list[bytes], mode: AuthMode) -> RemoteError:
    try:
        unverified = decode(frames)
        if mode is AuthMode.SIGNED:
            unverified.verify_signature(SIGNER.verify_key)
        else:
            unverified.verify_mac(MAC_KEY)
    except RemoteError as exc:
        return exc
    raise AssertionError("a tampered envelope verified")


@settings(max_examples=400, deadline=None)
@given(
    mode=st.sampled_from(AuthMode),
    frame_index=st.integers(min_value=0, max_value=10_000),
    position=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_flip_in_any_frame_fails(
    mode: AuthMode, frame_index: int, position: int, mask: int
) -> None:
    frames = as_bytes(signed() if mode is AuthMode.SIGNED else maced())
    i = frame_index % len(frames)
    frame = bytearray(frames[i])
    frame[position % len(frame)] ^= mask
    frames[i] = bytes(frame)
    _fails(frames, mode)


@pytest.mark.parametrize("mode", list(AuthMode))
def test_every_byte_of_every_frame_is_covered(mode: AuthMode) -> None:
    """Exhaustive companion to the hypothesis test: flip the low bit of each byte."""
    original = as_bytes(signed() if mode is AuthMode.SIGNED else maced())
    for i, frame in enumerate(original):
        for pos in range(len(frame)):
            frames = list(original)
            mutated = bytearray(frame)
            mutated[pos] ^= 0x01
            frames[i] = bytes(mutated)
            _fails(frames, mode)


@pytest.mark.parametrize("mode", list(AuthMode))
def test_truncation_extra_and_reordered_frames_fail(mode: AuthMode) -> None:
    original = as_bytes(signed() if mode is AuthMode.SIGNED else maced())
    for i in range(len(original)):
        # drop a frame
        _fails(original[:i] + original[i + 1 :], mode)
        # truncate a non-empty frame by one byte
        if original[i]:
            _fails([*original[:i], original[i][:-1], *original[i + 1 :]], mode)
        # append a byte
        _fails([*original[:i], original[i] + b"\x00", *original[i + 1 :]], mode)
        # insert an extra frame
        _fails([*original[:i], b"extra", *original[i:]], mode)
    _fails([*original, b""], mode)
    # swap the two raw frames
    header, body, raw1, raw2, auth = original
    _fails([header, body, raw2, raw1, auth], mode)
    # move a byte across the raw-frame boundary: lengths are bound in the transcript
    _fails([header, body, raw1[:-1], raw1[-1:] + raw2, auth], mode)
    # move a byte from body into the first raw frame
    _fails([header, body[:-1], body[-1:] + raw1, raw2, auth], mode)


def test_wrong_keys_and_wrong_modes_fail() -> None:
    with pytest.raises(AuthenticationError):
        decode(signed()).verify_signature(OTHER_SIGNER.verify_key)
    with pytest.raises(AuthenticationError):
        decode(maced()).verify_mac(OTHER_MAC_KEY)
    with pytest.raises(AuthenticationError):
        decode(signed()).verify_mac(MAC_KEY)
    with pytest.raises(AuthenticationError):
        decode(maced()).verify_signature(SIGNER.verify_key)
    with pytest.raises(AuthenticationError):
        decode(signed()).verify_signature(b"short")
    with pytest.raises(LocalError):  # a bad session key is our bug, not the peer's
        decode(maced()).verify_mac(b"short")


def test_signature_by_another_signer_claiming_the_sender_fails() -> None:
    forged = encode_signed(
        msg_type="sensor.reading",
        sender="dev-1",
        recipient="edge-1",
        sequence=1,
        timestamp_ms=NOW_MS,
        body=BODY,
        signer=OTHER_SIGNER,
    )
    with pytest.raises(AuthenticationError):
        decode(forged).verify_signature(SIGNER.verify_key)


def test_replacing_the_signature_with_one_from_another_envelope_fails() -> None:
    a = as_bytes(signed(sequence=1))
    b = as_bytes(signed(sequence=2))
    with pytest.raises(AuthenticationError):
        decode([*a[:-1], b[-1]]).verify_signature(SIGNER.verify_key)


# ---------------------------------------------------------------- decode_and_verify


def test_decode_and_verify_dispatches_on_mode_and_refuses_unconfigured_modes() -> None:
    seen: list[str] = []

    def verify_key_for(u: UnverifiedEnvelope) -> bytes:
        seen.append(u.sender)
        return SIGNER.verify_key

    def mac_key_for(u: UnverifiedEnvelope) -> bytes:
        assert u.key_id == SESSION_ID
        return MAC_KEY

    env = decode_and_verify(signed(), verify_key_for=verify_key_for, mac_key_for=mac_key_for)
    assert env.auth_mode is AuthMode.SIGNED
    assert seen == ["dev-1"]
    env = decode_and_verify(maced(), verify_key_for=verify_key_for, mac_key_for=mac_key_for)
    assert env.auth_mode is AuthMode.MAC
    with pytest.raises(AuthenticationError):
        decode_and_verify(signed(), mac_key_for=mac_key_for)
    with pytest.raises(AuthenticationError):
        decode_and_verify(maced(), verify_key_for=verify_key_for)


# ------------------------------------------------------------------- forwarding


def test_signed_envelope_survives_forwarding_over_hops() -> None:
    frames = signed()
    hop1 = decode(frames).verify_signature(SIGNER.verify_key)
    # a hop forwards the frames as received (zero-copy views), possibly packed
    hop2 = decode(list(hop1.frames)).verify_signature(SIGNER.verify_key)
    hop3 = decode_packed(hop2.packed()).verify_signature(SIGNER.verify_key)
    assert as_bytes(hop3.frames) == as_bytes(frames)
    assert hop3.body(Reading) == BODY


# ------------------------------------------------------------------- zero copy


def test_raw_frames_are_zero_copy_on_both_sides() -> None:
    buf = bytearray(b"A" * 4096)
    frames = signed(frames=(memoryview(buf),))
    sent = frames[2]
    assert isinstance(sent, memoryview)
    assert sent.obj is buf  # the encoder did not copy the buffer
    rx = bytearray(buf)  # what a receiver got, e.g. a zmq.Frame's buffer
    env = decode([frames[0], frames[1], memoryview(rx), frames[3]]).verify_signature(
        SIGNER.verify_key
    )
    view = env.raw_frames[0]
    assert view.obj is rx  # the decoder did not copy either
    assert view.readonly


def test_multidimensional_contiguous_buffers_are_flattened_and_strided_ones_refused() -> None:
    import numpy as np

    matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
    frames = signed(frames=(matrix.data,))
    env = decode(frames).verify_signature(SIGNER.verify_key)
    assert bytes(env.raw_frames[0]) == matrix.tobytes()
    with pytest.raises(EncodeError):
        signed(frames=(matrix[:, ::2].data,))
    strided = memoryview(bytes(range(10)))[::2]
    with pytest.raises(EncodeError):
        signed(frames=(strided,))
    f = as_bytes(signed())
    with pytest.raises(DecodeError):
        decode([f[0], f[1], strided, memoryview(b"x"), f[-1]])


# --------------------------------------------------------------------- bodies


class Strict(BaseModel):
    n: int
    name: str


def _body_env(body: bytes) -> Envelope:
    return decode(signed(body=body)).verify_signature(SIGNER.verify_key)


def test_body_is_parsed_strictly() -> None:
    assert _body_env(b'{"n": 1, "name": "x"}').body(Strict) == Strict(n=1, name="x")
    for bad in (
        b'{"n": "1", "name": "x"}',
        b'{"n": 1}',
        b"not json",
        b"",
        b"[]",
        b'{"n":1.5,"name":"x"}',
    ):
        with pytest.raises(DecodeError):
            _body_env(bad).body(Strict)


def test_body_may_be_a_model_or_bytes_and_nothing_else() -> None:
    assert _body_env(b"{}").body_bytes == b"{}"
    env = decode(signed(body=bytearray(b"{}"))).verify_signature(SIGNER.verify_key)  # type: ignore[arg-type]
    assert env.body_bytes == b"{}"
    with pytest.raises(EncodeError):
        signed(body="text")  # type: ignore[arg-type]


# ---------------------------------------------------------------- encode refuses


def test_encoder_refuses_invalid_fields() -> None:
    base = {
        "msg_type": "a.b",
        "sender": "n1",
        "recipient": "",
        "sequence": 0,
        "timestamp_ms": 0,
        "body": b"{}",
        "signer": SIGNER,
    }
    bad_values: list[dict[str, object]] = [
        {"msg_type": "Upper"},
        {"msg_type": ""},
        {"msg_type": "a" * 65},
        {"msg_type": "é"},
        {"sender": ""},
        {"sender": "a b"},
        {"sender": "x" * 65},
        {"recipient": "a/b"},
        {"sequence": -1},
        {"sequence": 2**64},
        {"timestamp_ms": -1},
        {"correlation_id": b"short"},
        {"flags": Flags.REQUEST},  # REQUEST needs a correlation id
        {"flags": Flags.REQUEST | Flags.REPLY, "correlation_id": CORRELATION},
        {"frames": b"one buffer"},
        {"frames": [object()]},
    ]
    for change in bad_values:
        with pytest.raises(EncodeError):
            encode_signed(**{**base, **change})  # type: ignore[arg-type]
    mac_base = {k: v for k, v in base.items() if k != "signer"}
    with pytest.raises(EncodeError):  # a MAC envelope needs a non-zero session id
        encode_mac(**mac_base, session_id=ZERO_ID, key=MAC_KEY)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_mac(**mac_base, session_id=SESSION_ID, key=b"k")  # type: ignore[arg-type]


def test_pack_frames_is_strict() -> None:
    packed = pack_frames(signed())
    decode_packed(packed).verify_signature(SIGNER.verify_key)
    with pytest.raises(DecodeError):
        decode_packed(packed + b"\x00")
    with pytest.raises(DecodeError):
        decode_packed(packed[:-1])
    with pytest.raises(DecodeError):
        decode_packed(b"XXPK" + packed[4:])
    # count field claims one frame more than present
    magic, version, count = struct.unpack_from(">4sBH", packed)
    with pytest.raises(DecodeError):
        decode_packed(struct.pack(">4sBH", magic, version, count + 1) + packed[7:])
    with pytest.raises(EncodeError):
        pack_frames(b"bytes")  # type: ignore[arg-type]


def test_transcript_matches_the_documented_construction() -> None:
    """Recompute the SIGNED transcript and the MAC input from the module docstring."""
    import nacl.signing

    header, body, raw1, raw2, sig = as_bytes(signed())

    def h(b: bytes) -> bytes:
        return hashlib.blake2b(b, digest_size=32).digest()

    transcript = (
        b"securemesh/envelope/v1"
        + struct.pack(">H", len(header))
        + header
        + struct.pack(">Q", len(body))
        + h(body)
        + struct.pack(">Q", len(raw1))
        + h(raw1)
        + struct.pack(">Q", len(raw2))
        + h(raw2)
    )
    nacl.signing.VerifyKey(SIGNER.verify_key).verify(transcript, sig)
    assert sig == SIGNER.sign(transcript)
    # MAC mode: the frames themselves, length-prefixed, under its own label
    mh, mb, m1, m2, tag = as_bytes(maced())
    mac_input = (
        b"securemesh/envelope-mac/v1"
        + struct.pack(">H", len(mh))
        + mh
        + struct.pack(">Q", len(mb))
        + mb
        + struct.pack(">Q", len(m1))
        + m1
        + struct.pack(">Q", len(m2))
        + m2
    )
    assert tag == hashlib.blake2b(mac_input, key=MAC_KEY, digest_size=32).digest()
    ph, pb, ptag = as_bytes(maced(frames=()))  # the no-raw-frame fast path
    plain_input = b"securemesh/envelope-mac/v1" + struct.pack(">H", len(ph)) + ph
    plain_input += struct.pack(">Q", len(pb)) + pb
    assert ptag == hashlib.blake2b(plain_input, key=MAC_KEY, digest_size=32).digest()
