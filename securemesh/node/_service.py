"""The service seam: :class:`Service`, :class:`NodeContext` and the host that runs them.

Theory of operation
-------------------
Every capability beyond the bus itself is a *service* on a node: storage,
tasks, FL, HE, and the runtime's own enrollment and audit shipping/ingest
(ARCHITECTURE.md §4a; the guide is docs/services.md). A service is an object
with four methods:

* ``install(ctx)`` -- before the node starts: register handlers and keep the
  :class:`NodeContext`, its only door into the node;
* ``async start()`` -- once the node runs: typically ``ctx.spawn(...)`` loops;
* ``async stop()`` -- at shutdown, before the node stops; afterwards the host
  cancels every task the service spawned and still running;
* ``status()`` -- a small JSON-friendly mapping, shown under
  ``status["services"][name]`` (with the host's own facts: state, tasks,
  crashes).

A :class:`ServiceHost` owns the services of one node: it installs them in
order, starts them in order, stops them in reverse order, and reports their
status and names (the ``services`` of the node's ``node.report``).

**Tasks** (:meth:`NodeContext.spawn`) work like a trio nursery owned by the
service: they are tracked, cancelled when the service stops, and a task that
raises is logged with its traceback and shown in the service's status
(``crashed``, bounded) -- it does not stop the node or the other services.

**Audit** (:attr:`NodeContext.audit`) is never None and never blocks the event
loop. On a node it is a :class:`QueuedAuditRecorder`: :meth:`~QueuedAuditRecorder.record`
validates the event on the caller's thread (an invalid event raises at once),
then puts it on a bounded queue; one worker thread signs it and stores it in
the node's durable outbox, from where the audit shipper sends it to the cloud
log. A full queue drops the event, counts it (``dropped``) and returns None.
Each service sees its own view that only records the kinds it declared
(``Service.audit_kinds``). Unit tests use :class:`NullAuditRecorder`.

**Policies** a service gives to :meth:`NodeContext.on` narrow the operator's
``[policy]`` (see :mod:`securemesh.node._policy`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import queue
import re
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from securemesh.errors import ConfigError, LocalError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from securemesh.audit.events import AuditEvent
    from securemesh.audit.outbox import Outbox
    from securemesh.crypto.certs import Certificate
    from securemesh.crypto.signing import Signer
    from securemesh.messages import NodeReport
    from securemesh.node._config import NodeConfig
    from securemesh.node._directory import Directory
    from securemesh.node._node import Auth, Handler, MeshNode
    from securemesh.node._pipeline import VerifiedMessage
    from securemesh.policy import Policy

__all__ = [
    "AuditRecorderLike",
    "CertificateView",
    "LegacyService",
    "NodeContext",
    "NullAuditRecorder",
    "QueuedAuditRecorder",
    "Service",
    "ServiceHost",
    "load_services",
    "statement_message",
    "verify_statement",
]

log = logging.getLogger("securemesh.services")

SERVICE_NAME_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,31}$"
_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)
MAX_SERVICES: Final = 64
MAX_TASKS_PER_SERVICE: Final = 1024
_MAX_CRASHES: Final = 16
#: Default bound of the node's audit queue (events waiting for the signing thread).
AUDIT_QUEUE_SIZE: Final = 4096


# --------------------------------------------------------------------- services


class Service:
    """Base class of a service (override :meth:`install`; the rest default to no-ops).

    ``name`` (ClassVar, ``[a-z][a-z0-9_-]{0,31}``) names the service on the
    node: its data directory, its status entry, the ``services`` of the node's
    report. ``audit_kinds`` lists the audit kinds it records (namespaced,
    e.g. ``("counter.tick",)``): its recorder refuses any other.
    """

    name: ClassVar[str] = ""
    audit_kinds: ClassVar[tuple[str, ...]] = ()

    def install(self, ctx: NodeContext) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> Mapping[str, object]:
        return {}


class LegacyService(Service):
    """A ``register(node)`` function from ``node.toml`` (the form before the seam; legacy).

    It registers handlers on the raw :class:`MeshNode`; its ``policy=`` narrows
    the operator's rules like any other.
    """

    def __init__(self, register: Callable[[MeshNode], object], name: str) -> None:
        self._register = register
        self.service_name = name

    def install(self, ctx: NodeContext) -> None:
        self._register(ctx.node)


def service_name(service: object) -> str:
    name = getattr(service, "service_name", None) or getattr(service, "name", "")
    if not isinstance(name, str) or not _SERVICE_NAME.match(name):
        raise ConfigError(
            f"service {type(service).__name__} needs a name matching {SERVICE_NAME_PATTERN}"
        )
    return name


def _legacy_name(entry: str) -> str:
    text = re.sub(r"[^a-z0-9_-]", "-", entry.lower().replace(":", "-").replace(".", "-"))
    return ("legacy-" + text.strip("-"))[:32].rstrip("-")


def load_services(entries: Iterable[str]) -> list[Service]:
    """Import ``"module:name"`` entries from ``node.toml`` (ConfigError on any problem).

    ``name`` may be a :class:`Service` subclass (instantiated with no
    arguments), a factory taking no arguments and returning a Service, or
    (legacy) a ``register(node)`` function, wrapped in :class:`LegacyService`.
    """
    import importlib  # noqa: PLC0415

    loaded: list[Service] = []
    for entry in entries:
        module_name, _, attr = entry.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"service {entry!r} cannot be loaded: {exc}") from exc
        if not callable(obj):
            raise ConfigError(f"service {entry!r} is not callable")
        if not (isinstance(obj, type) and issubclass(obj, Service)) and _takes_one_argument(obj):
            loaded.append(LegacyService(obj, _legacy_name(entry)))
            continue
        try:
            made: object = obj()  # a Service subclass, or a factory of no arguments
        except Exception as exc:  # the factory's bug: one clear line, not a traceback
            raise ConfigError(f"service factory {entry!r} failed: {exc!r}") from exc
        if not isinstance(made, Service):
            raise ConfigError(f"service {entry!r} did not return a securemesh.node.Service")
        loaded.append(made)
    return loaded


def _takes_one_argument(func: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


# ------------------------------------------------------------------------ audit


class AuditRecorderLike(Protocol):
    """What :attr:`NodeContext.audit` offers (see :class:`QueuedAuditRecorder`)."""

    def record(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str | None: ...

    def status(self) -> dict[str, object]: ...


def _build_event(  # noqa: PLR0917 - record()'s arguments, passed on
    origin: str,
    clock: Callable[[], float],
    kind: str,
    subject: tuple[str, str],
    outcome: str,
    details: Mapping[str, Any] | None,
    event_id: str | None,
) -> AuditEvent:
    """A validated event "now" (LocalError if it is not one)."""
    from securemesh.audit.events import new_event  # noqa: PLC0415

    return new_event(
        kind,
        origin=origin,
        subject=subject,
        outcome=outcome,
        details=dict(details or {}),
        now=clock(),
        event_id=event_id,
    )


class NullAuditRecorder:
    """An audit recorder for unit tests: validates events and keeps the last ``keep``.

    ``origin`` names the node the events claim to come from.
    """

    def __init__(
        self,
        *,
        origin: str = "test-node",
        clock: Callable[[], float] = time.time,
        keep: int = 1024,
    ) -> None:
        self.origin = origin
        self._clock = clock
        self.events: collections.deque[AuditEvent] = collections.deque(maxlen=keep)
        self.recorded = 0

    def record(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str | None:
        event = _build_event(self.origin, self._clock, kind, subject, outcome, details, event_id)
        self.events.append(event)
        self.recorded += 1
        return event.event_id

    def status(self) -> dict[str, object]:
        return {"recorded": self.recorded, "dropped": 0}


class QueuedAuditRecorder:
    """The node's non-blocking recorder: bounded queue -> signing thread -> durable outbox.

    :meth:`record` never blocks the event loop: it validates the event, puts it
    on a queue of at most ``max_queue`` events and returns its id (None and
    ``dropped += 1`` when the queue is full). One worker thread signs the
    events as ``origin`` and stores them in ``outbox``, then calls ``wake`` on
    the loop that recorded (the shipper). :meth:`close` drains the queue.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        origin: str,
        signer: Signer,
        clock: Callable[[], float] = time.time,
        max_queue: int = AUDIT_QUEUE_SIZE,
    ) -> None:
        self._outbox = outbox
        self.origin = origin
        self._signer = signer
        self._clock = clock
        self._queue: queue.Queue[tuple[AuditEvent, asyncio.AbstractEventLoop | None] | None] = (
            queue.Queue(maxsize=max_queue)
        )
        self.wake: Callable[[], None] = lambda: None
        self.recorded = 0
        self.stored = 0
        self.dropped = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"audit-recorder-{self.origin}", daemon=True
                )
                self._thread.start()

    def record(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str | None:
        """Queue one event; its id, or None if the queue is full (counted in ``dropped``).

        Raises :class:`~securemesh.errors.LocalError` for an invalid event.
        """
        if self._closed:
            raise LocalError("the audit recorder is closed")
        event = _build_event(self.origin, self._clock, kind, subject, outcome, details, event_id)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._ensure_thread()
        try:
            self._queue.put_nowait((event, loop))
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10) or self.dropped % 1000 == 0:
                log.warning(
                    "audit queue full: event dropped",
                    extra={"event": "audit_dropped", "kind": kind, "dropped": self.dropped},
                )
            return None
        self.recorded += 1
        return event.event_id

    def _run(self) -> None:
        from securemesh.audit.events import sign_event  # noqa: PLC0415

        while True:
            item = self._queue.get()
            if item is None:
                return
            event, loop = item
            try:
                self._outbox.put(sign_event(event, self._signer))
                self.stored += 1
            except Exception as exc:  # the outbox's storage errors: count, keep serving
                self.failed += 1
                log.warning(
                    "audit event not stored",
                    extra={"event": "audit_store_failed", "error": repr(exc)},
                )
                continue
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self.wake)

    @property
    def pending(self) -> int:
        """Events recorded but not yet stored (or failed)."""
        return self.recorded - self.stored - self.failed

    def close(self, timeout: float = 10.0) -> None:
        """Store what is queued, then stop the thread (after the services stopped)."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None

    def status(self) -> dict[str, object]:
        return {
            "recorded": self.recorded,
            "stored": self.stored,
            "queued": self._queue.qsize(),
            "dropped": self.dropped,
            "failed": self.failed,
        }


class _ServiceAudit:
    """A service's view of the node recorder: only the kinds the service declared."""

    def __init__(self, inner: AuditRecorderLike, kinds: Iterable[str], service: str) -> None:
        from securemesh.audit.events import is_valid_kind  # noqa: PLC0415

        self._inner = inner
        self._service = service
        self.kinds = frozenset(kinds)
        for kind in self.kinds:
            if not is_valid_kind(kind):
                raise ConfigError(f"service {service}: audit kind {kind!r} is not namespaced")

    def record(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str | None:
        if kind not in self.kinds:
            raise LocalError(f"service {self._service} did not declare audit kind {kind!r}")
        return self._inner.record(
            kind, subject, outcome=outcome, details=details, event_id=event_id
        )

    def status(self) -> dict[str, object]:
        return self._inner.status()


# ------------------------------------------------------------------ statements

#: Domain of :meth:`NodeContext.sign_statement` signatures (no other signer uses it).
STATEMENT_DOMAIN: Final = b"securemesh/service/v1\0"


def statement_message(service: str, data: bytes) -> bytes:
    """What :meth:`NodeContext.sign_statement` signs: domain, service name, NUL, data."""
    if not _SERVICE_NAME.match(service):
        raise LocalError(f"not a service name: {service!r}")
    return STATEMENT_DOMAIN + service.encode() + b"\0" + data


def verify_statement(verify_key: bytes, service: str, data: bytes, signature: bytes) -> bytes:
    """Return ``data`` if ``signature`` is ``service``'s statement under ``verify_key``.

    ``verify_key`` is the signing node's certificate key (``Certificate.verify_key``).
    Raises :class:`~securemesh.errors.AuthenticationError` otherwise.
    """
    from securemesh.crypto.signing import verify_signature  # noqa: PLC0415

    verify_signature(verify_key, statement_message(service, data), signature)
    return data


# ------------------------------------------------------------------ the context


class CertificateView(Mapping[str, "Certificate"]):
    """A read-only view of the node's certificate directory (node id -> certificate).

    Only currently valid, unrevoked certificates are visible.
    """

    def __init__(self, directory: Directory, clock: Callable[[], float]) -> None:
        self._directory = directory
        self._clock = clock

    def __getitem__(self, node_id: str) -> Certificate:
        from securemesh.errors import CertificateError  # noqa: PLC0415

        try:
            return self._directory.lookup(node_id, now=self._clock()).cert
        except CertificateError as exc:
            raise KeyError(node_id) from exc

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self._directory.node_ids() if n in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, str):
            return False
        try:
            self[node_id]
        except KeyError:
            return False
        return True


class _Tasks:
    """The tasks one service spawned: tracked, cancelled on stop, crashes recorded."""

    def __init__(self, service: str) -> None:
        self._service = service
        self.tasks: set[asyncio.Task[Any]] = set()
        self.crashed: collections.deque[dict[str, str]] = collections.deque(maxlen=_MAX_CRASHES)
        self.crashes = 0
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
        if self.closed:
            coro.close()
            raise LocalError(f"service {self._service} is stopped: no new tasks")
        if len(self.tasks) >= MAX_TASKS_PER_SERVICE:
            coro.close()
            raise LocalError(f"service {self._service} runs {MAX_TASKS_PER_SERVICE} tasks")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._service}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.crashes += 1
        self.crashed.append({"task": task.get_name(), "error": f"{type(exc).__name__}: {exc}"})
        log.error(
            "service task crashed",
            extra={
                "event": "service_task_crashed",
                "service": self._service,
                "task": task.get_name(),
                "error": repr(exc),
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
            },
        )

    async def cancel_all(self) -> None:
        self.closed = True
        pending = list(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class NodeContext:
    """What a service gets from its node (:meth:`Service.install`)."""

    def __init__(
        self,
        node: MeshNode,
        *,
        name: str,
        audit: AuditRecorderLike,
        data_dir: Path | None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._node = node
        self.name = name
        #: Never None; records only the kinds the service declared.
        self.audit = audit
        self.clock = clock
        self.rng = rng
        self._data_dir = data_dir
        self._tasks = _Tasks(name)
        self.certificates = CertificateView(node.directory, clock)

    # facts
    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def tier(self) -> str:
        return self._node.tier.value

    @property
    def config(self) -> NodeConfig:
        """The node's configuration (frozen)."""
        return self._node.config

    @property
    def node(self) -> MeshNode:
        """The raw runtime (legacy ``register(node)`` services; prefer the methods here)."""
        return self._node

    @property
    def data_dir(self) -> Path:
        """``<node data_dir>/services/<name>``, created (mode 0700) on first use."""
        if self._data_dir is None:
            raise LocalError("this node has no data directory")
        self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._data_dir

    # messages
    def on(
        self,
        msg_type: str,
        handler: Handler | None,
        *,
        policy: Policy | None = None,
        relay_policy: Policy | None = None,
    ) -> None:
        """Handle (or only relay) ``msg_type``; policies narrow the operator's, never widen."""
        self._node.on(msg_type, handler, policy=policy, relay_policy=relay_policy)

    async def send(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        auth: Auth = "signed",
    ) -> None:
        """One-way message to node ``dest`` (see :meth:`MeshNode.send`)."""
        await self._node.send(dest, msg_type, body, frames, auth=auth)

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
        auth: Auth = "signed",
    ) -> VerifiedMessage:
        """A REQUEST to ``dest``; its verified REPLY (see :meth:`MeshNode.request`)."""
        return await self._node.request(dest, msg_type, body, frames, timeout=timeout, auth=auth)

    async def broadcast(
        self, msg_type: str, body: BaseModel | bytes, frames: Sequence[bytes | memoryview] = ()
    ) -> int:
        """A SIGNED broadcast to every child link (a cloud's or edge's); links reached."""
        return await self._node.broadcast(msg_type, body, frames)

    # tasks
    def spawn(self, coro: Coroutine[Any, Any, object], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this service (cancelled when the service stops)."""
        return self._tasks.spawn(coro, name)

    # statements
    def sign_statement(self, data: bytes) -> bytes:
        """Sign ``data`` with the node's identity key (Ed25519, RFC 8032), for this service.

        The signature is over ``statement_message(service, data)``, a domain
        (``securemesh/service/v1``) and the service's name before the data, so
        a service can never produce an envelope, audit-event or certificate
        signature, nor one that verifies for another service. Anyone holding the
        node's certificate checks it with :func:`verify_statement`
        (non-repudiable: task results are signed this way).
        """
        return self._node._signer.sign(statement_message(self.name, data))

    def unwrap_key(self, blob: bytes) -> bytes:
        """Open a sealed box (:func:`securemesh.crypto.boxes.wrap_key`) addressed to this node.

        For services that read data whose key was wrapped for this node's
        certificate ``kx_key`` (a stored object shared with a task's executor:
        :class:`securemesh.storage.StorageClient` takes this function as its
        key opener). The node's X25519 private key never leaves the runtime;
        AuthenticationError if the box was not sealed to it.
        """
        from securemesh.crypto import boxes  # noqa: PLC0415

        return boxes.unwrap_key(self._node._identity.kx_secret(), blob)

    # neighbours
    def peers(self) -> dict[str, NodeReport]:
        """Each neighbour's latest ``node.report`` (children that reported so far)."""
        from securemesh.messages import NodeReport  # noqa: PLC0415

        return {
            node_id: NodeReport.model_validate(report)
            for node_id, report in self._node.peer_reports().items()
        }


# --------------------------------------------------------------------- the host


class _Installed:
    __slots__ = ("ctx", "service", "state")

    def __init__(self, service: Service, ctx: NodeContext) -> None:
        self.service = service
        self.ctx = ctx
        self.state = "installed"


class ServiceHost:
    """Installs, starts, stops and reports the services of one node."""

    def __init__(
        self,
        node: MeshNode,
        *,
        audit: AuditRecorderLike,
        data_dir: Path | None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.node = node
        self.audit = audit
        self._data_dir = data_dir
        self._clock = clock
        self._rng = rng
        self._services: dict[str, _Installed] = {}

    def install(self, service: Service) -> NodeContext:
        name = service_name(service)
        if name in self._services:
            raise ConfigError(f"two services are called {name!r}")
        if len(self._services) >= MAX_SERVICES:
            raise ConfigError(f"more than {MAX_SERVICES} services")
        ctx = NodeContext(
            self.node,
            name=name,
            audit=_ServiceAudit(self.audit, service.audit_kinds, name),
            data_dir=None if self._data_dir is None else self._data_dir / "services" / name,
            clock=self._clock,
            rng=self._rng,
        )
        try:
            service.install(ctx)
        except ConfigError:
            raise
        except Exception as exc:  # a service's bug: one clear line, not a traceback
            raise ConfigError(f"service {name!r} failed to install: {exc!r}") from exc
        self._services[name] = _Installed(service, ctx)
        return ctx

    def names(self) -> list[str]:
        return list(self._services)

    def get(self, name: str) -> Service:
        return self._services[name].service

    async def start(self) -> None:
        """Start every service in installation order (one failing is logged and marked)."""
        for name, inst in self._services.items():
            try:
                await inst.service.start()
                inst.state = "running"
            except Exception as exc:
                inst.state = "failed"
                log.exception(
                    "service failed to start",
                    extra={"event": "service_start_failed", "service": name, "error": repr(exc)},
                )

    async def stop(self) -> None:
        """Stop every service in reverse order, then cancel the tasks it left running."""
        for name, inst in reversed(self._services.items()):
            if inst.state == "stopped":
                continue
            try:
                if inst.state == "running":
                    await inst.service.stop()
            except Exception as exc:
                log.exception(
                    "service failed to stop",
                    extra={"event": "service_stop_failed", "service": name, "error": repr(exc)},
                )
            finally:
                await inst.ctx._tasks.cancel_all()
                inst.state = "stopped"

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, inst in self._services.items():
            tasks = inst.ctx._tasks
            entry: dict[str, object] = {
                "state": inst.state,
                "tasks": len(tasks.tasks),
                "crashes": tasks.crashes,
                "crashed": list(tasks.crashed),
            }
            try:
                entry.update(inst.service.status())
            except Exception as exc:
                entry["status_error"] = repr(exc)
            out[name] = entry
        return out
