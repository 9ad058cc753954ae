"""Attacks on the audit path and on the daemons' local secrets, against real daemon processes.

Issue 9, items 8a, 8c, 8d and 8f. A cloud daemon and an edge daemon with a
delegated authority are set up the operator way (``securemesh init``, a
delegated edge token, ``enroll``, ``node run`` with the passphrase in
``SECUREMESH_PASSPHRASE``); two SDK devices enroll at the edge. Then:

* a *compromised device* signs, with its own key, events about another node
  (``cert.revoked`` of its neighbour, dated 2001), authority events about
  itself, a future-dated event and a back-dated one, and sends them to the
  cloud in its own ``audit.append`` (8a);
* the same device's CURVE key floods its edge with 480 forged messages in one
  burst and stops: the suppressed count must appear in the edge's log (and in
  the audit log) when the rate-limit window closes (8f);
* a local user reads ``/proc/<pid>/environ`` of the running daemons (8d) and
  the modes of every SQLite file they created (8c).

Minimal setup on ``tests/daemon_support.py``; every wait polls a file or a
reply with a deadline, and every process is reaped.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    log_path,
    reaped,
    wait_status,
)

from securemesh.audit.events import new_event, sign_event
from securemesh.audit.log import open_log
from securemesh.audit.query import QueryFilter, query
from securemesh.crypto import keystore
from securemesh.crypto.certs import SignedCertificate
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_decode
from securemesh.messages import b64e
from securemesh.sdk import Device
from securemesh.transport import CurveKeyPair, ZmqTransport
from securemesh.wire import encode_signed

pytestmark = pytest.mark.slow

PASSPHRASE = "adversarial-audit-passphrase-0a1b2c"
DEV_A, DEV_B = "edge-1.dev-a", "edge-1.dev-b"
#: the edge's rejection-log window: short, so the test sees it close
LOG_WINDOW = 3.0
BURST = 480


@dataclass
class Mesh:
    cloud: Path
    edge: Path
    dev_a: Path
    dev_b: Path
    pids: dict[str, int]
    edge_address: str


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("audit-attacks")
    cloud, edge = root / "cloud", root / "edge"
    with reaped(daemon_env(passphrase=PASSPHRASE)) as daemons:
        init_cloud(cloud, PASSPHRASE, top="status_interval = 0.2\n")
        cinfo = daemons.run("cloud", cloud)
        enroll_edge(
            cloud, edge, "edge-1", PASSPHRASE,
            top="status_interval = 0.2\nheartbeat_interval = 0.2\n",
            tables=f"\n[limits]\nlog_window = {LOG_WINDOW}\n",
        )  # fmt: skip
        einfo = daemons.run("edge", edge)
        devs = []
        for node_id in (DEV_A, DEV_B):
            data_dir = root / node_id
            Device.enroll(
                end_token(edge, "sensor"), data_dir=data_dir, node_id=node_id,
                passphrase=PASSPHRASE, kdf_params=keystore.UNSAFE_FAST_PARAMS, timeout=30,
            )  # fmt: skip
            devs.append(data_dir)
        yield Mesh(
            cloud,
            edge,
            devs[0],
            devs[1],
            {"cloud": int(cinfo["pid"]), "edge": int(einfo["pid"])},
            str(einfo["listen"]),
        )


def _log_key(cloud: Path) -> tuple[str, bytes]:
    from securemesh.audit.admin import load_verifier

    return load_verifier(str(cloud / "audit-log.key.pub"))


def _rows(mesh: Mesh, flt: QueryFilter) -> list[Any]:
    with open_log(mesh.cloud / "audit.db") as log:
        return query(log.engine, flt, limit=1000, log_key=_log_key(mesh.cloud)).rows


def _signed(identity: NodeIdentity, origin: str, kind: str, subject: tuple[str, str], **kw: Any):
    return sign_event(new_event(kind, origin=origin, subject=subject, **kw), identity.signer)


# ---------------------------------------------------------------------------------- 8a


def test_a_device_cannot_append_events_about_others_or_outside_the_time_bounds(
    mesh: Mesh,
) -> None:
    identity = NodeIdentity.load(mesh.dev_a / "identity.key", PASSPHRASE)
    cert = SignedCertificate.from_bytes((mesh.dev_a / "node.cert").read_bytes())
    not_before = cert.unverified_certificate().not_before
    now = time.time()
    forged = {
        # a revocation of its neighbour, dated 2001
        "revoke": _signed(identity, DEV_A, "cert.revoked", ("node", DEV_B), now=978_307_200),
        # authority events, even about itself
        "enrolled": _signed(identity, DEV_A, "node.enrolled", ("node", DEV_A), now=now),
        "renewed": _signed(identity, DEV_A, "cert.renewed", ("node", DEV_A), now=now),
        # about another node
        "blame": _signed(identity, DEV_A, "task.failed", ("node", DEV_B), now=now),
        # a day in the future
        "future": _signed(identity, DEV_A, "object.put", ("object", "o-f"), now=now + 86_400),
    }
    kept = {
        # before its key was certified: kept (signed evidence) but flagged
        "backdated": _signed(identity, DEV_A, "object.put", ("object", "o-2001"), now=978_307_200),
        # honest, and honestly late: from the moment the certificate became valid
        "late": _signed(identity, DEV_A, "object.put", ("object", "o-late"), now=not_before + 1),
        "now": _signed(identity, DEV_A, "message.rejected", ("node", "cloud-1"),
                       details={"reason": "bad_auth"}, now=now),
    }  # fmt: skip
    ids = {name: ev.unverified_event().event_id for name, ev in {**forged, **kept}.items()}
    entries = [b64e(ev.to_bytes()) for ev in [*forged.values(), *kept.values()]]
    with Device.connect(mesh.dev_a, passphrase=PASSPHRASE) as dev:
        reply = dev.request("cloud-1", "audit.append", {"entries": entries}, timeout=30).json()
    acks = dict(reply["acks"])
    for name in forged:
        assert acks[ids[name]] == -1, (name, acks)
    for name in kept:
        assert acks[ids[name]] >= 0, (name, acks)

    # nothing the device said about another node, or in the future, is in the log
    assert _rows(mesh, QueryFilter(kind="cert.revoked")) == []
    assert _rows(mesh, QueryFilter(origin=DEV_A, subject=f"node:{DEV_B}")) == []
    mine = {r.event_id for r in _rows(mesh, QueryFilter(origin=DEV_A))}
    assert mine >= {ids[n] for n in kept}
    assert not mine & {ids[n] for n in forged}
    # the back-dated one carries the cloud's signed flag; the honest ones none
    _wait(
        lambda: len(_rows(mesh, QueryFilter(kind="audit.flagged"))) >= 1,
        "the cloud's audit.flagged event",
    )
    flags = _rows(mesh, QueryFilter(kind="audit.flagged"))
    assert [(f.origin, f.subject_id, f.details["reason"]) for f in flags] == [
        ("cloud-1", ids["backdated"], "event_time_before_key")
    ]
    assert flags[0].details["index"] == acks[ids["backdated"]]
    status = wait_status(
        mesh.cloud,
        lambda s: s["audit"]["refused"].get("kind_not_allowed", 0) >= 3,
        what="the refusals in the cloud's status",
    )
    refused = status["audit"]["refused"]
    assert refused["subject_not_allowed"] >= 1
    assert refused["event_time_future"] >= 1
    assert status["audit"]["flagged"] == {"event_time_before_key": 1}
    # the edge's own records of the enrolments it did (inside its namespace) are there
    _wait(
        lambda: (
            {r.subject_id for r in _rows(mesh, QueryFilter(origin="edge-1", kind="node.enrolled"))}
            >= {DEV_A, DEV_B}
        ),
        "the edge's node.enrolled events",
    )
    # and the log, flags included, verifies
    done = subprocess.run(
        [sys.executable, "-m", "securemesh", "audit", "verify",
         "--db", str(mesh.cloud / "audit.db"),
         "--log-key-file", str(mesh.cloud / "audit-log.key"), "--no-state"],
        env=daemon_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------------- 8f


def _suppressed_lines(edge: Path) -> list[dict[str, Any]]:
    out = []
    for line in log_path(edge).read_text(errors="replace").splitlines():
        if '"rejected_suppressed"' in line:
            out.append(json.loads(line))
    return out


def test_a_burst_of_forged_messages_is_counted_in_the_log_when_the_window_closes(
    mesh: Mesh,
) -> None:
    """One burst of 480 forged messages, then silence: all 479 hidden ones are reported."""
    attacker = NodeIdentity.load(mesh.dev_b / "identity.key", PASSPHRASE)
    stranger = NodeIdentity.generate()  # signs what claims to be dev-b: bad_auth
    edge_cert = SignedCertificate.from_bytes((mesh.edge / "node.cert").read_bytes())
    edge_curve = edge_cert.unverified_certificate().curve_key
    before = json.loads((mesh.edge / "status.json").read_text())["counters"]["rejections"]
    bad_auth_before = int(before.get("bad_auth", 0))

    async def burst() -> None:
        keypair = CurveKeyPair.from_secret(z85_decode(attacker.curve_secret_z85()))
        transport = ZmqTransport(keypair)
        try:
            conn = await transport.connect(mesh.edge_address, edge_curve)
            base = int(time.time() * 1_000_000)
            for i in range(BURST):
                frames = encode_signed(
                    msg_type="mesh.ping",
                    sender=DEV_B,
                    recipient="edge-1",
                    sequence=base + i,
                    timestamp_ms=int(time.time() * 1000),
                    body=b"{}",
                    signer=stranger.signer,
                )
                await conn.send(edge_curve, [bytes(f) for f in frames], timeout=10)
            # stay connected until the edge has counted them all
            deadline = time.monotonic() + 60
            while True:
                status = json.loads((mesh.edge / "status.json").read_text())
                if status["counters"]["rejections"].get("bad_auth", 0) >= bad_auth_before + BURST:
                    break
                assert time.monotonic() < deadline, "the edge did not count the burst"
                await asyncio.sleep(0.05)
        finally:
            await transport.close()

    asyncio.run(burst())
    peer = attacker.curve_public.hex()[:16]
    # the window closes LOG_WINDOW s after the first rejection; the maintenance loop
    # (heartbeat 0.2 s) then logs the count of what it hid
    _wait(
        lambda: any(
            line["peer"] == peer and line["reason"] == "bad_auth"
            for line in _suppressed_lines(mesh.edge)
        ),
        "the edge to log the suppressed count",
    )
    (line,) = [line for line in _suppressed_lines(mesh.edge) if line["peer"] == peer]
    assert line["suppressed"] == BURST - 1

    # the signed message.rejected events say the same: an event per logged rejection,
    # plus the suppressed counts (the window_closed event stands for those only)
    def audited() -> int:
        rows = _rows(mesh, QueryFilter(origin="edge-1", kind="message.rejected"))
        mine = [r for r in rows if r.details.get("peer") == peer]
        return sum(
            int(r.details["suppressed"]) + (0 if r.details.get("window_closed") else 1)
            for r in mine
        )

    _wait(lambda: audited() >= BURST, "the edge's rejection events in the cloud log")
    assert audited() == BURST


# ---------------------------------------------------------------------------------- 8d


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/environ")
def test_running_daemons_keep_no_passphrase_in_their_environment(mesh: Mesh) -> None:
    for name, pid in mesh.pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert PASSPHRASE.encode() not in environ, name
        assert b"SECUREMESH_PASSPHRASE=" not in environ, name
        assert b"PYTHONPATH=" in environ, name  # the rest of the environment is intact


# ---------------------------------------------------------------------------------- 8c


def test_every_sqlite_file_of_the_daemons_is_owner_only(mesh: Mesh) -> None:
    found = {}
    for data_dir in (mesh.cloud, mesh.edge, mesh.dev_a, mesh.dev_b):
        for path in data_dir.rglob("*"):
            if path.name.endswith((".db", ".db-wal", ".db-shm", ".db-journal")):
                found[str(path.relative_to(data_dir.parent))] = stat.S_IMODE(path.stat().st_mode)
    names = {Path(p).name for p in found}
    assert {"tokens.db", "tokens.db-wal", "audit.db", "audit-outbox.db"} <= names, found
    assert found == dict.fromkeys(found, 0o600)
