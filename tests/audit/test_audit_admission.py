"""The cloud ingest's event policy: kinds by tier and subject, and the time bounds (issue 9, 8a)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit.admission import DEFAULT_RULES, EventPolicy
from securemesh.audit.events import REQUIRED_DETAILS, EventKind, new_event

NOW = 1_800_000_000.0
NOW_MS = int(NOW * 1000)
POLICY = EventPolicy(max_future_skew=120.0)


def _event(kind: str, subject: tuple[str, str], *, origin: str = "edge-1.dev-a", at: float = NOW):
    details = dict.fromkeys(REQUIRED_DETAILS.get(EventKind(kind), ()), "x")
    return new_event(kind, origin=origin, subject=subject, details=details, now=at)


def _in_namespace(node_id: str) -> bool:
    return node_id.startswith("edge-1.")


@pytest.mark.parametrize(
    ("tier", "kind", "subject", "origin", "expected"),
    [
        # a device: never authority events, never about other nodes
        ("end", "cert.revoked", ("node", "edge-1.dev-b"), "edge-1.dev-a", "kind_not_allowed"),
        ("end", "node.enrolled", ("node", "edge-1.dev-a"), "edge-1.dev-a", "kind_not_allowed"),
        ("end", "cert.renewed", ("node", "edge-1.dev-a"), "edge-1.dev-a", "kind_not_allowed"),
        ("end", "audit.flagged", ("message", "ab" * 16), "edge-1.dev-a", "kind_not_allowed"),
        ("end", "task.failed", ("node", "edge-1.dev-b"), "edge-1.dev-a", "subject_not_allowed"),
        ("end", "object.put", ("object", "reading-1"), "edge-1.dev-a", None),
        ("end", "task.finished", ("node", "edge-1.dev-a"), "edge-1.dev-a", None),
        ("end", "message.rejected", ("node", "cloud-1"), "edge-1.dev-a", None),
        # an edge: enrolment and renewal records only inside its namespace
        ("edge", "node.enrolled", ("node", "edge-1.dev-b"), "edge-1", None),
        ("edge", "cert.renewed", ("node", "edge-1.dev-b"), "edge-1", None),
        ("edge", "node.enrolled", ("node", "edge-2.dev-b"), "edge-1", "subject_not_allowed"),
        ("edge", "cert.renewed", ("node", "cloud-1"), "edge-1", "subject_not_allowed"),
        ("edge", "node.enrolled", ("object", "edge-1.x"), "edge-1", "subject_not_allowed"),
        ("edge", "cert.revoked", ("node", "edge-1.dev-b"), "edge-1", "kind_not_allowed"),
        ("edge", "object.get", ("node", "edge-2"), "edge-1", "subject_not_allowed"),
        ("edge", "storage.challenge", ("object", "o"), "edge-1", None),
        # the cloud: anything
        ("cloud", "cert.revoked", ("node", "edge-1.dev-b"), "cloud-1", None),
        ("cloud", "audit.flagged", ("message", "ab" * 16), "cloud-1", None),
    ],
)
def test_kinds_by_tier_and_subject(
    tier: str, kind: str, subject: tuple[str, str], origin: str, expected: str | None
) -> None:
    verdict = POLICY.admit(
        _event(kind, subject, origin=origin),
        tier=tier,
        now_ms=NOW_MS,
        namespace=_in_namespace if tier == "edge" else None,
    )
    assert verdict.refused == expected
    assert verdict.flag is None


def test_an_edge_without_a_delegated_authority_records_no_enrolment() -> None:
    ev = _event("node.enrolled", ("node", "edge-1.dev-b"), origin="edge-1")
    assert POLICY.admit(ev, tier="edge", now_ms=NOW_MS).refused == "subject_not_allowed"


def test_every_kind_has_a_rule_and_unknown_tiers_only_get_the_time_checks() -> None:
    assert set(DEFAULT_RULES) == {k.value for k in EventKind}
    ev = _event("cert.revoked", ("node", "x"))
    assert POLICY.admit(ev, tier=None, now_ms=NOW_MS).accepted


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**12), 10**12), st.sampled_from(["end", "edge", "cloud", None]))
def test_time_bounds(offset_ms: int, tier: str | None) -> None:
    """Future beyond the skew: refused. Before the key was certified: flagged. Else accepted."""
    since = NOW_MS - 3_600_000  # the key was certified an hour ago
    at = (NOW_MS + offset_ms) / 1000
    ev = _event("object.put", ("object", "o"), at=at)
    verdict = POLICY.admit(ev, tier=tier, now_ms=NOW_MS, key_since_ms=since)
    if ev.time_ms > NOW_MS + 120_000:
        assert verdict.refused == "event_time_future"
    elif ev.time_ms < since - 120_000:
        assert (verdict.refused, verdict.flag) == (None, "event_time_before_key")
    else:
        assert (verdict.refused, verdict.flag) == (None, None)


def test_honest_delayed_shipping_is_accepted_unflagged() -> None:
    """An edge's outbox ships a day late after an outage: old, but after its key was certified."""
    since = NOW_MS - 30 * 86_400_000
    ev = _event("message.rejected", ("node", "x"), origin="edge-1", at=NOW - 86_400)
    verdict = POLICY.admit(ev, tier="edge", now_ms=NOW_MS, key_since_ms=since)
    assert (verdict.refused, verdict.flag) == (None, None)
    # dated 2001, before the key existed: kept, but flagged
    old = _event("message.rejected", ("node", "x"), origin="edge-1", at=978_307_200)
    verdict = POLICY.admit(old, tier="edge", now_ms=NOW_MS, key_since_ms=since)
    assert (verdict.refused, verdict.flag) == (None, "event_time_before_key")
