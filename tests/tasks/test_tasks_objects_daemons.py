"""Tasks over stored objects on REAL daemons: placement by shard holders, the data key
shared with the chosen executor only, the executor fetching and decrypting.

cloud-1 runs the storage index (``make_cloud_service``) and the tasks scheduler
(``make_scheduler``, the fastest executor, but it holds no shard); edge-a,
edge-b, edge-c run storage and an executor (``make``) whose
``SECUREMESH_TASKS_STORAGE_INDEX`` makes it read stored-object inputs. One SDK
device (role ``submitter``) at edge-a stores an object k=1/n=2 (so two edges
hold its shards, one does not) and checks that:

1. the owner wrapped the data key for nobody else: a task pinned to the chosen
   holder before the share fails there (the storage edges give the manifest to
   its readers only and the key is wrapped for the owner alone; the executor's
   ``task.failed`` says ``ObjectUnreadable``) and the submitter gets ``task_failed``;
2. ``task.place`` picks the idle, fast cloud for the object when it does not
   know the holders, and a holder when the reference lists them;
3. with locality weighed, :func:`submit_over_objects` is placed on an edge
   holding the shards, shares the key with that node only (a new manifest
   version whose readers are the owner and it), and the executor's signed
   result carries the sha256 of the object's plaintext.

Every wait is bounded and polls a readiness signal; every daemon and the
device are closed/reaped, also on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    DeviceMesh,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    poll,
    read_status,
    reaped,
)

from securemesh.crypto.certs import SignedCertificate
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
from securemesh.enroll import IDENTITY_FILE
from securemesh.errors import RemoteCallError
from securemesh.sdk import Device, storage_client, submit_over_objects
from securemesh.storage import StorageClient
from securemesh.tasks import (
    MSG_PLACE,
    ObjectRef,
    TaskIntent,
    TaskPlacement,
    new_request,
    verify_result,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PASSPHRASE = "task-objects-test-passphrase"
EDGES = ("edge-a", "edge-b", "edge-c")
DEVICE = "edge-a.dev"
SEG = 64 * 1024
SIZE = 8 * SEG + 77  # half a megabyte: locality outweighs the cloud's speed

TOP = "status_interval = 0.2\nheartbeat_interval = 0.3\n"
SUBMIT = '"task.submit", "task.start", "task.result", "task.cancel", "task.status", "task.place"'
STORAGE_RULE = '\n[[policy.allow]]\ntypes = ["storage.*"]\ntiers = ["end", "edge", "cloud"]\n'
CLOUD = (
    'services = ["securemesh.storage:make_cloud_service", "task_service:make_scheduler"]\n',
    f'\n[[policy.allow]]\ntypes = [{SUBMIT}]\ntiers = ["end"]\nroles = ["submitter"]\n'
    + STORAGE_RULE
    + '\n[report.labels]\nspeed = "1000"\n',
)
EDGE = (
    'services = ["securemesh.storage:make_service", "task_service:make"]\n',
    '\n[[policy.allow]]\ntypes = ["task.run", "task.types", "task.abort"]\ntiers = ["cloud"]\n'
    f'\n[[policy.allow]]\ntypes = [{SUBMIT}]\ntiers = ["end"]\n'  # relayed up
    + STORAGE_RULE
    + '\n[report.labels]\nspeed = "200"\n',
)


class Mesh(DeviceMesh):
    client: StorageClient


def details(cloud: Path, kind: str, subject: str) -> list[dict[str, Any]]:
    """The details of the cloud log's ``kind`` events about ``subject``."""
    out = cli(
        "audit", "query", "--db", str(cloud / "audit.db"), "--kind", kind, "--format", "json",
    )  # fmt: skip
    rows = json.loads(out)
    return [r["details"] for r in rows if r["subject"]["id"] == subject]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("taskobj")
    env = daemon_env(pythonpath=[EXAMPLES], passphrase=PASSPHRASE)
    env["SECUREMESH_TASKS_STORAGE_INDEX"] = "cloud-1"
    with reaped(env) as daemons:
        m = Mesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP + CLOUD[0], tables=CLOUD[1])
            daemons.run("cloud-1", cloud)
            for edge in EDGES:
                rack = f'\n[report]\nfailure_domain = "rack-{edge[-1]}"\n'
                enroll_edge(
                    cloud, m.dir(edge), edge, PASSPHRASE, top=TOP + EDGE[0], tables=EDGE[1] + rack
                )
                daemons.start(edge, m.dir(edge))
            for edge in EDGES:
                daemons.wait_ready(edge)
            token = end_token(m.dir("edge-a"), "submitter")
            created = time.time()
            poll(lambda: read_status(m.dir("edge-a"))["written_at"] > created, "a tick")
            Device.enroll(
                token, data_dir=root / "dev", node_id=DEVICE, passphrase=PASSPHRASE,
                timeout=10, kdf_params=UNSAFE_FAST_PARAMS,
            )  # fmt: skip
            device = Device.connect(root / "dev", passphrase=PASSPHRASE, connect_timeout=20)
            m.devices[DEVICE] = device
            identity = NodeIdentity.load(root / "dev" / IDENTITY_FILE, PASSPHRASE)
            m.client = storage_client(
                device, identity, index="cloud-1", k=1, n=2, segment_size=SEG, timeout=10.0
            )

            def ready() -> bool:
                listed = {c.node_id for c in asyncio.run(m.client.nodes())}
                peers = read_status(cloud)["peers"]
                tasks = {
                    p["node_id"]
                    for p in peers
                    if p["report"] and "tasks" in (p["report"].get("services") or [])
                }
                return listed == set(EDGES) and set(EDGES) <= tasks

            poll(ready, "the cloud to list the storage edges and their tasks service")
            yield m
        finally:
            m.close_devices()


def test_a_task_over_an_object_runs_on_a_holder_that_got_the_key_only_then(mesh: Mesh) -> None:
    device, client = mesh.devices[DEVICE], mesh.client
    data = os.urandom(SIZE)
    manifest = asyncio.run(client.put("inputs/data.bin", data))
    holders = list(manifest.placement)
    assert len(holders) == 2
    assert set(manifest.readers) == {DEVICE}  # nobody else can unwrap the data key
    ref = ObjectRef(
        object_id=manifest.object_id, size=manifest.size, holders=holders, name="inputs/data.bin"
    )
    local = TaskIntent(deadline_s=20.0, locality_weight=1000.0)

    def place(intent: TaskIntent, obj: ObjectRef = ref) -> TaskPlacement:
        probe, _ = new_request("demo.digest", intent=intent, objects=[obj])
        reply = device.request("cloud-1", MSG_PLACE, probe, timeout=10.0)
        return TaskPlacement.model_validate_json(reply.body_bytes)

    # 2. not knowing where the shards are, the idle, fast cloud wins; with the
    # manifest's holders, a holder of the shards does
    nowhere = ref.model_copy(update={"holders": []})
    assert place(local, nowhere).node == "cloud-1"
    chosen = place(local).node
    assert chosen in holders

    # 1. before the share the chosen holder cannot read the object: the run fails there
    early = device.submit(
        "cloud-1", "demo.digest", {}, intent=local, objects=[ref], executor=chosen
    )
    with pytest.raises(RemoteCallError) as info:
        early.result(timeout=30)
    assert info.value.code == "task_failed"
    seen: list[dict[str, Any]] = []

    def refused_there() -> bool:
        seen[:] = details(mesh.dir("cloud-1"), "task.failed", early.task_id)
        # the storage edges give a manifest to its readers only, so the executor cannot
        # even find it (and the key inside is wrapped for the owner alone)
        return any(d.get("error") == "ObjectUnreadable" for d in seen)

    try:
        poll(refused_there, "the executor's task.failed in the cloud log", timeout=20)
    except TimeoutError as exc:
        raise AssertionError(f"task.failed details: {seen}") from exc

    # 3. place, share with the chosen executor only, submit pinned there
    handle, placement = submit_over_objects(
        device, client, "cloud-1", "demo.digest", {}, names=["inputs/data.bin"], intent=local
    )
    assert placement.node in holders
    result = handle.result(timeout=30)
    signed = SignedCertificate.from_bytes(bytes.fromhex(placement.certificate))
    outcome = verify_result(result, signed.unverified_certificate())
    assert outcome.executor == placement.node
    assert outcome.ok
    assert outcome.result == {
        "inputs": [{"size": SIZE, "sha256": hashlib.sha256(data).hexdigest()}]
    }
    shared = asyncio.run(client.stat("inputs/data.bin"))
    assert set(shared.readers) == {DEVICE, placement.node}
    assert shared.placement == manifest.placement  # the shards did not move
    # status.json is a snapshot rewritten every status_interval: wait for the tick
    # after the run (reading it once raced the tick; CI saw the earlier {'failed': 1})
    poll(
        lambda: (
            read_status(mesh.dir(placement.node))["services"]["tasks"]["counts"].get("objects_read")
            == 1
        ),
        "the executor's status to count the object it read",
        timeout=20,
    )
    # the executor's run and the owner's share are in the cloud log
    cloud = mesh.dir("cloud-1")
    poll(
        lambda: (
            any(d.get("objects") == 1 for d in details(cloud, "task.finished", handle.task_id))
            and {"reader": placement.node, "action": "share", "name": "inputs/data.bin"}
            in details(cloud, "storage.share", manifest.object_id)
        ),
        "task.finished (1 object) and storage.share in the cloud log",
    )


def test_the_cli_submits_a_task_over_a_stored_object(mesh: Mesh) -> None:
    """``securemesh task submit --object NAME --index NODE``: the same path as
    :func:`submit_over_objects`, from the device's data dir (run last: it closes the
    module's SDK device, as the CLI connects as the same node)."""
    data = os.urandom(SIZE)
    manifest = asyncio.run(mesh.client.put("inputs/cli.bin", data))
    mesh.devices.pop(DEVICE).close(drain_timeout=1.0)
    out = cli(
        "task", "submit", "demo.digest", "--to", "cloud-1", "--object", "inputs/cli.bin",
        "--index", "cloud-1", "--locality-weight", "1000", "--deadline", "20",
        "--timeout", "10", "--data-dir", str(mesh.root / "dev"), "--format", "json",
        env={"SECUREMESH_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    outcome = json.loads(out)["outcome"]
    assert outcome["ok"]
    assert outcome["executor"] in manifest.placement
    assert outcome["result"] == {
        "inputs": [{"size": SIZE, "sha256": hashlib.sha256(data).hexdigest()}]
    }
