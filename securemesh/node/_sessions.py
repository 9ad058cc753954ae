"""The session table: the session fast path between direct peers (:mod:`securemesh.session`).

Owns every session this node holds (by session id, for the pipeline to check
MAC envelopes; and the newest one per peer, to send with), the handshakes it
answers and the ones it runs, and the session-reset hints it sends. It meets
the rest of the node only through the :class:`~securemesh.node._core.Core`
(encode, send, request, spawn).

A session is made by ``session.hello`` (REQUEST/REPLY) then
``session.finish``, all SIGNED; it is replaced by a fresh handshake after
``[session] max_age`` seconds or ``max_messages`` messages, and the old one
still verifies arriving messages for another ``max_age`` (:meth:`purge`).
Bounded: one outgoing session and one answered handshake per peer (answered
ones expire after ``handshake_timeout``, at most 10 000 are kept), sessions by
id purged after ``2 * max_age``, reset hints at most 10 000.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from securemesh.errors import AuthenticationError, AuthorizationError
from securemesh.messages import (
    SESSION_FINISH,
    SESSION_HELLO,
    SESSION_RESET,
    Ack,
    SessionData,
    b64d,
    b64e,
)
from securemesh.node._core import Core, Link
from securemesh.session import Handshake, Session, SessionLimits
from securemesh.wire import Flags

if TYPE_CHECKING:
    from securemesh.crypto.signing import Signer
    from securemesh.node._metrics import Rejection
    from securemesh.node._pipeline import VerifiedMessage
    from securemesh.transport import Channel

__all__ = ["SessionEntry", "SessionTable"]

_MAX_RESPONDING = 10_000
_MAX_HINTS = 10_000


class SessionEntry:
    """One established session with a direct peer, and what it sent so far."""

    __slots__ = (
        "created",
        "link",
        "peer_id",
        "peer_key",
        "recv_key",
        "send_key",
        "sent",
        "session",
        "session_id",
    )

    def __init__(self, session: Session, link: Link, peer_key: bytes, now: float) -> None:
        self.session = session
        self.session_id = session.session_id
        self.peer_id = session.peer_id
        self.peer_key = peer_key
        self.send_key, self.recv_key = session.envelope_mac_keys()
        self.link = link
        self.created = now
        self.sent = 0


class SessionTable:
    """Sessions, handshakes and reset hints of one node (see the module docstring)."""

    def __init__(
        self, core: Core, *, signer: Signer, rng: Callable[[int], bytes], clock: Callable[[], float]
    ) -> None:
        self._core = core
        self._signer = signer
        self._rng = rng
        self._clock = clock
        cfg = core.config.session
        self.max_age = cfg.max_age
        self.max_messages = cfg.max_messages
        self.handshake_timeout = cfg.handshake_timeout
        #: every session we hold, by session id (the pipeline checks MAC envelopes here)
        self.by_id: dict[bytes, SessionEntry] = {}
        #: the session we send with, per peer
        self.out: dict[str, SessionEntry] = {}
        self._responding: dict[str, tuple[Handshake, Link]] = {}
        self._inflight: dict[str, asyncio.Future[SessionEntry]] = {}
        self._reset_hints: dict[str, float] = {}

    # ------------------------------------------------------------- sending

    def fresh(self, entry: SessionEntry, now: float | None = None) -> bool:
        """May ``entry`` carry one more message (``[session]`` limits, still installed)?

        ``now`` is the caller's clock reading, if it has one (one read per send).
        """
        return (
            entry.sent < self.max_messages
            and (self._clock() if now is None else now) - entry.created < self.max_age
            and entry.session_id in self.by_id
        )

    async def session_for(self, dest: str) -> SessionEntry | None:
        """A fresh session with direct peer ``dest`` (handshaking once), or None if not direct."""
        entry = self.out.get(dest)
        if entry is not None and self.fresh(entry):
            return entry
        core = self._core
        link = core._routes.direct.get(dest)
        if link is None and dest == core.parent_id:
            link = core._parent_link
        if link is None:
            return None  # not a direct peer: SIGNED (forwardable) instead
        inflight = self._inflight.get(dest)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[SessionEntry] = asyncio.get_running_loop().create_future()
        self._inflight[dest] = future
        try:
            entry = await self._handshake(dest, link)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(dest, None)
        future.set_result(entry)
        return entry

    def limits(self) -> SessionLimits:
        """The ``[session]`` lifetime, carried by every session this node makes."""
        return SessionLimits(max_age=self.max_age, max_messages=self.max_messages)

    def _resolve_verify_key(self, node_id: str) -> bytes:
        return self._core.directory.certificate(node_id, now=self._clock()).verify_key

    def _install(self, session: Session, link: Link, peer_key: bytes) -> SessionEntry:
        entry = SessionEntry(session, link, peer_key, self._clock())
        self.by_id[entry.session_id] = entry
        self.out[entry.peer_id] = entry
        return entry

    async def _handshake(self, dest: str, link: Link) -> SessionEntry:
        core = self._core
        hs = Handshake.initiator(
            node_id=core.node_id,
            peer_id=dest,
            signer=self._signer,
            resolve_peer=self._resolve_verify_key,
            rng=self._rng,
            clock=self._clock,
            limits=self.limits(),
        )
        hello = hs.initiate()
        reply = await core._request_on(
            link,
            dest,
            SESSION_HELLO,
            SessionData(data=b64e(hello)),
            timeout=self.handshake_timeout,
            expect=dest,
        )
        finish = hs.receive(b64d(reply.body(SessionData).data))
        assert finish is not None
        await core._send_on(
            link, core._encode(dest, SESSION_FINISH, SessionData(data=b64e(finish)), ())
        )
        return self._install(hs.session, link, link.peer)

    # ---------------------------------------------------------- built-ins

    def on_hello(self, msg: VerifiedMessage) -> SessionData:
        """``session.hello``: answer a direct peer's handshake."""
        if msg.relayed or msg.envelope.flags is not Flags.REQUEST:
            raise AuthorizationError("sessions are between direct peers")
        hs = Handshake.responder(
            node_id=self._core.node_id,
            signer=self._signer,
            resolve_peer=self._resolve_verify_key,
            rng=self._rng,
            clock=self._clock,
            limits=self.limits(),
        )
        accept = hs.receive(b64d(msg.body(SessionData).data))
        assert accept is not None
        # oldest first (a repeated HELLO moves to the end): drop the handshakes
        # whose FINISH did not come within [session] handshake_timeout
        pending = self._responding
        pending.pop(msg.sender, None)
        while pending:
            oldest = next(iter(pending))
            if not pending[oldest][0].expired(self.handshake_timeout):
                break
            del pending[oldest]
        if len(pending) > _MAX_RESPONDING:
            pending.clear()
        pending[msg.sender] = (hs, cast("Link", msg.link))
        return SessionData(data=b64e(accept))

    def on_finish(self, msg: VerifiedMessage) -> None:
        """``session.finish``: the handshake we answered is complete; install the session."""
        if msg.relayed:
            raise AuthorizationError("sessions are between direct peers")
        pending = self._responding.pop(msg.sender, None)
        if pending is None or pending[0].expired(self.handshake_timeout):
            raise AuthenticationError("no handshake in progress with this peer")
        hs, link = pending
        hs.receive(b64d(msg.body(SessionData).data))
        self._install(hs.session, link, msg.peer)

    def on_reset(self, msg: VerifiedMessage) -> None:
        """``session.reset``: the peer lost our session (it restarted); handshake anew."""
        if msg.relayed:
            raise AuthorizationError("sessions are between direct peers")
        self.out.pop(msg.sender, None)

    def hint_reset(self, rejection: Rejection, channel: Channel, from_parent: bool) -> None:
        """A direct peer sent MAC envelopes for a session we do not hold (we restarted).

        Tell it once per second, SIGNED, so it runs a fresh handshake instead of
        sending into the void until its session ages out.
        """
        core = self._core
        sender, peer = rejection.sender_claimed, rejection.peer
        if sender is None or peer is None or core.directory.node_for_curve_key(peer) != sender:
            return
        last = self._reset_hints.get(sender, -1.0)
        if rejection.at - last < 1.0:
            return
        if len(self._reset_hints) > _MAX_HINTS:
            self._reset_hints.clear()
        self._reset_hints[sender] = rejection.at
        link = core._parent_link if from_parent else core._routes.children.get(peer)
        if link is None:
            link = Link(channel, peer, is_parent=False, now=self._clock())
        frames = core._encode(sender, SESSION_RESET, Ack(), ())
        core._spawn(core._send_on(link, frames))

    # ------------------------------------------------------------- upkeep

    def forget(self, node_ids: Iterable[str]) -> None:
        """Revoked nodes: every session and handshake with them."""
        gone = set(node_ids)
        for sid, entry in list(self.by_id.items()):
            if entry.peer_id in gone:
                del self.by_id[sid]
        for node_id in gone:
            self.out.pop(node_id, None)
            self._responding.pop(node_id, None)

    def purge(self, now: float) -> None:
        """Drop sessions older than ``2 * max_age`` (replaced ones verified until then)."""
        grace = 2 * self.max_age
        for sid, entry in list(self.by_id.items()):
            if now - entry.created > grace:
                del self.by_id[sid]
                if self.out.get(entry.peer_id) is entry:
                    del self.out[entry.peer_id]

    def close(self) -> None:
        """The node stops: handshakes in flight end."""
        for fut in self._inflight.values():
            if not fut.done():
                fut.cancel()

    def peers(self) -> list[str]:
        return sorted(self.out)
