"""Regenerate envelope_vectors.json (run from the repository root).

    python tests/wire/data/generate_envelope_vectors.py

The vectors are known answers for other implementations of the envelope
format: fixed keys and fields in, exact frames (hex) out. Changing the output
of this script is a wire-format change: bump the version, do not just
regenerate.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from securemesh.crypto.signing import Ed25519Signer
from securemesh.wire import encode_mac, encode_signed

OUT = Path(__file__).with_name("envelope_vectors.json")

SEED = bytes(range(32))
MAC_KEY = bytes(range(0x40, 0x60))


def transcript(frames: list[bytes]) -> bytes:
    header, body, *raws, _auth = frames
    out = b"securemesh/envelope/v1" + struct.pack(">H", len(header)) + header
    out += struct.pack(">Q", len(body)) + hashlib.blake2b(body, digest_size=32).digest()
    for raw in raws:
        out += struct.pack(">Q", len(raw)) + hashlib.blake2b(raw, digest_size=32).digest()
    return out


def mac_input(frames: list[bytes]) -> bytes:
    header, body, *raws, _auth = frames
    out = b"securemesh/envelope-mac/v1" + struct.pack(">H", len(header)) + header
    out += struct.pack(">Q", len(body)) + body
    for raw in raws:
        out += struct.pack(">Q", len(raw)) + raw
    return out


def valid_vectors() -> list[dict[str, Any]]:
    signer = Ed25519Signer.from_seed(SEED)
    cases: list[dict[str, Any]] = [
        {
            "name": "signed request with two raw frames",
            "mode": "SIGNED",
            "msg_type": "sensor.reading",
            "sender": "dev-1",
            "recipient": "edge-1",
            "sequence": 7,
            "timestamp_ms": 1767225600000,
            "correlation_id": "000102030405060708090a0b0c0d0e0f",
            "flags": 1,
            "body": b'{"sensor":"t-1","value":21.5}'.hex(),
            "raw_frames": [b"shard-0".hex(), bytes(range(256)).hex()],
        },
        {
            "name": "signed broadcast, no raw frames",
            "mode": "SIGNED",
            "msg_type": "mesh.revocation-list",
            "sender": "cloud.authority",
            "recipient": "",
            "sequence": 2**64 - 1,
            "timestamp_ms": 0,
            "correlation_id": "00" * 16,
            "flags": 0,
            "body": b'{"version":3}'.hex(),
            "raw_frames": [],
        },
        {
            "name": "signed, empty body and one empty raw frame",
            "mode": "SIGNED",
            "msg_type": "x",
            "sender": "A",
            "recipient": "B",
            "sequence": 0,
            "timestamp_ms": 1,
            "correlation_id": "00" * 16,
            "flags": 0,
            "body": "",
            "raw_frames": [""],
        },
        {
            "name": "MAC reply with one raw frame",
            "mode": "MAC",
            "msg_type": "storage.put-ack",
            "sender": "edge-2",
            "recipient": "dev-9",
            "sequence": 123456789,
            "timestamp_ms": 1767225600123,
            "correlation_id": "ff" * 16,
            "session_id": "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            "flags": 2,
            "body": b'{"ok":true}'.hex(),
            "raw_frames": [b"\x00\x01\x02".hex()],
        },
        {
            "name": "MAC one-way message, no raw frames",
            "mode": "MAC",
            "msg_type": "app.reading",
            "sender": "dev-9",
            "recipient": "edge-2",
            "sequence": 42,
            "timestamp_ms": 1767225600456,
            "correlation_id": "00" * 16,
            "session_id": "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf",
            "flags": 0,
            "body": b'{"t":21.5,"rh":40}'.hex(),
            "raw_frames": [],
        },
    ]
    for case in cases:
        common: dict[str, Any] = {
            "msg_type": case["msg_type"],
            "sender": case["sender"],
            "recipient": case["recipient"],
            "sequence": case["sequence"],
            "timestamp_ms": case["timestamp_ms"],
            "correlation_id": bytes.fromhex(case["correlation_id"]),
            "flags": case["flags"],
            "body": bytes.fromhex(case["body"]),
            "frames": [bytes.fromhex(r) for r in case["raw_frames"]],
        }
        if case["mode"] == "SIGNED":
            case["ed25519_seed"] = SEED.hex()
            case["ed25519_verify_key"] = signer.verify_key.hex()
            frames = encode_signed(**common, signer=signer)
        else:
            case["mac_key"] = MAC_KEY.hex()
            frames = encode_mac(**common, session_id=bytes.fromhex(case["session_id"]), key=MAC_KEY)
        raw = [bytes(f) for f in frames]
        if case["mode"] == "SIGNED":
            case["expected_transcript"] = transcript(raw).hex()
        else:
            case["expected_mac_input"] = mac_input(raw).hex()
        case["expected_frames"] = [f.hex() for f in raw]
    return cases


def invalid_vectors(good: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frames = [bytes.fromhex(f) for f in good[0]["expected_frames"]]
    header = frames[0]

    def with_header(h: bytes) -> list[str]:
        return [f.hex() for f in [h, *frames[1:]]]

    flipped_body = bytearray(frames[1])
    flipped_body[0] ^= 1
    return [
        {"name": "bad magic", "error": "DecodeError", "frames": with_header(b"SN" + header[2:])},
        {
            "name": "unsupported version",
            "error": "DecodeError",
            "frames": with_header(header[:2] + b"\x02" + header[3:]),
        },
        {
            "name": "trailing byte after header",
            "error": "DecodeError",
            "frames": with_header(header + b"-"),
        },
        {
            "name": "reserved flag bit",
            "error": "DecodeError",
            "frames": with_header(header[:4] + b"\x00\x05" + header[6:]),
        },
        {
            "name": "uppercase message type",
            "error": "DecodeError",
            "frames": with_header(header[:59] + b"S" + header[60:]),
        },
        {
            "name": "missing raw frame",
            "error": "DecodeError",
            "frames": [f.hex() for f in [*frames[:2], frames[3], frames[4]]],
        },
        {
            "name": "flipped body bit",
            "error": "AuthenticationError",
            "frames": [f.hex() for f in [frames[0], bytes(flipped_body), *frames[2:]]],
        },
        {
            "name": "byte moved across the raw-frame boundary",
            "error": "AuthenticationError",
            "frames": [
                f.hex()
                for f in [
                    frames[0],
                    frames[1],
                    frames[2][:-1],
                    frames[2][-1:] + frames[3],
                    frames[4],
                ]
            ],
        },
        {
            "name": "auth frame longer than any signature or MAC (65 bytes)",
            "error": "SizeLimitExceeded",
            "frames": [f.hex() for f in [*frames[:-1], frames[-1] + b"\x00"]],
        },
    ]


def main() -> None:
    good = valid_vectors()
    doc = {
        "format": "securemesh envelope v1",
        "description": (
            "Known-answer vectors. Valid: encode the inputs, expect expected_frames "
            "(hex) exactly; decode and verify them with ed25519_verify_key or mac_key. "
            "SIGNED cases give the signed transcript, MAC cases the MAC input. "
            "Invalid: decoding+verifying 'frames' must fail with 'error' under default "
            "limits. Spec: securemesh/wire/_header.py and _envelope.py docstrings."
        ),
        "valid": good,
        "invalid": invalid_vectors(good),
    }
    OUT.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
