"""Pre-authentication limits for a ZeroMQ listener: pending handshakes, rates, descriptors.

Theory of operation
-------------------
Before a client is authenticated, libzmq already spends memory on it: its
ZMTP decoder allocates every incoming frame at the size the frame header
announces, up to ``MAXMSGSIZE`` (``max_frame_size``), during the CURVE
handshake too (measured: one 16 MiB "HELLO" per connection took an edge from
72 to 863 MiB with 48 connections, issue 9 #5). libzmq has no accept hook and
no separate handshake size limit, so this guard acts from the listener's
socket monitor (``zmq_socket_monitor``, events ``ACCEPTED`` and
``DISCONNECTED``, whose value is the connection's file descriptor):

* a connection is **pending** from ``ACCEPTED`` until the ZAP handler sees
  its address (ZAP runs when the client's INITIATE arrives, i.e. after the
  last handshake command a client sends: RFC 26), it disconnects, or
  ``handshake_timeout`` passed (libzmq's ``HANDSHAKE_IVL`` closes it then);
* a new connection is **refused** — ``shutdown(2)`` on its descriptor, so
  libzmq sees end-of-stream and closes it (the descriptor stays libzmq's) —
  when its address already has ``max_pending_per_address`` pending, when
  ``max_pending_handshakes`` are pending in all, when its address has no
  token left in its bucket (``accept_burst`` connections, refilled at
  ``accept_rate`` per second), or when its descriptor number is within
  ``fd_reserve`` of ``RLIMIT_NOFILE`` (descriptors are allocated lowest
  first, so a high one means the process is near the limit: the daemon must
  keep descriptors for its own files; logged at most once per ``log_window``).
  The monitor is asynchronous: libzmq accepts a burst of connections before
  the guard sees them, so a burst larger than ``fd_reserve`` can still touch
  the limit for a moment, until the guard has shut the excess down.

So pre-authentication memory is bounded by about ``max_pending_handshakes x
max_frame_size`` (plus what a client can send in the instant before its
refusal, the monitor being asynchronous), whatever the number of
connections. Monitor events are handled in batches: a descriptor whose
``DISCONNECTED`` is in the same batch is never touched (it may be reused).
Refusals are counted (``refused_connections`` by reason) and logged at most
once per ``log_window`` per (address, reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

import zmq
import zmq.asyncio

from securemesh.transport._base import TransportOptions, TransportStats

__all__ = ["AcceptGuard"]

log = logging.getLogger("securemesh.transport")

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_MAX_ADDRESSES = 4096  # token buckets and log states kept (LRU)
_EVENT = struct.Struct("=HI")  # a v1 monitor event's first frame: event id, value


def _parse(message: list[bytes]) -> tuple[int, int]:
    """``(event, value)`` of a monitor message (``zmq_socket_monitor``, v1 format)."""
    event, value = _EVENT.unpack_from(message[0])
    return int(event), int(value)


def _peer_address(fd: int) -> str | None:
    """The peer IP of the TCP connection on ``fd`` (None: not a connected TCP socket)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # already closed
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()  # the descriptor is libzmq's
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


def _refuse(fd: int) -> None:
    """End the connection on ``fd`` without closing libzmq's descriptor."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # already closed
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()


def open_file_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class AcceptGuard:
    """Refuses connections to one listener before authentication (see the module doc)."""

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        options: TransportOptions,
        *,
        register: Callable[[zmq.asyncio.Socket], None],
        stats: TransportStats,
        clock: Callable[[], float] = time.monotonic,
        max_open_files: int | None = None,
    ) -> None:
        self._opts = options
        self._clock = clock
        self._fd_ceiling = (
            max_open_files if max_open_files is not None else open_file_limit()
        ) - options.fd_reserve
        self._pending: dict[int, tuple[str, float]] = {}  # fd -> (address, accepted at)
        self._by_address: dict[str, deque[int]] = {}
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # [tokens, at]
        self._logged: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._near_fd_limit = False
        self._fd_warned: float | None = None
        self.refused: Counter[str] = Counter()
        self._stats = stats
        self._sock = sock
        self._monitor = sock.get_monitor_socket(_EVENTS)
        register(self._monitor)
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._pending)

    def snapshot(self) -> dict[str, object]:
        return {
            "pending_handshakes": len(self._pending),
            "refused_connections": dict(sorted(self.refused.items())),
            "near_fd_limit": self._near_fd_limit,
        }

    async def _run(self) -> None:
        monitor = self._monitor
        while True:
            try:
                batch = [await monitor.recv_multipart()]
                while True:  # what else is queued: see "batches" in the module doc
                    try:
                        batch.append(await monitor.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                self._handle([_parse(m) for m in batch])
            except Exception:  # never let a bad event end the guard
                log.exception("accept guard failed on a monitor event")

    def _handle(self, events: list[tuple[int, int]]) -> None:
        now = self._clock()
        self._expire(now)
        gone_later: dict[int, int] = {}  # fd -> index of its last DISCONNECTED
        for i, (event, fd) in enumerate(events):
            if event == zmq.EVENT_DISCONNECTED:
                gone_later[fd] = i
        for i, (event, fd) in enumerate(events):
            if event == zmq.EVENT_DISCONNECTED:
                self._forget(fd)
            elif event == zmq.EVENT_ACCEPTED and gone_later.get(fd, -1) < i:
                self._accepted(fd, now)

    def _accepted(self, fd: int, now: float) -> None:
        if fd >= self._fd_ceiling:
            if not self._near_fd_limit:
                self._near_fd_limit = True
                last = self._fd_warned
                if last is None or now - last >= self._opts.log_window:
                    self._fd_warned = now
                    log.warning(
                        "refusing new connections: open files near the limit",
                        extra={"event": "fd_limit", "fd": fd, "ceiling": self._fd_ceiling},
                    )
            self._refuse(fd, "", "fd_limit", now)
            return
        # hysteresis: a descriptor freed for a moment does not end the episode
        if self._near_fd_limit and fd < self._fd_ceiling - self._opts.fd_reserve // 2:
            self._near_fd_limit = False
            log.info("accepting connections again", extra={"event": "fd_limit_cleared"})
        address = _peer_address(fd)
        if address is None:
            return  # not a TCP connection (ipc://) or already gone
        opts = self._opts
        queue = self._by_address.get(address)
        if queue is not None and len(queue) >= opts.max_pending_per_address:
            self._refuse(fd, address, "pending_per_address", now)
        elif len(self._pending) >= opts.max_pending_handshakes:
            self._refuse(fd, address, "pending_handshakes", now)
        elif not self._take_token(address, now):
            self._refuse(fd, address, "accept_rate", now)
        else:
            self._pending[fd] = (address, now)
            self._by_address.setdefault(address, deque()).append(fd)

    def _take_token(self, address: str, now: float) -> bool:
        opts = self._opts
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = [float(opts.accept_burst), now]
            while len(self._buckets) > _MAX_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
            refill = (now - bucket[1]) * opts.accept_rate
            bucket[0] = min(float(opts.accept_burst), bucket[0] + refill)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _refuse(self, fd: int, address: str, reason: str, now: float) -> None:
        _refuse(fd)
        self.refused[reason] += 1
        self._stats.refused_connections += 1
        key = (address, reason)
        state = self._logged.get(key)
        if state is not None and now - state[0] < self._opts.log_window:
            state[1] += 1
            return
        suppressed = 0 if state is None else int(state[1])
        self._logged[key] = [now, 0.0]
        self._logged.move_to_end(key)
        while len(self._logged) > _MAX_ADDRESSES:
            self._logged.popitem(last=False)
        if reason != "fd_limit":  # said once per episode above
            log.warning(
                "connection refused before authentication",
                extra={
                    "event": "connection_refused",
                    "reason": reason,
                    "address": address,
                    "suppressed": suppressed,
                },
            )

    def _forget(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is None:
            return
        queue = self._by_address.get(entry[0])
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(fd)
            if not queue:
                del self._by_address[entry[0]]

    def _expire(self, now: float) -> None:
        limit = now - self._opts.handshake_timeout
        for fd in [fd for fd, (_, at) in self._pending.items() if at < limit]:
            self._forget(fd)

    def handshake_done(self, address: str) -> None:
        """The ZAP handler saw a client at ``address``: its oldest pending connection is
        past the handshake commands a client sends."""
        queue = self._by_address.get(address)
        if queue:
            self._forget(queue[0])

    def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(linger=0)
