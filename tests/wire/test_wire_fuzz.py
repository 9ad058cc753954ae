"""Decoder fuzzing: whatever arrives, the result is an envelope or a documented RemoteError."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_testlib import MAC_KEY, SIGNER, maced, signed

from securemesh.errors import RemoteError
from securemesh.wire import (
    AuthMode,
    Envelope,
    UnverifiedEnvelope,
    decode,
    decode_packed,
    pack_frames,
)

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _verify_or_remote_error(unverified: UnverifiedEnvelope) -> Envelope | None:
    assert isinstance(unverified, UnverifiedEnvelope)
    try:
        if unverified.auth_mode is AuthMode.SIGNED:
            return unverified.verify_signature(SIGNER.verify_key)
        return unverified.verify_mac(MAC_KEY)
    except RemoteError:
        return None


def _outcome(call: object) -> Envelope | None:
    """Run a decoder; anything but an envelope or a RemoteError fails the test."""
    assert callable(call)
    try:
        unverified = call()
    except RemoteError as exc:
        assert exc.reason  # noqa: PT017 - every documented error has a stable reason code
        return None
    return _verify_or_remote_error(unverified)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_any_list_of_byte_strings(frames: list[bytes]) -> None:
    _outcome(lambda: decode(frames))


@FUZZ
@given(st.binary(max_size=2000))
def test_any_single_byte_string(data: bytes) -> None:
    _outcome(lambda: decode_packed(data))
    _outcome(lambda: decode([data]))
    _outcome(lambda: decode(data))  # type: ignore[arg-type]  # misuse is still a RemoteError
    _outcome(lambda: decode(list(data)))  # type: ignore[arg-type]


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=10), st.none(), st.integers(), st.text(max_size=5), st.just([b"x"])
        ),
        max_size=6,
    )
)
def test_non_buffer_frames_are_a_decode_error(frames: list[object]) -> None:
    _outcome(lambda: decode(frames))  # type: ignore[arg-type]


# A near-valid header gets the fuzzer deep into the parser.
near_header = st.builds(
    lambda magic, version, mode, flags, count, seq, ts, corr, key, names, lengths: (
        struct.pack(
            ">2sBBHHQQ16s16sBBB",
            magic,
            version,
            mode,
            flags,
            count,
            seq,
            ts,
            corr,
            key,
            *(lengths if lengths is not None else [len(n) for n in names]),
        )
        + b"".join(names)
    ),
    st.sampled_from([b"SM", b"SM", b"MS"]),
    st.sampled_from([1, 1, 1, 0, 2]),
    st.integers(0, 3),
    st.sampled_from([0, 1, 2, 3, 4, 0x8000]),
    st.integers(0, 3),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from([bytes(16), b"\x01" * 16]),
    st.sampled_from([bytes(16), b"\x02" * 16]),
    st.lists(
        st.binary(max_size=66) | st.text("abcXYZ019._-/ \n", max_size=66).map(str.encode),
        min_size=3,
        max_size=3,
    ),
    st.none() | st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)


@FUZZ
@given(
    near_header,
    st.binary(max_size=100),
    st.lists(st.binary(max_size=50), max_size=4),
    st.sampled_from([32, 64, 0, 65]),
)
def test_near_valid_headers(header: bytes, body: bytes, raws: list[bytes], auth_size: int) -> None:
    frames = [header, body, *raws, bytes(auth_size)]
    _outcome(lambda: decode(frames))
    _outcome(lambda: decode_packed(pack_frames(frames)))


@FUZZ
@given(
    st.sampled_from(list(AuthMode)),
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(min_value=0),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_packed_envelopes_never_verify_unless_unchanged(
    mode: AuthMode, edits: list[tuple[str, int, bytes]]
) -> None:
    original = pack_frames(signed() if mode is AuthMode.SIGNED else maced())
    data = bytearray(original)
    for op, pos, chunk in edits:
        at = pos % (len(data) + 1)
        if op == "insert":
            data[at:at] = chunk
        elif op == "delete":
            del data[at : at + len(chunk)]
        else:
            data[at : at + len(chunk)] = chunk
    mutated = bytes(data)
    envelope = _outcome(lambda: decode_packed(mutated))
    if envelope is not None:
        assert mutated == original
