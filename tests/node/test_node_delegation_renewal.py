"""Daemons renew what nobody else renews for them, and the mesh lives on.

Real daemons on loopback. An edge renews its delegation before it expires: a
cloud whose delegations last 16 s and an edge enrolled with ``--delegate`` (its
devices' certificates last 16 s too and never outlive the delegation). Before
this, the edge could issue and renew nothing once its delegation expired (a
day with the defaults) and every device fell off within the next renewal
period. A cloud renews its own certificate with its root (it has no issuer
above it): before this, the whole mesh refused the cloud once its
certificate ended (30 days with the defaults).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from daemon_support import (
    DeviceMesh,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    poll,
    read_status,
    reaped,
)

from securemesh.crypto.certs import SignedCertificate

pytestmark = pytest.mark.slow

PASSPHRASE = "delegation-renewal-passphrase"
LIFETIME = 16
FAST = f"heartbeat_interval = 0.5\nstatus_interval = 0.2\nissued_cert_lifetime = {LIFETIME}\n"


def _delegation(edge: Path) -> tuple[int, float]:
    cert = SignedCertificate.from_bytes((edge / "delegation.cert").read_bytes())
    plain = cert.unverified_certificate()
    assert plain.delegation is not None
    return plain.serial, plain.not_after


def test_edge_renews_its_delegation_and_keeps_enrolling(tmp_path: Path) -> None:
    cloud, edge = tmp_path / "cloud-1", tmp_path / "edge-1"
    init_cloud(cloud, PASSPHRASE, top=FAST)
    with reaped(daemon_env(passphrase=PASSPHRASE)) as daemons:
        mesh = DeviceMesh(tmp_path, daemons)
        daemons.run("cloud-1", cloud)
        enroll_edge(cloud, edge, "edge-1", PASSPHRASE, top=FAST)
        first_serial, first_expiry = _delegation(edge)
        assert first_expiry - time.time() <= LIFETIME + 1
        daemons.run("edge-1", edge)
        try:
            mesh.enroll_devices("edge-1", {"edge-1.d1": end_token(edge)}, PASSPHRASE)
            d1 = mesh.devices["edge-1.d1"]
            # at half the delegation's lifetime the edge renews it with the cloud
            poll(lambda: _delegation(edge)[0] != first_serial, "the delegation renewed", 30)
            serial, expiry = _delegation(edge)
            assert expiry > first_expiry
            poll(
                lambda: read_status(edge)["services"]["enrollment"]["delegation"]["renewals"] >= 1,
                "the edge's status to count the renewal",
            )
            assert read_status(edge)["services"]["enrollment"]["delegation"]["serial"] == serial
            # past the first delegation's end the edge still issues: a new device enrolls
            wait = first_expiry + 0.5 - time.time()
            if wait > 0:
                time.sleep(wait)
            mesh.enroll_devices("edge-1", {"edge-1.d2": end_token(edge)}, PASSPHRASE)
            assert mesh.devices["edge-1.d2"].certificate.not_after > first_expiry
            # and the device enrolled under the first delegation renewed past its end
            poll(
                lambda: d1.certificate.not_after > first_expiry,
                "edge-1.d1 renewed under the new delegation",
                20,
            )
            # the cloud still verifies what edge-1.d1 signs: an audit event reaches its log
            d1.record_audit("object.put", ("object", "reading-1"), details={"bytes": 1})
            poll(
                lambda: d1.status()["audit"]["shipped"] >= 1,  # type: ignore[index]
                "edge-1.d1's audit event acknowledged by the cloud's log",
                20,
            )
        finally:
            mesh.close_devices()
        assert daemons.stop("edge-1") == 0
    log = (tmp_path / "edge-1.log").read_text()
    assert '"event":"delegation_renewed"' in log
    assert "delegation_renew_failed" not in log


def _serial(cert_file: Path) -> tuple[int, float]:
    plain = SignedCertificate.from_bytes(cert_file.read_bytes()).unverified_certificate()
    return plain.serial, plain.not_after


def test_cloud_renews_its_own_certificate_and_the_mesh_follows(tmp_path: Path) -> None:
    cloud, edge = tmp_path / "cloud-1", tmp_path / "edge-1"
    init_cloud(cloud, PASSPHRASE, top=FAST, cert_lifetime="16s")
    with reaped(daemon_env(passphrase=PASSPHRASE)) as daemons:
        mesh = DeviceMesh(tmp_path, daemons)
        daemons.run("cloud-1", cloud)
        first_serial, first_expiry = _serial(cloud / "node.cert")
        assert first_expiry - time.time() <= LIFETIME + 1
        enroll_edge(cloud, edge, "edge-1", PASSPHRASE, top=FAST)
        daemons.run("edge-1", edge)
        try:
            mesh.enroll_devices("edge-1", {"edge-1.d1": end_token(edge)}, PASSPHRASE)
            d1 = mesh.devices["edge-1.d1"]
            poll(lambda: _serial(cloud / "node.cert")[0] != first_serial, "the cloud renewed", 30)
            assert _serial(cloud / "node.cert")[1] > first_expiry
            wait = first_expiry + 0.5 - time.time()
            if wait > 0:
                time.sleep(wait)
            # past the first certificate's end: the edge and the device still take the
            # cloud's word (the device's audit event is acknowledged by the cloud's log)
            d1.record_audit("object.put", ("object", "reading-1"), details={"bytes": 1})
            poll(
                lambda: d1.status()["audit"]["shipped"] >= 1,  # type: ignore[index]
                "edge-1.d1's audit event acknowledged by the cloud's log",
                20,
            )
            poll(lambda: read_status(edge)["parent"]["connected"], "edge-1 connected to cloud-1")
        finally:
            mesh.close_devices()
        assert daemons.stop("cloud-1") == 0
    renewals = cli(
        "audit", "query", "--db", str(cloud / "audit.db"), "--node", "cloud-1",
        "--kind", "cert.renewed", "--format", "json",
    )  # fmt: skip
    assert '"cloud-1"' in renewals
