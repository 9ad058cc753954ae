"""Set-up for the resource-exhaustion attacks on real daemons (issue 9 #3, #4, #5, #8).

What ``test_resources.py`` needs beyond the shared adversarial harness
(``tests/adversarial/harness.py``: passphrase, ids, p99/RSS limits, :func:`wait_until`,
:class:`~harness.RssWatch`) and ``tests/daemon_support.py`` (:func:`init_cloud`,
:func:`enroll_edge`, :func:`end_token`):

* :func:`edge_mesh` — a cloud daemon and a delegated edge daemon set up the
  operator way (``init``, ``token create --delegate``, ``enroll``, ``node run``)
  with optional extra ``[limits]`` for the edge and an optional
  ``RLIMIT_NOFILE`` for its process; an honest SDK device and an enrolled
  *attacker* device (its keys on disk, used from raw pyzmq).
* :class:`Attacker` — the compromised device: its CURVE keys, signer and node id,
  raw DEALER sockets and signed envelopes built with the public wire API.
* :func:`greeting_then_big_frame` — an outsider's raw TCP bytes: a ZMTP 3.0
  greeting announcing CURVE, then the header of a 16 MiB command frame.
* :class:`Prober` — the honest device pinging its edge in a thread, for p99.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from daemon_support import (
    Daemons,
    daemon_env,
    end_token,
    enroll_edge,
    free_port,
    init_cloud,
    log_path,
    reaped,
)
from harness import EDGE_ID as EDGE
from harness import FAST_KDF, PASSPHRASE, wait_until
from harness import raw_tcp as _raw_tcp

from securemesh.crypto.identity import NodeIdentity
from securemesh.messages import MESH_PING, Ack
from securemesh.sdk import Device
from securemesh.wire import Flags, encode_signed


@dataclass
class Attacker:
    """An enrolled device whose keys the attacker holds; talks through raw pyzmq."""

    node_id: str
    identity: NodeIdentity
    endpoint: str
    server_key: bytes
    ctx: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)
    sequence: int = 1 << 40  # above anything the SDK used during enrollment

    def dealer(self, *, rcvhwm: int = 1000, rcvbuf: int = -1) -> zmq.Socket[bytes]:
        """A raw CURVE DEALER to the edge with this device's keys (the caller reads or not)."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf > 0:
            sock.setsockopt(zmq.RCVBUF, rcvbuf)
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.identity.curve_public
        sock.curve_secretkey = self.identity.curve_secret_z85().encode("ascii")
        sock.connect(self.endpoint)
        return sock

    def ping(self, *, request: bool, msg_type: str = MESH_PING) -> list[bytes]:
        """A validly signed ``mesh.ping`` (or ``msg_type``) to the edge, REQUEST or one-way."""
        self.sequence += 1
        frames = encode_signed(
            msg_type=msg_type,
            sender=self.node_id,
            recipient=EDGE,
            sequence=self.sequence,
            timestamp_ms=int(time.time() * 1000),
            body=Ack(),
            signer=self.identity.signer,
            correlation_id=secrets.token_bytes(16) if request else bytes(16),
            flags=Flags.REQUEST if request else Flags.NONE,
        )
        return [bytes(f) for f in frames]

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def greeting_then_big_frame(size: int = 16 * 1024 * 1024 - 64) -> bytes:
    """ZMTP 3.0 greeting (RFC 23) for CURVE as client, then a long command-frame header."""
    greeting = (
        b"\xff" + bytes(8) + b"\x7f"  # signature
        + b"\x03\x00"  # version 3.0
        + b"CURVE".ljust(20, b"\x00")  # mechanism
        + b"\x00"  # as-server: no
        + bytes(31)  # filler
    )  # fmt: skip
    return greeting + b"\x06" + struct.pack(">Q", size)  # command | long, 8-byte size


@dataclass(frozen=True)
class FloodSpec:
    """What the flooding child process needs (picklable)."""

    identity_path: str
    node_id: str
    endpoint: str
    server_key: bytes
    connections: int


def _flood(spec: FloodSpec, stop: Any) -> None:
    """In a child process: send 1,024-message batches of signed one-way pings as fast
    as the edge takes them, over ``connections`` sockets, until ``stop`` is set."""
    from securemesh.transport._zmq import pack_batch

    identity = NodeIdentity.load(spec.identity_path, PASSPHRASE)
    attacker = Attacker(spec.node_id, identity, spec.endpoint, spec.server_key)
    batches = [
        [b"", pack_batch([attacker.ping(request=False) for _ in range(1024)])] for _ in range(8)
    ]
    socks = [attacker.dealer() for _ in range(spec.connections)]
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLOUT)
    n = 0
    while not stop.is_set():
        for sock, _ in poller.poll(100):
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(batches[n % len(batches)], zmq.NOBLOCK)
                n += 1
    attacker.close()


@contextlib.contextmanager
def batch_flood(mesh: EdgeMesh, connections: int = 4) -> Iterator[None]:
    """The attacker device floods the edge with batches from a separate process."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    spec = FloodSpec(
        str(mesh.root / "attacker" / "identity.key"),
        mesh.attacker.node_id,
        mesh.endpoint,
        mesh.edge_curve_key,
        connections,
    )
    proc = ctx.Process(target=_flood, args=(spec, stop), daemon=True)
    proc.start()
    try:
        yield
    finally:
        stop.set()
        proc.join(timeout=20)
        if proc.is_alive():
            proc.kill()
            proc.join()


class Prober:
    """The honest device pings its edge in a thread; round trips are collected."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self.rtts: list[float] = []
        self.failures: list[str] = []
        self._mark = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self._device.request(EDGE, MESH_PING, {}, timeout=5)
            except Exception as exc:  # counted: a failure is an over-budget round trip
                self.failures.append(repr(exc))
                self.rtts.append(5.0)
            else:
                self.rtts.append(time.monotonic() - start)
            self._stop.wait(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def mark(self) -> None:
        """The attack starts now: :meth:`p99` counts only the probes from here."""
        self._mark = len(self.rtts)

    def more(self, n: int, what: str, timeout: float = 90.0) -> None:
        """Wait until ``n`` more probes have completed."""
        seen = len(self.rtts)
        wait_until(lambda: len(self.rtts) >= seen + n, timeout, f"{n} probes {what}")

    def p99(self) -> float:
        rtts = self.rtts[self._mark :]
        assert len(rtts) >= 20, f"too few probes: {len(rtts)}"
        ordered = sorted(rtts)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class EdgeMesh:
    root: Path
    cloud_dir: Path
    edge_dir: Path
    daemons: Daemons
    edge_proc: subprocess.Popen[bytes]
    endpoint: str
    edge_curve_key: bytes
    honest: Device
    attacker: Attacker

    @property
    def edge_pid(self) -> int:
        return self.edge_proc.pid

    def edge_log(self) -> str:
        return log_path(self.edge_dir).read_text(errors="replace")


def _enroll(mesh_edge_dir: Path, data_dir: Path, node_id: str) -> None:
    Device.enroll(
        end_token(mesh_edge_dir, "sensor"), data_dir=data_dir, node_id=node_id,
        passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=30,
    )  # fmt: skip


def _start_edge(daemons: Daemons, edge_dir: Path, nofile: int | None) -> subprocess.Popen[bytes]:
    """Start the edge daemon like daemon_support does, with RLIMIT_NOFILE if asked."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path(edge_dir), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "securemesh", "node", "run", "--config",
             str(edge_dir / "node.toml")],
            env=daemons.env, stdout=subprocess.DEVNULL, stderr=log,
            preexec_fn=limit,  # noqa: PLW1509 - only sets an rlimit, before exec
        )  # fmt: skip
    daemons.procs["edge"] = proc
    daemons.dirs["edge"] = edge_dir
    daemons.wait_ready("edge")
    return proc


@contextlib.contextmanager
def edge_mesh(
    root: Path, *, edge_limits: str = "", edge_nofile: int | None = None
) -> Iterator[EdgeMesh]:
    """Cloud + delegated edge daemons, an honest SDK device and an attacker device.

    ``edge_limits`` are extra ``key = value`` lines for the edge's ``[limits]``.
    Everything started here is reaped on exit.
    """
    cloud_dir, edge_dir = root / "cloud", root / "edge"
    edge_port = free_port()
    with reaped(daemon_env(passphrase=PASSPHRASE)) as daemons:
        init_cloud(cloud_dir, PASSPHRASE, top="status_interval = 0.2\n")
        daemons.run("cloud", cloud_dir)
        enroll_edge(
            cloud_dir, edge_dir, EDGE, PASSPHRASE, listen=f"tcp://127.0.0.1:{edge_port}",
            top="status_interval = 0.2\n",
            tables="\n[limits]\n" + edge_limits + "\n" if edge_limits else "",
        )  # fmt: skip
        if edge_limits:  # enroll wrote no [limits] table of its own
            assert (edge_dir / "node.toml").read_text().count("[limits]") == 1
        proc = _start_edge(daemons, edge_dir, edge_nofile)
        _enroll(edge_dir, root / "honest", f"{EDGE}.honest")
        _enroll(edge_dir, root / "attacker", f"{EDGE}.attacker")
        identity = NodeIdentity.load(root / "attacker" / "identity.key", PASSPHRASE)
        edge_identity = NodeIdentity.load(edge_dir / "identity.key", PASSPHRASE)
        attacker = Attacker(
            node_id=f"{EDGE}.attacker",
            identity=identity,
            endpoint=f"tcp://127.0.0.1:{edge_port}",
            server_key=edge_identity.curve_public,
        )
        honest = Device.connect(root / "honest", passphrase=PASSPHRASE)
        try:
            honest.request(EDGE, MESH_PING, {}, timeout=20)  # connected and served
            yield EdgeMesh(
                root, cloud_dir, edge_dir, daemons, proc, attacker.endpoint,
                edge_identity.curve_public, honest, attacker,
            )  # fmt: skip
        finally:
            honest.close()
            attacker.close()


def raw_tcp(port: int) -> socket.socket:
    """:func:`harness.raw_tcp` to a loopback port, closed with a RST (SO_LINGER 0)."""
    sock = _raw_tcp(f"tcp://127.0.0.1:{port}", timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])
