"""The per-message verification pipeline: frames in, a VerifiedMessage or a Rejection out.

Theory of operation
-------------------
Every message a node receives runs these steps, in this order (ARCHITECTURE.md
§3, NODE.md); the first failing step decides the rejection's ``reason``:

1. **size** — :func:`securemesh.wire.decode` measures every frame against the
   node's :class:`~securemesh.wire.Limits` before reading any content
   (``oversize``); the transport already bounded frame count and frame size.
2. **well-formed** — the header parses strictly (``malformed``).
3. **sender certificate** — from the :class:`Directory`, valid at ``now`` and not
   revoked (``unknown_sender``, ``certificate_expired``, ``certificate_revoked``…).
   *Binding*: the link's transport-authenticated CURVE key names a node
   (``peer``). If the envelope's ``sender`` is that node, its certificate's
   ``curve_key`` must equal the link key. Otherwise the message is *relayed*:
   the neighbour must be an enrolled edge or cloud node and the envelope must
   be SIGNED by its origin (a MAC is hop-local) — else ``bad_auth``.
   A ``node.hello`` may carry the sender's own certificate: it is verified
   against the trust store (it is self-authenticating) and learned first.
   A *token peer* (an enrolling node's first-contact key) may only send the
   first-contact types registered with :meth:`Pipeline.allow_first_contact`;
   its verify key is read from the body by that type's resolver and the
   message is checked against it (self-signed); it has no certificate.
   Its claimed ``sender`` is *not* an identity: nothing keyed by a node id
   (replay windows, routes, directory, sessions) ever sees it (step 5).
4. **signature or MAC** — SIGNED: Ed25519 with the certificate's verify key;
   MAC: the session named by ``key_id`` must belong to this sender on this
   link, and its receive key verifies the keyed-BLAKE2b tag (``bad_auth``).
5. **replay** — :class:`securemesh.wire.ReplayGuard` per origin sender: window
   of 8,192 sequence numbers plus a clock-skew bound (``replayed``, ``stale``,
   ``clock_skew``). Recorded only after step 4 passed. A first-contact
   message has its own bounded guard keyed by the *connection* (the join
   token's first-contact CURVE key), never by the sender it claims: a token
   holder claiming ``cloud-1`` with sequence 2^63 changes nothing of
   ``cloud-1``'s window (issue #9, item 1).
6. **authorization** — a REPLY must answer a request we sent (or forwarded) to
   that sender (``unexpected_reply``); a broadcast must come down from the
   parent link; anything else: the policy of its message type (a built-in or
   per-type policy, else the node's configured policy; deny by default) for
   ``PeerInfo(node_id, tier, roles)`` from the verified certificate
   (``unauthorized``).
7. **dispatch** is the node's job (:mod:`securemesh.node._node`): the result
   here is a :class:`VerifiedMessage` (a certified sender), the only type a
   handler ever receives — or, for a type registered with
   :meth:`Pipeline.allow_first_contact`, a :class:`FirstContactMessage` from a
   join-token peer, a *separate* type that only handlers which opted in
   (enrollment) are given.

The pipeline never raises for a peer's input: :meth:`Pipeline.process` returns
a :class:`VerifiedMessage`, a :class:`FirstContactMessage` or a
:class:`~securemesh.node._metrics.Rejection`.

**Held messages.** A relayed message whose origin has no certificate here yet
(or only an expired one) fails step 3 (``unknown_sender``,
``certificate_expired``). The node (:mod:`securemesh.node._node`) may then
keep its frames in a :class:`HoldBuffer` while it asks the neighbour that
relayed it for the certificate (``cert.lookup``), and afterwards run them
through :meth:`process` again, from step 1, in arrival order. Nothing is
skipped: a held message is only ever a message that has not passed step 3
yet. The buffer is bounded per origin, in total (messages and bytes) and in
time; what it pushes out is rejected like any other message (with the reason
that held it, counted and audited).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from securemesh.crypto.certs import Certificate, SignedCertificate, Tier
from securemesh.errors import (
    AuthenticationError,
    AuthorizationError,
    ClockSkewError,
    DecodeError,
    LocalError,
    RemoteError,
    UnexpectedReply,
)
from securemesh.messages import NODE_HELLO, NodeHello, b64d
from securemesh.node._metrics import Rejection
from securemesh.policy import PeerInfo, Policy
from securemesh.wire import (
    AuthMode,
    Envelope,
    Flags,
    Limits,
    ReplayGuard,
    UnverifiedEnvelope,
    decode,
    parse_body,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from securemesh.node._directory import Directory, DirectoryEntry

__all__ = [
    "FirstContactMessage",
    "FirstContactResolver",
    "HeldMessage",
    "HoldBuffer",
    "Pipeline",
    "SessionKeys",
    "VerifiedMessage",
]

M = TypeVar("M", bound="BaseModel")

#: ``resolver(body_bytes) -> verify key``: reads the self-declared Ed25519 key of a
#: first-contact message (e.g. ``enroll.request``) from its *unverified* body.
FirstContactResolver = Callable[[bytes], bytes]

_BOTTOM_TIERS = (Tier.END,)
_MAX_ALLOWED_CACHE = 65_536
#: Live first-contact replay windows (one per join-token connection key; LRU).
_FIRST_CONTACT_WINDOWS = 1024
#: Rejection detail of a MAC envelope naming no session we hold with that peer.
NO_SESSION = "no such session with this peer"
#: The construction token of VerifiedMessage: held by this module only.
_PIPELINE = object()


class SessionKeys(Protocol):
    """What the pipeline needs of an established session (the node's session table)."""

    peer_id: str
    peer_key: bytes
    recv_key: bytes


class _Received:
    """What both kinds of received message read from their envelope (one copy)."""

    __slots__ = ()
    envelope: Envelope

    @property
    def msg_type(self) -> str:
        return self.envelope.msg_type

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def body_bytes(self) -> bytes:
        return self.envelope.body_bytes

    def body(self, model: type[M]) -> M:
        """Parse the body strictly (raises DecodeError)."""
        return self.envelope.body(model)

    @property
    def raw_frames(self) -> tuple[memoryview, ...]:
        return self.envelope.raw_frames

    @property
    def is_request(self) -> bool:
        return self.envelope.flags is Flags.REQUEST


class VerifiedMessage(_Received):
    """A message from a certified sender that passed steps 1-6; what handlers receive.

    ``certificate`` is the sender's verified certificate (never ``None``).
    ``peer`` is the CURVE key of the link it arrived on; ``relayed`` says the
    link's node is not the sender. ``first_contact`` is always False: a
    join-token peer's message is a :class:`FirstContactMessage` instead.

    Only :class:`Pipeline` makes one: the constructor insists on a token private
    to this module (and the import-linter contracts keep every other package
    out of this module), so no code can call a handler with an envelope it
    "verified" by itself. A test that needs a message runs it through a real
    :class:`Pipeline` (tests/node/test_node_pipeline.py has a small rig).
    """

    # (first_contact a slot, not a class attribute: Python 3.11 specializes slot
    # reads, and the node reads it on every message)
    __slots__ = ("certificate", "envelope", "first_contact", "link", "peer", "relayed")

    #: always False: a certified sender's message (see :class:`FirstContactMessage`)
    first_contact: bool

    def __init__(
        self,
        envelope: Envelope,
        certificate: Certificate,
        peer: bytes,
        *,
        relayed: bool,
        link: object = None,
        _made_by: object = None,
    ) -> None:
        if _made_by is not _PIPELINE:
            raise TypeError("a VerifiedMessage is made only by the Pipeline, after its checks")
        self.envelope = envelope
        self.certificate = certificate
        self.peer = peer
        self.relayed = relayed
        self.link = link
        self.first_contact = False

    @property
    def peer_info(self) -> PeerInfo:
        cert = self.certificate
        return PeerInfo(node_id=cert.node_id, tier=cert.tier.value, roles=frozenset(cert.roles))

    def __repr__(self) -> str:
        return f"VerifiedMessage({self.envelope!r}, relayed={self.relayed})"


class FirstContactMessage(_Received):
    """A first-contact REQUEST from a join-token peer (enrollment): not a VerifiedMessage.

    The sender has no certificate yet: the envelope verified against the
    Ed25519 key its own (unverified) body declares, the connection's CURVE key
    is the first-contact key of an unused join token, and the replay state is
    the connection's. So it proves much less than a :class:`VerifiedMessage`,
    and it is a separate type: the node hands it only to a handler registered
    with ``first_contact=`` (it opted in); any other handler of the type never
    sees one (the message is rejected as ``unauthorized``). It is never routed,
    forwarded or broadcast. Made only by :class:`Pipeline`, like a VerifiedMessage.
    """

    __slots__ = ("envelope", "first_contact", "link", "peer")

    #: always True
    first_contact: bool
    certificate: ClassVar[None] = None
    relayed: ClassVar[bool] = False
    #: the sender is no certified node: no policy of a certified peer applies
    peer_info: ClassVar[None] = None

    def __init__(
        self, envelope: Envelope, peer: bytes, *, link: object = None, _made_by: object = None
    ) -> None:
        if _made_by is not _PIPELINE:
            raise TypeError("a FirstContactMessage is made only by the Pipeline, after its checks")
        self.envelope = envelope
        self.peer = peer
        self.link = link
        self.first_contact = True

    @property
    def sender(self) -> str:
        """The node id the newcomer claims (checked by the handler against its request)."""
        return self.envelope.sender

    def __repr__(self) -> str:
        return f"FirstContactMessage({self.envelope!r})"


#: What the pipeline passes to the node: a certified sender's message or a first contact.
AnyMessage = VerifiedMessage | FirstContactMessage


class Pipeline:
    """Steps 1-6 for one node. Configure, then call :meth:`process` per received message."""

    __slots__ = (
        "_allowed",
        "_clock",
        "_directory",
        "_first_contact",
        "_first_contact_replay",
        "_limits",
        "_max_skew_ms",
        "_node_id",
        "_policy",
        "_replay",
        "_reply_ok",
        "_sessions",
        "_type_policies",
    )

    def __init__(
        self,
        *,
        node_id: str,
        directory: Directory,
        policy: Policy,
        limits: Limits,
        replay: ReplayGuard,
        clock: Callable[[], float],
        max_skew_ms: int = ReplayGuard.DEFAULT_MAX_SKEW_MS,
        sessions: dict[bytes, SessionKeys] | None = None,
        reply_ok: Callable[[Envelope], bool] | None = None,
    ) -> None:
        self._node_id = node_id
        self._directory = directory
        self._policy = policy
        self._limits = limits
        self._replay = replay
        self._max_skew_ms = max_skew_ms  # the same bound the guard was built with
        self._clock = clock
        self._sessions: dict[bytes, SessionKeys] = sessions if sessions is not None else {}
        self._reply_ok: Callable[[Envelope], bool] = reply_ok or (lambda _env: False)
        self._type_policies: dict[str, Policy] = {}
        # (sender, msg_type) -> the directory entry the policy allowed it for.
        # Policies are pure functions of (node id, tier, roles, type); a renewed
        # certificate is a new entry, so a stale decision is never reused.
        self._allowed: dict[tuple[str, str], DirectoryEntry] = {}
        self._first_contact: dict[str, FirstContactResolver] = {}
        # replay state of join-token peers, keyed by their connection key only
        self._first_contact_replay = ReplayGuard(
            max_senders=_FIRST_CONTACT_WINDOWS,
            max_evicted=_FIRST_CONTACT_WINDOWS,
            max_skew_ms=max_skew_ms,
        )

    # ------------------------------------------------------------ configuration

    def set_type_policy(self, msg_type: str, policy: Policy) -> None:
        """Authorize ``msg_type`` with ``policy`` instead of the node's configured policy."""
        self._type_policies[msg_type] = policy
        self._allowed.clear()

    def allow_first_contact(self, msg_type: str, resolver: FirstContactResolver) -> None:
        """Let join-token peers send ``msg_type``, self-signed by the key ``resolver`` reads."""
        self._first_contact[msg_type] = resolver

    @property
    def policy(self) -> Policy:
        return self._policy

    # ------------------------------------------------------------------ steps

    def process(  # noqa: PLR0912, PLR0915 - the numbered steps in one place (hot path)
        self, peer: bytes, frames: Sequence[bytes], *, from_parent: bool
    ) -> VerifiedMessage | FirstContactMessage | Rejection:
        """Run steps 1-6 on one message from the link whose CURVE key is ``peer``."""
        now = self._clock()
        sender: str | None = None
        msg_type: str | None = None
        try:
            # 1-2. sizes, then form
            unverified = decode(frames, limits=self._limits)
            header = unverified.header  # plain slots: cheaper than the envelope's properties
            sender = header.sender
            msg_type = header.msg_type
            mode = header.auth_mode
            directory = self._directory
            # 3. who is the link, who is the sender, and are they bound?
            peer_node = directory.node_for_curve_key(peer)
            if msg_type == NODE_HELLO and (peer_node is None or peer_node == sender):
                peer_node = self._learn_hello_certificate(peer, unverified, frames, now)
            if peer_node is None:
                return self._first_contact_message(peer, unverified, frames, now)
            if sender == peer_node:
                entry = directory.lookup(sender, now=now)
                if entry.cert.curve_key != peer:
                    raise AuthenticationError("sender not bound to connection")
                relayed = False
            else:
                hop = directory.lookup(peer_node, now=now)
                if hop.cert.tier in _BOTTOM_TIERS:
                    raise AuthenticationError(
                        "sender not bound to connection (devices relay nothing)"
                    )
                if mode is not AuthMode.SIGNED:
                    raise AuthenticationError("a relayed envelope must be signed by its origin")
                entry = directory.lookup(sender, now=now)
                relayed = True
            cert = entry.cert
            # 4. signature or MAC
            if mode is AuthMode.SIGNED:
                envelope = unverified.verify_signature(cert.verify_key)
            else:
                session = self._sessions.get(header.key_id)
                if session is None or session.peer_id != sender or session.peer_key != peer:
                    raise AuthenticationError(NO_SESSION)
                envelope = unverified.verify_mac(session.recv_key)
            # 5. replay (recorded only now that the envelope is authentic):
            # the skew bound, then the window (ReplayGuard.accept checks it)
            # (``header`` is the envelope's own header: verification passed it on)
            if abs(header.timestamp_ms - now * 1000) > self._max_skew_ms:
                raise ClockSkewError("timestamp too far from our clock")
            self._replay.accept(sender, header.sequence, header.timestamp_ms)
            # 6. authorization
            flags = header.flags
            if flags is Flags.REPLY:
                if not self._reply_ok(envelope):
                    raise UnexpectedReply("reply to no request of ours")
            else:
                if not header.recipient and not from_parent and msg_type != NODE_HELLO:
                    raise AuthorizationError("broadcasts only come down from the parent")
                key = (sender, msg_type)
                if self._allowed.get(key) is not entry:  # cache of positive decisions
                    policy = self._type_policies.get(msg_type, self._policy)
                    policy.authorize(entry.peer_info, msg_type)
                    if len(self._allowed) >= _MAX_ALLOWED_CACHE:
                        self._allowed.clear()
                    self._allowed[key] = entry
            return VerifiedMessage(envelope, cert, peer, relayed=relayed, _made_by=_PIPELINE)
        except RemoteError as exc:
            return Rejection(exc.reason, peer, sender, msg_type, str(exc), now)
        except Exception as exc:  # a body/certificate that fails validation in a helper
            return Rejection("malformed", peer, sender, msg_type, type(exc).__name__, now)

    def _learn_hello_certificate(
        self, peer: bytes, unverified: UnverifiedEnvelope, frames: Sequence[bytes], now: float
    ) -> str | None:
        """A hello carries its sender's certificate: verify it against the roots and learn it.

        Only a certificate naming the link's CURVE key and the envelope's sender
        is learned, and only after the hello's signature verified with that
        certificate's key: an unauthenticated message never changes the
        directory. (Step 4 then checks the hello again, against the learned
        entry, like any other message.)
        """
        sender = unverified.sender
        body = parse_body(NodeHello, bytes(frames[1]))
        signed = SignedCertificate.from_bytes(b64d(body.certificates[0], max_size=4096))
        claimed = signed.unverified_certificate()
        unverified.verify_signature(claimed.verify_key)  # AuthenticationError: learn nothing
        if claimed.curve_key != peer or claimed.node_id != sender:
            raise AuthenticationError("hello certificate not bound to connection")
        chain = [b64d(c, max_size=4096) for c in body.certificates[1:]]
        # the link is already admitted; a hello adds no right to connect (admit=False)
        self._directory.add_certificate(signed, intermediates=chain, now=now, admit=False)
        return sender

    def _first_contact_message(
        self, peer: bytes, unverified: UnverifiedEnvelope, frames: Sequence[bytes], now: float
    ) -> FirstContactMessage:
        if not self._directory.is_token_key(peer, now=now):
            raise AuthenticationError("connection key is not enrolled")
        resolver = self._first_contact.get(unverified.msg_type)
        if resolver is None or unverified.flags is Flags.REPLY or not unverified.recipient:
            raise AuthorizationError("a join-token peer may only send first-contact requests")
        if unverified.recipient != self._node_id:
            raise AuthorizationError("first-contact messages are not forwarded as is")
        verify_key = resolver(bytes(frames[1]))
        envelope = unverified.verify_signature(verify_key)
        # Replay protection by connection key (the token's first-contact key), in
        # state of its own: the claimed sender is not an identity yet, so no
        # node's window may move because of it.
        guard = self._first_contact_replay
        connection = peer.hex()
        guard.check(connection, envelope.sequence, envelope.timestamp_ms, now_ms=int(now * 1000))
        guard.accept(connection, envelope.sequence, envelope.timestamp_ms)
        return FirstContactMessage(envelope, peer, _made_by=_PIPELINE)

    def replay_stats(self) -> dict[str, dict[str, int]]:
        """Sizes of the replay state: per sender (``senders``) and per join-token connection."""
        return {
            "senders": self._replay.stats(),
            "first_contact": self._first_contact_replay.stats(),
        }


@dataclass(slots=True)
class HeldMessage:
    """The frames of one message that failed step 3 only for want of its origin's certificate.

    ``rejection`` is that step-3 result (origin, link key, type, arrival time);
    ``channel`` and ``from_parent`` say where it came from, to process it again.
    """

    rejection: Rejection
    frames: Sequence[bytes]
    channel: object
    from_parent: bool
    size: int

    @property
    def sender(self) -> str:
        return self.rejection.sender_claimed or ""


class HoldBuffer:
    """Messages waiting for their origin's certificate: bounded, kept in arrival order.

    Bounds: ``per_sender`` messages of one origin, ``total`` messages and
    ``max_bytes`` bytes of frames over all origins, and ``max_age`` seconds
    (the node's certificate lookup gives up after that long, and
    :meth:`expire` drops anything older). ``retry_after``: the node sends no
    new lookup for an origin (and holds none of its messages) until that many
    seconds after its last lookup ended. A message that does not fit pushes
    out the oldest message of its origin (per-origin bound) or the oldest of
    all (total bounds); :meth:`hold` returns what was pushed out so the caller
    rejects it. Plain bookkeeping: no I/O, no clock of its own.
    """

    __slots__ = (
        "_by_sender",
        "_bytes",
        "_order",
        "_seq",
        "dropped",
        "expired",
        "held",
        "max_age",
        "max_bytes",
        "per_sender",
        "released",
        "retry_after",
        "total",
    )

    def __init__(
        self,
        *,
        per_sender: int = 64,
        total: int = 1024,
        max_bytes: int = 16 * 1024 * 1024,
        max_age: float = 5.0,
        retry_after: float = 5.0,
    ) -> None:
        if per_sender < 1 or total < 1 or max_bytes < 1 or not max_age > 0 or retry_after < 0:
            raise LocalError("hold buffer bounds must be positive")
        self.per_sender = per_sender
        self.total = total
        self.max_bytes = max_bytes
        self.max_age = float(max_age)
        self.retry_after = float(retry_after)
        self._seq = 0
        self._order: OrderedDict[int, HeldMessage] = OrderedDict()
        self._by_sender: dict[str, OrderedDict[int, HeldMessage]] = {}
        self._bytes = 0
        #: messages ever held / handed back by :meth:`take` / pushed out when full / too old
        self.held = 0
        self.released = 0
        self.dropped = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._order)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def senders(self) -> list[str]:
        return list(self._by_sender)

    def holds(self, sender: str) -> bool:
        return sender in self._by_sender

    def count(self, sender: str) -> int:
        queue = self._by_sender.get(sender)
        return 0 if queue is None else len(queue)

    def hold(self, message: HeldMessage) -> list[HeldMessage]:
        """Keep ``message``; return the messages pushed out to make room (oldest first)."""
        if message.size > self.max_bytes:
            self.dropped += 1
            return [message]
        out: list[HeldMessage] = []
        queue = self._by_sender.get(message.sender)
        if queue is not None and len(queue) >= self.per_sender:
            out.append(self._remove(next(iter(queue))))
        while self._order and (
            len(self._order) >= self.total or self._bytes + message.size > self.max_bytes
        ):
            out.append(self._remove(next(iter(self._order))))
        self._seq += 1
        self._order[self._seq] = message
        self._by_sender.setdefault(message.sender, OrderedDict())[self._seq] = message
        self._bytes += message.size
        self.held += 1
        self.dropped += len(out)
        return out

    def _remove(self, key: int) -> HeldMessage:
        message = self._order.pop(key)
        queue = self._by_sender[message.sender]
        del queue[key]
        if not queue:
            del self._by_sender[message.sender]
        self._bytes -= message.size
        return message

    def take(self, sender: str) -> list[HeldMessage]:
        """Remove and return every message held for ``sender``, in arrival order."""
        queue = self._by_sender.get(sender)
        if queue is None:
            return []
        taken = [self._remove(key) for key in list(queue)]
        self.released += len(taken)
        return taken

    def expire(self, now: float) -> list[HeldMessage]:
        """Remove and return the messages held longer than ``max_age`` (oldest first)."""
        out: list[HeldMessage] = []
        while self._order:
            key, oldest = next(iter(self._order.items()))
            if now - oldest.rejection.at <= self.max_age:
                break
            out.append(self._remove(key))
        self.expired += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return {
            "messages": len(self._order),
            "senders": len(self._by_sender),
            "bytes": self._bytes,
            "held": self.held,
            "released": self.released,
            "dropped": self.dropped,
            "expired": self.expired,
        }


def body_error(exc: Exception) -> RemoteError:
    """Map a pydantic or decoding failure of a body to DecodeError (for handlers)."""
    if isinstance(exc, RemoteError):
        return exc
    return DecodeError(str(exc))
