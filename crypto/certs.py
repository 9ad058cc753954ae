"""Node certificates, revocation lists, the mesh authority and its delegates.

Theory of operation
-------------------
The mesh authority (the *root*) is an Ed25519 key (RFC 8032). It signs node
certificates, each binding a node id, tier, roles and the node's three public
keys (:class:`~securemesh.crypto.identity.PublicKeys`) to a validity period,
and it signs versioned revocation lists. An edge may hold a *delegated
authority*: its certificate carries a :class:`Delegation` naming the tiers it
may issue (normally only ``end``) and, normally, a *name constraint*: a
node-id prefix (by default the edge's own id followed by ``"."``) that every
node id it certifies must extend (cf. X.509 name constraints, RFC 5280
§4.2.1.10), so a compromised edge cannot mint certificates for devices
enrolled elsewhere. It can thus enroll devices while the cloud is
unreachable. Chains are at most one delegate deep: a delegate cannot
delegate further.

:func:`verify_certificate` returns the verified :class:`Certificate` or raises;
it checks, in this order (each step with its own exception class):

1. size (at most :data:`MAX_CERT_SIZE`) and well-formedness -> ``CertificateMalformed``;
2. the issuer is a trusted root, or a delegated authority whose own certificate
   passes steps 1-6 against a root at the same ``now`` -> ``UnknownIssuer``
   (or the issuing authority's own error). The delegate's certificate is the
   one the trust store holds, else the one passed in ``intermediates``; the
   one passed in is also tried when the held one is only outside its validity
   period (an edge renewed its delegation), never when it is revoked or bad;
3. the issuer's Ed25519 signature -> ``CertificateSignatureInvalid``;
4. for a delegate-issued certificate, the delegation allows its tier and it is
   not itself an authority -> ``DelegationNotAllowed``; its node id is inside
   the delegation's name constraint, if any -> ``NameConstraintViolation``
   (a subclass of ``DelegationNotAllowed``);
5. ``not_before <= now < not_after`` -> ``CertificateNotYetValid`` / ``CertificateExpired``;
6. neither its serial nor its node id is on the root's current revocation list
   -> ``CertificateRevoked``.

Serial numbers are random 63-bit integers (1 .. 2**63-1, from
:func:`secrets.randbits`, injectable): no counter to persist or to collide
between a root and its delegates, and they fit a signed 64-bit database column.
Times are integer Unix seconds; the caller passes ``now``.

Canonical encoding, version 1
-----------------------------
Binary, big-endian, no optional padding, every field in a fixed order; a
decoder must consume every byte and refuse anything non-canonical, so each
certificate has exactly one encoding. ``str8`` is a u8 length followed by that
many ASCII bytes. Identifiers (node ids, issuer ids) match
``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``; roles match ``[A-Za-z0-9._:-]{1,32}``.
Tier codes: 1 = end, 2 = edge, 3 = cloud. ::

    certificate :=
        "SMC"            3 bytes magic
        u8               format version = 1
        u64              serial, 1 .. 2**63-1
        str8             node_id
        u8               tier code
        u8               role count, 0..16
        str8 * count     roles, strictly increasing bytewise (sorted, no duplicates)
        32 bytes         verify_key  (Ed25519)
        32 bytes         kx_key      (X25519)
        32 bytes         curve_key   (Curve25519, CurveZMQ)
        u64              not_before  (Unix seconds)
        u64              not_after   (not_before < not_after <= 2**63-1)
        str8             issuer      (authority id; for a delegate: its node_id)
        u8               0 = not an authority,
                         1 = delegated authority without a name constraint, followed by
          u8             tier count 1..3 and that many tier codes, strictly increasing
                         2 = delegated authority with a name constraint: as for 1, then
          str8           name prefix (1..63 bytes, [A-Za-z0-9][A-Za-z0-9._-]*): every
                         node id it certifies starts with it and is longer than it

Flag 2 was added after the first release without bumping the format version:
every certificate encoded before it (flags 0 and 1) keeps its bytes and its
meaning, and an old decoder refuses flag 2 ("bad delegation flag") instead of
misreading it. :meth:`Authority.delegate` writes flag 2 unless asked for an
unconstrained delegation (e.g. an online issuing authority the operator runs).

    signed certificate := certificate || signature (64 bytes)
    signature          := Ed25519(issuer key, b"securemesh/cert/v1\\x00" || certificate)

    revocation list :=
        "SMR"            3 bytes magic
        u8               format version = 1
        u64              list version, 1 .. 2**63-1, strictly increasing per issuer
        u64              issued_at (Unix seconds)
        str8             issuer (a root authority id)
        u32              serial count, then that many u64 serials, strictly increasing
        u32              node count, then that many str8 node ids, strictly increasing

    signed list := revocation list || signature (64 bytes)
    signature   := Ed25519(root key, b"securemesh/revocation/v1\\x00" || revocation list)

A signed certificate is at most :data:`MAX_CERT_SIZE` (4 KiB) and a signed
revocation list at most :data:`MAX_REVOCATION_LIST_SIZE` (1 MiB); decoders
check the size before parsing anything. Revocation lists are issued by roots
only; a delegate's certificates are revoked through its root's list (by serial
or node id), and revoking a delegate's node id cuts off everything it issued.

Persistence, without I/O: :meth:`Authority.sealed_key` is the key-file bytes
of the Ed25519 seed (encrypted with :func:`securemesh.crypto.keystore.seal_secret`),
:meth:`Authority.state_bytes` the non-secret state (id, public key, the
current signed list, as JSON) and :meth:`Authority.from_stored` checks both
and rebuilds the authority. The files (``authority.key``, ``authority.json``,
atomic 0600 writes) are the enrollment state's business
(:func:`securemesh.enroll.load_authority` and friends); store the state again
after every :meth:`Authority.revoke` so that list versions are never reused.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from securemesh.crypto import keystore
from securemesh.crypto.codec import U32 as _U32
from securemesh.crypto.codec import U64 as _U64
from securemesh.crypto.codec import ByteReader
from securemesh.crypto.codec import str8 as _str8
from securemesh.crypto.identity import PublicKeys
from securemesh.crypto.signing import (
    SIGNATURE_SIZE,
    VERIFY_KEY_SIZE,
    Ed25519Signer,
    Signer,
    verify_signature,
)
from securemesh.errors import (
    AuthenticationError,
    CertificateError,
    CertificateExpired,
    CertificateMalformed,
    CertificateNotYetValid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    CorruptKeyFile,
    DelegationNotAllowed,
    LocalError,
    NameConstraintViolation,
    RevocationListRollback,
    UnknownIssuer,
)

__all__ = [
    "CERT_DOMAIN",
    "CERT_FORMAT_VERSION",
    "MAX_CERT_SIZE",
    "MAX_AUTHORITY_STATE_SIZE",
    "MAX_REVOCATION_LIST_SIZE",
    "MAX_ROLES",
    "REVOCATION_DOMAIN",
    "Authority",
    "Certificate",
    "DelegatedAuthority",
    "Delegation",
    "RevocationList",
    "SignedCertificate",
    "SignedRevocationList",
    "Tier",
    "TrustStore",
    "validate_name_prefix",
    "validate_node_id",
    "verify_certificate",
    "verify_revocation_list",
]

CERT_FORMAT_VERSION = 1
CERT_DOMAIN = b"securemesh/cert/v1\x00"
REVOCATION_DOMAIN = b"securemesh/revocation/v1\x00"
MAX_CERT_SIZE = 4 * 1024
MAX_REVOCATION_LIST_SIZE = 1024 * 1024
MAX_ROLES = 16
_CERT_MAGIC = b"SMC"
_RL_MAGIC = b"SMR"
_MAX_U63 = (1 << 63) - 1
_KEY = 32
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ROLE_RE = re.compile(r"[A-Za-z0-9._:-]{1,32}")

Randbits = Callable[[int], int]


class Tier(StrEnum):
    """Where a node sits: an end device, an edge server or a cloud node."""

    END = "end"
    EDGE = "edge"
    CLOUD = "cloud"


_TIER_CODE: dict[Tier, int] = {Tier.END: 1, Tier.EDGE: 2, Tier.CLOUD: 3}
_CODE_TIER: dict[int, Tier] = {v: k for k, v in _TIER_CODE.items()}


def validate_node_id(value: str, *, what: str = "node id") -> str:
    """Return ``value`` if it is a valid node or authority id, else raise LocalError."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise LocalError(f"invalid {what}: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    return value


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise LocalError(f"{what} must be an integer in {low}..{high}")
    return value


def _check_key(value: object, what: str) -> bytes:
    if type(value) is not bytes or len(value) != _KEY:
        raise LocalError(f"{what} must be {_KEY} bytes")
    return value


def _to_tier(value: Tier | str) -> Tier:
    try:
        return Tier(value)
    except ValueError as exc:
        raise LocalError(f"unknown tier {value!r}") from exc


def _floor_now(now: float) -> int:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise LocalError("now must be a finite number of Unix seconds")
    return math.floor(now)


# ------------------------------------------------------------------ byte helpers


class _Reader(ByteReader):
    """Bounds-checked cursor; every failure is CertificateMalformed."""

    __slots__ = ()
    error = CertificateMalformed


def _open(data: bytes, *, magic: bytes, limit: int, what: str) -> tuple[bytes, _Reader]:
    """Size first, then the magic: ``(bytes(data), reader positioned after the magic)``."""
    if len(data) > limit:
        raise CertificateMalformed(f"{what} too large")
    data = bytes(data)
    reader = _Reader(data)
    if reader.take(len(magic)) != magic:
        raise CertificateMalformed(f"not a {what} (bad magic)")
    return data, reader


def _check_signature_length(signature: object) -> None:
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise CertificateMalformed("bad signature length")


def _split_signed(data: object, *, limit: int, what: str, too_large: str) -> tuple[bytes, bytes]:
    """Split ``body || signature`` after checking type and size (size before copying)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CertificateMalformed(f"a {what} is bytes")
    if len(data) > limit:
        raise CertificateMalformed(too_large)
    data = bytes(data)
    if len(data) <= SIGNATURE_SIZE:
        raise CertificateMalformed(f"{what} truncated")
    return data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(data) != text:
        raise ValueError("non-canonical base64url")
    return data


# ------------------------------------------------------------------ certificates


def validate_name_prefix(value: str) -> str:
    """Return ``value`` if it is a usable name-constraint prefix, else raise LocalError.

    A prefix is 1..63 characters of node-id syntax, so that at least one more
    character fits into a 64-character node id.
    """
    if not isinstance(value, str) or _PREFIX_RE.fullmatch(value) is None:
        raise LocalError("invalid name prefix: must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}")
    return value


@dataclass(frozen=True, slots=True)
class Delegation:
    """The constraint on a delegated authority: which tiers it may issue certificates for,
    and (``name_prefix``) which node ids: ids that start with the prefix and are longer.

    ``name_prefix=None`` is an unconstrained delegation (format flag 1).
    """

    tiers: frozenset[Tier]
    name_prefix: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tiers, frozenset) or not self.tiers:
            raise LocalError("a delegation names a non-empty frozenset of tiers")
        if not all(isinstance(t, Tier) for t in self.tiers):
            raise LocalError("delegation tiers must be Tier values")
        if self.name_prefix is not None:
            validate_name_prefix(self.name_prefix)

    def allows(self, tier: Tier) -> bool:
        return tier in self.tiers

    def permits_name(self, node_id: str) -> bool:
        """True if ``node_id`` is inside the name constraint (always, without one)."""
        prefix = self.name_prefix
        return prefix is None or (len(node_id) > len(prefix) and node_id.startswith(prefix))


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """A node certificate (unsigned content). Values are validated on construction."""

    version: int = CERT_FORMAT_VERSION
    serial: int
    node_id: str
    tier: Tier
    roles: tuple[str, ...] = ()
    verify_key: bytes
    kx_key: bytes
    curve_key: bytes
    not_before: int
    not_after: int
    issuer: str
    delegation: Delegation | None = None

    def __post_init__(self) -> None:
        if self.version != CERT_FORMAT_VERSION or type(self.version) is not int:
            raise LocalError(f"unsupported certificate version {self.version!r}")
        _check_int(self.serial, "serial", 1, _MAX_U63)
        validate_node_id(self.node_id)
        validate_node_id(self.issuer, what="issuer id")
        if not isinstance(self.tier, Tier):
            raise LocalError("tier must be a Tier")
        if type(self.roles) is not tuple or len(self.roles) > MAX_ROLES:
            raise LocalError(f"roles must be a tuple of at most {MAX_ROLES} strings")
        for role in self.roles:
            if not isinstance(role, str) or _ROLE_RE.fullmatch(role) is None:
                raise LocalError("invalid role: must match [A-Za-z0-9._:-]{1,32}")
        if any(a >= b for a, b in itertools.pairwise(self.roles)):
            raise LocalError("roles must be sorted and free of duplicates")
        _check_key(self.verify_key, "verify_key")
        _check_key(self.kx_key, "kx_key")
        _check_key(self.curve_key, "curve_key")
        _check_int(self.not_before, "not_before", 0, _MAX_U63 - 1)
        _check_int(self.not_after, "not_after", self.not_before + 1, _MAX_U63)
        if self.delegation is not None and not isinstance(self.delegation, Delegation):
            raise LocalError("delegation must be a Delegation or None")

    # --------------------------------------------------------------- encoding

    def to_bytes(self) -> bytes:
        """The canonical version-1 encoding (module docstring)."""
        parts = [
            _CERT_MAGIC,
            bytes([self.version]),
            _U64.pack(self.serial),
            _str8(self.node_id),
            bytes([_TIER_CODE[self.tier], len(self.roles)]),
            *(_str8(role) for role in self.roles),
            self.verify_key,
            self.kx_key,
            self.curve_key,
            _U64.pack(self.not_before),
            _U64.pack(self.not_after),
            _str8(self.issuer),
        ]
        if self.delegation is None:
            parts.append(b"\x00")
        else:
            codes = sorted(_TIER_CODE[t] for t in self.delegation.tiers)
            prefix = self.delegation.name_prefix
            parts.append(bytes([1 if prefix is None else 2, len(codes), *codes]))
            if prefix is not None:
                parts.append(_str8(prefix))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Certificate:
        """Decode the canonical encoding; CertificateMalformed on anything else."""
        data, reader = _open(data, magic=_CERT_MAGIC, limit=MAX_CERT_SIZE, what="certificate")
        version = reader.u8()
        if version != CERT_FORMAT_VERSION:
            raise CertificateMalformed(f"unsupported certificate version {version}")
        serial = reader.u64()
        node_id = reader.str8()
        tier = _CODE_TIER.get(reader.u8())
        if tier is None:
            raise CertificateMalformed("unknown tier code")
        roles = tuple(reader.str8() for _ in range(reader.u8()))
        verify_key, kx_key, curve_key = reader.take(_KEY), reader.take(_KEY), reader.take(_KEY)
        not_before, not_after = reader.u64(), reader.u64()
        issuer = reader.str8()
        flag = reader.u8()
        delegation: Delegation | None = None
        if flag in (1, 2):
            codes = [reader.u8() for _ in range(reader.u8())]
            if any(a >= b for a, b in itertools.pairwise(codes)):
                raise CertificateMalformed("delegation tiers not strictly increasing")
            if not codes or any(c not in _CODE_TIER for c in codes):
                raise CertificateMalformed("bad delegation tier codes")
            prefix = reader.str8() if flag == 2 else None
            try:
                delegation = Delegation(frozenset(_CODE_TIER[c] for c in codes), prefix)
            except LocalError as exc:
                raise CertificateMalformed(str(exc)) from exc
        elif flag != 0:
            raise CertificateMalformed("bad delegation flag")
        reader.end()
        try:
            cert = cls(
                version=version,
                serial=serial,
                node_id=node_id,
                tier=tier,
                roles=roles,
                verify_key=verify_key,
                kx_key=kx_key,
                curve_key=curve_key,
                not_before=not_before,
                not_after=not_after,
                issuer=issuer,
                delegation=delegation,
            )
        except LocalError as exc:
            raise CertificateMalformed(str(exc)) from exc
        if cert.to_bytes() != data:  # belt and braces: exactly one encoding per certificate
            raise CertificateMalformed("non-canonical encoding")
        return cert

    def signed_message(self) -> bytes:
        """The bytes the issuer signs: the domain prefix followed by :meth:`to_bytes`."""
        return CERT_DOMAIN + self.to_bytes()

    # ------------------------------------------------------------ conveniences

    @property
    def is_authority(self) -> bool:
        return self.delegation is not None

    def public_keys(self) -> PublicKeys:
        return PublicKeys(verify_key=self.verify_key, kx_key=self.kx_key, curve_key=self.curve_key)

    def is_valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


@dataclass(frozen=True, slots=True)
class SignedCertificate:
    """Certificate bytes plus the issuer's signature. Built by authorities or :meth:`from_bytes`.

    Holding one proves nothing: pass it to :func:`verify_certificate`.
    """

    cert_bytes: bytes
    signature: bytes
    _cert: Certificate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_signature_length(self.signature)
        if len(self.cert_bytes) + SIGNATURE_SIZE > MAX_CERT_SIZE:
            raise CertificateMalformed("certificate too large")
        object.__setattr__(self, "_cert", Certificate.from_bytes(self.cert_bytes))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedCertificate:
        """Split and decode (size first); CertificateMalformed if not well-formed."""
        too_large = f"signed certificate larger than {MAX_CERT_SIZE} bytes"
        return cls(
            *_split_signed(
                data, limit=MAX_CERT_SIZE, what="signed certificate", too_large=too_large
            )
        )

    def to_bytes(self) -> bytes:
        return self.cert_bytes + self.signature

    def unverified_certificate(self) -> Certificate:
        """The decoded content, **not verified**; use :func:`verify_certificate` to trust it."""
        return self._cert

    def __repr__(self) -> str:
        cert = self._cert
        return (
            f"SignedCertificate(node_id={cert.node_id!r}, tier={cert.tier.value!r}, "
            f"serial={cert.serial}, issuer={cert.issuer!r})"
        )


# -------------------------------------------------------------- revocation lists


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationList:
    """Serials and node ids a root has revoked; ``version`` only ever increases."""

    version: int
    issued_at: int
    issuer: str
    serials: frozenset[int] = frozenset()
    node_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_int(self.version, "revocation list version", 1, _MAX_U63)
        _check_int(self.issued_at, "issued_at", 0, _MAX_U63)
        validate_node_id(self.issuer, what="issuer id")
        if not isinstance(self.serials, frozenset) or not isinstance(self.node_ids, frozenset):
            raise LocalError("serials and node_ids are frozensets")
        for serial in self.serials:
            _check_int(serial, "revoked serial", 1, _MAX_U63)
        for node_id in self.node_ids:
            validate_node_id(node_id)

    def revokes(self, cert: Certificate) -> bool:
        return cert.serial in self.serials or cert.node_id in self.node_ids

    def to_bytes(self) -> bytes:
        serials = sorted(self.serials)
        node_ids = sorted(self.node_ids, key=lambda s: s.encode("ascii"))
        return b"".join(
            [
                _RL_MAGIC,
                bytes([CERT_FORMAT_VERSION]),
                _U64.pack(self.version),
                _U64.pack(self.issued_at),
                _str8(self.issuer),
                _U32.pack(len(serials)),
                *(_U64.pack(s) for s in serials),
                _U32.pack(len(node_ids)),
                *(_str8(n) for n in node_ids),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationList:
        _, reader = _open(
            data, magic=_RL_MAGIC, limit=MAX_REVOCATION_LIST_SIZE, what="revocation list"
        )
        if reader.u8() != CERT_FORMAT_VERSION:
            raise CertificateMalformed("unsupported revocation list format")
        version, issued_at = reader.u64(), reader.u64()
        issuer = reader.str8()
        count = reader.u32()
        if count * 8 > reader.remaining():
            raise CertificateMalformed("truncated")
        serials = [reader.u64() for _ in range(count)]
        count = reader.u32()
        if count > reader.remaining():
            raise CertificateMalformed("truncated")
        node_ids = [reader.str8() for _ in range(count)]
        reader.end()
        if any(a >= b for a, b in itertools.pairwise(serials)) or any(
            a.encode() >= b.encode() for a, b in itertools.pairwise(node_ids)
        ):
            raise CertificateMalformed("revocation entries not strictly increasing")
        try:
            return cls(
                version=version,
                issued_at=issued_at,
                issuer=issuer,
                serials=frozenset(serials),
                node_ids=frozenset(node_ids),
            )
        except LocalError as exc:
            raise CertificateMalformed(str(exc)) from exc

    def signed_message(self) -> bytes:
        return REVOCATION_DOMAIN + self.to_bytes()


@dataclass(frozen=True, slots=True)
class SignedRevocationList:
    """Revocation-list bytes plus the root's signature; pass to :func:`verify_revocation_list`."""

    list_bytes: bytes
    signature: bytes
    _list: RevocationList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_signature_length(self.signature)
        object.__setattr__(self, "_list", RevocationList.from_bytes(self.list_bytes))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRevocationList:
        what = "signed revocation list"
        return cls(
            *_split_signed(
                data, limit=MAX_REVOCATION_LIST_SIZE, what=what, too_large=f"{what} too large"
            )
        )

    def to_bytes(self) -> bytes:
        return self.list_bytes + self.signature

    def unverified_list(self) -> RevocationList:
        """The decoded content, **not verified**."""
        return self._list

    def __repr__(self) -> str:
        rl = self._list
        return f"SignedRevocationList(issuer={rl.issuer!r}, version={rl.version})"


# ------------------------------------------------------------------ verification


class TrustStore:
    """What a node trusts: root keys, known delegated authorities, current revocation lists.

    Mutated only through methods that verify their input first. Revocation
    lists are kept per root and never roll back: an older list, or a different
    list with the same version, is refused with RevocationListRollback.
    """

    def __init__(self, roots: Mapping[str, bytes] | None = None) -> None:
        self._roots: dict[str, bytes] = {}
        self._delegates: dict[str, SignedCertificate] = {}
        self._lists: dict[str, tuple[RevocationList, bytes]] = {}
        for authority_id, key in (roots or {}).items():
            self.add_root(authority_id, key)

    def add_root(self, authority_id: str, verify_key: bytes) -> None:
        validate_node_id(authority_id, what="authority id")
        if type(verify_key) is not bytes or len(verify_key) != VERIFY_KEY_SIZE:
            raise LocalError("a root verify key is 32 bytes")
        if authority_id in self._delegates:
            raise LocalError(f"{authority_id!r} is already a delegated authority")
        known = self._roots.get(authority_id)
        if known is not None and known != verify_key:
            raise LocalError(f"root {authority_id!r} already has a different key")
        self._roots[authority_id] = verify_key

    @property
    def roots(self) -> Mapping[str, bytes]:
        return dict(self._roots)

    def root_key(self, authority_id: str) -> bytes | None:
        return self._roots.get(authority_id)

    def add_delegated_authority(
        self, signed: SignedCertificate | bytes, *, now: float
    ) -> Certificate:
        """Verify a delegated authority's certificate against a root and remember it.

        One certificate per delegate: a renewed one (issued later: a later
        ``not_before``, or the same and a later ``not_after``) replaces the one
        held; an older one is verified but does not replace it.
        """
        signed = _as_signed(signed)
        cert = _verify(signed, trust=self, now=now, intermediates={}, depth=1)
        if cert.delegation is None:
            raise DelegationNotAllowed("certificate does not carry a delegation")
        if cert.node_id in self._roots:
            raise DelegationNotAllowed("a delegated authority may not shadow a root id")
        held = self._delegates.get(cert.node_id)
        if held is None or (cert.not_before, cert.not_after) > (
            (old := held.unverified_certificate()).not_before,
            old.not_after,
        ):
            self._delegates[cert.node_id] = signed
        return cert

    @property
    def delegated_authorities(self) -> Mapping[str, SignedCertificate]:
        return dict(self._delegates)

    def update_revocation_list(self, blob: SignedRevocationList | bytes) -> RevocationList:
        """Verify and install a newer revocation list; refuse rollbacks."""
        signed = _as_signed_list(blob)
        rl = verify_revocation_list(signed, trust=self)
        current = self._lists.get(rl.issuer)
        if current is not None:
            known, known_bytes = current
            if rl.version < known.version:
                raise RevocationListRollback(
                    f"revocation list version {rl.version} is older than {known.version}"
                )
            if rl.version == known.version:
                if signed.list_bytes != known_bytes:
                    raise RevocationListRollback("a different list with the same version")
                return known
        self._lists[rl.issuer] = (rl, signed.list_bytes)
        return rl

    def revocation_list(self, issuer: str) -> RevocationList | None:
        entry = self._lists.get(issuer)
        return None if entry is None else entry[0]


def _as_signed(blob: SignedCertificate | bytes) -> SignedCertificate:
    if isinstance(blob, SignedCertificate):
        return blob
    return SignedCertificate.from_bytes(blob)


def _as_signed_list(blob: SignedRevocationList | bytes) -> SignedRevocationList:
    if isinstance(blob, SignedRevocationList):
        return blob
    return SignedRevocationList.from_bytes(blob)


def _check_signature(key: bytes, message: bytes, signature: bytes, what: str) -> None:
    try:
        verify_signature(key, message, signature)
    except AuthenticationError as exc:
        raise CertificateSignatureInvalid(f"{what} signature does not verify") from exc


def _issuing_delegate(
    issuer: str, trust: TrustStore, intermediates: Mapping[str, SignedCertificate], now: float
) -> Certificate:
    """The verified certificate of delegate ``issuer``: the one the trust store holds, else
    the one sent along; also the one sent along when the held one is merely out of its
    validity period (the edge renewed its delegation and the old one expired) -- never when
    it is revoked or bad. Either is checked against the roots in full."""
    known = trust.delegated_authorities.get(issuer)
    sent = intermediates.get(issuer)
    first = known or sent
    if first is None:
        raise UnknownIssuer(f"issuer {issuer!r} is not trusted")
    try:
        try:
            return _verify(first, trust=trust, now=now, intermediates={}, depth=1)
        except (CertificateExpired, CertificateNotYetValid):
            if sent is None or sent is first or sent == first:
                raise
            return _verify(sent, trust=trust, now=now, intermediates={}, depth=1)
    except CertificateError as exc:
        raise type(exc)(f"issuing authority {issuer!r}: {exc}") from exc


def _verify(
    signed: SignedCertificate,
    *,
    trust: TrustStore,
    now: float,
    intermediates: Mapping[str, SignedCertificate],
    depth: int,
) -> Certificate:
    """Steps 2-6 of the module docstring; ``depth`` 1 means only roots may issue."""
    _floor_now(now)  # a NaN clock would pass every comparison below
    cert = signed.unverified_certificate()
    # 2. issuer known (a root, or a delegate whose own certificate verifies now)
    root_id = cert.issuer
    issuer_key = trust.root_key(cert.issuer)
    parent: Certificate | None = None
    if issuer_key is None:
        if depth >= 1:
            raise UnknownIssuer(f"issuer {cert.issuer!r} is not trusted")
        parent = _issuing_delegate(cert.issuer, trust, intermediates, now)
        if parent.delegation is None:
            raise DelegationNotAllowed(f"issuer {cert.issuer!r} is not an authority")
        issuer_key, root_id = parent.verify_key, parent.issuer
    # 3. signature
    _check_signature(issuer_key, CERT_DOMAIN + signed.cert_bytes, signed.signature, "certificate")
    # 4. delegation constraint (path length 0 below a delegate)
    if parent is not None:
        assert parent.delegation is not None
        if cert.delegation is not None:
            raise DelegationNotAllowed("a delegated authority cannot delegate further")
        if not parent.delegation.allows(cert.tier):
            raise DelegationNotAllowed(
                f"issuer {cert.issuer!r} may not issue {cert.tier.value!r} certificates"
            )
        if not parent.delegation.permits_name(cert.node_id):
            raise NameConstraintViolation(
                f"issuer {cert.issuer!r} may only certify node ids starting with "
                f"{parent.delegation.name_prefix!r}, not {cert.node_id!r}"
            )
    # 5. validity period
    if now < cert.not_before:
        raise CertificateNotYetValid(f"certificate not valid before {cert.not_before}")
    if now >= cert.not_after:
        raise CertificateExpired(f"certificate expired at {cert.not_after}")
    # 6. revocation
    rl = trust.revocation_list(root_id)
    if rl is not None and rl.revokes(cert):
        raise CertificateRevoked(f"certificate {cert.serial} of {cert.node_id!r} is revoked")
    return cert


def verify_certificate(
    blob_or_signed: SignedCertificate | bytes,
    *,
    trust: TrustStore,
    now: float,
    intermediates: Iterable[SignedCertificate | bytes] = (),
) -> Certificate:
    """Return the verified certificate, or raise a CertificateError subclass.

    ``intermediates`` may supply delegated-authority certificates the trust
    store does not know yet (e.g. sent along by an edge); they are verified
    against the roots like any other certificate.
    """
    signed = _as_signed(blob_or_signed)
    extra: dict[str, SignedCertificate] = {}
    for item in intermediates:
        inter = _as_signed(item)
        extra[inter.unverified_certificate().node_id] = inter
    return _verify(signed, trust=trust, now=now, intermediates=extra, depth=0)


def verify_revocation_list(
    blob: SignedRevocationList | bytes, *, trust: TrustStore
) -> RevocationList:
    """Return the verified list, or raise CertificateMalformed / UnknownIssuer /
    CertificateSignatureInvalid (the same classes as for certificates)."""
    signed = _as_signed_list(blob)
    rl = signed.unverified_list()
    key = trust.root_key(rl.issuer)
    if key is None:
        raise UnknownIssuer(f"revocation list issuer {rl.issuer!r} is not a trusted root")
    _check_signature(
        key, REVOCATION_DOMAIN + signed.list_bytes, signed.signature, "revocation list"
    )
    return rl


# -------------------------------------------------------------------- authorities


def _new_serial(randbits: Randbits) -> int:
    for _ in range(64):
        serial = randbits(63)
        if 1 <= serial <= _MAX_U63:
            return serial
    raise LocalError("the serial-number source returns no usable values")


def _normalize_roles(roles: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise LocalError("roles is an iterable of strings, not one string")
    return tuple(sorted(set(roles)))


def _sign_cert(signer: Signer, cert: Certificate) -> SignedCertificate:
    body = cert.to_bytes()
    return SignedCertificate(body, signer.sign(CERT_DOMAIN + body))


_AUTHORITY_PAYLOAD = b"SMAK\x01"


class Authority:
    """The mesh's root authority: issues, renews, delegates and revokes.

    Build with :meth:`create` (new key) or :meth:`load`. Its secret key is an
    :class:`~securemesh.crypto.signing.Ed25519Signer`, never printed.
    """

    STATE_FORMAT: ClassVar[str] = "securemesh-authority-state"

    def __init__(
        self,
        authority_id: str,
        signer: Ed25519Signer,
        *,
        created_at: int,
        revocation_list: SignedRevocationList,
        randbits: Randbits = secrets.randbits,
    ) -> None:
        self._id = validate_node_id(authority_id, what="authority id")
        self._signer = signer
        self._created_at = _check_int(created_at, "created_at", 0, _MAX_U63)
        self._randbits = randbits
        rl = revocation_list.unverified_list()
        if rl.issuer != authority_id:
            raise LocalError("the revocation list belongs to another authority")
        _check_signature(
            signer.verify_key,
            REVOCATION_DOMAIN + revocation_list.list_bytes,
            revocation_list.signature,
            "revocation list",
        )
        self._rl_signed = revocation_list

    @classmethod
    def create(
        cls,
        authority_id: str,
        *,
        now: float,
        signer: Ed25519Signer | None = None,
        randbits: Randbits = secrets.randbits,
    ) -> Authority:
        """A new authority with a fresh key (or ``signer``) and an empty list, version 1."""
        validate_node_id(authority_id, what="authority id")
        signer = signer or Ed25519Signer.generate()
        issued = _floor_now(now)
        first = RevocationList(version=1, issued_at=issued, issuer=authority_id)
        body = first.to_bytes()
        signed = SignedRevocationList(body, signer.sign(REVOCATION_DOMAIN + body))
        return cls(
            authority_id, signer, created_at=issued, revocation_list=signed, randbits=randbits
        )

    # ----------------------------------------------------------------- identity

    @property
    def authority_id(self) -> str:
        return self._id

    @property
    def verify_key(self) -> bytes:
        return self._signer.verify_key

    @property
    def created_at(self) -> int:
        return self._created_at

    @property
    def revocation_list(self) -> SignedRevocationList:
        """The current signed revocation list (push this to every node)."""
        return self._rl_signed

    def trust_store(self) -> TrustStore:
        """A fresh TrustStore trusting this root, with the current revocation list."""
        trust = TrustStore({self._id: self.verify_key})
        trust.update_revocation_list(self._rl_signed)
        return trust

    # ------------------------------------------------------------------ issuing

    def _check_not_revoked(self, node_id: str) -> None:
        if node_id in self._rl_signed.unverified_list().node_ids:
            raise LocalError(f"node {node_id!r} is revoked; use a new node id")

    def issue(
        self,
        node_id: str,
        tier: Tier | str,
        roles: Iterable[str],
        keys: PublicKeys,
        *,
        lifetime_s: int,
        now: float,
        backdate_s: int = 0,
    ) -> SignedCertificate:
        """Sign a certificate valid ``[now - backdate_s, now + lifetime_s)``."""
        return self._issue(
            node_id,
            tier=tier,
            roles=roles,
            keys=keys,
            lifetime_s=lifetime_s,
            now=now,
            backdate_s=backdate_s,
            delegation=None,
        )

    def delegate(
        self,
        edge_cert: Certificate | SignedCertificate,
        *,
        tiers: Iterable[Tier | str] = (Tier.END,),
        lifetime_s: int,
        now: float,
        backdate_s: int = 0,
        name_prefix: str | None = None,
        unconstrained: bool = False,
    ) -> SignedCertificate:
        """Issue an authority certificate to an edge (or cloud) node for ``tiers``.

        The new certificate reuses the node's id, roles and keys; the node's
        :class:`~securemesh.crypto.identity.NodeIdentity` then signs as a
        :class:`DelegatedAuthority`. It carries a name constraint:
        ``name_prefix``, by default the node's id followed by ``"."`` (so
        ``edge-1`` certifies ``edge-1.sensor-7``); ``unconstrained=True``
        omits it (the delegate may then certify any node id -- only for an
        issuing authority as trusted as the root).
        """
        if isinstance(edge_cert, SignedCertificate):
            edge_cert = edge_cert.unverified_certificate()
        if edge_cert.tier is Tier.END:
            raise LocalError("end devices cannot hold a delegated authority")
        prefix: str | None = None
        if unconstrained:
            if name_prefix is not None:
                raise LocalError("name_prefix and unconstrained=True exclude each other")
        else:
            prefix = validate_name_prefix(
                edge_cert.node_id + "." if name_prefix is None else name_prefix
            )
        delegation = Delegation(frozenset(_to_tier(t) for t in tiers), prefix)
        return self._issue(
            edge_cert.node_id,
            tier=edge_cert.tier,
            roles=edge_cert.roles,
            keys=edge_cert.public_keys(),
            lifetime_s=lifetime_s,
            now=now,
            backdate_s=backdate_s,
            delegation=delegation,
        )

    def _issue(
        self,
        node_id: str,
        *,
        tier: Tier | str,
        roles: Iterable[str],
        keys: PublicKeys,
        lifetime_s: int,
        now: float,
        backdate_s: int,
        delegation: Delegation | None,
    ) -> SignedCertificate:
        validate_node_id(node_id)
        self._check_not_revoked(node_id)
        if not isinstance(keys, PublicKeys):
            raise LocalError("keys must be PublicKeys")
        _check_int(lifetime_s, "lifetime_s", 1, _MAX_U63)
        _check_int(backdate_s, "backdate_s", 0, _MAX_U63)
        not_before = max(0, _floor_now(now) - backdate_s)
        cert = Certificate(
            serial=_new_serial(self._randbits),
            node_id=node_id,
            tier=_to_tier(tier),
            roles=_normalize_roles(roles),
            verify_key=keys.verify_key,
            kx_key=keys.kx_key,
            curve_key=keys.curve_key,
            not_before=not_before,
            not_after=min(_MAX_U63, _floor_now(now) + lifetime_s),
            issuer=self._id,
            delegation=delegation,
        )
        return _sign_cert(self._signer, cert)

    def renew(
        self, cert: SignedCertificate | bytes, *, now: float, lifetime_s: int
    ) -> SignedCertificate:
        """A new certificate (new serial, new period) for the same node, keys and roles.

        The old certificate must carry this authority's valid signature and be
        unrevoked; it may have expired (the caller decides how late is too late).
        """
        signed = _as_signed(cert)
        old = signed.unverified_certificate()
        if old.issuer != self._id:
            raise UnknownIssuer(f"certificate was issued by {old.issuer!r}, not {self._id!r}")
        _check_signature(
            self.verify_key, CERT_DOMAIN + signed.cert_bytes, signed.signature, "certificate"
        )
        if self._rl_signed.unverified_list().revokes(old):
            raise CertificateRevoked(f"certificate {old.serial} of {old.node_id!r} is revoked")
        return self._issue(
            old.node_id,
            tier=old.tier,
            roles=old.roles,
            keys=old.public_keys(),
            lifetime_s=lifetime_s,
            now=now,
            backdate_s=0,
            delegation=old.delegation,
        )

    # --------------------------------------------------------------- revocation

    def revoke(
        self,
        target: str | int | None = None,
        *,
        node_ids: Iterable[str] = (),
        serials: Iterable[int] = (),
        now: float,
    ) -> SignedRevocationList:
        """Add a node id (``str``) or serial (``int``) and return the new signed list.

        The list version goes up by one each call. Persist with :meth:`save_state`.
        """
        add_nodes = set(node_ids)
        add_serials = set(serials)
        if isinstance(target, str):
            add_nodes.add(target)
        elif isinstance(target, int) and not isinstance(target, bool):
            add_serials.add(target)
        elif target is not None:
            raise LocalError("revoke a node id (str) or a serial (int)")
        if not add_nodes and not add_serials:
            raise LocalError("nothing to revoke")
        current = self._rl_signed.unverified_list()
        issued = _floor_now(now)
        new = RevocationList(
            version=current.version + 1,
            issued_at=max(issued, current.issued_at),
            issuer=self._id,
            serials=current.serials | frozenset(add_serials),
            node_ids=current.node_ids | frozenset(add_nodes),
        )
        body = new.to_bytes()
        if len(body) + SIGNATURE_SIZE > MAX_REVOCATION_LIST_SIZE:
            raise LocalError("revocation list would exceed its size limit")
        self._rl_signed = SignedRevocationList(body, self._signer.sign(REVOCATION_DOMAIN + body))
        return self._rl_signed

    # -------------------------------------------------------------- persistence

    def sealed_key(
        self, passphrase: str | bytes, *, params: keystore.KdfParams = keystore.DEFAULT_PARAMS
    ) -> bytes:
        """The secret key as key-file bytes, encrypted under ``passphrase`` (no I/O)."""
        return keystore.seal_secret(
            _AUTHORITY_PAYLOAD + self._signer.seed(), passphrase, params=params
        )

    def state_bytes(self) -> bytes:
        """The non-secret state (id, public key, current signed list) as JSON bytes."""
        rl = self._rl_signed.unverified_list()
        state = {
            "format": self.STATE_FORMAT,
            "version": 1,
            "authority_id": self._id,
            "verify_key": _b64e(self.verify_key),
            "created_at": self._created_at,
            "revocation_list": _b64e(self._rl_signed.to_bytes()),
            "revocation_list_version": rl.version,
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_stored(
        cls,
        sealed_key: bytes,
        state: bytes,
        passphrase: str | bytes,
        *,
        randbits: Randbits = secrets.randbits,
    ) -> Authority:
        """Rebuild from :meth:`sealed_key` and :meth:`state_bytes` output.

        WrongPassphrase; CorruptKeyFile if either is damaged or they do not match.
        """
        payload = keystore.open_secret(sealed_key, passphrase)
        if len(payload) != len(_AUTHORITY_PAYLOAD) + 32 or not payload.startswith(
            _AUTHORITY_PAYLOAD
        ):
            raise CorruptKeyFile("not an authority key file")
        signer = Ed25519Signer.from_seed(payload[len(_AUTHORITY_PAYLOAD) :])
        fields = _parse_state(state, cls.STATE_FORMAT)
        try:
            authority_id = fields["authority_id"]
            verify_key = _b64d(fields["verify_key"])
            signed = SignedRevocationList.from_bytes(_b64d(fields["revocation_list"]))
            created_at = fields["created_at"]
            rl_version = fields["revocation_list_version"]
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptKeyFile(f"authority state is invalid: {exc}") from exc
        if verify_key != signer.verify_key:
            raise CorruptKeyFile("authority key and state belong to different authorities")
        if not isinstance(authority_id, str) or signed.unverified_list().version != rl_version:
            raise CorruptKeyFile("authority state is inconsistent")
        try:
            return cls(
                authority_id,
                signer,
                created_at=created_at,
                revocation_list=signed,
                randbits=randbits,
            )
        except (LocalError, CertificateError) as exc:
            raise CorruptKeyFile(f"authority state is invalid: {exc}") from exc

    def __repr__(self) -> str:
        return f"Authority(id={self._id!r}, verify_key={self.verify_key.hex()[:16]}…)"


#: Largest authority state (JSON around one signed revocation list).
MAX_AUTHORITY_STATE_SIZE = MAX_REVOCATION_LIST_SIZE * 2


def _parse_state(raw: bytes, expected_format: str) -> dict[str, Any]:
    if len(raw) >= MAX_AUTHORITY_STATE_SIZE:
        raise CorruptKeyFile("authority state file too large")
    try:
        state = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptKeyFile("authority state is not JSON") from exc
    expected_keys = {
        "format",
        "version",
        "authority_id",
        "verify_key",
        "created_at",
        "revocation_list",
        "revocation_list_version",
    }
    if not isinstance(state, dict) or set(state) != expected_keys:
        raise CorruptKeyFile("authority state has unexpected fields")
    if state["format"] != expected_format or state["version"] != 1:
        raise CorruptKeyFile("unsupported authority state format")
    return state


class DelegatedAuthority:
    """An edge's constrained authority: issues certificates only for its delegated tiers
    and node ids inside its name constraint (:attr:`name_prefix`).

    ``signer`` is the edge's own key (normally its
    :class:`~securemesh.crypto.identity.NodeIdentity`) matching the delegated
    certificate. Issued certificates never outlive the delegation certificate.
    Revocation stays with the root.
    """

    def __init__(
        self,
        certificate: SignedCertificate | bytes,
        signer: Signer,
        *,
        randbits: Randbits = secrets.randbits,
    ) -> None:
        self._signed = _as_signed(certificate)
        cert = self._signed.unverified_certificate()
        if cert.delegation is None:
            raise LocalError("this certificate carries no delegation")
        if signer.verify_key != cert.verify_key:
            raise LocalError("the signer's key does not match the delegated certificate")
        self._cert = cert
        self._delegation = cert.delegation
        self._signer = signer
        self._randbits = randbits

    @property
    def authority_id(self) -> str:
        return self._cert.node_id

    @property
    def certificate(self) -> SignedCertificate:
        return self._signed

    @property
    def delegation(self) -> Delegation:
        return self._delegation

    @property
    def name_prefix(self) -> str | None:
        """Every node id this authority certifies starts with this (None: unconstrained)."""
        return self._delegation.name_prefix

    def issue(
        self,
        node_id: str,
        tier: Tier | str,
        roles: Iterable[str],
        keys: PublicKeys,
        *,
        lifetime_s: int,
        now: float,
        backdate_s: int = 0,
    ) -> SignedCertificate:
        """Sign a certificate for an allowed tier; LocalError for any other tier."""
        tier = _to_tier(tier)
        if not self._delegation.allows(tier):
            allowed = ", ".join(sorted(t.value for t in self._delegation.tiers))
            raise LocalError(f"this delegated authority may only issue: {allowed}")
        validate_node_id(node_id)
        if not self._delegation.permits_name(node_id):
            raise LocalError(
                f"node id {node_id!r} is outside this delegated authority's namespace: "
                f"it must start with {self._delegation.name_prefix!r}"
            )
        if not isinstance(keys, PublicKeys):
            raise LocalError("keys must be PublicKeys")
        _check_int(lifetime_s, "lifetime_s", 1, _MAX_U63)
        _check_int(backdate_s, "backdate_s", 0, _MAX_U63)
        start = _floor_now(now)
        if not self._cert.is_valid_at(start):
            raise LocalError("the delegation certificate is not valid at this time")
        cert = Certificate(
            serial=_new_serial(self._randbits),
            node_id=node_id,
            tier=tier,
            roles=_normalize_roles(roles),
            verify_key=keys.verify_key,
            kx_key=keys.kx_key,
            curve_key=keys.curve_key,
            not_before=max(self._cert.not_before, start - backdate_s),
            not_after=min(self._cert.not_after, start + lifetime_s),
            issuer=self._cert.node_id,
        )
        return _sign_cert(self._signer, cert)

    def __repr__(self) -> str:
        return f"DelegatedAuthority(id={self.authority_id!r})"
