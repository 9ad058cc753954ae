"""Enrollment and renewal on live nodes (ZeroMQ on loopback, in process).

* a device enrolls at the cloud with a one-time token (first contact, CURVE key
  derived from the token), then talks with its own key; the token works once;
* a device's short-lived certificate is renewed over the bus at half its
  lifetime, and it keeps being served after the first certificate expired;
* an expired device re-enrolls with a fresh token, keeping its keys;
* an edge with a delegated authority enrolls a device while the cloud is down.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from node_testlib import Built, Fixture, Member, build_node, run, wait_for, zmq_factory

from securemesh.crypto import DelegatedAuthority, NodeIdentity
from securemesh.enroll import EnrollmentServer, EnrollResult, JoinToken, TokenKeySync, TokenStore
from securemesh.enroll._client import enroll_over_zmq
from securemesh.errors import TransportError
from securemesh.node import MeshNode
from securemesh.node._enroll import serve_enrollment


def _token(store: TokenStore, fx: Fixture, server: MeshNode, *, tier: str = "end") -> JoinToken:
    assert server.address is not None
    return store.create(
        authority_id="root",
        root_key=fx.authority.verify_key,
        server_key=server.certificate.curve_key,
        server_id=server.node_id,
        endpoint=server.address,
        issuer=server.certificate.issuer
        if tier == "edge"
        else (server.node_id if server.tier.value == "edge" else "root"),
        tier=tier,
        ttl_s=600,
    )


async def _enroll(token: JoinToken, identity: NodeIdentity, node_id: str) -> EnrollResult:
    seq = int(time.time() * 1_000_000)  # below what the node will use next
    return await asyncio.to_thread(
        enroll_over_zmq, token, identity, node_id, timeout=5.0, sequence=seq
    )


async def _device(
    fx: Fixture, result: EnrollResult, identity: NodeIdentity, parent: MeshNode, **cfg: object
) -> Built:
    member = Member(result.cert.node_id, "end", identity, result.certificate)
    assert parent.address is not None
    built = build_node(
        fx,
        member,
        zmq_factory(),
        parent_endpoint=(parent.address, parent.certificate.curve_key),
        authority_certificate=result.issuer_certificate,
        **cfg,  # type: ignore[arg-type]
    )
    await built.node.start()
    await built.node.wait_parent(10)
    return built


async def _cloud(
    fx: Fixture, tmp: Path, *, lifetime_s: int = 3600
) -> tuple[Built, TokenStore, TokenKeySync]:
    cloud = build_node(fx, fx.member("cloud-1", "cloud"), zmq_factory(), listen="tcp://127.0.0.1:0")
    store = TokenStore(tmp / "tokens.db")
    server = EnrollmentServer(
        fx.authority, store, server_certificate=cloud.member.cert, lifetime_s=lifetime_s
    )
    sync = TokenKeySync(store)
    serve_enrollment(cloud.node, server, on_enrolled=lambda _n: sync.refresh(cloud.node.directory))
    await cloud.node.start()
    return cloud, store, sync


def test_device_enrolls_once_then_talks_with_its_own_key(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        cloud, store, sync = await _cloud(fx, tmp_path)
        try:
            token = _token(store, fx, cloud.node)
            sync.refresh(cloud.node.directory)
            identity = NodeIdentity.generate()
            result = await _enroll(token, identity, "dev-new")
            assert result.cert.node_id == "dev-new"
            assert result.cert.curve_key == identity.curve_public
            assert "dev-new" in cloud.node.directory
            device = await _device(fx, result, identity, cloud.node)
            try:
                rtt = await device.node.ping("cloud-1", timeout=5)
                assert rtt >= 0
            finally:
                await device.node.stop(0.2)
            # the token is one-time: its first-contact key is no longer admitted
            with pytest.raises(TransportError):
                await asyncio.to_thread(
                    enroll_over_zmq, token, NodeIdentity.generate(), "dev-other", timeout=1.0
                )
        finally:
            await cloud.node.stop(0.2)

    run(main())


def test_enroll_waits_for_a_token_the_node_has_not_admitted_yet(tmp_path: Path) -> None:
    """`token create` then `enroll` at once: the daemon admits the token's key at its
    next refresh, so the first handshake is refused (ZAP); the client tries again."""

    async def main() -> None:
        fx = Fixture()
        cloud, store, sync = await _cloud(fx, tmp_path)
        try:
            token = _token(store, fx, cloud.node)  # created, not yet admitted
            pending = asyncio.ensure_future(_enroll(token, NodeIdentity.generate(), "dev-late"))
            listener = cloud.node.listener
            assert listener is not None
            await wait_for(lambda: listener.stats.rejected_keys >= 1)
            assert not pending.done()
            sync.refresh(cloud.node.directory)
            result = await pending
            assert result.cert.node_id == "dev-late"
            # the refused attempt did not use the token: it was used exactly once
            assert "dev-late" in cloud.node.directory
        finally:
            await cloud.node.stop(0.2)

    run(main())


def test_certificate_renewed_at_half_lifetime(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        cloud, store, sync = await _cloud(fx, tmp_path, lifetime_s=4)
        try:
            token = _token(store, fx, cloud.node)
            sync.refresh(cloud.node.directory)
            identity = NodeIdentity.generate()
            result = await _enroll(token, identity, "dev-r")
            first = result.cert
            device = await _device(fx, result, identity, cloud.node, heartbeat_interval=0.2)
            try:
                renewed: list[object] = []
                device.node.on_certificate.append(renewed.append)
                await wait_for(lambda: bool(renewed), 10)
                assert device.node.certificate.serial != first.serial
                assert device.node.certificate.not_after > first.not_after
                assert (
                    cloud.node.directory.certificate("dev-r").serial
                    == device.node.certificate.serial
                )
                await wait_for(lambda: time.time() > first.not_after + 0.2, 10)
                await device.node.ping("cloud-1", timeout=5)  # still served
            finally:
                await device.node.stop(0.2)
        finally:
            await cloud.node.stop(0.2)

    run(main())


def test_expired_device_re_enrolls_keeping_its_keys(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        cloud, store, sync = await _cloud(fx, tmp_path, lifetime_s=1)
        try:
            identity = NodeIdentity.generate()
            token = _token(store, fx, cloud.node)
            sync.refresh(cloud.node.directory)
            first = await _enroll(token, identity, "dev-x")
            await wait_for(lambda: time.time() >= first.cert.not_after, 5)
            token2 = _token(store, fx, cloud.node)
            sync.refresh(cloud.node.directory)
            second = await _enroll(token2, identity, "dev-x")
            assert second.cert.verify_key == first.cert.verify_key
            assert second.cert.serial != first.cert.serial
        finally:
            await cloud.node.stop(0.2)

    run(main())


def test_edge_enrolls_a_device_while_the_cloud_is_down(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        edge_m = fx.member("edge-1", "edge")
        delegation = fx.authority.delegate(edge_m.cert, lifetime_s=3600, now=time.time())
        cloud_keys = fx.member("cloud-1", "cloud")  # never started: the cloud is down
        edge = build_node(
            fx,
            edge_m,
            zmq_factory(),
            listen="tcp://127.0.0.1:0",
            parent_endpoint=("tcp://127.0.0.1:9", cloud_keys.identity.curve_public),
        )
        edge.node.directory.trust.add_delegated_authority(delegation, now=time.time())
        store = TokenStore(tmp_path / "edge-tokens.db")
        server = EnrollmentServer(
            DelegatedAuthority(delegation, edge_m.identity.signer),
            store,
            server_certificate=edge_m.cert,
            trust=edge.node.directory.trust,
            revocation_list=lambda: fx.authority.revocation_list,
        )
        sync = TokenKeySync(store)
        serve_enrollment(edge.node, server)
        await edge.node.start()
        try:
            assert edge.node.address is not None
            token = store.create(
                authority_id="root",
                root_key=fx.authority.verify_key,
                server_key=edge_m.identity.curve_public,
                server_id="edge-1",
                endpoint=edge.node.address,
                issuer="edge-1",
                tier="end",
                ttl_s=600,
                name_prefix="edge-1.",
            )
            sync.refresh(edge.node.directory)
            identity = NodeIdentity.generate()
            result = await _enroll(token, identity, "edge-1.dev-e")
            assert result.cert.issuer == "edge-1"
            device = await _device(fx, result, identity, edge.node)
            try:
                await device.node.ping("edge-1", timeout=5)
            finally:
                await device.node.stop(0.2)
        finally:
            await edge.node.stop(0.2)

    run(main())
