"""Tasks on REAL daemons: cloud-1 (scheduler + executor) <- edge-a, edge-b (executors).

``examples/task_service.py`` is loaded by each ``node.toml``. Three ``securemesh
node run`` processes over CurveZMQ on loopback and two SDK devices on edge-a
(one enrolled with role ``submitter``, one without). The devices submit to
cloud-1 through edge-a (relayed, signed). The test checks that:

1. a task with the default intent runs where the policy says (cloud-1: it is
   the fastest, and local to the scheduler) and its result carries a valid
   signature of the executing node's certificate key; a tampered result fails;
2. an ``edge-only`` task never runs on the cloud although the cloud is idle
   and fastest: it runs on edge-a (faster than edge-b);
3. a failing executor leads to a retry elsewhere: ``demo.flaky`` fails on
   edge-a (``make_broken``) and the result comes from edge-b, once;
4. a deadline that cannot be met is refused (``deadline``) before anything
   runs, and one that the run overshoots is reported as missed (``deadline``);
5. a task longer than edge-a's relay window (2 x its request timeout) returns
   its result (detached: ``task.start``, then ``task.result`` long polls);
   a device cancels its running task (``TaskHandle.cancel``): the cloud tells
   the executor, whose worker process is killed; ``task list|status|cancel``
   from the CLI show a device its own submissions;
6. an unregistered type is refused (``no_placement``); a device without the
   ``submitter`` role cannot submit (unauthorized, no reply);
7. the lifecycle (``task.submitted``, ``task.placed``, ``task.finished``,
   ``task.failed``) is in the cloud's audit log, which verifies.

Every wait is bounded and polls a readiness signal; every daemon and device is
closed/reaped, also on failure.
"""

from __future__ import annotations

import json
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
    verify_cloud_log,
)

from securemesh.crypto.certs import Certificate, SignedCertificate
from securemesh.errors import AuthenticationError, RemoteCallError
from securemesh.tasks import (
    ObjectRef,
    SignedTaskResult,
    TaskIntent,
    TaskRun,
    new_request,
    verify_result,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PASSPHRASE = "tasks-test-passphrase"
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
TIMEOUT = 60.0

TOP = "status_interval = 0.2\nheartbeat_interval = 0.3\n"
CLOUD_TOML = (
    'services = ["task_service:make_scheduler"]\n',
    '\n[[policy.allow]]\ntypes = ["task.submit", "task.start", "task.result", "task.cancel",'
    ' "task.status"]\ntiers = ["end"]\nroles = ["submitter"]\n'
    '\n[report.labels]\nspeed = "1000"\n',
)
EDGE_RULES = (
    '\n[[policy.allow]]\ntypes = ["task.run", "task.types", "task.abort"]\ntiers = ["cloud"]\n'
    # relayed up
    '\n[[policy.allow]]\ntypes = ["task.submit", "task.start", "task.result", "task.cancel",'
    ' "task.status"]\ntiers = ["end"]\n'
)
#: edge-a relays replies only within 2 x 4 s: a longer task must come back another way
RELAY_TIMEOUT = 4.0
LABELS = '\n[report.labels]\nspeed = "{}"\n'
EDGE_TOML = {
    "edge-a": (
        'services = ["task_service:make_broken"]\n',
        EDGE_RULES + LABELS.format(400) + f"\n[limits]\nrequest_timeout = {RELAY_TIMEOUT}\n",
    ),
    "edge-b": ('services = ["task_service:make"]\n', EDGE_RULES + LABELS.format(200)),
}


def certificate(data_dir: Path) -> Certificate:
    """The node's own certificate file (written by init/enroll in this test)."""
    return SignedCertificate.from_bytes(
        (data_dir / "node.cert").read_bytes()
    ).unverified_certificate()


def query(cloud: Path, kind: str) -> list[dict[str, Any]]:
    out = cli("audit", "query", "--db", str(cloud / "audit.db"), "--kind", kind, "--format", "json")
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


class Mesh(DeviceMesh):
    def submit(
        self, task_type: str, args: dict[str, Any], intent: TaskIntent, *,
        device: str = "edge-a.ok", inline: list[bytes] | None = None, work: float = 1.0,
        timeout: float = 20.0,
    ) -> tuple[str, SignedTaskResult]:  # fmt: skip
        request, frames = new_request(task_type, args, intent=intent, work=work, inline=inline)
        reply = self.devices[device].request(
            "cloud-1", "task.submit", request, frames, timeout=timeout
        )
        return request.task_id, SignedTaskResult.model_validate_json(reply.body_bytes)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("tasks")
    env = daemon_env(pythonpath=[EXAMPLES], passphrase=PASSPHRASE)
    with reaped(env) as daemons:
        m = Mesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP + CLOUD_TOML[0], tables=CLOUD_TOML[1])
            daemons.run("cloud-1", cloud)
            for edge, (top, tables) in EDGE_TOML.items():
                enroll_edge(cloud, m.dir(edge), edge, PASSPHRASE, top=TOP + top, tables=tables)
                daemons.start(edge, m.dir(edge))
            for edge in EDGE_TOML:
                daemons.wait_ready(edge)
            tokens = {
                name: end_token(m.dir("edge-a"), *roles)
                for name, roles in (
                    ("edge-a.ok", ["submitter"]),
                    ("edge-a.norole", []),
                    ("edge-a.cli", ["submitter"]),
                )
            }
            m.enroll_devices(
                "edge-a", tokens, PASSPHRASE, unconnected=["edge-a.cli"], enroll_timeout=10
            )

            def edges_report_tasks() -> bool:
                peers = read_status(cloud)["peers"]
                seen = {
                    p["node_id"]
                    for p in peers
                    if p["report"] and "tasks" in (p["report"].get("services") or [])
                }
                return {"edge-a", "edge-b"} <= seen

            poll(edges_report_tasks, "the edges' reports listing the tasks service")
            yield m
        finally:
            m.close_devices()


def test_a_task_runs_where_the_policy_says_with_a_signed_result(mesh: Mesh) -> None:
    task_id, result = mesh.submit(
        "demo.sum", {"numbers": [1, 2, 3]}, TaskIntent(deadline_s=10.0), inline=[b"abcd", b"xy"]
    )
    outcome = verify_result(result, certificate(mesh.dir("cloud-1")))
    assert outcome.executor == "cloud-1"  # fastest, and local to the scheduler
    assert outcome.ok
    assert outcome.result == {"total": 6, "input_bytes": 6}
    assert outcome.task_id == task_id
    assert outcome.submitter == "edge-a.ok"
    assert result.attempts == []
    # the signature binds the result: anyone with the certificate detects a change
    forged = result.model_copy(
        update={"outcome": outcome.model_copy(update={"result": {"total": 7, "input_bytes": 6}})}
    )
    with pytest.raises(AuthenticationError):
        verify_result(forged, certificate(mesh.dir("cloud-1")))
    with pytest.raises(AuthenticationError):  # another node's certificate
        verify_result(result, certificate(mesh.dir("edge-b")))


def test_the_sdk_submits_and_returns_a_handle(mesh: Mesh) -> None:
    handle = mesh.devices["edge-a.ok"].submit(
        "cloud-1", "demo.sum", {"numbers": [4]}, intent=TaskIntent(deadline_s=10.0),
        inline=[b"xyz"],
    )  # fmt: skip
    result = handle.result(timeout=20)
    assert handle.done()
    outcome = verify_result(result, certificate(mesh.dir("cloud-1")))
    assert outcome.task_id == handle.task_id
    assert outcome.result == {"total": 4, "input_bytes": 3}
    refused = mesh.devices["edge-a.ok"].submit(
        "cloud-1", "demo.missing", intent=TaskIntent(deadline_s=5.0)
    )
    with pytest.raises(RemoteCallError) as exc:
        refused.result(timeout=20)
    assert exc.value.code == "no_placement"


def test_an_edge_only_task_never_reaches_the_idle_cloud(mesh: Mesh) -> None:
    for _ in range(3):
        _, result = mesh.submit(
            "demo.sum", {"numbers": [5]}, TaskIntent(deadline_s=10.0, privacy="edge-only"),
            work=100.0,  # compute (0.25 s vs 0.5 s) dominates the links' few ms
        )  # fmt: skip
        outcome = verify_result(result, certificate(mesh.dir("edge-a")))
        assert outcome.executor == "edge-a"  # the faster edge; the cloud is never tried
        assert result.attempts == []


def test_a_failing_executor_leads_to_a_retry_elsewhere(mesh: Mesh) -> None:
    task_id, result = mesh.submit(
        "demo.flaky", {"value": 42}, TaskIntent(deadline_s=10.0, privacy="edge-only"), work=100.0
    )
    outcome = verify_result(result, certificate(mesh.dir("edge-b")))
    assert outcome.executor == "edge-b"
    assert outcome.result == {"value": 42}
    assert result.attempts == ["edge-a"]
    cloud = mesh.dir("cloud-1")

    def lifecycle() -> dict[str, list[dict[str, Any]]]:
        return {
            kind: [r for r in query(cloud, kind) if r["subject"]["id"] == task_id]
            for kind in ("task.submitted", "task.placed", "task.finished", "task.failed")
        }

    poll(
        lambda: all(lifecycle().values()),
        "the task's lifecycle in the cloud log",
    )
    events = lifecycle()
    assert [e["details"]["node"] for e in events["task.placed"]] == ["edge-a", "edge-b"]
    assert {e["origin"] for e in events["task.failed"]} == {"edge-a"}
    assert [e["origin"] for e in events["task.finished"]] == ["edge-b"]  # once
    assert verify_cloud_log(cloud).startswith("OK:")


def test_deadlines_are_refused_or_reported(mesh: Mesh) -> None:
    # unmeetable by prediction: 10^6 work units at <= 1000 units/s in 1 s
    with pytest.raises(RemoteCallError) as refused:
        mesh.submit("demo.sum", {}, TaskIntent(deadline_s=1.0), work=1e6)
    assert refused.value.code == "deadline"
    # predicted fine, but the run overshoots: cancelled at the deadline and reported
    with pytest.raises(RemoteCallError) as missed:
        mesh.submit("demo.sleep", {"seconds": 5.0}, TaskIntent(deadline_s=1.0))
    assert missed.value.code == "deadline"
    assert "deadline missed" in missed.value.detail


def test_unregistered_types_and_unauthorized_submitters_are_refused(mesh: Mesh) -> None:
    with pytest.raises(RemoteCallError) as unknown:
        mesh.submit("demo.missing", {}, TaskIntent(deadline_s=5.0))
    assert unknown.value.code == "no_placement"
    assert "no_type=3" in unknown.value.detail
    # inline inputs that do not match their declaration (size/sha256) are refused
    request, _ = new_request("demo.sum", {}, intent=TaskIntent(deadline_s=5.0), inline=[b"abc"])
    with pytest.raises(RemoteCallError) as malformed:
        mesh.devices["edge-a.ok"].request("cloud-1", "task.submit", request, [b"abd"], timeout=20)
    assert malformed.value.code == "malformed"
    cloud = mesh.dir("cloud-1")
    before = read_status(cloud)["counters"]["rejections"].get("unauthorized", 0)
    with pytest.raises(TimeoutError):  # refused in the pipeline: no reply at all
        mesh.submit("demo.sum", {}, TaskIntent(deadline_s=5.0), device="edge-a.norole", timeout=2)
    poll(
        lambda: read_status(cloud)["counters"]["rejections"].get("unauthorized", 0) > before,
        "the cloud refusing the submitter without the role",
    )
    # a device cannot bypass the scheduler: task.run is for edge and cloud nodes only
    edge_a = mesh.dir("edge-a")
    before_a = read_status(edge_a)["counters"]["rejections"].get("unauthorized", 0)
    run = TaskRun(
        request=new_request("demo.sum", {}, intent=TaskIntent(deadline_s=5.0))[0],
        submitter="edge-a.ok", deadline_ms=int((time.time() + 5) * 1000), attempt=1,
    )  # fmt: skip
    with pytest.raises(TimeoutError):
        mesh.devices["edge-a.ok"].request("edge-a", "task.run", run, timeout=2)
    poll(
        lambda: read_status(edge_a)["counters"]["rejections"].get("unauthorized", 0) > before_a,
        "edge-a refusing a device's task.run",
    )


def test_the_cli_submits_and_verifies(mesh: Mesh, tmp_path: Path) -> None:
    out = cli(
        "task", "submit", "demo.sum", "--to", "cloud-1", "--args", '{"numbers": [2, 3]}',
        "--privacy", "edge-only", "--work", "100", "--data-dir", str(mesh.dir("edge-a.cli")),
        "-o", "json", env=ENV,
    )  # fmt: skip
    kept = tmp_path / "result.json"
    kept.write_text(out)
    result = SignedTaskResult.model_validate_json(out)
    assert result.outcome.executor == "edge-a"
    assert result.outcome.result == {"total": 5, "input_bytes": 0}
    cert = str(mesh.dir("edge-a") / "node.cert")
    assert cli("task", "verify", str(kept), "--cert", cert).startswith("OK: task ")
    doc = json.loads(out)
    doc["outcome"]["result"]["total"] = 6
    kept.write_text(json.dumps(doc))
    with pytest.raises(AssertionError, match="failed"):  # one error line, exit 1
        cli("task", "verify", str(kept), "--cert", cert)
    # the device's own submissions, as the scheduler knows them
    asked = ("--to", "cloud-1", "--data-dir", str(mesh.dir("edge-a.cli")), "-o", "json")
    listed = json.loads(cli("task", "list", *asked, env=ENV))
    assert [(r["task"], r["state"], r["node"]) for r in listed] == [
        (result.outcome.task_id, "finished", "edge-a")
    ]
    one = json.loads(cli("task", "status", result.outcome.task_id, *asked, env=ENV))
    assert one["updated"].endswith("Z")
    with pytest.raises(AssertionError, match="already ended: finished"):
        cli("task", "cancel", result.outcome.task_id, *asked, env=ENV)
    with pytest.raises(AssertionError, match="knows no task"):
        cli("task", "status", "0" * 32, *asked, env=ENV)


def test_a_device_cancels_its_task_and_the_executors_worker_stops(mesh: Mesh) -> None:
    device = mesh.devices["edge-a.ok"]
    handle = device.submit(
        "cloud-1", "demo.spin", {"seconds": 40.0},
        intent=TaskIntent(deadline_s=60.0, privacy="edge-only"),
    )  # fmt: skip
    edge_a = mesh.dir("edge-a")

    def tasks_status() -> dict[str, Any]:
        status: dict[str, Any] = read_status(edge_a)["services"]["tasks"]
        return status

    poll(lambda: bool(tasks_status()["running"]), "demo.spin running on edge-a")
    state = handle.status()
    assert state is not None
    assert (state.state, state.node) == ("placed", "edge-a")
    assert handle.cancel() is True
    with pytest.raises(RemoteCallError) as cancelled:
        handle.result(timeout=30)
    assert cancelled.value.code == "cancelled"
    poll(lambda: tasks_status()["workers"]["killed"] >= 1, "edge-a killing the worker")
    assert not tasks_status()["running"]
    after = handle.status()
    assert after is not None
    assert after.state == "cancelled"
    assert handle.cancel() is False  # ended already
    cloud = mesh.dir("cloud-1")
    poll(
        lambda: any(r["subject"]["id"] == handle.task_id for r in query(cloud, "task.cancelled")),
        "task.cancelled in the cloud's log",
    )


def test_a_task_longer_than_the_relay_window_returns_its_result(mesh: Mesh) -> None:
    """edge-a passes replies back within 2 x 4 s only; a 9-s task submitted
    through it comes back by the detached path (task.start, task.result polls)."""
    device = mesh.devices["edge-a.ok"]
    seconds = 2 * RELAY_TIMEOUT + 1.0
    started = time.monotonic()
    handle = device.submit(
        "cloud-1", "demo.sleep", {"seconds": seconds}, intent=TaskIntent(deadline_s=40.0)
    )  # detached by default: 40 + 5 s > 2 x the device's request timeout
    poll(lambda: handle.status() is not None, "the scheduler to know the started task")
    assert handle.status().state in {"submitted", "placed"}  # type: ignore[union-attr]
    result = handle.result(timeout=60)
    assert time.monotonic() - started >= seconds
    outcome = verify_result(result, certificate(mesh.dir(result.outcome.executor)))
    assert outcome.result == {"slept": seconds}
    assert handle.status().state == "finished"  # type: ignore[union-attr]


def test_locality_places_near_the_shards_and_a_killed_executor_is_retried_elsewhere(
    mesh: Mesh,
) -> None:
    """Runs last: it SIGKILLs edge-b. The object's shards are on edge-b and the
    intent weighs locality, so the task goes there although edge-a is faster;
    edge-b dies mid-task, and after 3x its predicted time the cloud retries on
    edge-a; the device gets exactly one reply, from edge-a."""
    ref = ObjectRef(object_id="ab" * 32, size=100_000_000, holders=["edge-b"])
    request, _ = new_request(
        "demo.sleep", {"seconds": 2.0}, work=200.0, objects=[ref],
        intent=TaskIntent(deadline_s=25.0, privacy="edge-only", locality_weight=1.0),
    )  # fmt: skip
    edge_b = mesh.dir("edge-b")

    def running_on_b() -> bool:
        return bool(read_status(edge_b)["services"]["tasks"]["running"])

    device = mesh.devices["edge-a.ok"]
    handle = device.submit(
        "cloud-1", "demo.sleep", {"seconds": 2.0}, work=200.0, objects=[ref],
        intent=request.intent, detached=True,
    )  # fmt: skip
    request = request.model_copy(update={"task_id": handle.task_id})
    poll(running_on_b, "the task running on edge-b")
    mesh.daemons.procs["edge-b"].kill()
    mesh.daemons.procs["edge-b"].wait(30)
    result = handle.result(timeout=60)
    outcome = verify_result(result, certificate(mesh.dir("edge-a")))
    assert outcome.executor == "edge-a"
    assert outcome.result == {"slept": 2.0}
    assert result.attempts == ["edge-b"]
    cloud = mesh.dir("cloud-1")

    def placed() -> list[str]:
        rows = query(cloud, "task.placed")
        return [r["details"]["node"] for r in rows if r["subject"]["id"] == request.task_id]

    poll(lambda: len(placed()) == 2, "both placements in the cloud log")
    assert placed() == ["edge-b", "edge-a"]
