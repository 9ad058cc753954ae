"""Enrollment and renewal on a running node: the wiring between MeshNode and securemesh.enroll.

Theory of operation
-------------------
:mod:`securemesh.enroll` holds the protocol and the pure server logic
(:class:`~securemesh.enroll.EnrollmentServer`); this module puts it on the bus:

* ``enroll.request`` is registered as a *first-contact* type: a join-token
  peer (its CURVE key admitted by :class:`~securemesh.enroll.TokenKeySync`
  through :meth:`Directory.admit_token_key`) may send it, self-signed by the
  new identity key that its body declares (the pipeline checks the envelope
  against that key). The handler passes the request, the verified sender and
  the transport-authenticated CURVE key to
  :meth:`EnrollmentServer.handle_enroll` (token proof, one-time use, tier and
  roles from the token), learns the issued certificate in the directory (so
  the node can connect with its own key right away) and retires the token key.
* An edge that does not hold the token (``TokenError``) and has an
  ``upstream`` (the cloud's node id) relays the request body to the cloud in
  its own SIGNED ``enroll.request`` and relays the reply; the cloud accepts
  ``enroll.request`` from certified ``edge`` nodes (without a CURVE binding:
  the token proof and the self-signature in the body still bind it).
* ``cert.renew`` from any certified node is answered by
  :meth:`EnrollmentServer.handle_renew` (valid, unrevoked, issued here). A
  node with a parent first pulls the newest revocation lists from it
  (:meth:`MeshNode.sync_revocation_lists`), so a renewal is checked against
  the newest list known on the path; if the parent cannot confirm it, the
  renewal is refused (``no_route``) and the node retries later (it renews at
  half lifetime). The cloud checks the list on its disk as well (the daemon's
  ``revocation_list`` callable), so a ``securemesh revoke`` counts at once.

The client side of renewal (a node renewing its own certificate at half its
lifetime) is :meth:`MeshNode.renew_certificate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from securemesh.crypto.certs import SignedCertificate
from securemesh.errors import AuthenticationError, NoRoute, SecureMeshError, TokenError
from securemesh.policy import AllowTypes
from securemesh.wire import parse_body

if TYPE_CHECKING:
    from securemesh.enroll import EnrollmentServer, EnrollReply, RenewReply
    from securemesh.node._node import MeshNode
    from securemesh.node._pipeline import FirstContactMessage, VerifiedMessage

__all__ = ["serve_enrollment"]


def serve_enrollment(
    node: MeshNode,
    server: EnrollmentServer,
    *,
    upstream: str | None = None,
    on_enrolled: Callable[[str], object] | None = None,
    on_renewed: Callable[[str], object] | None = None,
) -> None:
    """Answer ``enroll.request`` (first contact, or relayed by an edge) and ``cert.renew``."""
    from securemesh.enroll import (  # noqa: PLC0415 - keep securemesh.node light
        MSG_CERT_RENEW,
        MSG_ENROLL_REQUEST,
        EnrollReply,
        EnrollRequest,
        RenewRequest,
    )

    def declared_key(body: bytes) -> bytes:
        return parse_body(EnrollRequest, body).verify_key

    def learn(certificate: bytes, issuer: bytes | None, *, admit: bool) -> None:
        # admit: the node enrolled or renewed here directly may connect here; one
        # whose request an edge relayed sits below that edge (admission by topology)
        inters = [] if issuer is None else [issuer]
        node.directory.add_certificate(certificate, intermediates=inters, admit=admit)

    async def on_enroll(msg: VerifiedMessage | FirstContactMessage) -> EnrollReply:
        # opted in (first_contact= below): a join-token peer's request arrives as a
        # FirstContactMessage; an edge relaying a device's request sends a VerifiedMessage
        request = msg.body(EnrollRequest)
        if msg.first_contact:
            if request.node_id != msg.sender:
                raise AuthenticationError("the envelope sender is not the requested node id")
            try:
                reply = server.handle_enroll(
                    request,
                    self_signature_verified_with=request.verify_key,
                    sender=msg.sender,
                    peer_curve_key=msg.peer,
                )
            except TokenError:
                if upstream is None or upstream == node.node_id:
                    raise
                relayed = await node.request(upstream, MSG_ENROLL_REQUEST, request)
                reply = relayed.body(EnrollReply)
            node.directory.retire_token_key(msg.peer)
        else:
            reply = server.handle_enroll(request, peer_curve_key=None)
        learn(reply.certificate, reply.issuer_certificate, admit=msg.first_contact)
        if on_enrolled is not None:
            on_enrolled(request.node_id)
        return reply

    async def on_renew(msg: VerifiedMessage) -> RenewReply:
        if node.config.parent is not None:
            # check against the newest list known anywhere on the path (issue #9 item 2)
            try:
                await node.sync_revocation_lists(timeout=node.config.limits.request_timeout / 2)
            except (TimeoutError, SecureMeshError) as exc:
                raise NoRoute("the revocation list could not be confirmed upstream") from exc
        reply = server.handle_renew(msg.body(RenewRequest), sender=msg.sender)
        learn(reply.certificate, reply.issuer_certificate, admit=not msg.relayed)
        renewed = SignedCertificate.from_bytes(reply.certificate).unverified_certificate()
        if renewed.delegation is not None:
            # an edge renewed its delegation here: its devices' new certificates chain to it
            node.directory.add_delegation(reply.certificate)
        if on_renewed is not None:
            on_renewed(msg.sender)
        return reply

    node.on_protocol(
        MSG_ENROLL_REQUEST,
        on_enroll,
        policy=AllowTypes(types=[MSG_ENROLL_REQUEST], tiers=["edge"]),
        first_contact=declared_key,
    )
    node.on_protocol(MSG_CERT_RENEW, on_renew, policy=AllowTypes(types=[MSG_CERT_RENEW]))
