"""The SDK against real daemons: ``securemesh init / token / enroll / revoke`` and ``node run``.

A cloud daemon (the root authority) and an edge daemon (enrolled with a
``--delegate`` token, so it enrolls devices itself) run as separate
processes; everything is set up through the CLI, as an operator would. A
Device then enrolls at the edge with an ``end`` token, talks to the edge and
(routed device -> edge -> cloud) to the cloud, and is cut off live when the
operator revokes it on the cloud.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import (
    Daemons,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    read_status,
    reaped,
    wait_status,
)
from sdk_support import FAST_KDF

from securemesh.errors import CertificateRevoked
from securemesh.sdk import Device, Enrollment

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
PASSPHRASE = "daemon-test-passphrase"
SERVICES = 'services = ["sdk_daemon_services:register"]\nstatus_interval = 0.2\n'
POLICY = '\n[[policy.allow]]\ntypes = ["app.*"]\n'
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}


@dataclass
class Mesh:
    cloud_dir: Path
    edge_dir: Path
    daemons: Daemons


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("sdk-daemons")
    cloud_dir, edge_dir = root / "cloud", root / "edge"
    with reaped(daemon_env(pythonpath=[HERE], passphrase=PASSPHRASE)) as daemons:
        init_cloud(cloud_dir, PASSPHRASE, top=SERVICES, tables=POLICY)
        daemons.run("cloud", cloud_dir)
        enroll_edge(cloud_dir, edge_dir, "edge-1", PASSPHRASE, top=SERVICES, tables=POLICY)
        daemons.run("edge", edge_dir)
        yield Mesh(cloud_dir, edge_dir, daemons)


def _enroll(mesh: Mesh, data_dir: Path, node_id: str, *, at: Path | None = None) -> Enrollment:
    token = end_token(at or mesh.edge_dir, "sensor")
    # the edge daemon admits the new token's key on its next status tick; until
    # then its handshake is refused and the client tries again
    return Device.enroll(
        token, data_dir=data_dir, node_id=node_id,
        passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=20,
    )  # fmt: skip


def test_device_enrolls_at_a_delegated_edge_daemon_and_reaches_the_cloud(
    mesh: Mesh, tmp_path: Path
) -> None:
    info = _enroll(mesh, tmp_path / "dev", "edge-1.dev-1")
    assert (info.issuer, info.tier, info.roles) == ("edge-1", "end", ("sensor",))
    with Device.connect(tmp_path / "dev", passphrase=PASSPHRASE) as dev:
        assert dev.parent_id == "edge-1"
        at_edge = dev.request("edge-1", "app.echo", {"n": 1}, timeout=10).json()
        assert at_edge == {"by": "edge-1", "from": "edge-1.dev-1", "body": {"n": 1}}
        # routed up through the edge, verified again at the cloud, reply routed back
        at_cloud = dev.request("cloud-1", "app.echo", {"n": 2}, timeout=10)
        assert at_cloud.json() == {"by": "cloud-1", "from": "edge-1.dev-1", "body": {"n": 2}}
        assert at_cloud.certificate is not None
        assert at_cloud.certificate.tier.value == "cloud"
        # the operator revokes the device on the cloud: cut off live, through the edge.
        # The edge refuses the device from the moment it installs the list (a request
        # then times out), and the device itself hears of it (its requests then fail
        # locally); which of the two a request meets first is a race, both are cut off.
        cli("revoke", "--data-dir", str(mesh.cloud_dir), "edge-1.dev-1", env=ENV)
        deadline = time.monotonic() + 20
        while dev.state != "revoked":
            assert time.monotonic() < deadline, "the revoked device never heard of it"
            try:
                dev.request("edge-1", "app.echo", {"n": 3}, timeout=0.5)
            except (TimeoutError, CertificateRevoked):
                continue
            assert time.monotonic() < deadline, "the revoked device is still served"
        with pytest.raises(CertificateRevoked):
            dev.request("edge-1", "app.echo", {"n": 4}, timeout=0.5)
        # the edge installed version 2 before telling the device; status.json follows
        wait_status(
            mesh.edge_dir,
            lambda status: status["revocation_list_versions"] == {"root": 2},
            what="the edge's status to show revocation list 2",
        )


def test_explicit_renewal_at_the_edge_and_at_the_cloud(mesh: Mesh, tmp_path: Path) -> None:
    # issued by the edge's delegated authority: renewed by the edge
    at_edge = _enroll(mesh, tmp_path / "edge-dev", "edge-1.dev-3")
    with Device.connect(tmp_path / "edge-dev", passphrase=PASSPHRASE) as dev:
        new = dev.renew(timeout=10)
        assert new.serial != at_edge.serial
        assert new.issuer == "edge-1"
        assert dev.request("cloud-1", "app.echo", {}, timeout=10).json()["from"] == "edge-1.dev-3"
    # enrolled at the cloud (root-issued, the cloud is its parent): renewed by the cloud
    at_cloud = _enroll(mesh, tmp_path / "cloud-dev", "dev-4", at=mesh.cloud_dir)
    assert at_cloud.issuer == "root"
    with Device.connect(tmp_path / "cloud-dev", passphrase=PASSPHRASE) as dev:
        assert dev.parent_id == "cloud-1"
        new = dev.renew(timeout=10)
        assert new.serial != at_cloud.serial
        assert new.issuer == "root"
        assert dev.request("cloud-1", "app.echo", {}, timeout=10).json()["from"] == "dev-4"


def test_device_reconnects_after_its_edge_daemon_restarts(mesh: Mesh, tmp_path: Path) -> None:
    _enroll(mesh, tmp_path / "dev", "edge-1.dev-2")
    with Device.connect(tmp_path / "dev", passphrase=PASSPHRASE) as dev:
        assert dev.request("edge-1", "app.echo", {"n": 1}, timeout=10).json()["by"] == "edge-1"
        assert mesh.daemons.stop("edge") == 0
        mesh.daemons.run("edge", mesh.edge_dir)
        deadline = time.monotonic() + 8
        while True:
            try:
                reply = dev.request("edge-1", "app.echo", {"n": 2}, timeout=1.0)
                break
            except TimeoutError:
                transport = read_status(mesh.edge_dir)["transport"]
                assert time.monotonic() < deadline, f"not served after the restart: {transport}"
        assert reply.json()["body"] == {"n": 2}
