"""``audit.append`` over the bus (in-memory transport, real SQLite log): who may append what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node_testlib import (
    Built,
    Fixture,
    Member,
    TransportFactory,
    build_node,
    memory_factory,
    run,
    wait_for,
)
from pydantic import ValidationError

from securemesh.audit.admin import LogKey, create_log_key
from securemesh.audit.events import SignedEvent, event_key_id, new_event, sign_event
from securemesh.audit.log import AuditLog, open_log
from securemesh.audit.outbox import REJECTED, Outbox
from securemesh.audit.verify import verify_log
from securemesh.crypto import NodeIdentity, keystore
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import RemoteCallError
from securemesh.messages import b64e
from securemesh.node._audit_bus import (
    MAX_APPEND_ENTRIES,
    MSG_AUDIT_APPEND,
    AuditAppend,
    AuditAppendReply,
    AuditRecorder,
    AuditShipper,
    BusAuditIngest,
    allow_audit_relay,
    bus_sender,
    cloud_node_of,
    deterministic_event_id,
)


def _event(origin: str, signer: object, n: int = 0) -> SignedEvent:
    ev = new_event("task.submitted", origin=origin, subject=("task", f"{origin}-{n}"))
    return sign_event(ev, signer)  # type: ignore[arg-type]


def cloud_with_log(
    fx: Fixture, m: dict[str, Member], f: TransportFactory, tmp_path: Path, known: list[Member]
) -> tuple[Built, LogKey, AuditLog, BusAuditIngest]:
    """cloud-1 on memory://cloud running the audit log and its audit.append handler."""
    cloud = build_node(fx, m["cloud-1"], f, listen="memory://cloud", known=known)
    key = create_log_key(tmp_path / "log.key", passphrase="pw", params=keystore.UNSAFE_FAST_PARAMS)
    audit_log = open_log(str(tmp_path / "audit.db"), signer=key.signer, origin=key.name)
    ingest = BusAuditIngest(cloud.node, audit_log)
    ingest.install()
    return cloud, key, audit_log, ingest


def members(fx: Fixture, *nodes: str) -> dict[str, Member]:
    """``cloud-*``, ``edge-*`` and ``dev-*`` members by id, tier from the prefix."""
    tiers = {"cloud": "cloud", "edge": "edge", "dev": "end"}
    return {n: fx.member(n, tiers[n.split("-")[0]]) for n in nodes}


async def relaying_edge(
    fx: Fixture, m: dict[str, Member], f: TransportFactory, cloud: Built, **kwargs: Any
) -> Built:
    """edge-1 started below ``cloud``, relaying its devices' audit.append (as its daemon)."""
    edge = build_node(fx, m["edge-1"], f, parent=cloud.node, **kwargs)
    allow_audit_relay(edge.node)
    await edge.node.start()
    await edge.node.wait_parent(10)
    return edge


def test_append_authorization_relay_forgery_and_shipping(tmp_path: Path) -> None:
    async def main() -> None:
        fx = Fixture()
        m = members(fx, "cloud-1", "edge-1", "edge-2", "dev-1")
        f = memory_factory()
        cloud, _key, audit_log, ingest = cloud_with_log(
            fx, m, f, tmp_path, [m["edge-1"], m["edge-2"]]
        )
        await cloud.node.start()
        edge = await relaying_edge(fx, m, f, cloud, listen="memory://edge", known=[m["dev-1"]])
        dev = build_node(fx, m["dev-1"], f, parent=edge.node)
        await dev.node.start()
        await dev.node.wait_parent(10)
        await wait_for(lambda: "dev-1" in cloud.node._routes)
        nodes: list[Built] = [dev, edge, cloud]
        try:
            assert cloud_node_of(edge.node) == "cloud-1"
            assert cloud_node_of(cloud.node) == "cloud-1"
            outbox = Outbox(tmp_path / "edge-outbox.db", keep_receipts=True)
            recorder = AuditRecorder(outbox, origin="edge-1", signer=m["edge-1"].identity.signer)
            own = [recorder.record("task.submitted", ("task", f"t{i}")) for i in range(5)]
            relayed = outbox.put(_event("dev-1", m["dev-1"].identity.signer))
            other_edge = outbox.put(_event("edge-2", m["edge-2"].identity.signer))
            forged = outbox.put(_event("edge-1", Ed25519Signer.generate()))
            shipper = AuditShipper(
                outbox, bus_sender(edge.node, cloud=lambda: "cloud-1", timeout=5)
            )
            assert await shipper.ship_pending() == 8
            assert outbox.pending_count() == 0
            receipts = outbox.receipts()
            assert sorted(receipts) == sorted([*own, relayed])
            assert set(outbox.rejected()) == {other_edge, forged}
            for event_id, index in receipts.items():
                assert audit_log.index_of(event_id) == index
            assert audit_log.size() == 6
            assert ingest.status()["refused"] == {"origin_not_allowed": 1, "bad_auth": 1}
            # a device may only append its own events: an edge's is refused
            body = AuditAppend(entries=[b64e(_event("edge-1", m["edge-1"].identity.signer)
                                             .to_bytes())])  # fmt: skip
            reply = await dev.node.request("cloud-1", MSG_AUDIT_APPEND, body, timeout=5)
            (ack,) = reply.body(AuditAppendReply).acks
            assert ack[1] == REJECTED
            own_dev = _event("dev-1", m["dev-1"].identity.signer, 1)
            body = AuditAppend(entries=[b64e(own_dev.to_bytes())])
            reply = await dev.node.request("cloud-1", MSG_AUDIT_APPEND, body, timeout=5)
            assert reply.body(AuditAppendReply).acks == [(own_dev.unverified_event().event_id, 6)]
            # at-least-once: a repeat gets the same index, nothing is appended twice
            reply = await dev.node.request("cloud-1", MSG_AUDIT_APPEND, body, timeout=5)
            assert reply.body(AuditAppendReply).acks == [(own_dev.unverified_event().event_id, 6)]
            assert audit_log.size() == 7
            # garbage entries get no ack; an oversized request is refused as a whole
            body = AuditAppend(entries=[b64e(b"not an event")])
            reply = await dev.node.request("cloud-1", MSG_AUDIT_APPEND, body, timeout=5)
            assert reply.body(AuditAppendReply).acks == []
            big = b64e(own_dev.to_bytes())
            with pytest.raises(RemoteCallError):
                await dev.node.request(
                    "cloud-1", MSG_AUDIT_APPEND, AuditAppend(entries=[big] * 150), timeout=5
                )
            outbox.close()
        finally:
            for b in nodes:
                await b.node.stop(0.5)
            ingest.close()
            audit_log.close()

    run(main())


def test_a_re_enrolled_node_keeps_appending_under_its_new_and_old_keys(tmp_path: Path) -> None:
    """Issue #4: a device re-enrolled by the root with new keys under the same id.

    The cloud registers the new key from its directory the first time an
    event signed with it arrives (not only the first time the origin is
    seen); the old key stays registered, so events under both are appended,
    the whole log verifies, and a key no certificate names is still refused.
    """

    async def main() -> None:
        fx = Fixture()
        m = members(fx, "cloud-1", "edge-1", "dev-1")
        f = memory_factory()
        cloud, key, audit_log, ingest = cloud_with_log(
            fx, m, f, tmp_path, [m["edge-1"], m["dev-1"]]
        )
        await cloud.node.start()
        edge = build_node(fx, m["edge-1"], f, parent=cloud.node)
        await edge.node.start()
        await edge.node.wait_parent(10)

        async def append(*events: SignedEvent) -> list[int]:
            body = AuditAppend(entries=[b64e(e.to_bytes()) for e in events])
            reply = await edge.node.request("cloud-1", MSG_AUDIT_APPEND, body, timeout=5)
            acks = reply.body(AuditAppendReply).acks
            assert [a[0] for a in acks] == [e.unverified_event().event_id for e in events]
            return [a[1] for a in acks]

        try:
            old_signer = m["dev-1"].identity.signer
            assert await append(_event("dev-1", old_signer, 0)) == [0]
            fresh = NodeIdentity.generate()
            reenrolled = fx.authority.issue(
                "dev-1", "end", [], fresh.public(), lifetime_s=3600, now=fx.now + 1, backdate_s=59
            )
            cloud.node.directory.add_certificate(reenrolled)
            assert cloud.node.directory.certificate("dev-1").verify_key == fresh.signer.verify_key
            acks = await append(
                _event("dev-1", fresh.signer, 1),
                _event("dev-1", old_signer, 2),  # signed before the re-enrollment arrived
                _event("dev-1", Ed25519Signer.generate(), 3),  # no certificate names this key
            )
            assert acks == [1, 2, REJECTED]
            assert audit_log.registered_keys("dev-1") == {
                event_key_id(old_signer.verify_key): old_signer.verify_key,
                event_key_id(fresh.signer.verify_key): fresh.signer.verify_key,
            }
            assert ingest.status()["refused"] == {"bad_auth": 1}
            report = verify_log(
                audit_log.engine, log_verify_key=key.signer.verify_key, log_origin=key.name
            )
            assert report.size == 3
        finally:
            await edge.node.stop(0.5)
            await cloud.node.stop(0.5)
            ingest.close()
            audit_log.close()

    run(main())


def test_append_body_is_strict() -> None:
    with pytest.raises(ValidationError):
        AuditAppend.model_validate_json(b'{"entries": []}', strict=True)
    with pytest.raises(ValidationError):
        AuditAppend.model_validate_json(b'{"entries": ["a"], "x": 1}', strict=True)
    with pytest.raises(ValidationError):
        AuditAppend.model_validate_json(
            ('{"entries": [' + ",".join(['"a"'] * (MAX_APPEND_ENTRIES + 1)) + "]}").encode(),
            strict=True,
        )
    with pytest.raises(ValidationError):
        AuditAppendReply.model_validate_json(b'{"acks": [["e", "1"]]}', strict=True)
    with pytest.raises(ValidationError):
        AuditAppendReply.model_validate_json(b'{"acks": [["e", -3]]}', strict=True)
    ok = AuditAppendReply.model_validate_json(
        b'{"acks": [["e", 3], ["f", -1], ["g", -2]]}', strict=True
    )
    assert ok.acks == [("e", 3), ("f", -1), ("g", -2)]


def test_deterministic_event_ids() -> None:
    a = deterministic_event_id("cert.revoked", "root", "dev-1")
    assert a == deterministic_event_id("cert.revoked", "root", "dev-1")
    assert a != deterministic_event_id("cert.revoked", "root", "dev-2")
    assert len(a) == 32
    int(a, 16)


def test_the_cloud_learns_relayed_origins_from_the_edge_and_defers_what_it_cannot_check(
    tmp_path: Path,
) -> None:
    """Relayed device events whose origin (or key) the cloud does not know yet.

    * dev-1 re-enrolled with new keys, and dev-2 enrolled, where only the edge
      heard of it: the cloud asks the edge (cert.lookup) and appends at once;
    * a key that dev-1's current certificate does not name: refused for good;
    * dev-3, unknown to the edge too: deferred (not appended, not refused);
      the outbox keeps it off the wire until it is due, lets newer events pass,
      and once the cloud knows dev-3 it is appended, exactly once.
    """

    async def main() -> None:
        fx = Fixture()
        m = members(fx, "cloud-1", "edge-1", "dev-1", "dev-2", "dev-3")
        f = memory_factory()
        cloud, key, audit_log, ingest = cloud_with_log(
            fx, m, f, tmp_path, [m["edge-1"], m["dev-1"]]
        )
        await cloud.node.start()
        edge = await relaying_edge(fx, m, f, cloud, known=[m["dev-1"], m["dev-2"]])
        fresh = NodeIdentity.generate()
        reenrolled = fx.authority.issue(
            "dev-1", "end", [], fresh.public(), lifetime_s=3600, now=fx.now + 1, backdate_s=59
        )
        edge.node.directory.add_certificate(reenrolled)  # the edge has seen it, the cloud not
        clock = [1000.0]
        outbox = Outbox(tmp_path / "edge.db", keep_receipts=True, clock=lambda: clock[0])
        shipper = AuditShipper(outbox, bus_sender(edge.node, cloud=lambda: "cloud-1", timeout=5))
        try:
            new_key = outbox.put(_event("dev-1", fresh.signer, 1))
            first_seen = outbox.put(_event("dev-2", m["dev-2"].identity.signer, 1))
            forged = outbox.put(_event("dev-1", Ed25519Signer.generate(), 2))
            stranger = outbox.put(_event("dev-3", m["dev-3"].identity.signer, 1))
            await shipper.ship_pending()
            assert set(outbox.receipts()) == {new_key, first_seen}
            assert outbox.rejected() == [forged]
            assert outbox.pending_count() == outbox.deferred_count() == 1
            assert ingest.status()["certificates_learned"] == 2
            assert cloud.node.directory.certificate("dev-1").verify_key == fresh.signer.verify_key
            # not due yet: newer events pass, the deferred one stays off the wire
            later = outbox.put(_event("dev-2", m["dev-2"].identity.signer, 2))
            await shipper.ship_pending()
            assert later in outbox.receipts()
            assert stranger not in outbox.receipts()
            assert audit_log.index_of(stranger) is None
            # the cloud meets dev-3 (e.g. its route announcement); the retry is due
            cloud.node.directory.add_certificate(m["dev-3"].cert)
            clock[0] += 1.0
            await shipper.ship_pending()
            assert stranger in outbox.receipts()
            assert outbox.pending_count() == 0
            assert audit_log.size() == 4
            assert shipper.status()["deferred"] == 1
            report = verify_log(
                audit_log.engine, log_verify_key=key.signer.verify_key, log_origin=key.name
            )
            assert report.size == 4
            outbox.close()
        finally:
            await edge.node.stop(0.5)
            await cloud.node.stop(0.5)
            ingest.close()
            audit_log.close()

    run(main())


def test_keys_are_registered_from_the_directory_at_the_nodes_clock(tmp_path: Path) -> None:
    """register_from_directory asks the directory at the node's (injected) clock, not
    the machine's: a mesh whose certificates are valid only at the node's time works."""
    import time

    fx = Fixture(now=time.time() + 30 * 86_400)  # certificates not valid yet in real time
    m = members(fx, "cloud-1", "edge-1")
    cloud = build_node(
        fx,
        m["cloud-1"],
        memory_factory(),
        listen="memory://c",
        known=[m["edge-1"]],
        clock=lambda: fx.now,
    )
    key = create_log_key(tmp_path / "log.key", passphrase="pw", params=keystore.UNSAFE_FAST_PARAMS)
    with open_log(str(tmp_path / "audit.db"), signer=key.signer, origin=key.name) as audit_log:
        ingest = BusAuditIngest(cloud.node, audit_log)
        edge_key = m["edge-1"].identity.signer.verify_key
        assert ingest.register_from_directory("edge-1", event_key_id(edge_key))
        assert not ingest.register_from_directory("edge-1", event_key_id(bytes(32)))
