"""Counters, rejection records and rate-limited rejection logging.

Theory of operation
-------------------
Every message the node receives ends in exactly one of: accepted (handed to a
handler or a pending request), forwarded, or rejected. A rejection is a
:class:`Rejection` record naming the stable ``reason`` code (the ``reason`` of
the :class:`~securemesh.errors.RemoteError` that stopped it), the
transport-authenticated peer key, the *claimed* sender (unverified when the
rejection happened before the signature check), the message type and a detail
string for our own logs. :meth:`Metrics.reject`

1. counts it (total and by reason),
2. logs it at most once per ``log_window`` seconds per ``(peer, reason)``
   (a flooding peer produces one line per window, with a count of what was
   suppressed), and
3. hands it to ``audit_hook`` (the audit layer's edge outbox); a failing hook
   is counted, never raised into the receive loop.

A window's suppressed count must not wait for the *next* rejection of the
same peer and reason, which may never come (an attacker sends one burst and
stops): :meth:`Metrics.flush_suppressed`, called by the node's maintenance
loop, logs ``"rejections suppressed"`` with the count for every window that
has closed, and lets the audit hook do the same (``flush(now)``, if it has
one). The windows are kept in the order they started, so this looks only at
the oldest few.
:meth:`Metrics.drop` does the same for a message the node *sent* that the
transport dropped because the peer's queue was full (reason
``peer_queue_full``: a peer that does not read its replies): counted apart
(``dropped``, ``drops``), logged and audited with the same rate limits.

Nothing here allocates on the accepted path except integer increments.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuditHook", "Metrics", "Rejection"]

log = logging.getLogger("securemesh.node")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one message was refused. ``peer`` is the CURVE key of the link it came on."""

    reason: str
    peer: bytes | None
    sender_claimed: str | None
    msg_type: str | None
    detail: str
    at: float

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (peer key as a 16-hex-digit prefix: enough to tell peers apart)."""
        return {
            "reason": self.reason,
            "peer": None if self.peer is None else self.peer.hex()[:16],
            "sender_claimed": self.sender_claimed,
            "msg_type": self.msg_type,
            "detail": self.detail,
            "at": self.at,
        }


AuditHook = Callable[[Rejection], None]


class Metrics:
    """The node's counters plus the rejection sink (count, rate-limited log, audit hook)."""

    __slots__ = (
        "_log_state",
        "_max_log_keys",
        "accepted",
        "audit_failures",
        "audit_hook",
        "dispatched",
        "dropped",
        "drops",
        "forwarded",
        "log_window",
        "received",
        "rejected",
        "rejections",
        "replies",
        "send_failures",
        "sent",
    )

    def __init__(
        self,
        *,
        audit_hook: AuditHook | None = None,
        log_window: float = 60.0,
        max_log_keys: int = 4096,
    ) -> None:
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self.forwarded = 0
        self.dispatched = 0
        self.replies = 0
        self.sent = 0
        self.send_failures = 0
        self.audit_failures = 0
        self.rejections: Counter[str] = Counter()
        self.dropped = 0
        self.drops: Counter[str] = Counter()
        self.audit_hook = audit_hook
        self.log_window = log_window
        self._max_log_keys = max_log_keys
        # (peer, reason) -> [window start, suppressed count]
        self._log_state: OrderedDict[tuple[bytes | None, str], list[float]] = OrderedDict()

    def reject(self, rejection: Rejection) -> bool:
        """Count, maybe log, and audit one rejection. Returns True if it was logged."""
        self.rejected += 1
        self.rejections[rejection.reason] += 1
        logged = self._maybe_log(rejection)
        hook = self.audit_hook
        if hook is not None:
            try:
                hook(rejection)
            except Exception:  # the audit layer must never break the receive loop
                self.audit_failures += 1
        return logged

    def drop(self, rejection: Rejection) -> bool:
        """Count, maybe log, and audit one message we sent that was dropped."""
        self.dropped += 1
        self.drops[rejection.reason] += 1
        logged = self._maybe_log(rejection, "dropped message", "dropped")
        hook = self.audit_hook
        if hook is not None:
            try:
                hook(rejection)
            except Exception:
                self.audit_failures += 1
        return logged

    def _maybe_log(
        self, rejection: Rejection, what: str = "rejected message", event: str = "rejected"
    ) -> bool:
        key = (rejection.peer, rejection.reason)
        state = self._log_state.get(key)
        now = rejection.at
        if state is not None and now - state[0] < self.log_window:
            state[1] += 1
            return False
        suppressed = 0 if state is None else int(state[1])
        self._log_state[key] = [now, 0.0]
        self._log_state.move_to_end(key)
        while len(self._log_state) > self._max_log_keys:
            self._log_state.popitem(last=False)
        log.warning(
            what,
            extra={"event": event, **rejection.to_dict(), "suppressed": suppressed},
        )
        return True

    def flush_suppressed(self, now: float) -> int:
        """Log the suppressed count of every window closed by ``now``; return lines logged.

        A closed window is forgotten, so the next rejection of that peer and
        reason is logged at once (with ``suppressed`` 0: nothing is counted
        twice). The audit hook's ``flush(now)`` runs too (failures counted).
        """
        state = self._log_state
        logged = 0
        while state:
            key, (start, count) = next(iter(state.items()))
            if now - start < self.log_window:
                break  # windows are in start order: the rest are still open
            del state[key]
            if count:
                peer, reason = key
                log.warning(
                    "rejections suppressed",
                    extra={
                        "event": "rejected_suppressed",
                        "reason": reason,
                        "peer": None if peer is None else peer.hex()[:16],
                        "suppressed": int(count),
                        "window_start": start,
                        "window_s": self.log_window,
                    },
                )
                logged += 1
        flush = getattr(self.audit_hook, "flush", None)
        if flush is not None:
            try:
                flush(now)
            except Exception:  # the audit layer must never break the node's loops
                self.audit_failures += 1
        return logged

    def snapshot(self) -> dict[str, object]:
        """The counters as a JSON-friendly dict."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "forwarded": self.forwarded,
            "dispatched": self.dispatched,
            "replies": self.replies,
            "sent": self.sent,
            "send_failures": self.send_failures,
            "audit_failures": self.audit_failures,
            "rejections": dict(sorted(self.rejections.items())),
            "dropped": self.dropped,
            "drops": dict(sorted(self.drops.items())),
        }
