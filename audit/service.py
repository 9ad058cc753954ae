"""The cloud audit service: transport-independent ingestion of signed events.

:meth:`AuditService.handle_batch` is what any transport (the ZeroMQ ingest
endpoint in :mod:`securemesh.audit.ingest`, or the mesh bus) calls with the
frames an edge sent. It appends what verifies — one transaction, one signed
checkpoint per batch of up to 256 — and answers one acknowledgement per event
it can name: ``(event_id, leaf_index)`` once the batch is **committed**
(so an acknowledged event survives a crash of the service), or
``(event_id, REJECTED)`` for an event refused for good (bad signature,
unknown origin). (The bus front end,
:class:`~securemesh.node._audit_bus.BusAuditIngest`, turns the refusal of an
event whose origin it could not check yet into ``DEFERRED``.) Frames that do
not even decode carry no trustworthy id and get no acknowledgement; an edge
never produces them (its outbox decodes every event before storing it).

An optional :class:`~securemesh.audit.admission.EventPolicy` is applied
before appending (the standalone endpoint uses it with no tier information:
only the time bound, events dated beyond the clock-skew bound in the future
are refused ``event_time_future``; the bus front end applies the full policy
itself, where it knows each origin's certificate).

Rejections are counted by reason (``RemoteError.reason``) for metrics; the
reasons never go back to the peer.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from securemesh.audit._entry import decode_entry
from securemesh.audit.admission import EventPolicy
from securemesh.audit.log import MAX_BATCH, AuditLog
from securemesh.audit.outbox import REJECTED, Ack
from securemesh.errors import RemoteError, SizeLimitExceeded

__all__ = ["MAX_FRAMES", "AuditService"]

MAX_FRAMES: Final = MAX_BATCH
"""Most events one request may carry."""

_log = logging.getLogger(__name__)


class AuditService:
    """Appends batches of signed events to an :class:`AuditLog` and acknowledges them."""

    def __init__(
        self,
        log: AuditLog,
        *,
        policy: EventPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._policy = policy
        self._clock = clock
        self.rejections: collections.Counter[str] = collections.Counter()
        self.accepted = 0

    def _admitted(self, entries: Sequence[bytes], acks: list[Ack]) -> list[bytes]:
        """The entries the policy lets through; refusals acknowledged in ``acks``."""
        if self._policy is None:
            return list(entries)
        now_ms = int(self._clock() * 1000)
        out: list[bytes] = []
        for entry in entries:
            try:
                event = decode_entry(entry).signed.unverified_event()
            except RemoteError:
                out.append(entry)  # the log refuses it with the precise reason
                continue
            verdict = self._policy.admit(event, tier=None, now_ms=now_ms)
            if verdict.refused is not None:
                self.rejections[verdict.refused] += 1
                acks.append((event.event_id, REJECTED))
                continue
            out.append(entry)
        return out

    def handle_batch(self, entries: Sequence[bytes]) -> list[Ack]:
        """Append ``entries``; return ``[(event_id, index or REJECTED)]`` (see module doc)."""
        if len(entries) > MAX_FRAMES:
            raise SizeLimitExceeded(f"more than {MAX_FRAMES} events in one batch")
        acks: list[Ack] = []
        for outcome in self._log.append_entries(self._admitted(entries, acks)):
            if outcome.index is not None and outcome.event_id is not None:
                acks.append((outcome.event_id, outcome.index))
                self.accepted += 1
                continue
            reason = outcome.error.reason if outcome.error is not None else "rejected"
            self.rejections[reason] += 1
            _log.warning("audit event rejected: %s", reason)
            if outcome.event_id is not None:
                acks.append((outcome.event_id, REJECTED))
        return acks
