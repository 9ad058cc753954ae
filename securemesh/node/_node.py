"""MeshNode: the asyncio runtime of one mesh node over the transport seam.

Theory of operation
-------------------
**Core and components.** This class is the core: links, transport, receive
loops, the parent link, status. The tables live in components that each own
their state and use only what :class:`~securemesh.node._core.Core` lists
(encode, send, request, spawn, learn, reject): dispatch
(:mod:`~securemesh.node._dispatch`), the request table
(:mod:`~securemesh.node._requests`), the route table
(:mod:`~securemesh.node._routes`), the session table
(:mod:`~securemesh.node._sessions`), certificate lookup and hold
(:mod:`~securemesh.node._lookup`) and revocation
(:mod:`~securemesh.node._revocation`). The sections below describe the
behaviour as a whole; each component's module says what it owns.

**Links.** An edge or cloud node *listens* (one :class:`~securemesh.transport.Listener`,
ROUTER): each authenticated CURVE key that sends a verified message becomes a
*child link*. A device or edge *connects* to its parent (one
:class:`~securemesh.transport.Connection`, DEALER): the *parent link*. The first
message on the parent link is ``node.hello`` (REQUEST, recipient empty): it
carries our certificate (and the delegate that issued it); the parent's reply
carries the parent's certificate and those of its ancestors, so a device can
verify messages from the cloud. Every received message runs the
:class:`~securemesh.node._pipeline.Pipeline` (steps 1-6), then is dispatched
here (step 7).

**Routing** (a tree: loop-free by construction). A route table maps node ids
to child links; it is learned from verified messages arriving on child links
(source learning) and from ``route.announce`` (an edge lists the nodes it
reaches, with their certificates, so its parent can admit and verify them).
A route is set or moved only on evidence signed by the routed node itself,
fresher than what is known (:mod:`securemesh.node._attach`): its attachment
statement from its hello to its parent, forwarded in the announcement, or a
relayed envelope of it with a higher sequence -- so a rogue edge cannot
attract the traffic of a device attached elsewhere.
A message whose recipient is another node is forwarded unchanged — the
origin's signature stays intact and is verified again at every hop:

* from a child link: to the route's child link (never back where it came
  from), else up to the parent (the default route);
* from the parent link: only down to a child link; else ``no_route``.

So a message goes up at most the tree depth and down at most the tree depth,
and never loops. Only SIGNED envelopes are forwarded (a MAC is hop-local).

**Request/reply.** :meth:`MeshNode.request` sets ``Flags.REQUEST`` and a random
16-byte correlation id, and waits (with a timeout) for a REPLY with that id
*from the addressed node* — a reply that answers no pending request is
rejected as ``unexpected_reply`` (the pipeline asks :meth:`_reply_ok`, i.e. the
request table). A
handler's return value becomes the REPLY (same message type, or
``mesh.error`` if it raised: reason code and the error's ``public_detail``);
the reply goes back down the link the request came on. A message rejected in
the pipeline gets no reply at all (protocol.md §7, "reply or silence").
Forwarding hops remember forwarded requests (bounded, expiring) and let each
matching reply through once.
The caller of a request that got no reply gets a ``TimeoutError`` that says
who, what, how long, and why there may be no reply (:func:`no_reply_message`).

**Broadcast.** :meth:`MeshNode.broadcast` sends one SIGNED envelope with an
empty recipient to every child link; each child handles it and re-broadcasts
the same frames to its own children. Broadcasts are accepted only from the
parent link; the per-origin replay window drops duplicates.

**Session fast path.** :meth:`MeshNode.send`/:meth:`request` with
``auth="session"`` to a *direct* peer run the :mod:`securemesh.session`
handshake once (``session.hello`` REQUEST/REPLY, then ``session.finish``, all
SIGNED) and then send MAC-mode envelopes keyed with
:meth:`~securemesh.session.Session.envelope_mac_keys`; the session id is the
envelope ``key_id``. A session is replaced by a fresh handshake after
``session.max_age`` seconds or ``session.max_messages`` messages; the old one
still verifies arriving messages for another ``max_age``. To a node that is
not a direct peer, ``auth="session"`` falls back to SIGNED.

**Revocation.** ``mesh.revocation`` (a broadcast from a cloud node, the signed
list in raw frame 0) is verified and installed by the directory (rollbacks
refused), then the node drops routes and sessions of revoked nodes and calls
:meth:`Listener.reauthenticate`, so a revoked peer is cut off on its live
connection, and forwards the broadcast to its children.

**Revocation sync.** A broadcast missed while a node was down is not lost:
after every (re)connect to its parent (the hello) and every
``revocation_sync_interval`` seconds, a node sends ``revocation.sync`` with
its installed list version per root; the parent answers with its own and
every newer signed list as a raw frame. Each list is verified exactly like a
broadcast one (root signature, rollbacks refused), installed, enforced, and
passed down to the children as a ``mesh.revocation`` broadcast of this node
(an edge may send it to its children: the list is signed by the root, not by
the broadcaster). Lists that fail are counted and audited.

**Unknown origins.** A relayed message whose origin has no certificate here
(or only an expired one: it may have been renewed since) fails pipeline step
3 (``unknown_sender``, ``certificate_expired``). If an enrolled edge/cloud
neighbour relayed it, it is held in :attr:`MeshNode.held` (a bounded
:class:`~securemesh.node._pipeline.HoldBuffer`) instead of being rejected, and
``cert.lookup`` goes to that neighbour, which verified the message before
forwarding it and so holds the origin's current certificate (one lookup per
origin at a time).
When the lookup ends, the held messages run the whole pipeline again, in
arrival order and before anything else can run on the loop (so the learned
certificate verifies them before any later message of that origin), then
are routed in that order by the lookup task; only a send that blocks on a
full queue lets a later message of the same origin overtake one of them.
What fails again, what the buffer pushes out and what is held too long is
rejected as usual. All of it happens on the rejection path: an accepted
message costs nothing extra.

**Back-pressure and concurrency.** One receive loop per channel; the pipeline
and built-in handlers run inline (no task per message); ``async`` user handlers
run as tasks, at most ``limits.max_inflight`` at once (the loop waits for a free
slot, so the transport's bounded queues push back); plain functions run inline
(the fast path). Forwarding waits at most ``limits.forward_timeout`` for a full
queue, then drops and counts.

**Shutdown.** :meth:`MeshNode.stop` stops accepting new requests (they get
``mesh.error`` ``unavailable``), waits up to ``drain_timeout`` for in-flight
handlers (their replies still go out), then cancels the loops and closes the
transport.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from securemesh.crypto.certs import SignedCertificate, Tier
from securemesh.crypto.identity import NodeIdentity
from securemesh.errors import (
    AuthenticationError,
    AuthorizationError,
    DecodeError,
    LocalError,
    NoRoute,
    PeerUnavailable,
    RemoteCallError,
    RemoteError,
    RouteRefused,
    SecureMeshError,
    SendTimeout,
    TransportClosed,
    TransportError,
)
from securemesh.messages import (
    CERT_LOOKUP,
    ERROR_MESSAGE_MAX,
    MESH_ERROR,
    MESH_PING,
    MESH_REVOCATION,
    NODE_HELLO,
    NODE_REPORT,
    REVOCATION_SYNC,
    ROUTE_ANNOUNCE,
    SESSION_FINISH,
    SESSION_HELLO,
    SESSION_RESET,
    Ack,
    ErrorReply,
    NodeHello,
    NodeReport,
    RouteAnnounce,
    b64d,
    b64e,
)
from securemesh.node._attach import (
    MAX_ATTACHMENT_SIZE,
    Attachment,
    sign_attachment,
    verify_attachment,
)
from securemesh.node._config import NodeConfig
from securemesh.node._core import Link as _Link
from securemesh.node._core import Reply
from securemesh.node._directory import Directory
from securemesh.node._dispatch import Dispatch
from securemesh.node._lookup import CertificateLookup
from securemesh.node._metrics import AuditHook, Metrics, Rejection
from securemesh.node._pipeline import (
    NO_SESSION,
    AnyMessage,
    FirstContactResolver,
    HoldBuffer,
    Pipeline,
    VerifiedMessage,
)
from securemesh.node._requests import RequestTable
from securemesh.node._revocation import RevocationState
from securemesh.node._routes import RouteTable
from securemesh.node._sessions import SessionEntry, SessionTable
from securemesh.policy import AllowTypes, Policy
from securemesh.transport import Channel, Connection, Listener, Transport
from securemesh.wire import (
    ZERO_ID,
    Envelope,
    Flags,
    Limits,
    ReplayGuard,
    encode_mac,
    encode_signed,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from securemesh.crypto.certs import Certificate

__all__ = ["Handler", "HandlerResult", "MeshNode", "Reply", "no_reply_message"]

log = logging.getLogger("securemesh.node")

Auth = Literal["signed", "session"]
#: Step-3 rejections of a relayed message that a certificate lookup may cure.
_LOOKUP_REASONS = ("unknown_sender", "certificate_expired")
_YIELD_EVERY = 256  # messages a receive loop handles back to back before it yields
#: Tiers a node's listener admits by tier alone; other nodes only if enrolled or
#: supplied here directly (``DirectoryEntry.admissible``): a device enrolled at an
#: edge cannot connect to the cloud although the cloud knows its certificate.
_CHILD_TIERS: dict[Tier, frozenset[Tier]] = {
    Tier.CLOUD: frozenset({Tier.EDGE, Tier.CLOUD}),
    Tier.EDGE: frozenset({Tier.EDGE}),
    Tier.END: frozenset(),
}


#: What a handler may return: a pydantic model, JSON bytes, a Reply, or None (``{}``).
HandlerResult = object
#: ``handler(msg)`` returning a HandlerResult, or an awaitable of one.
Handler = Callable[[VerifiedMessage], object]


def no_reply_message(peer: str, msg_type: str, waited: float) -> str:
    """The message of a request's TimeoutError: who, what, how long, and why it may be."""
    return (
        f"no reply from {peer!r} to {msg_type!r} within {waited:g} s: a refused request "
        "(not authorized on a hop, no handler, bad signature, ...) gets no reply, so check "
        "the peer's and every hop's policy and handlers (their status.json counts rejections)"
    )


def _builtin_policy(msg_type: str, tiers: list[str] | None = None) -> Policy:
    return AllowTypes(types=[msg_type], tiers=tiers)


def renewal_due_at(cert: Certificate, fraction: float) -> float:
    """When ``fraction`` of ``cert``'s lifetime has passed (Unix s): time to renew it."""
    return cert.not_before + fraction * (cert.not_after - cert.not_before)


class MeshNode:
    """One node of the mesh (device, edge or cloud) over a :class:`Transport`.

    ``directory`` must be the one whose :meth:`Directory.authenticate` the
    transport uses as its ``authenticator`` (build the directory first, then the
    transport, then the node). ``certificate`` is this node's signed
    certificate; ``authority_certificate`` the delegated-authority certificate
    that issued it, if a delegate did.
    """

    def __init__(  # noqa: PLR0915 - wiring of the runtime's tables in one place
        self,
        config: NodeConfig,
        identity: NodeIdentity,
        certificate: SignedCertificate,
        directory: Directory,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.time,
        audit_hook: AuditHook | None = None,
        sequence: Callable[[], int] | None = None,
        authority_certificate: SignedCertificate | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        replay_restore: Mapping[str, int] | None = None,
        route_evidence_restore: Mapping[str, int] | None = None,
        hold: HoldBuffer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        # hot-path copies of the (frozen) configuration
        self._send_timeout = config.limits.send_timeout
        self._identity = identity
        self._signer = identity.signer
        self._clock = clock
        #: for durations (round-trip times), like ``clock`` injectable
        self._monotonic = monotonic
        self._rng = rng
        self.directory = directory
        self.transport = transport
        inters = [authority_certificate] if authority_certificate is not None else []
        cert = directory.add_certificate(certificate, intermediates=inters)
        if cert.verify_key != identity.verify_key or cert.curve_key != identity.curve_public:
            raise LocalError("the certificate does not name this identity's keys")
        if cert.node_id != config.node_id or cert.tier.value != config.tier:
            raise LocalError("the certificate's node id/tier differ from the configuration")
        self.certificate = cert
        self._signed_cert = certificate
        self._authority_cert = authority_certificate
        self.node_id = cert.node_id
        self.tier = cert.tier
        lim = config.limits
        self.limits = Limits(
            max_frames=lim.max_frames,
            max_body=lim.max_body,
            max_raw_frame=lim.max_raw_frame,
            max_total=max(64 * 1024 * 1024, lim.max_body + lim.max_raw_frame),
        )
        self.metrics = Metrics(audit_hook=audit_hook, log_window=lim.log_window)
        self._replay = ReplayGuard(
            max_senders=lim.max_senders,
            max_skew_ms=int(lim.max_clock_skew * 1000),
            restore=replay_restore,
            restored_at_ms=int(clock() * 1000),
        )
        #: sessions, handshakes and reset hints (component)
        self._sessions = SessionTable(self, signer=self._signer, rng=rng, clock=clock)
        self.pipeline = Pipeline(
            node_id=self.node_id,
            directory=directory,
            policy=config.policy.build(),
            limits=self.limits,
            replay=self._replay,
            clock=clock,
            max_skew_ms=int(lim.max_clock_skew * 1000),
            sessions=self._sessions.by_id,  # type: ignore[arg-type]  # SessionEntry fits SessionKeys
            reply_ok=self._reply_ok,
        )
        if sequence is None:
            counter = itertools.count(int(clock() * 1_000_000))
            sequence = counter.__next__
        self._next_seq = sequence
        #: our requests waiting for replies, and requests we relayed (component)
        self._requests: RequestTable[asyncio.Future[VerifiedMessage]] = RequestTable(
            clock=clock, forward_ttl=2 * lim.request_timeout
        )
        #: set when the route evidence moved on; the daemon then saves route_evidence()
        self.route_evidence_changed = asyncio.Event()
        #: routes, children, direct neighbours and route evidence (component)
        self._routes: RouteTable[_Link] = RouteTable(
            max_nodes=lim.max_senders,
            restore=route_evidence_restore,
            on_evidence=self.route_evidence_changed.set,
        )
        #: certificate lookups and the messages held for them (component)
        self._lookup = CertificateLookup(
            self, hold if hold is not None else HoldBuffer(**config.hold.model_dump())
        )
        self._upstream_certs: list[str] = []
        self._listener: Listener | None = None
        self._parent_conn: Connection | None = None
        self._parent_link: _Link | None = None
        self.parent_id: str | None = None
        self.parent_ready = asyncio.Event()
        self.parent_rtt: float | None = None
        self._parent_failures = 0
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: the handler table and the handlers' slots (component)
        self._dispatch = Dispatch(self, max_inflight=lim.max_inflight)
        self._started_at = clock()
        self._stopped = False
        #: Called with our new signed certificate after a renewal (the daemon saves it).
        self.on_certificate: list[Callable[[SignedCertificate], None]] = []
        #: Extra typed ``node.report`` fields (``[report]``, offered services): set by assembly.
        self.report_fields: Callable[[], Mapping[str, Any]] = dict
        #: revocation lists: installed, served, synced, enforced (component)
        self._revocation = RevocationState(self)
        directory.on_revoked.append(self._on_revoked)
        # admission by topology: whole tiers that may be our children (Directory docstring)
        directory.admit_tiers = _CHILD_TIERS[self.tier]
        self._install_builtins()

    # ------------------------------------------------------------ registration

    def on(
        self,
        msg_type: str,
        handler: Handler | None,
        *,
        policy: Policy | None = None,
        relay_policy: Policy | None = None,
        first_contact: FirstContactResolver | None = None,
    ) -> None:
        """Register ``handler`` for ``msg_type`` (replacing any previous one).

        ``handler(msg: VerifiedMessage)`` may be ``async`` (runs as a task,
        bounded by ``limits.max_inflight``) or a plain function (runs inline
        in the receive loop: keep it short). For a REQUEST its return value —
        a pydantic model, JSON bytes, a :class:`Reply` with raw frames, or
        ``None`` (an empty ``{}``) — is sent back as the REPLY; an exception
        becomes a ``mesh.error`` reply (a :class:`RemoteError`'s ``reason`` as
        the code and its ``public_detail`` as the message, e.g. the body field
        that failed validation; anything else ``internal`` with no message).

        ``policy`` *narrows* the operator's ``[policy]`` for this type: a message
        is authorized only if both allow it (:func:`~securemesh.node.combine_policies`),
        so a service can never widen what the operator allowed. ``relay_policy``
        does the same for messages of this type that this node forwards; with
        both, the pipeline admits ``operator AND (policy OR relay_policy)`` and
        ``handler`` runs only for senders ``policy`` allows (checked before
        dispatch; a refusal there is silent, counted and audited like the pipeline's).
        ``handler`` may be None to only relay the type.
        ``first_contact``: also accept this type from join-token peers
        (enrollment); the resolver reads the self-declared verify key from the
        unverified body and the envelope must verify against it. Such a message
        is a :class:`~securemesh.node.FirstContactMessage`, not a
        VerifiedMessage, and only a handler registered with ``first_contact``
        gets one: registering the type again without it refuses them.
        """
        from securemesh.node._policy import combine_policies  # noqa: PLC0415

        if handler is not None:
            local = policy if policy is not None and relay_policy is not None else None
            self._dispatch.register(
                msg_type,
                handler,
                builtin=False,
                local_policy=local,
                first_contact=first_contact is not None,
            )
        combined = combine_policies(self.pipeline.policy, policy, relay_policy)
        if combined is not None:
            self.pipeline.set_type_policy(msg_type, combined)
        if first_contact is not None:
            self.pipeline.allow_first_contact(msg_type, first_contact)

    def on_protocol(
        self,
        msg_type: str,
        handler: Handler | None,
        *,
        policy: Policy,
        first_contact: FirstContactResolver | None = None,
    ) -> None:
        """The runtime's own protocol types (enrollment, audit ingest and relay).

        Like the built-ins (``node.hello`` ...), ``policy`` is the whole rule for
        the type, independent of the operator's ``[policy]``: not for services
        (they use :meth:`on`, whose policy can only narrow the operator's).
        """
        if handler is not None:
            self._dispatch.register(
                msg_type, handler, builtin=False, first_contact=first_contact is not None
            )
        self.pipeline.set_type_policy(msg_type, policy)
        if first_contact is not None:
            self.pipeline.allow_first_contact(msg_type, first_contact)

    def _builtin(self, msg_type: str, fn: Handler, policy: Policy) -> None:
        self._dispatch.register(msg_type, fn, builtin=True)
        self.pipeline.set_type_policy(msg_type, policy)

    def _install_builtins(self) -> None:
        self._builtin(NODE_HELLO, self._on_hello, _builtin_policy(NODE_HELLO))
        self._builtin(NODE_REPORT, self._on_report, _builtin_policy(NODE_REPORT))
        self._builtin(MESH_PING, self._on_ping, _builtin_policy(MESH_PING))
        self._builtin(
            ROUTE_ANNOUNCE, self._on_announce, _builtin_policy(ROUTE_ANNOUNCE, ["edge", "cloud"])
        )
        # an edge passes on lists it pulled; the list is root-signed, not the broadcaster's
        self._builtin(
            MESH_REVOCATION,
            self._revocation.on_revocation,
            _builtin_policy(MESH_REVOCATION, ["cloud", "edge"]),
        )
        self._builtin(REVOCATION_SYNC, self._revocation.on_sync, _builtin_policy(REVOCATION_SYNC))
        sessions = self._sessions
        self._builtin(SESSION_HELLO, sessions.on_hello, _builtin_policy(SESSION_HELLO))
        self._builtin(SESSION_FINISH, sessions.on_finish, _builtin_policy(SESSION_FINISH))
        self._builtin(SESSION_RESET, sessions.on_reset, _builtin_policy(SESSION_RESET))
        self._builtin(CERT_LOOKUP, self._lookup.on_cert_lookup, _builtin_policy(CERT_LOOKUP))

    # --------------------------------------------------------------- lifecycle

    @property
    def address(self) -> str | None:
        """The resolved listen address (after :meth:`start`), if this node listens."""
        return None if self._listener is None else self._listener.address

    @property
    def listener(self) -> Listener | None:
        return self._listener

    async def start(self) -> None:
        """Listen and/or connect to the parent; returns once the sockets exist.

        Use :meth:`wait_parent` to wait for the parent's hello.
        """
        cfg = self.config
        if cfg.listen is not None:
            self._listener = await self.transport.listen(cfg.listen)
            self._loops.append(asyncio.create_task(self._recv_loop(self._listener, False)))
        if cfg.parent is not None:
            conn = await self.transport.connect(cfg.parent.endpoint, cfg.parent.curve_key_bytes)
            self._parent_conn = conn
            self._parent_link = _Link(conn, conn.server_key, is_parent=True, now=self._clock())
            self._loops.append(asyncio.create_task(self._recv_loop(conn, True)))
        self._loops.append(asyncio.create_task(self._maintenance()))

    async def wait_parent(self, timeout: float) -> None:
        """Wait until the parent answered our hello (TimeoutError otherwise)."""
        await asyncio.wait_for(self.parent_ready.wait(), timeout)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Graceful stop: refuse new requests, finish in-flight handlers, close."""
        if self._stopped:
            return
        self._dispatch.draining = True
        timeout = self.config.limits.drain_timeout if drain_timeout is None else drain_timeout
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._stopped = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        for waiter in self._requests.drain():
            if not waiter.done():
                waiter.set_exception(TransportClosed("node stopped"))
        self._sessions.close()
        await self.transport.close()

    @property
    def clock(self) -> Callable[[], float]:
        """The node's wall clock (Unix seconds; the ``clock`` it was built with)."""
        return self._clock

    def replay_high_water_marks(self) -> dict[str, int]:
        """Every sender's highest accepted sequence, to restore after a restart."""
        return self._replay.high_water_marks()

    def route_evidence(self) -> dict[str, int]:
        """The sequence of the freshest route evidence seen per node, to restore after a restart.

        Without it a restarted parent would take any validly signed attachment
        statement again — including an old one an edge kept from a time the
        device was attached below it — and route the device there.
        """
        return self._routes.evidence()

    # ---------------------------------------------------------- certificate

    @property
    def signed_certificate(self) -> SignedCertificate:
        """This node's current signed certificate (changes on renewal)."""
        return self._signed_cert

    @property
    def authority_certificate(self) -> SignedCertificate | None:
        """The delegated-authority certificate that issued ours, if a delegate did."""
        return self._authority_cert

    def _renewal_target(self) -> str | None:
        issuer = self.certificate.issuer
        if self.directory.trust.root_key(issuer) is None:
            return issuer  # a delegated authority: an edge's node id
        if self.config.authority_node is not None:
            return self.config.authority_node
        for text in self._upstream_certs:
            try:
                cert = SignedCertificate.from_bytes(b64d(text)).unverified_certificate()
            except RemoteError:
                continue
            if cert.tier is Tier.CLOUD and cert.node_id != self.node_id:
                return cert.node_id
        return None

    def renewal_due(self) -> bool:
        """True once ``renew_fraction`` of the certificate's lifetime has passed."""
        return self._clock() >= renewal_due_at(self.certificate, self.config.renew_fraction)

    async def renew_certificate(self, *, timeout: float | None = None) -> SignedCertificate:
        """Renew our certificate over the bus (``cert.renew``) and announce it to neighbours."""
        from securemesh.enroll import (  # noqa: PLC0415 - keep the import of the node light
            MSG_CERT_RENEW,
            RenewReply,
            accept_renew_reply,
            build_renew_request,
        )

        dest = self._renewal_target()
        if dest is None or dest == self.node_id:
            raise LocalError("no authority to renew with (set authority_node in node.toml)")
        reply = await self.request(
            dest, MSG_CERT_RENEW, build_renew_request(self._signed_cert), timeout=timeout
        )
        signed = accept_renew_reply(
            self._identity,
            self._signed_cert,
            reply.body(RenewReply),
            self.directory.trust,
            self._clock(),
        )
        await self.install_certificate(signed)
        return signed

    # ---------------------------------------------------------------- sending

    def _encode(
        self,
        recipient: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview],
        *,
        flags: Flags = Flags.NONE,
        correlation_id: bytes = ZERO_ID,
        session: SessionEntry | None = None,
    ) -> list[bytes | memoryview]:
        ts = int(self._clock() * 1000)
        if session is None:
            return encode_signed(
                msg_type=msg_type,
                sender=self.node_id,
                recipient=recipient,
                sequence=self._next_seq(),
                timestamp_ms=ts,
                body=body,
                frames=frames,
                signer=self._signer,
                correlation_id=correlation_id,
                flags=flags,
                limits=self.limits,
            )
        session.sent += 1
        return encode_mac(
            msg_type=msg_type,
            sender=self.node_id,
            recipient=recipient,
            sequence=self._next_seq(),
            timestamp_ms=ts,
            body=body,
            frames=frames,
            session_id=session.session_id,
            key=session.send_key,
            correlation_id=correlation_id,
            flags=flags,
            limits=self.limits,
        )

    def _link_to(self, dest: str) -> _Link:
        link = self._routes.get(dest)
        if link is not None:
            return link
        if dest == self.parent_id and self._parent_link is not None:
            return self._parent_link
        if self._parent_link is not None:
            return self._parent_link
        raise PeerUnavailable(f"no route to {dest!r}")

    async def _send_on(self, link: _Link, frames: Sequence[bytes | memoryview]) -> None:
        # straight to the channel (one coroutine less than link.send: hot path)
        await link.channel.send(
            link.peer, cast("Sequence[bytes]", frames), timeout=self._send_timeout
        )
        self.metrics.sent += 1

    async def send(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        auth: Auth = "signed",
    ) -> None:
        """One-way message to node ``dest`` (routed; raises TransportError if unroutable)."""
        if dest == self.node_id:
            raise LocalError("a node does not send to itself")
        session: SessionEntry | None = None
        now = 0.0
        if auth == "session":
            # one clock reading for the freshness check and the timestamp (a stream's
            # usual case: the session is fresh)
            sessions = self._sessions
            session = sessions.out.get(dest)
            now = self._clock()
            if session is None or not sessions.fresh(session, now):
                session = await sessions.session_for(dest)
                now = self._clock()  # after the handshake: the timestamp is read afresh
        if session is not None:
            # (_encode's session case inline: one call less per message on a stream)
            session.sent += 1
            link = session.link
            out = encode_mac(
                msg_type=msg_type,
                sender=self.node_id,
                recipient=dest,
                sequence=self._next_seq(),
                timestamp_ms=int(now * 1000),
                body=body,
                frames=frames,
                session_id=session.session_id,
                key=session.send_key,
                limits=self.limits,
            )
        else:  # signed, or no direct session with dest (session_for said None)
            link = self._link_to(dest)
            out = self._encode(dest, msg_type, body, frames)
        # straight to the channel (as _send_on, one coroutine frame less: the hot path;
        # memoryview frames go to ZeroMQ as they are, hence the ignore, not a cast call)
        await link.channel.send(link.peer, out, timeout=self._send_timeout)  # type: ignore[arg-type]
        self.metrics.sent += 1

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
        auth: Auth = "signed",
    ) -> VerifiedMessage:
        """Send a REQUEST and return the verified REPLY from ``dest``.

        Raises :class:`TimeoutError` (the pending entry is dropped),
        :class:`~securemesh.errors.RemoteCallError` for a ``mesh.error`` reply,
        or a :class:`~securemesh.errors.TransportError`.
        """
        if dest == self.node_id:
            raise LocalError("a node does not send to itself")
        session = await self._sessions.session_for(dest) if auth == "session" else None
        link = session.link if session is not None else self._link_to(dest)
        return await self._request_on(
            link, dest, msg_type, body, frames, timeout=timeout, session=session, expect=dest
        )

    async def _request_on(
        self,
        link: _Link,
        recipient: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None,
        session: SessionEntry | None = None,
        expect: str | None,
    ) -> VerifiedMessage:
        cid = self._rng(16)
        future: asyncio.Future[VerifiedMessage] = asyncio.get_running_loop().create_future()
        requests = self._requests
        requests.open(cid, expect, future)
        try:
            out = self._encode(
                recipient,
                msg_type,
                body,
                frames,
                flags=Flags.REQUEST,
                correlation_id=cid,
                session=session,
            )
            await self._send_on(link, out)
            wait = self.config.limits.request_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(future, wait)
            except TimeoutError:
                raise TimeoutError(no_reply_message(recipient, msg_type, wait)) from None
        finally:
            requests.close(cid)

    async def broadcast(
        self, msg_type: str, body: BaseModel | bytes, frames: Sequence[bytes | memoryview] = ()
    ) -> int:
        """Send a SIGNED broadcast to every child link; return how many links took it."""
        out = self._encode("", msg_type, body, frames)
        return await self._fan_out(out, exclude=None)

    async def _fan_out(self, frames: Sequence[bytes | memoryview], exclude: _Link | None) -> int:
        timeout = self.config.limits.forward_timeout
        sent = 0
        for link in list(self._routes.children.values()):
            if link is exclude:
                continue
            try:
                await link.send(frames, timeout)
                sent += 1
            except PeerUnavailable:
                self.metrics.send_failures += 1
                self._drop_child(link)  # disconnected: it says hello again when back
            except TransportError:
                self.metrics.send_failures += 1
        self.metrics.sent += sent
        return sent

    def _drop_child(self, link: _Link) -> None:
        self._routes.drop_link(link)

    async def learn_certificate_from(
        self, msg: VerifiedMessage, node_id: str, *, timeout: float = 2.0
    ) -> bool:
        """Ask the direct neighbour that sent ``msg`` for ``node_id``'s certificate.

        For a handler that meets a node it has no (current) certificate for in
        a message's *content* (the cloud's audit ingest: a device's events
        relayed by its edge, signed with keys from a re-enrollment the cloud
        has not heard of). The neighbour must be an enrolled edge or cloud
        node; lookups of one node id are at most one per ``held.retry_after``
        (shared with the hold buffer). Returns whether a certificate was
        learned; never raises for a failed lookup.
        """
        return await self._lookup.learn_from(msg, node_id, timeout=timeout)

    @property
    def held(self) -> HoldBuffer:
        """Relayed messages from origins whose certificate is being looked up."""
        return self._lookup.held

    @held.setter
    def held(self, buffer: HoldBuffer) -> None:
        self._lookup.held = buffer

    # (for the daemon and the audit bus: the components' answers, by their old names)
    def _valid_now(self, node_id: str) -> bool:
        return self._lookup.valid_now(node_id)

    def _note_revocation_list(self, version: int, blob: bytes) -> None:
        self._revocation.note_list(version, blob)

    def _enforce_revocation(self) -> None:
        self._revocation.enforce()

    async def publish_revocation(self, revocation_list: bytes) -> int:
        """Install a signed revocation list here and broadcast it (cloud nodes)."""
        return await self._revocation.publish(revocation_list)

    @property
    def revocation_list_bytes(self) -> bytes | None:
        """The newest signed revocation list this node installed (to persist it)."""
        return self._revocation.list_bytes

    @property
    def revocation_list_version(self) -> int | None:
        """The version of :attr:`revocation_list_bytes`."""
        return self._revocation.list_version

    async def sync_revocation_lists(self, *, timeout: float | None = None) -> int:
        """Pull from the parent every revocation list newer than ours; return how many.

        Each list is verified like a broadcast one (root signature, no rollback),
        installed, enforced and passed down to our children. A list that fails
        is counted and audited, and the others still count.
        """
        return await self._revocation.sync(timeout=timeout)

    async def install_certificate(
        self,
        certificate: SignedCertificate,
        *,
        authority_certificate: SignedCertificate | None = None,
    ) -> Certificate:
        """Use a renewed certificate (same node id, tier and keys) and announce it.

        The certificate is verified into the directory first; then a
        ``node.hello`` carrying it goes to the parent (if connected) and to
        every child, so neighbours replace the old one. Raises
        :class:`~securemesh.errors.LocalError` if it names another node or keys.
        """
        inters = [authority_certificate or self._authority_cert]
        cert = self.directory.add_certificate(
            certificate, intermediates=[c for c in inters if c is not None]
        )
        if (
            cert.serial != certificate.unverified_certificate().serial
            or cert.node_id != self.node_id
            or cert.tier is not self.tier
            or cert.public_keys() != self.certificate.public_keys()
        ):
            raise LocalError("the renewed certificate does not replace this node's certificate")
        self.certificate = cert
        self._signed_cert = certificate
        if authority_certificate is not None:
            self._authority_cert = authority_certificate
        for callback in list(self.on_certificate):
            callback(certificate)
        if self._parent_link is not None and self.parent_ready.is_set():
            await self._hello_parent()
        if self._routes.children:
            await self._fan_out(self._encode("", NODE_HELLO, self._hello_body(), ()), exclude=None)
        return cert

    async def ping(self, dest: str, *, timeout: float | None = None) -> float:
        """Round-trip time to ``dest`` in seconds (a ``mesh.ping`` request)."""
        start = self._monotonic()
        await self.request(dest, MESH_PING, Ack(), timeout=timeout)
        return self._monotonic() - start

    # ---------------------------------------------------------------- receiving

    async def _recv_loop(self, channel: Channel, from_parent: bool) -> None:  # noqa: PLR0912 - the hot loop, one frame
        process = self.pipeline.process
        metrics = self.metrics
        take = self._take
        route = self._route
        recv_run = channel.recv_run_nowait
        burst = 0
        while not self._stopped:  # see _maintenance: a swallowed cancel must still end the loop
            try:
                # what is already here, without a coroutine: a held peer's run of
                # messages at once (the transport spends its fairness credit per message)
                got = recv_run()
                if got is None:
                    burst = 0
                    peer, one = await channel.recv()
                    run = [one]
                else:
                    peer, run = got
                    if burst >= _YIELD_EVERY:
                        # a flood never suspends this loop: let timers, heartbeats and
                        # the other links' loops run now and then
                        burst = 0
                        await asyncio.sleep(0)
                    else:
                        burst += len(run)
            except TransportClosed:
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("receive failed", extra={"event": "recv_error"})
                await asyncio.sleep(0.01)
                continue
            metrics.received += len(run)
            for frames in run:
                if self._stopped:  # as the while above, between a run's messages too
                    return  # type: ignore[unreachable]  # (a handler may have stopped the node)
                result = process(peer, frames, from_parent=from_parent)
                try:
                    # (a verified message straight to _route: one call less per message)
                    if type(result) is Rejection:
                        rest = take(result, channel, from_parent, frames)
                    else:
                        rest = route(result, channel, from_parent)  # type: ignore[arg-type]
                    if rest is not None:
                        await rest
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("dispatch failed", extra={"event": "dispatch_error"})

    def _take(
        self,
        result: AnyMessage | Rejection,
        channel: Channel,
        from_parent: bool,
        frames: Sequence[bytes],
    ) -> Awaitable[None] | None:
        """Deliver one pipeline result; return what is left to await, if anything.

        A relayed message from an origin we hold no (valid) certificate for is
        held while ``cert.lookup`` runs (``CertificateLookup.hold``, given its
        ``frames``); any other rejection is counted (and may trigger a
        session-reset hint). A verified message goes to :meth:`_route`, which
        does only what needs no await and hands back the rest: a one-way
        message for us to a plain-function handler — the common case of a
        stream — costs no coroutine at all.
        """
        if type(result) is Rejection:
            if result.reason in _LOOKUP_REASONS and self._lookup.hold(
                result, frames, channel, from_parent
            ):
                return None  # verified from step 1 again once the lookup ends
            self.metrics.reject(result)
            if result.detail == NO_SESSION:
                self._sessions.hint_reset(result, channel, from_parent)
            return None
        return self._route(cast("AnyMessage", result), channel, from_parent)

    def _reject(self, msg: AnyMessage, exc: RemoteError) -> None:
        env = msg.envelope
        self.metrics.reject(
            Rejection(exc.reason, msg.peer, env.sender, env.msg_type, str(exc), self._clock())
        )

    def _learn_link(self, msg: AnyMessage, channel: Channel) -> _Link:
        """The child link ``msg`` came on, made if new; learns direct peers and routes."""
        if msg.first_contact:
            # a join-token peer is not a child: no routes, no broadcasts; its
            # reply goes back on a throwaway link
            return _Link(channel, msg.peer, is_parent=False, now=self._clock())
        routes = self._routes
        link = routes.children.get(msg.peer)
        if link is None:
            link = _Link(channel, msg.peer, is_parent=False, now=self._clock())
            routes.add_child(link)
        env = msg.envelope
        if routes.learn(env.sender, link, env.sequence, relayed=msg.relayed) and (
            msg.relayed or env.msg_type != NODE_HELLO
        ):
            self._spawn(self._announce_nodes([env.sender]))
        return link

    def _route(
        self, msg: AnyMessage, channel: Channel, from_parent: bool
    ) -> Awaitable[None] | None:
        """Learn the link, then deliver here, take a broadcast, or forward.

        Synchronous up to the first await: returns what is left to await, if anything.
        """
        header = msg.envelope.header  # (header fields directly: the envelope's are properties)
        if from_parent:
            link = self._parent_link
            assert link is not None
        else:
            # The stream case inline: a known child whose route (and, for a direct
            # message, direct link and node id) is this link already -- RouteTable.learn
            # would change nothing (tests/node/test_node_route_table.py checks that).
            # Anything else learns through _learn_link.
            routes = self._routes
            sender = header.sender
            got = routes.children.get(msg.peer)
            if (
                got is None
                or routes.routes.get(sender) is not got
                or (
                    not msg.relayed
                    and (got.node_id != sender or routes.direct.get(sender) is not got)
                )
                or msg.first_contact
            ):
                got = self._learn_link(msg, channel)
            link = got
        link.last_seen = self._clock()
        msg.link = link
        recipient = header.recipient
        if recipient == self.node_id:
            self.metrics.accepted += 1
            if header.flags is Flags.REPLY:  # (never a first contact: no replies from them)
                self._resolve(cast("VerifiedMessage", msg))
                return None
            return self._dispatch.deliver(msg)
        if not recipient:
            self.metrics.accepted += 1
            return self._broadcast_in(msg, from_parent)
        return self._forward(msg, link, from_parent)

    async def _broadcast_in(self, msg: AnyMessage, from_parent: bool) -> None:
        """A broadcast: handle it here (if we handle its type), pass it to our children."""
        env = msg.envelope
        # (a broadcast is never a reply: the pipeline finds no request it answers)
        if env.msg_type == NODE_HELLO and not msg.relayed:
            rest = self._dispatch.deliver(msg)
            if rest is not None:
                await rest
            return
        if env.msg_type in self._dispatch:
            rest = self._dispatch.deliver(msg)
            if rest is not None:
                await rest
        if from_parent:
            try:
                await self._fan_out(env.frames, exclude=None)
            finally:
                if self._revocation.pending_cut:
                    await self._revocation.tell_revoked_then_cut(env.frames)

    async def _forward(self, msg: AnyMessage, link: _Link, from_parent: bool) -> None:
        env = msg.envelope
        dest = env.recipient
        out = self._routes.get(dest)
        if out is None and not from_parent and self._parent_link is not None:
            out = self._parent_link
        if out is None or out is link or msg.first_contact:
            self._reject(msg, NoRoute("no loop-free route to the recipient"))
            return
        if env.flags is Flags.REQUEST:
            self._requests.remember_forwarded(env.correlation_id, env.sender, dest)
        elif env.flags is Flags.REPLY:
            self._requests.forwarded_reply(env.correlation_id)
        try:
            await out.send(env.frames, self.config.limits.forward_timeout)
        except SendTimeout:
            self._dropped(out, dest, env.msg_type)
            return
        except TransportError:
            self.metrics.send_failures += 1
            return
        self.metrics.forwarded += 1

    def _dropped(self, link: _Link, dest: str, msg_type: str) -> None:
        """A send the transport dropped at once because ``link``'s peer queue is full."""
        self.metrics.send_failures += 1
        self.metrics.drop(
            Rejection(
                "peer_queue_full",
                link.peer,
                link.node_id or dest,
                msg_type,
                "dropped: the peer's queue is full (it does not read)",
                self._clock(),
            )
        )

    def _reply_ok(self, env: Envelope) -> bool:
        recipient = env.recipient
        return self._requests.reply_ok(
            env.correlation_id, env.sender, recipient, local=recipient == self.node_id
        )

    def _resolve(self, msg: VerifiedMessage) -> None:
        """A reply: hand it (or the ``mesh.error`` it carries) to the request waiting for it."""
        env = msg.envelope
        future = self._requests.take(env.correlation_id, env.sender)
        if future is None or future.done():
            return
        self.metrics.replies += 1
        if env.msg_type == MESH_ERROR:
            try:
                err = env.body(ErrorReply)
                text = f"{env.sender}: {err.code}" + (f": {err.message}" if err.message else "")
                future.set_exception(RemoteCallError(text, code=err.code, detail=err.message))
            except RemoteError:
                future.set_exception(RemoteCallError("malformed error reply"))
        else:
            future.set_result(msg)

    async def _send_error(self, msg: AnyMessage, code: str, message: str = "") -> None:
        text = "".join(c if c.isprintable() else "?" for c in message[:ERROR_MESSAGE_MAX])
        await self._send_reply(msg, ErrorReply(code=code, message=text), msg_type=MESH_ERROR)

    async def _send_reply(
        self, msg: AnyMessage, result: object, *, msg_type: str | None = None
    ) -> None:
        if isinstance(result, Reply):
            body, frames = result.body, result.frames
        elif result is None:
            body, frames = b"{}", ()
        else:
            body, frames = cast("BaseModel | bytes", result), ()
        env = msg.envelope
        session: SessionEntry | None = None
        if env.key_id != ZERO_ID:
            session = self._sessions.by_id.get(env.key_id)
        link = cast("_Link", msg.link)
        try:
            out = self._encode(
                env.sender,
                msg_type or env.msg_type,
                body,
                frames,
                flags=Flags.REPLY,
                correlation_id=env.correlation_id,
                session=session,
            )
            await self._send_on(link, out)
        except SendTimeout:  # the peer does not read: dropped (counted, logged, audited)
            self._dropped(link, env.sender, msg_type or env.msg_type)
        except SecureMeshError as exc:
            self.metrics.send_failures += 1
            log.warning(
                "reply not sent",
                extra={"event": "reply_failed", "msg_type": env.msg_type, "error": repr(exc)},
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(
                    "background task failed", extra={"event": "task_error", "error": repr(exc)}
                )

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- built-ins

    def _own_chain(self) -> list[str]:
        certs = [b64e(self._signed_cert.to_bytes())]
        if self._authority_cert is not None:
            certs.append(b64e(self._authority_cert.to_bytes()))
        return certs

    def _learn(
        self,
        blobs: Sequence[str],
        intermediates: Sequence[bytes] = (),
        msg: VerifiedMessage | None = None,
    ) -> list[Certificate]:
        """Add verified certificates to the directory; a refused one (e.g. key continuity)
        is logged and, when it came in ``msg``, counted and audited as a rejection."""
        learned: list[Certificate] = []
        for text in blobs:
            try:
                learned.append(  # second-hand: not admitted as a direct peer for it
                    self.directory.add_certificate(
                        b64d(text, max_size=4096), intermediates=intermediates, admit=False
                    )
                )
            except (RemoteError, LocalError) as exc:
                log.info(
                    "certificate not learned", extra={"event": "cert_refused", "error": str(exc)}
                )
                if msg is not None and isinstance(exc, RemoteError):
                    self._reject(msg, exc)
        return learned

    def _hello_body(self) -> NodeHello:
        chain = self._own_chain()
        extra = [c for c in self._upstream_certs if c not in chain]
        return NodeHello(certificates=(chain + extra)[:8])

    def _on_hello(self, msg: VerifiedMessage) -> NodeHello | None:
        if msg.relayed:
            raise AuthorizationError("hello is for direct peers only")
        body = msg.body(NodeHello)
        link = msg.link
        assert isinstance(link, _Link)
        if link.is_parent:
            # the parent's refreshed view: its certificate and its ancestors'
            self._learn(body.certificates[1:], msg=msg)
            self._upstream_certs = list(body.certificates)
            return None
        # a child: certificates[0] (the sender's) was learned by the pipeline,
        # the rest were its issuer chain. Its attachment statement is REQUIRED
        # (protocol.md §7.1, §12 step 3): without it this node could not prove
        # the child's route to its own parent.
        if body.attachment is None:
            error = DecodeError("a hello to the parent without an attachment statement")
            error.public_detail = "attachment: missing (required in a hello to the parent)"
            raise error
        self._keep_child_attachment(msg, body.attachment, link)
        if msg.envelope.flags is not Flags.REQUEST:
            return None
        if self._parent_link is not None:
            self._spawn(self._announce_nodes([msg.sender]))
        return self._hello_body()

    def _keep_child_attachment(self, msg: VerifiedMessage, text: str, link: _Link) -> None:
        """A direct child's attachment statement: check it names us, keep the newest."""
        assert msg.certificate is not None
        statement = verify_attachment(
            b64d(text, max_size=MAX_ATTACHMENT_SIZE), msg.certificate.verify_key, node_id=msg.sender
        )
        if statement.parent_key != self.certificate.curve_key:
            raise AuthenticationError("attachment statement names another parent")
        self._routes.keep_attachment(msg.sender, statement.sequence, text)
        # (the hello itself, a direct message, already set the route and its evidence)

    def _route_evidence(
        self, msg: VerifiedMessage, node_id: str, verify_key: bytes, blob: bytes | None
    ) -> None:
        """Route ``node_id`` via the announcing link on its own fresh attachment statement."""
        link = msg.link
        assert isinstance(link, _Link)
        if blob is None:
            raise RouteRefused(f"no attachment statement of {node_id!r}")
        statement = verify_attachment(blob, verify_key, node_id=node_id)
        if statement.parent_key != link.peer:
            owner = self.directory.node_for_curve_key(statement.parent_key)
            if owner is None or self._routes.get(owner) is not link:
                raise RouteRefused(f"{node_id!r} is not attached below the announcing peer")
        self._routes.route_on_statement(node_id, link, statement.sequence, b64e(blob))

    def _on_report(self, msg: VerifiedMessage) -> Ack:
        report = msg.body(NodeReport)
        link = msg.link
        if isinstance(link, _Link):
            link.report = report.model_dump()
        return Ack()

    def _on_ping(self, msg: VerifiedMessage) -> Ack:
        return Ack()

    def _on_announce(self, msg: VerifiedMessage) -> None:
        if msg.relayed:
            raise AuthorizationError("route announcements come from direct peers only")
        link = msg.link
        assert isinstance(link, _Link)
        if link.is_parent:
            raise AuthorizationError("route announcements come from children")
        body = msg.body(RouteAnnounce)
        authorities = [b64d(a, max_size=4096) for a in body.authorities]
        evidence: dict[str, bytes] = {}
        for text in body.attachments:
            blob = b64d(text, max_size=MAX_ATTACHMENT_SIZE)
            evidence[Attachment.parse(blob)[0].node_id] = blob
        learned = self._learn(body.certificates, authorities, msg)
        routed: list[str] = []
        for cert in learned:
            if cert.node_id == self.node_id:
                continue
            try:
                self._route_evidence(msg, cert.node_id, cert.verify_key, evidence.get(cert.node_id))
            except RemoteError as exc:
                self._reject(msg, exc)  # counted and audited; the rest still count
                continue
            routed.append(cert.node_id)
        self._routes.withdraw(body.withdrawn, link)
        if routed and self._parent_link is not None:
            self._spawn(self._announce_nodes(routed))

    # -------------------------------------------------------------- revocation

    def _on_revoked(self, node_ids: frozenset[str]) -> None:
        self._sessions.forget(node_ids)
        self._routes.forget(node_ids)

    # ------------------------------------------------------------- parent link

    async def _hello_parent(self) -> None:
        link = self._parent_link
        assert link is not None
        attachment = sign_attachment(
            self._signer,
            self.node_id,
            link.peer,
            sequence=self._next_seq(),
            timestamp_ms=int(self._clock() * 1000),
        )
        reply = await self._request_on(
            link,
            "",
            NODE_HELLO,
            NodeHello(certificates=self._own_chain(), attachment=b64e(attachment)),
            timeout=self.config.limits.request_timeout,
            expect=None,
        )
        if reply.relayed or reply.certificate is None:
            raise AuthenticationError("hello reply not from the parent itself")
        body = reply.body(NodeHello)
        self._learn(body.certificates[1:])
        self._upstream_certs = list(body.certificates)
        self.parent_id = reply.sender
        link.node_id = reply.sender
        self._routes.set_direct(reply.sender, link)
        self.parent_ready.set()
        if self._routes.children:
            # children may have said hello before we knew our ancestors: refresh them
            await self._fan_out(self._encode("", NODE_HELLO, self._hello_body(), ()), exclude=None)
        if self._routes:
            await self._announce_nodes(list(self._routes.routes))

    async def _announce_nodes(self, node_ids: Sequence[str]) -> None:
        link = self._parent_link
        if link is None or self.parent_id is None:
            return
        certs: list[str] = []
        attachments: list[str | None] = []
        authorities: list[str] = []
        for node_id in node_ids:
            signed = self.directory.signed_certificate(node_id)
            if signed is None:
                continue
            certs.append(b64e(signed.to_bytes()))
            attachments.append(self._routes.attachment(node_id))
            issuer = signed.unverified_certificate().issuer
            delegate = self.directory.trust.delegated_authorities.get(issuer)
            if delegate is not None:
                blob = b64e(delegate.to_bytes())
                if blob not in authorities:
                    authorities.append(blob)
        for start in range(0, len(certs), 256):
            body = RouteAnnounce(
                certificates=certs[start : start + 256],
                authorities=authorities[:8],
                attachments=[a for a in attachments[start : start + 256] if a is not None],
            )
            await self._send_on(link, self._encode(self.parent_id, ROUTE_ANNOUNCE, body, ()))

    async def _report_parent(self) -> None:
        if self.parent_id is None:
            return
        try:
            load = os.getloadavg()
        except OSError:
            load = (0.0, 0.0, 0.0)
        report = NodeReport(
            load_1m=float(load[0]),
            load_5m=float(load[1]),
            load_15m=float(load[2]),
            queue_length=len(self._tasks),
            capacity=self.config.limits.capacity,
            inflight=self._dispatch.inflight_count,
            rtt_ms=None if self.parent_rtt is None else self.parent_rtt * 1000.0,
            uptime_s=max(0.0, self._clock() - self._started_at),
            **self.report_fields(),
        )
        start = self._monotonic()
        await self.request(self.parent_id, NODE_REPORT, report)
        self.parent_rtt = self._monotonic() - start

    async def _maintenance(self) -> None:
        interval = self.config.heartbeat_interval
        # ``while not self._stopped`` and not ``while True``: on Python 3.11,
        # asyncio.wait_for can swallow a cancellation that arrives just as the
        # request it waits for completes, and stop() would then wait forever.
        while not self._stopped:
            if self._parent_link is not None:
                try:
                    if not self.parent_ready.is_set() or self._parent_failures:
                        await self._hello_parent()
                        self._revocation.synced_at = float("-inf")  # (re)connected: sync now
                    else:
                        await self._report_parent()
                    self._parent_failures = 0
                    since = self._clock() - self._revocation.synced_at
                    if since >= self.config.revocation_sync_interval:
                        await self._revocation.sync_quietly()
                except (TimeoutError, SecureMeshError) as exc:
                    self._parent_failures += 1
                    log.info(
                        "parent link not answering",
                        extra={"event": "parent_down", "error": repr(exc)},
                    )
                except Exception:  # a bug must not end the heartbeat loop for good
                    self._parent_failures += 1
                    log.exception("heartbeat to the parent failed", extra={"event": "parent_error"})
                if (
                    self.config.auto_renew
                    and not self._parent_failures
                    and self.parent_ready.is_set()
                    and self.renewal_due()
                ):
                    await self._try_renew()
            self._purge()
            delay = interval if self.parent_ready.is_set() or self._parent_link is None else 0.5
            await asyncio.sleep(min(delay, interval))

    async def _try_renew(self) -> None:
        try:
            await self.renew_certificate()
        except (TimeoutError, SecureMeshError) as exc:
            expired = self._clock() >= self.certificate.not_after
            log.warning(
                "certificate renewal failed"
                + ("; re-enroll with a fresh token" if expired else ""),
                extra={"event": "cert_renew_failed", "error": repr(exc), "expired": expired},
            )
            return
        log.info(
            "certificate renewed",
            extra={
                "event": "cert_renewed",
                "serial": self.certificate.serial,
                "not_after": self.certificate.not_after,
            },
        )

    def _purge(self) -> None:
        now = self._clock()
        self.metrics.flush_suppressed(now)
        self._lookup.expire(now)
        self._requests.purge()
        self._sessions.purge(now)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        """A JSON-friendly snapshot: peers, sessions, counters, rejections, parent, cert expiry."""
        now = self._clock()
        peers = []
        for link in self._routes.children.values():
            peers.append(
                {
                    "node_id": link.node_id,
                    "curve_key": link.peer.hex()[:16],
                    "last_seen_s_ago": round(now - link.last_seen, 3),
                    "report": link.report,
                }
            )
        rl_versions = {}
        for root in self.directory.trust.roots:
            rl = self.directory.trust.revocation_list(root)
            if rl is not None:
                rl_versions[root] = rl.version
        transport_stats = {}
        for name, channel in (("listener", self._listener), ("parent", self._parent_conn)):
            if channel is not None:
                transport_stats[name] = dataclasses.asdict(channel.stats)
        return {
            "node_id": self.node_id,
            "tier": self.tier.value,
            "uptime_s": round(now - self._started_at, 3),
            "listen": self.address,
            "parent": None
            if self.config.parent is None
            else {
                "endpoint": self.config.parent.endpoint,
                "node_id": self.parent_id,
                "connected": self.parent_ready.is_set() and not self._parent_failures,
                "rtt_ms": None if self.parent_rtt is None else round(self.parent_rtt * 1000, 3),
                "failures": self._parent_failures,
            },
            "peers": peers,
            "routes": len(self._routes),
            "sessions": {"count": len(self._sessions.by_id), "peers": self.session_peers()},
            "inflight": self._dispatch.inflight_count,
            "draining": self._dispatch.draining,
            "counters": self.metrics.snapshot(),
            "transport": transport_stats,
            "certificate": {
                "serial": self.certificate.serial,
                "not_after": self.certificate.not_after,
                "expires_in_s": round(self.certificate.not_after - now, 3),
            },
            "revocation_list_versions": rl_versions,
            "known_nodes": len(self.directory),
            "held": self.held.stats(),
            "replay": self.pipeline.replay_stats(),
            "refused_key_changes": self.directory.refused_key_changes,
        }

    def session_peers(self) -> list[str]:
        """The peers this node holds a session with (to send with)."""
        return self._sessions.peers()

    def peer_reports(self) -> dict[str, dict[str, object]]:
        """Each child neighbour's latest ``node.report`` body (only those that reported)."""
        return {
            link.node_id: dict(link.report)
            for link in self._routes.children.values()
            if link.node_id is not None and link.report is not None
        }

    def is_tier(self, tier: Tier) -> bool:
        return self.tier is tier
