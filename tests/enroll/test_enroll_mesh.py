"""Enrollment through the real node daemon: CLI-initialised cloud and edge (``run_node``).

The cloud and edge run :func:`securemesh.node.run_node` over ZeroMQ on
loopback; the daemon serves enrollment itself when its data dir holds an
authority (cloud) or a delegation (edge), using :mod:`securemesh.enroll`.
Nodes enroll with the CLI's synchronous client. Covers: an edge enrolling at
the running cloud (with a delegated authority), renewal over the bus,
``securemesh revoke`` reaching a running edge, a device enrolling at the edge
while the cloud is down, re-enrollment keeping keys, a revoked id refused.
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
    JoinToken,
    RenewReply,
    accept_renew_reply,
    build_renew_request,
)
from securemesh.enroll._state import read_trust
from securemesh.enroll._store import TokenStore
from securemesh.node import MeshNode, load_config, run_node

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


def _admitted(node: MeshNode, token: str) -> Callable[[], bool]:
    """The daemon admits a token's first-contact key after its next token refresh."""
    key = JoinToken.decode(token).first_contact_curve_keypair().public
    return lambda: node.directory.is_token_key(key)


def test_enroll_renew_revoke_and_offline_edge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud, edge, device = tmp_path / "cloud", tmp_path / "edge", tmp_path / "device"
    cloud_port, edge_port = _free_port(), _free_port()

    async def scenario() -> None:
        await _cli(
            capsys, "init", "--data-dir", str(cloud), "--authority-id", "acme",
            "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{cloud_port}",
        )  # fmt: skip
        with (cloud / "node.toml").open("a") as toml:
            toml.write("status_interval = 0.1\n")  # the daemon's file-watch tick
        nodes: dict[str, MeshNode] = {}
        cloud_stop = asyncio.Event()
        cloud_task = asyncio.create_task(
            run_node(
                load_config(cloud / "node.toml"),
                passphrase=PASS,
                services=[lambda n: nodes.__setitem__("cloud", n)],
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
        await _until(_admitted(nodes["cloud"], token), "edge token admitted")
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
        with TokenStore.in_dir(cloud) as store:
            record = store.get(JoinToken.decode(token).token_id)
        assert record is not None
        assert record.used_by == "edge-1"

        # 2. The edge daemon runs, connects to the cloud and renews its certificate over the bus.
        toml_path = edge / "node.toml"
        toml_path.write_text("status_interval = 0.1\n" + toml_path.read_text())
        edge_stop = asyncio.Event()
        edge_task = asyncio.create_task(
            run_node(
                load_config(edge / "node.toml"),
                passphrase=PASS,
                services=[lambda n: nodes.__setitem__("edge", n)],
                stop=edge_stop,
            )
        )
        await _until(lambda: (edge / "ready").exists() or edge_task.done(), "edge ready")
        node = nodes["edge"]
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
        assert renewed.unverified_certificate().public_keys() == identity.public()

        # 3. `securemesh revoke` on the cloud reaches the running edge (daemon broadcast).
        await _cli(capsys, "revoke", "edge-1.ghost-1", "--data-dir", str(cloud))
        await _until(lambda: node.revocation_list_version == 2, "edge got the new list")
        rl = node.directory.trust.revocation_list("acme")
        assert rl is not None
        assert rl.node_ids == frozenset({"edge-1.ghost-1"})

        # 4. The cloud goes away; a device enrolls at the edge's delegated authority.
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
        await _until(_admitted(node, device_token), "device token admitted")
        await _cli(
            capsys, "enroll", "--token", device_token, "--data-dir", str(device),
            "--node-id", "edge-1.dev-1",
        )  # fmt: skip
        device_cert = SignedCertificate.from_bytes((device / "node.cert").read_bytes())
        chain = [(device / "authority.cert").read_bytes()]
        cert = verify_certificate(
            device_cert, trust=read_trust(cloud), now=time.time(), intermediates=chain
        )
        assert (cert.node_id, cert.tier, cert.issuer) == ("edge-1.dev-1", Tier.END, "edge-1")

        # 5. Re-enrollment (e.g. after the certificate expired offline) keeps the device's
        # keys; its envelope counter continues, so the edge's replay window accepts it.
        again = (
            await _cli(capsys, "token", "create", "--data-dir", str(edge), "--tier", "end")
        ).strip()
        await _until(_admitted(node, again), "second device token admitted")
        await _cli(
            capsys,
            "enroll",
            "--token",
            again,
            "--data-dir",
            str(device),
            "--node-id",
            "edge-1.dev-1",
        )
        second = SignedCertificate.from_bytes((device / "node.cert").read_bytes())
        assert second.unverified_certificate().public_keys() == cert.public_keys()
        assert second.unverified_certificate().serial != cert.serial

        # 6. A revoked id cannot enroll (the edge holds the list the cloud broadcast).
        ghost = (
            await _cli(capsys, "token", "create", "--data-dir", str(edge), "--tier", "end")
        ).strip()
        await _until(_admitted(node, ghost), "third device token admitted")
        code = await asyncio.to_thread(
            main,
            ["enroll", "--token", ghost, "--data-dir", str(tmp_path / "g"), "--node-id",
             "edge-1.ghost-1", "--timeout", "5"],
        )  # fmt: skip
        assert code == 1
        assert "refused the enrollment: certificate_revoked" in capsys.readouterr().err
        edge_stop.set()
        assert await asyncio.wait_for(edge_task, TIMEOUT) == 0

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
