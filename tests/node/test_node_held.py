"""Messages from an origin whose certificate is not known yet are held, not lost.

A relayed message whose origin has no certificate at the receiving node fails
step 3 (``unknown_sender``). The node holds it (bounded per origin, in total,
in bytes and in time), asks its parent with ``cert.lookup``, and then runs the
held messages through the whole pipeline again in arrival order. These tests
cover the buffer itself, the first message across two edges, the bounds (the
oldest pushed out and rejected), a failing and a timed-out lookup, and that a
held message still meets every check (replay, signature) after the lookup.

The tree: cloud-1 <- edge-1 <- (dev-1, dev-2) and cloud-1 <- edge-2 <- dev-3,
over the in-memory transport and over ZeroMQ on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from node_testlib import (
    Built,
    Fixture,
    Member,
    TransportFactory,
    build_node,
    memory_factory,
    run,
    wait_for,
    zmq_factory,
)
from pydantic import BaseModel, ConfigDict

from securemesh.errors import NoRoute
from securemesh.messages import CERT_LOOKUP, CertLookup
from securemesh.node import MeshNode, Rejection, VerifiedMessage
from securemesh.node._pipeline import HeldMessage, HoldBuffer
from securemesh.wire import encode_signed

# ------------------------------------------------------------------ the buffer


def held(sender: str, n: int, *, size: int = 10, at: float = 0.0) -> HeldMessage:
    rejection = Rejection("unknown_sender", b"k" * 32, sender, "app.note", str(n), at)
    return HeldMessage(rejection, [b"x" * size], None, True, size)


def test_buffer_keeps_arrival_order_per_sender() -> None:
    buf = HoldBuffer(per_sender=5, total=10)
    for n in range(3):
        assert buf.hold(held("a", n)) == []
        assert buf.hold(held("b", n)) == []
    assert buf.senders() == ["a", "b"]
    assert [m.rejection.detail for m in buf.take("a")] == ["0", "1", "2"]
    assert buf.take("a") == []
    assert not buf.holds("a")
    assert buf.holds("b")
    assert buf.stats() == {
        "messages": 3,
        "senders": 1,
        "bytes": 30,
        "held": 6,
        "released": 3,
        "dropped": 0,
        "expired": 0,
    }


def test_buffer_per_sender_bound_pushes_out_that_senders_oldest() -> None:
    buf = HoldBuffer(per_sender=2, total=10)
    buf.hold(held("b", 0))
    buf.hold(held("a", 0))
    buf.hold(held("a", 1))
    out = buf.hold(held("a", 2))
    assert [(m.sender, m.rejection.detail) for m in out] == [("a", "0")]
    assert [m.rejection.detail for m in buf.take("a")] == ["1", "2"]
    assert [m.rejection.detail for m in buf.take("b")] == ["0"]  # the other origin untouched
    assert buf.dropped == 1


def test_buffer_total_bounds_push_out_the_oldest_of_all() -> None:
    buf = HoldBuffer(per_sender=10, total=3)
    for sender, n in (("a", 0), ("b", 0), ("a", 1)):
        assert buf.hold(held(sender, n)) == []
    out = buf.hold(held("b", 1))
    assert [(m.sender, m.rejection.detail) for m in out] == [("a", "0")]
    assert len(buf) == 3
    # bytes: 25 + 25 fit in 60, a third pushes out the oldest
    buf = HoldBuffer(per_sender=10, total=10, max_bytes=60)
    buf.hold(held("a", 0, size=25))
    buf.hold(held("b", 0, size=25))
    out = buf.hold(held("c", 0, size=25))
    assert [m.sender for m in out] == ["a"]
    assert buf.size_bytes == 50
    # a message bigger than the whole buffer is refused by itself
    big = held("d", 0, size=61)
    assert buf.hold(big) == [big]
    assert buf.size_bytes == 50
    assert buf.dropped == 2


def test_buffer_expires_by_age_oldest_first() -> None:
    buf = HoldBuffer(max_age=5.0)
    buf.hold(held("a", 0, at=100.0))
    buf.hold(held("b", 0, at=101.0))
    buf.hold(held("a", 1, at=104.0))
    assert buf.expire(105.0) == []
    assert [m.rejection.detail for m in buf.expire(106.5)] == ["0", "0"]
    assert [m.rejection.detail for m in buf.take("a")] == ["1"]
    assert buf.expired == 2


def test_buffer_refuses_nonsense_bounds() -> None:
    for bad in ({"per_sender": 0}, {"total": 0}, {"max_bytes": 0}, {"max_age": 0.0}):
        with pytest.raises(ValueError, match="positive"):
            HoldBuffer(**bad)  # type: ignore[arg-type]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), st.sampled_from("abc"), st.integers(1, 40)),
        st.tuples(st.just("take"), st.sampled_from("abc"), st.just(0)),
        st.tuples(st.just("expire"), st.just(""), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(ops, st.integers(1, 4), st.integers(1, 6), st.integers(20, 120))
def test_buffer_invariants(
    script: list[tuple[str, str, int]], per_sender: int, total: int, max_bytes: int
) -> None:
    """Every message held ends up exactly once: still held, released, dropped or expired;
    the bounds always hold; each origin's messages come out in arrival order."""
    buf = HoldBuffer(per_sender=per_sender, total=total, max_bytes=max_bytes, max_age=2.0)
    clock = 0.0
    n = 0
    out_of_band = 0  # pushed out / expired / taken
    for op, sender, arg in script:
        clock += 1.0
        if op == "hold":
            n += 1
            out_of_band += len(buf.hold(held(sender, n, size=arg, at=clock)))
        elif op == "take":
            taken = buf.take(sender)
            numbers = [int(m.rejection.detail) for m in taken]
            assert numbers == sorted(numbers)
            out_of_band += len(taken)
        else:
            out_of_band += len(buf.expire(clock + arg))
        assert len(buf) <= total
        assert buf.size_bytes <= max_bytes
        for s in buf.senders():
            assert 1 <= buf.count(s) <= per_sender
        assert n == len(buf) + out_of_band
        stats = buf.stats()
        assert stats["released"] + stats["dropped"] + stats["expired"] == out_of_band
        assert stats["messages"] == sum(buf.count(s) for s in "abc")
    for s in "abc":
        numbers = [int(m.rejection.detail) for m in buf.take(s)]
        assert numbers == sorted(numbers)
    assert len(buf) == 0
    assert buf.size_bytes == 0


# ------------------------------------------------------------------ the mesh


class Note(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    n: int


@dataclass
class Tree:
    fx: Fixture
    m: dict[str, Member]
    cloud: Built
    edge1: Built
    edge2: Built
    dev1: Built
    dev2: Built
    dev3: Built

    @property
    def all(self) -> list[Built]:
        return [self.dev1, self.dev2, self.dev3, self.edge1, self.edge2, self.cloud]


@pytest.fixture(params=["memory", "zmq"])
def factory(request: pytest.FixtureRequest) -> tuple[str, TransportFactory]:
    if request.param == "memory":
        return "memory", memory_factory()
    return "zmq", zmq_factory()


@asynccontextmanager
async def tree(
    kit: tuple[str, TransportFactory],
    *,
    hold: HoldBuffer | None = None,
    edge2_knows_devices: bool = False,
    dev1_lifetime_s: int = 3600,
    clock: Callable[[], float] | None = None,
    **config: Any,
) -> AsyncIterator[Tree]:
    """The tree above; ``hold`` replaces dev-3's buffer; edge-2 may know edge-1's devices.

    ``clock`` and ``config`` (NodeConfig fields) apply to every node."""
    name, f = kit
    opts: dict[str, Any] = {"clock": clock, **config}

    def addr(label: str) -> str:
        return f"memory://{label}" if name == "memory" else "tcp://127.0.0.1:0"

    fx = Fixture()
    m = {
        "cloud-1": fx.member("cloud-1", "cloud"),
        "edge-1": fx.member("edge-1", "edge"),
        "edge-2": fx.member("edge-2", "edge"),
        "dev-1": fx.member("dev-1", "end", lifetime_s=dev1_lifetime_s),
        "dev-2": fx.member("dev-2", "end"),
        "dev-3": fx.member("dev-3", "end"),
    }
    cloud = build_node(
        fx, m["cloud-1"], f, listen=addr("cloud"), known=[m["edge-1"], m["edge-2"]], **opts
    )
    built: list[Built] = [cloud]
    try:
        await cloud.node.start()
        known1 = [m["dev-1"], m["dev-2"]]
        edge1 = build_node(
            fx, m["edge-1"], f, listen=addr("e1"), parent=cloud.node, known=known1, **opts
        )
        known2 = [m["dev-3"]] + ([m["dev-1"], m["dev-2"]] if edge2_knows_devices else [])
        edge2 = build_node(
            fx, m["edge-2"], f, listen=addr("e2"), parent=cloud.node, known=known2, **opts
        )
        built += [edge1, edge2]
        for e in (edge1, edge2):
            await e.node.start()
        for e in (edge1, edge2):
            await e.node.wait_parent(10)
        devs = [
            build_node(fx, m["dev-1"], f, parent=edge1.node, **opts),
            build_node(fx, m["dev-2"], f, parent=edge1.node, **opts),
            build_node(fx, m["dev-3"], f, parent=edge2.node, **opts),
        ]
        if hold is not None:
            devs[2].node.held = hold
        built += devs
        for d in devs:
            await d.node.start()
        for d in devs:
            await d.node.wait_parent(10)
        await wait_for(lambda: all(n in cloud.node._routes for n in ("dev-1", "dev-2", "dev-3")))
        yield Tree(fx, m, cloud, edge1, edge2, *devs)
    finally:
        for b in reversed(built):
            await b.node.stop(0.2)


class Gate:
    """Hold edge-2's answers to ``cert.lookup`` until opened (then the real handler answers)."""

    def __init__(self, edge: MeshNode, *, fail: bool = False) -> None:
        self.edge = edge
        self.fail = fail
        self.opened = asyncio.Event()
        self.asked: list[str] = []
        edge.on(CERT_LOOKUP, self.handle)

    async def handle(self, msg: VerifiedMessage) -> object:
        self.asked.append(msg.body(CertLookup).node_id)
        await asyncio.wait_for(self.opened.wait(), 30)
        if self.fail:
            raise NoRoute("certificate unknown here")
        return await self.edge._lookup.on_cert_lookup(msg)


def notes(into: list[tuple[str, int]]) -> Any:
    def handler(msg: VerifiedMessage) -> None:
        into.append((msg.sender, msg.body(Note).n))

    return handler


def reasons(b: Built) -> list[str]:
    return [r.reason for r in b.rejections]


def test_first_request_across_two_edges_is_answered(
    factory: tuple[str, TransportFactory],
) -> None:
    async def main() -> None:
        async with tree(factory) as t:

            async def echo(msg: VerifiedMessage) -> Note:
                return Note(n=msg.body(Note).n + 1)

            t.dev3.node.on("app.echo", echo)
            assert "dev-1" not in t.dev3.node.directory
            assert "dev-1" not in t.edge2.node.directory
            # held at edge-2 (asks the cloud), at dev-3 (asks edge-2); the reply is
            # held at edge-1 and at dev-1 the same way
            reply = await t.dev1.node.request("dev-3", "app.echo", Note(n=1), timeout=10)
            assert reply.body(Note) == Note(n=2)
            for b in t.all:
                assert b.rejections == [], (b.member.node_id, b.rejections)
            for b in (t.edge2, t.dev3, t.edge1, t.dev1):
                assert b.node.held.stats()["released"] >= 1, b.member.node_id
                assert len(b.node.held) == 0
            # a burst of one-way messages from an origin nobody there knows yet:
            # every one arrives, in order
            got: list[tuple[str, int]] = []
            t.dev3.node.on("app.note", notes(got))
            for n in range(30):
                await t.dev2.node.send("dev-3", "app.note", Note(n=n))
            await wait_for(lambda: len(got) == 30, 10)
            assert got == [("dev-2", n) for n in range(30)]
            assert t.dev3.rejections == []
            assert t.dev3.node.status()["held"]["messages"] == 0  # type: ignore[index]

    run(main())


def test_bounds_push_out_the_oldest_and_count_it(factory: tuple[str, TransportFactory]) -> None:
    async def main() -> None:
        hold = HoldBuffer(per_sender=3, total=4, max_age=30)
        async with tree(factory, hold=hold, edge2_knows_devices=True) as t:
            gate = Gate(t.edge2.node)
            got: list[tuple[str, int]] = []
            t.dev3.node.on("app.note", notes(got))
            # dev-1: 5 messages, the per-origin bound keeps its newest 3
            for n in range(5):
                await t.dev1.node.send("dev-3", "app.note", Note(n=n))
            await wait_for(lambda: hold.held == 5)
            assert hold.dropped == 2
            await wait_for(lambda: gate.asked == ["dev-1"])  # one lookup per origin at a time
            # dev-2: 2 messages; the total bound (4) pushes out dev-1's oldest
            for n in range(100, 102):
                await t.dev2.node.send("dev-3", "app.note", Note(n=n))
            await wait_for(lambda: hold.held == 7)
            await wait_for(lambda: gate.asked == ["dev-1", "dev-2"])
            assert len(hold) == 4
            assert hold.dropped == 3
            # every one pushed out was rejected the usual way: counted and audited
            dropped = [r for r in t.dev3.rejections if r.detail.startswith("dropped")]
            assert [(r.reason, r.sender_claimed) for r in dropped] == [
                ("unknown_sender", "dev-1")
            ] * 3
            assert t.dev3.node.metrics.rejections["unknown_sender"] == 3
            assert got == []
            gate.opened.set()
            await wait_for(lambda: len(got) == 4, 10)
            assert got == [("dev-1", 3), ("dev-1", 4), ("dev-2", 100), ("dev-2", 101)]
            assert t.dev3.node.status()["held"] == {
                "messages": 0,
                "senders": 0,
                "bytes": 0,
                "held": 7,
                "released": 4,
                "dropped": 3,
                "expired": 0,
            }
            assert len(t.dev3.rejections) == 3

    run(main())


def test_failed_lookup_rejects_the_held_messages(factory: tuple[str, TransportFactory]) -> None:
    async def main() -> None:
        hold = HoldBuffer(max_age=30, retry_after=600)  # no second lookup in this test
        async with tree(factory, hold=hold, edge2_knows_devices=True) as t:
            gate = Gate(t.edge2.node, fail=True)
            got: list[tuple[str, int]] = []
            t.dev3.node.on("app.note", notes(got))
            for n in range(3):
                await t.dev1.node.send("dev-3", "app.note", Note(n=n))
            await wait_for(lambda: t.dev3.node.held.held == 3)
            assert t.dev3.rejections == []  # held, not rejected (yet)
            gate.opened.set()  # edge-2 answers mesh.error: the lookup fails
            await wait_for(lambda: len(t.dev3.rejections) == 3, 10)
            assert reasons(t.dev3) == ["unknown_sender"] * 3
            assert {r.sender_claimed for r in t.dev3.rejections} == {"dev-1"}
            assert len(t.dev3.node.held) == 0
            # within retry_after of that failed lookup a message is rejected at once, not held
            await t.dev1.node.send("dev-3", "app.note", Note(n=9))
            await wait_for(lambda: len(t.dev3.rejections) == 4, 10)
            assert t.dev3.node.held.held == 3
            assert gate.asked == ["dev-1"]
            assert got == []
            assert t.dev3.node.metrics.rejections == {"unknown_sender": 4}

    run(main())


def test_lookup_that_times_out_rejects_the_held_messages(
    factory: tuple[str, TransportFactory],
) -> None:
    async def main() -> None:
        hold = HoldBuffer(max_age=0.3)
        async with tree(factory, hold=hold, edge2_knows_devices=True) as t:
            gate = Gate(t.edge2.node)  # never opened: edge-2 does not answer in time
            t.dev3.node.on("app.note", notes([]))
            await t.dev1.node.send("dev-3", "app.note", Note(n=0))
            await wait_for(lambda: len(t.dev3.rejections) == 1, 10)
            assert reasons(t.dev3) == ["unknown_sender"]
            # ran again and still unknown, or (racing the lookup's timeout) expired
            assert hold.released + hold.expired == 1
            await wait_for(lambda: gate.asked == ["dev-1"])

    run(main())


def test_held_messages_still_meet_every_check(factory: tuple[str, TransportFactory]) -> None:
    """After the lookup a held message runs the whole pipeline: a replayed copy and a
    forged one held next to a good one are rejected, the good one is delivered."""

    async def main() -> None:
        async with tree(factory, hold=HoldBuffer(max_age=30), edge2_knows_devices=True) as t:
            gate = Gate(t.edge2.node)
            got: list[tuple[str, int]] = []
            t.dev3.node.on("app.note", notes(got))
            dev1 = t.m["dev-1"]

            def frames(n: int, signer: Any) -> list[bytes]:
                return [
                    bytes(x)
                    for x in encode_signed(
                        msg_type="app.note",
                        sender="dev-1",
                        recipient="dev-3",
                        sequence=1000 + n,
                        timestamp_ms=int(t.fx.now * 1000),
                        body=Note(n=n),
                        signer=signer,
                    )
                ]

            good = frames(1, dev1.identity.signer)
            forged = frames(2, t.m["dev-2"].identity.signer)
            # edge-2 relays (its link to dev-3 is authenticated; dev-1 is not its child,
            # so the frames are relayed ones): good, the same again, forged
            listener = t.edge2.node.listener
            assert listener is not None
            dev3_key = t.m["dev-3"].identity.curve_public
            for out in (good, good, forged):
                await listener.send(dev3_key, out, timeout=5)
            await wait_for(lambda: t.dev3.node.held.held == 3)
            gate.opened.set()
            await wait_for(lambda: len(t.dev3.rejections) == 2, 10)
            assert got == [("dev-1", 1)]
            assert reasons(t.dev3) == ["replayed", "bad_auth"]

    run(main())


def test_the_cloud_asks_the_edge_that_relayed_a_message_from_an_unknown_device(
    factory: tuple[str, TransportFactory],
) -> None:
    """A node without a parent asks the neighbour that relayed the message: that edge
    verified it, so it holds the certificate (e.g. a cloud that restarted and has not
    heard the edge's announcements again)."""

    async def main() -> None:
        async with tree(factory) as t:

            async def echo(msg: VerifiedMessage) -> Note:
                return Note(n=msg.body(Note).n * 10)

            t.cloud.node.on("app.echo", echo)
            t.cloud.node.directory.remove("dev-1")
            reply = await t.dev1.node.request("cloud-1", "app.echo", Note(n=4), timeout=10)
            assert reply.body(Note) == Note(n=40)
            assert t.cloud.rejections == []
            assert t.cloud.node.held.released == 1
            assert "dev-1" in t.cloud.node.directory

    run(main())


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_an_expired_certificate_of_a_renewed_origin_is_looked_up_again(
    factory: tuple[str, TransportFactory],
) -> None:
    """edge-2 and dev-3 learned dev-1's certificate before dev-1 renewed it; once the old
    one expired, dev-1's next message is held and verified with the renewed one."""

    async def main() -> None:
        clock = Clock()
        async with tree(
            factory, edge2_knows_devices=True, dev1_lifetime_s=600, clock=clock, auto_renew=False
        ) as t:
            got: list[tuple[str, int]] = []
            t.dev3.node.on("app.note", notes(got))
            old = t.m["dev-1"].cert
            t.dev3.node.directory.add_certificate(old)
            renewed = t.fx.authority.issue(
                "dev-1",
                "end",
                (),
                t.m["dev-1"].identity.public(),
                lifetime_s=3600,
                now=t.fx.now,
                backdate_s=60,
            )
            serial = renewed.unverified_certificate().serial
            await t.dev1.node.install_certificate(renewed)  # hello: edge-1, then the cloud
            await wait_for(lambda: t.cloud.node.directory.certificate("dev-1").serial == serial)
            assert t.edge2.node.directory.signed_certificate("dev-1") == old
            clock.offset = 700.0  # the old certificate has expired, the renewed one has not
            await t.dev1.node.send("dev-3", "app.note", Note(n=7))
            await wait_for(lambda: got == [("dev-1", 7)], 10)
            for b in (t.edge2, t.dev3):
                assert b.rejections == [], b.member.node_id
                assert b.node.held.released == 1
                assert b.node.directory.certificate("dev-1").serial == serial

    run(main())


def test_hold_bounds_come_from_node_toml() -> None:
    """``[hold]`` in node.toml sets the buffer's bounds; nonsense is refused at load."""
    from pydantic import ValidationError

    from securemesh.node import NodeConfig

    fx = Fixture()
    bounds = {"per_sender": 3, "total": 7, "max_bytes": 4096, "max_age": 1.5, "retry_after": 0.5}
    built = build_node(fx, fx.member("edge-1", "edge"), memory_factory(), hold=bounds)
    held = built.node.held
    assert (held.per_sender, held.total, held.max_bytes, held.max_age, held.retry_after) == (
        3,
        7,
        4096,
        1.5,
        0.5,
    )
    base = {"node_id": "edge-1", "tier": "edge", "listen": "tcp://127.0.0.1:0"}
    assert NodeConfig.model_validate(base).hold.per_sender == 64
    for bad in ({"per_sender": 0}, {"max_age": 0.0}, {"total": "7"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            NodeConfig.model_validate({**base, "hold": bad})
