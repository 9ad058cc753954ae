"""The service seam in memory: NodeContext, ServiceHost, policies AND, the audit recorder.

Real MeshNodes over the in-memory transport (the transport conformance suite
holds it to the ZeroMQ one); real SQLite outboxes for the recorder.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from node_testlib import Built, Fixture, build_node, memory_factory, run, wait_for
from pydantic import BaseModel, ConfigDict

from securemesh.audit.events import SignedEvent
from securemesh.audit.outbox import Outbox
from securemesh.crypto import NodeIdentity
from securemesh.errors import AuthorizationError, ConfigError, LocalError
from securemesh.messages import NodeReport
from securemesh.node import (
    LegacyService,
    MeshNode,
    NodeContext,
    NullAuditRecorder,
    QueuedAuditRecorder,
    Service,
    ServiceHost,
    VerifiedMessage,
    combine_policies,
    load_services,
)
from securemesh.policy import AllowTypes, DenyAll, PeerInfo

EDGE_ADDR = "memory://seam-edge"


class Ping(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    n: int


class Looper(Service):
    """A service with one loop, one crashing task and a declared kind."""

    name = "looper"
    audit_kinds = ("looper.tick",)

    def __init__(self) -> None:
        self.ticks = 0
        self.cancelled = threading.Event()
        self.started = asyncio.Event()
        self.stopped = False
        self.ctx: NodeContext | None = None

    def install(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        assert self.ctx is not None
        self.ctx.spawn(self._loop(), name="loop")
        self.ctx.spawn(self._crash(), name="crash")
        self.started.set()

    async def _loop(self) -> None:
        try:
            while True:
                self.ticks += 1
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _crash(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the service's bug")

    async def stop(self) -> None:
        self.stopped = True

    def status(self) -> Mapping[str, object]:
        return {"ticks": self.ticks}


def _edge(fx: Fixture, *, edge_policy: dict[str, Any] | None = None) -> Built:
    known = [fx.member("dev-1", "end", ["sensor"]), fx.member("dev-2", "end")]
    return build_node(
        fx, fx.member("edge-1", "edge"), memory_factory(), listen=EDGE_ADDR, known=known,
        policy=edge_policy,
    )  # fmt: skip


async def _pair(fx: Fixture, *, edge_policy: dict[str, Any] | None = None) -> tuple[Built, Built]:
    """A started edge (listening in memory) and a device below it (not started)."""
    f = memory_factory()
    dev_m = fx.member("dev-1", "end", ["sensor"])
    edge = build_node(
        fx, fx.member("edge-1", "edge"), f, listen=EDGE_ADDR, known=[dev_m], policy=edge_policy
    )
    await edge.node.start()
    dev = build_node(fx, dev_m, f, parent=edge.node, heartbeat_interval=0.05)
    return edge, dev


def test_spawned_tasks_are_cancelled_on_stop_and_crashes_show_in_status(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        edge = _edge(fx)
        host = ServiceHost(edge.node, audit=NullAuditRecorder(origin="edge-1"), data_dir=tmp_path)
        svc = Looper()
        ctx = host.install(svc)
        await edge.node.start()
        try:
            await host.start()
            await wait_for(lambda: host.status()["looper"]["crashes"] == 1)  # type: ignore[index]
            await wait_for(lambda: svc.ticks > 3)
            status = host.status()["looper"]
            assert isinstance(status, dict)
            assert status["state"] == "running"
            assert status["tasks"] == 1  # the crashed one is gone, the loop runs on
            assert status["crashed"][0]["task"] == "looper:crash"
            assert "the service's bug" in status["crashed"][0]["error"]
            assert status["ticks"] == svc.ticks or status["ticks"] > 0
            # the node is alive after the crash
            assert edge.node.status()["node_id"] == "edge-1"
            await host.stop()
            assert svc.stopped
            assert svc.cancelled.is_set()
            assert host.status()["looper"]["tasks"] == 0  # type: ignore[index]
            assert host.status()["looper"]["state"] == "stopped"  # type: ignore[index]
            with pytest.raises(LocalError):  # a stopped service spawns nothing
                ctx.spawn(asyncio.sleep(0), name="late")
            # its own data directory under the node's
            assert ctx.data_dir == tmp_path / "services" / "looper"
            assert ctx.data_dir.is_dir()
        finally:
            await edge.node.stop(0.5)

    run(main())


def test_a_service_policy_narrows_the_operator_never_widens() -> None:
    operator = AllowTypes(types=["app.*"], tiers=["end"])
    service_wide = AllowTypes(types=["app.*", "admin.*"])
    combined = combine_policies(operator, service_wide)
    assert combined is not None
    dev = PeerInfo("dev-1", "end", frozenset({"sensor"}))
    edge = PeerInfo("edge-2", "edge")
    combined.authorize(dev, "app.read")
    with pytest.raises(AuthorizationError):  # the service allows edges, the operator does not
        combined.authorize(edge, "app.read")
    with pytest.raises(AuthorizationError):
        combine_policies(DenyAll(), service_wide).authorize(dev, "app.read")  # type: ignore[union-attr]
    narrow = combine_policies(operator, AllowTypes(types=["app.*"], roles=["admin"]))
    assert narrow is not None
    with pytest.raises(AuthorizationError):  # the service narrows to a role dev-1 lacks
        narrow.authorize(dev, "app.read")
    assert combine_policies(operator, None) is None


def test_on_with_a_policy_keeps_the_operators_deny_on_a_real_node() -> None:
    """The bug: ``on(policy=...)`` used to *replace* ``[policy]`` for the type."""

    async def main() -> None:
        fx = Fixture()
        # the operator allows app.* only from role "sensor" devices
        edge, dev = await _pair(
            fx, edge_policy={"allow": [{"types": ["app.*"], "tiers": ["end"], "roles": ["sensor"]}]}
        )
        seen: list[str] = []
        ctx = NodeContext(edge.node, name="svc", audit=NullAuditRecorder(), data_dir=None)

        def handler(msg: VerifiedMessage) -> Ping:
            seen.append(msg.sender)
            return Ping(n=1)

        # the service would allow any tier and role, and also admin.* -- it cannot widen
        ctx.on("app.read", handler, policy=AllowTypes(types=["app.read"]))
        ctx.on("admin.wipe", handler, policy=AllowTypes(types=["admin.wipe"]))
        try:
            await dev.node.start()
            await dev.node.wait_parent(5)
            reply = await dev.node.request("edge-1", "app.read", Ping(n=0), timeout=5)
            assert reply.body(Ping).n == 1
            with pytest.raises(TimeoutError):  # operator: no rule for admin.* -> denied
                await dev.node.request("edge-1", "admin.wipe", Ping(n=0), timeout=0.3)
            await wait_for(lambda: edge.node.metrics.rejections["unauthorized"] >= 1)
            assert seen == ["dev-1"]
        finally:
            await dev.node.stop(0.5)
            await edge.node.stop(0.5)

    run(main())


def test_relay_policy_and_local_policy_are_kept_apart() -> None:
    async def main() -> None:
        fx = Fixture()
        edge, dev = await _pair(fx, edge_policy={"allow": [{"types": ["app.*"]}]})
        ctx = NodeContext(edge.node, name="svc", audit=NullAuditRecorder(), data_dir=None)
        calls: list[str] = []
        ctx.on(
            "app.job",
            lambda msg: calls.append(msg.sender),
            policy=AllowTypes(types=["app.job"], tiers=["cloud"]),  # local: only the cloud
            relay_policy=AllowTypes(types=["app.job"], tiers=["end"]),  # relayed: devices
        )
        try:
            await dev.node.start()
            await dev.node.wait_parent(5)
            # a device's app.job addressed to the edge itself passes the pipeline (it could
            # be relayed) but the local policy refuses it before dispatch: silently, like
            # any unauthorized message (protocol.md §7), counted as a rejection
            with pytest.raises(TimeoutError):
                await dev.node.request("edge-1", "app.job", Ping(n=0), timeout=1)
            assert calls == []
            assert edge.node.metrics.rejections.get("unauthorized") == 1
            # the same as a one-way message to the plain-function handler (the stream
            # fast path, which once skipped the local policy): refused just the same
            await dev.node.send("edge-1", "app.job", Ping(n=1))
            await wait_for(lambda: edge.node.metrics.rejections.get("unauthorized") == 2)
            assert calls == []
        finally:
            await dev.node.stop(0.5)
            await edge.node.stop(0.5)

    run(main())


def test_peers_are_the_neighbours_latest_typed_reports(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        edge, dev = await _pair(fx)
        dev.node.report_fields = lambda: {
            "energy_per_unit": 0.5,
            "carbon_intensity": 120.0,
            "failure_domain": "rack-7",
            "labels": {"site": "lab"},
            "services": ["counter"],
        }
        ctx = NodeContext(edge.node, name="svc", audit=NullAuditRecorder(), data_dir=tmp_path)
        assert ctx.peers() == {}
        try:
            await dev.node.start()
            await dev.node.wait_parent(5)
            await wait_for(lambda: "dev-1" in ctx.peers())
            report = ctx.peers()["dev-1"]
            assert isinstance(report, NodeReport)
            assert report.failure_domain == "rack-7"
            assert report.carbon_intensity == 120.0
            assert report.labels == {"site": "lab"}
            assert report.services == ["counter"]
            assert report.capacity == dev.node.config.limits.capacity
            # the read-only certificate view
            assert ctx.certificates["dev-1"].tier.value == "end"
            assert "nobody" not in ctx.certificates
            assert not hasattr(ctx.certificates, "add_certificate")
        finally:
            await dev.node.stop(0.5)
            await edge.node.stop(0.5)

    run(main())


def test_old_reports_without_the_new_fields_stay_valid() -> None:
    old = (
        b'{"load_1m":0.1,"load_5m":0.2,"load_15m":0.3,"queue_length":0,'
        b'"capacity":100,"inflight":0,"rtt_ms":null,"uptime_s":1.5}'
    )
    report = NodeReport.model_validate_json(old, strict=True)
    assert report.labels is None  # optional fields are absent, not empty (protocol.md §3.1)
    assert report.services is None
    assert report.failure_domain is None
    too_many = {f"k{i}": "v" for i in range(33)}
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        NodeReport.model_validate({**report.model_dump(), "labels": too_many}, strict=True)
    with pytest.raises(ValidationError):
        NodeReport.model_validate({**report.model_dump(), "failure_domain": "has space"})


def test_the_queued_recorder_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    with Outbox(tmp_path / "outbox.db") as outbox:
        recorder = QueuedAuditRecorder(outbox, origin="edge-1", signer=identity.signer, max_queue=4)
        # hold the worker: the outbox lock is taken by this thread
        with outbox._lock:
            start = time.monotonic()
            ids = [
                recorder.record("counter.tick", ("node", "edge-1"), details={"i": i})
                for i in range(50)
            ]
            elapsed = time.monotonic() - start
        assert elapsed < 1.0  # 50 records with the store blocked: no waiting on it
        accepted = [i for i in ids if i is not None]
        assert 4 <= len(accepted) <= 5  # the queue, plus the one the worker holds
        assert recorder.dropped == 50 - len(accepted)
        with pytest.raises(LocalError):  # invalid events raise at once, on the caller
            recorder.record("Not A Kind", ("node", "edge-1"))
        recorder.close()
        assert recorder.pending == 0
        stored = [SignedEvent.from_bytes(p.entry) for p in outbox.pending()]
        assert sorted(e.verify(identity.verify_key).event_id for e in stored) == sorted(accepted)
        assert recorder.status()["dropped"] == recorder.dropped


def test_the_recorder_wakes_the_shipper_on_the_recording_loop(tmp_path: Path) -> None:
    async def main() -> None:
        identity = NodeIdentity.generate()
        with Outbox(tmp_path / "outbox.db") as outbox:
            recorder = QueuedAuditRecorder(outbox, origin="edge-1", signer=identity.signer)
            woken = asyncio.Event()
            recorder.wake = woken.set
            event_id = recorder.record("counter.tick", ("node", "edge-1"))
            await asyncio.wait_for(woken.wait(), 10)
            assert [p.event_id for p in outbox.pending()] == [event_id]
            recorder.close()

    run(main())


def test_a_service_records_only_the_kinds_it_declared(tmp_path: Path) -> None:
    fx = Fixture()
    edge = _edge(fx)
    null = NullAuditRecorder(origin="edge-1")
    host = ServiceHost(edge.node, audit=null, data_dir=tmp_path)
    svc = Looper()
    ctx = host.install(svc)
    assert ctx.audit.record("looper.tick", ("node", "edge-1"), details={"n": 1}) is not None
    with pytest.raises(LocalError):
        ctx.audit.record("node.enrolled", ("node", "x"))  # not declared by this service
    assert [e.kind for e in null.events] == ["looper.tick"]
    with pytest.raises(ConfigError):  # one name, one service
        host.install(Looper())

    class BadKinds(Service):
        name = "bad"
        audit_kinds = ("nonamespace",)

        def install(self, ctx: NodeContext) -> None:
            return None

    with pytest.raises(ConfigError):
        host.install(BadKinds())


def test_node_toml_services_factory_class_and_legacy(tmp_path: Path, monkeypatch: Any) -> None:
    mod = tmp_path / "seam_mod.py"
    mod.write_text(
        "from securemesh.node import Service\n"
        "class Svc(Service):\n"
        "    name = 'svc'\n"
        "    def install(self, ctx): pass\n"
        "def make():\n"
        "    return Svc()\n"
        "def register(node):\n"
        "    node.registered = True\n"
        "def not_a_service():\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    made, cls, legacy = load_services(["seam_mod:make", "seam_mod:Svc", "seam_mod:register"])
    assert made.name == cls.name == "svc"
    assert isinstance(legacy, LegacyService)
    assert legacy.service_name == "legacy-seam_mod-register"
    with pytest.raises(ConfigError, match="did not return"):
        load_services(["seam_mod:not_a_service"])
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_services(["seam_mod:missing"])


def test_legacy_register_gets_the_node(tmp_path: Path) -> None:
    fx = Fixture()
    edge = _edge(fx)
    got: list[MeshNode] = []
    host = ServiceHost(edge.node, audit=NullAuditRecorder(), data_dir=tmp_path)
    host.install(LegacyService(got.append, "legacy-x"))
    assert got == [edge.node]


def test_a_relay_only_type_is_narrowed_on_the_forwarding_hop() -> None:
    """``ctx.on(type, None, relay_policy=...)``: the edge forwards only what both allow."""

    async def main() -> None:
        fx = Fixture()
        f = memory_factory()
        sensor_m = fx.member("dev-1", "end", ["sensor"])
        plain_m = fx.member("dev-2", "end")
        edge_m = fx.member("edge-1", "edge")
        cloud = build_node(fx, fx.member("cloud-1", "cloud"), f, listen="memory://seam-cloud",
                           known=[edge_m])  # fmt: skip
        await cloud.node.start()
        edge = build_node(fx, edge_m, f, listen="memory://seam-relay", parent=cloud.node,
                          known=[sensor_m, plain_m])  # fmt: skip
        ctx = NodeContext(edge.node, name="relay", audit=NullAuditRecorder(), data_dir=None)
        ctx.on("app.up", None, relay_policy=AllowTypes(types=["app.up"], roles=["sensor"]))
        await edge.node.start()
        devs = [build_node(fx, m, f, parent=edge.node) for m in (sensor_m, plain_m)]
        got: list[str] = []
        cloud.node.on("app.up", lambda msg: got.append(msg.sender))
        try:
            await edge.node.wait_parent(5)
            for d in devs:
                await d.node.start()
                await d.node.wait_parent(5)
            await devs[0].node.send("cloud-1", "app.up", Ping(n=1))
            await wait_for(lambda: got == ["dev-1"])
            # the operator allows app.* from anyone; the relay policy narrows it to sensors
            await devs[1].node.send("cloud-1", "app.up", Ping(n=2))
            await wait_for(lambda: edge.node.metrics.rejections["unauthorized"] == 1)
            await devs[0].node.send("cloud-1", "app.up", Ping(n=3))
            await wait_for(lambda: got == ["dev-1", "dev-1"])
        finally:
            for b in (*devs, edge, cloud):
                await b.node.stop(0.5)

    run(main())


def test_the_documented_service_and_its_test_recipe_run(tmp_path: Path) -> None:
    """docs/services.md: the service's shape and the testing recipe run as written."""
    import json
    import textwrap

    from docs_support import marked_block

    shape: dict[str, Any] = {}
    exec(marked_block("services.md", "service-shape"), shape)
    recipe = marked_block("services.md", "service-testing")
    scope: dict[str, Any] = {"ServiceHost": ServiceHost, "NullAuditRecorder": NullAuditRecorder}
    exec(
        "async def recipe(node, tmp_path, MyService, check):\n"
        + textwrap.indent(recipe.replace("...", "await check(host)"), "    "),
        scope,
    )

    async def check(host: ServiceHost) -> None:
        recorder = host.audit
        assert isinstance(recorder, NullAuditRecorder)
        await wait_for(lambda: any(e.kind == "counter.tick" for e in recorder.events))
        status = host.status()["counter"]
        assert isinstance(status, Mapping)
        assert status["state"] == "running"
        assert status["count"] >= 1

    async def main() -> None:
        edge = _edge(Fixture())
        try:
            await scope["recipe"](edge.node, tmp_path, shape["CounterService"], check)
        finally:
            await edge.node.stop(0.5)
        assert json.dumps(shape["CounterService"]().status()) == '{"count": 0}'

    run(main())


def test_a_service_opens_what_was_sealed_to_its_node_without_holding_the_key() -> None:
    """``unwrap_key`` opens a sealed box addressed to the node; the key is never handed out."""
    from securemesh.crypto import boxes
    from securemesh.errors import AuthenticationError

    fx = Fixture()
    edge = build_node(fx, fx.member("edge-1", "edge"), memory_factory(), listen=EDGE_ADDR)
    other = fx.member("edge-2", "edge")
    ctx = NodeContext(edge.node, name="svc", audit=NullAuditRecorder(), data_dir=None)
    mine = boxes.wrap_key(edge.member.identity.kx_public, b"k" * 32)
    assert ctx.unwrap_key(mine) == b"k" * 32
    with pytest.raises(AuthenticationError):
        ctx.unwrap_key(boxes.wrap_key(other.identity.kx_public, b"k" * 32))
    assert not hasattr(ctx, "kx_secret")
