"""Task types and the ``tasks`` service for node daemons (docs/tasks.md).

Load it from ``node.toml`` (the directory holding this file on ``PYTHONPATH``)::

    services = ["task_service:make_scheduler"]   # on the node that places tasks (the cloud)
    services = ["task_service:make"]             # on every executor (edges)

    [report.labels]           # what the scheduler's cost model reads
    speed = "400"             # work units per second
    price = "0.01"            # cost per work unit

and let the operator admit the messages: on the scheduler, ``task.submit`` from
the devices that may submit; on each executor, ``task.run`` and ``task.types``
from the scheduler's tier::

    [[policy.allow]]
    types = ["task.submit"]
    tiers = ["end"]
    roles = ["submitter"]

The task types:

* ``demo.sum`` -- the sum of ``numbers`` plus the total size of the inline inputs;
* ``demo.sleep`` -- sleeps ``seconds`` (to show deadlines and cancellation);
* ``demo.flaky`` -- succeeds, except on a node built with :func:`make_broken`,
  where it raises (to show a retry elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from securemesh.tasks import IntentAware, Scheduler, TaskRegistry, TaskService


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


def _registry(*, broken: bool) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("demo.sum", work=1.0)
    def demo_sum(args: SumArgs, inputs: Sequence[bytes]) -> SumResult:
        return SumResult(total=sum(args.numbers), input_bytes=sum(len(b) for b in inputs))

    @registry.task("demo.sleep", work=1.0)
    async def demo_sleep(args: SleepArgs, inputs: Sequence[bytes]) -> SleepResult:
        await asyncio.sleep(args.seconds)
        return SleepResult(slept=args.seconds)

    @registry.task("demo.flaky", work=1.0)
    def demo_flaky(args: FlakyArgs, inputs: Sequence[bytes]) -> FlakyResult:
        if broken:
            raise RuntimeError("this executor is broken")
        return FlakyResult(value=args.value)

    return registry


def make() -> TaskService:
    """An executor of the demo types (``services = ["task_service:make"]``)."""
    return TaskService(_registry(broken=False))


def make_broken() -> TaskService:
    """An executor whose ``demo.flaky`` always fails (to show retries)."""
    return TaskService(_registry(broken=True))


def make_scheduler() -> TaskService:
    """Executor and scheduler (intent-aware policy); ``task.submit`` needs role ``submitter``."""
    return TaskService(
        _registry(broken=False), scheduler=Scheduler(IntentAware()), submit_roles=["submitter"]
    )
