"""Certificate lifecycle via the SDK: renewal at half lifetime, expiry, re-enrollment, revocation.

Time is the shared injectable :class:`~sdk_support.Clock`: the tests jump it
forward instead of sleeping, and wait on events/conditions with timeouts.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sdk_support import PASSPHRASE, Clock, EnrollFn, Infra, wait_until

from securemesh.crypto.certs import Certificate, SignedCertificate, SignedRevocationList
from securemesh.errors import CertificateExpired, CertificateRevoked, ConfigError
from securemesh.sdk import Device

LIFETIME = 3600  # the edge issues device certificates for one hour (sdk_support)


def connect(path: Path, clock: Clock, **kwargs: object) -> Device:
    return Device.connect(
        path,
        passphrase=PASSPHRASE,
        clock=clock,
        renew_check_interval=0.02,
        **kwargs,  # type: ignore[arg-type]
    )


def stored_serial(path: Path) -> int:
    return (
        SignedCertificate.from_bytes((path / "node.cert").read_bytes())
        .unverified_certificate()
        .serial
    )


def test_renewal_at_half_lifetime(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    path = tmp_path / "dev-1"
    with connect(path, clock) as dev:
        first = dev.certificate
        assert first.not_after - first.not_before >= LIFETIME
        renewed = threading.Event()
        new_certs: list[Certificate] = []

        def on_renewal(cert: Certificate) -> None:
            new_certs.append(cert)
            renewed.set()

        dev.on_renewal(on_renewal)
        clock.advance(LIFETIME * 0.3)  # not due yet
        assert not renewed.wait(0.3)
        clock.advance(LIFETIME * 0.25)  # past half the lifetime
        assert renewed.wait(10), dev.status()["sdk"]
        new = new_certs[0]
        assert new.serial != first.serial
        assert new.not_after > first.not_after
        assert new.public_keys() == first.public_keys()
        assert dev.certificate.serial == new.serial
        assert dev.renewals == 1
        assert stored_serial(path) == new.serial  # persisted for the next connect
        # the edge knows the new certificate (it issued it; the hello re-announced it)
        assert (
            infra.loop.run(lambda: infra.edge.directory.certificate("dev-1").serial) == new.serial
        )
        # past the *old* certificate's end the device keeps working on the new one
        clock.advance(first.not_after - clock() + 5)
        reply = dev.request("edge-1", "app.echo", {"after": "expiry"}, timeout=10)
        assert reply.json()["_serial"] == new.serial
        assert dev.state == "connected"
    # reconnecting uses the renewed certificate from disk
    with connect(path, clock) as dev:
        assert dev.certificate.serial == new.serial


def test_expiry_then_reenrollment_keeps_keys_and_data_dir(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    first = enroll("dev-1")
    path = tmp_path / "dev-1"
    identity_bytes = (path / "identity.key").read_bytes()
    (path / "app-data.json").write_text('{"kept": true}')
    with connect(path, clock) as dev:
        dev.send("edge-1", "app.reading", {"n": 1})
        assert infra.readings.get(timeout=10)[1] == {"n": 1}
        # offline past expiry in one jump: no renewal window was ever observed
        clock.advance(LIFETIME + 60)
        wait_until(lambda: dev.state == "expired")
        with pytest.raises(CertificateExpired, match="re-enroll"):
            dev.send("edge-1", "app.reading", {"n": 2})
    with pytest.raises(CertificateExpired, match="re-enroll"):
        connect(path, clock)
    again = enroll("dev-1")  # a fresh token (the old one expired and was used)
    assert not again.new_keys
    assert again.serial != first.serial
    assert (path / "identity.key").read_bytes() == identity_bytes
    assert (path / "app-data.json").read_text() == '{"kept": true}'
    with connect(path, clock) as dev:
        assert dev.state == "connected"
        reply = dev.request("edge-1", "app.echo", {"n": 3}, timeout=10)
        assert reply.json()["_serial"] == again.serial


def test_renewal_refused_for_a_revoked_device_and_revocation_cuts_it_off(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-a")
    enroll("dev-b")
    with connect(tmp_path / "dev-a", clock) as dev_a, connect(tmp_path / "dev-b", clock) as dev_b:
        for dev in (dev_a, dev_b):
            assert dev.request("edge-1", "app.echo", {"hi": dev.node_id}, timeout=10)
        rl_before = SignedRevocationList.from_bytes(
            (tmp_path / "dev-b" / "revocation.list").read_bytes()
        ).unverified_list()
        assert infra.revoke("dev-a") >= 1  # the cloud broadcasts to the edge
        # the edge installed the list, passed it on to its devices — dev-a too —
        # and then cut dev-a off its live connection
        wait_until(lambda: infra.edge.revocation_list_version == rl_before.version + 1)
        wait_until(lambda: dev_a.state == "revoked")  # it heard of its own revocation
        with pytest.raises(CertificateRevoked):  # so it stops sending, at once
            dev_a.send("edge-1", "app.reading", {})
        with pytest.raises(CertificateRevoked):
            dev_a.request("edge-1", "app.echo", {"still": "there?"}, timeout=1.0)
        # dev-b is still served, and received (and saved) the new list
        assert dev_b.request("edge-1", "app.echo", {"ok": 1}, timeout=10).json()["ok"] == 1

        def saved_version(name: str) -> int:
            blob = (tmp_path / name / "revocation.list").read_bytes()
            return SignedRevocationList.from_bytes(blob).unverified_list().version

        wait_until(lambda: saved_version("dev-b") == rl_before.version + 1)
        wait_until(lambda: saved_version("dev-a") == rl_before.version + 1)
        # the edge keeps renewing well-behaved devices
        clock.advance(LIFETIME * 0.6)
        wait_until(lambda: dev_b.renewals == 1)
        assert dev_a.renewals == 0
    # the revoked device saved the list it heard: its data dir refuses to start
    with pytest.raises(CertificateRevoked):
        connect(tmp_path / "dev-a", clock)


def test_renewal_retries_with_backoff_until_the_authority_answers(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    infra.refuse_renewals[0] = 3
    with connect(tmp_path / "dev-1", clock) as dev:
        first = dev.certificate.serial
        clock.advance(LIFETIME * 0.55)
        wait_until(lambda: dev.renewals == 1)
        assert infra.refuse_renewals[0] == 0  # three refusals, then success
        assert dev.certificate.serial != first
        assert dev.status()["sdk"]["last_renewal_error"] is None  # type: ignore[index]


def test_reenrollment_through_another_endpoint_moves_the_parent(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    path = tmp_path / "dev-1"
    toml = path / "node.toml"
    # as if the device had first been enrolled through another edge address
    original = toml.read_text()
    toml.write_text(original.replace(str(infra.edge.address), "tcp://127.0.0.1:9"))
    toml.write_text(toml.read_text() + "\n[limits]\nrequest_timeout = 7.0\n")
    enroll("dev-1")  # the token names the live edge
    from securemesh.node import load_config

    config = load_config(toml)
    assert config.parent is not None
    assert config.parent.endpoint == infra.edge.address
    assert config.parent.curve_key_bytes == infra.edge.certificate.curve_key
    assert config.limits.request_timeout == 7.0  # the rest of node.toml is kept
    with connect(path, clock) as dev:
        assert dev.request("edge-1", "app.echo", {}, timeout=10).sender == "edge-1"
    # a data dir belongs to one node id: refused before the token is spent
    token = infra.token()
    with pytest.raises(ConfigError, match="belongs to node 'dev-1'"):
        Device.enroll(token, data_dir=path, node_id="dev-2", passphrase=PASSPHRASE)
