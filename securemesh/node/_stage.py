"""Signature checks of a backlog on worker threads, results delivered in arrival order.

Theory of operation
-------------------
Step 4 of a SIGNED envelope (Ed25519, ≈ 55 µs in libsodium) dominates the
cost of relayed and signed traffic, and libsodium releases the GIL while it
verifies. When a receive loop has a backlog — more messages already queued
behind the one in hand (:meth:`Channel.has_queued`) or earlier ones still in
this stage — :meth:`Pipeline.process` stops a SIGNED envelope after step 3
(:class:`~securemesh.node._pipeline.PendingSignature`) and the loop hands it
to its :class:`VerifyStage`:

* pending envelopes are grouped into batches (at most ``batch_size``, or
  whatever arrived before the loop next yields) and each batch is checked by
  :func:`~securemesh.node._pipeline.check_signatures` on the node's thread
  pool, so the event loop keeps decoding the next messages meanwhile;
* every other message of the loop that arrives while the stage is non-empty
  — MAC, malformed, refused at step 3, anything — queues behind the pending
  ones *as received frames*: the whole pipeline runs on it only when its turn
  comes, so it sees every state change the earlier messages made (a session a
  handshake installed, a certificate a lookup returned, a revocation list),
  and the loop's messages are delivered **in arrival order**, exactly as
  inline;
* one consumer task takes the queue in order, waits for an item's batch,
  runs steps 5-6 (:meth:`Pipeline.finish`, which re-checks the certificate,
  so a revocation that arrived meanwhile still applies) and delivers the
  result through the node's usual path;
* memory is bounded: at ``max_queued`` items the receive loop waits
  (:meth:`VerifyStage.wait_for_room`) and stops reading, so ZeroMQ's
  high-water marks push back on the senders.

A message with no backlog is verified inline, so a lone request pays no
thread hand-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, cast

from securemesh.node._metrics import Rejection
from securemesh.node._pipeline import PendingSignature, check_signatures

if TYPE_CHECKING:
    from securemesh.errors import RemoteError
    from securemesh.node._pipeline import Pipeline, VerifiedMessage
    from securemesh.wire import Envelope

__all__ = ["VerifyStage"]

log = logging.getLogger("securemesh.node")


class _Batch:
    __slots__ = ("future", "items")

    def __init__(self) -> None:
        self.items: list[PendingSignature] = []
        self.future: asyncio.Future[list[Envelope | RemoteError]] | None = None


class VerifyStage:
    """The ordered second stage of one receive loop (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        executor: Callable[[], Executor],
        deliver: Callable[[VerifiedMessage | Rejection, Sequence[bytes] | None], Awaitable[None]],
        *,
        from_parent: bool,
        batch_size: int = 64,
        max_queued: int = 1024,
    ) -> None:
        self._pipeline = pipeline
        self._from_parent = from_parent
        self._executor = executor
        self._deliver = deliver
        self._batch_size = batch_size
        self._max_queued = max_queued
        # (pending, its batch, index) | (ready result, None, 0) | ((peer, frames), None, 1)
        self._queue: deque[tuple[object, _Batch | None, int]] = deque()
        self._open: _Batch | None = None
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._consumer: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.deferred = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """True while items wait: later messages of the loop must queue behind them."""
        return bool(self._queue)

    def put_frames(self, peer: bytes, frames: list[bytes]) -> None:
        """Queue a received message; the pipeline runs on it when its turn comes."""
        self._append((peer, frames), None, 1)

    def put(self, item: PendingSignature | VerifiedMessage) -> None:
        """Queue a pending signature (or a message already verified) behind the others."""
        if self._closed:
            return
        if type(item) is PendingSignature:
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
                asyncio.get_running_loop().call_soon(self._flush)
            batch.items.append(item)
            self.deferred += 1
            self._append(item, batch, len(batch.items) - 1)
            if len(batch.items) >= self._batch_size:
                self._flush()
        else:
            self._append(item, None, 0)

    def _append(self, item: object, batch: _Batch | None, index: int) -> None:
        if self._closed:
            return
        self._queue.append((item, batch, index))
        if len(self._queue) >= self._max_queued:
            self._room.clear()
        self._ready.set()
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._run())

    async def wait_for_room(self) -> None:
        """Wait while the stage is full (back-pressure on the receive loop)."""
        if not self._room.is_set():
            await self._room.wait()

    def _flush(self) -> None:
        batch = self._open
        if batch is None or self._closed:
            return
        self._open = None
        self.batches += 1
        loop = asyncio.get_running_loop()
        batch.future = loop.run_in_executor(self._executor(), check_signatures, batch.items)

    async def _run(self) -> None:
        queue = self._queue
        while not self._closed:
            if not queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            item, batch, index = queue[0]
            result: object
            frames: list[bytes] | None = None
            if batch is None:
                if index:  # received frames: the whole pipeline, now, in order
                    peer, frames = cast("tuple[bytes, list[bytes]]", item)
                    result = self._pipeline.process(peer, frames, from_parent=self._from_parent)
                else:
                    result = item
            else:
                if batch.future is None:
                    self._flush()
                assert batch.future is not None
                try:
                    outcomes = await batch.future
                except Exception:  # the pool is gone (shutdown): check here instead
                    outcomes = check_signatures(batch.items)
                    batch.future = asyncio.get_running_loop().create_future()
                    batch.future.set_result(outcomes)
                assert type(item) is PendingSignature
                result = self._pipeline.finish(item, outcomes[index])
            queue.popleft()
            if len(queue) <= self._max_queued // 2:
                self._room.set()
            try:
                await self._deliver(cast("VerifiedMessage | Rejection", result), frames)
            except Exception:
                log.exception("dispatch failed", extra={"event": "dispatch_error"})

    async def close(self) -> None:
        """Stop delivering (the node is stopping); queued items are dropped."""
        self._closed = True
        self._queue.clear()
        self._room.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
