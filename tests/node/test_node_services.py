"""Acceptance of the service seam on REAL daemons: cloud + two edges + SDK devices.

``examples/counter_service.py`` is loaded by ``node.toml``
(``services = ["counter_service:make"]``) on both edges, exactly as a user
would load it. Three ``securemesh node run`` processes over CurveZMQ on
loopback (cloud-1 <- edge-a, edge-b, each enrolled with a ``--delegate`` token)
and one SDK device per edge. The test checks that:

1. the service starts (status shows it running with its loop), answers
   ``counter.get`` where the operator allows it, and is stopped with the daemon
   (its loop cancelled, no task left, its state saved in its data directory);
2. its own audit kind ``counter.tick`` reaches the cloud log, which verifies
   (``securemesh audit verify``) and finds it (``securemesh audit query --kind
   counter.tick``); a device may not log the ``counter`` namespace (the
   cloud's ``[[audit.kinds]]`` rule names only edges), so its forged
   ``counter.tick`` is refused and never appended;
3. an operator deny beats a service allow: edge-b's ``[policy]`` does not allow
   ``counter.*`` from devices although the service's policy does, and the
   device's request is refused (``unauthorized`` at edge-b);
4. the edges' heartbeats carry the typed report fields (``[report]`` and the
   installed services) to the cloud.

Every wait is bounded and polls a readiness signal; every daemon and device is
closed/reaped, also on failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    verify_cloud_log,
    wait_status,
)

from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
from securemesh.sdk import Device

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PASSPHRASE = "services-test-passphrase"

TOP = "status_interval = 0.2\n"
EDGE_TOP = TOP + 'services = ["counter_service:make"]\nheartbeat_interval = 0.5\n'
CLOUD_TABLES = '\n[[audit.kinds]]\nnamespace = "counter"\ntiers = ["edge"]\n'
#: edge-a's operator allows counter.* from devices; edge-b's does not
EDGE_A_TABLES = (
    '\n[[policy.allow]]\ntypes = ["counter.*"]\ntiers = ["end"]\n'
    '\n[report]\nfailure_domain = "rack-a"\ncarbon_intensity = 42.0\n'
    '[report.labels]\nsite = "lab"\n'
)
EDGE_B_TABLES = '\n[[policy.allow]]\ntypes = ["app.*"]\ntiers = ["end"]\n'


def counter_status(data_dir: Path) -> dict[str, Any]:
    status = read_status(data_dir)
    entry = status.get("services", {}).get("counter")
    assert isinstance(entry, dict), status.get("services")
    return entry


def query_ticks(cloud: Path, node: str) -> list[dict[str, Any]]:
    out = cli(
        "audit", "query", "--db", str(cloud / "audit.db"), "--kind", "counter.tick",
        "--node", node, "--format", "json",
    )  # fmt: skip
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    root = tmp_path_factory.mktemp("services")
    env = daemon_env(pythonpath=[EXAMPLES], passphrase=PASSPHRASE)
    env["COUNTER_INTERVAL"] = "0.2"
    with reaped(env) as daemons:
        m = DeviceMesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP, tables=CLOUD_TABLES)
            daemons.run("cloud-1", cloud)
            for edge, tables in (("edge-a", EDGE_A_TABLES), ("edge-b", EDGE_B_TABLES)):
                enroll_edge(cloud, m.dir(edge), edge, PASSPHRASE, top=EDGE_TOP, tables=tables)
                daemons.start(edge, m.dir(edge))
            tokens = {}
            for edge in ("edge-a", "edge-b"):
                daemons.wait_ready(edge)
                tokens[edge] = end_token(m.dir(edge))
            created = time.time()
            for edge in ("edge-a", "edge-b"):  # the edge admits the token's key on a tick
                wait_status(m.dir(edge), lambda s: s["written_at"] > created, what="a tick")
            for edge, token in tokens.items():
                name = f"{edge}.dev"
                Device.enroll(
                    token, data_dir=root / name, node_id=name, passphrase=PASSPHRASE,
                    timeout=10, kdf_params=UNSAFE_FAST_PARAMS,
                )  # fmt: skip
                m.devices[name] = Device.connect(
                    root / name, passphrase=PASSPHRASE, connect_timeout=20
                )
            yield m
        finally:
            m.close_devices()


def test_the_service_runs_answers_and_reports(mesh: DeviceMesh) -> None:
    edge_a = mesh.dir("edge-a")
    poll(lambda: counter_status(edge_a)["count"] >= 2, "the counter's loop to tick")
    status = counter_status(edge_a)
    assert status["state"] == "running"
    assert status["tasks"] == 1  # its loop
    assert status["crashes"] == 0
    reply = mesh.devices["edge-a.dev"].request("edge-a", "counter.get", {}, timeout=10).json()
    assert reply["by"] == "edge-a"
    assert reply["count"] >= 2
    # the runtime's own parts are services too
    services = read_status(edge_a)["services"]
    assert {"audit", "enrollment", "counter"} <= set(services)
    assert services["enrollment"]["enabled"] is True  # a delegated edge serves enrollment
    # edge-a's heartbeat carries its [report] and its services to the cloud

    def edge_a_report() -> dict[str, Any] | None:
        for peer in read_status(mesh.dir("cloud-1"))["peers"]:
            if peer["node_id"] == "edge-a" and peer["report"] and peer["report"]["services"]:
                return dict(peer["report"])
        return None

    poll(lambda: edge_a_report() is not None, "edge-a's report at the cloud")
    report = edge_a_report()
    assert report is not None
    assert report["failure_domain"] == "rack-a"
    assert report["carbon_intensity"] == 42.0
    assert report["labels"] == {"site": "lab"}
    assert report["services"] == ["audit", "enrollment", "counter"]


def test_an_operator_deny_beats_a_service_allow(mesh: DeviceMesh) -> None:
    edge_b = mesh.dir("edge-b")
    poll(lambda: counter_status(edge_b)["state"] == "running", "edge-b's counter")
    before = read_status(edge_b)["counters"]["rejections"].get("unauthorized", 0)
    # the service allows counter.get from end devices; edge-b's operator does not
    with pytest.raises(TimeoutError):
        mesh.devices["edge-b.dev"].request("edge-b", "counter.get", {}, timeout=1.0)
    poll(
        lambda: read_status(edge_b)["counters"]["rejections"].get("unauthorized", 0) > before,
        "the refusal counted at edge-b",
    )


def test_the_custom_kind_is_logged_verified_and_queried(mesh: DeviceMesh) -> None:
    cloud = mesh.dir("cloud-1")
    poll(lambda: len(query_ticks(cloud, "edge-a")) >= 2, "counter.tick events in the cloud log")
    rows = query_ticks(cloud, "edge-a")
    assert all(r["kind"] == "counter.tick" and r["origin"] == "edge-a" for r in rows)
    assert {r["subject"]["id"] for r in rows} == {"edge-a"}
    assert all(isinstance(r["details"]["count"], int) for r in rows)
    # a device may not log the counter namespace (the cloud's rule names edges only)
    dev = mesh.devices["edge-a.dev"]
    forged = dev.record_audit("counter.tick", ("node", "edge-a"), details={"count": 10**6})
    poll(
        lambda: read_status(cloud)["audit"]["refused"].get("kind_not_allowed", 0) >= 1,
        "the cloud refusing the device's counter.tick",
    )
    assert forged not in {r["event_id"] for r in query_ticks(cloud, "edge-a.dev")}
    assert query_ticks(cloud, "edge-a.dev") == []
    assert verify_cloud_log(cloud).startswith("OK:")


def test_stopping_the_daemon_stops_the_service_and_cancels_its_tasks(mesh: DeviceMesh) -> None:
    edge_a = mesh.dir("edge-a")
    poll(lambda: counter_status(edge_a)["count"] >= 1, "the counter to tick")
    assert mesh.daemons.stop("edge-a") == 0
    final = read_status(edge_a)
    assert final["state"] == "stopped"
    counter = final["services"]["counter"]
    assert counter["state"] == "stopped"
    assert counter["tasks"] == 0
    assert counter["loop_cancelled"] is True
    saved = json.loads((edge_a / "services" / "counter" / "count").read_text())
    assert saved["count"] == counter["count"]
