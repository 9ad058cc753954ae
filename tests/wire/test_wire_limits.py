"""Size limits are enforced first: oversize input is refused before any hashing or crypto."""

from __future__ import annotations

import mmap
import resource
import time
from typing import Any

import pytest
from wire_testlib import SIGNER, as_bytes, maced, signed

from securemesh.errors import AuthenticationError, ConfigError, EncodeError, SizeLimitExceeded
from securemesh.wire import (
    DEFAULT_LIMITS,
    Limits,
    UnverifiedEnvelope,
    decode,
    decode_and_verify,
    decode_packed,
    encode_signed,
    pack_frames,
)


class CountingResolver:
    """A real verify-key resolver that counts how often verification was reached."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, envelope: UnverifiedEnvelope) -> bytes:
        self.calls += 1
        return SIGNER.verify_key


def test_defaults() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_body == 64 * 1024
    assert DEFAULT_LIMITS.max_raw_frame == 16 * 1024 * 1024
    assert DEFAULT_LIMITS.max_total == 64 * 1024 * 1024
    assert DEFAULT_LIMITS.max_header >= Limits.MAX_HEADER_SIZE == 251
    assert DEFAULT_LIMITS.max_raw_frames == DEFAULT_LIMITS.max_frames - 3


@pytest.mark.parametrize(
    "kwargs",
    [{"max_frames": 2}, {"max_body": -1}, {"max_total": 1.5}, {"max_frames": 70_000}],
)
def test_invalid_limits_are_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_control_a_valid_envelope_reaches_verification_once() -> None:
    resolver = CountingResolver()
    decode_and_verify(signed(), verify_key_for=resolver)
    assert resolver.calls == 1


def _expect_oversize(frames: list[bytes | memoryview], limits: Limits = DEFAULT_LIMITS) -> None:
    resolver = CountingResolver()
    with pytest.raises(SizeLimitExceeded):
        decode_and_verify(frames, limits=limits, verify_key_for=resolver)
    assert resolver.calls == 0, "verification was reached for an oversize envelope"


def test_each_frame_just_over_its_limit_is_rejected_before_verification() -> None:
    limits = Limits(max_body=100, max_raw_frame=50, max_total=10_000, max_frames=6)
    header, body, raw1, raw2, auth = as_bytes(signed())
    # exactly at the limits: accepted by the size checks (then fails auth, as it should)
    at_limit = [header, b"b" * 100, b"r" * 50, raw2, auth]
    reached = CountingResolver()
    with pytest.raises(AuthenticationError):
        decode_and_verify(at_limit, limits=limits, verify_key_for=reached)
    assert reached.calls == 1
    # one byte over each limit
    _expect_oversize([header, b"b" * 101, raw1, raw2, auth], limits)
    _expect_oversize([header, body, b"r" * 51, raw2, auth], limits)
    _expect_oversize([header, body, raw1, b"r" * 51, auth], limits)
    _expect_oversize([header + b"\x00" * (257 - len(header)), body, raw1, raw2, auth])
    _expect_oversize([header, body, raw1, raw2, auth + b"\x00"])
    _expect_oversize([header, body, raw1, raw2, b"x", auth], Limits(max_frames=5))
    _expect_oversize([header, body, raw1, raw2, auth], Limits(max_total=len(header) + 20))


def test_size_is_checked_before_form() -> None:
    # garbage header *and* an oversize body: the size check answers first
    _expect_oversize([b"garbage", b"x" * (64 * 1024 + 1), b"\x00" * 64])
    _expect_oversize([b"garbage"] * (DEFAULT_LIMITS.max_frames + 1))


def test_a_one_gibibyte_frame_is_rejected_without_reading_it() -> None:
    """A 1 GiB (+1) anonymous mapping is never touched: no page faults, no time spent.

    Reading it (hashing) would fault in 262,144 pages and take seconds; the
    rejection must happen from its length alone.
    """
    size = (1 << 30) + 1
    try:
        region = mmap.mmap(-1, size)  # reserves address space only; no page is touched
    except OSError as exc:  # pragma: no cover - depends on the machine's overcommit policy
        pytest.skip(f"cannot map 1 GiB of address space here: {exc}")
    with region:
        huge = memoryview(region)
        # a header that declares one raw frame, so the frame count itself is fine
        frames = as_bytes(signed(frames=(b"x",)))
        resolver = CountingResolver()
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        with pytest.raises(SizeLimitExceeded):
            decode_and_verify([frames[0], frames[1], huge, frames[3]], verify_key_for=resolver)
        elapsed = time.perf_counter() - started
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        del huge
    assert resolver.calls == 0
    assert faults < 2_000, f"{faults} page faults: the oversize frame was read"
    assert elapsed < 0.5, f"rejection took {elapsed:.3f}s"


def test_packed_form_is_bounded_before_splitting() -> None:
    packed = pack_frames(signed())
    with pytest.raises(SizeLimitExceeded):
        decode_packed(packed, limits=Limits(max_total=50))
    with pytest.raises(SizeLimitExceeded):
        decode_packed(b"SMPK\x01\xff\xff" + b"\x00" * 20)


def test_encoder_refuses_what_receivers_would_reject() -> None:
    limits = Limits(max_body=10, max_raw_frame=4, max_total=400, max_frames=4)
    common: dict[str, Any] = {
        "msg_type": "t",
        "sender": "s",
        "recipient": "",
        "sequence": 1,
        "timestamp_ms": 1,
        "signer": SIGNER,
        "limits": limits,
    }
    encode_signed(**common, body=b"0123456789", frames=[b"abcd"])
    with pytest.raises(EncodeError):
        encode_signed(**common, body=b"0123456789x")
    with pytest.raises(EncodeError):
        encode_signed(**common, body=b"{}", frames=[b"abcde"])
    with pytest.raises(EncodeError):
        encode_signed(**common, body=b"{}", frames=[b"a", b"b"])
    with pytest.raises(EncodeError):
        encode_signed(**{**common, "limits": Limits(max_total=100)}, body=b"{}", frames=[b"a" * 50])
    with pytest.raises(EncodeError):
        encode_signed(**{**common, "limits": Limits(max_header=60)}, body=b"{}")


def test_mac_envelopes_obey_the_same_limits() -> None:
    header, body, raw1, raw2, auth = as_bytes(maced())
    with pytest.raises(SizeLimitExceeded):
        decode([header, body + b" " * 70_000, raw1, raw2, auth])
