"""Helpers shared by the securemesh.crypto tests (imported as ``crypto_support``)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from securemesh.crypto.identity import NodeIdentity

DATA = Path(__file__).parent / "data"
#: The published vectors (protocol.md §13); the crypto tests read them from there.
SPEC_VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "v1"
NOW = 1_700_000_000


def load_vectors(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def load_spec_vectors(name: str) -> Any:
    """A file of the published vectors, docs/vectors/v1/ (protocol.md §13)."""
    return json.loads((SPEC_VECTORS / name).read_text(encoding="utf-8"))


def reference_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 written out with the standard library, as a second opinion.

    An empty ``salt`` is HashLen zero bytes (§2.2); HMAC pads its key with
    zeros, so both give the same PRK.
    """
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def identity_from_byte(value: int) -> NodeIdentity:
    """A deterministic identity: seeds are ``value``, ``value+1``, ``value+2`` repeated."""
    return NodeIdentity.from_seeds(
        bytes([value]) * 32, bytes([value + 1]) * 32, bytes([value + 2]) * 32
    )


class CountingBits:
    """A deterministic stand-in for secrets.randbits: start, start+1, ..."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def __call__(self, k: int) -> int:
        value = self.next
        self.next += 1
        return value % (1 << k)
