"""Ed25519 signatures (RFC 8032) through pynacl.

``verify_signature`` follows pynacl's ``VerifyKey.verify``: it hands back the
signed data only once the signature checks, and raises otherwise; it never
returns a bool.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import nacl.exceptions
import nacl.signing

from securemesh.errors import AuthenticationError, LocalError

__all__ = ["SIGNATURE_SIZE", "VERIFY_KEY_SIZE", "Ed25519Signer", "Signer", "verify_signature"]

SIGNATURE_SIZE = 64
VERIFY_KEY_SIZE = 32


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign on behalf of a node: a node identity, an authority."""

    @property
    def verify_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature over ``data``."""
        ...


class Ed25519Signer:
    """A bare Ed25519 signing key. Node identities wrap one of these."""

    SEED_SIZE: ClassVar[int] = 32

    __slots__ = ("_key", "_verify_key")

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self._verify_key = bytes(key.verify_key)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        if len(seed) != cls.SEED_SIZE:
            raise LocalError(f"an Ed25519 seed is {cls.SEED_SIZE} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    def seed(self) -> bytes:
        """The secret seed. Handle with care: only key files should ever see this."""
        return bytes(self._key)

    @property
    def verify_key(self) -> bytes:
        return self._verify_key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def __repr__(self) -> str:  # never print key material
        return f"Ed25519Signer(verify_key={self._verify_key.hex()[:16]}…)"


def verify_signature(verify_key: bytes, data: bytes, signature: bytes) -> bytes:
    """Return ``data`` if ``signature`` is a valid Ed25519 signature by ``verify_key``.

    Raises :class:`~securemesh.errors.AuthenticationError` otherwise, including
    for keys or signatures of the wrong length.
    """
    if len(verify_key) != VERIFY_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise AuthenticationError("signature or key has the wrong length")
    try:
        nacl.signing.VerifyKey(verify_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise AuthenticationError("signature does not verify") from exc
    return data
