"""Sealed boxes: wrap a small secret (a data key) to a node's X25519 key.

libsodium's ``crypto_box_seal`` through :class:`nacl.public.SealedBox`: an
ephemeral X25519 key pair per message, XSalsa20-Poly1305 under the shared key,
and the ephemeral public key prepended. Only the holder of the recipient's
private key can open it; the sender stays anonymous, so a wrapped key says
nothing about who wrapped it (signed manifests say that).

Used by encrypted storage to give each authorized reader the object's data key.
Wrapped payloads are small, so both directions have a hard size limit.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public

from securemesh.errors import AuthenticationError, LocalError, SizeLimitExceeded

__all__ = ["MAX_WRAPPED_SIZE", "SEALED_BOX_OVERHEAD", "unwrap_key", "wrap_key"]

SEALED_BOX_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)
MAX_WRAPPED_SIZE = 64 * 1024
_KEY_SIZE = 32


def wrap_key(recipient_kx_public: bytes, data: bytes) -> bytes:
    """Encrypt ``data`` so that only the holder of the matching X25519 private key can read it."""
    if len(recipient_kx_public) != _KEY_SIZE:
        raise LocalError("an X25519 public key is 32 bytes")
    if len(data) + SEALED_BOX_OVERHEAD > MAX_WRAPPED_SIZE:
        raise LocalError(f"wrapped data must stay below {MAX_WRAPPED_SIZE} bytes")
    box = nacl.public.SealedBox(nacl.public.PublicKey(bytes(recipient_kx_public)))
    return box.encrypt(bytes(data))


def unwrap_key(recipient_kx_private: bytes, blob: bytes) -> bytes:
    """Open a :func:`wrap_key` blob; AuthenticationError if it was not sealed to this key."""
    if len(recipient_kx_private) != _KEY_SIZE:
        raise LocalError("an X25519 private key is 32 bytes")
    if len(blob) > MAX_WRAPPED_SIZE:
        raise SizeLimitExceeded("wrapped key blob too large")
    if len(blob) < SEALED_BOX_OVERHEAD:
        raise AuthenticationError("wrapped key blob too short")
    box = nacl.public.SealedBox(nacl.public.PrivateKey(bytes(recipient_kx_private)))
    try:
        return box.decrypt(bytes(blob))
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError("sealed box does not open") from exc
