"""Authenticated encryption: XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha, RFC 8439).

The safe recipe, as pyca's Fernet is over its hazmat layer: :func:`seal`
returns ``nonce || ciphertext || tag`` with a fresh random 192-bit nonce, and
:func:`open_sealed` returns the plaintext only after the Poly1305 tag checks.
A 24-byte random nonce makes collisions negligible for any realistic number of
messages under one key (2**-96 after 2**48 messages), so callers never manage
nonces. The nonce parameter exists only so tests can pin known answers; a
reused nonce destroys confidentiality, so production code never passes one.

Every failure to open (short blob, wrong key, altered nonce, ciphertext, tag or
associated data) raises the same :class:`~securemesh.errors.AuthenticationError`
so that a forger learns nothing about which part was wrong.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
import nacl.utils

from securemesh.errors import AuthenticationError, LocalError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE", "generate_key", "open_sealed", "seal"]

KEY_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


def generate_key() -> bytes:
    """A fresh random 256-bit key from the operating system's CSPRNG."""
    return nacl.utils.random(KEY_SIZE)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise LocalError(f"an AEAD key is {KEY_SIZE} bytes")


def seal(key: bytes, plaintext: bytes, *, aad: bytes = b"", nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate ``plaintext`` (and authenticate ``aad``).

    Returns ``nonce (24) || ciphertext || tag (16)``.
    """
    _check_key(key)
    if nonce is None:
        nonce = nacl.utils.random(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise LocalError(f"an XChaCha20-Poly1305 nonce is {NONCE_SIZE} bytes")
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(aad), bytes(nonce), bytes(key)
    )
    return bytes(nonce) + ciphertext


def open_sealed(key: bytes, blob: bytes, *, aad: bytes = b"") -> bytes:
    """Return the plaintext of a :func:`seal` output, or raise AuthenticationError."""
    _check_key(key)
    if len(blob) < OVERHEAD:
        raise AuthenticationError("sealed blob too short")
    nonce, ciphertext = bytes(blob[:NONCE_SIZE]), bytes(blob[NONCE_SIZE:])
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, bytes(aad), nonce, bytes(key)
        )
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError("AEAD open failed") from exc
