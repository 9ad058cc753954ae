"""The tasks service: an executor on every node, a scheduler where submissions arrive.

Theory of operation
-------------------
:class:`TaskService` is a :class:`~securemesh.node.Service` (``name = "tasks"``)
loaded from ``node.toml`` like any other. It always **executes**: it answers
``task.types`` (the names in its registry) and ``task.run`` from ``edge`` and
``cloud`` nodes. With a :class:`~securemesh.tasks.Scheduler` it also
**schedules**: it answers ``task.submit``.

``task.submit`` (a :class:`TaskRequest`, inline inputs as raw frames):

1. bounds: at most ``max_per_peer`` open submissions per submitter and
   ``max_queue`` in total (``busy``); frames match the inline inputs
   (count, size, sha256; ``malformed``); audit ``task.submitted``;
2. candidates: every neighbour whose report lists the ``tasks`` service
   (``ctx.peers()``), its tier from its certificate, its task types from
   ``task.types`` (cached ``types_ttl`` seconds), plus this node itself;
3. the scheduler ranks them under the hard constraints with the time left to
   the deadline; none: ``task.failed`` and ``mesh.error`` ``deadline`` (only
   the deadline ruled nodes out) or ``no_placement``;
4. the best goes first (audit ``task.placed``): ``task.run`` with the absolute
   deadline, or a local run. The reply must be a result signed by that very
   node's certificate key for this task id (:func:`verify_result`), else it
   counts as a failure; a failure, ``mesh.error`` or timeout excludes that
   node and the scheduler ranks again with the time now left, at most
   ``max_attempts`` times. While another node is feasible, a node gets
   ``patience`` (3) x its predicted time (at least 1 s) to answer, so a lost
   or killed executor leaves time for a retry; the last one gets the deadline;
5. the reply to the submitter is the executor's :class:`SignedTaskResult`
   (with the nodes tried before, unsigned); a run that failed everywhere is
   ``mesh.error`` ``task_failed``.

``task.run`` (a :class:`TaskRun`): the type must be registered here
(``unknown_task_type``); the deadline must not have passed (``deadline``);
at most ``max_per_peer`` runs per scheduler and ``max_queue`` in total wait
or run (``busy``), ``max_concurrency`` run at once. The same task id is run
once: a repeat gets the same signed result (the last 1,024 are kept; a
repeat while it runs waits for it). The callable runs under
``asyncio.timeout`` with the time left to the deadline: a plain function
that a worker can import by name (:func:`locate`: module-level) runs in one
of the service's :class:`WorkerPool` processes -- arguments, inputs and
result cross as JSON and bytes, and at the deadline the process is killed
and replaced --; an ``async`` function runs on the node's loop and is
cancelled; any other plain function (a closure; or every one with
``workers="thread"``) runs in one of ``max_concurrency`` threads, which a
timeout abandons but cannot kill (the thread keeps its slot until it
returns, so overrunning tasks never hold more threads). The outcome -- ok
with the result, or the error's type, ``deadline`` on timeout -- is signed
with :meth:`NodeContext.sign_statement` and audited (``task.finished`` / ``task.failed``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    LocalError,
    RemoteError,
    TransportError,
)
from securemesh.messages import Ack
from securemesh.node import NodeContext, Service, VerifiedMessage, verify_statement
from securemesh.policy import AllowTypes
from securemesh.tasks._model import (
    InlineInput,
    ObjectRef,
    SignedTaskResult,
    TaskOutcome,
    TaskPlacement,
    TaskRequest,
    TaskRun,
    TaskTypeName,
    canonical_json,
    request_digest,
)
from securemesh.tasks._registry import TaskRegistry
from securemesh.tasks._scheduler import (
    Candidate,
    NoPlacement,
    Scheduler,
    candidate_from_report,
    label_float,
)
from securemesh.tasks._workers import WorkerPool, WorkerTaskError, locate

if TYPE_CHECKING:
    from securemesh.crypto.certs import Certificate

__all__ = [
    "MSG_ABORT",
    "MSG_CANCEL",
    "MSG_PLACE",
    "MSG_RESULT",
    "MSG_RUN",
    "MSG_START",
    "MSG_STATUS",
    "MSG_SUBMIT",
    "MSG_TYPES",
    "SERVICE_NAME",
    "DeadlinePassed",
    "ObjectReader",
    "TaskBusy",
    "TaskCancelled",
    "TaskFailed",
    "TaskPoll",
    "TaskQuery",
    "TaskState",
    "TaskStates",
    "TaskWait",
    "TaskService",
    "TaskTypes",
    "UnknownTaskType",
    "verify_result",
]

log = logging.getLogger("securemesh.tasks")

SERVICE_NAME: Final = "tasks"
MSG_SUBMIT: Final = "task.submit"
MSG_RUN: Final = "task.run"
MSG_TYPES: Final = "task.types"
MSG_CANCEL: Final = "task.cancel"  # submitter -> scheduler
MSG_STATUS: Final = "task.status"  # submitter -> scheduler
MSG_ABORT: Final = "task.abort"  # scheduler -> executor
MSG_START: Final = "task.start"  # submitter -> scheduler: submit, reply at once
MSG_RESULT: Final = "task.result"  # submitter -> scheduler: poll (long-poll) a result
MSG_PLACE: Final = "task.place"  # submitter -> scheduler: where would it run (no run)
#: the stored objects one task reads, at most (in all; they reach the function whole)
MAX_OBJECT_INPUT_BYTES: Final = 64 * 1024 * 1024

#: How an executor reads a task's stored object: ``(ctx, owner, owner_verify_key, ref,
#: max_bytes)`` -> the object's plaintext. The storage-backed one is
#: :func:`securemesh.sdk.stored_object_reader` (tasks and storage are independent
#: packages; the layer above joins them).
ObjectReader = Callable[[NodeContext, str, bytes, ObjectRef, int], Awaitable[bytes]]
KIND_CANCELLED: Final = "task.cancelled"
#: submissions whose state a scheduler keeps for ``task.status``: in all, per submitter
_HISTORY_KEPT: Final = 4096
_HISTORY_PER_SUBMITTER: Final = 256
#: results of detached submissions (task.start) kept for task.result
_RESULTS_KEPT: Final = 1024
_RESULTS_PER_SUBMITTER: Final = 64
_RESULT_BYTES_KEPT: Final = 64 * 1024 * 1024
#: the longest a task.result poll waits for the result
MAX_POLL_WAIT_S: Final = 30.0
KIND_SUBMITTED: Final = "task.submitted"
KIND_PLACED: Final = "task.placed"
KIND_FINISHED: Final = "task.finished"
KIND_FAILED: Final = "task.failed"
_DONE_KEPT: Final = 1024


class UnknownTaskType(RemoteError):
    """The task type is not registered on this node."""

    reason = "unknown_task_type"


class TaskBusy(RemoteError):
    """Too many tasks from this peer, or in total: try later or elsewhere."""

    reason = "busy"


class DeadlinePassed(RemoteError):
    """The task's deadline has passed (or cannot be met)."""

    reason = "deadline"


class TaskFailed(RemoteError):
    """The task failed on every node tried."""

    reason = "task_failed"


class TaskCancelled(RemoteError):
    """The submitter cancelled the task."""

    reason = "cancelled"


class TaskQuery(BaseModel):
    """``task.status`` / ``task.cancel`` / ``task.abort``: one task id, or (status
    only) None for the submitter's recent tasks."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    task_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class TaskState(BaseModel):
    """What a scheduler knows of one submission (its submitter's view)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    task_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    task_type: TaskTypeName
    state: Literal["submitted", "placed", "finished", "failed", "cancelled"]
    node: str = Field(default="", max_length=128)
    attempts: int = Field(default=0, ge=0, le=16)
    submitted_ms: int = Field(ge=0, le=2**53)
    updated_ms: int = Field(ge=0, le=2**53)
    error: str = Field(default="", max_length=256)


class TaskStates(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    tasks: list[TaskState] = Field(default_factory=list, max_length=_HISTORY_PER_SUBMITTER)


class TaskWait(BaseModel):
    """``task.result``: the result of ``task_id``, waiting at most ``wait_s`` for it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    task_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    wait_s: float = Field(default=0.0, ge=0.0, le=MAX_POLL_WAIT_S, allow_inf_nan=False)


class TaskPoll(BaseModel):
    """The reply to ``task.result``: the state (None: unknown) and, once finished,
    the executor's signed result."""

    model_config = ConfigDict(strict=True, extra="forbid")
    state: TaskState | None = None
    result: SignedTaskResult | None = None


class TaskTypes(BaseModel):
    """``task.types`` reply: the names registered on the executor."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    names: list[TaskTypeName] = Field(max_length=256)
    #: the executor's concurrency and its open runs (waiting or running) when it answered
    capacity: int = Field(ge=1, le=1024)
    open: int = Field(ge=0, le=65_536)


def _statement(outcome: TaskOutcome) -> bytes:
    return canonical_json(outcome.model_dump(mode="json"))


def verify_result(result: SignedTaskResult, certificate: Certificate) -> TaskOutcome:
    """The outcome, once its signature verifies under ``certificate`` (its executor's).

    Raises :class:`~securemesh.errors.AuthenticationError` if the certificate
    is another node's or the signature does not verify.
    """
    outcome = result.outcome
    if certificate.node_id != outcome.executor:
        raise AuthenticationError("the result names another executor")
    verify_statement(
        certificate.verify_key, SERVICE_NAME, _statement(outcome), bytes.fromhex(result.signature)
    )
    return outcome


def _check_frames(request: TaskRequest, frames: Sequence[memoryview | bytes]) -> list[bytes]:
    inline = [i for i in request.inputs if isinstance(i, InlineInput)]
    if len(frames) != len(inline):
        err = DecodeError("inline inputs do not match the frames")
        err.public_detail = "inputs: frame count"
        raise err
    data = [bytes(f) for f in frames]
    for item in inline:
        blob = data[item.frame]
        if len(blob) != item.size or hashlib.sha256(blob).hexdigest() != item.sha256:
            err = DecodeError("an inline input does not match its declaration")
            err.public_detail = f"inputs: frame {item.frame} size or sha256"
            raise err
    return data


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Pass a failure (or cancellation) to whoever waits on ``future`` for the same task."""
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    future.exception()  # retrieved: nobody else may be waiting


class _Bounded:
    """Open items per peer and in total, bounded (TaskBusy beyond)."""

    def __init__(self, per_peer: int, total: int, what: str) -> None:
        self.per_peer = per_peer
        self.total = total
        self.what = what
        self.open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def slot(self, peer: str) -> Any:
        if self.open[peer] >= self.per_peer or sum(self.open.values()) >= self.total:
            raise TaskBusy(f"too many open {self.what}")
        self.open[peer] += 1
        try:
            yield
        finally:
            self.open[peer] -= 1
            if not self.open[peer]:
                del self.open[peer]

    def __len__(self) -> int:
        return sum(self.open.values())


class TaskService(Service):
    """Executor of registered task types; with a scheduler, also places submissions."""

    name = SERVICE_NAME
    audit_kinds = (KIND_SUBMITTED, KIND_PLACED, KIND_FINISHED, KIND_FAILED, KIND_CANCELLED)

    def __init__(
        self,
        registry: TaskRegistry,
        *,
        scheduler: Scheduler | None = None,
        submit_roles: Sequence[str] | None = None,
        max_concurrency: int = 4,
        max_queue: int = 64,
        max_per_peer: int = 16,
        max_attempts: int = 3,
        types_ttl: float = 30.0,
        patience: float = 3.0,
        workers: str = "process",
        object_reader: ObjectReader | None = None,
    ) -> None:
        if not (1 <= max_concurrency <= 1024 and 1 <= max_per_peer <= max_queue <= 65_536):
            raise LocalError("need 1 <= max_concurrency <= 1024, 1 <= max_per_peer <= max_queue")
        if not 1 <= max_attempts <= 16:
            raise LocalError("max_attempts is between 1 and 16")
        self.registry = registry
        #: reads stored-object inputs on this executor (None: such tasks fail here)
        self.object_reader = object_reader
        self.scheduler = scheduler
        self.submit_roles = None if submit_roles is None else tuple(submit_roles)
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.types_ttl = types_ttl
        if not 1.0 <= patience <= 1000.0:
            raise LocalError("patience is between 1 and 1000 (times the predicted time)")
        #: how many times its predicted completion time a node may take to answer
        #: while another node could still run the task
        self.patience = patience
        self._runs = _Bounded(max_per_peer, max_queue, "task runs")
        self._submits = _Bounded(max_per_peer, max_queue, "task submissions")
        if workers not in {"process", "thread"}:
            raise LocalError('workers is "process" or "thread"')
        #: where each plain-function type runs in a worker process: (module, qualname);
        #: the others (closures, ``__main__``, or ``workers="thread"``) run in threads
        self._located: dict[str, tuple[str, str]] = {}
        if workers == "process":
            for t in registry:
                if not t.is_async and (where := locate(t.func)) is not None:
                    self._located[t.name] = where
        self._workers: WorkerPool | None = None
        self._sem: asyncio.Semaphore | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: plain-function runs abandoned at their deadline whose thread still runs
        self.abandoned = 0
        self._done: collections.OrderedDict[str, SignedTaskResult] = collections.OrderedDict()
        self._running: dict[str, asyncio.Future[SignedTaskResult]] = {}
        self._types: dict[str, tuple[float, TaskTypes]] = {}
        #: submissions running, by (submitter, task id): their request digest and result
        self._submitted: dict[tuple[str, str], tuple[str, asyncio.Future[SignedTaskResult]]] = {}
        #: the submission tasks running, by (submitter, task id): cancelled by task.cancel
        self._inner: dict[tuple[str, str], asyncio.Task[SignedTaskResult]] = {}
        #: the runs executing here, by task id: (the scheduler that asked, the task)
        self._executing: dict[str, tuple[str, asyncio.Task[SignedTaskResult]]] = {}
        #: recent submissions' states, by (submitter, task id), oldest first
        self._history: collections.OrderedDict[tuple[str, str], TaskState] = (
            collections.OrderedDict()
        )
        self._history_count: collections.Counter[str] = collections.Counter()
        #: results of detached submissions, by (submitter, task id): (result, its size)
        self._results: collections.OrderedDict[tuple[str, str], tuple[SignedTaskResult, int]] = (
            collections.OrderedDict()
        )
        self._result_bytes = 0
        #: detached submissions running, by (submitter, task id): done when they end
        self._detached_runs: dict[tuple[str, str], asyncio.Future[None]] = {}
        #: runs this scheduler has open on each node (its own view of their queues)
        self._outstanding: collections.Counter[str] = collections.Counter()
        self._ctx: NodeContext | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def ctx(self) -> NodeContext:
        if self._ctx is None:
            raise LocalError("the tasks service is not installed")
        return self._ctx

    # ------------------------------------------------------------------ seam

    def install(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        nodes = AllowTypes(types=[MSG_RUN, MSG_TYPES, MSG_ABORT], tiers=["edge", "cloud"])
        ctx.on(MSG_RUN, self._on_run, policy=nodes)
        ctx.on(MSG_TYPES, self._on_types, policy=nodes)
        ctx.on(MSG_ABORT, self._on_abort, policy=nodes)
        if self.scheduler is not None:
            submitters = AllowTypes(
                types=[MSG_SUBMIT, MSG_START, MSG_RESULT, MSG_CANCEL, MSG_STATUS, MSG_PLACE],
                roles=self.submit_roles,
            )
            ctx.on(MSG_SUBMIT, self._on_submit, policy=submitters)
            ctx.on(MSG_START, self._on_start, policy=submitters)
            ctx.on(MSG_RESULT, self._on_result, policy=submitters)
            ctx.on(MSG_CANCEL, self._on_cancel, policy=submitters)
            ctx.on(MSG_STATUS, self._on_status, policy=submitters)
            ctx.on(MSG_PLACE, self._on_place, policy=submitters)

    async def start(self) -> None:
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="task"
        )
        if self._located:
            self._workers = WorkerPool(self.max_concurrency)
            await self._workers.warm()

    async def stop(self) -> None:
        if self._pool is not None:  # abandoned threads finish on their own; nothing waits
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._workers is not None:
            self._workers.close()

    def status(self) -> Mapping[str, object]:
        return {
            "types": self.registry.names(),
            "scheduler": None if self.scheduler is None else self.scheduler.policy.name,
            "running": len(self._running),
            "abandoned": self.abandoned,
            "in_processes": sorted(self._located),
            "workers": None
            if self._workers is None
            else {
                "live": len(self._workers),
                "started": self._workers.started,
                "killed": self._workers.killed,
                "crashed": self._workers.crashed,
            },
            "open_runs": len(self._runs),
            "open_submissions": len(self._submits),
            "counts": dict(self.counts),
        }

    def _now_ms(self) -> int:
        return int(self.ctx.clock() * 1000)

    # -------------------------------------------------------------- executor

    def _on_types(self, msg: VerifiedMessage) -> TaskTypes:
        return TaskTypes(
            names=self.registry.names(), capacity=self.max_concurrency, open=len(self._runs)
        )

    async def _on_run(self, msg: VerifiedMessage) -> SignedTaskResult:
        run = msg.body(TaskRun)
        inline = _check_frames(run.request, msg.raw_frames)
        return await self.execute(run, inline, peer=msg.sender)

    async def execute(self, run: TaskRun, inline: list[bytes], *, peer: str) -> SignedTaskResult:
        """Run once per task id (a repeat gets the first run's signed result).

        ``peer`` (the scheduler asking) has at most ``max_per_peer`` runs open,
        all peers together ``max_queue``; beyond, :class:`TaskBusy`.
        """
        with self._runs.slot(peer):
            return await self._execute_once(run, inline, peer)

    def _on_abort(self, msg: VerifiedMessage) -> Ack:
        """``task.abort`` from the scheduler that asked for the run: cancel it (a
        worker process is killed). Anyone else's abort, or an unknown id: no effect."""
        query = msg.body(TaskQuery)
        entry = self._executing.get(query.task_id or "")
        if entry is not None and entry[0] == msg.sender:
            self.counts["aborted"] += 1
            entry[1].cancel()
        else:
            self.counts["abort_ignored"] += 1
        return Ack()

    async def _execute_once(self, run: TaskRun, inline: list[bytes], peer: str) -> SignedTaskResult:
        request = run.request
        task_type = self.registry.get(request.task_type)
        if task_type is None:
            self.counts["unknown_type"] += 1
            raise UnknownTaskType(f"task type {request.task_type} is not registered here")
        done = self._done.get(request.task_id)
        if done is not None:
            # the same request from the same submitter only: a task id is not a ticket
            # to someone else's result
            same = done.outcome.request_sha256 == request_digest(request, inline)
            if not same or done.outcome.submitter != run.submitter:
                self.counts["id_conflict"] += 1
                err = DecodeError("task id reused for another request")
                err.public_detail = "task_id: reused"
                raise err
            self.counts["repeat"] += 1
            return done
        running = self._running.get(request.task_id)
        if running is not None:
            self.counts["repeat"] += 1
            return await asyncio.shield(running)
        if self._now_ms() >= run.deadline_ms:
            self.counts["deadline"] += 1
            raise DeadlinePassed("the task's deadline has passed")
        args = task_type.parse_args(request.args)  # before anything runs: DecodeError
        future: asyncio.Future[SignedTaskResult] = asyncio.get_running_loop().create_future()
        self._running[request.task_id] = future
        inner = asyncio.ensure_future(self._execute(run, task_type, args, inline))
        self._executing[request.task_id] = (peer, inner)
        try:
            result = await inner
            future.set_result(result)
        except BaseException as exc:
            inner.cancel()  # the handler itself was cancelled: so is the run
            _fail(future, exc)
            raise
        finally:
            del self._running[request.task_id]
            del self._executing[request.task_id]
        self._done[request.task_id] = result
        while len(self._done) > _DONE_KEPT:
            self._done.popitem(last=False)
        return result

    async def _call(self, task_type: Any, args: BaseModel, inline: list[bytes]) -> Any:
        """Run the callable in one of ``max_concurrency`` slots (cancellable by the caller).

        A coroutine is cancelled with the caller. A plain function runs in this
        service's thread pool; a thread cannot be killed, so a run abandoned at
        its deadline keeps its slot until the function returns (counted in
        ``abandoned``): overrunning tasks never hold more than
        ``max_concurrency`` threads.
        """
        sem, pool = self._sem, self._pool
        if sem is None or pool is None:
            raise LocalError("the tasks service is not running")
        await sem.acquire()
        where = self._located.get(task_type.name)
        if where is not None and self._workers is not None:
            try:  # cancelled (the deadline): the worker is killed, the slot is free at once
                body = await self._workers.run(where, args.model_dump_json().encode(), inline)
            finally:
                sem.release()
            return task_type.result_model.model_validate_json(body)
        if inspect.iscoroutinefunction(task_type.func):
            try:
                return await task_type.func(args, inline)
            finally:
                sem.release()
        fut = asyncio.get_running_loop().run_in_executor(pool, task_type.func, args, inline)
        try:
            produced = await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done():
                sem.release()
            else:  # abandoned: the slot is freed when the thread returns
                self.abandoned += 1
                fut.add_done_callback(lambda _: self._thread_returned(sem))
            raise
        except BaseException:
            sem.release()
            raise
        sem.release()
        return produced

    def _thread_returned(self, sem: asyncio.Semaphore) -> None:
        self.abandoned -= 1
        sem.release()

    async def _execute(
        self, run: TaskRun, task_type: Any, args: BaseModel, inline: list[bytes]
    ) -> SignedTaskResult:
        request = run.request
        assert self._sem is not None
        started = self._now_ms()
        ok = False
        value: Any = None
        error = ""
        try:
            remaining = (run.deadline_ms - started) / 1000
            async with asyncio.timeout(max(0.0, remaining)):
                objects = await self._read_objects(run)
                produced = await self._call(task_type, args, [*inline, *objects])
            value = task_type.check_result(produced).model_dump(mode="json")
            if len(canonical_json(value)) > 256 * 1024:
                raise ValueError("result too large")
            ok = True
        except TimeoutError:
            error = "deadline"
        except Exception as exc:  # the task's own failure: signed, audited, retried elsewhere
            name = exc.name if isinstance(exc, WorkerTaskError) else type(exc).__name__
            error = name[:256]
            log.info(
                "task failed",
                extra={"event": "task_failed", "task": request.task_id, "error": repr(exc)},
            )
        finished = self._now_ms()
        outcome = TaskOutcome(
            task_id=request.task_id,
            task_type=request.task_type,
            executor=self.ctx.node_id,
            submitter=run.submitter,
            request_sha256=request_digest(request, inline),
            ok=ok,
            result=value if ok else None,
            error=error,
            started_ms=started,
            finished_ms=max(started, finished),
        )
        signature = self.ctx.sign_statement(_statement(outcome)).hex()
        self.counts["finished" if ok else "failed"] += 1
        self.ctx.audit.record(
            KIND_FINISHED if ok else KIND_FAILED,
            ("task", request.task_id),
            outcome="success" if ok else "failure",
            details={
                "type": request.task_type,
                "submitter": run.submitter,
                "attempt": run.attempt,
                "ms": outcome.finished_ms - started,
                **({"error": error} if error else {}),
                **({"objects": len(request.stored_objects)} if request.stored_objects else {}),
            },
        )
        return SignedTaskResult(outcome=outcome, signature=signature)

    async def _read_objects(self, run: TaskRun) -> list[bytes]:
        """The run's stored objects, fetched and decrypted here (the submitter's own,
        checked under the key the scheduler vouches for; at most 64 MiB in all)."""
        refs = run.request.stored_objects
        if not refs:
            return []
        if self.object_reader is None:
            raise LocalError("this executor reads no stored objects")
        if run.submitter_key is None:
            raise AuthenticationError("no submitter key to check the objects' manifests")
        key = bytes.fromhex(run.submitter_key)
        out: list[bytes] = []
        left = MAX_OBJECT_INPUT_BYTES
        for ref in refs:
            data = await self.object_reader(self.ctx, run.submitter, key, ref, left)
            if len(data) > left:
                raise LocalError("the stored objects exceed the task's input bound")
            left -= len(data)
            out.append(data)
        self.counts["objects_read"] += len(out)
        return out

    # ------------------------------------------------------------- scheduler

    async def _on_place(self, msg: VerifiedMessage) -> TaskPlacement:
        return await self.place(msg.body(TaskRequest), submitter=msg.sender)

    async def place(self, request: TaskRequest, *, submitter: str) -> TaskPlacement:
        """Where ``request`` would run now (ranked as ``submit`` would), without running it.

        The owner of the request's stored objects wraps their data key for the
        node named here -- after placement, and only for it -- then submits the
        request pinned to it (``executor``). The reply carries the node's signed
        certificate for the owner to verify (docs/tasks.md, "Tasks over stored objects").
        """
        scheduler = self.scheduler
        if scheduler is None:
            raise LocalError("this tasks service does not schedule")
        with self._submits.slot(submitter):  # bounded like submissions (peers are asked)
            candidates = await self._candidates()
        ranked = scheduler.rank(
            request, candidates, remaining_s=request.intent.deadline_s, origin=submitter
        )
        best = ranked[0]
        signed = self.ctx.node.directory.signed_certificate(best.candidate.node_id)
        if signed is None:
            raise NoPlacement("no certificate for the chosen node", {"certificate": 1})
        self.counts["placed_query"] += 1
        return TaskPlacement(
            node=best.candidate.node_id,
            predicted_ms=int(best.time_s * 1000),
            certificate=signed.to_bytes().hex(),
        )

    async def _on_submit(self, msg: VerifiedMessage) -> SignedTaskResult:
        request = msg.body(TaskRequest)
        inline = _check_frames(request, msg.raw_frames)
        return await self.submit(request, inline, submitter=msg.sender)

    async def submit(
        self, request: TaskRequest, inline: list[bytes], *, submitter: str
    ) -> SignedTaskResult:
        """Place, run, retry elsewhere on failure (module doc, steps 1-5).

        A re-submission of a task id by the same submitter while the first runs
        waits for the first (the same request only: else ``malformed``).
        """
        key = (submitter, request.task_id)
        digest = request_digest(request, inline)
        first = self._submitted.get(key)
        if first is not None:
            if first[0] != digest:
                err = DecodeError("task id reused for another request")
                err.public_detail = "task_id: reused"
                raise err
            self.counts["resubmitted"] += 1
            return await asyncio.shield(first[1])
        with self._submits.slot(submitter):
            future: asyncio.Future[SignedTaskResult] = asyncio.get_running_loop().create_future()
            self._submitted[key] = (digest, future)
            self._remember(submitter, request, "submitted")
            inner = asyncio.ensure_future(self._submit(request, inline, submitter))
            self._inner[key] = inner
            try:
                try:
                    result = await inner
                except asyncio.CancelledError:
                    me = asyncio.current_task()
                    if me is not None and me.cancelling():
                        inner.cancel()
                        raise  # this handler itself is being cancelled (the node stops)
                    raise self._cancelled(submitter, request) from None  # task.cancel
            except BaseException as exc:
                if not isinstance(exc, TaskCancelled):
                    self._remember(
                        submitter,
                        request,
                        "failed",
                        error=getattr(exc, "reason", "") or type(exc).__name__,
                    )
                _fail(future, exc)
                raise
            finally:
                del self._submitted[key]
                del self._inner[key]
            self._remember(submitter, request, "finished", node=result.outcome.executor)
            future.set_result(result)
            return result

    def _cancelled(self, submitter: str, request: TaskRequest) -> TaskCancelled:
        self.counts["cancelled"] += 1
        self._remember(submitter, request, "cancelled", error="cancelled")
        self.ctx.audit.record(
            KIND_CANCELLED,
            ("task", request.task_id),
            details={"submitter": submitter, "type": request.task_type},
        )
        err = TaskCancelled("cancelled by its submitter")
        err.public_detail = "cancelled"
        return err

    def _remember(
        self,
        submitter: str,
        request: TaskRequest,
        state: str,
        *,
        node: str = "",
        error: str = "",
        attempts: int | None = None,
    ) -> None:
        """Record a submission's state for ``task.status`` (bounded per submitter and in all)."""
        key = (submitter, request.task_id)
        now = self._now_ms()
        old = self._history.get(key)
        if old is None:
            if self._history_count[submitter] >= _HISTORY_PER_SUBMITTER:
                oldest = next(k for k in self._history if k[0] == submitter)
                self._forget(oldest)
            while len(self._history) >= _HISTORY_KEPT:
                self._forget(next(iter(self._history)))
            self._history_count[submitter] += 1
        self._history[key] = TaskState(
            task_id=request.task_id,
            task_type=request.task_type,
            state=state,  # type: ignore[arg-type]
            node=node or (old.node if old else ""),
            attempts=attempts if attempts is not None else (old.attempts if old else 0),
            submitted_ms=old.submitted_ms if old else now,
            updated_ms=now,
            error=error[:256],
        )

    def _forget(self, key: tuple[str, str]) -> None:
        del self._history[key]
        self._history_count[key[0]] -= 1
        if not self._history_count[key[0]]:
            del self._history_count[key[0]]

    def states(self, submitter: str, task_id: str | None = None) -> list[TaskState]:
        """``submitter``'s own submissions: one (``task_id``) or all kept, newest first."""
        if task_id is not None:
            state = self._history.get((submitter, task_id))
            return [state] if state is not None else []
        mine = [v for (who, _), v in reversed(self._history.items()) if who == submitter]
        return mine[:_HISTORY_PER_SUBMITTER]

    def cancel(self, submitter: str, task_id: str) -> TaskState | None:
        """Cancel ``submitter``'s running submission ``task_id`` (its executor is told
        to abort: a worker process is killed); its state, None if unknown. Another
        submitter's task id is unknown here: a task id is no ticket."""
        key = (submitter, task_id)
        inner = self._inner.get(key)
        state = self._history.get(key)
        if inner is None or inner.done() or state is None:
            return state
        inner.cancel()
        return state.model_copy(update={"state": "cancelled", "error": "cancelled"})

    # ---------------------------------------------- detached submissions (long tasks)

    async def _on_start(self, msg: VerifiedMessage) -> TaskState:
        request = msg.body(TaskRequest)
        inline = _check_frames(request, msg.raw_frames)
        return self.start_detached(request, inline, submitter=msg.sender)

    def start_detached(
        self, request: TaskRequest, inline: list[bytes], *, submitter: str
    ) -> TaskState:
        """Accept a submission and run it in the background (the reply is its state at
        once); the result is fetched with :meth:`poll` (``task.result``). A known task
        id of this submitter is not started again: its state is the answer."""
        key = (submitter, request.task_id)
        known = self._history.get(key)
        if known is not None and (key in self._detached_runs or key in self._results):
            return known
        if key in self._submitted:
            raise TaskBusy("this task id is being submitted")
        per_peer, total = self._submits.per_peer, self._submits.total
        if self._submits.open[submitter] >= per_peer or len(self._submits) >= total:
            raise TaskBusy("too many open task submissions")
        self._remember(submitter, request, "submitted")
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._detached_runs[key] = ended
        try:
            self.ctx.spawn(
                self._detached(request, inline, submitter, ended),
                name=f"task-{request.task_id[:12]}",
            )
        except BaseException:
            del self._detached_runs[key]
            raise
        return self._history[key]

    async def _detached(
        self,
        request: TaskRequest,
        inline: list[bytes],
        submitter: str,
        ended: asyncio.Future[None],
    ) -> None:
        key = (submitter, request.task_id)
        try:
            result = await self.submit(request, inline, submitter=submitter)
            self._keep_result(key, result)
        except (RemoteError, LocalError):  # the state (failed, cancelled) says why
            pass
        finally:
            del self._detached_runs[key]
            if not ended.done():
                ended.set_result(None)

    def _keep_result(self, key: tuple[str, str], result: SignedTaskResult) -> None:
        """Keep ``result`` for task.result: at most 64 per submitter, 1,024 and 64 MiB in all."""
        size = len(result.model_dump_json())
        self._results[key] = (result, size)
        self._result_bytes += size
        mine = [k for k in self._results if k[0] == key[0]]
        for old in mine[: max(0, len(mine) - _RESULTS_PER_SUBMITTER)]:
            self._drop_result(old)
        while len(self._results) > _RESULTS_KEPT or self._result_bytes > _RESULT_BYTES_KEPT:
            self._drop_result(next(iter(self._results)))

    def _drop_result(self, key: tuple[str, str]) -> None:
        _, size = self._results.pop(key)
        self._result_bytes -= size

    async def _on_result(self, msg: VerifiedMessage) -> TaskPoll:
        wait = msg.body(TaskWait)
        return await self.poll(msg.sender, wait.task_id, wait.wait_s)

    async def poll(self, submitter: str, task_id: str, wait_s: float = 0.0) -> TaskPoll:
        """``submitter``'s task ``task_id``: its state and, once finished, its result;
        while it runs, wait up to ``wait_s`` seconds for it first (a long poll)."""
        key = (submitter, task_id)
        running = self._detached_runs.get(key)
        if key not in self._results and running is not None and wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(running), min(wait_s, MAX_POLL_WAIT_S))
            except (TimeoutError, RemoteError, LocalError):
                pass  # still running, or failed: the state says which
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise  # this poll itself is cancelled
                # else the submission was cancelled: the state says so
        kept = self._results.get(key)
        return TaskPoll(state=self._history.get(key), result=kept[0] if kept else None)

    def _on_status(self, msg: VerifiedMessage) -> TaskStates:
        return TaskStates(tasks=self.states(msg.sender, msg.body(TaskQuery).task_id))

    def _on_cancel(self, msg: VerifiedMessage) -> TaskStates:
        query = msg.body(TaskQuery)
        if query.task_id is None:
            raise DecodeError("task.cancel needs a task id")
        state = self.cancel(msg.sender, query.task_id)
        return TaskStates(tasks=[state] if state is not None else [])

    async def _submit(
        self, request: TaskRequest, inline: list[bytes], submitter: str
    ) -> SignedTaskResult:
        scheduler = self.scheduler
        if scheduler is None:
            raise LocalError("this tasks service does not schedule")
        ctx = self.ctx
        subject = ("task", request.task_id)
        deadline_ms = self._now_ms() + int(request.intent.deadline_s * 1000)
        ctx.audit.record(
            KIND_SUBMITTED,
            subject,
            details={
                "type": request.task_type,
                "submitter": submitter,
                "privacy": request.intent.privacy,
                "deadline_ms": deadline_ms,
            },
        )
        self.counts["submitted"] += 1
        tried: list[str] = []
        errors: list[str] = []
        submitter_key = self._submitter_key(request, submitter)
        for attempt in range(1, self.max_attempts + 1):
            candidates = await self._candidates()
            if request.executor is not None:  # pinned by the submitter (task.place)
                candidates = [c for c in candidates if c.node_id == request.executor]
            remaining = (deadline_ms - self._now_ms()) / 1000
            try:
                ranked = scheduler.rank(
                    request, candidates, remaining_s=remaining, exclude=tried, origin=submitter
                )
            except NoPlacement as exc:
                if tried:  # retries exhausted the feasible nodes
                    break
                self.counts[f"refused_{exc.reason}"] += 1
                ctx.audit.record(
                    KIND_FAILED,
                    subject,
                    outcome="denied",
                    details={"reason": exc.reason, "refused": exc.public_detail[:256]},
                )
                raise
            node = ranked[0].candidate.node_id
            tried.append(node)
            self._remember(submitter, request, "placed", node=node, attempts=attempt)
            ctx.audit.record(
                KIND_PLACED,
                subject,
                details={
                    "node": node,
                    "attempt": attempt,
                    "policy": scheduler.policy.name,
                    "predicted_ms": int(ranked[0].time_s * 1000),
                },
            )
            run = TaskRun(
                request=request,
                submitter=submitter,
                deadline_ms=deadline_ms,
                attempt=attempt,
                submitter_key=submitter_key,
            )
            # a node that stops answering (lost, killed) must not eat the whole deadline
            # while other nodes could still make it: wait `patience` x its prediction
            # (at least 1 s) if another attempt may follow, else up to the deadline
            limit = None
            if attempt < self.max_attempts and len(ranked) > 1:
                limit = max(1.0, self.patience * ranked[0].time_s)
            placed_at = self.ctx.clock()
            try:
                result = await self._run_on(node, run, inline, limit=limit)
            except (RemoteError, TransportError, TimeoutError) as exc:
                errors.append(getattr(exc, "code", None) or type(exc).__name__)
                self.counts["attempt_failed"] += 1
                continue
            observe = getattr(scheduler.policy, "observe", None)
            if callable(observe):  # an adaptive policy learns the real completion time
                observe(ranked[0], self.ctx.clock() - placed_at)
            if result.outcome.ok:
                self.counts["placed_ok"] += 1
                return result.model_copy(update={"attempts": tried[:-1]})
            errors.append(result.outcome.error or "failed")
            self.counts["attempt_failed"] += 1
        missed = self._now_ms() >= deadline_ms
        ctx.audit.record(
            KIND_FAILED,
            subject,
            outcome="failure",
            details={
                "tried": ",".join(tried)[:256],
                "errors": ",".join(errors[-4:])[:256],
                "deadline_missed": missed,
            },
        )
        err: RemoteError = DeadlinePassed("missed") if missed else TaskFailed("failed")
        err.public_detail = f"attempts={len(tried)}" + (" deadline missed" if missed else "")
        raise err

    def _submitter_key(self, request: TaskRequest, submitter: str) -> str | None:
        """The submitter's verify key (hex) when the executor must check its objects."""
        if not request.stored_objects:
            return None
        cert = self.ctx.certificates.get(submitter)
        if cert is None:
            raise AuthenticationError("no valid certificate for the submitter")
        return cert.verify_key.hex()

    async def _run_on(
        self, node: str, run: TaskRun, inline: list[bytes], *, limit: float | None = None
    ) -> SignedTaskResult:
        if node == self.ctx.node_id:
            # a local run counts against its submitter's bound, not this node's: else one
            # submitter's admitted submissions would fill the slots every submitter shares
            return await self.execute(run, inline, peer=f"{node}/{run.submitter}")
        timeout = max(0.05, (run.deadline_ms - self._now_ms()) / 1000 + 1.0)
        if limit is not None:
            timeout = min(timeout, limit)
        self._outstanding[node] += 1
        try:
            reply = await self.ctx.request(node, MSG_RUN, run, inline, timeout=timeout)
        except asyncio.CancelledError:  # cancelled by its submitter: the executor stops too
            with contextlib.suppress(RemoteError, TransportError, LocalError, TimeoutError):
                abort = TaskQuery(task_id=run.request.task_id)
                await self.ctx.request(node, MSG_ABORT, abort, timeout=2.0)
            raise
        finally:
            self._outstanding[node] -= 1
            if not self._outstanding[node]:
                del self._outstanding[node]
        result = reply.body(SignedTaskResult)
        try:
            cert = self.ctx.certificates[node]
        except KeyError as exc:
            raise AuthenticationError("no valid certificate for the executor") from exc
        outcome = verify_result(result, cert)
        if outcome.task_id != run.request.task_id or reply.sender != node:
            raise AuthenticationError("the result answers another task")
        return result

    async def _candidates(self) -> list[Candidate]:
        ctx = self.ctx
        out: list[Candidate] = []
        if len(self.registry):
            own = ctx.config.report
            labels = dict(own.labels)
            out.append(
                Candidate(
                    node_id=ctx.node_id,
                    tier=ctx.tier,
                    task_types=frozenset(self.registry.names()),
                    capacity=self.max_concurrency,
                    inflight=len(self._running),
                    speed=label_float(labels, "speed", 100.0),
                    energy_per_unit=own.energy_per_unit or 0.0,
                    carbon_intensity=own.carbon_intensity or 0.0,
                    price=label_float(labels, "price", 0.0),
                    failure_domain=own.failure_domain,
                )
            )
        peers = {n: r for n, r in ctx.peers().items() if SERVICE_NAME in (r.services or ())}
        stale = [n for n in peers if self._stale(n)]
        if stale:
            await asyncio.gather(*(self._refresh_types(n) for n in stale))
        for node_id, report in peers.items():
            cert = ctx.certificates.get(node_id)
            entry = self._types.get(node_id)
            if cert is None or entry is None:
                continue
            types = entry[1]
            cand = candidate_from_report(node_id, cert.tier.value, report, types.names)
            # the node's report counts its whole runtime; the executor's own numbers
            # and this scheduler's open runs there say more about a task's wait
            busy = max(types.open, self._outstanding[node_id])
            out.append(replace(cand, capacity=types.capacity, inflight=busy, queue_length=0))
        return out

    def _stale(self, node_id: str) -> bool:
        entry = self._types.get(node_id)
        return entry is None or self.ctx.clock() - entry[0] > self.types_ttl

    async def _refresh_types(self, node_id: str) -> None:
        try:
            reply = await self.ctx.request(node_id, MSG_TYPES, Ack(), timeout=2.0)
            types = reply.body(TaskTypes)
        except (RemoteError, TransportError, TimeoutError):
            self._types.pop(node_id, None)
            return
        self._types[node_id] = (self.ctx.clock(), types)
        while len(self._types) > 4096:
            self._types.pop(next(iter(self._types)))
