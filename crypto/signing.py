"""Ed25519 signatures (RFC 8032) through pynacl.

``verify_signature`` follows pynacl's ``VerifyKey.verify``: it hands back the
signed data only once the signature checks, and raises otherwise; it never
returns a bool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import nacl.bindings
import nacl.exceptions
import nacl.signing

from securemesh.errors import AuthenticationError, LocalError

__all__ = [
    "SIGNATURE_SIZE",
    "VERIFY_KEY_SIZE",
    "Ed25519Signer",
    "Signer",
    "signature_opener",
    "verify_signature",
]

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


def signature_opener(capacity: int) -> Callable[[bytes, bytes], bool]:
    """``opener(signature ‖ message, verify key) -> bool``: libsodium ``crypto_sign_open``.

    The same libsodium function that ``nacl.signing.VerifyKey.verify`` and
    ``nacl.bindings.crypto_sign_open`` call, called through pynacl's compiled
    cffi module with one reusable output buffer of ``capacity`` bytes (pynacl's
    wrapper allocates and zeroes a buffer and copies the message out on every
    call: ≈ 1 µs of a ≈ 45 µs check, on the bus and audit hot paths). Not
    thread-safe: one opener per thread. Raises LocalError for a longer input
    or a key of the wrong length. Falls back to ``nacl.bindings.crypto_sign_open``
    if that module changes.
    """
    try:
        from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # noqa: PLC0415

        raw_open = lib.crypto_sign_open
        null = ffi.NULL
        buf = ffi.new("unsigned char[]", capacity)
    except (ImportError, AttributeError):  # pragma: no cover - other pynacl builds
        bindings_open = nacl.bindings.crypto_sign_open

        def slow(signed: bytes, vk: bytes) -> bool:
            try:
                bindings_open(signed, vk)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
                return False
            return True

        return slow

    def opener(signed: bytes, vk: bytes) -> bool:
        n = len(signed)
        if n > capacity or len(vk) != VERIFY_KEY_SIZE:  # the C call trusts both lengths
            raise LocalError("bad arguments to crypto_sign_open")
        return raw_open(buf, null, signed, n, vk) == 0  # type: ignore[no-any-return]

    return opener


_OPEN_CAPACITY = 4096  # envelope transcripts, certificates, tokens: all far below
_local = threading.local()


def verify_signature(verify_key: bytes, data: bytes, signature: bytes) -> bytes:
    """Return ``data`` if ``signature`` is a valid Ed25519 signature by ``verify_key``.

    Raises :class:`~securemesh.errors.AuthenticationError` otherwise, including
    for keys or signatures of the wrong length. libsodium ``crypto_sign_open``
    (RFC 8032 verification with libsodium's canonical-encoding checks), through
    this thread's :func:`signature_opener` for inputs up to 4 KiB.
    """
    if len(verify_key) != VERIFY_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise AuthenticationError("signature or key has the wrong length")
    signed = bytes(signature) + bytes(data)
    if len(signed) <= _OPEN_CAPACITY:
        opener = getattr(_local, "opener", None)
        if opener is None:
            opener = _local.opener = signature_opener(_OPEN_CAPACITY)
        if not opener(signed, bytes(verify_key)):
            raise AuthenticationError("signature does not verify")
        return data
    try:
        nacl.bindings.crypto_sign_open(signed, bytes(verify_key))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise AuthenticationError("signature does not verify") from exc
    return data
