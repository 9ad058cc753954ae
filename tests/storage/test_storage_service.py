"""The storage service on real in-memory nodes: the seam, its policy and its per-peer bound.

An edge ``MeshNode`` over the in-memory transport hosts :class:`StorageService`
through a ``ServiceHost``; a device node below it is the client's requester
(``MeshNode.request`` is a :class:`Requester`). The daemon-level acceptance is
``test_storage_daemons.py``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from node_testlib import Built, Fixture, Member, build_node, memory_factory, run, wait_for

from securemesh.errors import AuthenticationError, LocalError
from securemesh.node import NullAuditRecorder, ServiceHost
from securemesh.storage import (
    Candidate,
    GetPlan,
    ObjectUnreadable,
    StorageClient,
    StorageService,
)

STORAGE_POLICY = {"allow": [{"types": ["storage.*"]}]}


async def _edge_and_device(
    tmp_path: Path, service: StorageService, addr: str
) -> tuple[Built, Built, ServiceHost, NullAuditRecorder, Member]:
    fx = Fixture()
    f = memory_factory()
    dev_m = fx.member("dev-1", "end")
    edge = build_node(
        fx, fx.member("edge-1", "edge"), f, listen=addr, known=[dev_m], policy=STORAGE_POLICY
    )
    audit = NullAuditRecorder(origin="edge-1")
    host = ServiceHost(edge.node, audit=audit, data_dir=tmp_path / "storage")
    host.install(service)
    await edge.node.start()
    await host.start()
    dev = build_node(fx, dev_m, f, parent=edge.node, policy=STORAGE_POLICY)
    await dev.node.start()
    await dev.node.wait_parent(5)
    return edge, dev, host, audit, dev_m


def _client(
    dev: Built, member: Member, timeout: float = 5.0, audit: NullAuditRecorder | None = None
) -> StorageClient:
    return StorageClient(
        dev.node,
        node_id=member.node_id,
        signer=member.identity.signer,
        kx_secret=member.identity.kx_secret(),
        kx_public=member.identity.kx_public,
        index="edge-1",
        k=1,
        n=1,
        segment_size=4096,
        timeout=timeout,
        audit=audit,
    )


def test_client_round_trip_through_the_seam_with_audit(tmp_path: Path) -> None:
    async def main() -> None:
        svc = StorageService()
        edge, dev, host, audit, member = await _edge_and_device(tmp_path, svc, "memory://st-1")
        client = _client(dev, member)
        nodes = [Candidate("edge-1")]
        try:
            data = os.urandom(10_000)
            manifest = await client.put("a/b", data, nodes=nodes)
            back, report = await client.get("a/b", nodes=nodes)
            assert back == data
            assert report.missing == []
            assert await client.list(nodes=nodes) == ["a/b"]
            assert svc.status()["shards"] == len(manifest.segments)
            assert [e.kind for e in audit.events] == ["object.put"]
            await client.delete("a/b", nodes=nodes)
            assert svc.status()["shards"] == 0
            assert await client.list(nodes=nodes) == []
            assert [e.kind for e in audit.events] == ["object.put", "object.delete"]
        finally:
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


def test_only_the_tiers_the_service_allows_may_store(tmp_path: Path) -> None:
    """The operator allows storage.* from anyone; the service narrows it to edges and clouds."""

    async def main() -> None:
        svc = StorageService(tiers=("edge", "cloud"))
        edge, dev, host, _, member = await _edge_and_device(tmp_path, svc, "memory://st-2")
        try:
            with pytest.raises(LocalError, match="timeout"):  # refused in the pipeline: no reply
                await _client(dev, member, 1.0).put("x", b"data", nodes=[Candidate("edge-1")])
            await wait_for(lambda: edge.node.metrics.rejections["unauthorized"] >= 1)
            assert svc.status()["shards"] == 0
        finally:
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


def test_each_sender_has_a_bounded_number_of_requests_in_the_store(tmp_path: Path) -> None:
    async def main() -> None:
        svc = StorageService(max_inflight_per_peer=2)
        edge, dev, host, _, member = await _edge_and_device(tmp_path, svc, "memory://st-3")
        gate = threading.Event()
        try:
            held = [asyncio.ensure_future(svc._in_store("dev-1", gate.wait)) for _ in range(2)]
            await wait_for(lambda: svc._inflight.get("dev-1") == 2)
            # a third request from the same sender is refused, over the real bus too
            client = _client(dev, member)
            with pytest.raises(LocalError, match=r"refused by edge-1 \(busy\)"):
                await client.put("y", b"data", nodes=[Candidate("edge-1")])
            # another sender is not affected
            assert await svc._in_store("dev-2", lambda: 7) == 7
            gate.set()
            await asyncio.gather(*held)
            assert svc._inflight == {}
            assert svc.status()["busy"] >= 1
        finally:
            gate.set()
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


def test_share_lets_a_reader_get_and_unshare_drops_it_from_new_versions(tmp_path: Path) -> None:
    """``share`` wraps the data key for another node in a new signed manifest version."""

    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        owner_m, reader_m = fx.member("dev-1", "end"), fx.member("dev-2", "end")
        edge = build_node(
            fx, fx.member("edge-1", "edge"), f, listen="memory://st-share",
            known=[owner_m, reader_m], policy=STORAGE_POLICY,
        )  # fmt: skip
        svc = StorageService()
        host = ServiceHost(edge.node, audit=NullAuditRecorder(), data_dir=tmp_path / "storage")
        host.install(svc)
        await edge.node.start()
        await host.start()
        devs = [
            build_node(fx, m, f, parent=edge.node, policy=STORAGE_POLICY)
            for m in (owner_m, reader_m)
        ]
        for d in devs:
            await d.node.start()
            await d.node.wait_parent(5)
        owner_audit = NullAuditRecorder(origin="dev-1")
        owner = _client(devs[0], owner_m, audit=owner_audit)
        reader = _client(devs[1], reader_m)
        nodes = [Candidate("edge-1")]
        as_reader = {"owner": "dev-1", "owner_key": owner_m.identity.verify_key, "nodes": nodes}
        try:
            data = os.urandom(9_000)
            first = await owner.put("shared/x", data, nodes=nodes)
            # not a reader: the edge will not hand out the manifest ...
            with pytest.raises(ObjectUnreadable):
                await reader.get("shared/x", **as_reader)
            # ... and with the manifest in hand the key does not unwrap
            with pytest.raises(AuthenticationError):
                GetPlan.for_reader(first, "dev-2", reader_m.identity.kx_secret())
            shared = await owner.share(
                "shared/x", "dev-2", reader_m.identity.kx_public, nodes=nodes
            )
            assert set(shared.readers) == {"dev-1", "dev-2"}
            assert shared.created_ms > first.created_ms
            assert shared.merkle_root == first.merkle_root
            back, _ = await reader.get("shared/x", **as_reader)
            assert back == data
            assert [
                (e.kind, e.details["reader"], e.details["action"]) for e in owner_audit.events
            ] == [("storage.share", "dev-2", "share")]
            # another reader's wrapped key does not open for someone who is not it
            with pytest.raises(AuthenticationError):
                GetPlan.for_reader(shared, "dev-2", owner_m.identity.kx_secret())
            unshared = await owner.unshare("shared/x", "dev-2", nodes=nodes)
            assert set(unshared.readers) == {"dev-1"}
            with pytest.raises(ObjectUnreadable):
                await reader.get("shared/x", **as_reader)
            assert owner_audit.events[-1].details["action"] == "unshare"
            with pytest.raises(LocalError, match="owner stays a reader"):
                await owner.unshare("shared/x", "dev-1", nodes=nodes)
        finally:
            for d in devs:
                await d.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())
