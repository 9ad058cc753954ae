"""The whole bus end to end: a cloud daemon, two edge daemons and SDK devices on loopback.

Everything is real: ``securemesh init / token create / enroll / revoke`` (the
CLI code, run in-process), three ``securemesh node run`` processes over
CurveZMQ (cloud-1 <- edge-a, edge-b, each enrolled with a ``--delegate``
token so it enrolls devices itself), and devices built with
``from securemesh.sdk import Device`` that enroll with join tokens from their
edge. The edges issue device certificates for only :data:`LIFETIME` seconds,
so the devices renew at half-life while the module runs.

The tests share one mesh and run in file order (each also stands on its own):

1. enrollment of edges and devices (tokens are one-time);
2. request/reply device -> edge -> cloud, and device -> device across edges;
3. a broadcast from the cloud through both edges to every device;
4. certificate renewal at half-life, observed (never slept for);
5. revocation cutting a live device off within one broadcast, the others
   still served;
6. an edge enrolling a device while the cloud process is down, then the cloud
   restarting and the new device reaching it;
7. re-enrollment after expiry with a fresh token, keeping the data dir.

Never hangs: every wait is bounded, every daemon and device is closed/reaped
in the fixture's teardown, also on failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemons, cli, daemon_env, free_port, read_status, reaped, wait_status
from sdk_support import FAST_KDF, wait_until

from securemesh.crypto.certs import Certificate
from securemesh.errors import CertificateExpired, CertificateRevoked, TransportError
from securemesh.sdk import Device, Enrollment
from securemesh.wire import SequenceCounter

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
PASSPHRASE = "e2e-test-passphrase"
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
#: Seconds a device certificate issued (or renewed) by an edge is valid.
LIFETIME = 20
EDGES = ("edge-a", "edge-b")
#: Connected for the whole module (three on edge-a, two on edge-b).
DEVICES = {"edge-a": ("edge-a.d1", "edge-a.d2", "edge-a.d3"), "edge-b": ("edge-b.d1", "edge-b.d2")}
#: Enrolled with the others, then offline until its certificate expired.
SLEEPER = "edge-b.sleeper"
#: Revoked in test 5.
VICTIM = "edge-a.d3"
REQUEST_TIMEOUT = 10.0

SERVICES = 'services = ["sdk_daemon_services:register"]\nstatus_interval = 0.2\n'
EDGE_EXTRA = f"heartbeat_interval = 0.5\nissued_cert_lifetime = {LIFETIME}\n"
POLICY = '\n[[policy.allow]]\ntypes = ["app.*", "peer.*"]\n'


def configure(toml: Path, extra: str = "") -> None:
    """Load the test services, allow app.*/peer.* (deny by default otherwise)."""
    toml.write_text(SERVICES + extra + toml.read_text() + POLICY)


@dataclass
class Mesh:
    root: Path
    daemons: Daemons
    devices: dict[str, Device] = field(default_factory=dict)
    enrolled: dict[str, Enrollment] = field(default_factory=dict)
    #: app.news bodies each device received
    news: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: (wall time, certificate) per device renewal
    renewals: dict[str, list[tuple[float, Certificate]]] = field(default_factory=dict)
    #: a device token that was used already
    used_token: str = ""

    @property
    def cloud_dir(self) -> Path:
        return self.root / "cloud-1"

    def edge_dir(self, edge: str) -> Path:
        return self.root / edge

    def data_dir(self, device: str) -> Path:
        return self.root / "devices" / device

    def edge_of(self, device: str) -> str:
        return device.split(".", 1)[0]

    def live(self, *, but: tuple[str, ...] = ()) -> dict[str, Device]:
        return {name: dev for name, dev in self.devices.items() if name not in but}


def wait_ticks(data_dir: Path, after: float, ticks: int = 2) -> None:
    """Wait until the daemon completed ``ticks`` status ticks that began after ``after``
    (its tick re-reads the token store, admits peers and installs revocation lists,
    then writes status.json)."""
    seen = after
    for _ in range(ticks):
        status = wait_status(data_dir, lambda s, t=seen: s["written_at"] > t, what="a status tick")
        seen = float(status["written_at"])


def device_token(mesh: Mesh, edge: str) -> str:
    return cli(
        "token", "create", "--data-dir", str(mesh.edge_dir(edge)), "--tier", "end",
        "--roles", "sensor", "--ttl", "10m",
    )  # fmt: skip


def enroll(mesh: Mesh, name: str, token: str) -> Enrollment:
    return Device.enroll(
        token,
        data_dir=mesh.data_dir(name),
        node_id=name,
        passphrase=PASSPHRASE,
        kdf_params=FAST_KDF,
        timeout=REQUEST_TIMEOUT,
    )


def connect(mesh: Mesh, name: str) -> Device:
    dev = Device.connect(mesh.data_dir(name), passphrase=PASSPHRASE, connect_timeout=20)
    news = mesh.news.setdefault(name, [])
    renewals = mesh.renewals.setdefault(name, [])
    dev.on("app.news", lambda msg: news.append(msg.json()), tiers=["cloud"])
    dev.on("peer.ping", lambda msg: {"pong": name, "from": msg.sender}, tiers=["end"])
    dev.on_renewal(lambda cert: renewals.append((time.time(), cert)))
    mesh.devices[name] = dev
    return dev


def reserved_sequence(data_dir: Path) -> int:
    """The persisted bound of a (closed) device's envelope sequence counter."""
    counter = SequenceCounter(data_dir / "sequence.state")
    try:
        return counter.reserved
    finally:
        counter.close()


def whoami(dev: Device, dest: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    data = dev.request(dest, "app.whoami", {}, timeout=timeout).json()
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("e2e")
    with reaped(daemon_env(pythonpath=[HERE], passphrase=PASSPHRASE)) as daemons:
        m = Mesh(root, daemons)
        try:
            cli(
                "init", "--data-dir", str(m.cloud_dir), "--authority-id", "root",
                "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{free_port()}",
                env=ENV,
            )  # fmt: skip
            configure(m.cloud_dir / "node.toml")
            daemons.run("cloud-1", m.cloud_dir)
            for edge in EDGES:
                token = cli(
                    "token", "create", "--data-dir", str(m.cloud_dir), "--tier", "edge",
                    "--delegate", "--ttl", "10m",
                )  # fmt: skip
                cli(
                    "enroll", "--data-dir", str(m.edge_dir(edge)), "--token", token,
                    "--node-id", edge, "--listen", f"tcp://127.0.0.1:{free_port()}", env=ENV,
                )  # fmt: skip
                configure(m.edge_dir(edge) / "node.toml", EDGE_EXTRA)
                daemons.start(edge, m.edge_dir(edge))
            for edge in EDGES:
                daemons.wait_ready(edge)
            # one token per device, created at its edge; the edge admits the tokens'
            # first-contact keys on its next status tick
            tokens: dict[str, str] = {}
            for edge, names in DEVICES.items():
                for name in names:
                    tokens[name] = device_token(m, edge)
            tokens[SLEEPER] = device_token(m, "edge-b")
            created = time.time()
            for edge in EDGES:
                wait_ticks(m.edge_dir(edge), created)
            for name, token in tokens.items():
                m.enrolled[name] = enroll(m, name, token)
            m.used_token = tokens[DEVICES["edge-a"][0]]
            for names in DEVICES.values():
                for name in names:
                    connect(m, name)
            # the sleeper runs once (writes its state), then stays offline
            with Device.connect(m.data_dir(SLEEPER), passphrase=PASSPHRASE) as dev:
                assert dev.request("edge-b", "app.echo", {"hello": 1}, timeout=10).json()["by"]
            (m.data_dir(SLEEPER) / "app-data.json").write_text('{"readings": [1, 2, 3]}')
            yield m
        finally:  # close every device (then the daemons are reaped), whatever failed
            failures: list[BaseException] = []
            for dev in m.devices.values():
                try:
                    dev.close(drain_timeout=1.0)
                except Exception as exc:  # closing the others matters more
                    failures.append(exc)
            if failures:
                raise failures[0]
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("securemesh-sdk")]
    assert not leftover, f"SDK threads not reaped: {leftover}"


# ----------------------------------------------------------------------------- 1


def test_edges_and_devices_enroll_with_one_time_join_tokens(mesh: Mesh) -> None:
    for edge in EDGES:
        status = read_status(mesh.edge_dir(edge))
        assert status["parent"]["node_id"] == "cloud-1"
        assert status["tier"] == "edge"
        assert (mesh.edge_dir(edge) / "delegation.cert").exists()
    for name in [*DEVICES["edge-a"], *DEVICES["edge-b"], SLEEPER]:
        info = mesh.enrolled[name]
        edge = mesh.edge_of(name)
        assert (info.node_id, info.tier, info.roles, info.issuer) == (
            name,
            "end",
            ("sensor",),
            edge,
        )
        assert info.new_keys
        files = {p.name for p in mesh.data_dir(name).iterdir()}
        assert {"identity.key", "node.cert", "trust.json", "node.toml", "sequence.state"} <= files
    for name, dev in mesh.devices.items():
        assert dev.state == "connected"
        assert dev.parent_id == mesh.edge_of(name)
        cert = dev.certificate
        assert cert.not_after - cert.not_before == LIFETIME  # the edges' issued_cert_lifetime
    # a join token works once: the edge no longer admits its key
    with pytest.raises(TransportError):
        Device.enroll(
            mesh.used_token,
            data_dir=mesh.root / "devices" / "again",
            node_id="edge-a.again",
            passphrase=PASSPHRASE,
            kdf_params=FAST_KDF,
            timeout=1.0,
        )


# ----------------------------------------------------------------------------- 2


def test_request_reply_device_edge_cloud_and_device_to_device(mesh: Mesh) -> None:
    for name, dev in mesh.devices.items():
        edge = mesh.edge_of(name)
        at_edge = dev.request(edge, "app.echo", {"n": 1}, timeout=REQUEST_TIMEOUT).json()
        assert at_edge == {"by": edge, "from": name, "body": {"n": 1}}
        # routed device -> edge -> cloud, verified at every hop, the reply back down
        reply = dev.request("cloud-1", "app.echo", {"n": 2}, timeout=REQUEST_TIMEOUT)
        assert reply.json() == {"by": "cloud-1", "from": name, "body": {"n": 2}}
        assert reply.certificate is not None
        assert reply.certificate.tier.value == "cloud"
        assert whoami(dev, "cloud-1")["serial"] == dev.certificate.serial
    # device to device, across the two edges and on one edge: the first message
    # gets through although no hop on the way knew the other device yet
    a1, a2, b1 = (mesh.devices[n] for n in ("edge-a.d1", "edge-a.d2", "edge-b.d1"))
    assert a1.request("edge-b.d1", "peer.ping", {}, timeout=REQUEST_TIMEOUT).json() == {
        "pong": "edge-b.d1",
        "from": "edge-a.d1",
    }
    assert b1.request("edge-a.d2", "peer.ping", {}, timeout=REQUEST_TIMEOUT).json() == {
        "pong": "edge-a.d2",
        "from": "edge-b.d1",
    }
    assert a2.request("edge-a.d1", "peer.ping", {}, timeout=REQUEST_TIMEOUT).json()["pong"] == (
        "edge-a.d1"
    )
    for name, dev in mesh.devices.items():
        counters = dev.status()["counters"]
        assert isinstance(counters, dict)
        assert counters["rejections"] == {}, name


# ----------------------------------------------------------------------------- 3


def test_broadcast_from_the_cloud_reaches_both_edges_and_every_device(mesh: Mesh) -> None:
    sender = mesh.devices["edge-b.d2"]
    before = {name: len(got) for name, got in mesh.news.items()}
    reply = sender.request("cloud-1", "app.broadcast", {"news": 1}, timeout=REQUEST_TIMEOUT)
    assert reply.json() == {"links": 2}  # both edges
    wait_until(lambda: all(len(mesh.news[n]) > before[n] for n in mesh.devices), 10)
    for name in mesh.devices:
        assert mesh.news[name][before[name] :] == [{"news": 1}], name  # exactly once


# ----------------------------------------------------------------------------- 4


def test_devices_renew_their_certificates_at_half_life(mesh: Mesh) -> None:
    # observed: each device's first renewal (due LIFETIME/2 after enrollment)
    wait_until(lambda: all(mesh.renewals[n] for n in mesh.devices), LIFETIME * 1.5)
    for name in mesh.devices:
        at, cert = mesh.renewals[name][0]
        enrolled = mesh.enrolled[name]
        assert cert.serial != enrolled.serial
        assert cert.issuer == mesh.edge_of(name)
        assert cert.not_after > enrolled.not_after
        half_life = enrolled.not_after - LIFETIME / 2
        assert at >= half_life - 1.0  # not before half its lifetime (1 s: whole-second stamps)
        assert at < enrolled.not_after  # and before it expired
    # the renewed certificates are in use on every hop: the cloud verifies the
    # devices with a renewed one (the edge announces it; bounded wait for that)
    for name, dev in mesh.devices.items():
        renewed = mesh.renewals[name]
        wait_until(
            lambda d=dev, r=renewed: whoami(d, "cloud-1")["serial"] in {c.serial for _, c in r}, 10
        )
        assert (mesh.data_dir(name) / "node.cert").read_bytes() == (
            dev.async_device.node.signed_certificate.to_bytes()
        )


# ----------------------------------------------------------------------------- 5


def test_revocation_cuts_off_a_live_device_within_one_broadcast(mesh: Mesh) -> None:
    victim = mesh.devices[VICTIM]
    assert victim.request("cloud-1", "app.echo", {}, timeout=REQUEST_TIMEOUT).json()["from"] == (
        VICTIM
    )
    edge_a = mesh.edge_dir("edge-a")
    version = read_status(mesh.cloud_dir)["revocation_list_versions"]["root"] + 1
    cli("revoke", "--data-dir", str(mesh.cloud_dir), VICTIM, env=ENV)
    # one mesh.revocation broadcast: the cloud installs it from the file and
    # sends it; every edge verifies, installs and cuts the device off
    for where in (mesh.cloud_dir, edge_a, mesh.edge_dir("edge-b")):
        wait_status(
            where,
            lambda s: s["revocation_list_versions"].get("root") == version,
            what="the new revocation list",
        )
    # the device hears of it too (its edge passes the list on, then cuts it off),
    # so the app sees "revoked" and its sends fail at once instead of timing out
    wait_until(lambda: victim.state == "revoked")
    with pytest.raises(CertificateRevoked):
        victim.request("cloud-1", "app.echo", {"after": 1}, timeout=1.0)
    # its edge cut its connection: the live link is gone from the edge's peers
    wait_status(
        edge_a,
        lambda s: VICTIM not in [p["node_id"] for p in s["peers"]],
        what="the revoked device's link gone",
    )
    # ... and no hop routes to it any more
    assert VICTIM not in [p["node_id"] for p in read_status(edge_a)["peers"]]
    with pytest.raises(TimeoutError):
        mesh.devices["edge-b.d1"].request(VICTIM, "peer.ping", {}, timeout=1.0)
    # every other device is still served, on the same edge and on the other
    for name, dev in mesh.live(but=(VICTIM,)).items():
        assert dev.request("cloud-1", "app.echo", {}, timeout=REQUEST_TIMEOUT).json()["from"] == (
            name
        )
    assert read_status(edge_a)["revocation_list_versions"] == {"root": version}


# ----------------------------------------------------------------------------- 6


def test_an_edge_enrolls_a_device_while_the_cloud_is_down(mesh: Mesh) -> None:
    daemons = mesh.daemons
    assert daemons.stop("cloud-1") == 0  # the process is gone
    token = device_token(mesh, "edge-b")  # the edge's own token store, no cloud involved
    wait_ticks(mesh.edge_dir("edge-b"), time.time())
    info = enroll(mesh, "edge-b.late", token)
    assert (info.issuer, info.tier) == ("edge-b", "end")
    late = connect(mesh, "edge-b.late")
    assert late.request("edge-b", "app.echo", {"n": 1}, timeout=REQUEST_TIMEOUT).json() == {
        "by": "edge-b",
        "from": "edge-b.late",
        "body": {"n": 1},
    }
    # devices keep talking to their edges meanwhile
    for name, dev in mesh.live(but=(VICTIM,)).items():
        edge = mesh.edge_of(name)
        assert dev.request(edge, "app.echo", {}, timeout=REQUEST_TIMEOUT).json()["by"] == edge
    # the cloud comes back (same data dir): the edges reconnect; the new device
    # reaches the cloud through its edge (the cloud learns its certificate from the
    # edge's announcement, or asks the edge that relayed its first message)
    restarted = time.time()
    assert daemons.run("cloud-1", mesh.cloud_dir)["node_id"] == "cloud-1"
    for edge in EDGES:
        wait_status(
            mesh.edge_dir(edge),
            lambda s: s["parent"]["connected"] and s["written_at"] > restarted,
            what=f"{edge} connected to the cloud again",
        )
    deadline = time.monotonic() + 20
    while True:
        try:
            facts = whoami(late, "cloud-1", timeout=1.0)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the new device never reached the cloud"
    assert (facts["by"], facts["from"]) == ("cloud-1", "edge-b.late")
    serials = {info.serial} | {c.serial for _, c in mesh.renewals["edge-b.late"]}
    assert facts["serial"] in serials  # (it may have renewed meanwhile)
    for name, dev in mesh.live(but=(VICTIM,)).items():
        assert dev.request("cloud-1", "app.echo", {}, timeout=REQUEST_TIMEOUT).json()["from"] == (
            name
        )


# ----------------------------------------------------------------------------- 7


def test_an_expired_device_re_enrolls_with_a_fresh_token_and_keeps_its_data(mesh: Mesh) -> None:
    path = mesh.data_dir(SLEEPER)
    old = mesh.enrolled[SLEEPER]
    key_file = (path / "identity.key").read_bytes()
    sequence = reserved_sequence(path)
    # offline past its expiry (a bounded wait for the clock, nothing else to observe)
    wait_until(lambda: time.time() >= old.not_after + 0.5, LIFETIME * 2)
    with pytest.raises(CertificateExpired):
        Device.connect(path, passphrase=PASSPHRASE, connect_timeout=5)
    token = device_token(mesh, "edge-b")
    wait_ticks(mesh.edge_dir("edge-b"), time.time())
    info = enroll(mesh, SLEEPER, token)
    assert not info.new_keys  # the same identity: keys kept
    assert info.serial != old.serial
    assert info.not_after > old.not_after
    assert (path / "identity.key").read_bytes() == key_file
    assert (path / "app-data.json").read_text() == '{"readings": [1, 2, 3]}'
    # its envelope counter went on from where it stopped (never reuses a number)
    assert reserved_sequence(path) > sequence
    dev = connect(mesh, SLEEPER)
    facts = whoami(dev, "cloud-1")
    assert (facts["from"], facts["serial"]) == (SLEEPER, info.serial)
    assert dev.request("edge-b", "app.echo", {"back": True}, timeout=REQUEST_TIMEOUT).json() == {
        "by": "edge-b",
        "from": SLEEPER,
        "body": {"back": True},
    }
