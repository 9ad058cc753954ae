"""Real processes on loopback: a cloud daemon, two edge daemons, devices, and adversaries.

The cloud and both edges are separate ``securemesh node run`` processes over
ZeroMQ with CURVE; devices are in-process MeshNodes (until the SDK exists).
Certificates are issued directly by a test authority; the edges admit the
devices listed in their ``peers/`` directory.

Every adversarial case asserts the rejection (the edge daemon's status
counters, or the transport's refused keys) **and** that a well-behaved device
is still served through the same edge afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_support import daemon_env, reaped
from node_testlib import (
    Built,
    Fixture,
    Member,
    build_node,
    run,
    wait_for,
    write_data_dir,
    zmq_factory,
)

from securemesh.messages import ErrorReply, NodeReport, b64e
from securemesh.node import load_config, read_status
from securemesh.transport import CurveKeyPair, ZmqTransport
from securemesh.wire import ZERO_ID, Envelope, Flags, Limits, decode, encode_signed

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


@dataclass
class Daemon:
    member: Member
    toml: Path
    address: str = ""

    def status(self) -> dict[str, Any]:
        return read_status(load_config(self.toml))

    def rejections(self) -> dict[str, int]:
        counters = self.status()["counters"]
        return dict(counters["rejections"])

    def refused_keys(self) -> int:
        return int(self.status()["transport"]["listener"]["rejected_keys"])


@dataclass
class Mesh:
    fx: Fixture
    root: Path
    cloud: Daemon
    edge1: Daemon
    edge2: Daemon
    members: dict[str, Member] = field(default_factory=dict)


SERVICES = 'services = ["node_test_services:register"]'
DEVICES = ["dev-a", "dev-b", "dev-c", "dev-bad", "dev-flood", "dev-revoked", "dev-exp", "dev-err"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    fx = Fixture()
    members = {
        "cloud-1": fx.member("cloud-1", "cloud"),
        "edge-1": fx.member("edge-1", "edge"),
        "edge-2": fx.member("edge-2", "edge"),
    }
    for name in DEVICES:
        if name == "dev-exp":  # valid for about 8 more seconds
            members[name] = fx.member(name, "end", issued_at=time.time(), lifetime_s=8)
        else:
            members[name] = fx.member(name, "end")
    with reaped(daemon_env(pythonpath=[HERE])) as daemons:
        cloud_toml = write_data_dir(
            fx,
            members["cloud-1"],
            root / "cloud",
            listen="tcp://127.0.0.1:0",
            peers=[members["edge-1"], members["edge-2"]],
            extra_toml=SERVICES,
        )
        cinfo = daemons.run("cloud", root / "cloud")
        cloud = Daemon(members["cloud-1"], cloud_toml, str(cinfo["listen"]))
        edges = []
        for name, devs in (("edge-1", DEVICES), ("edge-2", ["dev-c"])):
            toml = write_data_dir(
                fx,
                members[name],
                root / name,
                listen="tcp://127.0.0.1:0",
                parent=(cloud.address, members["cloud-1"].identity.curve_public),
                peers=[members[d] for d in devs],
                extra_toml=SERVICES,
            )
            daemons.start(name, root / name)
            edges.append((name, toml))
        started = [
            Daemon(members[name], toml, str(daemons.wait_ready(name)["listen"]))
            for name, toml in edges
        ]
        yield Mesh(fx, root, cloud, started[0], started[1], members)


async def device(mesh: Mesh, name: str, edge: Daemon) -> Built:
    built = build_node(
        mesh.fx,
        mesh.members[name],
        zmq_factory(),
        parent_endpoint=(edge.address, edge.member.identity.curve_public),
        heartbeat_interval=0.5,
    )
    await built.node.start()
    await built.node.wait_parent(15)
    return built


async def echo(node: Built, dest: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
    reply = await node.node.request(
        dest, "app.echo", json.dumps({"t": text}).encode(), timeout=timeout
    )
    data = json.loads(reply.body_bytes)
    assert isinstance(data, dict)
    return data


async def still_served(mesh: Mesh, good: Built) -> None:
    data = await echo(good, "cloud-1", "still here")
    assert data["by"] == "cloud-1"
    assert data["from"] == good.member.node_id


async def rejection_seen(daemon: Daemon, reason: str, before: int, timeout: float = 10.0) -> None:
    await wait_for(lambda: daemon.rejections().get(reason, 0) > before, timeout)


def test_request_reply_and_broadcast_across_processes(mesh: Mesh) -> None:
    async def main() -> None:
        a = await device(mesh, "dev-a", mesh.edge1)
        c = await device(mesh, "dev-c", mesh.edge2)
        try:
            data = await echo(a, "cloud-1", "hi")
            assert data == {"by": "cloud-1", "from": "dev-a", "body": '{"t": "hi"}'}
            data = await echo(c, "edge-2", "local")
            assert data["by"] == "edge-2"
            got: dict[str, list[bytes]] = {"dev-a": [], "dev-c": []}
            a.node.on("app.news", lambda m: got["dev-a"].append(m.body_bytes))
            c.node.on("app.news", lambda m: got["dev-c"].append(m.body_bytes))
            reply = await a.node.request("cloud-1", "app.broadcast", b'{"n":1}', timeout=10)
            assert json.loads(reply.body_bytes) == {"links": 2}
            await wait_for(lambda: all(got.values()), 10)
            assert got == {"dev-a": [b'{"n":1}'], "dev-c": [b'{"n":1}']}
            # the cloud's status shows both edges and their resource reports
            await wait_for(
                lambda: len([p for p in mesh.cloud.status()["peers"] if p["report"]]) == 2, 10
            )
        finally:
            await a.node.stop(0.2)
            await c.node.stop(0.2)

    run(main())


class Adversary:
    """A valid device's CURVE key speaking raw frames to its edge (no MeshNode discipline)."""

    def __init__(self, member: Member, edge: Daemon) -> None:
        self.member = member
        self.edge = edge
        self.seq = int(time.time() * 1_000_000)

    async def __aenter__(self) -> Adversary:
        self.transport = ZmqTransport(self.member.keypair)
        self.conn = await self.transport.connect(
            self.edge.address, self.edge.member.identity.curve_public
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    def envelope(
        self,
        msg_type: str = "mesh.ping",
        *,
        recipient: str = "edge-1",
        body: bytes = b"{}",
        sequence: int | None = None,
        signer: Any = None,
        ts: float | None = None,
        limits: Limits | None = None,
        flags: Flags = Flags.NONE,
        correlation_id: bytes = ZERO_ID,
    ) -> list[bytes]:
        if sequence is None:
            self.seq += 1
            sequence = self.seq
        return [
            bytes(f)
            for f in encode_signed(
                msg_type=msg_type,
                sender=self.member.node_id,
                recipient=recipient,
                sequence=sequence,
                timestamp_ms=int((time.time() if ts is None else ts) * 1000),
                body=body,
                signer=(signer or self.member.identity).signer,
                limits=limits or Limits(),
                flags=flags,
                correlation_id=correlation_id,
            )
        ]

    async def send(self, frames: list[bytes]) -> None:
        await self.conn.send(self.edge.member.identity.curve_public, frames, timeout=5)

    async def request(self, msg_type: str, body: bytes, *, recipient: str = "edge-1") -> bytes:
        """Send a REQUEST; return its correlation id."""
        cid = os.urandom(16)
        await self.send(
            self.envelope(
                msg_type, recipient=recipient, body=body, flags=Flags.REQUEST, correlation_id=cid
            )
        )
        return cid

    async def replies(self, until: bytes, timeout: float = 20.0) -> list[Envelope]:
        """Verified replies from the edge, in arrival order, up to the one for ``until``
        (anything that is not a REPLY, e.g. a hello the edge sends its children, is skipped)."""
        got: list[Envelope] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1].correlation_id != until:
            _, frames = await self.conn.recv(timeout=max(0.1, deadline - time.monotonic()))
            unverified = decode(frames)
            if unverified.flags is not Flags.REPLY:
                continue
            got.append(unverified.verify_signature(self.edge.member.identity.verify_key))
        return got


def test_adversarial_frames_are_rejected_and_others_still_served(mesh: Mesh) -> None:
    async def main() -> None:
        good = await device(mesh, "dev-b", mesh.edge1)
        edge = mesh.edge1
        try:
            async with Adversary(mesh.members["dev-bad"], edge) as bad:
                other = mesh.members["dev-a"]
                cases: list[tuple[str, list[list[bytes]]]] = []
                # forged signature (signed by another node's key)
                cases.append(("bad_auth", [bad.envelope(signer=other.identity)]))
                # a flipped byte in the body / header
                flipped = bad.envelope(body=b'{"x":1}')
                flipped[1] = b'{"x":2}'
                cases.append(("bad_auth", [flipped]))
                # garbage
                cases.append(("malformed", [[b"\x00garbage", b"more", b"x" * 64]]))
                # unauthorized message type
                cases.append(("unauthorized", [bad.envelope("admin.wipe")]))
                # oversize body (over the edge's 64 KiB limit)
                big = bad.envelope(
                    body=b'"' + b"a" * 70_000 + b'"', limits=Limits(max_body=1 << 20)
                )
                cases.append(("oversize", [big]))
                # replay: the same valid frames twice
                once = bad.envelope("app.echo", recipient="cloud-1", body=b"{}")
                cases.append(("replayed", [once, once]))
                # out of window: far left of the highest sequence seen
                cases.append(("stale", [bad.envelope(sequence=bad.seq - 100_000)]))
                # stale clock
                cases.append(("clock_skew", [bad.envelope(ts=time.time() - 3600)]))
                # claiming to be someone else (not bound to the connection)
                spoof = [
                    bytes(f)
                    for f in encode_signed(
                        msg_type="mesh.ping",
                        sender="dev-a",
                        recipient="edge-1",
                        sequence=1,
                        timestamp_ms=int(time.time() * 1000),
                        body=b"{}",
                        signer=other.identity.signer,
                    )
                ]
                cases.append(("bad_auth", [spoof]))
                for reason, batches in cases:
                    before = edge.rejections().get(reason, 0)
                    for frames in batches:
                        await bad.send(frames)
                    await rejection_seen(edge, reason, before)
                    await still_served(mesh, good)
            # every kind of rejection became a signed event: still in the edge's outbox,
            # or already shipped over the bus into the cloud's audit log
            from securemesh.audit.events import SignedEvent
            from securemesh.audit.log import open_log
            from securemesh.audit.outbox import Outbox

            with Outbox(mesh.root / "edge-1" / "audit-outbox.db") as outbox:
                entries = [p.entry for p in outbox.pending(limit=10_000)]
            with open_log(str(mesh.root / "cloud" / "audit.db")) as audit_log:
                entries += [audit_log.get_entry(i) for i in range(audit_log.size())]
            events = [
                SignedEvent.from_bytes(e).verify(edge.member.identity.verify_key)
                for e in entries
                if SignedEvent.from_bytes(e).unverified_event().origin == "edge-1"
            ]
            bad_peer = mesh.members["dev-bad"].identity.curve_public.hex()[:16]
            audited = {e.details["reason"] for e in events if e.details["peer"] == bad_peer}
            assert {reason for reason, _ in cases} <= audited
        finally:
            await good.node.stop(0.2)

    run(main())


def test_reply_or_silence_on_a_real_edge(mesh: Mesh) -> None:
    """protocol.md §7: pipeline rejections get no reply; a refused request of an
    authenticated, authorized sender gets ``mesh.error`` naming the failing field,
    never echoing input values. Also: a hello to the parent without an attachment
    statement is refused (§7.1), and duplicate keys are refused (§3.1)."""

    async def main() -> None:
        edge = mesh.edge1
        member = mesh.members["dev-err"]
        report = NodeReport(
            load_1m=0.5,
            load_5m=0.5,
            load_15m=0.5,
            queue_length=0,
            capacity=1,
            inflight=0,
            uptime_s=1.0,
        ).model_dump_json()
        before = edge.rejections()
        async with Adversary(member, edge) as dev:
            # silent: unauthorized type, and an authorized type with no handler here
            await dev.request("admin.wipe", b"{}")
            await dev.request("app.nothing", b"{}")
            # replied: the handler refuses the body
            wrong_type = await dev.request("node.report", b'{"load_1m": "secret-text"}')
            duplicate = await dev.request("node.report", ('{"capacity": 9,' + report[1:]).encode())
            cert = b64e(member.cert.to_bytes())
            hello = await dev.request(
                "node.hello", json.dumps({"certificates": [cert]}).encode(), recipient=""
            )
            ping = await dev.request("mesh.ping", b"{}")
            replies = await dev.replies(until=ping)
        assert [(r.correlation_id, r.msg_type) for r in replies] == [
            (wrong_type, "mesh.error"),
            (duplicate, "mesh.error"),
            (hello, "mesh.error"),
            (ping, "mesh.ping"),
        ]
        errors = [r.body(ErrorReply) for r in replies[:3]]
        assert [e.code for e in errors] == ["malformed"] * 3
        assert errors[0].message.startswith("load_1m: float_type")
        assert "secret-text" not in errors[0].message
        assert "duplicate key" in errors[1].message
        assert errors[2].message.startswith("attachment: missing")
        await wait_for(
            lambda: all(
                edge.rejections().get(r, 0) > before.get(r, 0)
                for r in ("unauthorized", "no_handler", "malformed")
            ),
            10,
        )

    run(main())


def test_unknown_curve_key_is_refused_at_the_transport(mesh: Mesh) -> None:
    async def main() -> None:
        good = await device(mesh, "dev-b", mesh.edge1)
        edge = mesh.edge1
        try:
            before = edge.refused_keys()
            stranger = ZmqTransport(CurveKeyPair.generate())
            conn = await stranger.connect(edge.address, edge.member.identity.curve_public)
            with contextlib.suppress(Exception):  # the send may or may not queue
                await conn.send(edge.member.identity.curve_public, [b"hello?"], timeout=0.5)
            await wait_for(lambda: edge.refused_keys() > before, 10)
            await stranger.close()
            await still_served(mesh, good)
        finally:
            await good.node.stop(0.2)

    run(main())


def test_flood_from_one_peer_does_not_starve_others(mesh: Mesh) -> None:
    async def main() -> None:
        good = await device(mesh, "dev-b", mesh.edge1)
        edge = mesh.edge1
        try:
            async with Adversary(mesh.members["dev-flood"], edge) as flood:
                other = mesh.members["dev-a"]
                frames = flood.envelope(signer=other.identity)  # forged: full verify cost

                async def pump() -> None:
                    for _ in range(3000):
                        try:
                            await flood.conn.send(
                                edge.member.identity.curve_public, frames, timeout=0.01
                            )
                        except Exception:
                            await asyncio.sleep(0)

                pumping = asyncio.create_task(pump())
                start = time.monotonic()
                for i in range(5):
                    await echo(good, "cloud-1", f"during flood {i}")
                elapsed = time.monotonic() - start
                await pumping
                assert elapsed < 10.0
                await wait_for(lambda: edge.rejections().get("bad_auth", 0) > 100, 20)
                await still_served(mesh, good)
        finally:
            await good.node.stop(0.2)

    run(main())


def test_expired_certificate_is_rejected(mesh: Mesh) -> None:
    async def main() -> None:
        good = await device(mesh, "dev-b", mesh.edge1)
        edge = mesh.edge1
        member = mesh.members["dev-exp"]
        not_after = member.cert.unverified_certificate().not_after
        try:
            async with Adversary(member, edge) as exp:
                before_rej = edge.rejections().get("certificate_expired", 0)
                before_keys = edge.refused_keys()
                await asyncio.sleep(max(0.0, not_after - time.time() + 0.2))
                await exp.send(exp.envelope())
                await wait_for(
                    lambda: (
                        edge.rejections().get("certificate_expired", 0) > before_rej
                        or edge.refused_keys() > before_keys
                    ),
                    10,
                )
            await still_served(mesh, good)
        finally:
            await good.node.stop(0.2)

    run(main())


def test_revocation_cuts_off_a_live_device_within_one_broadcast(mesh: Mesh) -> None:
    async def main() -> None:
        victim = await device(mesh, "dev-revoked", mesh.edge1)
        good = await device(mesh, "dev-b", mesh.edge1)
        try:
            await echo(victim, "cloud-1", "before")
            rl = mesh.fx.authority.revoke("dev-revoked", now=time.time())
            version = rl.unverified_list().version
            # what `securemesh revoke` does: replace revocation.list in the cloud's data dir
            tmp = mesh.root / "cloud" / ".rl.tmp"
            tmp.write_bytes(rl.to_bytes())
            tmp.replace(mesh.root / "cloud" / "revocation.list")
            await wait_for(
                lambda: mesh.edge1.status()["revocation_list_versions"].get("root") == version, 15
            )
            with pytest.raises(TimeoutError):
                await echo(victim, "cloud-1", "after", timeout=1.0)
            await still_served(mesh, good)
            # the edge persisted the new list for its next start
            await wait_for(
                lambda: (mesh.root / "edge-1" / "revocation.list").read_bytes() == rl.to_bytes(), 10
            )
        finally:
            await victim.node.stop(0.2)
            await good.node.stop(0.2)

    run(main())
