"""The SDK against real daemons: ``securemesh init / token / enroll / revoke`` and ``node run``.

A cloud daemon (the root authority) and an edge daemon (enrolled with a
``--delegate`` token, so it enrolls devices itself) run as separate
processes; everything is set up through the CLI, as an operator would. A
Device then enrolls at the edge with an ``end`` token, talks to the edge and
(routed device -> edge -> cloud) to the cloud, and is cut off live when the
operator revokes it on the cloud.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sdk_support import FAST_KDF

from securemesh.sdk import Device, Enrollment

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
PASSPHRASE = "daemon-test-passphrase"
SERVICES = 'services = ["sdk_daemon_services:register"]\nstatus_interval = 0.2\n'
POLICY = '\n[[policy.allow]]\ntypes = ["app.*"]\n'


def _env() -> dict[str, str]:
    env = dict(os.environ, SECUREMESH_PASSPHRASE=PASSPHRASE)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "securemesh", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"securemesh {args[0]} failed: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _configure(toml: Path) -> None:
    """Load the test services and allow app.* (deny by default otherwise)."""
    toml.write_text(SERVICES + toml.read_text() + POLICY)


def _start(toml: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "securemesh", "node", "run", "--config", str(toml)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_ready(data_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (data_dir / "ready").exists():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"daemon exited early: {err[-2000:]!r}")
        assert time.monotonic() < deadline, "daemon not ready in time"
        time.sleep(0.02)


def _status(data_dir: Path) -> dict[str, object]:
    data = json.loads((data_dir / "status.json").read_text())
    assert isinstance(data, dict)
    return data


@dataclass
class Mesh:
    cloud_dir: Path
    edge_dir: Path
    procs: dict[str, subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("sdk-daemons")
    cloud_dir, edge_dir = root / "cloud", root / "edge"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _cli(
            "init", "--data-dir", str(cloud_dir), "--authority-id", "root",
            "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        _configure(cloud_dir / "node.toml")
        procs["cloud"] = _start(cloud_dir / "node.toml")
        _wait_ready(cloud_dir, procs["cloud"])
        edge_token = _cli(
            "token", "create", "--data-dir", str(cloud_dir), "--tier", "edge",
            "--delegate", "--ttl", "10m",
        )  # fmt: skip
        _cli(
            "enroll", "--data-dir", str(edge_dir), "--token", edge_token,
            "--node-id", "edge-1", "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        _configure(edge_dir / "node.toml")
        procs["edge"] = _start(edge_dir / "node.toml")
        _wait_ready(edge_dir, procs["edge"])
        yield Mesh(cloud_dir, edge_dir, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _enroll(mesh: Mesh, data_dir: Path, node_id: str, *, at: Path | None = None) -> Enrollment:
    token = _cli(
        "token", "create", "--data-dir", str(at or mesh.edge_dir), "--tier", "end",
        "--roles", "sensor", "--ttl", "10m",
    )  # fmt: skip
    # the edge daemon admits the new token's key on its next status tick
    deadline = time.monotonic() + 20
    while True:
        try:
            return Device.enroll(
                token, data_dir=data_dir, node_id=node_id,
                passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=1.0,
            )  # fmt: skip
        except OSError:  # TransportError: not admitted yet
            assert time.monotonic() < deadline


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
        # the operator revokes the device on the cloud: cut off live, through the edge
        _cli("revoke", "--data-dir", str(mesh.cloud_dir), "edge-1.dev-1")
        deadline = time.monotonic() + 20
        while True:
            try:
                dev.request("edge-1", "app.echo", {"n": 3}, timeout=0.5)
            except TimeoutError:
                break
            assert time.monotonic() < deadline, "the revoked device is still served"
        versions = _status(mesh.edge_dir)["revocation_list_versions"]
        assert versions == {"root": 2}


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
        edge = mesh.procs["edge"]
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=20) == 0
        if edge.stderr is not None:
            edge.stderr.close()
        mesh.procs["edge"] = _start(mesh.edge_dir / "node.toml")
        _wait_ready(mesh.edge_dir, mesh.procs["edge"])
        deadline = time.monotonic() + 8
        while True:
            try:
                reply = dev.request("edge-1", "app.echo", {"n": 2}, timeout=1.0)
                break
            except TimeoutError:
                transport = _status(mesh.edge_dir)["transport"]
                assert time.monotonic() < deadline, f"not served after the restart: {transport}"
        assert reply.json()["body"] == {"n": 2}
