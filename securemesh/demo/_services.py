"""The demo's services, loaded by its daemons through ``services`` in ``node.toml``.

* :func:`register_services` -- ``demo.reading`` (one-way: count a reading per
  sender), ``demo.readings`` (the sender's count) and ``demo.sum`` (add numbers,
  say which node did);
* :func:`make_task_scheduler` / :func:`make_task_executor` -- the ``tasks``
  service (docs/tasks.md) with the demo's task types: the cloud places and
  runs, the edges run; executors read stored-object inputs through
  :func:`securemesh.sdk.stored_object_reader` (the cloud is the storage index).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from securemesh.messages import MeshMessage

if TYPE_CHECKING:
    from securemesh.node import MeshNode, VerifiedMessage
    from securemesh.tasks import TaskService

__all__ = ["make_task_executor", "make_task_scheduler", "register_services"]

STORAGE_INDEX = "cloud-1"


class Reading(MeshMessage):
    sensor: Annotated[str, Field(min_length=1, max_length=64)]
    value: float


class SumRequest(MeshMessage):
    values: list[int] = Field(max_length=1000)


class SumReply(MeshMessage):
    sum: int
    by: str


class ReadingCount(MeshMessage):
    readings: int


def register_services(node: MeshNode) -> None:
    """The demo's services: count readings per sender, report the count, add numbers."""
    readings: Counter[str] = Counter()

    def on_reading(msg: VerifiedMessage) -> None:
        msg.body(Reading)
        readings[msg.sender] += 1

    def on_count(msg: VerifiedMessage) -> ReadingCount:
        return ReadingCount(readings=readings[msg.sender])

    def on_sum(msg: VerifiedMessage) -> SumReply:
        return SumReply(sum=sum(msg.body(SumRequest).values), by=node.node_id)

    node.on("demo.reading", on_reading)
    node.on("demo.readings", on_count)
    node.on("demo.sum", on_sum)


# ------------------------------------------------------------------ task types


class StatsArgs(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    values: list[float] = Field(default_factory=list, max_length=10_000)


class StatsResult(BaseModel):
    count: int
    mean: float
    maximum: float


class DigestArgs(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DigestResult(BaseModel):
    sizes: list[int]
    sha256: list[str]


async def reading_stats(args: StatsArgs, inputs: Sequence[bytes]) -> StatsResult:
    """Summary statistics of a batch of readings (on the node's loop: no worker start-up)."""
    values = args.values or [0.0]
    return StatsResult(count=len(args.values), mean=sum(values) / len(values), maximum=max(values))


async def file_digest(args: DigestArgs, inputs: Sequence[bytes]) -> DigestResult:
    """Size and sha256 of each input (a stored object: fetched and decrypted by the executor)."""
    return DigestResult(
        sizes=[len(b) for b in inputs], sha256=[hashlib.sha256(b).hexdigest() for b in inputs]
    )


def _service(*, scheduler: bool) -> TaskService:
    from securemesh.sdk import stored_object_reader  # noqa: PLC0415 - services load lazily
    from securemesh.tasks import IntentAware, Scheduler, TaskRegistry, TaskService  # noqa: PLC0415

    registry = TaskRegistry()
    registry.task("demo.stats", work=1.0)(reading_stats)
    registry.task("demo.digest", work=1.0)(file_digest)
    return TaskService(
        registry,
        scheduler=Scheduler(IntentAware()) if scheduler else None,
        submit_roles=["submitter"] if scheduler else None,
        object_reader=stored_object_reader(STORAGE_INDEX),
    )


def make_task_scheduler() -> TaskService:
    """Scheduler (intent-aware) and executor; ``task.submit`` needs the role ``submitter``."""
    return _service(scheduler=True)


def make_task_executor() -> TaskService:
    """An executor of the demo's task types."""
    return _service(scheduler=False)
