"""Worker processes for plain-function task types: killable at the deadline.

Theory of operation
-------------------
A :class:`WorkerPool` belongs to one executor (the ``tasks`` service) and
keeps up to ``size`` worker processes, started with the ``spawn`` method (a
fresh interpreter: nothing of the node -- sockets, keys, threads -- is
inherited). The service's semaphore admits at most ``size`` runs at once, so
a run always finds an idle worker or room to start one.

Inter-process messages are length-prefixed byte strings on a
:func:`multiprocessing.Pipe` (``send_bytes``/``recv_bytes``; nothing is
pickled in either direction):

* parent -> worker: one JSON header ``{"module", "qualname", "inputs": n}``,
  the arguments as JSON (the model's ``model_dump_json``, already validated by
  the executor), then ``n`` raw input frames;
* worker -> parent: one JSON header ``{"ok": bool, "error": str}`` and, when
  ok, the result as JSON (``model_dump_json``), at most ``max_result`` bytes.

The worker looks the callable up by name (``importlib.import_module(module)``
then the attributes of ``qualname``): code never crosses the pipe. It validates
the arguments against the function's own annotation, calls it, checks the
result's type, and answers; the executor validates the result JSON against
the registered result model.

At the deadline or on cancellation the worker running the task is killed
(SIGKILL) and reaped; a worker that dies (or answers garbage, or too much) is
discarded. Either way the next run starts a fresh one: the pool never holds a
worker in an unknown state. :meth:`close` kills them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from securemesh.errors import LocalError

__all__ = ["WorkerCrashed", "WorkerPool", "WorkerTaskError", "locate"]

_MAX_HEADER: Final = 4096
#: the most bytes of argument JSON or one input frame the worker accepts
_MAX_FRAME: Final = 64 * 1024 * 1024


class WorkerTaskError(Exception):
    """The task raised in the worker; ``name`` is its exception's type name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class WorkerCrashed(Exception):
    """The worker died, or answered something that is not a reply, mid-task."""


class _Reply(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    ok: bool
    error: str = Field(default="", max_length=256)


class _Job(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    module: str = Field(min_length=1, max_length=256)
    qualname: str = Field(min_length=1, max_length=256)
    inputs: int = Field(ge=0, le=64)


def locate(func: Callable[..., Any]) -> tuple[str, str] | None:
    """``(module, qualname)`` under which a worker can import ``func``, or None
    (a closure, a lambda, a function of ``__main__``, or a name that does not
    lead back to this very function)."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        found = _resolve(module, qualname)
    except (ImportError, AttributeError):
        return None
    return (module, qualname) if found is func else None


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------ the worker


def _answer(
    conn: multiprocessing.connection.Connection, job: bytes, args: bytes, inputs: list[bytes]
) -> None:
    try:
        spec = _Job.model_validate_json(job)
        func = _resolve(spec.module, spec.qualname)
        hints = get_type_hints(func)
        params = list(hints)
        args_model, result_model = hints[params[0]], hints["return"]
        produced = func(args_model.model_validate_json(args), inputs)
        if not isinstance(produced, result_model):
            raise TypeError(f"returned {type(produced).__name__}")
        body = produced.model_dump_json().encode()
    except Exception as exc:
        conn.send_bytes(_Reply(ok=False, error=type(exc).__name__[:256]).model_dump_json().encode())
        return
    conn.send_bytes(_Reply(ok=True).model_dump_json().encode())
    conn.send_bytes(body)


def worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A worker's loop: one job at a time until the pipe closes (module doc)."""
    try:
        while True:
            job = conn.recv_bytes(_MAX_HEADER)
            count = _Job.model_validate_json(job).inputs  # not a job: this worker ends
            args = conn.recv_bytes(_MAX_FRAME)
            inputs = [conn.recv_bytes(_MAX_FRAME) for _ in range(count)]
            _answer(conn, job, args, inputs)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    except Exception:
        traceback.print_exc()
        return


# ------------------------------------------------------------------ the pool


@dataclass(slots=True, eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


def _exchange(
    conn: multiprocessing.connection.Connection, frames: Sequence[bytes], max_result: int
) -> tuple[bytes, bytes]:
    """Blocking (run in a thread): send the job, read the reply header and body."""
    for frame in frames:
        conn.send_bytes(frame)
    header = conn.recv_bytes(_MAX_HEADER)
    reply = _Reply.model_validate_json(header)
    body = conn.recv_bytes(max_result) if reply.ok else b""
    return header, body


class WorkerPool:
    """Up to ``size`` spawned worker processes (module doc)."""

    def __init__(self, size: int, *, max_result: int = 256 * 1024) -> None:
        if not 1 <= size <= 256:
            raise LocalError("a worker pool has 1..256 workers")
        self.size = size
        self.max_result = max_result
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False
        #: workers started, killed at a deadline or cancellation, found dead
        self.started = 0
        self.killed = 0
        self.crashed = 0

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child,), name="securemesh-task-worker", daemon=True
        )
        process.start()
        child.close()
        self.started += 1
        return _Worker(process, parent)

    async def warm(self) -> None:
        """Start one idle worker ahead of the first run (the interpreter's start-up)."""
        if not self._closed and len(self) < self.size:
            self._idle.append(await asyncio.to_thread(self._start))

    async def run(self, where: tuple[str, str], args_json: bytes, inputs: Sequence[bytes]) -> bytes:
        """Run ``where`` in a worker; the result's JSON. Cancelling kills the worker.

        Raises :class:`WorkerTaskError` when the task raised, :class:`WorkerCrashed`
        when the worker died or broke the protocol (the worker is then discarded).
        """
        if self._closed:
            raise LocalError("the worker pool is closed")
        if len(self._busy) >= self.size:
            raise LocalError("more runs than workers: the caller's semaphore must bound them")
        worker = self._idle.pop() if self._idle else await asyncio.to_thread(self._start)
        self._busy.add(worker)
        job = json.dumps({"module": where[0], "qualname": where[1], "inputs": len(inputs)}).encode()
        frames = [job, args_json, *inputs]
        healthy = False
        try:
            header, body = await asyncio.to_thread(_exchange, worker.conn, frames, self.max_result)
            healthy = True
        except asyncio.CancelledError:
            self.killed += 1
            raise
        except (EOFError, OSError, ValidationError) as exc:
            self.crashed += 1
            raise WorkerCrashed(type(exc).__name__) from None
        finally:
            self._busy.discard(worker)
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                self._discard(worker)
        reply = _Reply.model_validate_json(header)
        if not reply.ok:
            raise WorkerTaskError(reply.error or "Exception")
        return body

    def _discard(self, worker: _Worker) -> None:
        """Kill and reap ``worker`` (the reaping in a thread: never blocks the loop)."""
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()
        with contextlib.suppress(OSError):
            worker.conn.close()
        with contextlib.suppress(RuntimeError):  # no running loop: reap here
            asyncio.get_running_loop().run_in_executor(None, worker.process.join, 5.0)
            return
        worker.process.join(5.0)

    def close(self) -> None:
        """Kill every worker (idle and busy)."""
        self._closed = True
        for worker in [*self._idle, *self._busy]:
            self._discard(worker)
        self._idle.clear()
