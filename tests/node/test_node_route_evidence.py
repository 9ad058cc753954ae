"""Route evidence survives a crash of the parent: a real cloud daemon, killed and restarted.

cloud-1 runs as ``securemesh node run`` (a subprocess); edge-1 and edge-2 are
in-process nodes over ZeroMQ below it. dev-1 was attached below edge-2
(statement ``seq 100``), then moved below edge-1 (``seq 200``). The cloud is
SIGKILLed right after the move — no graceful save — and restarted; the rogue
edge-2 then replays the old statement. Without the saved evidence the cloud
would route dev-1 to edge-2 again.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from daemon_support import daemon_env, reaped, wait_status
from node_testlib import Built, Fixture, Member, build_node, run, write_data_dir, zmq_factory

from securemesh.messages import ROUTE_ANNOUNCE, RouteAnnounce, b64e
from securemesh.node._attach import sign_attachment


def _evidence(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    assert isinstance(data, dict)
    return data


def _wait_evidence(path: Path, node_id: str, sequence: int, timeout: float = 20.0) -> None:
    """Poll the file the daemon writes (its readiness signal for this test)."""
    deadline = time.monotonic() + timeout
    while _evidence(path).get(node_id) != sequence:
        assert time.monotonic() < deadline, f"{path.name} never held {node_id}: {sequence}"
        time.sleep(0.02)


def test_route_evidence_survives_a_parent_crash(tmp_path: Path) -> None:
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    edges = {name: fx.member(name, "edge") for name in ("edge-1", "edge-2")}
    dev: Member = fx.member("dev-1", "end")
    data = tmp_path / "cloud"
    toml = write_data_dir(fx, cloud_m, data, listen="tcp://127.0.0.1:0", peers=list(edges.values()))
    cloud_key = cloud_m.cert.unverified_certificate().curve_key

    def statement(edge: str, sequence: int) -> str:
        edge_key = edges[edge].cert.unverified_certificate().curve_key
        blob = sign_attachment(
            dev.identity.signer,
            "dev-1",
            edge_key,
            sequence=sequence,
            timestamp_ms=int(time.time() * 1000),
        )
        return b64e(blob)

    def announce(address: str, edge: str, text: str) -> None:
        async def main() -> None:
            b: Built = build_node(
                fx,
                edges[edge],
                zmq_factory(),
                parent_endpoint=(address, cloud_key),
                known=[dev],
            )
            await b.node.start()
            try:
                await b.node.wait_parent(20)
                body = RouteAnnounce(certificates=[b64e(dev.cert.to_bytes())], attachments=[text])
                await b.node.send("cloud-1", ROUTE_ANNOUNCE, body)
            finally:
                await b.node.stop(1.0)

        run(main())

    stale, fresh = statement("edge-2", 100), statement("edge-1", 200)
    evidence_file = data / "route-evidence.json"
    with reaped(daemon_env()) as daemons:  # the data dir has a passphrase_file
        address = daemons.run("cloud", data, toml)["listen"]
        announce(address, "edge-2", stale)
        _wait_evidence(evidence_file, "dev-1", 100)
        announce(address, "edge-1", fresh)  # dev-1 moved below edge-1
        _wait_evidence(evidence_file, "dev-1", 200)  # saved at once, not 30 s later
        # crash: no graceful stop, no final save
        daemons.procs["cloud"].send_signal(signal.SIGKILL)
        daemons.procs["cloud"].wait(timeout=20)
        address = daemons.run("cloud", data, toml)["listen"]
        announce(address, "edge-2", stale)  # the rogue edge replays the old statement
        wait_status(
            data,
            lambda s: s["counters"]["rejections"].get("route_refused", 0) >= 1,
            what="the stale statement refused",
        )
