"""A node's long-term identity: three key pairs generated and kept on the node.

* **Ed25519** (RFC 8032) signing key: signs envelopes, audit events, results,
  manifests; its public half is the certificate's ``verify_key``.
* **X25519** (RFC 7748) key-agreement key: session handshakes, secure-aggregation
  pairwise masks, sealed boxes of data keys (``kx_key``).
* **CurveZMQ** key pair (RFC 26/CurveZMQ; also Curve25519): the transport's long-term
  server/client key (``curve_key``), kept separate from the X25519 key so that
  the transport layer never holds the key that unwraps stored data keys. ZeroMQ
  wants these as 40-character Z85 strings (:mod:`securemesh.crypto.z85`).

Private keys never leave the node: :meth:`NodeIdentity.save` writes them
through :mod:`securemesh.crypto.keystore` (Argon2id + XChaCha20-Poly1305,
0600, atomic), and nothing here prints them: ``repr`` shows a public-key
prefix only, and the one accessor that exposes a secret is named for it
(:meth:`NodeIdentity.curve_secret_z85`, needed by ZeroMQ's CURVE options).

Key-file payload, version 1 (exactly 101 bytes inside the encrypted file)::

    b"SMID"  u8 version = 1  ed25519_seed (32)  x25519_private (32)  curve_private (32)
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import ClassVar, NoReturn

import nacl.bindings
import nacl.utils

from securemesh.crypto import keystore, kx
from securemesh.crypto.signing import Ed25519Signer
from securemesh.crypto.z85 import z85_encode
from securemesh.errors import CorruptKeyFile, LocalError

__all__ = ["KEY_SIZE", "NodeIdentity", "PublicKeys"]

KEY_SIZE = 32
_PAYLOAD_MAGIC = b"SMID"
_PAYLOAD_VERSION = 1
_PAYLOAD_SIZE = len(_PAYLOAD_MAGIC) + 1 + 3 * KEY_SIZE


def _curve_public(secret: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(secret)


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """The public halves of a node's keys, as they appear in its certificate."""

    verify_key: bytes
    kx_key: bytes
    curve_key: bytes

    def __post_init__(self) -> None:
        for name in ("verify_key", "kx_key", "curve_key"):
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != KEY_SIZE:
                raise LocalError(f"{name} must be {KEY_SIZE} bytes")

    @property
    def curve_key_z85(self) -> str:
        return z85_encode(self.curve_key)

    def to_dict(self) -> dict[str, str]:
        """Printable form: hex and unpadded base64url of each key, Z85 of the CURVE key."""
        return {
            "verify_key_hex": self.verify_key.hex(),
            "verify_key_b64": base64.urlsafe_b64encode(self.verify_key).rstrip(b"=").decode(),
            "kx_key_hex": self.kx_key.hex(),
            "curve_key_hex": self.curve_key.hex(),
            "curve_key_z85": self.curve_key_z85,
        }


class NodeIdentity:
    """The secret keys of one node. Build with :meth:`generate`, :meth:`load` or seeds."""

    PAYLOAD_SIZE: ClassVar[int] = _PAYLOAD_SIZE

    __slots__ = ("_curve_public", "_curve_secret", "_kx_public", "_kx_secret", "_signer")

    def __init__(self, signer: Ed25519Signer, kx_secret: bytes, curve_secret: bytes) -> None:
        if len(kx_secret) != KEY_SIZE or len(curve_secret) != KEY_SIZE:
            raise LocalError("X25519 and CURVE secrets are 32 bytes")
        self._signer = signer
        self._kx_secret = bytes(kx_secret)
        self._kx_public = kx.kx_public_key(self._kx_secret)
        self._curve_secret = bytes(curve_secret)
        self._curve_public = _curve_public(self._curve_secret)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """Fresh keys from the operating system's CSPRNG."""
        return cls(
            Ed25519Signer.generate(), nacl.utils.random(KEY_SIZE), nacl.utils.random(KEY_SIZE)
        )

    @classmethod
    def from_seeds(cls, ed25519_seed: bytes, kx_secret: bytes, curve_secret: bytes) -> NodeIdentity:
        """Rebuild from raw secrets (key files, deterministic tests)."""
        return cls(Ed25519Signer.from_seed(ed25519_seed), kx_secret, curve_secret)

    # ---------------------------------------------------------------- public halves

    @property
    def verify_key(self) -> bytes:
        return self._signer.verify_key

    @property
    def kx_public(self) -> bytes:
        return self._kx_public

    @property
    def curve_public(self) -> bytes:
        return self._curve_public

    @property
    def curve_public_z85(self) -> str:
        return z85_encode(self._curve_public)

    def public(self) -> PublicKeys:
        return PublicKeys(
            verify_key=self.verify_key, kx_key=self._kx_public, curve_key=self._curve_public
        )

    # -------------------------------------------------------------- secret operations

    @property
    def signer(self) -> Ed25519Signer:
        return self._signer

    def sign(self, data: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature over ``data``."""
        return self._signer.sign(data)

    def agree(self, peer_kx_public: bytes, *, info: bytes, salt: bytes = b"") -> bytes:
        """A 32-byte key shared with the owner of ``peer_kx_public`` (X25519 + HKDF-SHA256)."""
        return kx.derive_shared_key(self._kx_secret, peer_kx_public, info=info, salt=salt)

    def kx_secret(self) -> bytes:
        """The raw X25519 private key (for :func:`securemesh.crypto.boxes.unwrap_key`)."""
        return self._kx_secret

    def curve_secret_z85(self) -> str:
        """The CURVE secret key as Z85, for ``zmq.CURVE_SECRETKEY``. Never log it."""
        return z85_encode(self._curve_secret)

    # ------------------------------------------------------------------ persistence

    def to_payload(self) -> bytes:
        """The fixed 101-byte secret layout (module docstring). Encrypt before storing."""
        return (
            _PAYLOAD_MAGIC
            + bytes([_PAYLOAD_VERSION])
            + self._signer.seed()
            + self._kx_secret
            + self._curve_secret
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> NodeIdentity:
        if len(payload) != _PAYLOAD_SIZE or not payload.startswith(_PAYLOAD_MAGIC):
            raise CorruptKeyFile("not a node identity key file")
        if payload[4] != _PAYLOAD_VERSION:
            raise CorruptKeyFile(f"unsupported identity payload version {payload[4]}")
        body = payload[5:]
        return cls.from_seeds(body[:32], body[32:64], body[64:96])

    def save(
        self,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
        overwrite: bool = False,
    ) -> None:
        """Write the encrypted key file (0600, atomic; refuses to overwrite by default)."""
        keystore.write_secret_file(
            path, self.to_payload(), passphrase, params=params, overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str | bytes) -> NodeIdentity:
        """Read a key file; WrongPassphrase or CorruptKeyFile if it cannot be used."""
        return cls.from_payload(keystore.read_secret_file(path, passphrase))

    def __repr__(self) -> str:  # never print key material
        return f"NodeIdentity(verify_key={self.verify_key.hex()[:16]}…)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("NodeIdentity holds secret keys and cannot be pickled")
