"""Known-answer vectors (docs/vectors/v1/envelopes.json) for compatible implementations."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from securemesh import errors
from securemesh.crypto.signing import Ed25519Signer
from securemesh.wire import AuthMode, Flags, decode, encode_mac, encode_signed

SPEC_VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "v1"
VECTORS = json.loads((SPEC_VECTORS / "envelopes.json").read_text())


def _inputs(case: dict[str, Any]) -> dict[str, Any]:
    return {
        "msg_type": case["msg_type"],
        "sender": case["sender"],
        "recipient": case["recipient"],
        "sequence": case["sequence"],
        "timestamp_ms": case["timestamp_ms"],
        "correlation_id": bytes.fromhex(case["correlation_id"]),
        "flags": Flags(case["flags"]),
        "body": bytes.fromhex(case["body"]),
        "frames": [bytes.fromhex(r) for r in case["raw_frames"]],
    }


def _spec_transcript(frames: list[bytes]) -> bytes:
    """The transcript exactly as the module docstring specifies it, built independently."""
    header, body, *raws, _auth = frames
    out = b"securemesh/envelope/v1" + struct.pack(">H", len(header)) + header
    out += struct.pack(">Q", len(body)) + hashlib.blake2b(body, digest_size=32).digest()
    for raw in raws:
        out += struct.pack(">Q", len(raw)) + hashlib.blake2b(raw, digest_size=32).digest()
    return out


def _spec_mac_input(frames: list[bytes]) -> bytes:
    """The MAC input exactly as the module docstring specifies it, built independently."""
    header, body, *raws, _auth = frames
    out = b"securemesh/envelope-mac/v1" + struct.pack(">H", len(header)) + header
    out += struct.pack(">Q", len(body)) + body
    for raw in raws:
        out += struct.pack(">Q", len(raw)) + raw
    return out


def test_the_file_has_vectors_of_every_kind() -> None:
    modes = {case["mode"] for case in VECTORS["valid"]}
    assert modes == {"SIGNED", "MAC"}
    assert {case["error"] for case in VECTORS["invalid"]} == {
        "DecodeError",
        "AuthenticationError",
        "SizeLimitExceeded",
    }


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_vector(case: dict[str, Any]) -> None:
    expected = [bytes.fromhex(f) for f in case["expected_frames"]]
    if case["mode"] == "SIGNED":
        transcript = bytes.fromhex(case["expected_transcript"])
        assert _spec_transcript(expected) == transcript
        signer = Ed25519Signer.from_seed(bytes.fromhex(case["ed25519_seed"]))
        assert signer.verify_key.hex() == case["ed25519_verify_key"]
        frames = encode_signed(**_inputs(case), signer=signer)
        nacl.signing.VerifyKey(signer.verify_key).verify(transcript, expected[-1])
        env = decode(expected).verify_signature(signer.verify_key)
        assert env.auth_mode is AuthMode.SIGNED
    else:
        key = bytes.fromhex(case["mac_key"])
        session = bytes.fromhex(case["session_id"])
        mac_input = bytes.fromhex(case["expected_mac_input"])
        assert _spec_mac_input(expected) == mac_input
        frames = encode_mac(**_inputs(case), session_id=session, key=key)
        assert expected[-1] == hashlib.blake2b(mac_input, key=key, digest_size=32).digest()
        env = decode(expected).verify_mac(key)
        assert env.key_id == session
    assert [bytes(f).hex() for f in frames] == case["expected_frames"]
    assert (env.msg_type, env.sender, env.recipient) == (
        case["msg_type"],
        case["sender"],
        case["recipient"],
    )
    assert (env.sequence, env.timestamp_ms) == (case["sequence"], case["timestamp_ms"])
    assert env.body_bytes.hex() == case["body"]
    assert [bytes(r).hex() for r in env.raw_frames] == case["raw_frames"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector(case: dict[str, Any]) -> None:
    error = getattr(errors, case["error"])
    key = bytes.fromhex(VECTORS["valid"][0]["ed25519_verify_key"])
    frames = [bytes.fromhex(f) for f in case["frames"]]
    with pytest.raises(error):
        decode(frames).verify_signature(key)
