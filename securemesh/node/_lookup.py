"""Certificate lookup and hold: learning a relayed origin's certificate from a neighbour.

A relayed message whose origin has no certificate here (or only an expired
one: it may have been renewed since) fails pipeline step 3 (``unknown_sender``,
``certificate_expired``). If an enrolled edge/cloud neighbour relayed it, it
is held in the bounded :class:`~securemesh.node._pipeline.HoldBuffer` instead
of being rejected, and ``cert.lookup`` goes to that neighbour, which verified
the message before forwarding it and so holds the origin's current
certificate (one lookup per origin at a time, at most ``held.total`` in
flight, one per origin per ``held.retry_after``). When the lookup ends, the
held messages run the whole pipeline again, in arrival order and before
anything else can run on the loop, then are routed in that order. What fails
again, what the buffer pushes out and what is held too long is rejected as
usual. All of it happens on the rejection path: an accepted message costs
nothing extra.

Owns the hold buffer and the lookup bookkeeping (when each origin was last
looked up, which lookups are in flight); answers ``cert.lookup`` (from what
the directory holds, else asking the parent). It meets the rest of the node
only through the :class:`~securemesh.node._core.Core` (request, learn,
reject, spawn, route, the pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from securemesh.errors import AuthorizationError, NoRoute, RemoteError, SecureMeshError
from securemesh.messages import CERT_LOOKUP, CertLookup, NodeHello, b64d, b64e
from securemesh.node._core import Core, Link
from securemesh.node._metrics import Rejection
from securemesh.node._pipeline import HeldMessage, HoldBuffer, VerifiedMessage

if TYPE_CHECKING:
    from securemesh.transport import Channel

__all__ = ["CertificateLookup"]

log = logging.getLogger("securemesh.node")

#: origins whose last lookup time is kept (then the record starts over)
_MAX_LOOKUP_TIMES = 10_000


class CertificateLookup:
    """Hold buffer, certificate lookups and the ``cert.lookup`` answer (module docstring)."""

    def __init__(self, core: Core, held: HoldBuffer) -> None:
        self._core = core
        #: relayed messages from origins whose certificate is being looked up
        self.held = held
        #: when each origin was last looked up (a lookup per ``held.retry_after`` at most)
        self._lookups: dict[str, float] = {}
        self._inflight: set[str] = set()

    def expire(self, now: float) -> None:
        """Reject what was held longer than ``held.max_age``."""
        for old in self.held.expire(now):
            self.reject_held(old, "held too long for a certificate lookup")

    async def on_cert_lookup(self, msg: VerifiedMessage) -> NodeHello:
        """Answer with a certificate we hold, else ask our parent (and learn the answer).

        A certificate we hold that is no longer valid (e.g. renewed elsewhere
        since we learned it) is first asked for upstream too; if that fails
        we answer with what we have (the asker checks it again anyway).
        """
        core = self._core
        if msg.relayed:
            raise AuthorizationError("certificate lookups are between direct peers")
        node_id = msg.body(CertLookup).node_id
        signed = core.directory.signed_certificate(node_id)
        if core.parent_id is not None and node_id != msg.sender:
            if signed is None:
                await self.lookup_upstream(node_id)
            elif not self.valid_now(node_id):
                with contextlib.suppress(TimeoutError, SecureMeshError):
                    await self.lookup_upstream(node_id)
            signed = core.directory.signed_certificate(node_id)
        if signed is None:
            raise NoRoute("certificate unknown here")
        certs = [b64e(signed.to_bytes())]
        issuer = core.directory.trust.delegated_authorities.get(
            signed.unverified_certificate().issuer
        )
        if issuer is not None:
            certs.append(b64e(issuer.to_bytes()))
        return NodeHello(certificates=certs)

    async def lookup_upstream(self, node_id: str, *, timeout: float | None = None) -> None:
        core = self._core
        if core.parent_id is None:
            return
        reply = await core.request(
            core.parent_id,
            CERT_LOOKUP,
            CertLookup(node_id=node_id),
            timeout=core.config.limits.request_timeout if timeout is None else timeout,
        )
        body = reply.body(NodeHello)
        core._learn(body.certificates[:1], [b64d(c, max_size=4096) for c in body.certificates[1:]])

    def valid_now(self, node_id: str) -> bool:
        core = self._core
        try:
            core.directory.lookup(node_id, now=core._clock())
        except RemoteError:
            return False
        return True

    async def _lookup_via(self, link: Link, hop: str, node_id: str, timeout: float) -> None:
        """Ask the neighbour ``hop`` on ``link`` for ``node_id``'s certificate; learn it."""
        core = self._core
        reply = await core._request_on(
            link, hop, CERT_LOOKUP, CertLookup(node_id=node_id), timeout=timeout, expect=hop
        )
        body = reply.body(NodeHello)
        core._learn(body.certificates[:1], [b64d(c, max_size=4096) for c in body.certificates[1:]])

    async def learn_from(self, msg: VerifiedMessage, node_id: str, *, timeout: float = 2.0) -> bool:
        """Ask the direct neighbour that sent ``msg`` for ``node_id``'s certificate.

        For a handler that meets a node it has no (current) certificate for in
        a message's *content* (the cloud's audit ingest: a device's events
        relayed by its edge, signed with keys from a re-enrollment the cloud
        has not heard of). The neighbour must be an enrolled edge or cloud
        node; lookups of one node id are at most one per ``held.retry_after``
        (shared with the hold buffer). Returns whether a certificate was
        learned; never raises for a failed lookup.
        """
        core = self._core
        link, hop = msg.link, msg.sender
        if msg.relayed or not isinstance(link, Link) or core._stopped or hop == node_id:
            return False
        if not core.directory.is_authority_tier(hop) or node_id in self._inflight:
            return False
        now = core._clock()
        if now - self._lookups.get(node_id, -1e9) < self.held.retry_after:
            return False
        self._lookups[node_id] = now
        self._inflight.add(node_id)
        try:
            await self._lookup_via(link, hop, node_id, timeout)
        except (TimeoutError, SecureMeshError) as exc:
            log.info(
                "certificate lookup failed",
                extra={"event": "cert_lookup_failed", "node": node_id, "error": repr(exc)},
            )
            return False
        finally:
            self._inflight.discard(node_id)
        return True

    def hold(
        self, rejection: Rejection, frames: Sequence[bytes], channel: Channel, from_parent: bool
    ) -> bool:
        """A relayed message's origin has no (currently valid) certificate here: hold it and
        ask the neighbour that relayed it.

        That neighbour verified the message before forwarding it, so it holds
        the origin's current certificate (a renewed one, too). Held (True) only
        if the neighbour is an enrolled edge/cloud node valid now; then
        ``cert.lookup`` goes to it on the same link (one per origin at a time)
        and the message waits in :attr:`held` until the lookup ends, when
        :meth:`_verify_held` runs it through the whole pipeline again. If a
        lookup for that origin ended less than ``held.retry_after`` (5 s) ago,
        or ``held.total`` lookups are in flight already (a neighbour naming
        ever new origins), the message is not held (False): the caller rejects
        it at once.
        """
        core = self._core
        sender, peer = rejection.sender_claimed, rejection.peer
        if sender is None or peer is None or core._stopped:
            return False
        hop = core.directory.node_for_curve_key(peer)
        if (
            hop is None
            or hop == sender
            or not core.directory.is_authority_tier(hop)
            or not self.valid_now(hop)  # (then the hop's certificate failed step 3)
        ):
            return False
        link = core._parent_link if from_parent else core._routes.children.get(peer)
        if link is None:  # a neighbour whose own messages we have not seen yet
            link = Link(channel, peer, is_parent=False, now=rejection.at)
        if sender not in self._inflight:
            last = self._lookups.get(sender, -1e9)
            if rejection.at - last < self.held.retry_after:
                return False
            if len(self._inflight) >= self.held.total:
                return False  # as many lookups in flight as messages may be held: enough
            if len(self._lookups) > 10_000:
                self._lookups.clear()
            self._lookups[sender] = rejection.at
            self._inflight.add(sender)
            core._spawn(self._lookup_and_release(link, hop, sender))
        size = sum(len(f) for f in frames)
        held = HeldMessage(rejection, frames, channel, from_parent, size)
        for dropped in self.held.hold(held):
            self.reject_held(dropped, "dropped: the hold buffer is full")
        return True

    def reject_held(self, held: HeldMessage, detail: str) -> None:
        core = self._core
        r = held.rejection
        core.metrics.reject(
            Rejection(r.reason, r.peer, r.sender_claimed, r.msg_type, detail, core._clock())
        )

    async def _lookup_and_release(self, link: Link, hop: str, sender: str) -> None:
        core = self._core
        try:
            await self._lookup_via(link, hop, sender, self.held.max_age)
        except asyncio.CancelledError:  # stopping: nothing more is dispatched
            self._inflight.discard(sender)
            raise
        except Exception as exc:  # timeout, refusal, bad reply: the held ones fail again below
            log.info(
                "certificate lookup failed",
                extra={"event": "cert_lookup_failed", "node": sender, "error": repr(exc)},
            )
        self._inflight.discard(sender)
        self._lookups[sender] = core._clock()
        verified = self._verify_held(sender)
        for msg, channel, from_parent in verified:
            try:
                rest = core._route(msg, channel, from_parent)
                if rest is not None:
                    await rest
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch failed", extra={"event": "dispatch_error"})

    def _verify_held(self, sender: str) -> list[tuple[VerifiedMessage, Channel, bool]]:
        """Run ``sender``'s held messages through the pipeline again, in arrival order.

        Synchronous (no await between learning the certificate and this), so
        none of the origin's later messages is verified before its held ones.
        A message that fails again (e.g. the lookup failed: ``unknown_sender``)
        is rejected as usual; one held longer than ``held.max_age`` is rejected
        without another look.
        """
        core = self._core
        for old in self.held.expire(core._clock()):
            self.reject_held(old, "held too long for a certificate lookup")
        verified: list[tuple[VerifiedMessage, Channel, bool]] = []
        process = core.pipeline.process
        for held in self.held.take(sender):
            result = process(held.rejection.peer or b"", held.frames, from_parent=held.from_parent)
            if type(result) is Rejection:
                core.metrics.reject(result)
                continue
            verified.append(
                (cast("VerifiedMessage", result), cast("Channel", held.channel), held.from_parent)
            )
        return verified
