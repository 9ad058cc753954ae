"""``securemesh demo``: a whole mesh on this machine, end to end, in real processes.

Theory of operation
-------------------
:func:`run_demo` plays an operator and a device, using only what a real
deployment uses — the ``securemesh`` CLI as subprocesses, node daemons as
separate processes over CurveZMQ on 127.0.0.1, and the Device SDK in-process:

1. ``securemesh init``: a mesh authority and the cloud node (data dirs in a
   fresh temporary directory; a random passphrase made for this run, passed to
   the children in ``$SECUREMESH_PASSPHRASE`` and never printed);
2. the cloud daemon starts (it runs the audit log: SQLite, log key created at
   first start);
3. an edge token with a delegated authority; the edge enrolls and its daemon
   starts (it connects to the cloud);
4. a device enrolls with a token created by the edge (SDK ``Device``);
5. the device sends sensor readings to the edge (one-way) and the edge
   confirms the count;
6. the device asks the *cloud* to add numbers (``demo.sum``): routed
   device → edge → cloud and back, verified at every hop (median RTT);
   then it renews its certificate over the bus (``cert.renew`` to the edge);
7. an attacker holding the device's connection sends a forged envelope (bad
   signature) and replays a valid one: both rejected and counted by the edge;
8. ``securemesh revoke`` on the cloud: the device is cut off live;
9. the audit events (enrollments, renewal, rejections, revocation) reach the cloud's
   log over the bus (``audit.append``);
10. ``securemesh audit verify`` checks the whole log, ``audit prove`` writes an
    offline proof of the revocation event and ``audit verify-proof`` checks it
    with only the log's public key.

Every step prints one line with a figure; the first failure stops the demo
with exit status 1. The daemons are always stopped (also on Ctrl-C) and the
temporary directory removed unless ``keep`` is set.

The demo services (``demo.reading``, ``demo.readings``, ``demo.sum``) are
:func:`register_services`, loaded by the daemons through ``services`` in
``node.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

from pydantic import Field

from securemesh.errors import SecureMeshError
from securemesh.messages import MeshMessage

if TYPE_CHECKING:
    from securemesh.node import MeshNode, VerifiedMessage
    from securemesh.sdk import Device

__all__ = ["DemoFailed", "register_services", "run_demo"]

CLOUD_ID = "cloud-1"
EDGE_ID = "edge-1"
DEVICE_ID = "edge-1.sensor-1"  # devices enrolled at an edge live in its namespace
READINGS = 20
ROUND_TRIPS = 20
_DEMO_TOML = 'services = ["securemesh.demo:register_services"]\nstatus_interval = 0.1\n'
_DEMO_POLICY = '\n[[policy.allow]]\ntypes = ["demo.*"]\n'
_DEMO_AUDIT = "\n[audit]\nship_interval = 0.1\nrequest_timeout = 2.0\nbackoff_max = 1.0\n"


class DemoFailed(SecureMeshError):
    """A demo step did not do what it should (the message says which and why)."""


# ---------------------------------------------------------------- the services


class Reading(MeshMessage):
    sensor: Annotated[str, Field(min_length=1, max_length=64)]
    value: float


class SumRequest(MeshMessage):
    values: list[int] = Field(max_length=1000)


class SumReply(MeshMessage):
    sum: int
    by: str


class ReadingCount(MeshMessage):
    readings: int


def register_services(node: MeshNode) -> None:
    """The demo's services: count readings per sender, report the count, add numbers."""
    readings: Counter[str] = Counter()

    def on_reading(msg: VerifiedMessage) -> None:
        msg.body(Reading)
        readings[msg.sender] += 1

    def on_count(msg: VerifiedMessage) -> ReadingCount:
        return ReadingCount(readings=readings[msg.sender])

    def on_sum(msg: VerifiedMessage) -> SumReply:
        return SumReply(sum=sum(msg.body(SumRequest).values), by=node.node_id)

    node.on("demo.reading", on_reading)
    node.on("demo.readings", on_count)
    node.on("demo.sum", on_sum)


# ------------------------------------------------------------------- plumbing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Demo:
    def __init__(self, root: Path, out: IO[str]) -> None:
        self.root = root
        self.out = out
        self.passphrase = secrets.token_urlsafe(24)  # never printed
        self.env = dict(os.environ, SECUREMESH_PASSPHRASE=self.passphrase)
        self.env.pop("SECUREMESH_AUDIT_DB", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cloud = root / "cloud"
        self.edge = root / "edge"
        self.device_dir = root / "device"
        self.logs = root / "logs"
        self.logs.mkdir()
        enc = (getattr(out, "encoding", None) or "ascii").lower()
        self.ok = "✔" if "utf" in enc else "ok"
        self.bad = "✘" if "utf" in enc else "FAILED"
        self.device: Device | None = None

    # ----------------------------------------------------------- helpers

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(  # noqa: S603 - our own CLI, argv built here
            [sys.executable, "-m", "securemesh", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise DemoFailed(f"`securemesh {' '.join(args[:2])}` failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def configure(self, data_dir: Path, *, extra: str = "") -> None:
        toml = data_dir / "node.toml"
        toml.write_text(_DEMO_TOML + toml.read_text() + _DEMO_POLICY + _DEMO_AUDIT + extra)

    def start(self, name: str, data_dir: Path, timeout: float = 30.0) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own daemon, argv built here
                [sys.executable, "-m", "securemesh", "node", "run", "--config",
                 str(data_dir / "node.toml")],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.procs[name] = proc
        self.wait(
            lambda: (data_dir / "ready").exists() or proc.poll() is not None,
            f"the {name} daemon to start",
            timeout,
        )
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
            raise DemoFailed(f"the {name} daemon exited: {tail}")

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out waiting for {what}")
            time.sleep(0.02)

    def status(self, data_dir: Path) -> dict[str, Any]:
        try:
            data = json.loads((data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def rejections(self, data_dir: Path) -> dict[str, int]:
        counters = self.status(data_dir).get("counters", {})
        rej = counters.get("rejections", {}) if isinstance(counters, dict) else {}
        return {str(k): int(v) for k, v in rej.items()} if isinstance(rej, dict) else {}

    def stop_all(self) -> None:
        if self.device is not None:
            with contextlib.suppress(Exception):  # best effort on the way out
                self.device.close(drain_timeout=1.0)
            self.device = None
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ------------------------------------------------------------- steps

    def step_init(self) -> str:
        self.cli(
            "init", "--data-dir", str(self.cloud), "--authority-id", "demo-root",
            "--cloud-node-id", CLOUD_ID, "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        self.configure(self.cloud)
        return f"authority 'demo-root', cloud node '{CLOUD_ID}' in {self.cloud}"

    def step_cloud(self) -> str:
        self.start("cloud", self.cloud)
        ready = json.loads((self.cloud / "ready").read_text())
        return f"listening on {ready['listen']}, audit log {self.cloud / 'audit.db'}"

    def step_edge(self) -> str:
        token = self.cli(
            "token", "create", "--data-dir", str(self.cloud), "--tier", "edge", "--delegate",
            "--ttl", "10m",
        )  # fmt: skip
        self.cli(
            "enroll", "--data-dir", str(self.edge), "--token", token, "--node-id", EDGE_ID,
            "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        self.configure(self.edge)
        self.start("edge", self.edge)

        def connected() -> bool:
            parent = self.status(self.edge).get("parent") or {}
            return bool(parent.get("connected"))

        self.wait(connected, "the edge to reach the cloud")
        rtt = self.status(self.edge)["parent"].get("rtt_ms")
        figure = f", link RTT {rtt:.1f} ms" if isinstance(rtt, int | float) else ""
        return f"'{EDGE_ID}' enrolled with a delegated authority, connected to the cloud{figure}"

    def step_device(self) -> str:
        from securemesh.sdk import Device  # noqa: PLC0415

        token = self.cli(
            "token", "create", "--data-dir", str(self.edge), "--tier", "end",
            "--roles", "sensor", "--ttl", "10m",
        )  # fmt: skip
        # the edge admits the token's key on its next status tick; until then
        # the handshake is refused and the client tries again
        info = Device.enroll(
            token, data_dir=self.device_dir, node_id=DEVICE_ID,
            passphrase=self.passphrase, timeout=20,
        )  # fmt: skip
        self.connect_device()
        return f"'{info.node_id}' enrolled at the edge (certificate issued by '{info.issuer}')"

    def connect_device(self) -> Device:
        from securemesh.sdk import Device  # noqa: PLC0415

        self.device = Device.connect(self.device_dir, passphrase=self.passphrase)
        return self.device

    def step_readings(self) -> str:
        dev = self.device
        assert dev is not None
        for i in range(READINGS):
            dev.send(EDGE_ID, "demo.reading", {"sensor": "temperature", "value": 20.0 + i / 10})
        count = 0
        deadline = time.monotonic() + 10
        while count < READINGS and time.monotonic() < deadline:
            count = dev.request(EDGE_ID, "demo.readings", {}, timeout=5).body(ReadingCount).readings
        if count != READINGS:
            raise DemoFailed(f"the edge counted {count} of {READINGS} readings")
        return f"{READINGS} signed readings sent, the edge counted {count}"

    def step_routed(self) -> str:
        dev = self.device
        assert dev is not None
        rtts: list[float] = []
        for n in range(ROUND_TRIPS):
            values = list(range(n + 10))
            t0 = time.perf_counter()
            reply = dev.request(CLOUD_ID, "demo.sum", {"values": values}, timeout=10)
            rtts.append(time.perf_counter() - t0)
            body = reply.body(SumReply)
            if body.sum != sum(values) or body.by != CLOUD_ID or reply.sender != CLOUD_ID:
                raise DemoFailed(f"wrong reply from the cloud: {body}")
        return (
            f"{ROUND_TRIPS} requests device → edge → cloud, verified at every hop, "
            f"median RTT {statistics.median(rtts) * 1000:.1f} ms"
        )

    def step_renew(self) -> str:
        dev = self.device
        assert dev is not None
        old = dev.certificate
        new = dev.renew(timeout=10)
        if new.serial == old.serial or new.not_after < old.not_after:
            raise DemoFailed("the renewed certificate is not newer")
        dev.request(CLOUD_ID, "demo.sum", {"values": [1]}, timeout=10)  # still verified upstream
        return (
            f"cert.renew answered by '{new.issuer}': serial {old.serial} → {new.serial}, "
            f"valid until {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(new.not_after))}"
        )

    def step_forgery(self) -> str:
        dev = self.device
        assert dev is not None
        dev.close()
        self.device = None
        before = self.rejections(self.edge)
        asyncio.run(self._attack())

        def counted() -> bool:
            now = self.rejections(self.edge)
            return all(now.get(r, 0) > before.get(r, 0) for r in ("bad_auth", "replayed"))

        self.wait(counted, "the edge to count the forged and the replayed message")
        dev = self.connect_device()
        dev.request(EDGE_ID, "demo.readings", {}, timeout=5)  # still served
        now = self.rejections(self.edge)
        return (
            f"forged signature rejected (bad_auth: {now['bad_auth']}), replay rejected "
            f"(replayed: {now['replayed']}); the device is still served"
        )

    async def _attack(self) -> None:
        """Use the device's own keys and connection: one forged, one replayed envelope."""
        from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415
        from securemesh.crypto.signing import Ed25519Signer  # noqa: PLC0415
        from securemesh.crypto.z85 import z85_decode  # noqa: PLC0415
        from securemesh.node import load_config  # noqa: PLC0415
        from securemesh.transport import CurveKeyPair, ZmqTransport  # noqa: PLC0415
        from securemesh.wire import SequenceCounter, encode_signed  # noqa: PLC0415

        config = load_config(self.device_dir / "node.toml")
        assert config.parent is not None
        identity = NodeIdentity.load(self.device_dir / "identity.key", self.passphrase)
        keypair = CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))
        with SequenceCounter(self.device_dir / "sequence.state") as counter:
            seq_forged, seq_valid = counter.next(), counter.next()

        def envelope(sequence: int, signer: Any) -> list[bytes]:
            return [
                bytes(f)
                for f in encode_signed(
                    msg_type="demo.reading",
                    sender=DEVICE_ID,
                    recipient=EDGE_ID,
                    sequence=sequence,
                    timestamp_ms=int(time.time() * 1000),
                    body=b'{"sensor":"temperature","value":99.0}',
                    signer=signer,
                )
            ]

        transport = ZmqTransport(keypair)
        try:
            server = config.parent.curve_key_bytes
            conn = await transport.connect(config.parent.endpoint, server)
            # a forged signature (someone else's key under the device's name)
            await conn.send(server, envelope(seq_forged, Ed25519Signer.generate()), timeout=5)
            # a valid envelope, captured and sent again
            valid = envelope(seq_valid, identity.signer)
            await conn.send(server, valid, timeout=5)
            await conn.send(server, valid, timeout=5)
            await asyncio.sleep(0.2)  # let the frames leave before the socket closes
        finally:
            await transport.close()

    def step_revoke(self) -> str:
        dev = self.device
        assert dev is not None
        t0 = time.monotonic()
        self.cli("revoke", "--data-dir", str(self.cloud), DEVICE_ID)
        deadline = t0 + 20
        while True:
            try:
                dev.request(EDGE_ID, "demo.readings", {}, timeout=0.5)
            except (TimeoutError, SecureMeshError, OSError):
                break
            if time.monotonic() > deadline:
                raise DemoFailed("the revoked device is still served")
        cut = time.monotonic() - t0
        versions = self.status(self.edge).get("revocation_list_versions")
        return f"'{DEVICE_ID}' revoked: cut off live after {cut:.2f} s (edge holds list {versions})"

    def log_rows(self) -> list[tuple[int, str, str, str, str]]:
        db = sqlite3.connect(f"file:{self.cloud / 'audit.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT idx, origin, kind, subject_id, details FROM audit_leaves ORDER BY idx"
            ).fetchall()
        finally:
            db.close()
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def _expected(self) -> dict[str, int | None]:
        want: dict[str, int | None] = {
            "edge enrolled": None,
            "device enrolled": None,
            "renewal audited": None,
            "forgery audited": None,
            "replay audited": None,
            "revocation audited": None,
        }
        for idx, origin, kind, subject, details in self.log_rows():
            reason = json.loads(details).get("reason") if kind == "message.rejected" else None
            if kind == "node.enrolled" and subject == EDGE_ID and origin == CLOUD_ID:
                want["edge enrolled"] = idx
            elif kind == "node.enrolled" and subject == DEVICE_ID and origin == EDGE_ID:
                want["device enrolled"] = idx
            elif kind == "cert.renewed" and subject == DEVICE_ID and origin == EDGE_ID:
                want["renewal audited"] = idx
            elif origin == EDGE_ID and subject == DEVICE_ID and reason == "bad_auth":
                want["forgery audited"] = idx
            elif origin == EDGE_ID and subject == DEVICE_ID and reason == "replayed":
                want["replay audited"] = idx
            elif kind == "cert.revoked" and subject == DEVICE_ID and origin == CLOUD_ID:
                want["revocation audited"] = idx
        return want

    def step_audit(self) -> str:
        self.wait(
            lambda: all(v is not None for v in self._expected().values()),
            "the audit events to reach the cloud log",
        )
        rows = self.log_rows()
        origins = sorted({r[1] for r in rows})
        kinds = Counter(r[2] for r in rows)
        shown = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
        return f"{len(rows)} signed events from {', '.join(origins)} in the log ({shown})"

    def step_verify(self) -> str:
        out = self.cli(
            "audit", "verify", "--db", str(self.cloud / "audit.db"),
            "--log-key-file", str(self.cloud / "audit-log.key"), "--no-state",
        )  # fmt: skip
        if not out.startswith("OK:"):
            raise DemoFailed(f"audit verify: {out}")
        return out.split(";")[0].removeprefix("OK: ")

    def step_proof(self) -> str:
        index = self._expected()["revocation audited"]
        assert index is not None
        proof = self.root / "revocation-proof.json"
        self.cli(
            "audit", "prove", str(index), "--out", str(proof), "--db",
            str(self.cloud / "audit.db"), "--log-key-file", str(self.cloud / "audit-log.key"),
        )  # fmt: skip
        pub = self.root / "log-key.pub"  # an auditor gets only the public key and the file
        shutil.copy(self.cloud / "audit-log.key.pub", pub)
        out = json.loads(self.cli("audit", "verify-proof", str(proof), "--log-key", str(pub)))
        if not out.get("ok") or out["event"]["kind"] != "cert.revoked":
            raise DemoFailed(f"verify-proof: {out}")
        return (
            f"entry {out['leaf_index']} (cert.revoked {DEVICE_ID}) proven in a tree of "
            f"{out['tree_size']} with only the log's public key ({proof.stat().st_size} B file)"
        )


def run_demo(*, keep: bool = False, out: IO[str] | None = None) -> int:
    """Run the demo; return 0 only if every step succeeded (see the module doc)."""
    stream = out if out is not None else sys.stdout
    root = Path(tempfile.mkdtemp(prefix="securemesh-demo-"))
    demo = _Demo(root, stream)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("mesh authority and cloud node created", demo.step_init),
        ("cloud daemon running", demo.step_cloud),
        ("edge enrolled and running", demo.step_edge),
        ("device enrolled at the edge", demo.step_device),
        ("sensor readings delivered", demo.step_readings),
        ("routed request answered by the cloud", demo.step_routed),
        ("device certificate renewed over the bus", demo.step_renew),
        ("forged and replayed messages rejected", demo.step_forgery),
        ("device revoked and cut off", demo.step_revoke),
        ("audit events in the cloud log", demo.step_audit),
        ("audit log verified", demo.step_verify),
        ("offline inclusion proof verified", demo.step_proof),
    ]
    start = time.monotonic()
    demo.say(f"SecureMesh demo — real processes on 127.0.0.1, working directory {root}")
    code = 0
    try:
        for n, (title, fn) in enumerate(steps, 1):
            t0 = time.monotonic()
            try:
                detail = fn()
            except (SecureMeshError, OSError, AssertionError, ValueError) as exc:
                demo.say(f" {demo.bad} {n:2}. {title}: {type(exc).__name__}: {exc}")
                code = 1
                break
            demo.say(f" {demo.ok} {n:2}. {title} — {detail} [{time.monotonic() - t0:.1f}s]")
    except KeyboardInterrupt:
        demo.say("interrupted: stopping the daemons")
        raise
    finally:
        demo.stop_all()
        if keep:
            demo.say(f"working directory kept (daemon logs in logs/): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - start
    if code == 0:
        demo.say(f"all {len(steps)} steps passed in {total:.1f}s")
    else:
        demo.say(f"demo FAILED after {total:.1f}s" + ("" if keep else " (rerun with --keep)"))
    return code
