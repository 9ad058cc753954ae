"""Directory (default-deny admission, certificate checks) and Metrics (rate-limited logs)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from node_testlib import Fixture

from securemesh.crypto import Tier
from securemesh.errors import (
    AuthenticationError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    KeyContinuityViolation,
    RevocationListRollback,
    UnknownIssuer,
    UnknownNode,
)
from securemesh.node import Directory, Metrics, Rejection

NOW = 1_800_000_000.0


def test_default_deny_and_admission() -> None:
    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end")
    directory = Directory(fx.trust(), clock=lambda: NOW)
    with pytest.raises(AuthenticationError):
        directory.authenticate(dev.identity.curve_public)
    directory.add_certificate(dev.cert)
    directory.authenticate(dev.identity.curve_public)
    assert directory.node_for_curve_key(dev.identity.curve_public) == "dev-1"
    assert directory.certificate("dev-1").tier is Tier.END
    with pytest.raises(UnknownNode):
        directory.lookup("dev-2", now=NOW)


def test_admission_by_topology() -> None:
    """Issue #9 item 6: a certificate learned second-hand does not admit its holder."""
    fx = Fixture(now=NOW)
    dev, enrolled, edge = (
        fx.member("dev-1", "end"),
        fx.member("dev-2", "end"),
        fx.member("e", "edge"),
    )
    directory = Directory(fx.trust(), clock=lambda: NOW)
    directory.admit_tiers = frozenset({Tier.EDGE, Tier.CLOUD})  # what a cloud node sets
    directory.add_certificate(dev.cert, admit=False)  # e.g. from a route announcement
    directory.add_certificate(enrolled.cert)  # enrolled here
    directory.add_certificate(edge.cert, admit=False)  # an edge: admitted by tier
    with pytest.raises(AuthenticationError):
        directory.authenticate(dev.identity.curve_public)
    assert directory.refused_by_topology == 1
    directory.authenticate(enrolled.identity.curve_public)
    directory.authenticate(edge.identity.curve_public)
    # the same certificate learned second-hand again keeps the flag it had
    directory.add_certificate(enrolled.cert, admit=False)
    directory.authenticate(enrolled.identity.curve_public)
    # a renewal announced by its edge (same keys) does not make it admissible
    renewed = fx.authority.renew(dev.cert, now=NOW, lifetime_s=7200)
    directory.add_certificate(renewed, admit=False)
    assert not directory.is_admissible("dev-1")
    # an operator-supplied (or directly renewed) certificate does
    directory.add_certificate(dev.cert)
    directory.authenticate(dev.identity.curve_public)


def test_certificates_are_verified_on_entry() -> None:
    fx = Fixture(now=NOW)
    other = Fixture(now=NOW)  # a different key under the same root name
    directory = Directory(fx.trust(), clock=lambda: NOW)
    with pytest.raises(CertificateSignatureInvalid):
        directory.add_certificate(other.member("x", "end").cert)
    good = fx.member("dev-1", "end").cert
    tampered = good.to_bytes()[:-1] + bytes([good.to_bytes()[-1] ^ 1])
    with pytest.raises(CertificateSignatureInvalid):
        directory.add_certificate(tampered)
    assert len(directory) == 0


def test_validity_is_rechecked_per_lookup() -> None:
    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end", lifetime_s=100)
    clock = [NOW]
    directory = Directory(fx.trust(), clock=lambda: clock[0])
    directory.add_certificate(dev.cert)
    clock[0] = NOW + 101
    with pytest.raises(CertificateExpired):
        directory.lookup("dev-1", now=clock[0])
    with pytest.raises(CertificateExpired):
        directory.authenticate(dev.identity.curve_public)
    with pytest.raises(CertificateNotYetValid):
        directory.lookup("dev-1", now=NOW - 3600)


def test_revocation_cuts_admission_and_notifies() -> None:
    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end")
    dev2 = fx.member("dev-2", "end")
    directory = Directory(fx.trust(), clock=lambda: NOW)
    directory.add_certificate(dev.cert)
    directory.add_certificate(dev2.cert)
    seen: list[frozenset[str]] = []
    directory.on_revoked.append(seen.append)
    old = fx.authority.revocation_list
    rl = fx.authority.revoke("dev-1", now=NOW)
    directory.update_revocation_list(rl.to_bytes())
    assert seen == [frozenset({"dev-1"})]
    with pytest.raises(CertificateRevoked):
        directory.authenticate(dev.identity.curve_public)
    directory.authenticate(dev2.identity.curve_public)
    with pytest.raises(RevocationListRollback):
        directory.update_revocation_list(old.to_bytes())
    # revocation by serial works too
    rl2 = fx.authority.revoke(dev2.cert.unverified_certificate().serial, now=NOW)
    directory.update_revocation_list(rl2)
    with pytest.raises(CertificateRevoked):
        directory.lookup("dev-2", now=NOW)


def test_delegate_issued_certificates_and_delegate_revocation() -> None:
    from securemesh.crypto import DelegatedAuthority

    fx = Fixture(now=NOW)
    edge = fx.member("edge-1", "edge")
    delegation = fx.authority.delegate(edge.cert, lifetime_s=3600, now=NOW)
    issuer = DelegatedAuthority(delegation, edge.identity.signer)
    dev = fx.member("dev-x", "end")  # reuse its identity, re-issued by the edge
    cert = issuer.issue("edge-1.dev-x", "end", [], dev.identity.public(), lifetime_s=600, now=NOW)
    directory = Directory(fx.trust(), clock=lambda: NOW)
    with pytest.raises(UnknownIssuer):
        directory.add_certificate(cert)
    directory.add_certificate(cert, intermediates=[delegation])
    directory.authenticate(dev.identity.curve_public)
    directory.update_revocation_list(fx.authority.revoke("edge-1", now=NOW))
    with pytest.raises(CertificateRevoked):
        directory.authenticate(dev.identity.curve_public)


def test_a_renewed_delegation_keeps_the_devices_of_the_old_one_usable() -> None:
    """Entries learned under an edge's first delegation stay usable past its end once the
    renewed delegation (same key) is known; not under a delegation with another key."""
    from securemesh.crypto import DelegatedAuthority

    fx = Fixture(now=NOW)
    edge = fx.member("edge-1", "edge")
    first = fx.authority.delegate(edge.cert, lifetime_s=3600, now=NOW)
    dev = fx.member("dev-x", "end")
    # the device renewed under the edge's renewed delegation (3600 s later): its chain as
    # the edge sent it is the first delegation, already learned
    renewed = fx.authority.renew(first, now=NOW + 1800, lifetime_s=3600)
    issued = DelegatedAuthority(renewed, edge.identity.signer).issue(
        "edge-1.dev-x", "end", [], dev.identity.public(), lifetime_s=3000, now=NOW + 1800
    )
    clock = [NOW + 1800.0]
    directory = Directory(fx.trust(), clock=lambda: clock[0])
    directory.add_certificate(issued, intermediates=[first])
    clock[0] = NOW + 3700  # the first delegation ended; the device's certificate did not
    with pytest.raises(CertificateExpired, match="issuing authority"):
        directory.lookup("edge-1.dev-x", now=clock[0])
    directory.add_delegation(renewed)  # learned since (the cloud renewed it, or a hello)
    assert directory.lookup("edge-1.dev-x", now=clock[0]).cert.node_id == "edge-1.dev-x"
    # an edge re-keyed since is no voucher for what the old key signed
    other = fx.member("edge-1", "edge")  # the same id under another key
    rekeyed = fx.authority.delegate(other.cert, lifetime_s=7200, now=NOW + 3600)
    directory.add_delegation(rekeyed)
    with pytest.raises(CertificateExpired, match="issuing authority"):
        directory.lookup("edge-1.dev-x", now=clock[0])


def test_renewal_replaces_and_keeps_the_longer_lived() -> None:
    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end", lifetime_s=100)
    directory = Directory(fx.trust(), clock=lambda: NOW)
    directory.add_certificate(dev.cert)
    renewed = fx.authority.renew(dev.cert, now=NOW, lifetime_s=1000)
    directory.add_certificate(renewed)
    assert directory.certificate("dev-1").not_after == NOW + 1000
    directory.add_certificate(dev.cert)  # older: ignored
    assert directory.certificate("dev-1").not_after == NOW + 1000


def _edge_delegate(fx: Fixture, *, unconstrained: bool = False):  # type: ignore[no-untyped-def]
    from securemesh.crypto import DelegatedAuthority

    edge = fx.member("edge-1", "edge")
    grant = fx.authority.delegate(
        edge.cert, lifetime_s=7200, now=NOW, backdate_s=60, unconstrained=unconstrained
    )
    return grant, DelegatedAuthority(grant, edge.identity.signer)


def test_key_continuity_a_delegate_cannot_rekey_a_node_enrolled_elsewhere() -> None:
    """A compromised edge's (unconstrained, legacy) delegate mints a longer-lived certificate
    with its own keys for a device the root enrolled: the directory keeps the device's keys."""
    from securemesh.crypto import NodeIdentity

    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end", lifetime_s=600)
    grant, rogue = _edge_delegate(fx, unconstrained=True)
    attacker = NodeIdentity.generate()
    minted = rogue.issue("dev-1", "end", [], attacker.public(), lifetime_s=7000, now=NOW + 10)
    directory = Directory(fx.trust(), clock=lambda: NOW + 20)
    directory.add_certificate(dev.cert)
    with pytest.raises(KeyContinuityViolation, match="without a namespace"):
        directory.add_certificate(minted, intermediates=[grant])
    assert directory.refused_key_changes == 1
    assert directory.certificate("dev-1").verify_key == dev.identity.verify_key
    assert directory.node_for_curve_key(dev.identity.curve_public) == "dev-1"
    with pytest.raises(AuthenticationError):
        directory.authenticate(attacker.curve_public)
    # The same delegate renewing with the device's own keys is fine (no key change).
    same = rogue.issue("dev-1", "end", [], dev.identity.public(), lifetime_s=7000, now=NOW + 10)
    directory.add_certificate(same, intermediates=[grant])
    assert directory.certificate("dev-1").issuer == "edge-1"


def test_key_continuity_root_reenrollment_and_namespace_rekeying() -> None:
    from securemesh.crypto import NodeIdentity

    fx = Fixture(now=NOW)
    dev = fx.member("dev-1", "end")
    directory = Directory(fx.trust(), clock=lambda: NOW + 100)
    directory.add_certificate(dev.cert)
    # The root re-enrolls the node with new keys: newer, so it replaces (and moves the key).
    fresh = NodeIdentity.generate()
    reenrolled = fx.authority.issue("dev-1", "end", [], fresh.public(), lifetime_s=60, now=NOW + 50)
    directory.add_certificate(reenrolled)
    assert directory.certificate("dev-1").verify_key == fresh.verify_key
    assert directory.node_for_curve_key(dev.identity.curve_public) is None
    # ... but an older root certificate with the previous keys does not roll it back,
    # even though it lives longer.
    with pytest.raises(KeyContinuityViolation, match="not newer"):
        directory.add_certificate(dev.cert)
    assert directory.certificate("dev-1").verify_key == fresh.verify_key
    # A constrained edge re-keys a device in its own namespace (newer); not an older one.
    grant, edge = _edge_delegate(fx)
    first = NodeIdentity.generate()
    second = NodeIdentity.generate()
    one = edge.issue("edge-1.cam", "end", [], first.public(), lifetime_s=600, now=NOW + 10)
    two = edge.issue("edge-1.cam", "end", [], second.public(), lifetime_s=600, now=NOW + 20)
    directory.add_certificate(one, intermediates=[grant])
    directory.add_certificate(two, intermediates=[grant])
    assert directory.certificate("edge-1.cam").verify_key == second.verify_key
    with pytest.raises(KeyContinuityViolation):
        directory.add_certificate(one, intermediates=[grant])
    assert directory.refused_key_changes == 2


def test_token_keys_expire_and_retire() -> None:
    clock = [NOW]
    fx = Fixture(now=NOW)
    directory = Directory(fx.trust(), clock=lambda: clock[0], max_token_keys=2)
    key = b"\x01" * 32
    directory.admit_token_key(key, NOW + 10)
    directory.authenticate(key)
    clock[0] = NOW + 10
    with pytest.raises(AuthenticationError):
        directory.authenticate(key)
    directory.admit_token_key(key, NOW + 100)
    directory.retire_token_key(key)
    with pytest.raises(AuthenticationError):
        directory.authenticate(key)


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", None]), st.sampled_from(["x", "y"]), st.floats(0, 5)
        ),
        max_size=60,
    )
)
def test_rejection_logging_is_rate_limited_per_peer_and_reason(
    events: list[tuple[bytes | None, str, float]],
) -> None:
    audited: list[Rejection] = []
    metrics = Metrics(audit_hook=audited.append, log_window=2.0)
    now = 0.0
    model: dict[tuple[bytes | None, str], float] = {}
    expected_logs = 0
    logger = logging.getLogger("securemesh.node")
    logger.disabled = True
    try:
        for peer, reason, step in events:
            now += step
            rej = Rejection(reason, peer, "s", "t", "d", now)
            logged = metrics.reject(rej)
            key = (peer, reason)
            should = key not in model or now - model[key] >= 2.0
            if should:
                model[key] = now
                expected_logs += 1
            assert logged == should
    finally:
        logger.disabled = False
    assert metrics.rejected == len(events) == len(audited)
    assert sum(metrics.rejections.values()) == len(events)


def test_a_failing_audit_hook_is_counted_not_raised() -> None:
    def boom(_: Rejection) -> None:
        raise RuntimeError("audit down")

    metrics = Metrics(audit_hook=boom)
    metrics.reject(Rejection("bad_auth", None, None, None, "", 0.0))
    assert metrics.audit_failures == 1
    assert metrics.rejections["bad_auth"] == 1


def test_dropped_sends_are_counted_apart_logged_rate_limited_and_audited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 9 #3: a reply the transport dropped (peer queue full) is not a rejection."""
    audited: list[Rejection] = []
    metrics = Metrics(audit_hook=audited.append, log_window=60.0)
    peer = b"p" * 32
    with caplog.at_level(logging.WARNING, logger="securemesh.node"):
        logged = [
            metrics.drop(Rejection("peer_queue_full", peer, "dev-1", "mesh.ping", "d", t))
            for t in (0.0, 1.0, 2.0, 61.0)
        ]
    assert logged == [True, False, False, True]
    assert metrics.dropped == 4
    assert metrics.drops["peer_queue_full"] == 4
    assert metrics.rejected == 0  # the requests themselves were accepted
    assert len(audited) == 4  # the auditor rate-limits what it records
    lines = [r for r in caplog.records if getattr(r, "event", None) == "dropped"]
    assert [r.suppressed for r in lines] == [0, 2]  # type: ignore[attr-defined]
    snap = metrics.snapshot()
    assert snap["dropped"] == 4
    assert snap["drops"] == {"peer_queue_full": 4}
