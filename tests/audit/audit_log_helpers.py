"""Shared helpers for the audit log tests (importable by worker processes too)."""

from __future__ import annotations

import hashlib

from securemesh.audit.events import EventKind, SignedEvent, new_event, sign_event
from securemesh.crypto.signing import Ed25519Signer


def make_events(
    signer: Ed25519Signer, origin: str, n: int, *, start: int = 0, kind: EventKind | None = None
) -> list[SignedEvent]:
    """``n`` deterministic signed events from ``origin`` (ids derived from origin and number)."""
    out = []
    kinds = [EventKind.OBJECT_PUT, EventKind.TASK_FINISHED, EventKind.NODE_ENROLLED]
    for i in range(start, start + n):
        k = kind if kind is not None else kinds[i % len(kinds)]
        ev = new_event(
            k,
            origin=origin,
            subject=("object", f"obj-{i}") if k == EventKind.OBJECT_PUT else ("node", origin),
            outcome="success" if i % 5 else "failure",
            details={"n": i, "peer": f"peer-{i % 3}"},
            now=1_700_000_000 + i,
            event_id=event_id_for(origin, i),
        )
        out.append(sign_event(ev, signer))
    return out


def event_id_for(origin: str, i: int) -> str:
    return hashlib.sha256(f"{origin}/{i}".encode()).hexdigest()[:32]
