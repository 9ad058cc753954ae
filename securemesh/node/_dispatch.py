"""Dispatch: the handler table, and running handlers for messages addressed to this node.

Owns the handler per message type (the runtime's built-ins, the protocol
types, services' handlers), the local policy of types admitted for relaying
too (``refused locally``), and the ``limits.max_inflight`` slots of ``async``
handlers. It meets the rest of the node only through the
:class:`~securemesh.node._core.Core` (reject, send a reply or an error, the
task set the node drains on stop).

A plain-function handler runs inline (the fast path: no coroutine for a
one-way message); an ``async`` one runs as a task once a slot is free (the
receive loop waits, so the transport's bounded queues push back). A
handler's return value becomes the REPLY of a REQUEST; an exception becomes
``mesh.error`` (reply or silence, protocol.md §7.2). A
:class:`~securemesh.node._pipeline.FirstContactMessage` reaches only a
handler that opted in (``first_contact``); any other is rejected.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from securemesh.errors import AuthorizationError, NoHandler, RemoteError
from securemesh.node._core import Core
from securemesh.wire import Flags

if TYPE_CHECKING:
    from securemesh.node._pipeline import AnyMessage
    from securemesh.policy import Policy

__all__ = ["Dispatch", "HandlerEntry"]

log = logging.getLogger("securemesh.node")


class HandlerEntry:
    """One registered handler and how it is run."""

    __slots__ = ("builtin", "first_contact", "fn", "is_async", "local_policy")

    def __init__(
        self,
        fn: Callable[[Any], object],
        *,
        builtin: bool,
        local_policy: Policy | None = None,
        first_contact: bool = False,
    ) -> None:
        self.fn = fn
        #: opted in to FirstContactMessage (registered with a first-contact resolver)
        self.first_contact = first_contact
        self.is_async = inspect.iscoroutinefunction(fn)
        self.builtin = builtin
        #: a local delivery's own policy, when the pipeline admitted the type under
        #: ``local OR relay`` (checked before dispatch: a refusal is silent, like the pipeline's)
        self.local_policy = local_policy


class Dispatch:
    """The handler table and the handlers' execution (see the module docstring)."""

    __slots__ = ("_core", "_handlers", "_inflight", "_metrics", "draining", "inflight_count")

    def __init__(self, core: Core, *, max_inflight: int) -> None:
        self._core = core
        self._metrics = core.metrics
        self._handlers: dict[str, HandlerEntry] = {}
        self._inflight = asyncio.Semaphore(max_inflight)
        self.inflight_count = 0
        #: set by the node's stop(): new requests get ``mesh.error`` ``unavailable``
        self.draining = False

    def register(
        self,
        msg_type: str,
        fn: Callable[[Any], object],
        *,
        builtin: bool,
        local_policy: Policy | None = None,
        first_contact: bool = False,
    ) -> None:
        """Handle ``msg_type`` with ``fn`` (replacing any previous handler)."""
        self._handlers[msg_type] = HandlerEntry(
            fn, builtin=builtin, local_policy=local_policy, first_contact=first_contact
        )

    def __contains__(self, msg_type: object) -> bool:
        return msg_type in self._handlers

    def _refused_locally(self, policy: Policy, msg: AnyMessage) -> bool:
        """A type admitted for relaying, addressed here: the local policy must allow it too.

        A refusal is rejected like the pipeline's (counted, audited, no reply:
        protocol.md §7).
        """
        core = self._core
        info = msg.peer_info
        if info is None:  # first contact: only the protocol's rules apply
            return False
        try:
            policy.authorize(info, msg.msg_type)
        except AuthorizationError as exc:
            core._reject(msg, exc)
            return True
        return False

    def deliver(self, msg: AnyMessage) -> Awaitable[None] | None:  # noqa: PLR0911
        """Run the handler of a message (not a reply) addressed here.

        Returns what is left to await, if anything: a plain-function handler
        runs inline (its reply, if any, is what is left); an ``async`` one runs
        as a task once a slot is free.
        """
        header = msg.envelope.header  # (header fields directly: the envelope's are properties)
        flags = header.flags
        entry = self._handlers.get(header.msg_type)
        if entry is None:
            self._core._reject(msg, NoHandler("no handler for this message type"))
            return None
        if entry.local_policy is not None and self._refused_locally(entry.local_policy, msg):
            return None
        if msg.first_contact and not entry.first_contact:  # (a FirstContactMessage)
            refusal = AuthorizationError("this handler takes no first-contact messages")
            self._core._reject(msg, refusal)
            return None
        if self.draining and not entry.builtin:
            if flags is Flags.REQUEST:
                return self._core._send_error(msg, "unavailable", "the node is shutting down")
            return None
        self._metrics.dispatched += 1
        if not entry.is_async:
            try:
                result = entry.fn(msg)
            except Exception as exc:
                return self.handler_failed(msg, exc)
            if flags is Flags.REQUEST:
                return self._core._send_reply(msg, result)
            return None
        return self._start_handler(entry, msg)

    async def _start_handler(self, entry: HandlerEntry, msg: AnyMessage) -> None:
        """Run an ``async`` handler as a task once one of ``limits.max_inflight`` slots is free."""
        core = self._core
        await self._inflight.acquire()
        self.inflight_count += 1
        task = asyncio.create_task(self._run_handler(entry, msg))
        core._tasks.add(task)
        task.add_done_callback(core._tasks.discard)

    async def _run_handler(self, entry: HandlerEntry, msg: AnyMessage) -> None:
        core = self._core
        try:
            result = await cast("Awaitable[object]", entry.fn(msg))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.handler_failed(msg, exc)
            return
        finally:
            self._inflight.release()
            self.inflight_count -= 1
        if msg.envelope.flags is Flags.REQUEST:
            await core._send_reply(msg, result)

    async def handler_failed(self, msg: AnyMessage, exc: Exception) -> None:
        """A handler refused a message that passed the whole pipeline (protocol.md §7.2).

        Reply or silence: the sender is authenticated and authorized for this
        type, so a REQUEST gets ``mesh.error`` with the reason and the error's
        ``public_detail`` (e.g. the body field that failed validation, never an
        input value); a one-way message gets nothing. Pipeline rejections never
        reach here: they are silent.
        """
        core = self._core
        message = ""
        if isinstance(exc, RemoteError):
            core._reject(msg, exc)
            code, message = exc.reason, exc.public_detail
        else:
            log.error(
                "handler failed",
                extra={"event": "handler_error", "msg_type": msg.msg_type, "error": repr(exc)},
            )
            code = "internal"
        if msg.envelope.flags is Flags.REQUEST:
            await core._send_error(msg, code, message)
