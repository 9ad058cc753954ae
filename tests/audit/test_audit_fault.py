"""Fault test: SIGKILL the cloud audit service during a stream of appends from two edges.

Acceptance (issue 4): after a restart, every event acknowledged before the
kill is in the log, every event is in the log exactly once after the
outboxes drain, and the tree verifies. Processes are real (subprocess), the
transport is real (ZeroMQ CURVE over 127.0.0.1), and readiness is read from
the service's ready file, never guessed with sleeps.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit_log_helpers import make_events

from securemesh.audit.admin import create_log_key
from securemesh.audit.ingest import load_or_create_curve_key
from securemesh.audit.log import open_log
from securemesh.audit.verify import verify_log
from securemesh.crypto import keystore
from securemesh.crypto.signing import Ed25519Signer

HERE = Path(__file__).resolve().parent
EDGES = {"edge-1": "11" * 32, "edge-2": "22" * 32}
COUNT = 800  # events per edge
KILL_AT = 300  # log size at which the service is killed


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.reap()


def _wait_for(
    cond: Callable[[], bool], what: str, timeout: float, *, alive: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in alive:
            assert p.poll() is None, f"process {p.args} died while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition, not a synchronisation guess


def _log_size(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT size FROM audit_sequencer WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _receipts(outbox: Path) -> dict[str, int]:
    conn = sqlite3.connect(outbox, timeout=10)
    try:
        return {str(e): int(i) for e, i in conn.execute("SELECT event_id, leaf_index FROM shipped")}
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_service_mid_stream(
    tmp_path: Path, procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "cloud.db"
    key_file = tmp_path / "log.key"
    curve_file = tmp_path / "curve.secret"
    key = create_log_key(
        key_file, passphrase="pw", name="test.example/audit", params=keystore.UNSAFE_FAST_PARAMS
    )
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", "pw")  # the ingest service opens the key
    load_or_create_curve_key(curve_file)
    # the service admits only the edges' client keys
    clients = tmp_path / "clients"
    clients.write_text(
        "".join(
            load_or_create_curve_key(tmp_path / f"{node}.curve")[0].decode() + "\n"
            for node in EDGES
        )
    )
    with open_log(db, signer=key.signer, origin=key.name) as log:
        for node, seed in EDGES.items():
            log.register_node(node, Ed25519Signer.from_seed(bytes.fromhex(seed)).verify_key)

    def start_service(bind: str, ready: Path) -> subprocess.Popen[bytes]:
        p = procs.start(
            [
                sys.executable,
                "-m",
                "securemesh.audit.ingest",
                "--db",
                str(db),
                "--log-key-file",
                str(key_file),
                "--curve-secret-file",
                str(curve_file),
                "--client-keys-file",
                str(clients),
                "--bind",
                bind,
                "--ready-file",
                str(ready),
            ],
            tmp_path / "service.log",
        )
        _wait_for(ready.exists, "the service's ready file", 60, alive=[p])
        return p

    ready1 = tmp_path / "ready1"
    service = start_service("tcp://127.0.0.1:0", ready1)
    endpoint = ready1.read_text().strip()

    edges = [
        procs.start(
            [
                sys.executable,
                str(HERE / "audit_edge_worker.py"),
                "--outbox",
                str(tmp_path / f"{node}.outbox"),
                "--node-id",
                node,
                "--seed",
                seed,
                "--count",
                str(COUNT),
                "--endpoint-file",
                str(ready1),
                "--server-key-file",
                str(curve_file) + ".pub",
                "--client-secret-file",
                str(tmp_path / f"{node}.curve"),
            ],
            tmp_path / f"{node}.log",
        )
        for node, seed in EDGES.items()
    ]

    _wait_for(lambda: _log_size(db) >= KILL_AT, "appends to start", 120, alive=[service, *edges])
    os.kill(service.pid, signal.SIGKILL)
    service.wait(30)

    # what the edges saw acknowledged before the kill
    acked = {}
    for node in EDGES:
        acked.update(_receipts(tmp_path / f"{node}.outbox"))
    assert acked, "no event was acknowledged before the kill"
    assert len(acked) < 2 * COUNT, "the stream finished before the kill"

    with open_log(db) as log:
        for event_id, index in acked.items():
            assert log.index_of(event_id) == index  # acknowledged => durably in the log

    start_service(endpoint, tmp_path / "ready2")
    for e in edges:
        assert e.wait(180) == 0

    expected = {
        e.unverified_event().event_id
        for node, seed in EDGES.items()
        for e in make_events(Ed25519Signer.from_seed(bytes.fromhex(seed)), node, COUNT)
    }
    with open_log(db) as log:
        assert log.size() == 2 * COUNT
        rows = (
            log.engine.connect()
            .exec_driver_sql("SELECT idx, event_id FROM audit_leaves ORDER BY idx")
            .all()
        )
        assert [r[0] for r in rows] == list(range(2 * COUNT))
        assert {r[1] for r in rows} == expected  # exactly once: 2*COUNT rows, all distinct
        final = {}
        for node in EDGES:
            final.update(_receipts(tmp_path / f"{node}.outbox"))
        assert {r[1]: r[0] for r in rows} == final
        verify_log(log.engine, log_verify_key=key.signer.verify_key, log_origin=key.name)
