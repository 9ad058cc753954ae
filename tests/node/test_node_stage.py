"""A backlog of SIGNED envelopes: signatures checked on worker threads, delivery in order.

Over the in-memory transport and over ZeroMQ on loopback: a device floods its
parent with signed (and interleaved session-MAC) messages faster than the
parent's loop reads them, so the parent's receive loop hands the signature
checks to its :class:`~securemesh.node._stage.VerifyStage`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from node_testlib import Built, Fixture, TransportFactory, build_node, memory_factory, run, wait_for
from node_testlib import zmq_factory as zmq_transports
from pydantic import BaseModel, ConfigDict

from securemesh.node import VerifiedMessage
from securemesh.wire import AuthMode

N = 300


class Reading(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    n: int


@pytest.fixture(params=["memory", "zmq"])
def factory(request: pytest.FixtureRequest) -> tuple[str, TransportFactory]:
    if request.param == "memory":
        return "memory://stage", memory_factory()
    return "tcp://127.0.0.1:0", zmq_transports()


@asynccontextmanager
async def pair(
    factory: tuple[str, TransportFactory], **config: Any
) -> AsyncIterator[tuple[Built, Built, list[tuple[int, AuthMode]]]]:
    address, make = factory
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    dev_m = fx.member("dev-1", "end")
    cloud = build_node(fx, cloud_m, make, listen=address, known=[dev_m], **config)
    got: list[tuple[int, AuthMode]] = []

    def collect(msg: VerifiedMessage) -> None:
        got.append((msg.body(Reading).n, msg.envelope.auth_mode))

    cloud.node.on("app.reading", collect)
    await cloud.node.start()
    dev = build_node(fx, dev_m, make, parent=cloud.node, known=[cloud_m], **config)
    try:
        await dev.node.start()
        await dev.node.wait_parent(10)
        yield cloud, dev, got
    finally:
        await dev.node.stop(0.5)
        await cloud.node.stop(0.5)


def offloaded(b: Built) -> int:
    verify = b.node.status()["verify"]
    assert isinstance(verify, dict)
    return int(verify["offloaded"])


def test_a_signed_backlog_is_checked_off_the_loop_and_delivered_in_order(
    factory: tuple[str, TransportFactory],
) -> None:
    async def main() -> None:
        async with pair(factory) as (cloud, dev, got):
            await dev.node.request("cloud-1", "mesh.ping", b"{}", auth="session", timeout=5)
            expected = []
            for i in range(N):  # no await yields to the receiver: a backlog builds up
                auth = "session" if i % 5 == 4 else "signed"
                await dev.node.send("cloud-1", "app.reading", Reading(n=i), auth=auth)
                expected.append((i, AuthMode.MAC if auth == "session" else AuthMode.SIGNED))
            await wait_for(lambda: len(got) >= N, timeout=30)
            assert got == expected  # every one, once, in the order sent
            assert offloaded(cloud) > 0
            assert any(t.name.startswith("securemesh-verify") for t in threading.enumerate())
            assert cloud.rejections == []

    run(main())


def test_a_forged_signature_inside_a_backlog_is_refused_alone(
    factory: tuple[str, TransportFactory],
) -> None:
    async def main() -> None:
        async with pair(factory) as (cloud, dev, got):
            link = dev.node._parent_link
            assert link is not None
            frames = [
                [bytes(f) for f in dev.node._encode("cloud-1", "app.reading", Reading(n=i), ())]
                for i in range(N)
            ]
            bad = N // 2
            sig = bytearray(frames[bad][-1])
            sig[7] ^= 0x40
            frames[bad][-1] = bytes(sig)
            for f in frames:
                await link.send(f, 5.0)
            await wait_for(lambda: len(got) >= N - 1 and len(cloud.rejections) >= 1, timeout=30)
            assert [n for n, _mode in got] == [i for i in range(N) if i != bad]
            assert [r.reason for r in cloud.rejections] == ["bad_auth"]
            assert offloaded(cloud) > 0
            # the node keeps serving the same peer
            await dev.node.request("cloud-1", "mesh.ping", b"{}", timeout=5)

    run(main())


def test_verify_threads_zero_checks_every_signature_on_the_loop(
    factory: tuple[str, TransportFactory],
) -> None:
    async def main() -> None:
        async with pair(factory, verify_threads=0) as (cloud, dev, got):
            for i in range(50):
                await dev.node.send("cloud-1", "app.reading", Reading(n=i), auth="signed")
            await wait_for(lambda: len(got) >= 50, timeout=30)
            assert [n for n, _mode in got] == list(range(50))
            assert offloaded(cloud) == 0

    run(main())


def test_stopping_with_a_backlog_does_not_hang(factory: tuple[str, TransportFactory]) -> None:
    async def main() -> None:
        async with pair(factory) as (cloud, dev, got):
            for i in range(N):
                await dev.node.send("cloud-1", "app.reading", Reading(n=i), auth="signed")
            await wait_for(lambda: offloaded(cloud) > 0 or len(got) == N, timeout=30)
            await cloud.node.stop(0.5)  # mid-backlog: returns, drops the rest
            assert cloud.node.status()["verify"] is not None

    run(main(), timeout=30)
