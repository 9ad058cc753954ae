"""Generate the published test vectors of docs/vectors/v1 (run from the repository root).

    python docs/vectors/generate.py            # rewrite the generated files
    python docs/vectors/generate.py --check    # exit 1 if a file would change

Generated here (deterministic: fixed keys, seeds and fields in, exact bytes out):
``envelopes.json``, ``batches.json``, ``enrollment.json``, ``bodies.json``.
``session.json`` is generated once and then only checked: the ML-KEM
encapsulation draws randomness inside OpenSSL, so each run would record a
different ACCEPT (every other byte of the transcript follows from it).
``certificates.json``, ``kem.json`` and ``join_token.json`` are recorded
vectors kept as they are (see README.md).

The byte layouts are built here *from the text of docs/protocol.md* where that
is short (transcripts, MAC input, batches, HKDF), so the vectors are a second
opinion on the code, not a copy of it. Changing the output of this script is a
protocol change: publish a new version directory (v2), do not overwrite v1.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securemesh.crypto.certs import Tier
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer
from securemesh.enroll import JoinToken, build_enroll_request
from securemesh.messages import ErrorReply, NodeHello, NodeReport, b64e
from securemesh.node._attach import sign_attachment
from securemesh.session import Handshake
from securemesh.wire import Flags, dump_body, encode_mac, encode_signed

OUT = Path(__file__).resolve().parent / "v1"

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


def envelopes() -> dict[str, Any]:
    good = valid_vectors()
    return {
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


# ----------------------------------------------------------------------- batches


def batch(messages: list[list[bytes]]) -> bytes:
    """protocol.md §2.1, written out."""
    out = struct.pack(">BH", 1, len(messages))
    for frames in messages:
        out += struct.pack(">B", len(frames))
        out += b"".join(struct.pack(">I", len(f)) for f in frames)
        out += b"".join(frames)
    return out


def batches() -> dict[str, Any]:
    env = [bytes.fromhex(f) for f in valid_vectors()[0]["expected_frames"]]
    mac = [bytes.fromhex(f) for f in valid_vectors()[3]["expected_frames"]]
    valid: list[dict[str, Any]] = [
        {"name": "two envelopes", "messages": [env, mac]},
        {"name": "three one-frame messages", "messages": [[b"a"], [b"bc"], [b"d" * 300]]},
        {"name": "empty frames after the first", "messages": [[b"x", b"", b""], [b"y", b""]]},
    ]
    good = batch([[b"a"], [b"b"]])
    invalid: list[dict[str, Any]] = [
        {"name": "one message (count must be 2..1024)", "batch": batch([[b"a"]])},
        {"name": "version 2", "batch": b"\x02" + good[1:]},
        {"name": "trailing byte", "batch": good + b"\x00"},
        {"name": "truncated frame", "batch": good[:-1]},
        {"name": "empty first frame", "batch": batch([[b""], [b"b"]])},
        {"name": "zero frames in a message", "batch": b"\x01\x00\x02\x00" + batch([[b"b"]])[3:]},
        {"name": "count says 3, holds 2", "batch": b"\x01\x00\x03" + good[3:]},
    ]
    return {
        "format": "securemesh batch v1 (protocol.md §2.1)",
        "description": (
            "A ZeroMQ message [b'', batch] carries the messages in order. Valid: "
            "batch(messages) must equal 'batch' (hex) and split back into 'messages' "
            "(lists of frames, hex). Invalid: a receiver (max 16 frames per message) "
            "drops the whole batch."
        ),
        "valid": [
            {
                "name": v["name"],
                "messages": [[f.hex() for f in m] for m in v["messages"]],
                "batch": batch(v["messages"]).hex(),
            }
            for v in valid
        ],
        "invalid": [{"name": v["name"], "batch": v["batch"].hex()} for v in invalid],
    }


# -------------------------------------------------------------------- enrollment


def hkdf_sha256(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869), salt empty (= 32 zero bytes), L = 32."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def str8(text: str) -> bytes:
    return bytes([len(text)]) + text.encode("ascii")


def enrollment() -> dict[str, Any]:
    token = JoinToken(
        authority_id="mesh",
        root_key=bytes(range(32)),
        server_key=bytes(range(32, 64)),
        server_id="edge-1",
        endpoint="tcp://192.0.2.7:7101",
        token_id=bytes(range(100, 116)),
        secret=bytes(range(200, 232)),
        expires_at=1_800_003_600,
        tier=Tier.END,
        roles=("sensor",),
        delegate=False,
        name_prefix="edge-1.",
    )
    curve_secret = hkdf_sha256(token.secret, b"securemesh/token-curve/v1")
    curve_public = (
        x25519.X25519PrivateKey.from_private_bytes(curve_secret).public_key().public_bytes_raw()
    )
    proof_key = hkdf_sha256(token.secret, b"securemesh/token-proof/v1")
    seeds = {
        "ed25519_seed": bytes([0x11]) * 32,
        "kx_secret": bytes([0x12]) * 32,
        "curve_secret": bytes([0x13]) * 32,
    }
    ident = NodeIdentity.from_seeds(**seeds)
    keys = ident.public()
    node_id = "edge-1.dev-7"
    transcript = token.token_id + str8(node_id) + keys.verify_key + keys.kx_key + keys.curve_key
    proof = hmac.new(proof_key, b"securemesh/enroll-proof/v1\x00" + transcript, "sha256").digest()
    signature = ident.signer.sign(b"securemesh/enroll-pop/v1\x00" + transcript)
    request = build_enroll_request(token, ident, node_id)
    body = dump_body(request)
    envelope = encode_signed(
        msg_type="enroll.request",
        sender=node_id,
        recipient=token.server_id,
        sequence=1_767_225_600_000_000,
        timestamp_ms=1_767_225_600_000,
        correlation_id=bytes(range(0xC0, 0xD0)),
        flags=Flags.REQUEST,
        body=body,
        signer=ident.signer,
    )
    return {
        "format": "securemesh join token v1 and enroll.request v1 (protocol.md §9)",
        "description": (
            "A device join token from a name-constrained edge, the keys derived from "
            "its secret (HKDF-SHA256, RFC 5869: salt empty = 32 zero bytes, info = the "
            "label, L = 32), the new node's keys, the request transcript, proof, "
            "self-signature, the canonical EnrollRequest body and the signed "
            "enroll.request envelope (frames, hex). Every value is deterministic."
        ),
        "token_fields": {
            "version": 1,
            "authority_id": token.authority_id,
            "root_key": token.root_key.hex(),
            "server_key": token.server_key.hex(),
            "server_id": token.server_id,
            "endpoint": token.endpoint,
            "token_id": token.token_id.hex(),
            "secret": token.secret.hex(),
            "expires_at": token.expires_at,
            "tier": "end",
            "roles": list(token.roles),
            "flags": 2,
            "name_prefix": token.name_prefix,
        },
        "token": token.encode(),
        "token_payload": token.to_payload().hex(),
        "first_contact_curve_secret": curve_secret.hex(),
        "first_contact_curve_public": curve_public.hex(),
        "proof_key": proof_key.hex(),
        "node_id": node_id,
        "node_seeds": {k: v.hex() for k, v in seeds.items()},
        "node_keys": {
            "verify_key": keys.verify_key.hex(),
            "kx_key": keys.kx_key.hex(),
            "curve_key": keys.curve_key.hex(),
        },
        "request_transcript": transcript.hex(),
        "proof": proof.hex(),
        "signature": signature.hex(),
        "request_body": body.decode("utf-8"),
        "envelope": {
            "sequence": 1_767_225_600_000_000,
            "timestamp_ms": 1_767_225_600_000,
            "correlation_id": bytes(range(0xC0, 0xD0)).hex(),
            "frames": [bytes(f).hex() for f in envelope],
        },
    }


# ------------------------------------------------------------------------ bodies


def bodies() -> dict[str, Any]:
    signer = Ed25519Signer.from_seed(bytes([0x21]) * 32)
    parent_key = bytes(range(0x80, 0xA0))
    statement = sign_attachment(
        signer,
        "edge-1.dev-7",
        parent_key,
        sequence=1_767_225_600_000_001,
        timestamp_ms=1_767_225_600_001,
    )
    unsigned = (
        b"SMA\x01"
        + str8("edge-1.dev-7")
        + parent_key
        + struct.pack(">QQ", 1_767_225_600_000_001, 1_767_225_600_001)
    )
    cert = bytes(range(40))  # any bytes: the body carries them as base64url
    samples: list[tuple[str, Any]] = [
        (
            "node.hello (to the parent)",
            NodeHello(
                certificates=[b64e(cert)],
                attachment=b64e(statement),
            ),
        ),
        (
            "node.hello (reply, no attachment: the key is absent)",
            NodeHello(certificates=[b64e(cert)]),
        ),
        (
            "node.report (rtt_ms unknown: absent)",
            NodeReport(
                load_1m=0.25,
                load_5m=0.5,
                load_15m=1.0,
                queue_length=0,
                capacity=8,
                inflight=1,
                uptime_s=12.5,
            ),
        ),
        ("mesh.error", ErrorReply(code="malformed", message="attachment: missing")),
    ]
    return {
        "format": "securemesh mesh bodies v1 (protocol.md §3.1, §8) and attachment statement",
        "description": (
            "Canonical bodies as this implementation sends them: compact JSON, keys in "
            "field order, optional fields absent (not null). Receivers accept any "
            "whitespace and key order (§3.1); 'body' must parse to the same value. "
            "The attachment statement is deterministic (Ed25519, RFC 8032)."
        ),
        "attachment": {
            "ed25519_seed": (bytes([0x21]) * 32).hex(),
            "verify_key": signer.verify_key.hex(),
            "node_id": "edge-1.dev-7",
            "parent_curve_key": parent_key.hex(),
            "sequence": 1_767_225_600_000_001,
            "timestamp_ms": 1_767_225_600_001,
            "statement": unsigned.hex(),
            "signed": statement.hex(),
        },
        "bodies": [
            {"name": name, "type": name.split(" ")[0], "body": dump_body(model).decode()}
            for name, model in samples
        ],
    }


# ----------------------------------------------------------------------- session


def session() -> dict[str, Any]:
    """One recorded handshake (protocol.md §5, session-and-transport.md §2)."""

    def feed(*chunks: bytes) -> Callable[[int], bytes]:
        queue = list(chunks)

        def rng(n: int) -> bytes:
            item = queue.pop(0)
            assert len(item) == n
            return item

        return rng

    i_seed, r_seed = bytes([0x31]) * 32, bytes([0x32]) * 32
    i_x, i_m, i_nonce = bytes([0x33]) * 32, bytes([0x34]) * 64, bytes([0x35]) * 32
    r_nonce, r_eph = bytes([0x36]) * 32, bytes([0x37]) * 32
    i_signer, r_signer = Ed25519Signer.from_seed(i_seed), Ed25519Signer.from_seed(r_seed)
    keys = {"dev-1": i_signer.verify_key, "edge-1": r_signer.verify_key}
    init = Handshake.initiator(
        node_id="dev-1",
        peer_id="edge-1",
        signer=i_signer,
        resolve_peer=keys.__getitem__,
        rng=feed(i_x, i_m, i_nonce),
    )
    resp = Handshake.responder(
        node_id="edge-1",
        signer=r_signer,
        resolve_peer=keys.__getitem__,
        rng=feed(r_nonce, r_eph),
    )
    hello = init.initiate()
    accept = resp.receive(hello)
    assert accept is not None
    finish = init.receive(accept)
    assert finish is not None
    resp.receive(finish)
    s = init.session
    send, recv = s.envelope_mac_keys()
    envelope = encode_mac(
        msg_type="app.reading",
        sender="dev-1",
        recipient="edge-1",
        sequence=5,
        timestamp_ms=1_767_225_600_005,
        body=b'{"t":21.5}',
        session_id=s.session_id,
        key=send,
    )
    return {
        "format": "securemesh session handshake v1 (session-and-transport.md §1-2, protocol.md §5)",
        "description": (
            "One recorded handshake dev-1 (initiator) -> edge-1 (responder). HELLO "
            "follows from the initiator's seeds (drawn in the order x25519_secret, "
            "mlkem_seed, nonce); ACCEPT holds an ML-KEM ciphertext whose randomness "
            "OpenSSL drew, so it is recorded, not derivable; FINISH, every hash and key "
            "follow from the recorded bytes. The MAC envelope is sent by the initiator "
            "with its envelope MAC key (key_id = session_id)."
        ),
        "initiator": {
            "node_id": "dev-1",
            "ed25519_seed": i_seed.hex(),
            "verify_key": i_signer.verify_key.hex(),
            "x25519_secret": i_x.hex(),
            "mlkem_seed": i_m.hex(),
            "nonce": i_nonce.hex(),
        },
        "responder": {
            "node_id": "edge-1",
            "ed25519_seed": r_seed.hex(),
            "verify_key": r_signer.verify_key.hex(),
            "nonce": r_nonce.hex(),
            "x25519_ephemeral_secret": r_eph.hex(),
        },
        "hello": hello.hex(),
        "accept": accept.hex(),
        "finish": finish.hex(),
        "session_id": s.session_id.hex(),
        "envelope_mac_key_i2r": send.hex(),
        "envelope_mac_key_r2i": recv.hex(),
        "mac_envelope": [bytes(f).hex() for f in envelope],
    }


GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "envelopes.json": envelopes,
    "batches.json": batches,
    "enrollment.json": enrollment,
    "bodies.json": bodies,
}
RECORDED_ONCE: dict[str, Callable[[], dict[str, Any]]] = {"session.json": session}


def _text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file would change")
    args = parser.parse_args()
    changed = []
    for name, make in GENERATED.items():
        path, text = OUT / name, _text(make())
        if not path.exists() or path.read_text() != text:
            changed.append(name)
            if not args.check:
                path.write_text(text)
    for name, make in RECORDED_ONCE.items():
        path = OUT / name
        if not path.exists() and not args.check:
            path.write_text(_text(make()))
    if args.check and changed:
        print(f"error: would change {', '.join(changed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
