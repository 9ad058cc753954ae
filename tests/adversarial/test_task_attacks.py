"""Attacks on the tasks service by a compromised device (issue #9, "go beyond the list").

The edge of the operator-built mesh also runs ``examples/task_service.py``'s
scheduler (``make_scheduler``: executor and scheduler, submitters need role
``submitter``). A device enrolled with that role is *compromised*: its keys
and its SDK are the attacker's, so everything it sends is properly signed.
While it attacks, an honest device keeps echoing (p99 < 500 ms) and an
honest submitter's task must come back, and the edge's RSS must grow < 128
MiB. The attacks, each of which must fail:

1. a flood of submissions (``busy`` beyond 16 open per submitter; what is
   admitted runs; nothing else is starved);
2. huge arguments (refused, nothing runs);
3. unknown task types (``no_placement``);
4. a replayed task id: with other arguments (``malformed``, ``task_id:
   reused``); the same request again (the executor's kept, signed result:
   it does not run twice);
5. reading and cancelling another device's task (unknown to the attacker;
   the honest task finishes), and ``task.abort`` sent straight to the
   executor (refused: only the scheduling tiers may send it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    FAST_KDF,
    PASSPHRASE,
    Mesh,
    RoundTrips,
    RssWatch,
    attack_seconds,
    operator_mesh,
    wait_until,
)

from securemesh.errors import RemoteCallError
from securemesh.sdk import Device
from securemesh.tasks import (
    SignedTaskResult,
    TaskIntent,
    TaskQuery,
    TaskStates,
    new_request,
    verify_result,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SUBMITTERS = '\n[[policy.allow]]\ntypes = ["task.*"]\ntiers = ["end"]\nroles = ["submitter"]\n'


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with operator_mesh(
        tmp_path_factory.mktemp("task-attacks"),
        edge_services=["task_service:make_scheduler"],
        edge_tables=SUBMITTERS,
        pythonpath=[EXAMPLES],
    ) as built:
        yield built


def _submitter(mesh: Mesh, name: str) -> Device:
    data_dir = mesh.root / "devices" / name
    Device.enroll(
        mesh.token(roles="submitter"), data_dir=data_dir, node_id=name,
        passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=30,
    )  # fmt: skip
    return mesh.connect(data_dir)


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, RemoteCallError) else type(exc).__name__


def test_a_compromised_submitter_cannot_flood_forge_replay_or_cancel_others(mesh: Mesh) -> None:
    honest = mesh.connect(mesh.enroll_device("edge-1.honest"))
    honest_sub = _submitter(mesh, "edge-1.honest-sub")
    attacker = _submitter(mesh, "edge-1.mallory")
    edge = "edge-1"
    try:
        with RoundTrips(honest) as rt, RssWatch(mesh.pid("edge")) as rss:
            # the honest submitter's task, running through the whole attack
            honest_task = honest_sub.submit(
                edge, "demo.sleep", {"seconds": 2.0}, intent=TaskIntent(deadline_s=15.0)
            )
            # 1. flood: as many submissions as the attack lasts (at most 400)
            flood = []
            end = time.monotonic() + attack_seconds(short=2.0, long=30.0)
            while time.monotonic() < end and len(flood) < 400:
                flood.append(
                    attacker.submit(
                        edge, "demo.sleep", {"seconds": 0.5}, intent=TaskIntent(deadline_s=15.0)
                    )
                )
            outcomes: Counter[str] = Counter()
            for handle in flood:
                try:
                    handle.result(timeout=60)
                    outcomes["ok"] += 1
                except (RemoteCallError, TimeoutError) as exc:
                    outcomes[_code(exc)] += 1
            assert outcomes["busy"] > 0, outcomes  # bounded per submitter
            assert outcomes["ok"] >= 16, outcomes  # what was admitted ran
            assert set(outcomes) <= {"ok", "busy"}, outcomes

            # 2. huge arguments: a body as large as the envelope allows (64 KiB; larger
            # cannot be encoded, and the edge's decoder refuses it) with args the type's
            # model refuses (at most 10,000 numbers); the attacker writes the body itself
            valid, _ = new_request("demo.sum", {}, intent=TaskIntent(deadline_s=5.0))
            body = json.loads(valid.model_dump_json())
            raw = json.dumps({**body, "args": {"numbers": [7] * 20_000}}).encode()
            assert 60_000 < len(raw) < 65_536
            with pytest.raises(RemoteCallError) as huge:
                attacker.request(edge, "task.submit", raw, timeout=20)
            assert huge.value.code in {"malformed", "task_failed"}
            # (the executor validates args before anything runs: a DecodeError, no result)

            # 3. unknown task types
            with pytest.raises(RemoteCallError) as unknown:
                attacker.submit(edge, "demo.nope", {}, intent=TaskIntent(deadline_s=5.0)).result(
                    timeout=20
                )
            assert unknown.value.code == "no_placement"

            # 4. a replayed task id
            request, _ = new_request(
                "demo.sum", {"numbers": [1, 2]}, intent=TaskIntent(deadline_s=5.0)
            )
            first = SignedTaskResult.model_validate_json(
                attacker.request(edge, "task.submit", request, timeout=20).body_bytes
            )
            other = request.model_copy(update={"args": {"numbers": [9]}})
            conflicts = mesh.status("edge")["services"]["tasks"]["counts"].get("id_conflict", 0)
            with pytest.raises(RemoteCallError) as reused:
                attacker.request(edge, "task.submit", other, timeout=20)
            # the executor refuses the id for another request; nothing retried elsewhere
            assert reused.value.code in {"malformed", "task_failed"}
            wait_until(
                lambda: (
                    mesh.status("edge")["services"]["tasks"]["counts"].get("id_conflict", 0)
                    > conflicts
                ),
                what="the executor counting the reused task id",
            )
            again = SignedTaskResult.model_validate_json(
                attacker.request(edge, "task.submit", request, timeout=20).body_bytes
            )
            assert again.outcome == first.outcome  # the kept result: it did not run twice

            # 5. another device's task: unknown to the attacker, not cancellable by it
            for msg_type in ("task.status", "task.cancel"):
                reply = attacker.request(
                    edge, msg_type, TaskQuery(task_id=honest_task.task_id), timeout=20
                )
                assert TaskStates.model_validate_json(reply.body_bytes).tasks == []
            refused = mesh.rejections("edge").get("unauthorized", 0)
            with pytest.raises(TimeoutError):  # dropped by the edge's policy: no reply
                attacker.request(
                    edge, "task.abort", TaskQuery(task_id=honest_task.task_id), timeout=2
                )
            wait_until(
                lambda: mesh.rejections("edge").get("unauthorized", 0) > refused,
                what="the edge refusing a device's task.abort",
            )
            result = honest_task.result(timeout=30)
            cert = (mesh.dir("edge") / "node.cert").read_bytes()
            from securemesh.crypto.certs import SignedCertificate

            outcome = verify_result(
                result, SignedCertificate.from_bytes(cert).unverified_certificate()
            )
            assert outcome.result == {"slept": 2.0}
        rt.assert_p99()
        rss.assert_bounded()
    finally:
        for dev in (honest, honest_sub, attacker):
            dev.close()


def test_a_device_without_the_submitter_role_cannot_submit_tasks(mesh: Mesh) -> None:
    """Tasks beyond a role: an enrolled ``sensor`` device's ``task.submit`` is dropped by
    the edge's policy (no reply, counted ``unauthorized``) and nothing runs for it."""
    sensor = mesh.connect(mesh.enroll_device("edge-1.sensor-only"))
    try:
        refused = mesh.rejections("edge").get("unauthorized", 0)
        ran = mesh.status("edge")["services"]["tasks"]["counts"].get("finished", 0)
        request, _ = new_request("demo.sum", {"numbers": [1, 2]}, intent=TaskIntent(deadline_s=5))
        with pytest.raises(TimeoutError):
            sensor.request("edge-1", "task.submit", request, timeout=2)
        wait_until(
            lambda: mesh.rejections("edge").get("unauthorized", 0) > refused,
            what="the edge refusing a task from a device without the submitter role",
        )
        assert mesh.status("edge")["services"]["tasks"]["counts"].get("finished", 0) == ran
    finally:
        sensor.close()
