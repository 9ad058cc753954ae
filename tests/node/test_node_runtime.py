"""MeshNode end to end, over the in-memory transport and over ZeroMQ on loopback.

A small tree: cloud-1 ← edge-1 ← (dev-1, dev-2) and cloud-1 ← edge-2 ← dev-3.
Every scenario runs against both transports (same semantics, one suite).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from node_testlib import (
    Built,
    Fixture,
    TransportFactory,
    memory_factory,
    run,
    wait_for,
    zmq_factory,
)
from pydantic import BaseModel, ConfigDict

from securemesh.errors import RemoteCallError, TransportError
from securemesh.messages import REVOCATION_SYNC, RevocationSync
from securemesh.node import Reply, VerifiedMessage
from securemesh.wire import AuthMode


class Echo(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    text: str


@dataclass
class Kit:
    name: str
    factory: TransportFactory

    def addr(self, name: str) -> str:
        return f"memory://{name}" if self.name == "memory" else "tcp://127.0.0.1:0"


@pytest.fixture(params=["memory", "zmq"])
def kit(request: pytest.FixtureRequest) -> Kit:
    if request.param == "memory":
        return Kit("memory", memory_factory())
    return Kit("zmq", zmq_factory())


@dataclass
class Tree:
    fx: Fixture
    cloud: Built
    edge1: Built
    edge2: Built
    dev1: Built
    dev2: Built
    dev3: Built

    @property
    def all(self) -> list[Built]:
        return [self.dev1, self.dev2, self.dev3, self.edge1, self.edge2, self.cloud]


@asynccontextmanager
async def tree(kit: Kit, **config: Any) -> AsyncIterator[Tree]:
    fx = Fixture()
    m = {
        "cloud-1": fx.member("cloud-1", "cloud"),
        "edge-1": fx.member("edge-1", "edge"),
        "edge-2": fx.member("edge-2", "edge"),
        "dev-1": fx.member("dev-1", "end", ["sensor"]),
        "dev-2": fx.member("dev-2", "end"),
        "dev-3": fx.member("dev-3", "end"),
    }
    f = kit.factory
    cloud = build(fx, m["cloud-1"], f, kit.addr("cloud"), None, [m["edge-1"], m["edge-2"]], config)
    await cloud.node.start()
    edge1 = build(fx, m["edge-1"], f, kit.addr("e1"), cloud, [m["dev-1"], m["dev-2"]], config)
    edge2 = build(fx, m["edge-2"], f, kit.addr("e2"), cloud, [m["dev-3"]], config)
    await edge1.node.start()
    await edge2.node.start()
    await edge1.node.wait_parent(10)
    await edge2.node.wait_parent(10)
    dev1 = build(fx, m["dev-1"], f, None, edge1, [], config)
    dev2 = build(fx, m["dev-2"], f, None, edge1, [], config)
    dev3 = build(fx, m["dev-3"], f, None, edge2, [], config)
    t = Tree(fx, cloud, edge1, edge2, dev1, dev2, dev3)
    try:
        for d in (dev1, dev2, dev3):
            await d.node.start()
        for d in (dev1, dev2, dev3):
            await d.node.wait_parent(10)
        # the cloud learns every device through the edges' route announcements
        await wait_for(lambda: all(n in cloud.node._routes for n in ("dev-1", "dev-2", "dev-3")))
        yield t
    finally:
        for b in t.all:
            await b.node.stop(0.5)


def build(  # noqa: PLR0917 - terse tree wiring in one helper
    fx: Fixture,
    member: Any,
    factory: TransportFactory,
    listen: str | None,
    parent: Built | None,
    known: list[Any],
    config: dict[str, Any],
) -> Built:
    from node_testlib import build_node

    return build_node(
        fx,
        member,
        factory,
        listen=listen,
        parent=None if parent is None else parent.node,
        known=known,
        **config,
    )


def collector(into: list[str]) -> Any:
    def handler(msg: VerifiedMessage) -> None:
        into.append(msg.body(Echo).text)

    return handler


def rl_version(b: Built) -> int:
    rl = b.node.directory.trust.revocation_list("root")
    assert rl is not None
    return rl.version


def echo_handler(prefix: str) -> Any:
    async def handler(msg: VerifiedMessage) -> Echo:
        return Echo(text=f"{prefix}:{msg.body(Echo).text}:{msg.sender}")

    return handler


def test_request_reply_across_device_edge_cloud(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            t.cloud.node.on("app.echo", echo_handler("cloud"))
            reply = await t.dev1.node.request("cloud-1", "app.echo", Echo(text="a"), timeout=5)
            assert reply.body(Echo).text == "cloud:a:dev-1"
            assert reply.sender == "cloud-1"
            assert reply.relayed
            assert t.edge1.node.metrics.forwarded == 2  # request up, reply down
            # and down the tree: cloud -> dev-3 behind edge-2
            t.dev3.node.on("app.echo", echo_handler("dev3"))
            reply = await t.cloud.node.request("dev-3", "app.echo", Echo(text="b"), timeout=5)
            assert reply.body(Echo).text == "dev3:b:cloud-1"
            # device to device across two edges (dev-3 knows dev-1 only through
            # the cloud's announcements? no: it verifies with certificates it has)
            for b in t.all:
                assert b.rejections == [], (b.member.node_id, b.rejections)

    run(main())


def test_one_way_events_and_sync_handlers(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            got: list[str] = []
            t.cloud.node.on("app.event", lambda m: got.append(m.body(Echo).text))
            for i in range(20):
                await t.dev2.node.send("cloud-1", "app.event", Echo(text=str(i)))
            await wait_for(lambda: len(got) == 20)
            assert got == [str(i) for i in range(20)]  # ordered along one path

    run(main())


def test_a_receive_loop_yields_to_other_tasks_during_a_burst() -> None:
    """A backlog is drained without waiting, but never in one go: a callback
    scheduled behind the backlog runs after at most _YIELD_EVERY + 1 messages."""
    from securemesh.node._node import _YIELD_EVERY

    async def main() -> None:
        async with tree(Kit("memory", memory_factory())) as t:
            got: list[str] = []
            t.edge1.node.on("app.event", lambda m: got.append(m.body(Echo).text))
            await t.dev1.node.send("edge-1", "app.event", Echo(text="warm"), auth="session")
            await wait_for(lambda: len(got) == 1)
            n = 3 * _YIELD_EVERY
            for i in range(n):  # none of these suspends: all queue at the edge
                await t.dev1.node.send("edge-1", "app.event", Echo(text=str(i)), auth="session")
            seen_by_callback: list[int] = []
            asyncio.get_running_loop().call_soon(lambda: seen_by_callback.append(len(got)))
            await wait_for(lambda: len(got) == n + 1)
            assert got[1:] == [str(i) for i in range(n)]
            assert seen_by_callback
            assert seen_by_callback[0] <= _YIELD_EVERY + 2

    run(main())


def test_reply_with_raw_frames(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:

            async def blob(msg: VerifiedMessage) -> Reply:
                data = bytes(msg.raw_frames[0])
                return Reply(Echo(text="ok"), [data[::-1]])

            t.cloud.node.on("app.blob", blob)
            payload = bytes(range(256)) * 40
            reply = await t.dev1.node.request(
                "cloud-1", "app.blob", Echo(text="x"), [payload], timeout=5
            )
            assert bytes(reply.raw_frames[0]) == payload[::-1]

    run(main())


def test_broadcast_reaches_every_device_once(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            seen: dict[str, list[str]] = {}
            for b in t.all[:5]:
                name = b.member.node_id
                seen[name] = []
                b.node.on("app.news", collector(seen[name]))
            assert await t.cloud.node.broadcast("app.news", Echo(text="hello all")) == 2
            await wait_for(lambda: all(len(v) == 1 for v in seen.values()))
            assert all(v == ["hello all"] for v in seen.values())
            # a device cannot broadcast upwards
            await t.dev1.node.send("edge-1", "app.ping", Echo(text="-"))  # warm path
            out = t.dev1.node._encode("", "app.news", Echo(text="evil"), ())
            link = t.dev1.node._parent_link
            assert link is not None
            await link.send(out, 1.0)
            await wait_for(lambda: t.edge1.node.metrics.rejections["unauthorized"] >= 1)

    run(main())


def test_session_fast_path_and_rekey(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit, session={"max_messages": 5}) as t:
            t.edge1.node.on("app.echo", echo_handler("edge"))
            first = None
            for i in range(12):
                reply = await t.dev1.node.request(
                    "edge-1", "app.echo", Echo(text=str(i)), auth="session", timeout=5
                )
                assert reply.envelope.auth_mode is AuthMode.MAC
                assert reply.body(Echo).text == f"edge:{i}:dev-1"
                sid = reply.envelope.key_id
                first = first or sid
            assert sid != first  # rekeyed by a fresh handshake after max_messages
            assert t.edge1.node.status()["sessions"]["count"] >= 2  # type: ignore[index]
            # not a direct peer: falls back to signed
            t.cloud.node.on("app.echo", echo_handler("cloud"))
            reply = await t.dev1.node.request(
                "cloud-1", "app.echo", Echo(text="s"), auth="session", timeout=5
            )
            assert reply.envelope.auth_mode is AuthMode.SIGNED
            assert t.edge1.rejections == []

    run(main())


def test_revocation_cuts_a_live_device_within_one_broadcast(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            t.cloud.node.on("app.echo", echo_handler("cloud"))
            await t.dev1.node.request("cloud-1", "app.echo", Echo(text="before"), timeout=5)
            await t.dev2.node.request("cloud-1", "app.echo", Echo(text="before"), timeout=5)
            await t.dev1.node.request("edge-1", "mesh.ping", b"{}", timeout=5, auth="session")
            rl = t.fx.authority.revoke("dev-1", now=t.fx.now)
            await t.cloud.node.publish_revocation(rl.to_bytes())
            version = rl.unverified_list().version
            # every node hears of it, the revoked device too (it is cut off right after)
            for b in (t.edge1, t.edge2, t.dev1, t.dev2, t.dev3):
                await wait_for(lambda b=b: rl_version(b) == version)  # type: ignore[misc]
            await wait_for(lambda: "dev-1" not in t.edge1.node.session_peers())
            await wait_for(lambda: "dev-1" not in t.edge1.node._routes)
            with pytest.raises(TimeoutError):
                await t.dev1.node.request("cloud-1", "app.echo", Echo(text="after"), timeout=0.5)
            # others are still served
            reply = await t.dev2.node.request("cloud-1", "app.echo", Echo(text="ok"), timeout=5)
            assert reply.body(Echo).text == "cloud:ok:dev-2"
            # a revocation list replayed to the cloud is refused as a rollback or no-op
            with pytest.raises(Exception):  # noqa: B017, PT011
                await t.cloud.node.publish_revocation(
                    t.fx.authority.revocation_list.to_bytes()[:-1]
                )

    run(main())


def test_a_missed_revocation_is_pulled_with_revocation_sync_and_passed_down(kit: Kit) -> None:
    """Issue #9 item 2: a list the cloud holds but never broadcast reaches every hop."""

    async def main() -> None:
        async with tree(kit) as t:
            rl = t.fx.authority.revoke("dev-1", now=t.fx.now)
            version = rl.unverified_list().version
            # the cloud installs it without a broadcast (as if the edges were down)
            t.cloud.node.directory.update_revocation_list(rl.to_bytes())
            t.cloud.node._note_revocation_list(version, rl.to_bytes())
            assert rl_version(t.edge1) < version
            assert await t.edge1.node.sync_revocation_lists(timeout=5) == 1
            assert rl_version(t.edge1) == version
            # passed down as the edge's own broadcast: its devices hear of it, dev-1 too
            for b in (t.dev1, t.dev2):
                await wait_for(lambda b=b: rl_version(b) == version)  # type: ignore[misc]
            await wait_for(lambda: "dev-1" not in t.edge1.node._routes)
            # nothing newer: nothing pulled; a device syncs with its edge the same way
            assert await t.edge1.node.sync_revocation_lists(timeout=5) == 0
            assert await t.dev2.node.sync_revocation_lists(timeout=5) == 0
            # the other edge converges too (here on request; daemons also on a timer)
            assert await t.edge2.node.sync_revocation_lists(timeout=5) == 1
            await wait_for(lambda: rl_version(t.dev3) == version)

    run(main())


def test_revocation_sync_refuses_rollbacks_and_forgeries_from_the_parent(kit: Kit) -> None:
    """A pulled list is verified like a broadcast one: an older or a tampered list from a
    (compromised) parent is refused, counted and audited, and changes nothing."""

    async def main() -> None:
        async with tree(kit) as t:
            old = t.fx.authority.revocation_list.to_bytes()
            new = t.fx.authority.revoke("dev-3", now=t.fx.now).to_bytes()
            await t.cloud.node.publish_revocation(new)
            await wait_for(lambda: rl_version(t.dev2) == 2)
            tampered = new[:-1] + bytes([new[-1] ^ 1])

            def rogue(msg: VerifiedMessage) -> Reply:
                return Reply(RevocationSync(versions={"root": 9}), [old, tampered])

            t.edge1.node.on(REVOCATION_SYNC, rogue)
            assert await t.dev2.node.sync_revocation_lists(timeout=5) == 0
            assert rl_version(t.dev2) == 2
            rejections = t.dev2.node.metrics.snapshot()["rejections"]
            assert isinstance(rejections, dict)
            assert rejections.get("revocation_rollback") == 1, rejections
            assert rejections.get("certificate_signature") == 1, rejections

    run(main())


def test_errors_timeouts_and_unauthorized(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit, limits={"request_timeout": 5.0}) as t:

            async def broken(msg: VerifiedMessage) -> None:
                raise RuntimeError("boom")

            async def slow(msg: VerifiedMessage) -> None:
                await asyncio.sleep(30)

            t.cloud.node.on("app.broken", broken)
            t.cloud.node.on("app.slow", slow)
            with pytest.raises(RemoteCallError) as info:
                await t.dev1.node.request("cloud-1", "app.broken", Echo(text="x"), timeout=5)
            assert info.value.code == "internal"
            assert info.value.detail == ""  # nothing of the exception leaks

            def strict(msg: VerifiedMessage) -> Echo:
                return msg.body(Echo)

            t.cloud.node.on("app.strict", strict)
            # an authorized request whose body the handler refuses: mesh.error names
            # the fields that failed (protocol.md §7.2), never their values
            with pytest.raises(RemoteCallError) as info:
                await t.dev1.node.request(
                    "cloud-1", "app.strict", b'{"text": 5, "hidden-key": "hidden"}', timeout=5
                )
            assert info.value.code == "malformed"
            assert info.value.detail == "text: string_type; ?: extra_forbidden"
            assert "hidden" not in str(info.value)
            with pytest.raises(RemoteCallError) as info:
                await t.dev1.node.request(
                    "cloud-1", "app.strict", b'{"text": "a", "text": "b"}', timeout=5
                )
            assert info.value.detail == "duplicate key in a JSON object"
            with pytest.raises(TimeoutError):
                await t.dev1.node.request("cloud-1", "app.slow", Echo(text="x"), timeout=0.3)
            assert t.dev1.node._requests.pending_count == 0
            # a type no policy allows: opaque (no answer), counted at the receiver
            with pytest.raises(TimeoutError):
                await t.dev1.node.request("cloud-1", "admin.wipe", Echo(text="x"), timeout=0.3)
            assert t.edge1.node.metrics.rejections["unauthorized"] == 1
            # a type nobody handles
            with pytest.raises(TimeoutError):
                await t.dev1.node.request("cloud-1", "app.none", Echo(text="x"), timeout=0.3)
            await wait_for(lambda: t.cloud.node.metrics.rejections["no_handler"] == 1)
            # unroutable from the cloud (no parent)
            with pytest.raises(TransportError):
                await t.cloud.node.send("nobody", "app.x", Echo(text="x"))

    run(main())


def test_stop_drains_inflight_handlers(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            started = asyncio.Event()

            async def work(msg: VerifiedMessage) -> Echo:
                started.set()
                await asyncio.sleep(0.3)
                return Echo(text="done")

            t.edge1.node.on("app.work", work)
            pending = asyncio.create_task(
                t.dev1.node.request("edge-1", "app.work", Echo(text="x"), timeout=5)
            )
            await started.wait()
            stopper = asyncio.create_task(t.edge1.node.stop(drain_timeout=5))
            reply = await pending
            assert reply.body(Echo).text == "done"
            await stopper

    run(main())


def test_status_snapshot(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit, heartbeat_interval=0.1) as t:
            await wait_for(lambda: t.dev1.node.parent_rtt is not None)
            await wait_for(
                lambda: all(link.report for link in t.edge1.node._routes.children.values())
            )
            status = t.edge1.node.status()
            assert status["node_id"] == "edge-1"
            assert status["tier"] == "edge"
            parent = status["parent"]
            assert isinstance(parent, dict)
            assert parent["node_id"] == "cloud-1"
            peers = status["peers"]
            assert isinstance(peers, list)
            assert {p["node_id"] for p in peers} == {"dev-1", "dev-2"}
            assert "counters" in status
            assert "certificate" in status
            import json

            json.dumps(status)

    run(main())


def test_disconnected_children_are_dropped_and_come_back_with_hello(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            got: list[str] = []
            t.dev1.node.on("app.news", collector(got))
            await t.dev2.node.stop(0.1)
            await t.cloud.node.broadcast("app.news", Echo(text="one"))
            await wait_for(lambda: got == ["one"])
            await wait_for(lambda: len(t.edge1.node._routes.children) == 1)
            assert "dev-2" not in t.edge1.node._routes
            t.cloud.node.on("app.echo", echo_handler("cloud"))
            reply = await t.dev1.node.request("cloud-1", "app.echo", Echo(text="x"), timeout=5)
            assert reply.body(Echo).text == "cloud:x:dev-1"

    run(main())


def test_a_restarted_peer_makes_the_sender_handshake_again(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            t.edge1.node.on("app.echo", echo_handler("edge"))
            first = await t.dev1.node.request(
                "edge-1", "app.echo", Echo(text="1"), auth="session", timeout=5
            )
            # the edge "restarts": it forgets every session
            t.edge1.node._sessions.by_id.clear()
            t.edge1.node._sessions.out.clear()
            await t.dev1.node.send("edge-1", "app.echo", Echo(text="lost"), auth="session")
            await wait_for(lambda: "edge-1" not in t.dev1.node._sessions.out)
            again = await t.dev1.node.request(
                "edge-1", "app.echo", Echo(text="2"), auth="session", timeout=5
            )
            assert again.body(Echo).text == "edge:2:dev-1"
            assert again.envelope.key_id != first.envelope.key_id

    run(main())


def test_device_to_device_across_edges_after_certificate_lookup(kit: Kit) -> None:
    async def main() -> None:
        async with tree(kit) as t:
            t.dev3.node.on("app.echo", echo_handler("dev3"))
            assert "dev-1" not in t.dev3.node.directory
            # the very first request: held at each hop that lacks dev-1's (and on the
            # way back dev-3's) certificate while cert.lookup runs, then delivered
            reply = await t.dev1.node.request("dev-3", "app.echo", Echo(text="x"), timeout=10)
            assert reply.body(Echo).text == "dev3:x:dev-1"
            assert "dev-1" in t.dev3.node.directory
            assert "dev-1" in t.edge2.node.directory

    run(main())


def test_a_device_directly_below_the_cloud_hears_of_its_revocation(kit: Kit) -> None:
    from node_testlib import build_node

    async def main() -> None:
        fx = Fixture()
        cloud_m, dev_m, other_m = (
            fx.member("cloud-1", "cloud"),
            fx.member("dev-1", "end"),
            fx.member("dev-2", "end"),
        )
        f = kit.factory
        cloud = build_node(fx, cloud_m, f, listen=kit.addr("cloud"), known=[dev_m, other_m])
        await cloud.node.start()
        devs = [build_node(fx, m, f, parent=cloud.node) for m in (dev_m, other_m)]
        try:
            for d in devs:
                await d.node.start()
                await d.node.wait_parent(10)
            rl = fx.authority.revoke("dev-1", now=fx.now)
            assert await cloud.node.publish_revocation(rl.to_bytes()) >= 1
            version = rl.unverified_list().version
            for d in devs:  # the revoked device too, before its link is cut
                await wait_for(lambda d=d: rl_version(d) == version)  # type: ignore[misc]
            listener = cloud.node.listener
            assert listener is not None
            await wait_for(lambda: dev_m.identity.curve_public not in listener.peers())
            reply = await devs[1].node.request("cloud-1", "mesh.ping", b"{}", timeout=5)
            assert reply.sender == "cloud-1"
        finally:
            for b in [*devs, cloud]:
                await b.node.stop(0.5)

    run(main())


def test_the_session_config_is_honoured_by_both_ends() -> None:
    """[session]: sessions carry max_age/max_messages; a responder drops a handshake whose
    FINISH comes after handshake_timeout (it does not install a session from it)."""
    from node_testlib import build_node

    from securemesh.messages import SESSION_FINISH, SESSION_HELLO, SessionData, b64d, b64e
    from securemesh.session import Handshake

    class Clock:
        def __init__(self) -> None:
            import time

            self.now = time.time()

        def __call__(self) -> float:
            return self.now

    async def main() -> None:
        fx = Fixture()
        edge_m, dev_m = fx.member("edge-1", "edge"), fx.member("dev-1", "end")
        clock = Clock()
        session = {"max_age": 50.0, "max_messages": 7, "handshake_timeout": 2.0}
        f = memory_factory()
        edge = build_node(
            fx, edge_m, f, listen="memory://e", known=[dev_m], clock=clock, session=session
        )
        edge.node.on("app.x", collector([]))
        await edge.node.start()
        dev = build_node(fx, dev_m, f, parent=edge.node, clock=clock, session=session)
        await dev.node.start()
        try:
            await dev.node.wait_parent(5)
            # the device's own handshake: both sessions carry the configured lifetime
            await dev.node.send("edge-1", "app.x", Echo(text="warm"), auth="session")
            await wait_for(lambda: "dev-1" in edge.node.session_peers())
            for b in (dev, edge):
                limits = next(iter(b.node._sessions.by_id.values())).session.limits
                assert (limits.max_age, limits.max_messages) == (50.0, 7)
            # a handshake by hand, whose FINISH comes late
            hs = Handshake.initiator(
                node_id="dev-1",
                peer_id="edge-1",
                signer=dev_m.identity.signer,
                resolve_peer=lambda _id: edge_m.identity.verify_key,
                clock=clock,
            )
            reply = await dev.node.request(
                "edge-1", SESSION_HELLO, SessionData(data=b64e(hs.initiate())), timeout=5
            )
            finish = hs.receive(b64d(reply.body(SessionData).data))
            assert finish is not None
            before = set(edge.node._sessions.by_id)
            clock.now += 2.5  # past the responder's handshake_timeout
            await dev.node.send("edge-1", SESSION_FINISH, SessionData(data=b64e(finish)))
            await wait_for(lambda: any(r.msg_type == SESSION_FINISH for r in edge.rejections))
            assert hs.session.session_id not in edge.node._sessions.by_id
            assert set(edge.node._sessions.by_id) == before
        finally:
            await dev.node.stop(0.5)
            await edge.node.stop(0.5)

    run(main())


def test_ping_and_heartbeat_rtt_use_the_injected_monotonic_clock() -> None:
    from node_testlib import build_node

    async def main() -> None:
        fx = Fixture()
        edge_m, dev_m = fx.member("edge-1", "edge"), fx.member("dev-1", "end")
        f = memory_factory()
        ticks = iter(range(0, 10_000, 7))  # every reading is 7 "seconds" after the last

        edge = build_node(fx, edge_m, f, listen="memory://e", known=[dev_m])
        await edge.node.start()
        dev = build_node(fx, dev_m, f, parent=edge.node, monotonic=lambda: float(next(ticks)))
        await dev.node.start()
        try:
            await dev.node.wait_parent(5)
            assert await dev.node.ping("edge-1", timeout=5) == 7.0
        finally:
            await dev.node.stop(0.5)
            await edge.node.stop(0.5)

    run(main())
