"""A rate-limited rejection window reports what it suppressed when it closes (issue 9, 8f).

Before, the count of suppressed rejections was only logged (and audited) with
the *next* rejection of the same peer and reason after the window: an
attacker who sends one burst and stops hid all but its first message. Now the
node's maintenance loop (:meth:`Metrics.flush_suppressed`) logs the count, and
the audit hook records it, as soon as the window has closed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from securemesh.audit.events import SignedEvent
from securemesh.audit.outbox import Outbox
from securemesh.crypto.signing import Ed25519Signer
from securemesh.node import Metrics, Rejection
from securemesh.node._audit import RejectionAuditor

PEER = b"\x07" * 32


def _burst(metrics: Metrics, n: int, *, at: float, reason: str = "bad_auth") -> None:
    for i in range(n):
        metrics.reject(Rejection(reason, PEER, "dev-x", "mesh.ping", "forged", at + i * 0.001))


def _suppressed_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "rejected_suppressed"]


def test_the_suppressed_count_is_logged_when_the_window_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(log_window=60.0)
    with caplog.at_level(logging.WARNING, logger="securemesh.node"):
        _burst(metrics, 480, at=1000.0)
        assert len([r for r in caplog.records if getattr(r, "event", None) == "rejected"]) == 1
        assert metrics.flush_suppressed(1059.0) == 0  # window still open: nothing yet
        assert _suppressed_lines(caplog) == []
        assert metrics.flush_suppressed(1060.5) == 1
        (line,) = _suppressed_lines(caplog)
        assert (
            (line.suppressed, line.reason, line.peer)
            == (  # type: ignore[attr-defined]
                479,
                "bad_auth",
                PEER.hex()[:16],
            )
        )
        assert metrics.flush_suppressed(2000.0) == 0  # reported once
        # the next rejection starts a new window and is logged at once, with nothing owed
        _burst(metrics, 1, at=3000.0)
        last = [r for r in caplog.records if getattr(r, "event", None) == "rejected"][-1]
        assert last.suppressed == 0  # type: ignore[attr-defined]
    assert metrics.rejected == 481


def test_windows_close_in_order_and_open_ones_stay(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(log_window=10.0)
    with caplog.at_level(logging.WARNING, logger="securemesh.node"):
        _burst(metrics, 3, at=0.0, reason="bad_auth")
        _burst(metrics, 5, at=5.0, reason="replayed")
        _burst(metrics, 1, at=6.0, reason="stale")  # nothing suppressed: no line
        assert metrics.flush_suppressed(10.5) == 1
        assert metrics.flush_suppressed(16.5) == 1
        got = [(r.reason, r.suppressed) for r in _suppressed_lines(caplog)]  # type: ignore[attr-defined]
    assert got == [("bad_auth", 2), ("replayed", 4)]


def test_the_auditor_records_the_count_when_the_window_closes(tmp_path: Path) -> None:
    signer = Ed25519Signer.from_seed(b"A" * 32)
    with Outbox(tmp_path / "audit-outbox.db") as outbox:
        auditor = RejectionAuditor(outbox, origin="edge-1", signer=signer, window=60.0)
        metrics = Metrics(audit_hook=auditor, log_window=60.0)
        logging.getLogger("securemesh.node").disabled = True
        try:
            _burst(metrics, 480, at=1000.0)
            metrics.flush_suppressed(1030.0)
            assert outbox.pending_count() == 1
            metrics.flush_suppressed(1061.0)
        finally:
            logging.getLogger("securemesh.node").disabled = False
        events = [
            SignedEvent.from_bytes(p.entry).verify(signer.verify_key)
            for p in outbox.pending(limit=10)
        ]
    assert [e.details["suppressed"] for e in events] == [0, 479]
    assert [e.details.get("window_closed") for e in events] == [None, True]
    assert {e.details["reason"] for e in events} == {"bad_auth"}
    assert events[1].time_ms == int((1000.0 + 479 * 0.001) * 1000)  # the last one hidden
    assert auditor.suppressed == 479


def test_a_failing_auditor_flush_is_counted() -> None:
    class Broken:
        def __call__(self, rejection: Rejection) -> None:
            pass

        def flush(self, now: float) -> None:
            raise RuntimeError("outbox gone")

    metrics = Metrics(audit_hook=Broken())
    metrics.flush_suppressed(0.0)
    assert metrics.audit_failures == 1
