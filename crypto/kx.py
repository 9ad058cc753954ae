"""Key agreement: X25519 (RFC 7748) followed by HKDF-SHA256 (RFC 5869).

:func:`derive_shared_key` is the one recipe: the raw Diffie-Hellman output is
never handed out, only an HKDF output bound to a caller-chosen ``info`` label
(and optional ``salt``). Callers put everything the key must be bound to in
``info``: a protocol label, both parties' identities or public keys, a round
number. X25519 is symmetric, so both sides derive the same key from the same
``info`` and ``salt``.

Low-order peer points (RFC 7748 §6.1) give an all-zero shared secret; those
are refused with :class:`~securemesh.errors.AuthenticationError` because the
peer's key is what is wrong. A private key of the wrong size is our own
misuse (:class:`~securemesh.errors.LocalError`).
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securemesh.errors import AuthenticationError, DecodeError, LocalError

__all__ = [
    "KX_KEY_SIZE",
    "MAX_DERIVED_LENGTH",
    "derive_shared_key",
    "generate_kx_private_key",
    "hkdf_sha256",
    "kx_public_key",
]

KX_KEY_SIZE = 32
MAX_DERIVED_LENGTH = 255 * 32  # RFC 5869 §2.3: L <= 255 * HashLen
_ZERO = bytes(KX_KEY_SIZE)


def generate_kx_private_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes)."""
    return x25519.X25519PrivateKey.generate().private_bytes_raw()


def kx_public_key(private_key: bytes) -> bytes:
    """The 32-byte X25519 public key of ``private_key``."""
    return _private(private_key).public_key().public_bytes_raw()


def _private(private_key: bytes) -> x25519.X25519PrivateKey:
    if len(private_key) != KX_KEY_SIZE:
        raise LocalError(f"an X25519 private key is {KX_KEY_SIZE} bytes")
    return x25519.X25519PrivateKey.from_private_bytes(bytes(private_key))


def hkdf_sha256(ikm: bytes, *, info: bytes, salt: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869). An empty salt means HashLen zero bytes (§2.2)."""
    if not 1 <= length <= MAX_DERIVED_LENGTH:
        raise LocalError(f"HKDF output length must be 1..{MAX_DERIVED_LENGTH}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=bytes(salt) or None, info=info)
    return hkdf.derive(bytes(ikm))


def derive_shared_key(
    private_key_bytes: bytes,
    peer_public_bytes: bytes,
    *,
    info: bytes,
    salt: bytes = b"",
    length: int = 32,
) -> bytes:
    """X25519(private, peer_public) fed through HKDF-SHA256(salt, info) to ``length`` bytes."""
    private = _private(private_key_bytes)
    if len(peer_public_bytes) != KX_KEY_SIZE:
        raise DecodeError(f"an X25519 public key is {KX_KEY_SIZE} bytes")
    peer = x25519.X25519PublicKey.from_public_bytes(bytes(peer_public_bytes))
    try:
        shared = private.exchange(peer)
    except ValueError as exc:  # OpenSSL refuses an all-zero result
        raise AuthenticationError("low-order X25519 public key") from exc
    if hmac.compare_digest(shared, _ZERO):  # belt and braces, whatever the backend does
        raise AuthenticationError("low-order X25519 public key")
    return hkdf_sha256(shared, info=info, salt=salt, length=length)
