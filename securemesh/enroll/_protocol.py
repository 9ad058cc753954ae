"""Enrollment and renewal: message bodies, the client's checks, the server's pure logic.

Theory of operation
-------------------
Enrollment (message type ``enroll.request``, a REQUEST; the reply carries an
:class:`EnrollReply`):

1. The new node generates its :class:`~securemesh.crypto.NodeIdentity` locally
   and builds an :class:`EnrollRequest` (:func:`build_enroll_request`): token
   id, requested node id, its three public keys, and two authenticators over
   the same *request transcript*::

       transcript = token_id (16) || str8(node_id) || verify_key || kx_key || curve_key
       proof      = HMAC-SHA256(token.proof_key(), b"securemesh/enroll-proof/v1\\x00" || transcript)
       signature  = Ed25519(new identity key, b"securemesh/enroll-pop/v1\\x00" || transcript)

   ``proof`` shows possession of the token (RFC 2104 HMAC under the key derived
   from the token secret, see :mod:`securemesh.enroll._token`); ``signature``
   shows possession of the new signing key and binds the request to it even
   when an edge relays the *body* to the cloud (the envelope around it is
   also SIGNED by the new key, sender = node id, but a relay re-wraps it).
2. The server (:meth:`EnrollmentServer.handle_enroll`) checks, in order:
   token known -> proof (constant-time) -> self-signature -> envelope binding
   (the envelope was verified with the body's verify key and names the body's
   node id, when the caller says so) -> token unused and unexpired -> the tier
   is one this authority may issue (a delegated authority: only its delegated
   tiers, never a further delegation; and only node ids inside its name
   constraint, e.g. ``edge-1.*``) -> the node id is not revoked. Tier and
   roles come from the *token record*, never from the request. It issues the
   certificate, then consumes the token atomically together with binding the
   node id to the verify key (:meth:`TokenStore.consume`); if another request
   won the token first, the freshly signed certificate is thrown away.
3. The reply holds the signed certificate, the issuer's delegated-authority
   certificate when an edge issued it, the new node's own delegated-authority
   certificate when the token asked for one, the current signed revocation
   list, the root's id and key, and the replying server's own certificate.
   The client (:func:`accept_enroll_reply`) trusts only the root named in its
   token: the root id and key in the reply must match the token, the
   revocation list and every certificate must verify under that root, and the
   certificate must name exactly our keys, our node id and the token's tier
   and roles.

Renewal (``cert.renew``, REQUEST; reply :class:`RenewReply`): a node sends its
current certificate. :meth:`EnrollmentServer.handle_renew` verifies it fully
(issuer is this authority, signature, validity, not revoked), so an *expired*
certificate is refused (:class:`~securemesh.errors.CertificateExpired`): the
node must re-enroll with a fresh token, keeping its keys. The new certificate
has the same node id, tier, roles and keys, a new serial and a new validity
period. :func:`accept_renew_reply` checks exactly that, and installs the
reply's revocation list (a rollback is refused).

Audit: every outcome of ``handle_enroll``/``handle_renew`` (success or the
reason of a refusal) is handed to ``audit_hook`` as an :class:`EnrollmentAudit`
before the method returns or raises; :meth:`EnrollmentAudit.to_event` turns it
into an :class:`~securemesh.audit.events.AuditEvent` (kinds ``node.enrolled``
and ``cert.renewed``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, StringConstraints

from securemesh.crypto.certs import (
    MAX_CERT_SIZE,
    Authority,
    Certificate,
    DelegatedAuthority,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
    verify_certificate,
)
from securemesh.crypto.identity import NodeIdentity, PublicKeys
from securemesh.crypto.signing import SIGNATURE_SIZE, verify_signature
from securemesh.enroll._token import TOKEN_ID_SIZE, JoinToken, TokenRecord
from securemesh.errors import (
    AuthenticationError,
    AuthorizationError,
    CertificateExpired,
    CertificateRevoked,
    LocalError,
    RemoteError,
    TokenError,
    UnknownIssuer,
)

if TYPE_CHECKING:
    from securemesh.audit.events import AuditEvent
    from securemesh.enroll._store import TokenStore

__all__ = [
    "MSG_CERT_RENEW",
    "MSG_ENROLL_REQUEST",
    "POP_DOMAIN",
    "PROOF_DOMAIN",
    "EnrollReply",
    "EnrollRequest",
    "EnrollResult",
    "EnrollmentAudit",
    "EnrollmentServer",
    "RenewReply",
    "RenewRequest",
    "accept_enroll_reply",
    "accept_renew_reply",
    "build_enroll_request",
    "build_renew_request",
    "request_transcript",
]

MSG_ENROLL_REQUEST: Final = "enroll.request"
MSG_CERT_RENEW: Final = "cert.renew"
PROOF_DOMAIN: Final = b"securemesh/enroll-proof/v1\x00"
POP_DOMAIN: Final = b"securemesh/enroll-pop/v1\x00"
DEFAULT_LIFETIME_S: Final = 24 * 3600
#: Largest signed revocation list an EnrollReply/RenewReply body can carry (base64 in 64 KiB).
MAX_LIST_IN_BODY: Final = 46 * 1024

_MODEL = ConfigDict(strict=True, extra="forbid", frozen=True)
NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _binary(low: int, high: int) -> PlainValidator:
    """A bytes field carried in JSON as canonical unpadded base64url (RFC 4648 §5).

    Python callers pass ``bytes``; JSON input must be the canonical text of
    ``low..high`` bytes (length checked before decoding), as in
    :func:`securemesh.messages.b64d`.
    """

    def validate(value: object) -> bytes:
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            if len(value) > (high * 4 + 2) // 3 or _B64_RE.fullmatch(value) is None:
                raise ValueError("not unpadded base64url (or too long)")
            try:
                data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError) as exc:
                raise ValueError("not base64url") from exc
            if _b64e(data) != value:
                raise ValueError("non-canonical base64url")
        else:
            raise ValueError("expected base64url text")
        if not low <= len(data) <= high:
            raise ValueError(f"expected {low}..{high} bytes")
        return data

    return PlainValidator(validate)


_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
_B64_OUT = PlainSerializer(_b64e, return_type=str)
Key32 = Annotated[bytes, _binary(32, 32), _B64_OUT]
Sig64 = Annotated[bytes, _binary(SIGNATURE_SIZE, SIGNATURE_SIZE), _B64_OUT]
TokenId = Annotated[bytes, _binary(TOKEN_ID_SIZE, TOKEN_ID_SIZE), _B64_OUT]
CertBytes = Annotated[bytes, _binary(SIGNATURE_SIZE + 1, MAX_CERT_SIZE), _B64_OUT]
#: A revocation list in a body: the body limit (64 KiB) bounds it in practice.
ListBytes = Annotated[bytes, _binary(SIGNATURE_SIZE + 1, MAX_LIST_IN_BODY), _B64_OUT]


# ---------------------------------------------------------------------- messages


class EnrollRequest(BaseModel):
    """Body of ``enroll.request`` (module docstring, step 1)."""

    model_config = _MODEL

    version: Literal[1] = 1
    token_id: TokenId
    node_id: NodeId
    verify_key: Key32
    kx_key: Key32
    curve_key: Key32
    proof: Key32
    signature: Sig64

    def public_keys(self) -> PublicKeys:
        return PublicKeys(verify_key=self.verify_key, kx_key=self.kx_key, curve_key=self.curve_key)

    def transcript(self) -> bytes:
        return request_transcript(self.token_id, self.node_id, self.public_keys())


class EnrollReply(BaseModel):
    """Body of the reply to ``enroll.request`` (module docstring, step 3)."""

    model_config = _MODEL

    version: Literal[1] = 1
    certificate: CertBytes
    issuer_certificate: CertBytes | None = None
    authority_certificate: CertBytes | None = None
    revocation_list: ListBytes
    authority_id: NodeId
    root_key: Key32
    server_certificate: CertBytes


class RenewRequest(BaseModel):
    """Body of ``cert.renew``: the sender's current signed certificate."""

    model_config = _MODEL

    version: Literal[1] = 1
    certificate: CertBytes


class RenewReply(BaseModel):
    """Body of the reply to ``cert.renew``."""

    model_config = _MODEL

    version: Literal[1] = 1
    certificate: CertBytes
    issuer_certificate: CertBytes | None = None
    revocation_list: ListBytes


def request_transcript(token_id: bytes, node_id: str, keys: PublicKeys) -> bytes:
    """The bytes the proof and the self-signature cover (module docstring)."""
    raw_id = node_id.encode("ascii")
    return b"".join(
        [token_id, bytes([len(raw_id)]), raw_id, keys.verify_key, keys.kx_key, keys.curve_key]
    )


def _proof(proof_key: bytes, transcript: bytes) -> bytes:
    return hmac.new(proof_key, PROOF_DOMAIN + transcript, hashlib.sha256).digest()


# ------------------------------------------------------------------------ client


def build_enroll_request(token: JoinToken, identity: NodeIdentity, node_id: str) -> EnrollRequest:
    """The ``enroll.request`` body for ``identity`` asking to be ``node_id``.

    LocalError if ``node_id`` is invalid or outside the token's name prefix
    (an edge's namespace: its delegated authority could not certify it).
    """
    token.check_node_id(node_id)
    keys = identity.public()
    transcript = request_transcript(token.token_id, node_id, keys)
    return EnrollRequest(
        token_id=token.token_id,
        node_id=node_id,
        verify_key=keys.verify_key,
        kx_key=keys.kx_key,
        curve_key=keys.curve_key,
        proof=_proof(token.proof_key(), transcript),
        signature=identity.sign(POP_DOMAIN + transcript),
    )


@dataclass(frozen=True, slots=True)
class EnrollResult:
    """What a successful enrollment gives the new node (all verified under the token's root)."""

    certificate: SignedCertificate
    cert: Certificate
    trust: TrustStore
    revocation_list: SignedRevocationList
    issuer_certificate: SignedCertificate | None = None
    authority_certificate: SignedCertificate | None = None
    intermediates: tuple[SignedCertificate, ...] = field(default=())


def accept_enroll_reply(
    token: JoinToken,
    identity: NodeIdentity,
    reply: EnrollReply,
    now: float,
    *,
    node_id: str | None = None,
    trust: TrustStore | None = None,
) -> EnrollResult:
    """Verify an :class:`EnrollReply` against the token's root; return the verified pieces.

    ``trust`` (re-enrollment) is an existing trust store to update: its
    revocation list must not roll back. Raises AuthenticationError if the reply
    names another root or a certificate for other keys / id / tier / roles, and
    the CertificateError subclasses for anything that does not verify.
    """
    if reply.authority_id != token.authority_id or not hmac.compare_digest(
        reply.root_key, token.root_key
    ):
        raise AuthenticationError("the reply names a different root authority than the token")
    if trust is None:
        trust = TrustStore({token.authority_id: token.root_key})
    elif trust.root_key(token.authority_id) != token.root_key:
        raise AuthenticationError("the token's root is not the root this node already trusts")
    rl_signed = SignedRevocationList.from_bytes(reply.revocation_list)
    trust.update_revocation_list(rl_signed)
    issuer_signed: SignedCertificate | None = None
    intermediates: tuple[SignedCertificate, ...] = ()
    if reply.issuer_certificate is not None:
        issuer_signed = SignedCertificate.from_bytes(reply.issuer_certificate)
        trust.add_delegated_authority(issuer_signed, now=now)
        intermediates = (issuer_signed,)
    signed = SignedCertificate.from_bytes(reply.certificate)
    cert = verify_certificate(signed, trust=trust, now=now)
    if cert.public_keys() != identity.public():
        raise AuthenticationError("the certificate does not name this node's keys")
    if node_id is not None and cert.node_id != node_id:
        raise AuthenticationError("the certificate names another node id")
    if cert.tier is not token.tier or cert.roles != token.roles:
        raise AuthenticationError("the certificate's tier or roles differ from the token's")
    if cert.delegation is not None:
        raise AuthenticationError("a node certificate must not be an authority certificate")
    authority_signed: SignedCertificate | None = None
    if reply.authority_certificate is not None:
        if not token.delegate:
            raise AuthenticationError("unrequested delegated-authority certificate")
        authority_signed = SignedCertificate.from_bytes(reply.authority_certificate)
        auth_cert = verify_certificate(authority_signed, trust=trust, now=now)
        if (
            auth_cert.delegation is None
            or auth_cert.node_id != cert.node_id
            or auth_cert.public_keys() != cert.public_keys()
            or auth_cert.issuer != token.authority_id
        ):
            raise AuthenticationError("the delegated-authority certificate does not fit")
    elif token.delegate:
        raise AuthenticationError("the token promised a delegated authority; none came")
    return EnrollResult(
        certificate=signed,
        cert=cert,
        trust=trust,
        revocation_list=rl_signed,
        issuer_certificate=issuer_signed,
        authority_certificate=authority_signed,
        intermediates=intermediates,
    )


def build_renew_request(certificate: SignedCertificate | bytes) -> RenewRequest:
    blob = certificate.to_bytes() if isinstance(certificate, SignedCertificate) else certificate
    return RenewRequest(certificate=bytes(blob))


def accept_renew_reply(
    identity: NodeIdentity,
    current: SignedCertificate,
    reply: RenewReply,
    trust: TrustStore,
    now: float,
) -> SignedCertificate:
    """Verify a :class:`RenewReply`: same node, tier, roles, keys and authority kind, new serial.

    Installs the reply's revocation list in ``trust`` first (RevocationListRollback
    if it is older than the one held).
    """
    trust.update_revocation_list(SignedRevocationList.from_bytes(reply.revocation_list))
    old = current.unverified_certificate()
    intermediates = () if reply.issuer_certificate is None else (bytes(reply.issuer_certificate),)
    signed = SignedCertificate.from_bytes(reply.certificate)
    new = verify_certificate(signed, trust=trust, now=now, intermediates=intermediates)
    if new.public_keys() != identity.public() or new.public_keys() != old.public_keys():
        raise AuthenticationError("the renewed certificate names other keys")
    if (new.node_id, new.tier, new.roles, new.issuer) != (
        old.node_id,
        old.tier,
        old.roles,
        old.issuer,
    ):
        raise AuthenticationError("the renewed certificate changes identity, tier or roles")
    if new.delegation != old.delegation:
        raise AuthenticationError("the renewed certificate changes the delegation")
    if new.serial == old.serial:
        raise AuthenticationError("the renewed certificate reuses the old serial")
    return signed


# ------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class EnrollmentAudit:
    """The audit data of one enrollment or renewal outcome (see :meth:`to_event`).

    ``kind`` is ``node.enrolled`` or ``cert.renewed``; ``outcome`` is
    ``success``, ``failure`` (malformed, bad proof, bad token, bad
    certificate) or ``denied`` (tier not allowed, revoked). ``subject`` is the
    (claimed, for failures) node id; ``reason`` the RemoteError reason code.
    """

    kind: str
    outcome: str
    subject: str
    reason: str | None = None
    detail: str = ""
    token_id: str | None = None
    tier: str | None = None
    roles: tuple[str, ...] = ()
    serial: int | None = None
    issuer: str | None = None

    def details(self) -> dict[str, str | int | None]:
        out: dict[str, str | int | None] = {}
        for key in ("reason", "token_id", "tier", "serial", "issuer"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.roles:
            out["roles"] = ",".join(self.roles)
        if self.detail:
            out["detail"] = self.detail[:200]
        return out

    def to_event(self, *, origin: str, now: float | None = None) -> AuditEvent:
        """An unsigned :class:`~securemesh.audit.events.AuditEvent` for this outcome."""
        from securemesh.audit.events import SubjectType, new_event  # noqa: PLC0415 - lazy

        subject = self.subject or "unknown"
        return new_event(
            self.kind,
            origin=origin,
            subject=(SubjectType.NODE, subject),
            outcome=self.outcome,
            details=self.details(),
            now=now,
        )


AuditHook = Callable[[EnrollmentAudit], None]
_DENIED = (AuthorizationError, CertificateRevoked)


def _outcome(exc: RemoteError | LocalError) -> str:
    return "denied" if isinstance(exc, _DENIED) else "failure"


# ------------------------------------------------------------------------ server


class EnrollmentServer:
    """The authority side of enrollment and renewal: pure logic over a TokenStore.

    ``authority`` is the cloud's root :class:`Authority` or an edge's
    :class:`DelegatedAuthority`. ``server_certificate`` is the certificate of
    the node that answers (so the client can check the reply envelope's
    signature, see :mod:`securemesh.enroll._client`). For a delegated
    authority pass ``trust`` (the node's live TrustStore, which knows the root
    and the current revocation list) and ``revocation_list`` (a callable
    returning the current *signed* list); for a root both default to the
    authority's own.
    """

    def __init__(
        self,
        authority: Authority | DelegatedAuthority,
        tokens: TokenStore,
        *,
        server_certificate: SignedCertificate | bytes,
        lifetime_s: int = DEFAULT_LIFETIME_S,
        delegation_lifetime_s: int | None = None,
        trust: TrustStore | None = None,
        revocation_list: Callable[[], SignedRevocationList] | None = None,
        clock: Callable[[], float] = time.time,
        audit_hook: AuditHook | None = None,
    ) -> None:
        if type(lifetime_s) is not int or lifetime_s < 1:
            raise LocalError("lifetime_s must be a positive integer")
        self._authority = authority
        self._tokens = tokens
        self._server_cert = (
            server_certificate
            if isinstance(server_certificate, SignedCertificate)
            else SignedCertificate.from_bytes(server_certificate)
        )
        self._lifetime = lifetime_s
        self._delegation_lifetime = delegation_lifetime_s or lifetime_s
        self._clock = clock
        self.audit_hook = audit_hook
        if isinstance(authority, Authority):
            self._root_id = authority.authority_id
            self._root_key = authority.verify_key
            self._trust = trust
            self._rl: Callable[[], SignedRevocationList] = revocation_list or (
                lambda: authority.revocation_list
            )
        else:
            if trust is None or revocation_list is None:
                raise LocalError("a delegated authority needs the node's trust store and list")
            root_id = authority.certificate.unverified_certificate().issuer
            root_key = trust.root_key(root_id)
            if root_key is None:
                raise LocalError(f"the trust store does not know the root {root_id!r}")
            self._root_id, self._root_key = root_id, root_key
            self._trust = trust
            self._rl = revocation_list

    @property
    def authority_id(self) -> str:
        """The id that issues here (the root's id, or the edge's node id when delegated)."""
        return self._authority.authority_id

    @property
    def root_id(self) -> str:
        return self._root_id

    @property
    def tokens(self) -> TokenStore:
        return self._tokens

    def set_server_certificate(self, certificate: SignedCertificate) -> None:
        """Use a renewed certificate of the answering node from now on."""
        self._server_cert = certificate

    def set_delegated_authority(self, authority: DelegatedAuthority) -> None:
        """Issue with a renewed delegation certificate from now on (same edge, same root)."""
        current = self._authority
        if not isinstance(current, DelegatedAuthority) or not isinstance(
            authority, DelegatedAuthority
        ):
            raise LocalError("only a delegated authority can be replaced")
        old, new = (
            current.certificate.unverified_certificate(),
            (authority.certificate.unverified_certificate()),
        )
        if (new.node_id, new.issuer, new.public_keys()) != (
            old.node_id,
            old.issuer,
            old.public_keys(),
        ):
            raise LocalError("the new delegation belongs to another edge or root")
        self._authority = authority

    def _trust_now(self) -> TrustStore:
        if isinstance(self._authority, Authority):
            # Always the current list (revocations take effect at once).
            trust = TrustStore({self._root_id: self._root_key})
            trust.update_revocation_list(self._rl())
            return trust
        assert self._trust is not None
        return self._trust

    def _issuable(self, tier: Tier, delegate: bool) -> None:
        if isinstance(self._authority, DelegatedAuthority):
            if delegate:
                raise AuthorizationError("a delegated authority cannot delegate further")
            if not self._authority.delegation.allows(tier):
                raise AuthorizationError(f"this delegated authority may not issue {tier.value!r}")

    def _emit(self, audit: EnrollmentAudit) -> None:
        if self.audit_hook is not None:
            self.audit_hook(audit)

    # --------------------------------------------------------------- enrollment

    def handle_enroll(
        self,
        request: EnrollRequest,
        *,
        self_signature_verified_with: bytes | None = None,
        sender: str | None = None,
        peer_curve_key: bytes | None = None,
        now: float | None = None,
    ) -> EnrollReply:
        """Check an ``enroll.request`` and answer it (module docstring, step 2).

        ``self_signature_verified_with`` is the verify key the caller checked
        the request *envelope* with, ``sender`` that envelope's sender; when
        given they must be the body's verify key and node id.
        ``peer_curve_key`` is the transport-authenticated CURVE key of a
        directly connected first-contact peer: when given it must be this
        token's first-contact key (omit it for a request relayed by an edge).
        Raises a
        RemoteError (TokenError, AuthenticationError, AuthorizationError,
        CertificateRevoked); the audit hook sees every outcome.
        """
        t = self._clock() if now is None else now
        record: TokenRecord | None = None
        try:
            record = self._tokens.get(request.token_id)
            self._check_enroll(
                request,
                record,
                envelope_key=self_signature_verified_with,
                sender=sender,
                peer_curve_key=peer_curve_key,
                now=t,
            )
            assert record is not None  # _check_enroll refuses unknown tokens
            reply = self._issue(request, record, t)
        except (RemoteError, LocalError) as exc:
            self._emit(
                EnrollmentAudit(
                    kind="node.enrolled",
                    outcome=_outcome(exc),
                    subject=request.node_id,
                    reason=exc.reason if isinstance(exc, RemoteError) else "local_error",
                    detail=str(exc),
                    token_id=request.token_id.hex(),
                    tier=None if record is None else record.tier.value,
                    roles=() if record is None else record.roles,
                    issuer=self.authority_id,
                )
            )
            if isinstance(exc, LocalError):
                raise AuthorizationError(f"enrollment refused: {exc}") from exc
            raise
        cert = SignedCertificate.from_bytes(reply.certificate).unverified_certificate()
        self._emit(
            EnrollmentAudit(
                kind="node.enrolled",
                outcome="success",
                subject=cert.node_id,
                token_id=request.token_id.hex(),
                tier=cert.tier.value,
                roles=cert.roles,
                serial=cert.serial,
                issuer=cert.issuer,
            )
        )
        return reply

    def _check_enroll(
        self,
        request: EnrollRequest,
        record: TokenRecord | None,
        *,
        envelope_key: bytes | None,
        sender: str | None,
        peer_curve_key: bytes | None,
        now: float,
    ) -> None:
        if record is None:
            raise TokenError("unknown join token")
        transcript = request.transcript()
        if not hmac.compare_digest(_proof(record.proof_key, transcript), request.proof):
            raise AuthenticationError("enrollment proof does not verify")
        verify_signature(request.verify_key, POP_DOMAIN + transcript, request.signature)
        if envelope_key is not None and not hmac.compare_digest(envelope_key, request.verify_key):
            raise AuthenticationError("the envelope was not signed by the enrolling key")
        if sender is not None and sender != request.node_id:
            raise AuthenticationError("the envelope sender is not the requested node id")
        if peer_curve_key is not None and not hmac.compare_digest(peer_curve_key, record.curve_key):
            raise AuthenticationError("the connection's CURVE key is not this token's key")
        if record.used_at is not None:
            raise TokenError("join token already used")
        if now >= record.expires_at:
            raise TokenError("join token expired")
        if record.authority_id != self._root_id:
            raise TokenError("join token belongs to another mesh")
        self._issuable(record.tier, record.delegate)
        if isinstance(self._authority, DelegatedAuthority):
            prefix = self._authority.name_prefix
            if prefix is not None and not self._authority.delegation.permits_name(request.node_id):
                raise AuthorizationError(
                    f"node id {request.node_id!r} is outside this edge's namespace: "
                    f"it must start with {prefix!r}"
                )
        rl = self._rl().unverified_list()
        if request.node_id in rl.node_ids:
            raise CertificateRevoked(f"node id {request.node_id!r} is revoked")
        known = self._tokens.node_key(request.node_id)
        if known is not None and not hmac.compare_digest(known, request.verify_key):
            raise TokenError(f"node id {request.node_id!r} is enrolled with other keys")

    def _issue(self, request: EnrollRequest, record: TokenRecord, now: float) -> EnrollReply:
        keys = request.public_keys()
        signed = self._authority.issue(
            request.node_id, record.tier, record.roles, keys, lifetime_s=self._lifetime, now=now
        )
        authority_cert: SignedCertificate | None = None
        if record.delegate:
            assert isinstance(self._authority, Authority)
            authority_cert = self._authority.delegate(
                signed, tiers=(Tier.END,), lifetime_s=self._delegation_lifetime, now=now
            )
        # The atomic step: exactly one request wins the token (and binds the node id).
        self._tokens.consume(
            request.token_id,
            node_id=request.node_id,
            verify_key=request.verify_key,
            tier=record.tier,
            now=now,
        )
        return EnrollReply(
            certificate=signed.to_bytes(),
            issuer_certificate=self._issuer_certificate(),
            authority_certificate=None if authority_cert is None else authority_cert.to_bytes(),
            revocation_list=self._rl().to_bytes(),
            authority_id=self._root_id,
            root_key=self._root_key,
            server_certificate=self._server_cert.to_bytes(),
        )

    def _issuer_certificate(self) -> bytes | None:
        if isinstance(self._authority, DelegatedAuthority):
            return self._authority.certificate.to_bytes()
        return None

    # ------------------------------------------------------------------ renewal

    def handle_renew(
        self,
        request: RenewRequest | SignedCertificate | bytes,
        *,
        sender: str | None = None,
        now: float | None = None,
    ) -> RenewReply:
        """Renew a valid certificate this authority issued (module docstring).

        ``sender`` is the verified envelope's sender; it must be the
        certificate's node. Expired, revoked or foreign certificates are
        refused (CertificateExpired says: re-enroll with a fresh token).
        """
        t = self._clock() if now is None else now
        if isinstance(request, RenewRequest):
            blob: SignedCertificate | bytes = request.certificate
        else:
            blob = request
        subject = sender or "unknown"
        old: Certificate | None = None
        try:
            signed = (
                blob if isinstance(blob, SignedCertificate) else SignedCertificate.from_bytes(blob)
            )
            old = signed.unverified_certificate()
            subject = old.node_id
            new = self._renew(signed, old, sender, t)
        except (RemoteError, LocalError) as exc:
            if isinstance(exc, CertificateExpired):
                exc = CertificateExpired(f"{exc}; re-enroll with a fresh join token")
            self._emit(
                EnrollmentAudit(
                    kind="cert.renewed",
                    outcome=_outcome(exc),
                    subject=subject,
                    reason=exc.reason if isinstance(exc, RemoteError) else "local_error",
                    detail=str(exc),
                    serial=None if old is None else old.serial,
                    issuer=self.authority_id,
                )
            )
            if isinstance(exc, LocalError):
                raise AuthorizationError(f"renewal refused: {exc}") from exc
            raise exc from None
        cert = new.unverified_certificate()
        self._emit(
            EnrollmentAudit(
                kind="cert.renewed",
                outcome="success",
                subject=cert.node_id,
                tier=cert.tier.value,
                roles=cert.roles,
                serial=cert.serial,
                issuer=cert.issuer,
            )
        )
        return RenewReply(
            certificate=new.to_bytes(),
            issuer_certificate=self._issuer_certificate(),
            revocation_list=self._rl().to_bytes(),
        )

    def _renew(
        self, signed: SignedCertificate, old: Certificate, sender: str | None, now: float
    ) -> SignedCertificate:
        if sender is not None and sender != old.node_id:
            raise AuthenticationError("a node may only renew its own certificate")
        if old.issuer != self.authority_id:
            raise UnknownIssuer(f"certificate issued by {old.issuer!r}, not {self.authority_id!r}")
        intermediates = []
        if isinstance(self._authority, DelegatedAuthority):
            intermediates.append(self._authority.certificate)
        verify_certificate(signed, trust=self._trust_now(), now=now, intermediates=intermediates)
        if isinstance(self._authority, Authority):
            return self._authority.renew(signed, now=now, lifetime_s=self._lifetime)
        self._issuable(old.tier, old.delegation is not None)
        return self._authority.issue(
            old.node_id, old.tier, old.roles, old.public_keys(), lifetime_s=self._lifetime, now=now
        )
