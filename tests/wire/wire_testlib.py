"""Shared helpers for the wire tests (a uniquely named module, not a conftest)."""

from __future__ import annotations

from pydantic import BaseModel

from securemesh.crypto.signing import Ed25519Signer
from securemesh.wire import Flags, WireFrame, encode_mac, encode_signed

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
OTHER_SIGNER = Ed25519Signer.from_seed(bytes(range(1, 33)))
MAC_KEY = bytes(range(100, 132))
OTHER_MAC_KEY = bytes(range(200, 232))
SESSION_ID = bytes.fromhex("0123456789abcdef0123456789abcdef")
CORRELATION = bytes.fromhex("fedcba98765432100123456789abcdef")
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Reading(BaseModel):
    sensor: str
    value: float
    count: int


BODY = Reading(sensor="t-1", value=21.5, count=3)


def signed(
    *,
    frames: tuple[bytes | bytearray | memoryview, ...] = (b"raw-one", b"raw-two"),
    sequence: int = 7,
    body: BaseModel | bytes = BODY,
    recipient: str = "edge-1",
    flags: Flags = Flags.REQUEST,
) -> list[WireFrame]:
    return encode_signed(
        msg_type="sensor.reading",
        sender="dev-1",
        recipient=recipient,
        sequence=sequence,
        timestamp_ms=NOW_MS,
        body=body,
        frames=frames,
        signer=SIGNER,
        correlation_id=CORRELATION,
        flags=flags,
    )


def maced(
    *,
    frames: tuple[bytes | bytearray | memoryview, ...] = (b"raw-one", b"raw-two"),
    sequence: int = 7,
    body: BaseModel | bytes = BODY,
) -> list[WireFrame]:
    return encode_mac(
        msg_type="sensor.reading",
        sender="dev-1",
        recipient="edge-1",
        sequence=sequence,
        timestamp_ms=NOW_MS,
        body=body,
        frames=frames,
        session_id=SESSION_ID,
        key=MAC_KEY,
    )


def as_bytes(frames: list[WireFrame] | tuple[memoryview, ...]) -> list[bytes]:
    return [bytes(f) for f in frames]
