"""Join tokens: the one-time, expiring secret a new node presents to enroll.

Theory of operation
-------------------
An authority (the cloud's root :class:`~securemesh.crypto.Authority`, or an
edge's :class:`~securemesh.crypto.DelegatedAuthority` for tier ``end`` only)
creates a :class:`JoinToken` and stores a :class:`TokenRecord` for it. The
token is handed to the new node out of band (printed by ``securemesh token
create``); it tells the node everything it needs for first contact:

* which root to trust (``authority_id`` + ``root_key``), so the node can verify
  the certificate it gets back without trusting the network;
* where to connect (``endpoint``), the enrolling server's node id
  (``server_id``, so the request can be addressed to it and the reply's
  sender checked) and its CurveZMQ public key (``server_key``), so the CURVE
  handshake authenticates the server;
* the token id and a 32-byte secret.

Two keys are derived from the secret with HKDF-SHA256 (RFC 5869, empty salt),
each under its own label so that one never helps to compute the other:

``first_contact_curve_keypair()``
    ``HKDF(secret, info="securemesh/token-curve/v1")`` taken as an X25519
    private key (RFC 7748; the clamping of §5 is applied by X25519 itself,
    ``cryptography``'s ``X25519PrivateKey.from_private_bytes``). The node
    connects with this CURVE key pair before it has an identity; the server
    admits the *public* half while the token is unused and unexpired (ZAP
    default deny otherwise) and authorizes only ``enroll.request`` from it.
``proof_key()``
    ``HKDF(secret, info="securemesh/token-proof/v1")``: the HMAC-SHA256
    (RFC 2104) key of the enrollment proof. The server must check an HMAC, so
    it needs a key, not a hash: it stores the *proof key* (plus SHA-256 of the
    secret and the first-contact public key), never the secret. Someone who
    reads the token database learns proof keys of pending tokens but not the
    first-contact CURVE secret (a different HKDF label: HKDF outputs are
    independent), so they cannot pass ZAP to present a proof; and a used or
    expired token's proof key is worthless.

Encoding, version 1
-------------------
``"smj1." + base64url(payload)`` (RFC 4648 §5, unpadded, canonical). The whole
string is at most :data:`MAX_TOKEN_LENGTH` (1 KiB) characters; the decoder
checks that before anything else, then decodes strictly: every byte consumed,
every field validated, exactly one encoding per token. All integers big-endian;
``str8`` is a u8 length and that many ASCII bytes. ::

    payload :=
        u8          version = 1
        str8        authority_id       (root authority id, certificate id syntax)
        32 bytes    root_key           (Ed25519 verify key of that root)
        32 bytes    server_key         (CurveZMQ public key of the enrolling server)
        str8        server_id          (that server's node id)
        str8        endpoint           ("tcp://HOST:PORT", at most 128 bytes)
        16 bytes    token_id
        32 bytes    secret
        u64         expires_at         (Unix seconds, 1 .. 2**63-1)
        u8          tier code          (1 end, 2 edge, 3 cloud)
        u8          role count 0..16, then that many str8 roles, strictly increasing
        u8          flags              (bit 0: delegate -- the enrolling edge also gets a
                                        delegated authority for tier end;
                                        bit 1: a name prefix follows; other bits 0)
        str8        name_prefix        (only with flag bit 1: the issuing edge's name
                                        constraint -- the requested node id must start
                                        with it and be longer; see docs/enrollment.md)

Bit 1 and its field were added without a version bump: tokens without it
encode exactly as before, and an older decoder refuses bit 1 (reserved bits).
An edge's delegated authority certifies only node ids inside its name
constraint (:mod:`securemesh.crypto.certs`); the token carries the prefix so
the new node can pick an id that fits, and fail early with a clear message
otherwise.

``repr``/``str`` of a token never show the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import x25519

from securemesh.crypto.certs import MAX_ROLES, Tier, validate_name_prefix, validate_node_id
from securemesh.crypto.codec import U64 as _U64
from securemesh.crypto.codec import ByteReader
from securemesh.crypto.codec import str8 as _str8
from securemesh.crypto.kx import hkdf_sha256
from securemesh.errors import DecodeError, EncodeError, LocalError, SizeLimitExceeded

__all__ = [
    "CURVE_LABEL",
    "MAX_ENDPOINT_LENGTH",
    "MAX_TOKEN_LENGTH",
    "PROOF_LABEL",
    "SECRET_SIZE",
    "TOKEN_ID_SIZE",
    "TOKEN_PREFIX",
    "TOKEN_VERSION",
    "CurveKeyPairBytes",
    "JoinToken",
    "TokenRecord",
    "validate_endpoint",
    "validate_roles",
]

TOKEN_PREFIX: Final = "smj1."  # noqa: S105 - a format prefix
TOKEN_VERSION: Final = 1
MAX_TOKEN_LENGTH: Final = 1024
MAX_ENDPOINT_LENGTH: Final = 128
TOKEN_ID_SIZE: Final = 16
SECRET_SIZE: Final = 32
CURVE_LABEL: Final = b"securemesh/token-curve/v1"
PROOF_LABEL: Final = b"securemesh/token-proof/v1"
_KEY: Final = 32
_MAX_U63: Final = (1 << 63) - 1
_FLAG_DELEGATE: Final = 0x01
_FLAG_NAME_PREFIX: Final = 0x02
_TIER_CODE: Final = {Tier.END: 1, Tier.EDGE: 2, Tier.CLOUD: 3}
_CODE_TIER: Final = {v: k for k, v in _TIER_CODE.items()}
_ROLE_RE = re.compile(r"[A-Za-z0-9._:-]{1,32}")
_ENDPOINT_RE = re.compile(r"tcp://(?:[A-Za-z0-9.-]{1,100}|\[[0-9A-Fa-f:.]{2,64}\]):[0-9]{1,5}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")


def validate_endpoint(value: str) -> str:
    """Return ``value`` if it is ``tcp://HOST:PORT`` (port 1..65535), else raise LocalError."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_ENDPOINT_LENGTH
        or _ENDPOINT_RE.fullmatch(value) is None
        or not 1 <= int(value.rsplit(":", 1)[1]) <= 65535
    ):
        raise LocalError(f"invalid endpoint {value!r}: expected tcp://HOST:PORT")
    return value


def validate_roles(roles: object) -> tuple[str, ...]:
    """Sorted, de-duplicated roles, each matching the certificate role syntax."""
    if isinstance(roles, str) or not isinstance(roles, tuple | list):
        raise LocalError("roles is a list or tuple of strings")
    if not all(isinstance(role, str) for role in roles):
        raise LocalError("roles must be strings")
    out: tuple[str, ...] = tuple(sorted(set(roles)))
    if len(out) > MAX_ROLES:
        raise LocalError(f"at most {MAX_ROLES} roles")
    for role in out:
        if _ROLE_RE.fullmatch(role) is None:
            raise LocalError(f"invalid role {role!r}: must match [A-Za-z0-9._:-]{{1,32}}")
    return out


@dataclass(frozen=True, slots=True)
class CurveKeyPairBytes:
    """A raw 32-byte CurveZMQ key pair (public, secret). ``repr`` hides the secret."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"CurveKeyPairBytes(public={self.public.hex()[:16]}…)"


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinToken:
    """A join token (module docstring). Validated on construction; ``repr`` hides the secret."""

    version: int = TOKEN_VERSION
    authority_id: str
    root_key: bytes
    server_key: bytes
    server_id: str
    endpoint: str
    token_id: bytes
    secret: bytes
    expires_at: int
    tier: Tier
    roles: tuple[str, ...] = ()
    delegate: bool = False
    name_prefix: str | None = None

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != TOKEN_VERSION:
            raise LocalError(f"unsupported token version {self.version!r}")
        validate_node_id(self.authority_id, what="authority id")
        validate_node_id(self.server_id, what="server id")
        for name, size in (
            ("root_key", _KEY),
            ("server_key", _KEY),
            ("token_id", TOKEN_ID_SIZE),
            ("secret", SECRET_SIZE),
        ):
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != size:
                raise LocalError(f"{name} must be {size} bytes")
        validate_endpoint(self.endpoint)
        if type(self.expires_at) is not int or not 1 <= self.expires_at <= _MAX_U63:
            raise LocalError("expires_at must be an integer in 1..2**63-1")
        if not isinstance(self.tier, Tier):
            raise LocalError("tier must be a Tier")
        if type(self.roles) is not tuple or validate_roles(self.roles) != self.roles:
            raise LocalError("roles must be a sorted tuple of distinct valid roles")
        if type(self.delegate) is not bool:
            raise LocalError("delegate must be a bool")
        if self.delegate and self.tier is not Tier.EDGE:
            raise LocalError("only an edge token can carry a delegated authority")
        if self.name_prefix is not None:
            validate_name_prefix(self.name_prefix)

    def check_node_id(self, node_id: str) -> str:
        """Return ``node_id`` if this token can enroll it, else raise LocalError (clear message)."""
        validate_node_id(node_id)
        prefix = self.name_prefix
        if prefix is not None and not (len(node_id) > len(prefix) and node_id.startswith(prefix)):
            raise LocalError(
                f"node id {node_id!r} is outside the namespace of the edge {self.server_id!r} "
                f"that issued this token: choose an id starting with {prefix!r} "
                f"(e.g. {prefix + node_id!r})"
            )
        return node_id

    # ------------------------------------------------------------------ encoding

    def to_payload(self) -> bytes:
        """The binary payload (module docstring), before base64url."""
        return b"".join(
            [
                bytes([self.version]),
                _str8(self.authority_id),
                self.root_key,
                self.server_key,
                _str8(self.server_id),
                _str8(self.endpoint),
                self.token_id,
                self.secret,
                _U64.pack(self.expires_at),
                bytes([_TIER_CODE[self.tier], len(self.roles)]),
                *(_str8(r) for r in self.roles),
                bytes(
                    [
                        (_FLAG_DELEGATE if self.delegate else 0)
                        | (0 if self.name_prefix is None else _FLAG_NAME_PREFIX)
                    ]
                ),
                b"" if self.name_prefix is None else _str8(self.name_prefix),
            ]
        )

    def encode(self) -> str:
        """``"smj1." + base64url(payload)``; EncodeError if longer than 1 KiB."""
        text = TOKEN_PREFIX + base64.urlsafe_b64encode(self.to_payload()).rstrip(b"=").decode()
        if len(text) > MAX_TOKEN_LENGTH:
            raise EncodeError(f"token is {len(text)} characters, limit {MAX_TOKEN_LENGTH}")
        return text

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        """Strictly decode a token string; SizeLimitExceeded / DecodeError otherwise.

        Surrounding whitespace (a trailing newline from a file or a shell) is ignored.
        """
        if not isinstance(text, str):
            raise DecodeError("a join token is a string")
        if len(text) > MAX_TOKEN_LENGTH + 8:
            raise SizeLimitExceeded(f"join token longer than {MAX_TOKEN_LENGTH} characters")
        text = text.strip()
        if len(text) > MAX_TOKEN_LENGTH:
            raise SizeLimitExceeded(f"join token longer than {MAX_TOKEN_LENGTH} characters")
        if not text.startswith(TOKEN_PREFIX):
            raise DecodeError(f"not a join token (expected the prefix {TOKEN_PREFIX!r})")
        body = text[len(TOKEN_PREFIX) :]
        if _B64_RE.fullmatch(body) is None or len(body) % 4 == 1:
            raise DecodeError("join token is not unpadded base64url")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("join token is not base64url") from exc
        if base64.urlsafe_b64encode(payload).rstrip(b"=").decode() != body:
            raise DecodeError("join token is not canonically encoded")
        return cls.from_payload(payload)

    @classmethod
    def from_payload(cls, payload: bytes) -> JoinToken:
        reader = _Reader(payload)
        version = reader.u8()
        if version != TOKEN_VERSION:
            raise DecodeError(f"unsupported join token version {version}")
        authority_id = reader.str8()
        root_key, server_key = reader.take(_KEY), reader.take(_KEY)
        server_id = reader.str8()
        endpoint = reader.str8()
        token_id, secret = reader.take(TOKEN_ID_SIZE), reader.take(SECRET_SIZE)
        expires_at = reader.u64()
        tier = _CODE_TIER.get(reader.u8())
        if tier is None:
            raise DecodeError("join token has an unknown tier code")
        count = reader.u8()
        if count > MAX_ROLES:
            raise DecodeError("join token has too many roles")
        roles = tuple(reader.str8() for _ in range(count))
        if any(a >= b for a, b in itertools.pairwise(roles)):
            raise DecodeError("join token roles are not strictly increasing")
        flags = reader.u8()
        if flags & ~(_FLAG_DELEGATE | _FLAG_NAME_PREFIX):
            raise DecodeError("join token has reserved flag bits set")
        name_prefix = reader.str8() if flags & _FLAG_NAME_PREFIX else None
        reader.end()
        try:
            return cls(
                version=version,
                authority_id=authority_id,
                root_key=root_key,
                server_key=server_key,
                server_id=server_id,
                endpoint=endpoint,
                token_id=token_id,
                secret=secret,
                expires_at=expires_at,
                tier=tier,
                roles=roles,
                delegate=bool(flags & _FLAG_DELEGATE),
                name_prefix=name_prefix,
            )
        except LocalError as exc:
            raise DecodeError(f"invalid join token: {exc}") from exc

    # --------------------------------------------------------------- derivation

    def first_contact_curve_keypair(self) -> CurveKeyPairBytes:
        """The first-contact CURVE key pair (HKDF label ``securemesh/token-curve/v1``)."""
        return first_contact_keypair_from_secret(self.secret)

    def proof_key(self) -> bytes:
        """The HMAC key of the enrollment proof (HKDF label ``securemesh/token-proof/v1``)."""
        return proof_key_from_secret(self.secret)

    def secret_sha256(self) -> bytes:
        return hashlib.sha256(self.secret).digest()

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def __repr__(self) -> str:
        return (
            f"JoinToken(id={self.token_id.hex()}, authority={self.authority_id!r}, "
            f"server={self.server_id!r}, "
            f"tier={self.tier.value!r}, roles={self.roles!r}, endpoint={self.endpoint!r}, "
            f"name_prefix={self.name_prefix!r}, expires_at={self.expires_at})"
        )

    __str__ = __repr__


def first_contact_keypair_from_secret(secret: bytes) -> CurveKeyPairBytes:
    """HKDF-SHA256(secret, info=CURVE_LABEL) as an X25519 (CurveZMQ) private key."""
    seed = hkdf_sha256(secret, info=CURVE_LABEL)
    private = x25519.X25519PrivateKey.from_private_bytes(seed)
    return CurveKeyPairBytes(
        public=private.public_key().public_bytes_raw(), secret=private.private_bytes_raw()
    )


def proof_key_from_secret(secret: bytes) -> bytes:
    """HKDF-SHA256(secret, info=PROOF_LABEL): the 32-byte HMAC key of enrollment proofs."""
    return hkdf_sha256(secret, info=PROOF_LABEL)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """What the issuing server keeps about a token: never the secret itself.

    ``proof_key`` is the HMAC key derived from the secret (module docstring);
    ``curve_key`` the first-contact CURVE *public* key ZAP admits while the
    token is usable.
    """

    token_id: bytes
    secret_sha256: bytes
    proof_key: bytes
    curve_key: bytes
    authority_id: str
    issuer: str
    tier: Tier
    roles: tuple[str, ...]
    delegate: bool
    created_at: int
    expires_at: int
    used_at: int | None = None
    used_by: str | None = None

    @classmethod
    def for_token(cls, token: JoinToken, *, issuer: str, created_at: int) -> TokenRecord:
        return cls(
            token_id=token.token_id,
            secret_sha256=token.secret_sha256(),
            proof_key=token.proof_key(),
            curve_key=token.first_contact_curve_keypair().public,
            authority_id=token.authority_id,
            issuer=validate_node_id(issuer, what="issuer id"),
            tier=token.tier,
            roles=token.roles,
            delegate=token.delegate,
            created_at=created_at,
            expires_at=token.expires_at,
        )

    @property
    def used(self) -> bool:
        """Consumed by an enrollment, or withdrawn (either way unusable for good)."""
        return self.used_at is not None

    @property
    def withdrawn(self) -> bool:
        """Made unusable by ``token withdraw`` (marked at ``used_at`` with no ``used_by``)."""
        return self.used_at is not None and self.used_by is None

    def usable_at(self, now: float) -> bool:
        """Unused and unexpired at ``now``."""
        return self.used_at is None and now < self.expires_at

    def check_secret(self, secret: bytes) -> None:
        """Raise LocalError unless ``secret`` hashes to the stored digest (constant time)."""
        if not hmac.compare_digest(hashlib.sha256(secret).digest(), self.secret_sha256):
            raise LocalError("secret does not match this token")

    def __repr__(self) -> str:
        state = "withdrawn" if self.withdrawn else "unused"
        if self.used_by is not None:
            state = f"used by {self.used_by!r}"
        return (
            f"TokenRecord(id={self.token_id.hex()}, tier={self.tier.value!r}, "
            f"roles={self.roles!r}, issuer={self.issuer!r}, expires_at={self.expires_at}, "
            f"{state})"
        )


# ------------------------------------------------------------------ byte helpers


class _Reader(ByteReader):
    """Bounds-checked cursor; every failure is DecodeError."""

    __slots__ = ()
    error = DecodeError
    truncated_message = "join token truncated"
    not_ascii_message = "join token text field is not ASCII"
    trailing_message = "trailing bytes in join token"
