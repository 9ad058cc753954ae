"""The edge outbox, the service's acknowledgements and the ZeroMQ ingest endpoint."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import zmq
from audit_log_helpers import make_events

from securemesh.audit.events import MAX_SIGNED_EVENT_SIZE
from securemesh.audit.ingest import (
    MAGIC,
    IngestClient,
    IngestServer,
    read_client_keys,
    ship_until_empty,
)
from securemesh.audit.log import AuditLog, open_log
from securemesh.audit.outbox import DEFERRED, REJECTED, Outbox, ship_once
from securemesh.audit.service import AuditService
from securemesh.audit.verify import verify_log
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import ConfigError, LocalError, TransportError


@pytest.fixture
def log(
    tmp_path: Path, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> AuditLog:
    lg = open_log(tmp_path / "cloud.db", signer=log_signer)
    for name, signer in edge_signers.items():
        lg.register_node(name, signer.verify_key)
    yield lg  # type: ignore[misc]
    lg.close()


def test_outbox_is_durable_fifo_and_idempotent(
    tmp_path: Path, edge_signers: dict[str, Ed25519Signer]
) -> None:
    events = make_events(edge_signers["edge-1"], "edge-1", 5)
    with Outbox(tmp_path / "o.db") as ob:
        ids = [ob.put(e) for e in events]
        ob.put(events[0])  # idempotent
        assert ob.pending_count() == 5
    with Outbox(tmp_path / "o.db", keep_receipts=True) as ob:  # survives reopening
        pend = ob.pending(3)
        assert [p.event_id for p in pend] == ids[:3]
        assert pend[0].entry == events[0].to_bytes()
        # only the acknowledged rows go; unknown ids are harmless
        assert ob.ack([(ids[1], 7), ("f" * 32, 9)]) == 1
        assert [p.event_id for p in ob.pending(10)] == [ids[0], *ids[2:]]
        assert ob.receipts() == {ids[1]: 7}
        assert ob.ack([(ids[2], REJECTED)]) == 1
        assert ob.rejected() == [ids[2]]
        with pytest.raises(LocalError):
            ob.ack([(ids[0], -5)])
        assert ob.pending_count() == 3  # the failed ack changed nothing
        with pytest.raises(LocalError):
            ob.put_entry("x" * 65, b"e")


def test_ship_once_exactly_once_through_retries(
    tmp_path: Path, log: AuditLog, edge_signers: dict[str, Ed25519Signer]
) -> None:
    service = AuditService(log)
    events = make_events(edge_signers["edge-1"], "edge-1", 30)
    ob = Outbox(tmp_path / "edge.db", keep_receipts=True)
    for e in events:
        ob.put(e)

    calls = {"n": 0}

    def lossy(entries: list[bytes]) -> list[tuple[str, int]]:
        acks = service.handle_batch(entries)
        calls["n"] += 1
        if calls["n"] % 2:  # the reply is lost every other time
            raise TransportError("reply lost")
        return acks

    while ob.pending_count():
        try:
            ship_once(ob, lossy, limit=8)
        except TransportError:
            continue
    assert log.size() == 30
    assert sorted(ob.receipts().values()) == list(range(30))
    verify_log(log.engine, log_verify_key=log.log_verify_key, log_origin=log.origin)


def test_service_rejects_forged_and_unknown(
    log: AuditLog, edge_signers: dict[str, Ed25519Signer], tmp_path: Path
) -> None:
    service = AuditService(log)
    good = make_events(edge_signers["edge-1"], "edge-1", 2)
    forged = make_events(edge_signers["edge-2"], "edge-1", 1, start=100)  # wrong key
    stranger = make_events(Ed25519Signer.from_seed(b"9" * 32), "edge-9", 1)
    acks = service.handle_batch(
        [good[0].to_bytes(), forged[0].to_bytes(), stranger[0].to_bytes(), good[1].to_bytes()]
    )
    ids = [e.unverified_event().event_id for e in (good[0], forged[0], stranger[0], good[1])]
    assert acks == [(ids[0], 0), (ids[1], REJECTED), (ids[2], REJECTED), (ids[3], 1)]
    assert service.rejections == {"bad_auth": 1, "unknown_origin": 1}
    assert service.handle_batch([b"garbage"]) == []
    # an edge outbox moves refused events aside instead of retrying forever
    ob = Outbox(tmp_path / "edge.db")
    ob.put(forged[0])
    assert ship_once(ob, service.handle_batch).rejected == 1
    assert ob.pending_count() == 0
    assert ob.rejected() == [ids[1]]


def test_deferred_entries_back_off_let_newer_ones_pass_then_give_up(
    tmp_path: Path, edge_signers: dict[str, Ed25519Signer]
) -> None:
    events = make_events(edge_signers["edge-1"], "edge-1", 3)
    clock = [100.0]
    with Outbox(tmp_path / "o.db", clock=lambda: clock[0], max_deferrals=3) as ob:
        ids = [ob.put(e) for e in events]
        assert [p.event_id for p in ob.pending()] == ids
        ob.ack([(ids[0], DEFERRED)])
        assert [p.event_id for p in ob.pending()] == ids[1:]  # not due: the others pass
        assert ob.pending_count() == 3
        assert ob.deferred_count() == 1
        waits = []
        for _ in range(3):  # due again after 1 s, then 2 s, then 4 s
            start = clock[0]
            while ids[0] not in [p.event_id for p in ob.pending()]:
                clock[0] += 0.25
            waits.append(clock[0] - start)
            ob.ack([(ids[0], DEFERRED)])
        assert waits == [1.0, 2.0, 4.0]
        assert ob.rejected() == [ids[0]]  # deferred a fourth time: given up
        assert ob.pending_count() == 2
        assert ob.deferred_count() == 0
        with pytest.raises(LocalError):
            ob.ack([(ids[1], -3)])


def test_an_outbox_from_before_deferrals_is_upgraded_in_place(
    tmp_path: Path, edge_signers: dict[str, Ed25519Signer]
) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "event_id TEXT NOT NULL UNIQUE, entry BLOB NOT NULL, created_ms INTEGER NOT NULL)"
    )
    event = make_events(edge_signers["edge-1"], "edge-1", 1)[0]
    db.execute(
        "INSERT INTO outbox (event_id, entry, created_ms) VALUES (?, ?, 1)",
        (event.unverified_event().event_id, event.to_bytes()),
    )
    db.commit()
    db.close()
    with Outbox(path) as ob:
        (pending,) = ob.pending()
        assert pending.entry == event.to_bytes()
        ob.ack([(pending.event_id, DEFERRED)])
        assert ob.deferred_count() == 1


#: the one client key the test server admits
CLIENT = zmq.curve_keypair()


@pytest.fixture
def server(log: AuditLog) -> tuple[IngestServer, bytes]:
    public, secret = zmq.curve_keypair()
    srv = IngestServer(
        AuditService(log), bind="tcp://127.0.0.1:*", curve_secret=secret, client_keys=[CLIENT[0]]
    )
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, public  # type: ignore[misc]
    srv.stop()
    t.join(5)
    srv.close()


def test_ingest_over_zeromq_curve(
    server: tuple[IngestServer, bytes],
    log: AuditLog,
    tmp_path: Path,
    edge_signers: dict[str, Ed25519Signer],
) -> None:
    srv, public = server
    client = IngestClient(srv.endpoint, server_public=public, keypair=CLIENT, timeout_ms=5000)
    ob = Outbox(tmp_path / "edge.db", keep_receipts=True)
    for e in make_events(edge_signers["edge-2"], "edge-2", 100):
        ob.put(e)
    result = ship_until_empty(ob, client, batch=32)
    assert (result.sent, result.acked, result.rejected) == (100, 100, 0)
    assert log.size() == 100
    assert sorted(ob.receipts().values()) == list(range(100))
    # undecodable events get no acknowledgement; a wrong magic an error reply; too
    # many frames are dropped by the transport before the service sees them (no reply)
    assert client.send_batch([b"x" * 10]) == []
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.curve_serverkey = public
    sock.curve_publickey, sock.curve_secretkey = CLIENT
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.endpoint)
    sock.send_multipart([b"SMAI/0", b"x"])
    assert sock.poll(5000)
    assert sock.recv_multipart() == [MAGIC, b"error"]
    sock.send_multipart([MAGIC] + [b"x"] * 257)
    sock.send_multipart([b"SMAI/0", b"y"])  # served after the dropped one
    assert sock.poll(5000)
    assert sock.recv_multipart() == [MAGIC, b"error"]
    assert srv.stats.dropped_malformed == 1
    sock.close(0)
    # an oversize frame gets the peer disconnected: the client times out
    impatient = IngestClient(srv.endpoint, server_public=public, keypair=CLIENT, timeout_ms=300)
    with pytest.raises(TransportError):
        impatient.send_batch([b"x" * (MAX_SIGNED_EVENT_SIZE + 1)])
    impatient.close()
    with pytest.raises(TransportError):
        client.send_batch([])
    assert log.size() == 100  # the server is still serving
    assert client.send_batch([ob_entry(edge_signers)]) == [(ob_id(edge_signers), 0)]
    client.close()


def ob_entry(edge_signers: dict[str, Ed25519Signer]) -> bytes:
    return make_events(edge_signers["edge-2"], "edge-2", 1)[0].to_bytes()


def ob_id(edge_signers: dict[str, Ed25519Signer]) -> str:
    return make_events(edge_signers["edge-2"], "edge-2", 1)[0].unverified_event().event_id


def test_ingest_client_times_out_against_wrong_server_key(
    server: tuple[IngestServer, bytes],
) -> None:
    srv, _ = server
    wrong_public, _ = zmq.curve_keypair()
    client = IngestClient(srv.endpoint, server_public=wrong_public, keypair=CLIENT, timeout_ms=300)
    with pytest.raises(TransportError):
        client.send_batch([b"x"])
    client.close()


def test_ingest_admits_only_the_listed_client_keys(
    server: tuple[IngestServer, bytes],
    log: AuditLog,
    edge_signers: dict[str, Ed25519Signer],
) -> None:
    """A stranger's CURVE key is refused in the handshake: nothing is appended, no reply."""
    srv, public = server
    before = log.size()
    stranger = IngestClient(
        srv.endpoint, server_public=public, keypair=zmq.curve_keypair(), timeout_ms=500
    )
    with pytest.raises(TransportError):
        stranger.send_batch([ob_entry(edge_signers)])
    stranger.close()
    assert log.size() == before
    listed = IngestClient(srv.endpoint, server_public=public, keypair=CLIENT, timeout_ms=5000)
    assert listed.send_batch([ob_entry(edge_signers)]) == [(ob_id(edge_signers), before)]
    listed.close()


def test_ingest_refuses_to_admit_nobody_or_malformed_keys(log: AuditLog, tmp_path: Path) -> None:
    _, secret = zmq.curve_keypair()
    for keys in ([], [b"short"]):
        with pytest.raises(ConfigError):
            IngestServer(
                AuditService(log), bind="tcp://127.0.0.1:*", curve_secret=secret, client_keys=keys
            )
    f = tmp_path / "clients"
    f.write_text("\n" + CLIENT[0].decode() + "  edge-1\n")
    assert read_client_keys(f) == {CLIENT[0]}
    for text in ("", "\n \n", "not-a-key\n"):
        f.write_text(text)
        with pytest.raises(ConfigError):
            read_client_keys(f)
