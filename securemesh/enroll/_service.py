"""Enrollment and renewal as a service on a running :class:`~securemesh.node.MeshNode`.

Theory of operation
-------------------
:func:`enrollment_service` returns a ``service(node)`` callable (the daemon's
``services=`` hook, :func:`securemesh.node._daemon.run_node`) that registers:

``enroll.request`` (first contact allowed)
    The pipeline admits a join-token peer only for this type and verifies the
    envelope against the verify key its body declares (:func:`_declared_key`).
    If this node holds the token (its ``tokens.db``) it answers with
    :meth:`EnrollmentServer.handle_enroll` (the envelope key, sender and the
    connection's CURVE key are bound to the token and the body). Otherwise,
    if it has a parent, it *relays the body* to its parent as its own SIGNED
    request (the body's proof and self-signature still bind it to the token
    and the new key) and answers with the parent's reply, replacing
    ``server_certificate`` by its own certificate, since it signs the reply
    the new node reads. Certified edge/cloud nodes may send this type (that is
    the relay); nobody else.
``cert.renew``
    A node asks its parent to renew its certificate. The parent renews it if
    it is the issuer (root on the cloud, or the delegated authority of an
    edge); otherwise it relays the request up.

After an enrollment the new certificate goes into the node's Directory at
once, so the new node's own CURVE key passes ZAP when it reconnects (its
``node.hello`` then carries the same certificate). Only the certificate's own
    node (or, for a relay, an edge/cloud node) may ask.

Automatic renewal (:meth:`EnrollmentService.renew_due`, checked every
``renew_check_s`` seconds): once half of this node's certificate lifetime has
passed, it sends ``cert.renew`` to its parent, checks the reply
(:func:`accept_renew_reply`: same node, tier, roles and keys, new serial, the
reply's revocation list installed without rollback), writes ``node.cert``
atomically and calls :meth:`MeshNode.install_certificate`, which re-announces
it with ``node.hello``. An edge's own ``delegation.cert`` is renewed the same
way (and its delegated authority reloaded). The cloud, which has no parent
and holds the root, renews its own certificate locally. A certificate that
expired before it could be renewed cannot be renewed: re-enroll with a fresh
token (``securemesh enroll`` keeps the keys and data).

Every outcome goes to ``audit`` as an :class:`EnrollmentAudit` (default: a
structured log line). Join-token keys are fed into the node's Directory by
:class:`TokenKeySync` at start-up, after each enrollment and every
``token_poll_s`` seconds, so tokens created by ``securemesh token create``
while the daemon runs are admitted within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from securemesh.crypto import keystore
from securemesh.crypto.certs import (
    Authority,
    DelegatedAuthority,
    SignedCertificate,
    SignedRevocationList,
    Tier,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.enroll._protocol import (
    DEFAULT_LIFETIME_S,
    MSG_CERT_RENEW,
    MSG_ENROLL_REQUEST,
    EnrollmentAudit,
    EnrollmentServer,
    EnrollReply,
    EnrollRequest,
    RenewReply,
    RenewRequest,
    accept_renew_reply,
    build_renew_request,
)
from securemesh.enroll._state import (
    AUTHORITY_DIR,
    DELEGATION_CERT_FILE,
    NODE_CERT_FILE,
    REVOCATION_FILE,
)
from securemesh.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LocalError,
    NoRoute,
    RemoteError,
    TokenError,
)

if TYPE_CHECKING:
    from securemesh.enroll._store import TokenKeySync, TokenStore
    from securemesh.node import MeshNode
    from securemesh.node._pipeline import VerifiedMessage

__all__ = ["EnrollmentService", "enrollment_service"]

log = logging.getLogger("securemesh.enroll")


def _declared_key(body: bytes) -> bytes:
    """First-contact resolver: the verify key an ``enroll.request`` body declares."""
    try:
        return EnrollRequest.model_validate_json(body, strict=True).verify_key
    except ValidationError as exc:
        raise DecodeError("malformed enroll.request body") from exc


def _log_audit(audit: EnrollmentAudit) -> None:
    log.info(
        "enrollment outcome",
        extra={"event": audit.kind, "outcome": audit.outcome, "subject": audit.subject}
        | {k: v for k, v in audit.details().items() if k != "detail"},
    )


class EnrollmentService:
    """The handlers :func:`enrollment_service` installs (kept for tests and status)."""

    def __init__(
        self,
        node: MeshNode,
        data_dir: Path,
        *,
        identity: NodeIdentity,
        passphrase: str | None,
        lifetime_s: int,
        relay_timeout: float,
        clock: Callable[[], float],
        audit: Callable[[EnrollmentAudit], None],
    ) -> None:
        self.node = node
        self.data_dir = data_dir
        self._identity = identity
        self.renewals = 0
        self._clock = clock
        self._relay_timeout = relay_timeout
        self.server: EnrollmentServer | None = None
        self.store: TokenStore | None = None
        self.sync: TokenKeySync | None = None
        signed_cert = node._signed_cert
        authority: Authority | DelegatedAuthority | None = None
        if (data_dir / AUTHORITY_DIR / Authority.KEY_FILE).exists():
            if passphrase is None:
                raise TokenError("the authority key needs the passphrase")
            authority = Authority.load(data_dir / AUTHORITY_DIR, passphrase)
        elif (data_dir / DELEGATION_CERT_FILE).exists():
            authority = DelegatedAuthority(
                (data_dir / DELEGATION_CERT_FILE).read_bytes(), identity.signer
            )
        if authority is not None:
            from securemesh.enroll._store import TokenKeySync, TokenStore  # noqa: PLC0415

            self.store = TokenStore.in_dir(data_dir, clock=clock)
            self.sync = TokenKeySync(self.store)
            self.server = EnrollmentServer(
                authority,
                self.store,
                server_certificate=signed_cert,
                lifetime_s=lifetime_s,
                trust=node.directory.trust,
                revocation_list=self._revocation_list,
                clock=clock,
                audit_hook=audit,
            )

    def _revocation_list(self) -> SignedRevocationList:
        blob = self.node.revocation_list_bytes
        if blob is None:
            blob = (self.data_dir / REVOCATION_FILE).read_bytes()
        return SignedRevocationList.from_bytes(blob)

    def refresh_tokens(self) -> int:
        """Admit usable tokens' first-contact keys (and retire used ones); return the count."""
        if self.sync is None:
            return 0
        return self.sync.refresh(self.node.directory, now=self._clock())

    async def poll_tokens(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # a locked database: try again next time
                self.refresh_tokens()

    # ------------------------------------------------------------------ renewal

    @staticmethod
    def _half_life_passed(cert: SignedCertificate, now: float) -> bool:
        c = cert.unverified_certificate()
        return now >= c.not_before + (c.not_after - c.not_before) / 2

    def _delegation(self) -> SignedCertificate | None:
        path = self.data_dir / DELEGATION_CERT_FILE
        if not path.exists():
            return None
        return SignedCertificate.from_bytes(path.read_bytes())

    def renew_due(self, now: float | None = None) -> bool:
        """True once half the node certificate's (or delegation's) lifetime has passed."""
        t = self._clock() if now is None else now
        delegation = self._delegation()
        return self._half_life_passed(self.node._signed_cert, t) or (
            delegation is not None and self._half_life_passed(delegation, t)
        )

    async def _renew_one(self, current: SignedCertificate) -> SignedCertificate:
        request = build_renew_request(current)
        parent = self.node.parent_id
        if parent is not None:
            answer = await self.node.request(
                parent, MSG_CERT_RENEW, request, timeout=self._relay_timeout
            )
            reply = answer.envelope.body(RenewReply)
        elif self.server is not None and isinstance(self.server._authority, Authority):
            reply = self.server.handle_renew(request)
        else:
            raise NoRoute("no parent to renew with")
        return accept_renew_reply(
            self._identity, current, reply, self.node.directory.trust, self._clock()
        )

    async def renew_once(self) -> None:
        """Renew what is due now (node certificate, then delegation certificate)."""
        now = self._clock()
        delegation = self._delegation()
        if delegation is not None and self._half_life_passed(delegation, now):
            renewed_delegation = await self._renew_one(delegation)
            keystore.write_file_atomic(
                self.data_dir / DELEGATION_CERT_FILE, renewed_delegation.to_bytes()
            )
            if self.server is not None and isinstance(
                self.server._authority,
                DelegatedAuthority,
            ):
                self.server._authority = DelegatedAuthority(
                    renewed_delegation, self._identity.signer
                )
            self.renewals += 1
        current = self.node._signed_cert
        if self._half_life_passed(current, now):
            renewed = await self._renew_one(current)
            keystore.write_file_atomic(self.data_dir / NODE_CERT_FILE, renewed.to_bytes())
            await self.node.install_certificate(renewed)
            if self.server is not None:
                self.server.set_server_certificate(renewed)
            self.renewals += 1

    async def auto_renew(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.renew_due():
                try:
                    await self.renew_once()
                except (RemoteError, LocalError, TimeoutError, OSError) as exc:
                    log.warning(
                        "certificate renewal failed",
                        extra={"event": "renew_failed", "error": str(exc)},
                    )

    # ------------------------------------------------------------------ handlers

    async def on_enroll(self, msg: VerifiedMessage) -> EnrollReply:
        request = msg.envelope.body(EnrollRequest)
        if msg.first_contact:
            if self.server is not None and self.server.tokens.get(request.token_id) is not None:
                try:
                    reply = self.server.handle_enroll(
                        request,
                        self_signature_verified_with=request.verify_key,
                        sender=msg.sender,
                        peer_curve_key=msg.peer,
                    )
                finally:
                    self.refresh_tokens()
                return self._admit(reply)
            # A token this node's parent issued: the edge admitted the key only if it
            # knows the token, so this happens for a relay chain; pass it up.
            return self._admit(await self._relay_enroll(request))
        # A certified neighbour relays a request for a token we hold.
        cert = msg.certificate
        if cert is None or cert.tier is Tier.END:
            raise AuthenticationError("only edge and cloud nodes relay enrollments")
        if self.server is None or self.server.tokens.get(request.token_id) is None:
            return self._admit(await self._relay_enroll(request))
        try:
            return self._admit(self.server.handle_enroll(request))
        finally:
            self.refresh_tokens()

    def _admit(self, reply: EnrollReply) -> EnrollReply:
        """Know the new certificate now, so ZAP admits the node's own key when it reconnects."""
        chain = [] if reply.issuer_certificate is None else [reply.issuer_certificate]
        self.node.directory.add_certificate(reply.certificate, intermediates=chain)
        return reply

    async def _relay_enroll(self, request: EnrollRequest) -> EnrollReply:
        parent = self.node.parent_id
        if parent is None:
            raise TokenError("unknown join token")
        answer = await self.node.request(
            parent, MSG_ENROLL_REQUEST, request, timeout=self._relay_timeout
        )
        reply = answer.envelope.body(EnrollReply)
        own = self.node._signed_cert.to_bytes()
        return reply.model_copy(update={"server_certificate": own})

    async def on_renew(self, msg: VerifiedMessage) -> RenewReply:
        request = msg.envelope.body(RenewRequest)
        cert = msg.certificate
        if cert is None:
            raise AuthenticationError("renewal needs a certified sender")
        target = SignedCertificate.from_bytes(request.certificate).unverified_certificate()
        relayed = msg.relayed or cert.node_id != target.node_id
        if relayed and cert.tier is Tier.END:
            raise AuthenticationError("a node may only renew its own certificate")
        if self.server is not None and target.issuer == self.server.authority_id:
            return self.server.handle_renew(request, sender=None if relayed else msg.sender)
        parent = self.node.parent_id
        if parent is None:
            raise NoRoute(f"no authority here for issuer {target.issuer!r}")
        answer = await self.node.request(
            parent, MSG_CERT_RENEW, request, timeout=self._relay_timeout
        )
        return answer.envelope.body(RenewReply)


def enrollment_service(
    data_dir: str | Path | None = None,
    *,
    passphrase: str | None = None,
    identity: NodeIdentity | None = None,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    relay_timeout: float = 10.0,
    token_poll_s: float = 1.0,
    renew_check_s: float | None = 5.0,
    clock: Callable[[], float] = time.time,
    audit: Callable[[EnrollmentAudit], None] = _log_audit,
    installed: list[EnrollmentService] | None = None,
) -> Callable[[MeshNode], None]:
    """A daemon service: ``run_node(config, services=[enrollment_service()])``.

    Defaults come from the node: ``data_dir`` from its config, ``identity``
    (for an edge's delegated authority) the node's own, ``passphrase`` (for the
    cloud's root key, only read when ``authority/`` exists) as the daemon
    reads it (``passphrase_file`` in node.toml, else ``$SECUREMESH_PASSPHRASE``).
    Pass ``installed`` to get the :class:`EnrollmentService` object back.
    Harmless on a node with no authority (a plain edge relays; a device
    answers nothing but renews its own certificate).
    """

    def install(node: MeshNode) -> None:
        from securemesh.policy import AllowTypes  # noqa: PLC0415

        if data_dir is not None:
            path = Path(data_dir)
        elif node.config.data_dir is not None:
            path = Path(node.config.data_dir)
        else:
            raise ConfigError("enrollment needs the node's data_dir")
        secret = passphrase
        if secret is None and (path / AUTHORITY_DIR / Authority.KEY_FILE).exists():
            from securemesh.node._daemon import load_passphrase  # noqa: PLC0415

            secret = load_passphrase(node.config)

        ident = identity if identity is not None else node._identity
        service = EnrollmentService(
            node,
            path,
            identity=ident,
            passphrase=secret,
            lifetime_s=lifetime_s,
            relay_timeout=relay_timeout,
            clock=clock,
            audit=audit,
        )
        node.on(
            MSG_ENROLL_REQUEST,
            service.on_enroll,
            policy=AllowTypes(types=[MSG_ENROLL_REQUEST], tiers=["edge", "cloud"]),
            first_contact=_declared_key,
        )
        node.on(MSG_CERT_RENEW, service.on_renew, policy=AllowTypes(types=[MSG_CERT_RENEW]))
        service.refresh_tokens()
        if service.sync is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: no polling
                task = asyncio.get_running_loop().create_task(service.poll_tokens(token_poll_s))
                # Cancelled with the node's receive loops on stop() (not drained).
                node._loops.append(task)
        if renew_check_s is not None:
            with contextlib.suppress(RuntimeError):
                task = asyncio.get_running_loop().create_task(service.auto_renew(renew_check_s))
                node._loops.append(task)
        if installed is not None:
            installed.append(service)

    return install
