"""The HE service on real in-memory nodes: announcements, its bounds, its status.

An edge ``MeshNode`` over the in-memory transport hosts :class:`HeService`
through a ``ServiceHost``; a device node below it (role ``he-keyholder``) is
the key owner and a contributor (``MeshNode.request`` is a ``Requester``).
The daemon-level acceptance is ``test_he_daemons.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from node_testlib import Fixture, build_node, memory_factory, run, wait_for

from securemesh.errors import RemoteCallError
from securemesh.he import (
    Contribution,
    HeService,
    JobInfo,
    JobResult,
    KeyOwner,
    PublicContext,
    ResultRequest,
    SecretContext,
    contribute,
    encrypt_vector,
    get_preset,
    send_chunks,
)
from securemesh.node import NullAuditRecorder, ServiceHost, VerifiedMessage

HE_POLICY = {"allow": [{"types": ["he.*"]}]}
FAST = get_preset("fast-4096")


def test_announcements_bounds_and_status(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        dev_m = fx.member("dev-1", "end", roles=["he-keyholder"])
        edge = build_node(
            fx, fx.member("edge-1", "edge"), f, listen="memory://he-1", known=[dev_m],
            policy=HE_POLICY,
        )  # fmt: skip
        audit = NullAuditRecorder(origin="edge-1")
        chunk = len(encrypt_vector(_public(), np.zeros(FAST.slots))[0])
        svc = HeService(announce=True, max_jobs=2, max_pending_bytes=int(3.5 * chunk))
        host = ServiceHost(edge.node, audit=audit, data_dir=tmp_path / "he")
        host.install(svc)
        await edge.node.start()
        await host.start()
        dev = build_node(fx, dev_m, f, parent=edge.node, policy=HE_POLICY)
        announced: list[JobInfo] = []

        def on_announce(msg: VerifiedMessage) -> None:
            announced.append(msg.body(JobInfo))

        dev.node.on("he.job.announce", on_announce)
        await dev.node.start()
        await dev.node.wait_parent(5)
        owner = KeyOwner(dev.node, aggregator="edge-1")
        try:
            job = await owner.create_job(
                "sum", length=4 * FAST.slots, max_contributors=2, timeout=30, preset=FAST
            )
            await wait_for(lambda: len(announced) == 1)
            assert announced[0].job_id == job.id
            assert announced[0].chunks == [FAST.slots] * 4
            # four chunks pending are over the node's bound of three: busy, not rejected
            frames = encrypt_vector(job.secret.public, np.zeros(4 * FAST.slots))
            head = Contribution(job_id=job.id, context_digest=job.info.context_digest, first=0)
            await send_chunks(dev.node, "edge-1", head, frames[:3], frames_per_message=3)
            with pytest.raises(RemoteCallError) as busy:
                await send_chunks(
                    dev.node, "edge-1", head.model_copy(update={"first": 3}), frames[3:]
                )
            assert busy.value.code == "busy"
            assert svc.status()["pending_bytes"] > 0
            assert svc.status()["busy"] == 1
            # at most two live jobs: the third is refused until one finishes
            await owner.create_job("sum", length=1, max_contributors=2, timeout=30, preset=FAST)
            with pytest.raises(RemoteCallError) as full:
                await owner.create_job("sum", length=1, max_contributors=2, timeout=30, preset=FAST)
            assert full.value.code == "busy"
            assert svc.status()["jobs_created"] == 2
            assert [e.kind for e in audit.events] == ["he.job.created", "he.job.created"]
        finally:
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


def test_a_job_with_too_few_contributions_fails_at_its_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        dev_m = fx.member("dev-2", "end", roles=["he-keyholder"])
        edge = build_node(
            fx, fx.member("edge-2", "edge"), f, listen="memory://he-2", known=[dev_m],
            policy=HE_POLICY,
        )  # fmt: skip
        audit = NullAuditRecorder(origin="edge-2")
        svc = HeService()
        host = ServiceHost(edge.node, audit=audit, data_dir=tmp_path / "he")
        host.install(svc)
        await edge.node.start()
        await host.start()
        dev = build_node(fx, dev_m, f, parent=edge.node, policy=HE_POLICY)
        await dev.node.start()
        await dev.node.wait_parent(5)
        owner = KeyOwner(dev.node, aggregator="edge-2")
        try:
            job = await owner.create_job(
                "mean", length=3, max_contributors=3, timeout=1.0, preset=FAST
            )
            await contribute(dev.node, "edge-2", job.id, [1.0, 2.0, 3.0])
            started = time.monotonic()
            status, frames = await owner.poll(job, wait=30)
            assert time.monotonic() - started < 10
            assert status.state == "failed"
            assert frames == []
            assert "needs 2" in status.error  # one input is never released as a "mean"
            assert audit.events[-1].kind == "he.job.failed"
        finally:
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


class _CountingRequester:
    """The device node as the key owner's requester, noting the loop's ticks at each request."""

    def __init__(self, node: Any, ticks: list[int]) -> None:
        self.node = node
        self.ticks = ticks
        self.seen: list[int] = []

    async def request(self, *args: Any, **kwargs: Any) -> VerifiedMessage:
        self.seen.append(self.ticks[0])
        reply: VerifiedMessage = await self.node.request(*args, **kwargs)
        return reply


def test_key_generation_runs_off_the_event_loop(tmp_path: Path) -> None:
    """create_job generates the CKKS keys in a worker thread (the FL coordinator's loop
    keeps serving during an ``he`` round): a task spinning on the loop runs between the
    call and the job's first request, which it could not if keygen blocked the loop
    (nothing else awaits before that request)."""

    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        dev_m = fx.member("dev-3", "end", roles=["he-keyholder"])
        edge = build_node(
            fx, fx.member("edge-3", "edge"), f, listen="memory://he-3", known=[dev_m],
            policy=HE_POLICY,
        )  # fmt: skip
        host = ServiceHost(
            edge.node, audit=NullAuditRecorder(origin="edge-3"), data_dir=tmp_path / "he"
        )
        host.install(HeService())
        await edge.node.start()
        await host.start()
        dev = build_node(fx, dev_m, f, parent=edge.node, policy=HE_POLICY)
        await dev.node.start()
        await dev.node.wait_parent(5)
        ticks = [0]

        async def spin() -> None:
            while True:
                await asyncio.sleep(0)
                ticks[0] += 1

        requester = _CountingRequester(dev.node, ticks)
        owner = KeyOwner(requester, aggregator="edge-3")
        spinner = asyncio.create_task(spin())
        try:
            await asyncio.sleep(0)
            before = ticks[0]
            job = await owner.create_job(
                "sum", length=3, max_contributors=3, timeout=30, preset=FAST
            )
            assert requester.seen[0] > before  # the loop ran during key generation
            assert job.info.context_digest == job.secret.public.digest
        finally:
            spinner.cancel()
            await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())


def _public() -> PublicContext:
    return SecretContext(FAST).public


def test_a_result_longer_than_one_reply_is_paged_to_the_owner(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        owner_m = fx.member("dev-3", "end", roles=["he-keyholder"])
        other_m = fx.member("dev-4", "end")
        edge = build_node(
            fx, fx.member("edge-3", "edge"), f, listen="memory://he-3", known=[owner_m, other_m],
            policy=HE_POLICY,
        )  # fmt: skip
        host = ServiceHost(edge.node, audit=NullAuditRecorder(origin="edge-3"), data_dir=tmp_path)
        host.install(HeService())
        await edge.node.start()
        await host.start()
        devs = [
            build_node(fx, m, f, parent=edge.node, policy=HE_POLICY) for m in (owner_m, other_m)
        ]
        for dev in devs:
            await dev.node.start()
            await dev.node.wait_parent(5)
        owner = KeyOwner(devs[0].node, aggregator="edge-3")
        length = 9 * FAST.slots + 5  # ten chunks: two result replies (eight, then two)
        try:
            job = await owner.create_job(
                "sum", length=length, max_contributors=2, timeout=30, preset=FAST
            )
            xs = [np.linspace(-1, 1, length), np.full(length, 0.5)]
            await asyncio.gather(
                *(contribute(d.node, "edge-3", job.id, x) for d, x in zip(devs, xs, strict=True))
            )
            result = await owner.result(job, wait=30)
            assert len(result.total) == length
            first = await devs[0].node.request(
                "edge-3", "he.job.result", ResultRequest(job_id=job.id), timeout=10
            )
            assert len(first.raw_frames) == 8  # the frame limit's share; the owner asked again
            assert first.body(JobResult).chunks == 10
            assert np.max(np.abs(result.total - (xs[0] + xs[1]))) <= result.error_bound
        finally:
            for dev in devs:
                await dev.node.stop(0.5)
            await host.stop()
            await edge.node.stop(0.5)

    run(main())
