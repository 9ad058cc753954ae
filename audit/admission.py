"""Which events an origin may put in the log, and when: the cloud ingest's event policy.

Theory of operation
-------------------
The origin signature proves *who* says something; it does not make every
statement believable. A compromised device can sign ``cert.revoked`` about
another device, dated 2001. :class:`EventPolicy` decides, for an event whose
origin is already known to be allowed to send (``BusAuditIngest``: the sender
itself, or a device of the sending edge), one of: **accept**, **refuse**
(reason code; acknowledged ``-1``, never appended) or **accept and flag**
(appended — it is signed evidence — and marked for the auditor).

1. **Kind, tier and subject** (:data:`DEFAULT_RULES`, deny by default). Each
   kind lists the tiers that may emit it and, per tier, which subjects:

   * ``any`` — any subject;
   * ``own`` — a subject that is not a node, or the origin itself
     (a device speaks about itself and the objects, tasks, rounds, messages
     and keys it handles, never about other nodes);
   * ``namespace`` — a node inside the name constraint of the origin's
     delegated authority (an edge records ``node.enrolled`` and
     ``cert.renewed`` only for the devices it may certify).

   ``message.rejected`` names the *claimed* sender of what a node refused, so
   any tier may name any subject. ``cert.revoked`` and ``audit.flagged`` are the
   cloud's alone. A kind of the runtime's own namespaces (``node``, ``cert``,
   ``message``, ``audit``) that is not listed is refused (``kind_not_allowed``).
   Kinds that services declare (their own namespaces,
   admitted per origin tier and roles by the cloud's ``[[audit.kinds]]``
   rules, :mod:`securemesh.node._kinds`) get :data:`SERVICE_SCOPE`: the cloud
   may name any subject, an edge or device only itself or non-node subjects.

2. **Time.** ``time_ms`` is the origin's clock, and shipping may be late: an
   edge's outbox holds events through a cloud outage of hours, a device's
   through its own. So the two directions differ:

   * **future** — more than ``max_future_skew`` (the mesh's clock-skew bound,
     ``limits.max_clock_skew``, 120 s by default) ahead of the ingest clock: no
     honest node produces it, however late it ships; refused
     (``event_time_future``);
   * **past** — no fixed bound (that would drop honestly buffered events).
     An event dated before its signing key was certified (the ``not_before`` of
     the origin's certificate for that key, the earliest this ingest has seen,
     minus the same skew) cannot have been signed then by an honest node with
     a sane clock: it is appended and flagged ``event_time_before_key`` (a
     device whose clock was reset, or one back-dating on purpose — both worth
     an auditor's look, neither worth losing). Without a certificate to
     compare with (the standalone endpoint) nothing is flagged.

Flags are not part of the signed event (the origin signed it as it is); the
cloud records each as its own signed ``audit.flagged`` event (subject: the
flagged event id; details: reason, leaf index, event and ingest times), so
``audit query --kind audit.flagged`` lists them and ``audit verify`` covers
them like any other entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from securemesh.audit.events import AuditEvent, EventKind, SubjectType

__all__ = [
    "DEFAULT_RULES",
    "SERVICE_SCOPE",
    "Admission",
    "EventPolicy",
    "Scope",
]

Scope = Literal["any", "own", "namespace"]

_ALL: Final[dict[str, Scope]] = {"cloud": "any", "edge": "any", "end": "any"}
_SERVICE: Final[dict[str, Scope]] = {"cloud": "any", "edge": "own", "end": "own"}
_AUTHORITY: Final[dict[str, Scope]] = {"cloud": "any", "edge": "namespace"}
_CLOUD: Final[dict[str, Scope]] = {"cloud": "any"}

DEFAULT_RULES: Final[Mapping[str, Mapping[str, Scope]]] = {
    EventKind.NODE_ENROLLED.value: _AUTHORITY,
    EventKind.CERT_RENEWED.value: _AUTHORITY,
    EventKind.CERT_REVOKED.value: _CLOUD,
    EventKind.MESSAGE_REJECTED.value: _ALL,
    EventKind.AUDIT_FLAGGED.value: _CLOUD,
    **{
        kind.value: _SERVICE
        for kind in EventKind
        if kind.value.split(".")[0] in {"task", "object", "storage", "fl", "he"}
    },
}
"""kind -> {tier: subject scope}; a tier not listed may not emit the kind."""

SERVICE_SCOPE: Final[Mapping[str, Scope]] = _SERVICE
"""The scope of a kind outside the built-in namespaces (a service's own kind)."""

#: Namespaces of the runtime's own kinds: an unlisted kind there is refused.
_RESERVED_NAMESPACES: Final = frozenset({"node", "cert", "message", "audit"})


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one event: ``refused`` (a reason code) or accepted, maybe ``flag``-ged."""

    refused: str | None = None
    flag: str | None = None

    @property
    def accepted(self) -> bool:
        return self.refused is None


_ACCEPT: Final = Admission()


class EventPolicy:
    """Kind, tier and subject rules and the time bounds (module doc)."""

    def __init__(
        self,
        *,
        max_future_skew: float = 120.0,
        rules: Mapping[str, Mapping[str, Scope]] = DEFAULT_RULES,
    ) -> None:
        self.max_future_skew_ms = int(max_future_skew * 1000)
        self.rules = rules

    def admit(
        self,
        event: AuditEvent,
        *,
        tier: str | None,
        now_ms: int,
        namespace: Callable[[str], bool] | None = None,
        key_since_ms: int | None = None,
    ) -> Admission:
        """Judge ``event`` from an origin of ``tier`` (None: unknown, only time is checked).

        ``namespace(node_id)`` says whether the origin's delegated authority
        covers a node id (None: the origin has none); ``key_since_ms`` is when
        the origin's signing key was first certified, if known.
        """
        if tier is not None:
            refused = self._subject_refusal(event, tier, namespace)
            if refused is not None:
                return Admission(refused=refused)
        if event.time_ms > now_ms + self.max_future_skew_ms:
            return Admission(refused="event_time_future")
        if key_since_ms is not None and event.time_ms < key_since_ms - self.max_future_skew_ms:
            return Admission(flag="event_time_before_key")
        return _ACCEPT

    def _subject_refusal(
        self, event: AuditEvent, tier: str, namespace: Callable[[str], bool] | None
    ) -> str | None:
        kind = str(event.kind)  # an EventKind is a StrEnum: its str() is its value
        rules = self.rules.get(kind)
        if rules is None and kind.split(".", maxsplit=1)[0] not in _RESERVED_NAMESPACES:
            rules = SERVICE_SCOPE
        scope = (rules or {}).get(tier)
        if scope is None:
            return "kind_not_allowed"
        subject = event.subject
        is_node = subject.type is SubjectType.NODE
        if scope == "own" and is_node and subject.id != event.origin:
            return "subject_not_allowed"
        if scope == "namespace" and (not is_node or namespace is None or not namespace(subject.id)):
            return "subject_not_allowed"
        return None
