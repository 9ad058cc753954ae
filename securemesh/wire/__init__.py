"""``securemesh.wire``: the sans-I/O envelope format, replay protection and sequence counters.

Nothing here touches a socket or a clock: the transport layer moves the
frames, callers pass ``now_ms``. The format is specified byte by byte in the
docstrings of :mod:`securemesh.wire._header` (header) and
:mod:`securemesh.wire._envelope` (frames, transcript, auth, packed form).

Sending::

    frames = encode_signed(msg_type="sensor.reading", sender="dev-1", recipient="edge-1",
                           sequence=counter.next(), timestamp_ms=now_ms,
                           body=Reading(value=3.2), signer=identity)
    await socket.send_multipart(frames, copy=False)

Receiving (size limits → form → key lookup → signature/MAC → replay)::

    unverified = decode(frames, limits=limits)          # header readable, body not
    envelope = unverified.verify_signature(cert_for(unverified.sender).verify_key)
    guard.accept_envelope(envelope, now_ms=now_ms)        # replay + clock skew
    reading = envelope.body(Reading)                     # strict pydantic parse
"""

from securemesh.wire._counter import SequenceCounter
from securemesh.wire._envelope import (
    MAC_KEY_SIZE,
    MAC_LABEL,
    MAC_SIZE,
    TRANSCRIPT_LABEL,
    Envelope,
    Frame,
    UnverifiedEnvelope,
    WireFrame,
    decode,
    decode_and_verify,
    decode_packed,
    encode_mac,
    encode_signed,
    pack_frames,
)
from securemesh.wire._header import ID_SIZE, MAGIC, VERSION, ZERO_ID, AuthMode, Flags, Header
from securemesh.wire._json import dump_body, loads_strict, parse_body
from securemesh.wire._limits import DEFAULT_LIMITS, Limits
from securemesh.wire._replay import ReplayGuard, ReplayWindow

__all__ = [
    "DEFAULT_LIMITS",
    "ID_SIZE",
    "MAC_KEY_SIZE",
    "MAC_LABEL",
    "MAC_SIZE",
    "MAGIC",
    "TRANSCRIPT_LABEL",
    "VERSION",
    "ZERO_ID",
    "AuthMode",
    "Envelope",
    "Flags",
    "Frame",
    "Header",
    "Limits",
    "ReplayGuard",
    "ReplayWindow",
    "SequenceCounter",
    "UnverifiedEnvelope",
    "WireFrame",
    "decode",
    "decode_and_verify",
    "decode_packed",
    "dump_body",
    "encode_mac",
    "encode_signed",
    "loads_strict",
    "pack_frames",
    "parse_body",
]
