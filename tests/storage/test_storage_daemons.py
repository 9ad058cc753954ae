"""Storage on REAL daemons: cloud + three edges (k=2, n=3) + an SDK device as the client.

Four ``securemesh node run`` processes over CurveZMQ on loopback load
``services = ["securemesh.storage:make_service"]`` from ``node.toml``
(cloud-1 <- edge-a, edge-b, edge-c, each in its own failure domain), and one
SDK device enrolled at edge-a drives a :class:`StorageClient` over its
requests: its shards to edge-b and edge-c cross edge-a and the cloud as raw
frames. The tests check that:

1. objects round-trip (empty, one byte, exactly one segment, several), the
   manifest is stored and audited (``object.put`` in the cloud log), and no
   edge's disk holds a plaintext marker of the data;
2. a flipped bit in a stored shard file is detected (the edge refuses the
   damaged shard, ``storage.shard_corrupt`` is audited, the client's report
   names it) and the read still returns the right bytes;
3. a real edge refuses a shard whose hash does not match, a manifest signed
   by another key and a manifest in another owner's name;
4. a proof-of-storage challenge passes on an honest edge and fails on one that
   deleted the shard, and both results reach the cloud log (``storage.challenge``);
5. after SIGKILL of n-k = 1 edge, ``get`` still succeeds;
6. a new edge daemon joins (nothing else reconfigured) and ``repair`` moves the
   dead edge's shard column onto it, re-signing the manifest (same Merkle root);
7. the cloud (``make_cloud_service``) challenges random shards of the
   manifests it indexes; an edge that lost its shards is marked unhealthy,
   left out of ``storage.nodes``, and the failures are in the log;
8. the cloud repairs automatically: the unhealthy edge's and the killed edge's
   shard columns are regenerated onto live edges (a new one joins for it), the
   moves are audited (``storage.repair``) and told to readers
   (``storage.locate``): every column of the object is in place again.

Every wait is bounded and polls a readiness signal; every daemon and the
device are closed/reaped, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import sqlite3
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    Daemons,
    cli,
    daemon_env,
    free_port,
    poll,
    read_status,
    reaped,
    wait_status,
)

from securemesh.cli import main
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
from securemesh.enroll import IDENTITY_FILE
from securemesh.errors import RemoteCallError
from securemesh.sdk import Device, DeviceAudit, DeviceRequester
from securemesh.storage import (
    Candidate,
    ObjectUnreadable,
    StorageClient,
    shard_hash,
    sign_manifest,
)

pytestmark = pytest.mark.slow

PASSPHRASE = "storage-test-passphrase"
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
TIMEOUT = 60.0
SEG = 64 * 1024
MARKER = b"PLAINTEXT-MARKER-7f3a"
EDGES = ("edge-a", "edge-b", "edge-c")

SERVICES = 'services = ["securemesh.storage:make_service"]\n'
TOP = "status_interval = 0.2\nheartbeat_interval = 0.5\n" + SERVICES
POLICY = '\n[[policy.allow]]\ntypes = ["storage.*"]\ntiers = ["end", "edge", "cloud"]\n'


def configure(toml: Path, tables: str, factory: str = "make_service") -> None:
    top = TOP.replace("make_service", factory)
    toml.write_text(top + toml.read_text() + POLICY + tables)


class Grid:
    def __init__(self, root: Path, daemons: Daemons, device: Device, client: StorageClient) -> None:
        self.root = root
        self.daemons = daemons
        self.device = device
        self.client = client
        #: objects written by one test and read by a later one
        self.kept: dict[str, bytes] = {}

    def dir(self, name: str) -> Path:
        return self.root / name

    def blobs(self, edge: str) -> list[Path]:
        return sorted((self.dir(edge) / "services" / "storage" / "blobs").rglob("*"))

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)


def audit_rows(cloud: Path, kind: str) -> list[dict[str, Any]]:
    """The cloud log's events of ``kind`` (``securemesh audit query``)."""
    out = cli("audit", "query", "--db", str(cloud / "audit.db"), "--kind", kind, "--format", "json")
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def storage_status(data_dir: Path) -> dict[str, Any]:
    entry = read_status(data_dir).get("services", {}).get("storage")
    assert isinstance(entry, dict)
    return entry


@contextlib.contextmanager
def storage_grid(
    root: Path,
    edges: Sequence[str],
    *,
    k: int,
    n: int,
    env_extra: dict[str, str],
    timeout: float = 5.0,
) -> Iterator[Grid]:
    """Cloud + ``edges`` daemons + two enrolled devices at the first edge (``dev`` drives a
    client with k/n and SEG-byte segments; ``cli`` is for the CLI); all reaped."""
    env = daemon_env(passphrase=PASSPHRASE)
    env.update(env_extra)
    first = edges[0]
    device: Device | None = None
    with reaped(env) as daemons:
        try:
            cloud = root / "cloud-1"
            cli(
                "init", "--data-dir", str(cloud), "--authority-id", "root",
                "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{free_port()}",
                env=ENV,
            )  # fmt: skip
            configure(cloud / "node.toml", "", factory="make_cloud_service")
            daemons.run("cloud-1", cloud)
            for edge in edges:
                token = cli(
                    "token", "create", "--data-dir", str(cloud), "--tier", "edge",
                    "--delegate", "--ttl", "10m",
                )  # fmt: skip
                cli(
                    "enroll", "--data-dir", str(root / edge), "--token", token,
                    "--node-id", edge, "--listen", f"tcp://127.0.0.1:{free_port()}", env=ENV,
                )  # fmt: skip
                configure(
                    root / edge / "node.toml", f'\n[report]\nfailure_domain = "rack-{edge[-1]}"\n'
                )
                daemons.start(edge, root / edge)
            for edge in edges:
                daemons.wait_ready(edge)
            end_token = ["token", "create", "--data-dir", str(root / first), "--tier", "end"]
            tokens = [cli(*end_token, "--ttl", "10m") for _ in range(2)]
            created = time.time()
            wait_status(root / first, lambda s: s["written_at"] > created, what="a tick")
            for token, name in zip(tokens, ("dev", "cli"), strict=True):
                Device.enroll(
                    token, data_dir=root / name, node_id=f"{first}.{name}",
                    passphrase=PASSPHRASE, timeout=10, kdf_params=UNSAFE_FAST_PARAMS,
                )  # fmt: skip
            device = Device.connect(root / "dev", passphrase=PASSPHRASE, connect_timeout=20)
            identity = NodeIdentity.load(root / "dev" / IDENTITY_FILE, PASSPHRASE)
            client = StorageClient(
                DeviceRequester(device),
                node_id=f"{first}.dev",
                signer=identity.signer,
                kx_secret=identity.kx_secret(),
                kx_public=identity.kx_public,
                index="cloud-1",
                k=k,
                n=n,
                segment_size=SEG,
                timeout=timeout,
                audit=DeviceAudit(device),
            )

            def all_edges_listed() -> bool:
                return {c.node_id for c in asyncio.run(client.nodes())} == set(edges)

            poll(all_edges_listed, f"the cloud to list the {len(edges)} storage edges")
            yield Grid(root, daemons, device, client)
        finally:
            if device is not None:
                device.close(drain_timeout=1.0)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    env = {
        "SECUREMESH_STORAGE_CHALLENGE_INTERVAL": "0.2",  # the cloud's proof-of-storage rounds
        "SECUREMESH_STORAGE_REPAIR_INTERVAL": "0.5",  # and its automatic repair rounds
        "SECUREMESH_STORAGE_LOSS_GRACE": "3",  # a storage edge silent 3 s is lost
    }
    with storage_grid(tmp_path_factory.mktemp("storage"), EDGES, k=2, n=3, env_extra=env) as g:
        yield g


SIZES = (0, 1, SEG, 5 * SEG + 123)


def test_round_trip_and_no_plaintext_on_disk(grid: Grid) -> None:
    nodes = grid.run(grid.client.nodes())
    assert {(c.node_id, c.failure_domain) for c in nodes} == {
        ("edge-a", "rack-a"), ("edge-b", "rack-b"), ("edge-c", "rack-c"),
    }  # fmt: skip
    for size in SIZES:
        data = (MARKER + os.urandom(16)) * (size // (len(MARKER) + 16) + 1)
        data = data[:size]
        manifest = grid.run(grid.client.put(f"rt/{size}", data))
        assert manifest.size == size
        assert sorted(manifest.placement) == sorted(EDGES)
        back, report = grid.run(grid.client.get(f"rt/{size}"))
        assert back == data
        assert report.corrupt == []
        assert report.missing == []
    assert {f"rt/{s}" for s in SIZES} <= set(grid.run(grid.client.list()))
    # the cloud indexes the manifests in its audit log's database, not one of its own
    cloud = grid.dir("cloud-1")
    with contextlib.closing(
        sqlite3.connect(f"{(cloud / 'audit.db').as_uri()}?mode=ro", uri=True)
    ) as db:
        indexed = {row[0] for row in db.execute("SELECT name FROM storage_manifests")}
    assert {f"rt/{s}" for s in SIZES} <= indexed
    assert not (cloud / "services" / "storage" / "shards.db").exists()
    # shards travelled as raw frames and landed as 0600 files; none holds plaintext
    for edge in EDGES:
        files = [p for p in grid.dir(edge).rglob("*") if p.is_file()]
        blobs = [p for p in grid.blobs(edge) if p.is_file()]
        assert len(blobs) == sum(-(-s // SEG) for s in SIZES)
        for path in files:
            # the daemon runs on: a status temp file or SQLite's -journal/-wal may
            # be gone between the listing and the read
            with contextlib.suppress(FileNotFoundError):
                assert MARKER not in path.read_bytes(), path
        assert all(p.stat().st_mode & 0o077 == 0 for p in blobs)
        poll(lambda e=edge: storage_status(grid.dir(e))["shards_stored"] >= 1, "edge status")

    # the manifests' object.put events reach the cloud log
    poll(
        lambda: len(audit_rows(grid.dir("cloud-1"), "object.put")) >= len(SIZES),
        "object.put events in the cloud log",
    )


def test_client_memory_does_not_grow_with_the_object(grid: Grid) -> None:
    """Two sizes through the real mesh: the client's traced peak is the same few segments."""
    peaks = []
    for size in (256 * 1024, 3 * 1024 * 1024):
        data = os.urandom(size)
        stream = io.BytesIO(data)
        del data
        sink = hashlib.sha256()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            grid.run(grid.client.put(f"mem/{size}", stream, size=size))
            grid.run(grid.client.get_into(f"mem/{size}", sink.update))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sink.hexdigest() == hashlib.sha256(stream.getvalue()).hexdigest()
        peaks.append(peak - base)
        grid.run(grid.client.delete(f"mem/{size}"))
    small, big = peaks
    # twelve times the object, and the peak stays within a few segments of the small one's
    assert big < small + 8 * SEG, (small, big)


def test_a_flipped_bit_is_detected_and_the_read_succeeds(grid: Grid) -> None:
    data = os.urandom(3 * SEG + 7)
    manifest = grid.run(grid.client.put("flip/me", data))
    # damage every shard of this object on one edge that the reader asks first
    victim = manifest.placement[0]
    hashes = {seg.shards[0] for seg in manifest.segments}
    originals = {p: p.read_bytes() for p in grid.blobs(victim) if p.name in hashes}
    for path, raw in originals.items():
        damaged = bytearray(raw)
        damaged[len(damaged) // 2] ^= 0x10
        path.write_bytes(bytes(damaged))
    back, report = grid.run(grid.client.get("flip/me"))
    for path, raw in originals.items():  # undo, so the cloud's challenges find edges healthy
        path.write_bytes(raw)
    assert back == data
    # the edge re-hashes on read and refuses the damaged shard; the client reads another
    # (segments fetched ahead may meet the victim before it is known bad: at most one each)
    reported = [(seg, idx, node, why) for seg, idx, node, why in report.missing]
    assert (0, 0, victim, "shard_corrupt") in reported
    assert len(reported) == len(set(reported))
    assert {(idx, node, why) for _, idx, node, why in reported} == {(0, victim, "shard_corrupt")}
    poll(
        lambda: storage_status(grid.dir(victim))["shards_corrupt"] >= 1,
        "the edge counting the corrupt shard",
    )


def test_the_service_refuses_bad_shards_and_forged_manifests(grid: Grid) -> None:
    """Attacks on a real edge: wrong hash, someone else's manifest, a forged signature."""
    edge_b = grid.dir("edge-b")
    refused_before = storage_status(edge_b)["shards_refused"]
    body = {"object_id": "00" * 16, "hash": "11" * 32}
    with pytest.raises(RemoteCallError) as bad_hash:
        grid.device.request("edge-b", "storage.shard.put", body, [b"not that"], timeout=10)
    assert bad_hash.value.code == "shard_corrupt"
    assert not any(p.name == "11" * 32 for p in grid.blobs("edge-b"))
    poll(
        lambda: storage_status(edge_b)["shards_refused"] > refused_before,
        "the refusal counted at edge-b",
    )
    # a manifest signed by another key than the device's certificate is refused
    manifest = grid.run(grid.client.put("forge/base", b"base"))
    forged = sign_manifest(manifest, NodeIdentity.generate().signer)
    ref = {"owner": "edge-a.dev", "name": "forge/base"}
    with pytest.raises(RemoteCallError) as forged_sig:
        grid.device.request("edge-b", "storage.manifest.put", ref, [forged], timeout=10)
    assert forged_sig.value.code == "bad_auth"
    # nobody stores a manifest in another owner's name
    with pytest.raises(RemoteCallError) as other_owner:
        grid.device.request(
            "edge-b", "storage.manifest.put", {"owner": "edge-b", "name": "x"}, [forged], timeout=10
        )
    assert other_owner.value.code == "unauthorized"
    # the stored manifest is still the genuine one
    assert grid.run(grid.client.stat("forge/base")) == manifest


def test_a_challenge_against_an_edge_that_deleted_a_shard_fails_and_is_audited(
    grid: Grid,
) -> None:
    data = os.urandom(2 * SEG + 5)
    manifest = grid.run(grid.client.put("challenge/me", data))
    column = manifest.placement.index("edge-b")
    # an honest edge passes (fresh nonce, blocks checked against the shard's address)
    assert grid.run(grid.client.challenge(manifest, 0, column)) == (True, "ok")
    # edge-b silently drops the shard of segment 1
    victim = next(p for p in grid.blobs("edge-b") if p.name == manifest.segments[1].shards[column])
    kept = victim.read_bytes()
    victim.unlink()
    passed, reason = grid.run(grid.client.challenge(manifest, 1, column))
    victim.write_bytes(kept)  # undo (the cloud's own rounds run meanwhile)
    assert not passed
    assert reason == "not_found"

    def mine() -> list[dict[str, Any]]:
        rows = audit_rows(grid.dir("cloud-1"), "storage.challenge")
        return [r for r in rows if r["origin"] == "edge-a.dev"]

    poll(lambda: len(mine()) >= 2, "the device's storage.challenge events in the cloud log")
    assert {(r["outcome"], r["details"]["segment"]) for r in mine()} == {
        ("success", 0), ("failure", 1),
    }  # fmt: skip
    assert all(r["details"]["node"] == "edge-b" for r in mine())


def test_the_store_cli_as_a_device(grid: Grid, tmp_path: Path) -> None:
    """``securemesh store`` connects as the enrolled device ``edge-a.cli`` per command."""
    base = ["--data-dir", str(grid.dir("cli")), "--index", "cloud-1", "--timeout", "10"]
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(MARKER * 3000 + os.urandom(SEG))
    put = json.loads(cli(
        "store", "put", *base, "--k", "2", "--n", "3", "--segment-size", str(SEG),
        "-o", "json", "cli/one", str(src), env=ENV,
    ))  # fmt: skip
    assert put["owner"] == "edge-a.cli"
    assert put["size"] == src.stat().st_size
    cli("store", "get", *base, "cli/one", str(dst), env=ENV)
    assert dst.read_bytes() == src.read_bytes()
    assert json.loads(cli("store", "ls", *base, "-o", "json", env=ENV)) == [{"name": "cli/one"}]
    stat = json.loads(cli("store", "stat", *base, "-o", "json", "cli/one", env=ENV))
    assert stat["merkle_root"] == put["merkle_root"]
    checks = json.loads(cli("store", "challenge", *base, "-o", "json", "cli/one", env=ENV))
    assert sorted(r["node"] for r in checks) == sorted(EDGES)
    assert {r["result"] for r in checks} == {"ok"}
    # share: edge-a.dev cannot read cli/one until the owner wraps the key for it
    cli_id = NodeIdentity.load(grid.dir("cli") / IDENTITY_FILE, PASSPHRASE)
    dev_id = NodeIdentity.load(grid.dir("dev") / IDENTITY_FILE, PASSPHRASE)
    as_reader = {"owner": "edge-a.cli", "owner_key": cli_id.verify_key}
    with pytest.raises(ObjectUnreadable):
        grid.run(grid.client.get("cli/one", **as_reader))
    shared = json.loads(cli(
        "store", "share", *base, "-o", "json", "cli/one", "edge-a.dev",
        "--kx-key", dev_id.kx_public.hex(), env=ENV,
    ))  # fmt: skip
    assert shared["readers"] == ["edge-a.cli", "edge-a.dev"]
    back, _ = grid.run(grid.client.get("cli/one", **as_reader))
    assert back == src.read_bytes()
    # the other way round: the library shares, the CLI reads with --owner/--owner-key
    grid.run(grid.client.put("dev/for-cli", MARKER))
    grid.run(grid.client.share("dev/for-cli", "edge-a.cli", cli_id.kx_public))
    got = tmp_path / "got.bin"
    cli(
        "store", "get", *base, "--owner", "edge-a.dev", "--owner-key", dev_id.verify_key.hex(),
        "dev/for-cli", str(got), env=ENV,
    )  # fmt: skip
    assert got.read_bytes() == MARKER
    cli("store", "rm", *base, "cli/one", env=ENV)

    def shared_events() -> set[tuple[str, str]]:
        rows = audit_rows(grid.dir("cloud-1"), "storage.share")
        return {(r["origin"], r["details"]["reader"]) for r in rows}

    # both shares are in the cloud log (the CLI's ships from its outbox on a later connect)
    poll(
        lambda: shared_events() >= {("edge-a.cli", "edge-a.dev"), ("edge-a.dev", "edge-a.cli")},
        "the storage.share events in the cloud log",
    )
    # a mistake is one error line and exit 1, never a traceback
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        os.environ["SECUREMESH_PASSPHRASE"] = PASSPHRASE
        try:
            code = main(["store", "get", *base, "cli/one", str(dst)])
        finally:
            del os.environ["SECUREMESH_PASSPHRASE"]
    assert code == 1
    assert err.getvalue().startswith("error: ")
    assert err.getvalue().count("\n") == 1
    assert "Traceback" not in err.getvalue()


def test_repair_refills_a_live_edge_that_lost_shards_when_no_edge_is_free(
    grid: Grid, tmp_path: Path
) -> None:
    """n = 3 on three edges: no edge is free, so the edge that lost a column's shards (one
    deleted, one flipped) takes them back; the placement stays, nothing is left short."""
    data = os.urandom(2 * SEG + 7)
    grid.run(grid.client.put("refill/me", data))
    before = grid.run(grid.client.stat("refill/me"))
    column = before.placement.index("edge-b")
    root = grid.dir("edge-b") / "services" / "storage" / "blobs"
    paths = [root / h[:2] / h for h in (seg.shards[column] for seg in before.segments)]
    paths[0].unlink()
    damaged = bytearray(paths[1].read_bytes())
    damaged[10] ^= 0x40
    paths[1].write_bytes(bytes(damaged))
    # (a get need not notice: it reads k of the n columns; repair reads them all)
    repaired = grid.run(grid.client.repair("refill/me"))
    assert repaired.moved == {}
    assert repaired.refilled == {column: "edge-b"}
    assert repaired.shards_rebuilt == len(before.segments)
    assert repaired.manifest.placement == before.placement
    for path, seg in zip(paths, before.segments, strict=True):  # both blobs whole again
        assert shard_hash(path.read_bytes()).hex() == seg.shards[column] == path.name
    back, clean = grid.run(grid.client.get("refill/me"))
    assert back == data
    assert clean.missing == []
    assert clean.corrupt == []
    again = grid.run(grid.client.repair("refill/me"))  # nothing left to do
    assert again.moved == {}
    assert again.refilled == {}


def test_get_survives_sigkill_of_n_minus_k_edges(grid: Grid) -> None:
    data = os.urandom(4 * SEG + 99)
    grid.run(grid.client.put("kill/me", data))
    grid.kept["kill/me"] = data
    nodes = [Candidate(e) for e in EDGES]
    victim = "edge-c"  # edge-a is the device's parent
    proc = grid.daemons.procs[victim]
    proc.kill()
    proc.wait(timeout=30)
    back, report = grid.run(grid.client.get("kill/me", nodes=nodes))
    assert back == data
    assert {node for _, _, node, _ in report.missing} <= {victim}


def test_repair_restores_redundancy_on_a_new_edge(grid: Grid) -> None:
    """After the SIGKILL above: a new edge joins (no other node reconfigured), repair uses it."""
    assert grid.daemons.procs["edge-c"].poll() is not None  # killed by the previous test
    cloud, edge_d = grid.dir("cloud-1"), grid.dir("edge-d")
    token = cli(
        "token", "create", "--data-dir", str(cloud), "--tier", "edge", "--delegate", "--ttl", "10m"
    )  # fmt: skip
    cli(
        "enroll", "--data-dir", str(edge_d), "--token", token, "--node-id", "edge-d",
        "--listen", f"tcp://127.0.0.1:{free_port()}", env=ENV,
    )  # fmt: skip
    configure(edge_d / "node.toml", '\n[report]\nfailure_domain = "rack-d"\n')
    grid.daemons.run("edge-d", edge_d)
    poll(
        lambda: "edge-d" in {c.node_id for c in grid.run(grid.client.nodes())},
        "the cloud to list edge-d",
    )
    before = grid.run(grid.client.stat("kill/me", nodes=[Candidate(e) for e in EDGES]))
    report = grid.run(grid.client.repair("kill/me"))
    column = before.placement.index("edge-c")
    assert report.moved == {column: ("edge-c", "edge-d")}
    assert report.shards_rebuilt == len(before.segments)
    after = report.manifest
    assert after.placement[column] == "edge-d"
    assert after.merkle_root == before.merkle_root  # regenerated shards are byte-identical
    on_d = {p.name for p in grid.blobs("edge-d") if p.is_file()}
    assert {seg.shards[column] for seg in after.segments} <= on_d
    # every shard of every column is in place again: a second repair finds nothing to do
    live = [Candidate(e) for e in ("edge-a", "edge-b", "edge-d")]
    again = grid.run(grid.client.repair("kill/me", nodes=live))
    assert again.moved == {}
    back, _ = grid.run(grid.client.get("kill/me", nodes=live))
    assert grid.run(grid.client.stat("kill/me", nodes=live)).placement == after.placement
    assert back == grid.kept["kill/me"]


def test_the_cloud_challenges_edges_and_marks_a_failing_one_unhealthy(grid: Grid) -> None:
    """The cloud's own rounds (``make_cloud_service``): edge-b loses every shard silently."""
    cloud = grid.dir("cloud-1")
    poll(lambda: storage_status(cloud)["challenges_sent"] >= 3, "the cloud's challenge rounds")
    for path in grid.blobs("edge-b"):
        if path.is_file():
            path.unlink()
    poll(
        lambda: "edge-b" in storage_status(cloud)["unhealthy"],
        "the cloud marking edge-b unhealthy",
    )
    assert "edge-b" not in {c.node_id for c in grid.run(grid.client.nodes())}

    def cloud_failures() -> list[dict[str, Any]]:
        return [
            r for r in audit_rows(cloud, "storage.challenge")
            if r["origin"] == "cloud-1" and r["outcome"] == "failure"
            and r["details"]["node"] == "edge-b"
        ]  # fmt: skip

    poll(lambda: len(cloud_failures()) >= 1, "the cloud's failed challenges in its log")


def test_the_cloud_repairs_unhealthy_and_lost_edges_automatically(grid: Grid) -> None:
    """After the tests above: edge-b is unhealthy and edge-c is gone; edge-e joins."""
    cloud, edge_e = grid.dir("cloud-1"), grid.dir("edge-e")
    assert "edge-b" in storage_status(cloud)["unhealthy"]
    token = cli(
        "token", "create", "--data-dir", str(cloud), "--tier", "edge", "--delegate", "--ttl", "10m"
    )  # fmt: skip
    cli(
        "enroll", "--data-dir", str(edge_e), "--token", token, "--node-id", "edge-e",
        "--listen", f"tcp://127.0.0.1:{free_port()}", env=ENV,
    )  # fmt: skip
    configure(edge_e / "node.toml", '\n[report]\nfailure_domain = "rack-e"\n')
    grid.daemons.run("edge-e", edge_e)
    live = [Candidate(e) for e in ("edge-a", "edge-d", "edge-e")]
    manifest = grid.run(grid.client.stat("kill/me", nodes=live))
    column = manifest.placement.index("edge-b")

    def located() -> list[str]:
        return list(grid.run(grid.client.locate(manifest)))

    poll(lambda: located()[column] == "edge-e", "the cloud moving edge-b's column to edge-e")
    placement = located()
    assert "edge-b" not in placement
    assert "edge-c" not in placement
    # full redundancy: every shard of every column is on its (new) node, intact
    for seg, entry in enumerate(manifest.segments):
        for j, node in enumerate(placement):
            reply = grid.device.request(
                node, "storage.shard.get", {"hash": entry.shards[j]}, timeout=TIMEOUT
            )
            assert shard_hash(reply.frames[0]) == manifest.shard_hash(seg, j)
    back, report = grid.run(grid.client.get("kill/me", nodes=live))
    assert back == grid.kept["kill/me"]
    assert report.missing == []
    assert report.corrupt == []
    rows = audit_rows(cloud, "storage.repair")
    reasons = {(r["details"]["from"], r["details"]["reason"]) for r in rows}
    assert ("edge-b", "unhealthy") in reasons
    # edge-c's columns of the other objects moved when edge-d joined: killed, it failed the
    # cloud's challenges (unhealthy) and dropped from its peers (lost), whichever came first
    assert {why for node, why in reasons if node == "edge-c"} & {"lost", "unhealthy"}
    assert storage_status(cloud)["shards_repaired"] >= len(manifest.segments)


# ------------------------------------------------------------------------------------------
# The acceptance layout of issue #11: 6 edges, k=4, n=6 (``--storage-long``: the mesh alone
# takes a minute to build on the shared machine, and the 1 GiB round trip a few more).

EDGES6 = ("edge-a", "edge-b", "edge-c", "edge-d", "edge-e", "edge-f")


@pytest.fixture(scope="module")
def grid6(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Grid]:
    if not request.config.getoption("--storage-long"):
        pytest.skip("the 6-edge acceptance runs with --storage-long")
    env = {
        "SECUREMESH_STORAGE_CHALLENGE_INTERVAL": "3600",  # this grid challenges on demand
        "SECUREMESH_STORAGE_REPAIR_INTERVAL": "0.5",
        "SECUREMESH_STORAGE_LOSS_GRACE": "3",
    }
    root = tmp_path_factory.mktemp("storage6")
    with storage_grid(root, EDGES6, k=4, n=6, env_extra=env, timeout=30.0) as g:
        yield g


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (proc(5))


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_acceptance_6_edges_round_trips_attacks_and_audits(grid6: Grid) -> None:
    g, client = grid6, grid6.client
    for size in (0, 1, SEG, 9 * SEG + 7):
        data = (MARKER + os.urandom(16)) * (size // (len(MARKER) + 16) + 1)
        data = data[:size]
        manifest = g.run(client.put(f"acc/{size}", data))
        assert sorted(manifest.placement) == sorted(EDGES6)
        back, report = g.run(client.get(f"acc/{size}"))
        assert (back, report.missing, report.corrupt) == (data, [], [])
    for edge in EDGES6:  # no plaintext marker on any edge's disk
        for path in g.blobs(edge):
            if path.is_file():
                assert MARKER not in path.read_bytes(), path
    # bit flips in two columns: the read succeeds and names both
    manifest = g.run(client.stat(f"acc/{9 * SEG + 7}"))
    victims = {manifest.placement[0]: 0, manifest.placement[1]: 1}
    for node, column in victims.items():
        for path in g.blobs(node):
            if path.name == manifest.segments[0].shards[column]:
                raw = bytearray(path.read_bytes())
                raw[7] ^= 0x01
                path.write_bytes(bytes(raw))
    back, report = g.run(client.get(f"acc/{9 * SEG + 7}"))
    assert back[: len(MARKER)] == MARKER
    assert {(seg, node) for seg, _, node, _ in report.missing} >= {(0, n) for n in victims}
    # a forged manifest is refused by a real edge
    forged = sign_manifest(manifest, NodeIdentity.generate().signer)
    ref = {"owner": "edge-a.dev", "name": manifest.name}
    with pytest.raises(RemoteCallError) as refused:
        g.device.request("edge-b", "storage.manifest.put", ref, [forged], timeout=TIMEOUT)
    assert refused.value.code == "bad_auth"
    # a challenge against an edge that deleted a shard fails, and is audited in the cloud
    column = 3
    node = manifest.placement[column]
    gone = next(p for p in g.blobs(node) if p.name == manifest.segments[2].shards[column])
    gone.unlink()
    assert g.run(client.challenge(manifest, 2, column)) == (False, "not_found")
    poll(
        lambda: any(
            r["outcome"] == "failure" and r["details"]["node"] == node
            for r in audit_rows(g.dir("cloud-1"), "storage.challenge")
        ),
        "the failed challenge in the cloud log",
    )


def test_acceptance_6_edges_survive_sigkill_and_repair_restores_redundancy(grid6: Grid) -> None:
    g, client = grid6, grid6.client
    data = os.urandom(6 * SEG + 1)
    manifest = g.run(client.put("acc/kill", data))
    victims = ["edge-e", "edge-f"]  # n - k = 2 (edge-a is the device's parent)
    for victim in victims:
        g.daemons.procs[victim].kill()
        g.daemons.procs[victim].wait(timeout=30)
    live = [Candidate(e) for e in EDGES6 if e not in victims]
    back, _ = g.run(client.get("acc/kill", nodes=live))
    assert back == data
    # two new edges join (nothing else reconfigured): the cloud repairs onto them
    cloud = g.dir("cloud-1")
    for edge in ("edge-g", "edge-h"):
        token = cli(
            "token", "create", "--data-dir", str(cloud), "--tier", "edge", "--delegate",
            "--ttl", "10m",
        )  # fmt: skip
        cli(
            "enroll", "--data-dir", str(g.dir(edge)), "--token", token, "--node-id", edge,
            "--listen", f"tcp://127.0.0.1:{free_port()}", env=ENV,
        )  # fmt: skip
        configure(g.dir(edge) / "node.toml", f'\n[report]\nfailure_domain = "rack-{edge[-1]}"\n')
        g.daemons.run(edge, g.dir(edge))
    poll(
        lambda: not set(g.run(client.locate(manifest))) & set(victims),
        "the cloud repairing the killed edges' columns",
        timeout=120,
    )
    placement = g.run(client.locate(manifest))
    for seg, entry in enumerate(manifest.segments):
        for j, node in enumerate(placement):
            reply = g.device.request(
                node, "storage.shard.get", {"hash": entry.shards[j]}, timeout=TIMEOUT
            )
            assert shard_hash(reply.frames[0]) == manifest.shard_hash(seg, j)
    back, report = g.run(client.get("acc/kill", nodes=[Candidate(e) for e in placement]))
    assert (back, report.missing, report.corrupt) == (data, [], [])


def test_acceptance_1_gib_streamed_without_client_memory_growing(
    grid6: Grid, tmp_path: Path
) -> None:
    """Peak RSS of this process (the client and its device) for 64 MiB and for 1 GiB."""
    g = grid6
    client = StorageClient(
        g.client._req, node_id=g.client.node_id, signer=g.client._signer,
        kx_secret=g.client._kx_secret, kx_public=g.client._kx_public, index="cloud-1",
        k=4, n=6, segment_size=4 * 1024 * 1024, timeout=120.0,
    )  # fmt: skip
    live = g.run(client.nodes())
    peaks: dict[int, tuple[int, float, float]] = {}
    for size in (64 * 1024 * 1024, 1024 * 1024 * 1024):
        src = tmp_path / f"src-{size}"
        with src.open("wb") as fh:
            for _ in range(size // (1 << 20)):
                fh.write(os.urandom(1 << 20))
        _peak_rss_reset()
        start = time.perf_counter()
        with src.open("rb") as fh:
            g.run(client.put(f"big/{size}", fh, nodes=live))
        put_s = time.perf_counter() - start
        sink = hashlib.sha256()
        start = time.perf_counter()
        g.run(client.get_into(f"big/{size}", sink.update, nodes=live))
        get_s = time.perf_counter() - start
        peaks[size] = (_peak_rss(), size / put_s / 1e6, size / get_s / 1e6)
        with src.open("rb") as fh:
            assert sink.hexdigest() == hashlib.file_digest(fh, "sha256").hexdigest()
        src.unlink()
        g.run(client.delete(f"big/{size}", nodes=live))
    small, big = peaks[64 * 1024 * 1024][0], peaks[1024 * 1024 * 1024][0]
    print(f"\nstorage-long 1 GiB: peak RSS {small / 2**20:.0f} MiB (64 MiB object) vs "
          f"{big / 2**20:.0f} MiB (1 GiB); put/get MB/s {peaks}")  # fmt: skip
    assert big < small + 32 * 1024 * 1024, (small, big)
