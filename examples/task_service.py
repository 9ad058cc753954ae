"""Task types and the ``tasks`` service for node daemons (docs/tasks.md).

Load it from ``node.toml`` (the directory holding this file on ``PYTHONPATH``)::

    services = ["task_service:make_scheduler"]   # on the node that places tasks (the cloud)
    services = ["task_service:make"]             # on every executor (edges)

    [report.labels]           # what the scheduler's cost model reads
    speed = "400"             # work units per second
    price = "0.01"            # cost per work unit

and let the operator admit the messages: on the scheduler, ``task.submit`` from
the devices that may submit; on each executor, ``task.run``, ``task.types``
and ``task.abort`` from the scheduler's tier::

    [[policy.allow]]
    types = ["task.submit", "task.start", "task.result", "task.cancel", "task.status"]
    tiers = ["end"]
    roles = ["submitter"]

The task types:

* ``demo.sum`` -- the sum of ``numbers`` plus the total size of the inline inputs;
* ``demo.sleep`` -- sleeps ``seconds`` (to show deadlines and cancellation);
* ``demo.spin`` -- a plain function that keeps a CPU busy for ``seconds``: it
  runs in one of the executor's worker processes, which is killed at the
  deadline (module-level functions run in worker processes; ``async`` ones
  and closures in the node's process);
* ``demo.flaky`` -- succeeds, except on a node built with :func:`make_broken`,
  where it raises (to show a retry elsewhere);
* ``demo.digest`` -- the size and sha256 of each input (inline frames, then the
  stored objects the executor fetched and decrypted: docs/tasks.md, "Tasks over
  stored objects").

With ``SECUREMESH_TASKS_STORAGE_INDEX`` set (the node answering ``storage.nodes``,
the cloud) in the daemon's environment, the executor reads stored-object inputs
through :func:`securemesh.sdk.stored_object_reader`; load the storage service too::

    services = ["securemesh.storage:make_service", "task_service:make"]
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from securemesh.sdk import stored_object_reader
from securemesh.tasks import IntentAware, ObjectReader, Scheduler, TaskRegistry, TaskService


class _Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SumArgs(_Args):
    numbers: list[int] = Field(default_factory=list, max_length=10_000)


class SumResult(BaseModel):
    total: int
    input_bytes: int


class SleepArgs(_Args):
    seconds: float = Field(ge=0.0, le=60.0)


class SleepResult(BaseModel):
    slept: float


class FlakyArgs(_Args):
    value: int = 0


class FlakyResult(BaseModel):
    value: int


class DigestArgs(_Args):
    """No arguments: the inputs are the data."""


class Digest(BaseModel):
    size: int
    sha256: str


class DigestResult(BaseModel):
    inputs: list[Digest]


def demo_digest(args: DigestArgs, inputs: Sequence[bytes]) -> DigestResult:
    return DigestResult(
        inputs=[Digest(size=len(b), sha256=hashlib.sha256(b).hexdigest()) for b in inputs]
    )


def demo_sum(args: SumArgs, inputs: Sequence[bytes]) -> SumResult:
    return SumResult(total=sum(args.numbers), input_bytes=sum(len(b) for b in inputs))


async def demo_sleep(args: SleepArgs, inputs: Sequence[bytes]) -> SleepResult:
    await asyncio.sleep(args.seconds)
    return SleepResult(slept=args.seconds)


def demo_spin(args: SleepArgs, inputs: Sequence[bytes]) -> SleepResult:
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:  # busy: only killing the process stops it early
        pass
    return SleepResult(slept=args.seconds)


def demo_flaky(args: FlakyArgs, inputs: Sequence[bytes]) -> FlakyResult:
    return FlakyResult(value=args.value)


def demo_flaky_broken(args: FlakyArgs, inputs: Sequence[bytes]) -> FlakyResult:
    raise RuntimeError("this executor is broken")


def _registry(*, broken: bool) -> TaskRegistry:
    registry = TaskRegistry()
    registry.task("demo.sum", work=1.0)(demo_sum)
    registry.task("demo.sleep", work=1.0)(demo_sleep)
    registry.task("demo.spin", work=1.0)(demo_spin)
    registry.task("demo.flaky", work=1.0)(demo_flaky_broken if broken else demo_flaky)
    registry.task("demo.digest", work=1.0)(demo_digest)
    return registry


def _reader() -> ObjectReader | None:
    index = os.environ.get("SECUREMESH_TASKS_STORAGE_INDEX")
    return stored_object_reader(index) if index else None


def make() -> TaskService:
    """An executor of the demo types (``services = ["task_service:make"]``)."""
    return TaskService(_registry(broken=False), object_reader=_reader())


def make_broken() -> TaskService:
    """An executor whose ``demo.flaky`` always fails (to show retries)."""
    return TaskService(_registry(broken=True), object_reader=_reader())


def make_scheduler() -> TaskService:
    """Executor and scheduler (intent-aware policy); ``task.submit`` needs role ``submitter``."""
    return TaskService(
        _registry(broken=False),
        scheduler=Scheduler(IntentAware()),
        submit_roles=["submitter"],
        object_reader=_reader(),
    )
