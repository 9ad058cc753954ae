"""Plain-function task types run in worker processes: killed at the deadline,
replaced after a crash, bounded by the executor's concurrency (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from node_testlib import wait_for
from test_tasks_service import _run, hosted
from worker_tasks import REGISTRY, Args, Out

from securemesh.tasks import TaskRegistry, TaskService, locate, verify_result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):  # reaped by the pool's join
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    return True


def test_plain_functions_run_in_killable_worker_processes(tmp_path: Path) -> None:
    registry = TaskRegistry(REGISTRY)

    @registry.task("w.closure")
    def closure(args: Args, inputs: Sequence[bytes]) -> Out:  # not importable: a thread
        return Out(pid=os.getpid(), n=args.n)

    assert locate(closure) is None
    assert locate(REGISTRY.get("w.where").func) == ("worker_tasks", "where")  # type: ignore[union-attr]

    async def main() -> None:
        svc = TaskService(registry, max_concurrency=2)
        async with hosted(svc, tmp_path) as (_ctx, _audit, member):
            cert = member.cert.unverified_certificate()
            assert svc.status()["in_processes"] == sorted(REGISTRY.names())
            # in another process, with its inputs, signed as usual
            run, frames = _run("w.where", {"n": 1}, inline=[b"abc"], deadline_s=30.0)
            outcome = verify_result(await svc.execute(run, frames, peer="s"), cert)
            assert outcome.ok, outcome.error
            worker_pid = outcome.result["pid"]  # type: ignore[index]
            assert worker_pid != os.getpid()
            assert outcome.result["n"] == 4  # type: ignore[index]
            # the same worker serves the next run
            again = await svc.execute(_run("w.where", {}, deadline_s=30.0)[0], [], peer="s")
            assert again.outcome.result["pid"] == worker_pid  # type: ignore[index]
            closure_run = await svc.execute(_run("w.closure", {}, deadline_s=30.0)[0], [], peer="s")
            assert closure_run.outcome.result["pid"] == os.getpid()  # type: ignore[index]

            # a task past its deadline is killed: the process really stops
            pid_file = tmp_path / "spin.pid"
            started = time.monotonic()
            late = await svc.execute(
                _run("w.spin", {"seconds": 30.0, "pid_file": str(pid_file)}, deadline_s=2.0)[0],
                [],
                peer="s",
            )
            assert late.outcome.error == "deadline"
            assert time.monotonic() - started < 15
            spun = int(pid_file.read_text())
            await wait_for(lambda: not _alive(spun), timeout=20)
            # the task's failures are named; a dead worker is replaced
            for task_type, error in (
                ("w.fail", "ValueError"),
                ("w.wrong", "TypeError"),
                ("w.crash", "WorkerCrashed"),
            ):
                failed = await svc.execute(_run(task_type, {}, deadline_s=30.0)[0], [], peer="s")
                assert failed.outcome.error == error
            fresh = await svc.execute(_run("w.where", {}, deadline_s=30.0)[0], [], peer="s")
            assert fresh.outcome.ok
            workers = svc.status()["workers"]
            assert isinstance(workers, dict)
            assert workers["killed"] == 1
            assert workers["crashed"] == 1
            assert workers["live"] <= 2
            # concurrency: two slots, three spinning runs: the third waits for a slot
            runs = [_run("w.spin", {"seconds": 0.6, "n": i}, deadline_s=60.0)[0] for i in range(3)]
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(svc.execute(r, [], peer=f"p{i}") for i, r in enumerate(runs))
            )
            assert all(r.outcome.ok for r in results)
            assert time.monotonic() - t0 >= 1.2  # at most two ran at once
            assert len({r.outcome.result["pid"] for r in results}) <= 2  # type: ignore[index]
        assert svc.status()["workers"]["live"] == 0  # type: ignore[index]

    asyncio.run(main())


def test_thread_mode_keeps_plain_functions_in_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        svc = TaskService(TaskRegistry(REGISTRY), workers="thread")
        async with hosted(svc, tmp_path):
            assert svc.status()["workers"] is None
            done = await svc.execute(_run("w.where", {}, deadline_s=30.0)[0], [], peer="s")
            assert done.outcome.result["pid"] == os.getpid()  # type: ignore[index]

    asyncio.run(main())
    with pytest.raises(Exception, match="process"):
        TaskService(TaskRegistry(), workers="fork")


def test_a_submitter_cancels_its_own_task_and_the_worker_stops(tmp_path: Path) -> None:
    from securemesh.tasks import Scheduler, TaskCancelled, TaskIntent, new_request

    async def main() -> None:
        svc = TaskService(TaskRegistry(REGISTRY), scheduler=Scheduler(), max_concurrency=2)
        async with hosted(svc, tmp_path, node_id="cloud-1", tier="cloud") as (_ctx, audit, _m):
            pid_file = tmp_path / "cancel.pid"
            request, _ = new_request(
                "w.spin",
                {"seconds": 60.0, "pid_file": str(pid_file)},
                intent=TaskIntent(deadline_s=120.0),
            )
            running = asyncio.ensure_future(svc.submit(request, [], submitter="dev-1"))
            await wait_for(pid_file.exists, timeout=30)
            spun = int(pid_file.read_text())
            [placed] = svc.states("dev-1", request.task_id)
            assert (placed.state, placed.node, placed.attempts) == ("placed", "cloud-1", 1)
            # a task id is no ticket: another submitter neither sees nor cancels it
            assert svc.cancel("dev-2", request.task_id) is None
            assert svc.states("dev-2") == []
            assert not running.done()
            state = svc.cancel("dev-1", request.task_id)
            assert state is not None
            assert state.state == "cancelled"
            with pytest.raises(TaskCancelled):
                await running
            await wait_for(lambda: not _alive(spun), timeout=20)  # the worker was killed
            assert svc.states("dev-1")[0].state == "cancelled"
            # a finished task is not cancelled again; the newest comes first
            done_req, _ = new_request("w.where", {}, intent=TaskIntent(deadline_s=60.0))
            result = await svc.submit(done_req, [], submitter="dev-1")
            assert result.outcome.ok
            assert svc.cancel("dev-1", done_req.task_id).state == "finished"  # type: ignore[union-attr]
            assert [t.task_id for t in svc.states("dev-1")] == [done_req.task_id, request.task_id]
            assert "task.cancelled" in [e.kind for e in audit.events]
            # what a submitter can grow is bounded
            for _ in range(300):
                svc._remember(
                    "dev-3",
                    new_request("w.where", {}, intent=TaskIntent(deadline_s=1))[0],
                    "failed",
                )
            assert len(svc.states("dev-3")) == 256

    asyncio.run(main())


def test_a_detached_submission_is_polled_for_its_result(tmp_path: Path) -> None:
    from securemesh.tasks import Scheduler, TaskIntent, new_request

    async def main() -> None:
        svc = TaskService(TaskRegistry(REGISTRY), scheduler=Scheduler(), max_concurrency=2)
        async with hosted(svc, tmp_path, node_id="cloud-1", tier="cloud"):
            request, frames = new_request(
                "w.spin", {"seconds": 1.0, "n": 7}, intent=TaskIntent(deadline_s=60.0)
            )
            state = svc.start_detached(request, list(frames), submitter="dev-1")
            assert state.state == "submitted"
            # a repeat of the same id is not started again
            assert svc.start_detached(request, list(frames), submitter="dev-1").task_id == (
                request.task_id
            )
            early = await svc.poll("dev-1", request.task_id)  # no wait: not there yet
            assert early.result is None
            assert early.state is not None
            polled = await svc.poll("dev-1", request.task_id, wait_s=30.0)  # a long poll
            assert polled.result is not None
            assert polled.result.outcome.result["n"] == 7  # type: ignore[index]
            assert polled.state.state == "finished"  # type: ignore[union-attr]
            assert (await svc.poll("dev-2", request.task_id)).result is None  # not theirs
            # a refused detached submission: its state says why
            bad, _ = new_request("w.missing", {}, intent=TaskIntent(deadline_s=5.0))
            svc.start_detached(bad, [], submitter="dev-1")
            await wait_for(lambda: svc.states("dev-1", bad.task_id)[0].state == "failed")
            assert svc.states("dev-1", bad.task_id)[0].error == "no_placement"
            # kept results are bounded per submitter
            for _ in range(70):
                svc._keep_result(
                    (
                        "dev-3",
                        new_request("w.where", {}, intent=TaskIntent(deadline_s=1))[0].task_id,
                    ),
                    polled.result,
                )
            assert sum(1 for k in svc._results if k[0] == "dev-3") == 64

    asyncio.run(main())
