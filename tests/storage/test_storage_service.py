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

from securemesh.errors import LocalError
from securemesh.node import NullAuditRecorder, ServiceHost
from securemesh.storage import Candidate, StorageClient, StorageService

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


def _client(dev: Built, member: Member, timeout: float = 5.0) -> StorageClient:
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
