"""Issue #9 item 2: revocation lists converge, whatever a node missed while it was down.

* The operator revokes a device while its edge daemon is down: when the edge
  comes back it pulls the newer list from the cloud (``revocation.sync`` on
  reconnect) and refuses the device.
* The cloud daemon is down when the operator revokes (the list is only on the
  cloud's disk): the device's renewal at the edge is refused, because the edge
  cannot confirm the list upstream; once the cloud is back the edge pulls the
  list (a cloud restart resyncs its edges) and cuts the device off.

While the revoked device keeps knocking, an honest device on the same edge
keeps its p99 under 500 ms and the edge's RSS growth stays under 128 MiB.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import EDGE_ID, Attacker, Mesh, RoundTrips, RssWatch, attack_seconds

from securemesh.errors import RemoteCallError

pytestmark = pytest.mark.slow


def _knock(mesh: Mesh, data_dir: Path) -> bool:
    """Does the edge admit this device's key (a raw CURVE handshake with its keys)?"""
    with Attacker.with_device_keys(data_dir, mesh.endpoints["edge"], mesh.curve_keys["edge"]) as a:
        return a.handshake()


def _revoked_keeps_knocking(mesh: Mesh, revoked_dir: Path, honest_dir: Path) -> None:
    """The revoked device retries for a while: every attempt is refused, while an
    honest device on the edge keeps its p99 and the edge its memory."""
    with (
        mesh.connect(honest_dir) as honest,
        RssWatch(mesh.pid("edge")) as rss,
        RoundTrips(honest) as rt,
    ):
        attempts = 0
        end = time.monotonic() + attack_seconds()
        while attempts == 0 or time.monotonic() < end:
            assert not _knock(mesh, revoked_dir), "the edge admitted a revoked device"
            attempts += 1
    rt.assert_p99()
    rss.assert_bounded()


def test_a_revocation_issued_while_the_edge_is_down_reaches_it(mesh: Mesh) -> None:
    revoked_dir = mesh.enroll_device("edge-1.rs-down")
    honest_dir = mesh.enroll_device("edge-1.rs-honest")
    with mesh.connect(revoked_dir) as dev:
        assert dev.request(EDGE_ID, "app.echo", {}, timeout=10).json()["by"] == EDGE_ID
    assert _knock(mesh, revoked_dir)
    before = mesh.rl_version("edge")
    mesh.stop("edge")
    mesh.revoke("edge-1.rs-down")  # the cloud broadcasts it; the edge is not there to hear
    mesh.wait_status("cloud", lambda s: s["revocation_list_versions"]["root"] > before)
    mesh.start("edge")
    mesh.wait_status(
        "edge",
        lambda s: s["revocation_list_versions"]["root"] > before,
        what="the restarted edge to pull the newer revocation list",
    )
    _revoked_keeps_knocking(mesh, revoked_dir, honest_dir)


def test_renewal_checks_the_path_and_a_cloud_restart_resyncs_the_edge(mesh: Mesh) -> None:
    revoked_dir = mesh.enroll_device("edge-1.rs-renew")
    honest_dir = mesh.enroll_device("edge-1.rs-honest2")
    with mesh.connect(revoked_dir) as dev:
        assert dev.request(EDGE_ID, "app.echo", {}, timeout=10).json()["by"] == EDGE_ID
        before = mesh.rl_version("edge")
        mesh.stop("cloud")
        mesh.revoke("edge-1.rs-renew")  # on the cloud's disk only: nobody broadcasts it
        # the edge cannot confirm its list with the cloud: no renewal for anyone
        with pytest.raises(RemoteCallError):
            dev.renew(timeout=20)
        mesh.start("cloud")
        mesh.wait_status(
            "edge",
            lambda s: s["revocation_list_versions"]["root"] > before,
            what="the edge to pull the list from the restarted cloud",
        )
    _revoked_keeps_knocking(mesh, revoked_dir, honest_dir)
