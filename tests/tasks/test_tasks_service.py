"""The tasks service on a real in-memory node: signing, run-once, deadlines, bounds, audit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from node_testlib import Fixture, Member, build_node, memory_factory, run, wait_for
from pydantic import BaseModel, ConfigDict

from securemesh.crypto.signing import verify_signature
from securemesh.errors import AuthenticationError, DecodeError
from securemesh.node import NodeContext, NullAuditRecorder, ServiceHost, verify_statement
from securemesh.tasks import (
    DeadlinePassed,
    NoPlacement,
    ObjectRef,
    Scheduler,
    TaskBusy,
    TaskFailed,
    TaskIntent,
    TaskRegistry,
    TaskRun,
    TaskService,
    UnknownTaskType,
    canonical_json,
    new_request,
    verify_result,
)


class Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    n: int = 0
    sleep: float = 0.0


class Out(BaseModel):
    n: int


def registry(calls: list[int]) -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task("t.echo")
    async def echo(args: Args, inputs: Sequence[bytes]) -> Out:
        calls.append(args.n)
        await asyncio.sleep(args.sleep)
        return Out(n=args.n + sum(len(b) for b in inputs))

    @reg.task("t.boom")
    def boom(args: Args, inputs: Sequence[bytes]) -> Out:
        raise RuntimeError("boom")

    return reg


def _run(task_type: str, args: dict[str, object], *, deadline_s: float = 5.0, **kw: object):  # type: ignore[no-untyped-def]
    request, frames = new_request(task_type, args, intent=TaskIntent(deadline_s=deadline_s), **kw)  # type: ignore[arg-type]
    deadline_ms = int((time.time() + deadline_s) * 1000)
    return TaskRun(request=request, submitter="dev-1", deadline_ms=deadline_ms, attempt=1), frames


@contextlib.asynccontextmanager
async def hosted(
    svc: TaskService, tmp_path: Path, node_id: str = "edge-1", tier: str = "edge"
) -> AsyncIterator[tuple[NodeContext, NullAuditRecorder, Member]]:
    """``svc`` installed and running on a started in-memory node; stopped on exit."""
    fx = Fixture()
    member = fx.member(node_id, tier)
    built = build_node(fx, member, memory_factory(), listen=f"memory://tasks-{node_id}")
    audit = NullAuditRecorder(origin=node_id)
    host = ServiceHost(built.node, audit=audit, data_dir=tmp_path)
    ctx = host.install(svc)
    await built.node.start()
    await host.start()
    try:
        yield ctx, audit, member
    finally:
        await host.stop()
        await built.node.stop()


def test_the_executor_signs_runs_once_enforces_deadlines_and_bounds(tmp_path: Path) -> None:
    async def main() -> None:
        calls: list[int] = []
        svc = TaskService(registry(calls), max_concurrency=2, max_per_peer=1, max_queue=2)
        async with hosted(svc, tmp_path) as (ctx, audit, member):
            cert = member.cert.unverified_certificate()
            # the seam's statements: domain-separated, per service
            sig = ctx.sign_statement(b"hello")
            assert verify_statement(cert.verify_key, "tasks", b"hello", sig) == b"hello"
            with pytest.raises(AuthenticationError):
                verify_statement(cert.verify_key, "other", b"hello", sig)
            with pytest.raises(AuthenticationError):  # never a bare signature over the data
                verify_signature(cert.verify_key, b"hello", sig)

            task, frames = _run("t.echo", {"n": 3}, inline=[b"ab"])
            result = await svc.execute(task, frames, peer="sched")
            outcome = verify_result(result, cert)
            assert outcome.ok
            assert outcome.result == {"n": 5}
            assert outcome.executor == "edge-1"
            # run once per task id: a repeat (a retry racing a slow reply) gets the same result
            assert await svc.execute(task, frames, peer="sched") == result
            assert calls == [3]
            # ... but the id is no ticket to the result for another submitter or request
            other = task.model_copy(update={"submitter": "dev-9"})
            with pytest.raises(DecodeError):
                await svc.execute(other, frames, peer="sched")
            with pytest.raises(DecodeError):
                await svc.execute(task, [b"zz"], peer="sched")
            # a signature over a changed statement fails
            bad = result.model_copy(
                update={"outcome": outcome.model_copy(update={"submitter": "dev-2"})}
            )
            with pytest.raises(AuthenticationError):
                verify_result(bad, cert)
            assert canonical_json({"b": 1, "a": [1.5]}) == b'{"a":[1.5],"b":1}'

            # the task's own failure is a signed, audited failure
            failed = await svc.execute(_run("t.boom", {})[0], [], peer="sched")
            assert not verify_result(failed, cert).ok
            assert failed.outcome.error == "RuntimeError"
            # cancelled at the deadline
            slow = await svc.execute(
                _run("t.echo", {"sleep": 5.0}, deadline_s=0.2)[0], [], peer="s"
            )
            assert slow.outcome.error == "deadline"
            # refused before running
            with pytest.raises(UnknownTaskType):
                await svc.execute(_run("t.missing", {})[0], [], peer="sched")
            late, _ = _run("t.echo", {}, deadline_s=0.01)
            late = late.model_copy(update={"deadline_ms": int(time.time() * 1000) - 1})
            with pytest.raises(DeadlinePassed):
                await svc.execute(late, [], peer="sched")
            with pytest.raises(DecodeError):
                await svc.execute(_run("t.echo", {"n": "3"})[0], [], peer="sched")
            # bounds: one open run per peer, two in all
            first = asyncio.ensure_future(
                svc.execute(_run("t.echo", {"sleep": 0.5})[0], [], peer="p1")
            )
            await asyncio.sleep(0.05)
            with pytest.raises(TaskBusy):
                await svc.execute(_run("t.echo", {})[0], [], peer="p1")
            second = asyncio.ensure_future(
                svc.execute(_run("t.echo", {"sleep": 0.5})[0], [], peer="p2")
            )
            await asyncio.sleep(0.05)
            with pytest.raises(TaskBusy):
                await svc.execute(_run("t.echo", {})[0], [], peer="p3")
            await asyncio.gather(first, second)
            kinds = [str(e.kind) for e in audit.events]
            assert kinds.count("task.finished") >= 3
            assert kinds.count("task.failed") == 2  # boom, deadline
            assert svc.status()["counts"]["repeat"] == 1  # type: ignore[index]

    run(main())


def test_the_scheduler_places_locally_when_alone_and_refuses_what_it_cannot_meet(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        calls: list[int] = []
        svc = TaskService(registry(calls), scheduler=Scheduler())
        async with hosted(svc, tmp_path, "cloud-1", "cloud") as (_, audit, _member):
            request, frames = new_request("t.echo", {"n": 1}, intent=TaskIntent(deadline_s=5))
            result = await svc.submit(request, frames, submitter="dev-1")
            assert result.outcome.executor == "cloud-1"
            kinds = [str(e.kind) for e in audit.events]
            assert [k for k in kinds if k.startswith("task.")] == [
                "task.submitted",
                "task.placed",
                "task.finished",
            ]
            # a re-submission while the first runs waits for it: one run, one result
            slow, _ = new_request("t.echo", {"n": 7, "sleep": 0.3}, intent=TaskIntent(deadline_s=5))
            both = await asyncio.gather(
                svc.submit(slow, [], submitter="dev-1"), svc.submit(slow, [], submitter="dev-1")
            )
            assert both[0] == both[1]
            assert calls.count(7) == 1
            slow2, _ = new_request(
                "t.echo", {"n": 9, "sleep": 0.3}, intent=TaskIntent(deadline_s=5)
            )
            other = slow2.model_copy(update={"args": {"n": 8}})
            racing = asyncio.ensure_future(svc.submit(slow2, [], submitter="dev-1"))
            await asyncio.sleep(0.05)
            with pytest.raises(DecodeError):  # the same id for another request
                await svc.submit(other, [], submitter="dev-1")
            await racing
            # edge-only: the only node is the cloud, so nothing may run it
            private, _ = new_request(
                "t.echo", {}, intent=TaskIntent(deadline_s=5, privacy="edge-only")
            )
            with pytest.raises(NoPlacement) as refused:
                await svc.submit(private, [], submitter="dev-1")
            assert refused.value.reasons == {"privacy": 1}
            assert str(audit.events[-1].kind) == "task.failed"
            # a failing type fails everywhere: task_failed, after one attempt per node
            boom, _ = new_request("t.boom", {}, intent=TaskIntent(deadline_s=5))
            with pytest.raises(TaskFailed):
                await svc.submit(boom, [], submitter="dev-1")

    run(main())


def test_an_overrunning_thread_keeps_its_slot_until_it_returns(tmp_path: Path) -> None:
    """A plain function abandoned at its deadline still holds its slot: overrunning
    tasks cannot pile up threads beyond ``max_concurrency`` (before the fix, the next
    task got a fresh thread at once while the abandoned one kept running)."""

    async def main() -> None:
        release = threading.Event()
        reg = TaskRegistry()

        @reg.task("t.block")
        def block(args: Args, inputs: Sequence[bytes]) -> Out:
            release.wait(10)
            return Out(n=args.n)

        @reg.task("t.quick")
        def quick(args: Args, inputs: Sequence[bytes]) -> Out:
            return Out(n=args.n)

        svc = TaskService(reg, max_concurrency=1)
        async with hosted(svc, tmp_path):
            try:
                first = await svc.execute(_run("t.block", {}, deadline_s=0.2)[0], [], peer="s")
                assert first.outcome.error == "deadline"
                assert svc.status()["abandoned"] == 1
                # the only slot is still taken by the abandoned thread: even a quick task
                # waits for it (and here misses its deadline) instead of a second thread
                second = await svc.execute(
                    _run("t.quick", {"n": 2}, deadline_s=0.3)[0], [], peer="s"
                )
                assert second.outcome.error == "deadline"
                release.set()
                await wait_for(lambda: svc.status()["abandoned"] == 0)
                release.clear()
                threading.Timer(0.05, release.set).start()
                third = await svc.execute(_run("t.block", {"n": 3}, deadline_s=5)[0], [], peer="s")
                assert third.outcome.result == {"n": 3}
            finally:
                release.set()

    run(main())


def test_stored_object_inputs_reach_the_function_and_placement_can_be_pinned(
    tmp_path: Path,
) -> None:
    """The executor's side of tasks over stored objects (the storage-backed reader is
    tested on real daemons in test_tasks_objects_daemons.py): the reader is asked for
    the submitter's object under the key the scheduler vouched for, its bytes follow
    the inline inputs, and without a reader, a key or within the bound the run fails;
    ``place`` ranks without running, and a pinned request runs on that node only."""

    async def main() -> None:
        asked: list[tuple[str, bytes, str | None, int]] = []

        async def reader(
            ctx: NodeContext, owner: str, key: bytes, ref: ObjectRef, max_bytes: int
        ) -> bytes:
            asked.append((owner, key, ref.name, max_bytes))
            return b"x" * ref.size

        calls: list[int] = []
        svc = TaskService(registry(calls), scheduler=Scheduler(), object_reader=reader)
        async with hosted(svc, tmp_path, "cloud-1", "cloud") as (_, _audit, member):
            ref = ObjectRef(object_id="ab" * 16, size=5, name="in/1")
            task, frames = _run("t.echo", {"n": 1}, inline=[b"ab"], objects=[ref])
            keyed = task.model_copy(update={"submitter_key": "cd" * 32})
            result = await svc.execute(keyed, frames, peer="sched")
            assert result.outcome.result == {"n": 1 + 2 + 5}
            assert asked == [("dev-1", bytes.fromhex("cd" * 32), "in/1", 64 * 1024 * 1024)]
            # no key vouched for by the scheduler: the manifest cannot be checked
            unkeyed, frames = _run("t.echo", {}, objects=[ref])
            failed = await svc.execute(unkeyed, frames, peer="sched")
            assert failed.outcome.error == "AuthenticationError"
            # a reader that returns more than the bound
            big = ObjectRef(object_id="ab" * 16, size=64 * 1024 * 1024 + 1, name="in/2")
            over, frames = _run("t.echo", {}, objects=[big])
            over = over.model_copy(update={"submitter_key": "cd" * 32})
            assert (await svc.execute(over, frames, peer="sched")).outcome.error == "LocalError"
            # a reference without a name is a locality hint only: nothing is read
            hint = ObjectRef(object_id="ef" * 32, size=9, holders=["edge-1"])
            plain, frames = _run("t.echo", {"n": 4}, objects=[hint])
            assert (await svc.execute(plain, frames, peer="s")).outcome.result == {"n": 4}
            assert len(asked) == 2

            # place: where it would run, with the node's certificate; nothing runs
            before = len(calls)
            request, _ = new_request("t.echo", {"n": 2}, intent=TaskIntent(deadline_s=5))
            placement = await svc.place(request, submitter="dev-1")
            assert placement.node == "cloud-1"
            assert bytes.fromhex(placement.certificate) == member.cert.to_bytes()
            assert len(calls) == before
            # pinned: that node only (here: absent, so nothing may run it)
            pinned = request.model_copy(update={"executor": "edge-9"})
            with pytest.raises(NoPlacement):
                await svc.submit(pinned, [], submitter="dev-1")
            here = request.model_copy(update={"executor": "cloud-1"})
            assert (await svc.submit(here, [], submitter="dev-1")).outcome.executor == "cloud-1"

        bare = TaskService(registry([]))
        async with hosted(bare, tmp_path / "bare") as _:
            task, frames = _run("t.echo", {}, objects=[ref])
            task = task.model_copy(update={"submitter_key": "cd" * 32})
            assert (await bare.execute(task, frames, peer="s")).outcome.error == "LocalError"

    run(main())
