"""Rejections become signed, rate-limited ``message.rejected`` events in the outbox."""

from __future__ import annotations

from pathlib import Path

from securemesh.audit.events import EventKind, Outcome, SignedEvent
from securemesh.audit.outbox import Outbox
from securemesh.crypto import NodeIdentity
from securemesh.node import Rejection
from securemesh.node._audit import RejectionAuditor


def test_rejections_are_signed_events_rate_limited_per_peer_and_reason(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    with Outbox(tmp_path / "outbox.db") as outbox:
        auditor = RejectionAuditor(outbox, origin="edge-1", signer=identity.signer, window=10.0)
        peer = b"\x07" * 32
        for i in range(50):  # a flood: one event, the rest suppressed
            auditor(Rejection("bad_auth", peer, "dev-1", "app.x", "forged", 1000.0 + i * 0.01))
        auditor(Rejection("malformed", peer, None, None, "garbage", 1001.0))
        auditor(Rejection("bad_auth", peer, "dev-1", "app.x", "forged", 1011.0))  # next window
        assert auditor.recorded == 3
        assert auditor.suppressed == 49
        events = [
            SignedEvent.from_bytes(p.entry).verify(identity.verify_key) for p in outbox.pending()
        ]
    assert [e.details["reason"] for e in events] == ["bad_auth", "malformed", "bad_auth"]
    assert all(e.kind == EventKind.MESSAGE_REJECTED and e.outcome is Outcome.DENIED for e in events)
    assert events[0].subject.id == "dev-1"
    assert events[1].subject.id == "curve:" + peer.hex()[:16]
    assert events[2].details["suppressed"] == 49
    assert all(e.origin == "edge-1" for e in events)
