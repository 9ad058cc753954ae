"""The adversarial suite's harness: a real mesh set up the operator way, and attackers.

What it gives a test
--------------------
:func:`operator_mesh` builds a mesh exactly as an operator would, through the
CLI and ``securemesh node run`` processes (reusing ``tests/daemon_support.py``):

* ``securemesh init`` → the **cloud** daemon (``cloud-1``, the root authority);
* ``securemesh token create --tier edge --delegate`` at the cloud, then
  ``securemesh enroll`` → the **edge** daemon (``edge-1``, with a delegated
  authority for ``end`` devices in its namespace ``edge-1.*``);
* SDK **devices** enroll at the edge with ``end`` tokens
  (:meth:`Mesh.enroll_device`) and connect (:meth:`Mesh.connect`).

Both daemons load :mod:`adversarial_services` (``app.echo``, ``app.sink``) and
allow ``app.*``; they tick fast (``status_interval``, ``heartbeat_interval``,
``revocation_sync_interval``, see :data:`FAST_TOML`) so tests wait on
``status.json`` rather than on sleeps. Every daemon is reaped when the
``with`` block ends, also on failure. One mesh per test module is the norm
(``tests/adversarial/conftest.py`` has a module-scoped ``mesh`` fixture);
a test that restarts or revokes must leave the mesh serving and use its own
device ids.

Attackers
---------
* :class:`Attacker` — raw pyzmq DEALER with CURVE, built from a **join
  token's first-contact key** (:meth:`Attacker.with_token`: a token holder) or
  from a **compromised device's keys** (:meth:`Attacker.with_device_keys`),
  aimed at any daemon. :meth:`Attacker.handshake` says whether the target's
  ZAP admitted the key (socket monitor, no guessing); :meth:`Attacker.send`
  and :meth:`Attacker.recv` move raw multipart frames, so a test can send
  anything the wire format allows — or does not.
* :func:`raw_tcp` — a plain TCP socket to a daemon's endpoint (an outsider
  with no key at all; garbage greetings, half-open handshakes).
* :func:`signed_frames` — a SIGNED envelope with any header fields (claimed
  sender, sequence, timestamp) signed by any key.

The three assertions of every attack
------------------------------------
1. the attack fails (the test's own check);
2. an honest device on the same edge keeps its p99 round trip under
   :data:`P99_LIMIT_S` during the attack: ``with RoundTrips(device) as rt:
   ...attack...`` then ``rt.assert_p99()``;
3. daemon RSS growth stays under :data:`RSS_GROWTH_LIMIT`: ``with
   RssWatch(mesh.pid("edge")) as rss: ...`` then ``rss.assert_bounded()``.

:func:`attack_seconds` is how long a sustained attack runs: short by default,
longer with ``pytest --adversarial-long`` (registered in ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from daemon_support import (
    Daemons,
    cli,
    daemon_env,
    enroll_edge,
    free_port,
    init_cloud,
    read_status,
    reaped,
    wait_status,
)
from zmq.utils.monitor import recv_monitor_message

from securemesh.crypto import keystore
from securemesh.crypto.certs import SignedCertificate
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_decode
from securemesh.enroll import JoinToken
from securemesh.node import NodeConfig
from securemesh.sdk import Device
from securemesh.wire import Flags, encode_signed

HERE = Path(__file__).parent
PASSPHRASE = "adversarial-test-passphrase"
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
FAST_KDF = keystore.UNSAFE_FAST_PARAMS
#: The honest device's p99 round trip must stay below this during an attack.
P99_LIMIT_S = 0.5
#: A daemon's resident memory may grow at most this much during an attack.
RSS_GROWTH_LIMIT = 128 * 1024 * 1024
#: Top-level ``node.toml`` keys the harness prepends: fast ticks, test services.
FAST_TOML = (
    'services = ["adversarial_services:register"]\n'
    "status_interval = 0.2\n"
    "heartbeat_interval = 0.5\n"
) + (
    # (only where the option exists, so the suite also runs against older code
    # to show that its tests fail there)
    "revocation_sync_interval = 1.0\n"
    if "revocation_sync_interval" in NodeConfig.model_fields
    else ""
)
POLICY_TOML = '\n[[policy.allow]]\ntypes = ["app.*"]\n'
CLOUD_ID, EDGE_ID = "cloud-1", "edge-1"

_long = [False]


def set_long(enabled: bool) -> None:
    """Called by the conftest from ``--adversarial-long``."""
    _long[0] = enabled


def attack_seconds(short: float = 3.0, long: float = 60.0) -> float:
    """How long a sustained attack runs (``--adversarial-long`` selects ``long``)."""
    return long if _long[0] else short


# ------------------------------------------------------------------------ the mesh


@dataclass
class Mesh:
    """A cloud and an edge daemon, set up the operator way; see the module docstring."""

    root: Path
    cloud_dir: Path
    edge_dir: Path
    daemons: Daemons
    endpoints: dict[str, str] = field(default_factory=dict)
    curve_keys: dict[str, bytes] = field(default_factory=dict)

    def dir(self, name: str) -> Path:
        return {"cloud": self.cloud_dir, "edge": self.edge_dir}[name]

    # -- daemons
    def pid(self, name: str) -> int:
        return self.daemons.procs[name].pid

    def status(self, name: str) -> dict[str, Any]:
        return read_status(self.dir(name))

    def wait_status(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
        what: str = "status condition",
    ) -> dict[str, Any]:
        return wait_status(self.dir(name), predicate, timeout, what)

    def stop(self, name: str) -> None:
        assert self.daemons.stop(name) == 0, f"{name} did not stop cleanly"

    def start(self, name: str) -> None:
        """Start ``name`` again and wait until it is ready (and, for the edge, connected)."""
        self.daemons.run(name, self.dir(name))
        if name == "edge":
            self.wait_edge_connected()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def wait_edge_connected(self, timeout: float = 30.0) -> None:
        self.wait_status(
            "edge",
            lambda s: bool(s["parent"] and s["parent"]["connected"]),
            timeout,
            "the edge to be connected to the cloud",
        )

    def rejections(self, name: str) -> dict[str, int]:
        return dict(self.status(name)["counters"]["rejections"])

    def rl_version(self, name: str) -> int:
        return int(self.status(name)["revocation_list_versions"].get("root", 0))

    # -- operator actions
    def token(
        self, *, at: str = "edge", tier: str = "end", roles: str = "sensor", delegate: bool = False
    ) -> str:
        """``securemesh token create`` at ``at`` (the daemon admits its key on its next tick)."""
        return cli(
            "token", "create", "--data-dir", str(self.dir(at)), "--tier", tier,
            "--roles", roles, "--ttl", "10m", *(["--delegate"] if delegate else []),
        )  # fmt: skip

    def revoke(self, *node_ids: str) -> None:
        """``securemesh revoke`` on the cloud's data dir (works while the cloud is down)."""
        cli("revoke", "--data-dir", str(self.cloud_dir), *node_ids, env=ENV)

    def enroll_device(self, node_id: str, *, at: str = "edge") -> Path:
        """Enroll an SDK device (``edge-1.<name>`` at the edge) into its own data dir."""
        data_dir = self.root / "devices" / node_id
        Device.enroll(
            self.token(at=at), data_dir=data_dir, node_id=node_id,
            passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=30,
        )  # fmt: skip
        return data_dir

    def connect(self, data_dir: Path, *, timeout: float = 20.0) -> Device:
        """Connect an enrolled device; returns once its parent answered its hello."""
        dev = Device.connect(data_dir, passphrase=PASSPHRASE)
        try:
            dev.wait_connected(timeout)
        except BaseException:
            dev.close()
            raise
        return dev


def _curve_key(data_dir: Path) -> bytes:
    return (
        SignedCertificate.from_bytes((data_dir / "node.cert").read_bytes())
        .unverified_certificate()
        .curve_key
    )


@contextlib.contextmanager
def operator_mesh(root: Path, *, services: Sequence[str] = (), tables: str = "") -> Iterator[Mesh]:
    """``init`` → cloud daemon → delegated edge token → ``enroll`` → edge daemon; reaped on exit.

    ``services`` are loaded after the test services, ``tables`` appended to
    both ``node.toml`` files (e.g. the HE service and its ``[[policy.allow]]``).
    """
    from securemesh.cli import _mesh as mesh_cli  # the KDF knob tests/enroll use too

    cloud_dir, edge_dir = root / "cloud", root / "edge"
    cloud_ep = f"tcp://127.0.0.1:{free_port()}"
    edge_ep = f"tcp://127.0.0.1:{free_port()}"
    saved_kdf = mesh_cli._KDF_PARAMS
    mesh_cli._KDF_PARAMS = FAST_KDF  # key files the daemons open in milliseconds
    names = ", ".join(f'"{name}"' for name in ("adversarial_services:register", *services))
    top = FAST_TOML.replace('services = ["adversarial_services:register"]', f"services = [{names}]")
    with (
        contextlib.ExitStack() as restore,
        reaped(daemon_env(pythonpath=[HERE], passphrase=PASSPHRASE)) as daemons,
    ):
        restore.callback(setattr, mesh_cli, "_KDF_PARAMS", saved_kdf)
        init_cloud(
            cloud_dir, PASSPHRASE, node_id=CLOUD_ID, listen=cloud_ep,
            top=top, tables=POLICY_TOML + tables,
        )  # fmt: skip
        daemons.run("cloud", cloud_dir)
        mesh = Mesh(root, cloud_dir, edge_dir, daemons)
        # the edge gets a delegated authority: it enrolls devices itself (edge-1.*)
        enroll_edge(
            cloud_dir, edge_dir, EDGE_ID, PASSPHRASE, listen=edge_ep,
            top=top, tables=POLICY_TOML + tables,
        )  # fmt: skip
        daemons.run("edge", edge_dir)
        mesh.endpoints = {"cloud": cloud_ep, "edge": edge_ep}
        mesh.curve_keys = {"cloud": _curve_key(cloud_dir), "edge": _curve_key(edge_dir)}
        mesh.wait_edge_connected()
        try:
            yield mesh
        finally:
            shutil.rmtree(root / "devices", ignore_errors=True)


# ------------------------------------------------------------------------ attackers


class Attacker:
    """A raw pyzmq CURVE client (DEALER) with keys of the attacker's choosing.

    Nothing of SecureMesh's own transport is used: what it sends is exactly
    the frames given. Close it (or use it as a context manager).
    """

    def __init__(
        self, endpoint: str, server_key: bytes, public: bytes, secret: bytes, *, label: str
    ) -> None:
        self.label = label
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.sock.curve_serverkey = server_key
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = secret
        self.sock.connect(endpoint)

    @classmethod
    def with_token(cls, token_text: str) -> Attacker:
        """A join-token holder: the token's first-contact CURVE key, at the token's server."""
        token = JoinToken.decode(token_text.strip())
        pair = token.first_contact_curve_keypair()
        return cls(token.endpoint, token.server_key, pair.public, pair.secret, label="token")

    @classmethod
    def admitted_token(cls, token_text: str, timeout: float = 30.0) -> Attacker:
        """:meth:`with_token`, on fresh sockets until the server admits the token's key.

        A daemon admits a new token's key on its next tick, and libzmq does not
        retry after a ZAP refusal, so a refused socket is replaced.
        """
        deadline = time.monotonic() + timeout
        while True:
            attacker = cls.with_token(token_text)
            if attacker.handshake(max(1.0, deadline - time.monotonic())):
                return attacker
            attacker.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"the token's key was not admitted in {timeout} s")
            time.sleep(0.05)

    @classmethod
    def with_device_keys(cls, data_dir: Path, endpoint: str, server_key: bytes) -> Attacker:
        """A compromised device: its own CURVE key pair, aimed at ``endpoint``."""
        identity = NodeIdentity.load(data_dir / "identity.key", PASSPHRASE)
        return cls(
            endpoint,
            server_key,
            identity.curve_public,
            _z85_secret(identity),
            label="device",
        )

    def handshake(self, timeout: float = 10.0) -> bool:
        """True if the target admitted our key, False if its ZAP refused it (monitor events)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.monitor.poll(int(remaining * 1000)):
                break
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return True
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return False
        raise AssertionError(f"{self.label}: no handshake outcome in {timeout} s")

    def send(self, frames: Sequence[bytes | memoryview]) -> None:
        self.sock.send_multipart([bytes(f) for f in frames], copy=True)

    def recv(self, timeout: float) -> list[bytes] | None:
        """The next message, or None after ``timeout`` seconds."""
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return list(self.sock.recv_multipart())
        return None

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _z85_secret(identity: NodeIdentity) -> bytes:
    return z85_decode(identity.curve_secret_z85())


def raw_tcp(endpoint: str, timeout: float = 5.0) -> socket.socket:
    """A plain TCP socket connected to a ``tcp://host:port`` endpoint (no ZeroMQ, no keys)."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def signed_frames(
    signer: NodeIdentity,
    *,
    msg_type: str,
    sender: str,
    recipient: str,
    body: bytes | Any = b"{}",
    sequence: int,
    timestamp_ms: int | None = None,
    flags: Flags = Flags.REQUEST,
    correlation_id: bytes | None = None,
) -> list[bytes]:
    """A SIGNED envelope with whatever header the attacker claims, signed by ``signer``."""
    return [
        bytes(f)
        for f in encode_signed(
            msg_type=msg_type,
            sender=sender,
            recipient=recipient,
            sequence=sequence,
            timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            body=body,
            signer=signer.signer,
            flags=flags,
            correlation_id=os.urandom(16) if correlation_id is None else correlation_id,
        )
    ]


# ------------------------------------------------------------ honest load, memory


class RoundTrips:
    """An honest device's request round trips, measured in a thread while an attack runs.

    ``with RoundTrips(device, dest="edge-1") as rt: ...`` sends ``app.echo``
    requests back to back until the block ends; :attr:`times` are the round
    trips in seconds and :attr:`failures` the requests that failed or timed
    out. :meth:`assert_p99` checks the p99 bound and that nothing failed.
    """

    def __init__(self, device: Device, *, dest: str = EDGE_ID, timeout: float = 5.0) -> None:
        self.device = device
        self.dest = dest
        self.timeout = timeout
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="honest-load", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            start = time.perf_counter()
            try:
                self.device.request(self.dest, "app.echo", {"n": n}, timeout=self.timeout)
            except Exception as exc:
                self.failures.append(repr(exc))
                continue
            self.times.append(time.perf_counter() - start)

    def __enter__(self) -> RoundTrips:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def p99(self) -> float:
        ordered = sorted(self.times)
        assert ordered, f"no honest round trip completed; failures: {self.failures[:3]}"
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def assert_p99(self, limit: float = P99_LIMIT_S, min_samples: int = 10) -> None:
        assert not self.failures, f"honest requests failed during the attack: {self.failures[:3]}"
        assert len(self.times) >= min_samples, f"only {len(self.times)} honest round trips"
        p99 = self.p99()
        # the figure, for docs/threat-model.md (shown with pytest -s)
        print(f"honest p99 {p99 * 1000:.1f} ms over {len(self.times)} round trips to {self.dest}")
        assert p99 < limit, f"honest p99 {p99 * 1000:.1f} ms >= {limit * 1000:.0f} ms"


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/PID/status``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssWatch:
    """A daemon's RSS before and at most during a block (sampled in a thread every 50 ms)."""

    def __init__(self, pid: int, *, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(FileNotFoundError, AssertionError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError, AssertionError):
            self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def assert_bounded(self, limit: int = RSS_GROWTH_LIMIT) -> None:
        print(
            f"RSS of pid {self.pid}: {self.baseline / 2**20:.1f} MiB, "
            f"peak growth {self.growth / 2**20:.1f} MiB"
        )
        assert self.growth < limit, (
            f"RSS of pid {self.pid} grew by {self.growth / 2**20:.1f} MiB "
            f"(from {self.baseline / 2**20:.1f} MiB) >= {limit / 2**20:.0f} MiB"
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` (a bounded wait on a condition, never a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.02)


__all__ = [
    "CLOUD_ID",
    "EDGE_ID",
    "P99_LIMIT_S",
    "RSS_GROWTH_LIMIT",
    "Attacker",
    "Mesh",
    "RoundTrips",
    "RssWatch",
    "attack_seconds",
    "operator_mesh",
    "raw_tcp",
    "rss_bytes",
    "signed_frames",
    "wait_until",
]
