"""Module-level task functions for tests/tasks/test_tasks_workers.py: a worker
process imports them by name (closures could not be)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from securemesh.tasks import TaskRegistry


class Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    seconds: float = Field(default=0.0, ge=0.0, le=60.0)
    pid_file: str = ""
    n: int = 0


class Out(BaseModel):
    pid: int
    n: int


def where(args: Args, inputs: Sequence[bytes]) -> Out:
    """The worker's pid, and ``n`` plus the input bytes."""
    return Out(pid=os.getpid(), n=args.n + sum(len(b) for b in inputs))


def spin(args: Args, inputs: Sequence[bytes]) -> Out:
    """Write the pid to ``pid_file``, then keep a CPU busy for ``seconds``."""
    if args.pid_file:  # written whole, then renamed: a reader never sees it half-written
        tmp = Path(args.pid_file + ".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.replace(args.pid_file)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        pass
    return Out(pid=os.getpid(), n=args.n)


def crash(args: Args, inputs: Sequence[bytes]) -> Out:
    """The worker dies mid-task."""
    os._exit(3)


def fail(args: Args, inputs: Sequence[bytes]) -> Out:
    raise ValueError("no")


def wrong(args: Args, inputs: Sequence[bytes]) -> Out:
    return Args()  # type: ignore[return-value] - a wrong result type, on purpose


REGISTRY = TaskRegistry()
for _name, _func in (
    ("w.where", where),
    ("w.spin", spin),
    ("w.crash", crash),
    ("w.fail", fail),
    ("w.wrong", wrong),
):
    REGISTRY.task(_name)(_func)
