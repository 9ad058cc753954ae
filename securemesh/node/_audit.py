"""Rejections into the audit layer: signed ``message.rejected`` events in the edge outbox.

Theory of operation
-------------------
:class:`RejectionAuditor` is an :data:`~securemesh.node.AuditHook`. For each
:class:`~securemesh.node.Rejection` it builds an
:class:`~securemesh.audit.events.AuditEvent` of kind ``message.rejected``
(outcome ``denied``; subject: the *claimed* sender node, or the CURVE key
prefix of the link when the message was too broken to name one; details:
``reason``, ``msg_type``, ``peer``, ``suppressed``), signs it with the node's
identity key (:func:`~securemesh.audit.events.sign_event`, so the cloud cannot
forge it) and stores it durably in the node's
:class:`~securemesh.audit.outbox.Outbox`, from where the audit layer ships it
to the cloud log.

A peer must not be able to turn a flood of garbage into a flood of signed,
fsync'ed audit records, so the auditor records at most one event per
``window`` seconds per ``(peer, reason)``; the next event carries the number
of rejections suppressed in between (the counters in ``status.json`` stay
exact). When no next event comes, :meth:`RejectionAuditor.flush` (called
from the node's maintenance loop through
:meth:`~securemesh.node.Metrics.flush_suppressed`) records the count once the
window has closed: an event like the last suppressed rejection with
``suppressed`` set and ``window_closed: true`` (it stands for the suppressed
rejections only, not for one more), so a burst that stops is never hidden
from the log: the rejections of a peer and reason are the events without
``window_closed`` plus the sum of ``suppressed``. The
hook never raises into the receive loop (the node counts hook failures in
``audit_failures``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from securemesh.node._metrics import Rejection

if TYPE_CHECKING:
    from securemesh.audit.outbox import Outbox
    from securemesh.crypto.signing import Signer

__all__ = ["RejectionAuditor"]


class _Window:
    __slots__ = ("count", "last", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.last: Rejection | None = None


class RejectionAuditor:
    """Audit hook writing rate-limited, signed ``message.rejected`` events to an outbox."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        origin: str,
        signer: Signer,
        window: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.origin = origin
        self._signer = signer
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        # (peer, reason) -> (window start, suppressed count, last suppressed rejection)
        self._state: OrderedDict[tuple[bytes | None, str], _Window] = OrderedDict()
        self.recorded = 0
        self.suppressed = 0

    def __call__(self, rejection: Rejection) -> None:
        key = (rejection.peer, rejection.reason)
        now = rejection.at
        state = self._state.get(key)
        if state is not None and now - state.start < self._window:
            state.count += 1
            state.last = rejection
            self.suppressed += 1
            return
        suppressed = 0 if state is None else state.count
        self._state[key] = _Window(now)
        self._state.move_to_end(key)
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        self._record(rejection, suppressed)

    def flush(self, now: float) -> int:
        """Record the suppressed count of every window closed by ``now``; return events."""
        recorded = 0
        while self._state:
            key, state = next(iter(self._state.items()))
            if now - state.start < self._window:
                break  # in start order: the rest are still open
            del self._state[key]
            if state.count and state.last is not None:
                self._record(state.last, state.count, window_closed=True)
                recorded += 1
        return recorded

    def _record(
        self, rejection: Rejection, suppressed: int, *, window_closed: bool = False
    ) -> None:
        from securemesh.audit.events import (  # noqa: PLC0415 - the audit package is optional here
            EventKind,
            Outcome,
            SubjectType,
            new_event,
            sign_event,
        )

        peer = None if rejection.peer is None else rejection.peer.hex()[:16]
        subject = rejection.sender_claimed or f"curve:{peer or 'unknown'}"
        event = new_event(
            EventKind.MESSAGE_REJECTED,
            origin=self.origin,
            subject=(SubjectType.NODE, subject[:256]),
            outcome=Outcome.DENIED,
            details={
                "reason": rejection.reason,
                "msg_type": rejection.msg_type,
                "peer": peer,
                "suppressed": suppressed,
                **({"window_closed": True} if window_closed else {}),
            },
            now=rejection.at,
        )
        self.outbox.put(sign_event(event, self._signer))
        self.recorded += 1
