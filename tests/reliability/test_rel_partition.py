"""Partitions between edge and cloud, made by stopping a real daemon (SIGSTOP ... SIGCONT).

A stopped process keeps its sockets open but answers nothing: to its peers it is
exactly a network partition (TCP connections up, no traffic through), not a crash.
On the adversarial suite's operator-built mesh (cloud + edge daemons, an SDK device
at the edge):

1. **cloud partitioned away**: the edge keeps serving its device (``app.echo``
   round trips to the edge, none failing, p99 under the harness bound); the
   device's audit events recorded meanwhile stay on disk in its outbox (the
   shipper fails and backs off), and so does the edge's own event (a rejection it
   logged during the partition); after SIGCONT both outboxes drain, and every
   acknowledged event is in the cloud log exactly once;
2. **edge partitioned away from its device and the cloud**: the device's events
   buffer the same way and ship once the edge is back;
3. **edge crashed** (SIGKILL) and restarted on its data dir: the device's events
   recorded meanwhile wait in its outbox, the device is served again, and they ship;
4. every acknowledged event is in the cloud log exactly once, and
   ``securemesh audit verify`` (a real process) passes on the cloud log.

Nothing here sleeps for synchronisation: every wait polls a status the daemons
or the device report.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_support import cli, verify_cloud_log
from harness import EDGE_ID, Mesh, RoundTrips, operator_mesh, wait_until

from securemesh.sdk import Device

pytestmark = pytest.mark.slow

DEVICE = f"{EDGE_ID}.part-a"
#: Quick shipping retries (the test must not wait out a 10 s backoff), receipts kept.
DEVICE_TUNING = "\n[audit]\nkeep_receipts = true\nrequest_timeout = 1.0\nbackoff_max = 0.5\n"


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process ``pid`` is stopped (SIGSTOP) inside the block, continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def audit(dev: Device) -> dict[str, Any]:
    status = dev.status()["audit"]
    assert isinstance(status, dict)
    return status


def outbox_ids(data_dir: Path) -> set[str]:
    """Event ids waiting in a node's ``audit-outbox.db``, read on disk beside the node."""
    db = sqlite3.connect(f"file:{data_dir / 'audit-outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {row[0] for row in db.execute("SELECT event_id FROM outbox")}
    finally:
        db.close()


def logged(mesh: Mesh, *args: str) -> list[dict[str, Any]]:
    out = cli(
        "audit", "query", "--db", str(mesh.cloud_dir / "audit.db"), *args, "--format", "json"
    )  # fmt: skip
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def record(dev: Device, tag: str, count: int) -> list[str]:
    return [
        dev.record_audit("object.put", ("object", f"{tag}-{i}"), details={"i": i})
        for i in range(count)
    ]


def test_partitions_and_an_edge_crash_keep_serving_and_lose_no_audit_event(tmp_path: Path) -> None:
    with operator_mesh(tmp_path) as mesh:
        data = mesh.enroll_device(DEVICE)
        with open(data / "node.toml", "a", encoding="utf-8") as f:
            f.write(DEVICE_TUNING)
        with mesh.connect(data) as dev:
            before = record(dev, "before", 3)
            wait_until(lambda: audit(dev)["outbox_pending"] == 0, 30, "the first events shipped")
            edge_shipped = mesh.status("edge")["audit"]["shipped"]

            # 1. the cloud partitioned away: the edge serves, the events wait on disk
            with stopped(mesh.pid("cloud")):
                failures = audit(dev)["ship_failures"]
                with RoundTrips(dev, dest=EDGE_ID) as rt:
                    during = record(dev, "cloud-partition", 10)
                    # a type nobody allows: the edge rejects it and logs that itself
                    dev.send(EDGE_ID, "zz.unwanted", {})
                    wait_until(
                        lambda: audit(dev)["ship_failures"] > failures, 30,
                        "the device to fail shipping through the partition",
                    )  # fmt: skip
                    wait_until(
                        lambda: mesh.status("edge")["audit"]["outbox_pending"] >= 1, 30,
                        "the edge's own rejection event to wait in its outbox",
                    )  # fmt: skip
                rt.assert_p99()
                assert set(during) <= outbox_ids(data), "recorded events must be on disk"
                in_log = {r["event_id"] for r in logged(mesh, "--node", DEVICE)}
                assert not in_log & set(during), "nothing reaches a stopped cloud"

            wait_until(lambda: audit(dev)["outbox_pending"] == 0, 60, "the device outbox drained")
            wait_until(
                lambda: mesh.status("edge")["audit"]["outbox_pending"] == 0, 60,
                "the edge outbox drained",
            )  # fmt: skip
            assert mesh.status("edge")["audit"]["shipped"] > edge_shipped

            # 2. the edge partitioned away from its device and from the cloud
            failures = audit(dev)["ship_failures"]
            with stopped(mesh.pid("edge")):
                edge_partition = record(dev, "edge-partition", 5)
                wait_until(
                    lambda: audit(dev)["ship_failures"] > failures, 30,
                    "the device to fail shipping to the stopped edge",
                )  # fmt: skip
                assert set(edge_partition) <= outbox_ids(data)
            wait_until(lambda: audit(dev)["outbox_pending"] == 0, 60, "the outbox drained again")

            # 3. the edge crashes (SIGKILL, no clean-up) while the device records; it restarts
            failures = audit(dev)["ship_failures"]
            edge = mesh.daemons.procs["edge"]
            edge.kill()
            edge.wait(timeout=30)
            edge_crash = record(dev, "edge-crash", 5)
            wait_until(
                lambda: audit(dev)["ship_failures"] > failures, 30,
                "the device to fail shipping to the dead edge",
            )  # fmt: skip
            assert set(edge_crash) <= outbox_ids(data)
            mesh.start("edge")  # same data dir and port; waits until it is back at the cloud
            wait_until(lambda: audit(dev)["outbox_pending"] == 0, 60, "the outbox drained at last")
            assert dev.request(EDGE_ID, "app.echo", {"n": 0}, timeout=10).json()["by"] == EDGE_ID

            # every acknowledged event in the log, exactly once
            rows = logged(mesh, "--node", DEVICE, "--kind", "object.put")
            ids = [r["event_id"] for r in rows]
            assert sorted(ids) == sorted([*before, *during, *edge_partition, *edge_crash])
            rejected = logged(mesh, "--node", EDGE_ID, "--kind", "message.rejected")
            assert [r["details"]["msg_type"] for r in rejected].count("zz.unwanted") == 1
        verify_cloud_log(mesh.cloud_dir)
