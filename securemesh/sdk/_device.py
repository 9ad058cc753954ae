"""Device: the synchronous SDK for firmware apps (no asyncio in the application).

Theory of operation
-------------------
:meth:`Device.connect` starts one daemon thread, ``securemesh-sdk-loop``, that
runs a private asyncio event loop; the :class:`~securemesh.sdk.AsyncDevice`
(MeshNode, ZeroMQ sockets, renewal and audit-shipping tasks) lives entirely
on that loop. Every public method submits a coroutine to the loop with
:func:`asyncio.run_coroutine_threadsafe` and blocks on its result, so
exceptions (TimeoutError, RemoteCallError, CertificateExpired, ...) surface in
the caller's thread unchanged.

**Handlers and thread safety.** Handlers registered with :meth:`Device.on`
run on a second SDK thread, ``securemesh-sdk-handler`` (a one-worker
executor): one at a time, in arrival order, never on the loop thread and
never on the application's thread. So

* a handler may block briefly and may call :meth:`send` / :meth:`request` /
  :meth:`on` (they hop to the loop thread); a long :meth:`request` in a
  handler delays the handlers queued behind it, but not the network;
* handlers never run concurrently with each other, but they *do* run
  concurrently with the application's own thread: protect state shared
  between a handler and the main loop (a :class:`queue.Queue`,
  :class:`threading.Lock`, ...);
* :meth:`close` must not be called from a handler (it waits for handlers to
  finish: :class:`~securemesh.errors.LocalError`).

All methods of :class:`Device` are thread-safe. At most
``limits.max_inflight`` handler calls are queued; beyond that the node stops
reading from the edge (back-pressure) instead of buffering without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from securemesh.errors import LocalError, TransportClosed
from securemesh.sdk._files import Enrollment, enroll_device, resolve_passphrase

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

    from securemesh.crypto.certs import Certificate
    from securemesh.crypto.keystore import KdfParams
    from securemesh.fl import Participant, TrainFn
    from securemesh.sdk._async import AsyncDevice, Auth, Handler, State
    from securemesh.sdk._message import Message
    from securemesh.tasks import ObjectRef, SignedTaskResult, TaskIntent, TaskRequest, TaskState

__all__ = ["Device", "TaskHandle"]


class TaskHandle:
    """A submitted task (:meth:`Device.submit`): its id and, once it arrives, its result."""

    def __init__(
        self,
        task_id: str,
        future: concurrent.futures.Future[Any],
        *,
        device: Device | None = None,
        scheduler: str = "",
    ) -> None:
        self.task_id = task_id
        self._future = future
        self._device = device
        self._scheduler = scheduler

    def done(self) -> bool:
        """True once the reply (a result or a refusal) arrived or the wait ended."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> SignedTaskResult:
        """The executor's signed result (TimeoutError if it is not there in ``timeout`` s;
        RemoteCallError with code ``cancelled`` after :meth:`cancel`)."""
        import concurrent.futures  # noqa: PLC0415 - loaded by connect() already

        from securemesh.tasks import SignedTaskResult  # noqa: PLC0415

        try:
            reply = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"task {self.task_id}: no result within {timeout} s") from None
        if isinstance(reply, SignedTaskResult):  # a detached submission's polled result
            return reply
        return SignedTaskResult.model_validate_json(reply.body_bytes)

    def status(self, timeout: float = 10.0) -> TaskState | None:
        """The scheduler's view of this task (``state``: submitted, placed, finished,
        failed, cancelled; the node; attempts), or None if it does not know it."""
        from securemesh.tasks import MSG_STATUS, TaskQuery, TaskStates  # noqa: PLC0415

        device = self._bound()
        reply = device.request(
            self._scheduler, MSG_STATUS, TaskQuery(task_id=self.task_id), timeout=timeout
        )
        states = TaskStates.model_validate_json(reply.body_bytes).tasks
        return states[0] if states else None

    def cancel(self, timeout: float = 10.0) -> bool:
        """Ask the scheduler to cancel the task (the executor stops it: a worker
        process is killed). True if it was still running and is now cancelled;
        False if it had already ended (or the scheduler does not know it)."""
        from securemesh.tasks import MSG_CANCEL, TaskQuery, TaskStates  # noqa: PLC0415

        if self._future.done():
            return False
        device = self._bound()
        reply = device.request(
            self._scheduler, MSG_CANCEL, TaskQuery(task_id=self.task_id), timeout=timeout
        )
        states = TaskStates.model_validate_json(reply.body_bytes).tasks
        return bool(states) and states[0].state == "cancelled"

    def _bound(self) -> Device:
        if self._device is None or not self._scheduler:
            raise LocalError("this handle is not bound to a device and scheduler")
        return self._device


async def _detached_submit(
    dev: AsyncDevice,
    scheduler: str,
    request: TaskRequest,
    frames: Sequence[bytes],
    *,
    poll_s: float,
) -> SignedTaskResult:
    """``task.start``, then ``task.result`` long polls until the result (the
    submission's failure as RemoteCallError with its reason as the code)."""
    import asyncio  # noqa: PLC0415 - already loaded by connect()

    from securemesh.errors import RemoteCallError  # noqa: PLC0415
    from securemesh.tasks import MSG_RESULT, MSG_START, TaskPoll, TaskWait  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    end = loop.time() + request.intent.deadline_s + 5.0
    await dev.request(scheduler, MSG_START, request, frames, timeout=poll_s + 10.0)
    while True:
        wait = max(0.0, min(poll_s, end - loop.time()))
        reply = await dev.request(
            scheduler,
            MSG_RESULT,
            TaskWait(task_id=request.task_id, wait_s=wait),
            timeout=wait + 10.0,
        )
        poll = TaskPoll.model_validate_json(reply.body_bytes)
        if poll.result is not None:
            return poll.result
        state = poll.state
        if state is None:
            raise RemoteCallError("the scheduler does not know the task", code="unknown_task")
        if state.state in {"failed", "cancelled"}:
            code = state.error or state.state
            raise RemoteCallError(f"task {state.state}: {code}", code=code, detail=state.error)
        if loop.time() >= end:
            raise TimeoutError(f"task {request.task_id}: no result by its deadline + 5 s")


T = TypeVar("T")

#: Who may send a device the types it handles, by default: its infrastructure.
DEFAULT_TIERS: tuple[str, ...] = ("edge", "cloud")


class Device:
    """A connected device (synchronous API). Create it with :meth:`connect`.

    Use it as a context manager, or call :meth:`close`::

        with Device.connect("/var/lib/sensor", passphrase=secret) as dev:
            dev.on("sensor.config", on_config)
            dev.send(dev.parent_id, "sensor.reading", {"celsius": 21.5})
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        device: AsyncDevice,
    ) -> None:
        self._loop = loop
        self._thread = thread
        self._dev = device
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        self._handlers = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="securemesh-sdk-handler"
        )
        self._handler_threads: set[int] = set()
        self._closed = False
        self._close_lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    @staticmethod
    def enroll(
        token: str,
        *,
        data_dir: str | Path,
        node_id: str,
        passphrase: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        kdf_params: KdfParams | None = None,
    ) -> Enrollment:
        """Enroll this device with a join token (``smj1.…``) into ``data_dir``.

        Generates the device's keys locally (or keeps the ones already in
        ``data_dir/identity.key`` — the re-enrollment path after the
        certificate expired), proves possession of the token to the token's
        server over CurveZMQ, verifies the certificate it gets back against
        the root named in the token, and writes identity, certificate, trust,
        revocation list and ``node.toml`` (parent endpoint and key) to
        ``data_dir``. The passphrase (else ``$SECUREMESH_PASSPHRASE``)
        encrypts ``identity.key``; ``kdf_params`` sets its Argon2id cost
        (default: :data:`securemesh.crypto.keystore.DEFAULT_PARAMS`, 128 MiB —
        pick a smaller memlimit on small devices). Blocking; raises
        TransportError if no reply comes within ``timeout`` seconds (server
        unreachable, or a token it does not admit), TokenError if refused.
        """
        path = Path(data_dir)
        return enroll_device(
            token,
            data_dir=path,
            node_id=node_id,
            passphrase=resolve_passphrase(passphrase, path),
            timeout=timeout,
            clock=clock,
            kdf_params=kdf_params,
        )

    @classmethod
    def connect(
        cls,
        data_dir: str | Path,
        *,
        passphrase: str | None = None,
        connect_timeout: float | None = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        renew_fraction: float | None = None,
        renew_check_interval: float | None = None,
    ) -> Device:
        """Connect the device enrolled in ``data_dir`` to its edge; see :meth:`AsyncDevice.connect`.

        Waits (up to ``connect_timeout`` s; None: do not wait) until the edge
        answered. ``clock`` (Unix seconds) drives certificate checks,
        timestamps and renewal; ``monotonic`` (seconds, never going back) the
        node's timers and the 30 s interval of saving replay marks. Renewal
        starts at ``renew_fraction`` of the certificate's lifetime (default:
        ``renew_fraction`` of node.toml, 0.5) and is checked every
        ``renew_check_interval`` seconds
        (default: 1 % of the lifetime, 0.05..60 s).
        """
        import asyncio  # noqa: PLC0415 - lazy: keeps `import securemesh.sdk` small

        from securemesh.sdk._async import AsyncDevice  # noqa: PLC0415

        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name="securemesh-sdk-loop", daemon=True
        )
        thread.start()
        future = asyncio.run_coroutine_threadsafe(
            AsyncDevice.connect(
                data_dir,
                passphrase=passphrase,
                connect_timeout=connect_timeout,
                clock=clock,
                monotonic=monotonic,
                renew_fraction=renew_fraction,
                renew_check_interval=renew_check_interval,
            ),
            loop,
        )
        try:
            device = future.result()
        except BaseException:
            _stop_loop(loop, thread)
            raise
        return cls(loop, thread, device)

    def close(self, *, drain_timeout: float | None = 5.0) -> None:
        """Drain in-flight handlers, disconnect, stop the SDK threads (idempotent)."""
        if threading.get_ident() in self._handler_threads:
            raise LocalError("close() cannot be called from a handler (it waits for handlers)")
        if threading.current_thread() is self._thread:
            raise LocalError("close() cannot be called on the SDK loop thread (a renewal callback)")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        import asyncio  # noqa: PLC0415

        try:
            if self._loop.is_running():
                asyncio.run_coroutine_threadsafe(
                    self._dev.close(drain_timeout=drain_timeout), self._loop
                ).result()
        finally:
            _stop_loop(self._loop, self._thread)
            self._handlers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise TransportClosed("the device is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise LocalError("the synchronous Device API cannot be used on the SDK loop thread")
        import asyncio  # noqa: PLC0415 - already loaded by connect()
        from concurrent.futures import wait  # noqa: PLC0415

        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            raise TransportClosed("the device is closed") from exc
        # Wait in slices: if the loop stops meanwhile (close() from another
        # thread), the coroutine never runs and a plain result() would hang.
        while not wait([future], timeout=0.25).done:
            if not self._thread.is_alive() or self._loop.is_closed():
                future.cancel()
                raise TransportClosed("the device was closed during the call")
        return future.result()

    def _in_loop(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run())

    # ---------------------------------------------------------------- messaging

    def send(
        self,
        dest: str,
        msg_type: str,
        body: object,
        frames: Sequence[bytes] = (),
        *,
        auth: Auth = "signed",
    ) -> None:
        """One-way message to node ``dest`` (usually :attr:`parent_id`).

        ``body``: a pydantic model, a dict (canonical JSON, see
        :mod:`securemesh.sdk._message`) or JSON bytes; ``frames``: raw bytes
        frames, signed with the envelope. Returns once the message is queued
        for the edge (SendTimeout if the queue stays full).
        """
        self._call(self._dev.send(dest, msg_type, body, frames, auth=auth))

    def request(
        self,
        dest: str,
        msg_type: str,
        body: object,
        frames: Sequence[bytes] = (),
        *,
        timeout: float | None = None,
        auth: Auth = "signed",
    ) -> Message:
        """Send a REQUEST to ``dest`` and return its verified reply (a :class:`Message`).

        ``timeout`` bounds the whole call (queueing towards the edge and the
        reply) and defaults to ``limits.request_timeout`` of ``node.toml``
        (10 s); TimeoutError after it, RemoteCallError if the peer's handler
        refused or failed.
        """
        return self._call(
            self._dev.request(dest, msg_type, body, frames, timeout=timeout, auth=auth)
        )

    def submit(
        self,
        scheduler: str,
        task_type: str,
        args: dict[str, Any] | None = None,
        *,
        intent: TaskIntent,
        work: float = 1.0,
        inline: Sequence[bytes] = (),
        objects: Sequence[ObjectRef] = (),
        detached: bool | None = None,
        executor: str | None = None,
    ) -> TaskHandle:
        """Submit a task with its intent to the ``scheduler`` node; a handle to its result.

        Returns at once (docs/tasks.md). ``handle.result(timeout)`` waits for the
        executor's :class:`~securemesh.tasks.SignedTaskResult` (``RemoteCallError``
        with code ``deadline``, ``no_placement``, ``task_failed`` ... if refused);
        check it with :func:`securemesh.tasks.verify_result` and the executor's
        certificate. The request waits at most the deadline plus 5 s.

        A relaying edge passes a reply back only within 2 x its request timeout
        (protocol.md), so a task that may run longer is **detached** (the default
        when the deadline plus 5 s exceeds 2 x this device's ``request_timeout``,
        taken as the edge's; or ``detached=True``): ``task.start`` returns at
        once and the handle polls ``task.result`` (long polls of a quarter of
        that window) until the result, a failure or the deadline plus 5 s.

        ``executor`` pins the task to that node (after ``task.place``; a task over
        stored objects: :func:`securemesh.sdk.submit_over_objects`).
        """
        import asyncio  # noqa: PLC0415 - already loaded by connect()

        from securemesh.tasks import new_request  # noqa: PLC0415 - lazy: only when used

        request, frames = new_request(
            task_type,
            args,
            intent=intent,
            work=work,
            inline=list(inline),
            objects=list(objects),
            executor=executor,
        )
        if self._closed:
            raise TransportClosed("the device is closed")
        window = 2 * self._dev.node.config.limits.request_timeout
        if detached is None:
            detached = intent.deadline_s + 5.0 > window
        coro: Coroutine[Any, Any, Any]
        if detached:
            coro = _detached_submit(
                self._dev, scheduler, request, frames, poll_s=min(10.0, window / 4)
            )
        else:
            coro = self._dev.request(
                scheduler, "task.submit", request, frames, timeout=intent.deadline_s + 5.0
            )
        return TaskHandle(
            request.task_id,
            asyncio.run_coroutine_threadsafe(coro, self._loop),
            device=self,
            scheduler=scheduler,
        )

    def join_federation(
        self,
        coordinator: str,
        train: TrainFn,
        *,
        samples: int,
        timeout: float = 10.0,
    ) -> Participant:
        """Take part in the federation coordinated by node ``coordinator`` (federated-learning.md).

        ``train(global_params) -> (new_params, samples_used)`` is called on an
        SDK handler thread at every round this device is selected for; the
        update ``new - global`` is quantized and sent only masked (SecAgg+):
        the coordinator learns the sum over the round's survivors. In an
        ``he`` round the device encrypts ``[n·Δ ‖ n]`` for the round's HE job
        (``he_contribute``) instead. Returns
        the :class:`~securemesh.fl.Participant` (``rounds_done``,
        ``last_error``, ``state``). Only messages from ``coordinator`` are
        taken; the join itself is a REQUEST answered by the coordinator.
        """
        from securemesh.fl import (  # noqa: PLC0415 - lazy: numpy and the FL core only when used
            MSG_HE_ROUND,
            MSG_JOIN,
            MSG_ROUND,
            MSG_SECAGG,
            HERoundBody,
            Participant,
            RoundBody,
        )
        from securemesh.sdk._he import he_contribute  # noqa: PLC0415 - TenSEAL only when called

        def send(msg_type: str, body: bytes, frames: Sequence[bytes]) -> None:
            self.send(coordinator, msg_type, body, frames)

        def he_send(aggregator: str, job_id: str, values: Any) -> None:
            he_contribute(self, aggregator, job_id, values.tolist(), timeout=60.0)

        participant = Participant(self.node_id, train, send, samples=samples, he_send=he_send)

        def on_he_round(msg: Message) -> None:
            if msg.sender == coordinator:
                participant.on_he_round(msg.body(HERoundBody), msg.frames)

        def on_round(msg: Message) -> None:
            if msg.sender == coordinator:
                participant.on_round(msg.body(RoundBody), msg.frames)

        def on_secagg(msg: Message) -> None:
            if msg.sender == coordinator:
                participant.on_secagg(msg.frames)

        self.on(MSG_ROUND, on_round)
        self.on(MSG_SECAGG, on_secagg)
        self.on(MSG_HE_ROUND, on_he_round)
        self.request(coordinator, MSG_JOIN, participant.join_body(), timeout=timeout)
        return participant

    def on(
        self,
        msg_type: str,
        handler: Handler,
        *,
        tiers: Iterable[str] | None = DEFAULT_TIERS,
        roles: Iterable[str] | None = None,
    ) -> None:
        """Call ``handler(msg)`` for verified ``msg_type`` messages (module docstring: threads).

        Only senders of ``tiers`` (default: edge and cloud nodes) and, if
        given, holding one of ``roles`` are authorized; others are rejected
        by the node before any handler runs. For a REQUEST, the return value
        (model, dict, JSON bytes, :class:`Reply` with frames, or None) is the
        reply; an exception becomes an error reply (``internal``, or a
        RemoteError's reason).
        """
        tier_list = None if tiers is None else list(tiers)
        role_list = None if roles is None else list(roles)

        def wrapped(msg: Message) -> object:
            self._handler_threads.add(threading.get_ident())
            return handler(msg)

        self._in_loop(
            lambda: self._dev.on_in_executor(
                msg_type, wrapped, self._handlers, tiers=tier_list, roles=role_list
            )
        )

    def record_audit(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Record an audit event signed by this device (durable when it returns) for the
        cloud log; see :meth:`AsyncDevice.record_audit`. Returns its event id."""
        return self._in_loop(
            lambda: self._dev.record_audit(
                kind, subject, outcome=outcome, details=details, event_id=event_id
            )
        )

    def renew(self, *, timeout: float | None = None) -> Certificate:
        """Renew the certificate now (the background task does it at half lifetime)."""
        return self._call(self._dev.renew(timeout=timeout))

    def on_renewal(self, callback: Callable[[Certificate], None]) -> None:
        """Call ``callback(new_certificate)`` after each renewal (on the SDK loop thread:
        keep it tiny, e.g. set a :class:`threading.Event`)."""
        self._in_loop(lambda: self._dev.on_renewal(callback))

    def wait_connected(self, timeout: float) -> None:
        """Block until the edge answered our hello (PeerUnavailable after ``timeout``)."""
        self._call(self._dev.wait_connected(timeout))

    # -------------------------------------------------------------------- facts

    @property
    def node_id(self) -> str:
        return self._dev.node_id

    @property
    def parent_id(self) -> str | None:
        """The edge's node id (known once connected)."""
        return self._dev.parent_id

    @property
    def certificate(self) -> Certificate:
        """The current verified certificate (replaced on renewal)."""
        return self._dev.certificate

    @property
    def state(self) -> State:
        """``connecting``, ``connected``, ``expired``, ``revoked`` or ``closed``."""
        return "closed" if self._closed else self._dev.state

    @property
    def data_dir(self) -> Path:
        return self._dev.data_dir

    @property
    def renewals(self) -> int:
        return self._dev.renewals

    def status(self) -> dict[str, object]:
        """Node status (peers, counters, rejections, certificate) plus SDK state."""
        return self._in_loop(self._dev.status)

    @property
    def async_device(self) -> AsyncDevice:
        """The AsyncDevice on the SDK loop (only touch it from that loop)."""
        return self._dev

    def __repr__(self) -> str:
        return f"Device(node_id={self._dev.node_id!r}, state={self.state!r})"


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    import asyncio  # noqa: PLC0415

    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    thread.join()
