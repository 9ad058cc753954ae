"""Audit ingestion over the mesh bus: ``audit.append`` at the cloud, outbox shippers everywhere.

Theory of operation
-------------------
Every node — a daemon, or an SDK device (:class:`~securemesh.sdk.Device`) —
writes its audit events (rejected messages, enrollments, renewals,
revocations, and whatever its services or application record) to its durable
:class:`~securemesh.audit.outbox.Outbox` (``audit-outbox.db`` in its data
directory) first (:class:`AuditRecorder`), signed by its own identity key;
:meth:`NodeAudit.open` is the one wiring both use. An :class:`AuditShipper`
task then ships the oldest pending events in batches and deletes exactly the
acknowledged ones
(:func:`~securemesh.audit.outbox.ship_once_async`); while the cloud is
unreachable it retries with capped exponential backoff and jitter, so the
events wait on disk. The cloud's append is idempotent by event id, so the
at-least-once shipping puts every event in the log exactly once.

* An **edge**, a **device** (or any non-cloud node) ships with
  ``node.request(cloud, "audit.append", AuditAppend(...))`` — a SIGNED request,
  routed up the tree and verified at the cloud like every other message.
* The **cloud** ships its own outbox in-process to the same
  :class:`~securemesh.audit.service.AuditService` (one code path for the log).

``audit.append`` (request body :class:`AuditAppend`, reply
:class:`AuditAppendReply`):

* body: ``{"entries": [<unpadded base64url of SignedEvent.to_bytes()>, ...]}``,
  1 to :data:`MAX_APPEND_ENTRIES` entries, each at most
  :data:`~securemesh.audit.events.MAX_SIGNED_EVENT_SIZE` bytes, all together at
  most :data:`MAX_APPEND_BYTES` (so the body stays under the bus's 64 KiB);
* reply: ``{"acks": [["<event id>", <leaf index, -1 or -2>], ...]}`` — an index
  once the batch is committed, ``-1`` (:data:`~securemesh.audit.outbox.REJECTED`)
  for an event refused for good, ``-2`` (:data:`~securemesh.audit.outbox.DEFERRED`)
  for one whose origin or key the cloud does not know yet (resent later);
  entries that do not decode get no ack.

**Who may append what** (decided here, enforced by :class:`BusAuditIngest`):

1. only enrolled nodes: the pipeline already verified the sender's certificate
   and signature, and the type policy admits any tier (no join-token peer);
2. each event's *origin* must be the sending node itself, **or** — when the
   sender is an ``edge`` — a node whose certificate (known to the cloud's
   directory, e.g. from the edge's ``route.announce``) has tier ``end``: an edge
   may relay its devices' events. Anything else is acknowledged ``-1``
   (``origin_not_allowed``) and never appended;
3. each event's origin signature is verified against the key its key id
   names in the origin's key history in the log's registry
   (:meth:`AuditLog.register_node`; a node may have several keys). The cloud
   registers keys when it issues certificates (enrollment) and, whenever an
   event arrives with a key id not yet registered for its origin, from its
   directory if that holds a currently valid certificate for the origin with
   that key (a node that re-enrolled with new keys under the same id). When
   the directory lacks it and an edge relayed the event, the cloud first asks
   that edge for the origin's certificate (``cert.lookup``: the edge verified
   the device's messages, so it holds the current one). An origin or key id
   still unknown is deferred (``-2``): not appended, offered again by the
   outbox with backoff, and refused for good only after many tries. Registered
   keys stay: events a node signed before it was revoked or re-enrolled
   still verify.

4. each event's *kind* must be one its origin may log
   (:class:`~securemesh.node._kinds.KindRules`, the cloud's ``[[audit.kinds]]``):
   built-in namespaces from any origin, other namespaces by rule (default:
   ``edge`` and ``cloud`` origins). A kind whose origin's certificate is not
   known yet is deferred (``-2``), one not allowed is acknowledged ``-1``
   (``kind_not_allowed``). The cloud's own events are not subject to the table.

Since the origin signature is checked against the origin's own key, a relaying
edge can delay or drop its devices' events but cannot forge or alter them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import Field

from securemesh.crypto.certs import Certificate, RevocationList, SignedCertificate, Tier
from securemesh.errors import (
    CertificateError,
    ConfigError,
    LocalError,
    RemoteError,
    SecureMeshError,
    SizeLimitExceeded,
    UnknownOrigin,
)
from securemesh.messages import MeshMessage, b64d, b64e
from securemesh.policy import AllowTypes

if TYPE_CHECKING:
    from securemesh.audit.admission import Admission
    from securemesh.audit.events import AuditEvent, EventKind, Outcome, SubjectType
    from securemesh.audit.log import AuditLog
    from securemesh.audit.outbox import Ack, AsyncSendBatch, Outbox
    from securemesh.crypto.keystore import KdfParams
    from securemesh.crypto.signing import Signer
    from securemesh.node._config import NodeConfig
    from securemesh.node._node import MeshNode
    from securemesh.node._pipeline import VerifiedMessage

__all__ = [
    "MAX_APPEND_BYTES",
    "MAX_APPEND_ENTRIES",
    "MSG_AUDIT_APPEND",
    "AuditAppend",
    "AuditAppendReply",
    "AuditRecorder",
    "AuditShipper",
    "OUTBOX_FILE",
    "BusAuditIngest",
    "NodeAudit",
    "allow_audit_relay",
    "audit_recorder",
    "bus_sender",
    "cloud_node_of",
    "deterministic_event_id",
    "open_cloud_log",
]

log = logging.getLogger("securemesh.audit.bus")

MSG_AUDIT_APPEND: Final = "audit.append"
MAX_APPEND_ENTRIES: Final = 256
MAX_APPEND_BYTES: Final = 40 * 1024
"""Total entry bytes per request: base64 of 40 KiB plus JSON stays under a 64 KiB body."""

_MAX_SIGNED = 8 * 1024 + 128  # >= audit.events.MAX_SIGNED_EVENT_SIZE (checked on decode)
_B64_MAX = (_MAX_SIGNED * 4 + 2) // 3

EventId = Annotated[str, Field(min_length=1, max_length=64)]
LeafIndex = Annotated[int, Field(ge=-2, lt=1 << 63)]
_LOOKUPS_PER_REQUEST: Final = 8
_MAX_KEY_SINCE: Final = 100_000


class AuditAppend(MeshMessage):
    """``audit.append`` request body: signed events as unpadded base64url strings."""

    entries: list[Annotated[str, Field(min_length=1, max_length=_B64_MAX)]] = Field(
        min_length=1, max_length=MAX_APPEND_ENTRIES
    )


class AuditAppendReply(MeshMessage):
    """``audit.append`` reply: ``(event id, leaf index or -1)`` per event it can name."""

    acks: list[tuple[EventId, LeafIndex]] = Field(max_length=MAX_APPEND_ENTRIES)


def deterministic_event_id(*parts: str) -> str:
    """A 16-byte event id derived from ``parts`` (recording the same fact twice is idempotent)."""
    digest = hashlib.sha256("\x00".join(("securemesh/audit-event/v1", *parts)).encode())
    return digest.hexdigest()[:32]


# ------------------------------------------------------------------- recording

_RECORDERS: weakref.WeakKeyDictionary[MeshNode, AuditRecorder] = weakref.WeakKeyDictionary()


def audit_recorder(node: MeshNode) -> AuditRecorder | None:
    """The recorder of ``node`` (daemon services and device apps record their own events)."""
    return _RECORDERS.get(node)


class AuditRecorder:
    """Signs events as this node and stores them durably in its outbox, then wakes the shipper."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        origin: str,
        signer: Signer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.origin = origin
        self._signer = signer
        self._clock = clock
        self.wake: Callable[[], None] = lambda: None
        self.recorded = 0

    def attach(self, node: MeshNode) -> None:
        _RECORDERS[node] = self

    def record(
        self,
        kind: EventKind | str,
        subject: tuple[SubjectType | str, str],
        *,
        outcome: Outcome | str = "success",
        details: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Record one event (durable when this returns); return its event id."""
        from securemesh.audit.events import new_event, sign_event  # noqa: PLC0415

        event = new_event(
            kind,
            origin=self.origin,
            subject=subject,
            outcome=outcome,
            details=details,
            now=self._clock(),
            event_id=event_id,
        )
        event_id = self.outbox.put(sign_event(event, self._signer))
        self.recorded += 1
        self.wake()
        return event_id


# -------------------------------------------------------------------- shipping


def cloud_node_of(node: MeshNode, configured: str | None = None) -> str | None:
    """Where the audit log lives: ``configured``, this node if it is a cloud, else the
    cloud node named in the parent's hello (None until the parent answered)."""
    if configured is not None:
        return configured
    if node.tier is Tier.CLOUD:
        return node.node_id
    for text in node._upstream_certs:
        try:
            cert = SignedCertificate.from_bytes(b64d(text, max_size=4096)).unverified_certificate()
        except RemoteError:
            continue
        if cert.tier is Tier.CLOUD and cert.node_id != node.node_id:
            return cert.node_id
    return None


def allow_audit_relay(node: MeshNode) -> None:
    """Let ``audit.append`` from this node's devices pass through it to the cloud.

    A forwarding hop authorizes relayed messages with its own policy; an edge
    admits ``audit.append`` from ``end`` nodes (the cloud decides what is appended).
    """
    node.on_protocol(
        MSG_AUDIT_APPEND, None, policy=AllowTypes(types=[MSG_AUDIT_APPEND], tiers=["end"])
    )


def bus_sender(
    node: MeshNode, *, cloud: Callable[[], str | None], timeout: float
) -> AsyncSendBatch:
    """``send_batch`` over the bus: one ``audit.append`` request to the cloud node."""
    from securemesh.errors import LocalError  # noqa: PLC0415

    async def send(entries: list[bytes]) -> list[Ack]:
        dest = cloud()
        if dest is None:
            raise LocalError("the cloud node is not known yet (no hello from the parent)")
        reply = await node.request(
            dest,
            MSG_AUDIT_APPEND,
            AuditAppend(entries=[b64e(e) for e in entries]),
            timeout=timeout,
        )
        return [(event_id, index) for event_id, index in reply.body(AuditAppendReply).acks]

    return send


class AuditShipper:
    """Ships an outbox forever: batches, deletes acknowledged rows, backs off on failure."""

    def __init__(
        self,
        outbox: Outbox,
        send: AsyncSendBatch,
        *,
        interval: float = 1.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        max_bytes: int = MAX_APPEND_BYTES,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self._send = send
        self._interval = interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._max_bytes = max_bytes
        self._rng = rng
        self._wake = asyncio.Event()
        self.shipped = 0
        self.rejected = 0
        self.deferred = 0
        self.batches = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        """New events are in the outbox (thread-unsafe: call on the loop)."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def ship_pending(self) -> int:
        """Ship until the outbox is empty or a send fails (raises); return events acked."""
        from securemesh.audit.outbox import ship_once_async  # noqa: PLC0415

        acked = 0
        while True:
            result = await ship_once_async(
                self.outbox, self._send, limit=MAX_APPEND_ENTRIES, max_bytes=self._max_bytes
            )
            if result.sent == 0:
                return acked
            self.batches += 1
            self.shipped += result.acked
            self.rejected += result.rejected
            self.deferred += result.deferred
            answered = result.acked + result.rejected + result.deferred
            acked += result.acked + result.rejected
            if answered == 0:
                return acked  # nothing acknowledged: try again later, not in a tight loop

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                await self.ship_pending()
            except (SecureMeshError, TimeoutError, OSError) as exc:
                self.failures += 1
                self.consecutive_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = min(
                    self._backoff_max, self._backoff_min * 2 ** min(self.consecutive_failures, 16)
                )
                if self.consecutive_failures in (1, 10) or self.consecutive_failures % 100 == 0:
                    log.warning(
                        "audit shipping failed; retrying",
                        extra={"event": "audit_ship_failed", "error": self.last_error},
                    )
                await asyncio.sleep(delay * (0.5 + 0.5 * self._rng()))
                continue
            self.consecutive_failures = 0
            await self._sleep(self._interval)

    def status(self) -> dict[str, object]:
        return {
            "outbox_pending": self.outbox.pending_count(),
            "outbox_deferred": self.outbox.deferred_count(),
            "shipped": self.shipped,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "batches": self.batches,
            "ship_failures": self.failures,
            "last_error": self.last_error,
        }


# -------------------------------------------------------------------- the cloud


class BusAuditIngest:
    """The cloud's ``audit.append`` handler in front of an :class:`AuditService`.

    The log is synchronous (SQLAlchemy): every database call runs on one
    dedicated thread, in arrival order, so the event loop keeps serving.
    """

    def __init__(self, node: MeshNode, audit_log: AuditLog) -> None:
        from securemesh.audit.service import AuditService  # noqa: PLC0415 - sqlalchemy

        self.node = node
        self.log = audit_log
        self.service = AuditService(audit_log)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-log")
        from securemesh.audit.events import event_key_id  # noqa: PLC0415

        #: ``(node id, key id)`` pairs registered (or being registered) in the log
        self._registered: set[tuple[str, bytes]] = {
            (node, event_key_id(vk))
            for node, keys in audit_log.registered_nodes().items()
            for vk in keys
        }
        self.requests = 0
        self.lookups = 0  #: certificates learned from relaying edges
        self.refused: Counter[str] = Counter()
        from securemesh.node._kinds import KindRules  # noqa: PLC0415

        #: who may log which kind namespace (``[[audit.kinds]]``, securemesh.node._kinds)
        self.kind_rules = KindRules(node.config.audit.kinds)
        self.register(node.node_id, node.certificate.verify_key)
        from securemesh.audit.admission import EventPolicy  # noqa: PLC0415

        #: kind x tier x subject rules and time bounds (securemesh.audit.admission)
        self.policy = EventPolicy(max_future_skew=node.config.limits.max_clock_skew)
        #: called as ``on_flag(event, leaf index, reason)`` for each appended, flagged event
        self.on_flag: Callable[[AuditEvent, int, str], None] | None = None
        self.flagged: Counter[str] = Counter()
        #: earliest ``not_before`` (ms) seen for an ``(origin, key id)``
        self._key_since: dict[tuple[str, bytes], int] = {}

    def install(self) -> None:
        """Register the ``audit.append`` handler (any enrolled tier may send it)."""
        self.node.on_protocol(
            MSG_AUDIT_APPEND,
            self.handle,
            policy=AllowTypes(types=[MSG_AUDIT_APPEND], tiers=["end", "edge", "cloud"]),
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def register(self, node_id: str, verify_key: bytes) -> None:
        """Add a key to ``node_id``'s key history in the log's registry (see module doc).

        Once per ``(node id, key id)`` in this process; the log's own
        :meth:`~securemesh.audit.log.AuditLog.register_node` is idempotent too.
        """
        from securemesh.audit.events import event_key_id  # noqa: PLC0415

        vk = bytes(verify_key)
        slot = (node_id, event_key_id(vk))
        if slot in self._registered:
            return
        self._registered.add(slot)
        self._executor.submit(self._register_sync, node_id, vk)

    def _register_sync(self, node_id: str, verify_key: bytes) -> None:
        try:
            self.log.register_node(node_id, verify_key)
        except LocalError as exc:  # a key id colliding with another key of the node
            log.warning(
                "audit origin key not registered",
                extra={"event": "audit_register_failed", "node": node_id, "error": str(exc)},
            )

    def register_from_directory(self, node_id: str, key_id: bytes) -> bool:
        """Register ``node_id``'s key named ``key_id`` from the directory, if it holds it.

        Only a currently valid certificate counts, and only if its verify key
        has that key id: a node that re-enrolled with new keys gets its new
        key registered the first time an event signed with it arrives.
        Returns whether the key is registered (now or before).
        """
        from securemesh.audit.events import event_key_id  # noqa: PLC0415

        if (node_id, key_id) in self._registered:
            return True
        with contextlib.suppress(CertificateError):
            entry = self.node.directory.lookup(node_id, now=self.node.clock())
            if event_key_id(entry.cert.verify_key) == key_id:
                self.register(node_id, entry.cert.verify_key)
                return True
        return False

    async def append_local(self, entries: list[bytes]) -> list[Ack]:
        """The cloud's own outbox: straight into the service (same thread, same checks)."""
        for origin, key_id in self._signers(entries):
            self.register_from_directory(origin, key_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.service.handle_batch, entries)

    def _named(self, entries: list[bytes]) -> list[tuple[bytes, str, str, bytes, AuditEvent]]:
        """``(entry, event id, origin, key id, unverified event)`` of each decodable entry
        (others counted)."""
        from securemesh.audit.events import SignedEvent  # noqa: PLC0415

        named: list[tuple[bytes, str, str, bytes, AuditEvent]] = []
        for entry in entries:
            try:
                signed = SignedEvent.from_bytes(entry)
            except RemoteError:
                self.refused["malformed"] += 1
                continue
            event = signed.unverified_event()
            named.append((entry, event.event_id, event.origin, signed.key_id, event))
        return named

    def _origin_certificate(self, msg: VerifiedMessage, origin: str) -> Certificate | None:
        """The certificate of an event's ``origin``: the sender's, or one learned here."""
        if origin == msg.sender:
            return msg.certificate
        signed = self.node.directory.signed_certificate(origin)
        return None if signed is None else signed.unverified_certificate()  # verified on add

    def _kind_allowed(self, kind: str, cert: Certificate | None) -> bool | None:
        """Whether the origin (``cert``) may log ``kind`` (None: its certificate is not known)."""
        if not self.kind_rules.needs_certificate(kind):
            return True
        if cert is None:
            return None
        return self.kind_rules.allows(kind, cert)

    def _admit(
        self, cert: Certificate | None, origin: str, key_id: bytes, event: AuditEvent
    ) -> Admission:
        """The event policy's verdict, with the origin's tier (``cert``), namespace and key age."""
        from securemesh.audit.events import event_key_id  # noqa: PLC0415

        slot = (origin, key_id)
        if cert is not None and event_key_id(cert.verify_key) == key_id:
            since = min(cert.not_before * 1000, self._key_since.get(slot, cert.not_before * 1000))
            self._key_since[slot] = since
            while len(self._key_since) > _MAX_KEY_SINCE:
                del self._key_since[next(iter(self._key_since))]
        return self.policy.admit(
            event,
            tier=cert.tier.value if cert is not None else None,
            now_ms=int(self.node._clock() * 1000),
            namespace=self._namespace(origin),
            key_since_ms=self._key_since.get(slot),
        )

    def _namespace(self, origin: str) -> Callable[[str], bool] | None:
        """The name constraint of ``origin``'s delegated authority, if the cloud knows one.

        The delegation is a certificate of its own (``delegation.cert`` on the
        edge), learned as the intermediate of the certificates it issued.
        """
        signed = self.node.directory.trust.delegated_authorities.get(origin)
        if signed is None:
            return None
        delegation = signed.unverified_certificate().delegation
        return delegation.permits_name if delegation is not None else None

    def _delegation_unknown(self, sender_cert: Certificate, event: AuditEvent) -> bool:
        """An edge's event that needs its delegation, which the cloud has not learned yet.

        It learns it with the first certificate that delegation issued (a
        device's hello, announced by the edge): such events are deferred, not
        refused, so an edge's ``node.enrolled`` shipped before that arrives later.
        """
        return (
            sender_cert.tier is Tier.EDGE
            and self.policy.rules.get(str(event.kind), {}).get("edge") == "namespace"
            and event.origin == sender_cert.node_id
            and self._namespace(sender_cert.node_id) is None
        )

    async def _learn_from_relay(self, msg: VerifiedMessage, origins: set[str]) -> None:
        """Ask the relaying edge for the certificates of ``origins`` (new to us, or their key).

        The edge verified those devices' messages, so it holds their current
        certificates. At most :data:`_LOOKUPS_PER_REQUEST` per request,
        concurrently; what is still unknown afterwards is deferred, while an
        origin whose current certificate names another key than an event's is
        known, and such an event is refused for good (a key the edge does not
        vouch for).
        """
        if not origins:
            return
        learned = await asyncio.gather(
            *(
                self.node.learn_certificate_from(msg, origin)
                for origin in sorted(origins)[:_LOOKUPS_PER_REQUEST]
            )
        )
        self.lookups += sum(learned)

    def _signers(self, entries: list[bytes]) -> set[tuple[str, bytes]]:
        """The ``(origin, key id)`` pairs the decodable entries name."""
        from securemesh.audit.events import SignedEvent  # noqa: PLC0415

        signers: set[tuple[str, bytes]] = set()
        for entry in entries:
            with contextlib.suppress(RemoteError):
                signed = SignedEvent.from_bytes(entry)
                signers.add((signed.unverified_event().origin, signed.key_id))
        return signers

    def _may_send_for(self, sender: str, sender_tier: Tier, origin: str) -> bool:
        if origin == sender:
            return True
        if sender_tier is not Tier.EDGE:
            return False
        signed = self.node.directory.signed_certificate(origin)
        return signed is not None and signed.unverified_certificate().tier is Tier.END

    def _refusal(
        self,
        msg: VerifiedMessage,
        origin: str,
        origin_cert: Certificate | None,
        kind: str,
        *,
        relay: bool,
    ) -> int | None:
        """DEFERRED/REJECTED (counted) if this sender may not append this origin's ``kind``."""
        from securemesh.audit.outbox import DEFERRED, REJECTED  # noqa: PLC0415

        tier = msg.certificate.tier if msg.certificate is not None else Tier.END
        if not self._may_send_for(msg.sender, tier, origin):
            if relay and self.node.directory.signed_certificate(origin) is None:
                self.refused["origin_unknown_yet"] += 1  # a device we have not met yet
                return DEFERRED
            self.refused["origin_not_allowed"] += 1
            return REJECTED
        kind_ok = self._kind_allowed(kind, origin_cert)
        if kind_ok is None:
            self.refused["origin_unknown_yet"] += 1
            return DEFERRED
        if not kind_ok:
            self.refused["kind_not_allowed"] += 1
            return REJECTED
        return None

    async def handle(  # noqa: PLR0912 - one decision per event, in the module doc's order
        self, msg: VerifiedMessage
    ) -> AuditAppendReply:
        from securemesh.audit.outbox import DEFERRED, REJECTED  # noqa: PLC0415

        self.requests += 1
        cert = msg.certificate
        if cert is None:  # unreachable: not a first-contact type
            raise UnknownOrigin("audit.append needs an enrolled sender")
        body = msg.body(AuditAppend)
        entries = [b64d(text, max_size=_MAX_SIGNED) for text in body.entries]
        if sum(len(e) for e in entries) > MAX_APPEND_BYTES:
            raise SizeLimitExceeded(f"audit.append carries more than {MAX_APPEND_BYTES} bytes")
        named = self._named(entries)
        relay = cert.tier is Tier.EDGE
        if relay:  # origins (or keys) new to us: ask the relaying edge first
            await self._learn_from_relay(
                msg,
                {
                    origin
                    for _, _, origin, key_id, _ in named
                    if origin != msg.sender and not self.register_from_directory(origin, key_id)
                },
            )
        acks: list[Ack] = []
        allowed: list[bytes] = []
        unchecked: set[str] = set()  # event ids whose origin we cannot check yet
        flags: dict[str, tuple[AuditEvent, str]] = {}
        for entry, event_id, origin, key_id, event in named:
            origin_cert = self._origin_certificate(msg, origin)  # once per event
            refusal = self._refusal(msg, origin, origin_cert, str(event.kind), relay=relay)
            if refusal is not None:  # origin or kind namespace not allowed from this sender
                acks.append((event_id, refusal))
                continue
            if self._delegation_unknown(cert, event):
                self.refused["delegation_unknown_yet"] += 1
                acks.append((event_id, DEFERRED))
                continue
            verdict = self._admit(origin_cert, origin, key_id, event)
            if verdict.refused is not None:  # kind, subject or time outside the policy
                self.refused[verdict.refused] += 1
                acks.append((event_id, REJECTED))
                continue
            if verdict.flag is not None:
                flags[event_id] = (event, verdict.flag)
            known = self.register_from_directory(origin, key_id)
            if not known and relay and origin != msg.sender and not self.node._valid_now(origin):
                unchecked.add(event_id)  # no valid certificate for it here, even now
            allowed.append(entry)
        if allowed:
            loop = asyncio.get_running_loop()
            for event_id, index in await loop.run_in_executor(
                self._executor, self.service.handle_batch, allowed
            ):
                later = index == REJECTED and event_id in unchecked
                if later:  # not appended: resent later, when we may know its origin
                    self.refused["origin_unknown_yet"] += 1
                acks.append((event_id, DEFERRED if later else index))
                if index >= 0 and event_id in flags:
                    self._flag(*flags[event_id], index)
        return AuditAppendReply(acks=acks)

    def _flag(self, event: AuditEvent, reason: str, index: int) -> None:
        self.flagged[reason] += 1
        log.warning(
            "audit event flagged",
            extra={
                "event": "audit_flagged",
                "reason": reason,
                "event_id": event.event_id,
                "origin": event.origin,
                "index": index,
            },
        )
        if self.on_flag is not None:
            self.on_flag(event, index, reason)

    def status(self) -> dict[str, object]:
        refused = dict(self.refused)
        for reason, n in self.service.rejections.items():
            refused[reason] = refused.get(reason, 0) + n
        return {
            "append_requests": self.requests,
            "appended": self.service.accepted,
            "certificates_learned": self.lookups,
            "refused": refused,
            "flagged": dict(self.flagged),
        }


# ------------------------------------------------------------- a node's audit


def open_cloud_log(
    data_dir: Path,
    *,
    log_db: str | None,
    log_key: str | None,
    passphrase: str,
    kdf_params: KdfParams,
) -> AuditLog:
    """The cloud's log. Its key file is encrypted under the node's ``passphrase``:
    created so on first use (``.pub`` verifier beside it), and a plain key file
    from before the key store is re-wrapped in place (the same key)."""
    from securemesh.audit.admin import create_log_key, rewrap_log_key  # noqa: PLC0415
    from securemesh.audit.log import open_log  # noqa: PLC0415 - sqlalchemy

    key_path = Path(log_key) if log_key is not None else data_dir / LOG_KEY_FILE
    if not key_path.exists():
        create_log_key(key_path, passphrase=passphrase, params=kdf_params)
        log.info(
            "audit log key created",
            extra={"event": "log_key_created", "verifier": str(key_path) + ".pub"},
        )
    key = rewrap_log_key(key_path, passphrase, params=kdf_params)
    url = log_db if log_db is not None else str(data_dir / LOG_DB_FILE)
    return open_log(url, signer=key.signer, origin=key.name)


LOG_KEY_FILE: Final = "audit-log.key"
LOG_DB_FILE: Final = "audit.db"


#: A node's outbox in its data directory (daemon and SDK device alike).
OUTBOX_FILE: Final = "audit-outbox.db"


class NodeAudit:
    """Everything audit in one node, a daemon or an SDK device (:meth:`open`).

    The durable outbox with the rejection hook (:class:`~securemesh.node.RejectionAuditor`
    as the node's ``metrics.audit_hook``), the recorder, the shipper, and
    on a cloud node the ``audit.append`` ingest handler in front of the log.
    It owns the outbox: :meth:`close` closes it.
    """

    @classmethod
    def open(
        cls,
        config: NodeConfig,
        node: MeshNode,
        data_dir: Path,
        signer: Signer,
        *,
        clock: Callable[[], float] = time.time,
        key_passphrase: tuple[str, KdfParams] | None = None,
    ) -> NodeAudit:
        """Open ``data_dir/audit-outbox.db``, hook rejections into it, wire shipping.

        Call before ``node.start()``, then :meth:`start` on the running loop;
        at shutdown :meth:`stop` (before ``node.stop``) and :meth:`close`.
        A cloud node needs ``key_passphrase`` (the node's passphrase and KDF
        cost) for its log key file.
        """
        from securemesh.audit.outbox import Outbox  # noqa: PLC0415 - sqlite3 only
        from securemesh.node._audit import RejectionAuditor  # noqa: PLC0415

        outbox = Outbox(data_dir / OUTBOX_FILE, keep_receipts=config.audit.keep_receipts)
        try:
            node.metrics.audit_hook = RejectionAuditor(
                outbox, origin=node.node_id, signer=signer, window=config.limits.log_window
            )
            return cls(
                config, node, outbox, data_dir, signer, clock=clock, key_passphrase=key_passphrase
            )
        except BaseException:
            node.metrics.audit_hook = None
            outbox.close()
            raise

    def __init__(
        self,
        config: NodeConfig,
        node: MeshNode,
        outbox: Outbox,
        data_dir: Path,
        signer: Signer,
        *,
        clock: Callable[[], float] = time.time,
        key_passphrase: tuple[str, KdfParams] | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.outbox = outbox
        self.recorder = AuditRecorder(outbox, origin=node.node_id, signer=signer, clock=clock)
        self.recorder.attach(node)
        self.ingest: BusAuditIngest | None = None
        self._log: AuditLog | None = None
        send: AsyncSendBatch
        if node.tier is Tier.CLOUD:
            if key_passphrase is None:
                raise ConfigError("a cloud node's audit log key needs the node's passphrase")
            try:
                self._log = open_cloud_log(
                    data_dir,
                    log_db=config.audit.log_db,
                    log_key=config.audit.log_key,
                    passphrase=key_passphrase[0],
                    kdf_params=key_passphrase[1],
                )
            except SecureMeshError:
                raise
            except Exception as exc:  # the database driver's errors: one clear line
                raise ConfigError(f"cannot open the audit log: {exc}") from exc
            self.ingest = BusAuditIngest(node, self._log)
            self.ingest.on_flag = self.flagged
            self.ingest.install()
            send = self.ingest.append_local
        else:
            if node.tier is Tier.EDGE:
                allow_audit_relay(node)
            send = bus_sender(
                node,
                cloud=lambda: cloud_node_of(node, config.audit.cloud_node),
                timeout=config.audit.request_timeout,
            )
        self.shipper = AuditShipper(
            outbox,
            send,
            interval=config.audit.ship_interval,
            backoff_max=config.audit.backoff_max,
        )
        self.recorder.wake = self.shipper.wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.config.audit.ship:
            self._task = asyncio.get_running_loop().create_task(self.shipper.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def close(self) -> None:
        """Close the ingest thread, the log and the outbox (after :meth:`stop`)."""
        try:
            if self.ingest is not None:
                self.ingest.close()
            if self._log is not None:
                self._log.close()
        finally:
            self.outbox.close()

    def _record(self, kind: str, subject: str, details: dict[str, Any], event_id: str) -> None:
        try:
            self.recorder.record(kind, ("node", subject), details=details, event_id=event_id)
        except (SecureMeshError, OSError) as exc:
            log.warning(
                "audit event not recorded",
                extra={"event": "audit_record_failed", "kind": kind, "error": str(exc)},
            )

    def enrolled(self, node_id: str) -> None:
        """``node.enrolled`` by the node that issued the certificate (cloud or delegated edge)."""
        signed = self.node.directory.signed_certificate(node_id)
        if signed is None:
            return
        cert = signed.unverified_certificate()
        if self.ingest is not None:
            self.ingest.register(node_id, cert.verify_key)
        if cert.issuer != self.node.node_id and self.node.tier is not Tier.CLOUD:
            return  # relayed to the cloud, which records it
        details = {
            "tier": cert.tier.value,
            "serial": cert.serial,
            "issuer": cert.issuer,
            "roles": ",".join(cert.roles),
            "not_after": cert.not_after,
        }
        self._record(
            "node.enrolled",
            node_id,
            details,
            deterministic_event_id("node.enrolled", node_id, str(cert.serial)),
        )

    def flagged(self, event: AuditEvent, index: int, reason: str) -> None:
        """``audit.flagged`` by the cloud: an appended event the event policy marked."""
        try:
            self.recorder.record(
                "audit.flagged",
                ("message", event.event_id),
                outcome="failure",
                details={
                    "reason": reason,
                    "index": index,
                    "origin": event.origin,
                    "kind": str(event.kind),
                    "event_time_ms": event.time_ms,
                },
                event_id=deterministic_event_id("audit.flagged", event.event_id),
            )
        except (SecureMeshError, OSError) as exc:
            log.warning(
                "audit event not recorded",
                extra={"event": "audit_record_failed", "kind": "audit.flagged", "error": str(exc)},
            )

    def renewed(self, node_id: str) -> None:
        signed = self.node.directory.signed_certificate(node_id)
        if signed is None:
            return
        cert = signed.unverified_certificate()
        details = {"serial": cert.serial, "issuer": cert.issuer, "not_after": cert.not_after}
        self._record(
            "cert.renewed",
            node_id,
            details,
            deterministic_event_id("cert.renewed", node_id, str(cert.serial)),
        )

    def revoked(self, old: RevocationList | None, new: RevocationList) -> None:
        """``cert.revoked`` for each node id or serial the new list adds (the cloud, once)."""
        old_ids = old.node_ids if old is not None else frozenset()
        old_serials = old.serials if old is not None else frozenset()
        for node_id in sorted(new.node_ids - old_ids):
            self._record(
                "cert.revoked",
                node_id,
                {"list_version": new.version, "issuer": new.issuer},
                deterministic_event_id("cert.revoked", new.issuer, node_id),
            )
        for serial in sorted(new.serials - old_serials):
            self._record(
                "cert.revoked",
                f"serial:{serial}",
                {"list_version": new.version, "issuer": new.issuer, "serial": serial},
                deterministic_event_id("cert.revoked", new.issuer, f"serial:{serial}"),
            )

    def status(self) -> dict[str, object]:
        out = self.shipper.status()
        out["recorded"] = self.recorder.recorded
        if self.ingest is not None:
            out.update(self.ingest.status())
        return out
