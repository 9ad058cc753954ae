"""Issue #9 item 6: a device enrolled at an edge cannot bypass it and talk to the cloud.

The cloud knows the device's certificate (it verified the device's requests
routed through the edge), but the device's own CURVE key is refused by the
cloud's listener: the cloud admits its edges, and only devices enrolled at it
directly. The compromised device keeps trying with raw pyzmq while an outsider
throws garbage at the cloud over raw TCP; an honest device's round trips to
the cloud (through the edge) keep p99 under 500 ms and the cloud's RSS
growth stays under 128 MiB.
"""

from __future__ import annotations

import time

import pytest
from harness import CLOUD_ID, Attacker, Mesh, RoundTrips, RssWatch, attack_seconds, raw_tcp

pytestmark = pytest.mark.slow


def test_a_device_cannot_bypass_its_edge_to_reach_the_cloud(mesh: Mesh) -> None:
    dev_dir = mesh.enroll_device("edge-1.tp-dev")
    with mesh.connect(dev_dir) as dev:
        # routed through the edge and verified at the cloud: the cloud holds its certificate
        assert dev.request(CLOUD_ID, "app.echo", {}, timeout=10).json()["from"] == "edge-1.tp-dev"
        refused = mesh.status("cloud")["transport"]["listener"]["rejected_keys"]
        attempts = 0
        with RssWatch(mesh.pid("cloud")) as rss, RoundTrips(dev, dest=CLOUD_ID) as rt:
            end = time.monotonic() + attack_seconds()
            while attempts == 0 or time.monotonic() < end:
                with Attacker.with_device_keys(
                    dev_dir, mesh.endpoints["cloud"], mesh.curve_keys["cloud"]
                ) as attacker:
                    assert not attacker.handshake(), "the cloud admitted a device of an edge"
                    assert attacker.recv(0) is None
                with raw_tcp(mesh.endpoints["cloud"]) as outsider:
                    outsider.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"garbage" * 16)
                attempts += 1
        rt.assert_p99()
        rss.assert_bounded()
        mesh.wait_status(
            "cloud",
            lambda s: s["transport"]["listener"]["rejected_keys"] > refused,
            what="the cloud to count the refused device key",
        )
