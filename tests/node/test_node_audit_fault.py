"""Fault test over the bus: SIGKILL the cloud daemon while two edge daemons stream audit events.

Acceptance (issue 4): a cloud daemon (audit service on the bus) and two edge
daemons, all real processes set up through the CLI. Each edge records a stream
of signed events (``audit_fault_services``) that its outbox shipper sends with
``audit.append``. Mid-stream the cloud is SIGKILLed, then restarted on the
same data dir and port. Once the outboxes drain: every event acknowledged
before the kill is in the log at the acknowledged index, every event is in the
log exactly once, and ``securemesh audit verify`` passes. Readiness and
progress are polled from files with deadlines, never slept for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from securemesh.audit.log import open_log

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
PASSPHRASE = "audit-fault-passphrase"
EVENTS = 400  # per edge
KILL_AFTER = 60  # acknowledged events per edge before the kill
EDGES = ("edge-1", "edge-2")
EDGE_AUDIT = (
    "\n[audit]\nkeep_receipts = true\nship_interval = 0.05\n"
    "request_timeout = 1.0\nbackoff_max = 0.5\n"
)


def _env() -> dict[str, str]:
    env = dict(os.environ, SECUREMESH_PASSPHRASE=PASSPHRASE)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["AUDIT_FAULT_EVENTS"] = str(EVENTS)
    env["AUDIT_FAULT_INTERVAL"] = "0.004"
    return env


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "securemesh", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"securemesh {args[0]} failed: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _audit_status(data_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((data_dir / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    audit = data.get("audit", {})
    assert isinstance(audit, dict)
    return audit


def _receipts(data_dir: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{data_dir / 'audit-outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT event_id, leaf_index FROM shipped").fetchall()
    finally:
        db.close()
    return {str(r[0]): int(r[1]) for r in rows}


class Daemons:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, data_dir: Path) -> subprocess.Popen[bytes]:
        with open(self.root / f"{data_dir.name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "securemesh", "node", "run", "--config",
                 str(data_dir / "node.toml")],
                env=_env(), stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.procs.append(proc)
        _wait(
            lambda: (data_dir / "ready").exists() or proc.poll() is not None,
            f"{data_dir.name} ready",
        )
        assert proc.poll() is None, (self.root / f"{data_dir.name}.log").read_text()[-2000:]
        return proc

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.reap()


def test_cloud_killed_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, daemons: Daemons
) -> None:
    cloud = tmp_path / "cloud"
    _cli(
        "init", "--data-dir", str(cloud), "--authority-id", "root", "--cloud-node-id", "cloud-1",
        "--listen", f"tcp://127.0.0.1:{_free_port()}",
    )  # fmt: skip
    toml = cloud / "node.toml"
    toml.write_text("status_interval = 0.1\n" + toml.read_text())
    cloud_proc = daemons.start(cloud)
    for name in EDGES:
        token = _cli("token", "create", "--data-dir", str(cloud), "--tier", "edge", "--ttl", "10m")
        _cli(
            "enroll", "--data-dir", str(tmp_path / name), "--token", token, "--node-id", name,
            "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        toml = tmp_path / name / "node.toml"
        toml.write_text(
            'services = ["audit_fault_services:register"]\nstatus_interval = 0.1\n'
            + toml.read_text()
            + EDGE_AUDIT
        )
    for name in EDGES:
        daemons.start(tmp_path / name)

    # mid-stream: both edges have had events acknowledged, and more are coming
    _wait(
        lambda: all(len(_receipts(tmp_path / n)) >= KILL_AFTER for n in EDGES),
        "first acknowledgements",
    )
    cloud_proc.send_signal(signal.SIGKILL)
    cloud_proc.wait(timeout=10)
    acked_before = {n: _receipts(tmp_path / n) for n in EDGES}
    assert all(len(a) < EVENTS for a in acked_before.values()), "the stream ended before the kill"
    # the edges notice (their requests time out) and keep recording into their outboxes
    _wait(
        lambda: all(int(_audit_status(tmp_path / n).get("ship_failures", 0)) >= 1 for n in EDGES),
        "the edges to notice the dead cloud",
    )
    (cloud / "ready").unlink(missing_ok=True)
    daemons.start(cloud)  # same data dir, same port (node.toml)

    def drained(name: str) -> bool:
        status = _audit_status(tmp_path / name)
        return status.get("recorded") == EVENTS and status.get("outbox_pending") == 0

    _wait(lambda: all(drained(n) for n in EDGES), "the outboxes to drain", timeout=90)
    daemons.reap()

    with open_log(str(cloud / "audit.db")) as audit_log:
        for name in EDGES:
            for event_id, index in acked_before[name].items():
                assert audit_log.index_of(event_id) == index, "an acknowledged event moved"
            receipts = _receipts(tmp_path / name)
            assert len(receipts) >= EVENTS
            for event_id, index in receipts.items():
                assert audit_log.index_of(event_id) == index
    db = sqlite3.connect(f"file:{cloud / 'audit.db'}?mode=ro", uri=True)
    try:
        for name in EDGES:
            rows = db.execute(
                "SELECT subject_id FROM audit_leaves WHERE origin = ? AND kind = 'task.submitted'",
                (name,),
            ).fetchall()
            subjects = [r[0] for r in rows]
            assert len(subjects) == EVENTS, "an event is missing or duplicated"
            assert set(subjects) == {f"{name}-{i}" for i in range(EVENTS)}
        (total,) = db.execute("SELECT count(*) FROM audit_leaves").fetchone()
        (distinct,) = db.execute("SELECT count(DISTINCT event_id) FROM audit_leaves").fetchone()
        assert total == distinct
    finally:
        db.close()
    out = _cli(
        "audit", "verify", "--db", str(cloud / "audit.db"),
        "--log-key-file", str(cloud / "audit-log.key"), "--no-state",
    )  # fmt: skip
    assert out.startswith("OK:")
