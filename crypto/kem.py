"""Hybrid post-quantum key establishment: X25519 + ML-KEM-768.

Theory of operation
-------------------
A session secret must stay private even against an adversary who records
traffic today and owns a quantum computer tomorrow ("harvest now, decrypt
later"), and must also stay private if ML-KEM turns out to be weaker than hoped.
So we run two key establishments side by side and feed *both* shared secrets to
one KDF; the result is secret as long as either component is:

* **ML-KEM-768** (NIST FIPS 203), through ``cryptography``'s
  ``hazmat.primitives.asymmetric.mlkem`` (OpenSSL / AWS-LC underneath). The
  public (encapsulation) key is 1,184 bytes, the ciphertext 1,088 bytes, the
  shared secret 32 bytes. Public keys are checked on import (the FIPS 203
  §7.2 modulus check) and decapsulation uses implicit rejection, so a tampered
  ciphertext yields an unrelated secret rather than an error.
* **X25519** (RFC 7748), ephemeral-ephemeral: the encapsulator's fresh X25519
  public key plays the role of the X25519 "ciphertext". An all-zero result
  (low-order peer point) is refused (RFC 7748 §6.1).

Wire order follows draft-ietf-tls-ecdhe-mlkem (the ``X25519MLKEM768`` group of
TLS 1.3): the ML-KEM part first, then X25519, for both the public key
(``mlkem_pk || x25519_pk`` = 1,216 bytes) and the ciphertext
(``mlkem_ct || x25519_ct`` = 1,120 bytes).

The **combiner** takes the X-Wing inputs (draft-connolly-cfrg-xwing-kem §5.3:
``ss_M || ss_X || ct_X || pk_X``: binding the X25519 ciphertext and the
recipient's X25519 public key makes the DH half robust on its own, while
ML-KEM's Fujisaki-Okamoto transform already binds its ciphertext) and runs them
through HKDF-SHA256 (RFC 5869; the two-step KDF of NIST SP 800-56C r2 that is
approved for hybrid secrets) instead of X-Wing's SHA3-256::

    secret = HKDF-SHA256(salt = COMBINER_LABEL,
                         ikm  = ss_M || ss_X || ct_X || pk_X,
                         info = context, L = 32)

``context`` is the caller's transcript hash (the session handshake passes the
SHA-256 of every handshake byte so far), so the secret is bound to who said
what. :func:`derive_session_keys` then expands that secret into directional
traffic keys, key-confirmation keys and a 16-byte session id.

Randomness: X25519 and ML-KEM key generation accept injected seeds (tests,
known-answer vectors). ML-KEM *encapsulation* draws its own randomness inside
OpenSSL; ``cryptography`` offers no way to inject it, so only decapsulation and
the combiner have byte-exact vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as _x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from securemesh.errors import AuthenticationError, DecodeError, LocalError

__all__ = [
    "COMBINER_LABEL",
    "HYBRID_CIPHERTEXT_SIZE",
    "HYBRID_PUBLIC_KEY_SIZE",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "SESSION_ID_SIZE",
    "SHARED_SECRET_SIZE",
    "X25519_KEY_SIZE",
    "HybridCiphertext",
    "HybridPrivateKey",
    "HybridPublicKey",
    "SessionKeys",
    "combine",
    "derive_session_keys",
    "encapsulate",
    "next_traffic_key",
]

X25519_KEY_SIZE = 32
MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
MLKEM768_SEED_SIZE = 64  # FIPS 203 (d, z) seed, as cryptography's from_seed_bytes takes it
HYBRID_PUBLIC_KEY_SIZE = MLKEM768_PUBLIC_KEY_SIZE + X25519_KEY_SIZE  # 1216
HYBRID_CIPHERTEXT_SIZE = MLKEM768_CIPHERTEXT_SIZE + X25519_KEY_SIZE  # 1120
SHARED_SECRET_SIZE = 32
SESSION_ID_SIZE = 16
TRAFFIC_KEY_SIZE = 32

#: HKDF salt of the combiner: names the protocol, version and the two components.
COMBINER_LABEL = b"securemesh/v1 hybrid-kem X25519MLKEM768"

Rng = Callable[[int], bytes]


def _x25519_public(pk: bytes) -> _x25519.X25519PublicKey:
    if len(pk) != X25519_KEY_SIZE:
        raise DecodeError(f"an X25519 public key is {X25519_KEY_SIZE} bytes, got {len(pk)}")
    return _x25519.X25519PublicKey.from_public_bytes(pk)


def _x25519_exchange(sk: _x25519.X25519PrivateKey, pk: bytes) -> bytes:
    try:
        return sk.exchange(_x25519_public(pk))
    except ValueError as exc:  # all-zero output: low-order point (RFC 7748 §6.1)
        raise AuthenticationError("X25519 exchange with a low-order point") from exc


@dataclass(frozen=True, slots=True)
class HybridPublicKey:
    """A hybrid encapsulation key: ML-KEM-768 public key + X25519 public key.

    Construction validates both halves (sizes and the FIPS 203 modulus check);
    a peer's malformed key raises :class:`~securemesh.errors.DecodeError`.
    """

    mlkem: bytes
    x25519: bytes

    SIZE: ClassVar[int] = HYBRID_PUBLIC_KEY_SIZE

    def __post_init__(self) -> None:
        _x25519_public(self.x25519)
        self._mlkem_key()

    def _mlkem_key(self) -> _mlkem.MLKEM768PublicKey:
        if len(self.mlkem) != MLKEM768_PUBLIC_KEY_SIZE:
            raise DecodeError(
                f"an ML-KEM-768 public key is {MLKEM768_PUBLIC_KEY_SIZE} bytes, "
                f"got {len(self.mlkem)}"
            )
        try:
            return _mlkem.MLKEM768PublicKey.from_public_bytes(self.mlkem)
        except ValueError as exc:
            raise DecodeError("ML-KEM-768 public key fails the FIPS 203 modulus check") from exc

    def to_bytes(self) -> bytes:
        """``mlkem_pk || x25519_pk`` (draft-ietf-tls-ecdhe-mlkem order)."""
        return self.mlkem + self.x25519

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridPublicKey:
        if len(data) != HYBRID_PUBLIC_KEY_SIZE:
            raise DecodeError(
                f"a hybrid public key is {HYBRID_PUBLIC_KEY_SIZE} bytes, got {len(data)}"
            )
        return cls(
            mlkem=bytes(data[:MLKEM768_PUBLIC_KEY_SIZE]),
            x25519=bytes(data[MLKEM768_PUBLIC_KEY_SIZE:]),
        )


@dataclass(frozen=True, slots=True)
class HybridCiphertext:
    """An ML-KEM-768 ciphertext + the encapsulator's ephemeral X25519 public key."""

    mlkem: bytes
    x25519: bytes

    SIZE: ClassVar[int] = HYBRID_CIPHERTEXT_SIZE

    def __post_init__(self) -> None:
        if len(self.mlkem) != MLKEM768_CIPHERTEXT_SIZE:
            raise DecodeError(
                f"an ML-KEM-768 ciphertext is {MLKEM768_CIPHERTEXT_SIZE} bytes, "
                f"got {len(self.mlkem)}"
            )
        _x25519_public(self.x25519)

    def to_bytes(self) -> bytes:
        """``mlkem_ct || x25519_ct`` (draft-ietf-tls-ecdhe-mlkem order)."""
        return self.mlkem + self.x25519

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridCiphertext:
        if len(data) != HYBRID_CIPHERTEXT_SIZE:
            raise DecodeError(
                f"a hybrid ciphertext is {HYBRID_CIPHERTEXT_SIZE} bytes, got {len(data)}"
            )
        return cls(
            mlkem=bytes(data[:MLKEM768_CIPHERTEXT_SIZE]),
            x25519=bytes(data[MLKEM768_CIPHERTEXT_SIZE:]),
        )


class HybridPrivateKey:
    """An (ephemeral) hybrid decapsulation key. Never printed, never serialized here."""

    __slots__ = ("_mlkem", "_public", "_x25519")

    def __init__(self, x25519_key: _x25519.X25519PrivateKey, mlkem_key: _mlkem.MLKEM768PrivateKey):
        self._x25519 = x25519_key
        self._mlkem = mlkem_key
        self._public = HybridPublicKey(
            mlkem=mlkem_key.public_key().public_bytes_raw(),
            x25519=x25519_key.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls, rng: Rng | None = None) -> HybridPrivateKey:
        """Fresh keys; ``rng(n) -> n bytes`` may be injected for deterministic tests."""
        draw = rng if rng is not None else os.urandom
        return cls.from_seeds(draw(X25519_KEY_SIZE), draw(MLKEM768_SEED_SIZE))

    @classmethod
    def from_seeds(cls, x25519_secret: bytes, mlkem_seed: bytes) -> HybridPrivateKey:
        """Rebuild keys from a 32-byte X25519 secret and a 64-byte FIPS 203 seed."""
        if len(x25519_secret) != X25519_KEY_SIZE or len(mlkem_seed) != MLKEM768_SEED_SIZE:
            raise LocalError("hybrid key seeds are 32 (X25519) and 64 (ML-KEM-768) bytes")
        return cls(
            _x25519.X25519PrivateKey.from_private_bytes(x25519_secret),
            _mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed),
        )

    def public_key(self) -> HybridPublicKey:
        return self._public

    def decapsulate(self, ciphertext: HybridCiphertext, *, context: bytes) -> bytes:
        """Recover the 32-byte combined secret the encapsulator derived.

        A tampered ML-KEM ciphertext does not raise (implicit rejection): it
        yields a different secret, which the caller's key confirmation catches.
        """
        try:
            ss_m = self._mlkem.decapsulate(ciphertext.mlkem)
        except ValueError as exc:
            raise DecodeError("malformed ML-KEM-768 ciphertext") from exc
        ss_x = _x25519_exchange(self._x25519, ciphertext.x25519)
        return combine(ss_m, ss_x, ciphertext.x25519, self._public.x25519, context=context)

    def __repr__(self) -> str:
        return f"HybridPrivateKey(x25519_public={self._public.x25519.hex()[:16]}…)"


def encapsulate(
    peer: HybridPublicKey, *, context: bytes, rng: Rng | None = None
) -> tuple[bytes, HybridCiphertext]:
    """Encapsulate to ``peer``: return ``(secret, ciphertext)``.

    ``rng`` only drives the ephemeral X25519 key; ML-KEM encapsulation draws
    its randomness inside OpenSSL (see module docstring).
    """
    draw = rng if rng is not None else os.urandom
    eph = _x25519.X25519PrivateKey.from_private_bytes(draw(X25519_KEY_SIZE))
    eph_pub = eph.public_key().public_bytes_raw()
    ss_m, ct_m = peer._mlkem_key().encapsulate()
    ss_x = _x25519_exchange(eph, peer.x25519)
    ct = HybridCiphertext(mlkem=ct_m, x25519=eph_pub)
    return combine(ss_m, ss_x, eph_pub, peer.x25519, context=context), ct


def combine(
    mlkem_secret: bytes,
    x25519_secret: bytes,
    x25519_ciphertext: bytes,
    x25519_recipient_public: bytes,
    *,
    context: bytes,
) -> bytes:
    """The hybrid combiner (module docstring): X-Wing inputs through HKDF-SHA256."""
    if len(mlkem_secret) != SHARED_SECRET_SIZE or len(x25519_secret) != SHARED_SECRET_SIZE:
        raise LocalError("component shared secrets are 32 bytes each")
    if len(x25519_ciphertext) != X25519_KEY_SIZE or len(x25519_recipient_public) != X25519_KEY_SIZE:
        raise LocalError("X25519 ciphertext and public key are 32 bytes each")
    ikm = mlkem_secret + x25519_secret + x25519_ciphertext + x25519_recipient_public
    return HKDF(
        algorithm=hashes.SHA256(), length=SHARED_SECRET_SIZE, salt=COMBINER_LABEL, info=context
    ).derive(ikm)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of one authenticated session, derived by :func:`derive_session_keys`.

    ``initiator_to_responder`` protects what the initiator sends,
    ``responder_to_initiator`` the reverse; the two ``*_confirm`` keys MAC the
    handshake transcript (key confirmation, as TLS 1.3 "Finished").
    """

    initiator_to_responder: bytes = field(repr=False)
    responder_to_initiator: bytes = field(repr=False)
    initiator_confirm: bytes = field(repr=False)
    responder_confirm: bytes = field(repr=False)
    session_id: bytes


_KEY_LABELS = (
    b"securemesh/v1 traffic i2r",
    b"securemesh/v1 traffic r2i",
    b"securemesh/v1 confirm i",
    b"securemesh/v1 confirm r",
)


def derive_session_keys(secret: bytes, transcript_hash: bytes) -> SessionKeys:
    """Expand a combined secret into :class:`SessionKeys` (HKDF-Expand, RFC 5869 §2.3).

    Each output uses its own ``info = label || transcript_hash``, so the keys
    are independent and bound to the exact handshake that produced them.
    """
    if len(secret) != SHARED_SECRET_SIZE:
        raise LocalError("the combined secret is 32 bytes")

    def expand(label: bytes, length: int) -> bytes:
        return HKDFExpand(
            algorithm=hashes.SHA256(), length=length, info=label + transcript_hash
        ).derive(secret)

    i2r, r2i, ci, cr = (expand(label, TRAFFIC_KEY_SIZE) for label in _KEY_LABELS)
    return SessionKeys(
        initiator_to_responder=i2r,
        responder_to_initiator=r2i,
        initiator_confirm=ci,
        responder_confirm=cr,
        session_id=expand(b"securemesh/v1 session id", SESSION_ID_SIZE),
    )


def next_traffic_key(key: bytes) -> bytes:
    """One-way ratchet for rekeying a traffic key (Noise §11.3 ``REKEY`` in spirit).

    ``HMAC-SHA256(key, label)``: knowing the new key does not reveal the old one,
    so traffic of earlier epochs stays private after a later key leaks.
    """
    return hmac.new(key, b"securemesh/v1 rekey", hashlib.sha256).digest()
