"""Enrollment through the real node runtime: CLI-initialised cloud and edge daemons (run_node).

The cloud and edge run :func:`securemesh.node.run_node` with
:func:`securemesh.enroll.enrollment_service` over ZeroMQ on loopback; nodes
enroll with the CLI's synchronous client. Covers: an edge enrolling at the
cloud (with a delegated authority), renewal over the bus, and a device
enrolling at the edge while the cloud is down.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from securemesh.cli import main
from securemesh.crypto import NodeIdentity, SignedCertificate, Tier, keystore, verify_certificate
from securemesh.enroll import (
    RenewReply,
    accept_renew_reply,
    build_renew_request,
)
from securemesh.enroll._service import EnrollmentService, enrollment_service
from securemesh.enroll._state import read_trust
from securemesh.node import load_config, run_node

PASS = "mesh passphrase"
TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    import securemesh.cli._mesh as mesh_cli

    monkeypatch.setattr(mesh_cli, "_KDF_PARAMS", keystore.UNSAFE_FAST_PARAMS)
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", PASS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_enroll_renew_and_offline_edge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cloud, edge, device = tmp_path / "cloud", tmp_path / "edge", tmp_path / "device"
    cloud_port, edge_port = _free_port(), _free_port()

    async def scenario() -> None:
        await _cli(
            capsys, "init", "--data-dir", str(cloud), "--authority-id", "acme",
            "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{cloud_port}",
        )  # fmt: skip
        with (cloud / "node.toml").open("a") as toml:
            toml.write("status_interval = 0.1\n")  # the daemon's file-watch tick
        cloud_svc: list[EnrollmentService] = []
        cloud_stop = asyncio.Event()
        cloud_task = asyncio.create_task(
            run_node(
                load_config(cloud / "node.toml"),
                passphrase=PASS,
                services=[enrollment_service(installed=cloud_svc)],  # all from the node
                stop=cloud_stop,
            )
        )
        await _until(lambda: (cloud / "ready").exists() or cloud_task.done(), "cloud ready")
        assert not cloud_task.done()

        # 1. An edge enrolls at the running cloud node (first contact through the pipeline).
        token = (
            await _cli(
                capsys,
                "token",
                "create",
                "--data-dir",
                str(cloud),
                "--tier",
                "edge",
                "--roles",
                "gateway",
                "--delegate",
                "--ttl",
                "5m",
            )
        ).strip()
        await _until(lambda: cloud_svc[0].refresh_tokens() == 1, "token admitted")
        await _cli(
            capsys, "enroll", "--token", token, "--data-dir", str(edge), "--node-id", "edge-1",
            "--listen", f"tcp://127.0.0.1:{edge_port}",
        )  # fmt: skip
        edge_cert = verify_certificate(
            (edge / "node.cert").read_bytes(), trust=read_trust(edge), now=time.time()
        )
        assert (edge_cert.node_id, edge_cert.tier, edge_cert.roles) == (
            "edge-1",
            Tier.EDGE,
            ("gateway",),
        )
        assert (edge / "delegation.cert").exists()
        record = cloud_svc[0].store.get(token_id(token)) if cloud_svc[0].store else None
        assert record is not None
        assert record.used_by == "edge-1"

        # 2. The edge daemon runs, connects to the cloud and renews its certificate over the bus.
        edge_svc: list[EnrollmentService] = []
        shift = [0.0]  # the edge service's clock runs ahead by this much
        edge_stop = asyncio.Event()
        edge_task = asyncio.create_task(
            run_node(
                load_config(edge / "node.toml"),
                passphrase=PASS,
                services=[
                    enrollment_service(
                        edge, installed=edge_svc, clock=lambda: time.time() + shift[0]
                    )
                ],
                stop=edge_stop,
            )
        )
        await _until(lambda: (edge / "ready").exists() or edge_task.done(), "edge ready")
        node = edge_svc[0].node
        await node.wait_parent(TIMEOUT)
        current = SignedCertificate.from_bytes((edge / "node.cert").read_bytes())
        answer = await node.request(
            "cloud-1", "cert.renew", build_renew_request(current), timeout=TIMEOUT
        )
        identity = NodeIdentity.load(edge / "identity.key", PASS)
        renewed = accept_renew_reply(
            identity,
            current,
            answer.envelope.body(RenewReply),
            read_trust(edge),
            time.time(),
        )
        assert renewed.unverified_certificate().serial != edge_cert.serial

        # 2b. Automatic renewal at half lifetime: node and delegation certificates.
        service = edge_svc[0]
        assert not service.renew_due()
        old_delegation = (edge / "delegation.cert").read_bytes()
        shift[0] = 12 * 3600 + 60  # past half of the 24 h lifetime
        assert service.renew_due()
        await service.renew_once()
        assert service.renewals == 2
        assert not service.renew_due(now=time.time())  # fresh (the cloud's clock is real)
        on_disk = SignedCertificate.from_bytes((edge / "node.cert").read_bytes())
        assert on_disk == node._signed_cert
        assert on_disk.unverified_certificate().serial not in (
            edge_cert.serial,
            renewed.unverified_certificate().serial,
        )
        new_delegation = SignedCertificate.from_bytes((edge / "delegation.cert").read_bytes())
        assert new_delegation.to_bytes() != old_delegation
        assert new_delegation.unverified_certificate().delegation is not None
        # The cloud learned the renewed certificate from the edge's new hello.
        cloud_dir = cloud_svc[0].node.directory
        await _until(
            lambda: cloud_dir.signed_certificate("edge-1") == on_disk, "cloud sees renewal"
        )
        shift[0] = 0.0

        # 2c. `securemesh revoke` on the cloud reaches the running edge (daemon broadcast).
        await _cli(capsys, "revoke", "ghost-1", "--data-dir", str(cloud))
        await _until(lambda: node.revocation_list_version == 2, "edge got the new list")
        rl = node.directory.trust.revocation_list("acme")
        assert rl is not None
        assert rl.node_ids == frozenset({"ghost-1"})

        # 3. The cloud goes away; a device enrolls at the edge's delegated authority.
        cloud_stop.set()
        assert await asyncio.wait_for(cloud_task, TIMEOUT) == 0
        device_token = (
            await _cli(
                capsys,
                "token",
                "create",
                "--data-dir",
                str(edge),
                "--tier",
                "end",
                "--roles",
                "sensor",
            )
        ).strip()
        await _until(lambda: edge_svc[0].refresh_tokens() == 1, "device token admitted")
        await _cli(
            capsys, "enroll", "--token", device_token, "--data-dir", str(device),
            "--node-id", "dev-1",
        )  # fmt: skip
        device_cert = SignedCertificate.from_bytes((device / "node.cert").read_bytes())
        chain = [(device / "authority.cert").read_bytes()]
        cert = verify_certificate(
            device_cert, trust=read_trust(cloud), now=time.time(), intermediates=chain
        )
        assert (cert.node_id, cert.tier, cert.issuer) == ("dev-1", Tier.END, "edge-1")
        # Re-enrollment (e.g. after its certificate expired offline) keeps the device's keys;
        # its envelope counter continues, so the edge's replay window accepts the request.
        again = (
            await _cli(capsys, "token", "create", "--data-dir", str(edge), "--tier", "end")
        ).strip()
        await _until(lambda: edge_svc[0].refresh_tokens() == 1, "second token admitted")
        await _cli(
            capsys, "enroll", "--token", again, "--data-dir", str(device), "--node-id", "dev-1"
        )
        second = SignedCertificate.from_bytes((device / "node.cert").read_bytes())
        assert second.unverified_certificate().public_keys() == cert.public_keys()
        assert second.unverified_certificate().serial != cert.serial
        # A revoked id cannot enroll again (the edge knows the list the cloud broadcast).
        ghost = (
            await _cli(capsys, "token", "create", "--data-dir", str(edge), "--tier", "end")
        ).strip()
        await _until(lambda: edge_svc[0].refresh_tokens() == 1, "third token admitted")
        code = await asyncio.to_thread(
            main,
            ["enroll", "--token", ghost, "--data-dir", str(tmp_path / "g"), "--node-id",
             "ghost-1", "--timeout", "5"],
        )  # fmt: skip
        assert code == 1
        assert "refused the enrollment: certificate_revoked" in capsys.readouterr().err
        edge_stop.set()
        assert await asyncio.wait_for(edge_task, TIMEOUT) == 0

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))


def token_id(text: str) -> bytes:
    from securemesh.enroll import JoinToken

    return JoinToken.decode(text).token_id
