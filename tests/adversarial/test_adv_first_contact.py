"""Issue #9 item 1: a join-token holder must not touch state keyed by a claimed identity.

The attacker holds an unused ``end`` token of the edge. Its first-contact
``enroll.request`` claims to come from ``cloud-1`` with sequence 2^63 (so the
edge would refuse everything the cloud sends as stale if that moved the
cloud's replay window), then it sprays made-up sender ids. The edge must keep
accepting its cloud's messages (a device's request routed to the cloud and
the reply routed back), its per-sender replay state must not grow, an honest
device's p99 stays under 500 ms and the edge's RSS growth under 128 MiB.
"""

from __future__ import annotations

import time

import pytest
from harness import (
    CLOUD_ID,
    EDGE_ID,
    Attacker,
    Mesh,
    RoundTrips,
    RssWatch,
    attack_seconds,
    signed_frames,
)

from securemesh.crypto.identity import NodeIdentity
from securemesh.enroll import JoinToken, build_enroll_request

pytestmark = pytest.mark.slow

#: Messages the spray keeps in flight (it waits for their mesh.error replies).
WINDOW = 16


def test_a_token_holder_cannot_cut_the_edge_off_its_cloud(mesh: Mesh) -> None:
    honest_dir = mesh.enroll_device("edge-1.fc-honest")
    with mesh.connect(honest_dir) as dev:
        assert dev.request(CLOUD_ID, "app.echo", {"n": 0}, timeout=10).json()["by"] == CLOUD_ID
        token_text = mesh.token()
        me = NodeIdentity.generate()
        body = build_enroll_request(JoinToken.decode(token_text), me, "edge-1.fc-attacker")

        def forged(sender: str, sequence: int) -> list[bytes]:
            return signed_frames(
                me, msg_type="enroll.request", sender=sender, recipient=EDGE_ID,
                body=body, sequence=sequence,
            )  # fmt: skip

        with (
            Attacker.admitted_token(token_text) as attacker,
            RssWatch(mesh.pid("edge")) as rss,
            RoundTrips(dev) as rt,
        ):
            # 1. claim to be the cloud, at the top of the sequence space
            attacker.send(forged(CLOUD_ID, 2**63))
            assert attacker.recv(10) is not None, "the edge never answered the forged request"
            # 2. spray made-up sender ids, each at a huge sequence
            sent = 0
            end = time.monotonic() + attack_seconds()
            while time.monotonic() < end:
                for _ in range(WINDOW):
                    sent += 1
                    attacker.send(forged(f"spray-{sent}", 2**63 + sent))
                for _ in range(WINDOW):
                    assert attacker.recv(10) is not None, "the edge stopped answering"
        rt.assert_p99()
        rss.assert_bounded()
        # the edge still accepts what its cloud sends: a routed reply comes back
        reply = dev.request(CLOUD_ID, "app.echo", {"n": 1}, timeout=10).json()
        assert reply == {"by": CLOUD_ID, "from": "edge-1.fc-honest", "body": {"n": 1}}
        # and its heartbeats are answered (the parent link stays up)
        mesh.wait_edge_connected()
        # nothing keyed by the claimed ids grew: the spray is one per-connection entry
        replay = mesh.wait_status(
            "edge", lambda s: "replay" in s, what="replay state in the edge's status"
        )["replay"]
        assert replay["senders"]["senders"] < 10, replay
        assert replay["first_contact"]["senders"] <= 2, replay  # two token connections
        assert sent >= WINDOW
