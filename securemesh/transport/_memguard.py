"""A listener's memory guard: cut its connections when the process grows past a budget.

Theory of operation
-------------------
libzmq 4.3.5 bounds each *frame* (``MAXMSGSIZE``) but not the number of
frames of a message, and keeps an unfinished multipart message inside the
connection's pipe, invisible to the application (the pipe is flushed only
when the last frame arrives). No socket option bounds that whole message, so
an admitted peer can make the process hold any number of
``max_frame_size`` frames while it sends them (issue 9 #4: 40 x 15 MiB took
an edge from 72 to 701 MiB). What the application *can* see is the process's
resident memory, and what it can do is end connections: when a connection's
TCP stream ends, libzmq's session rolls the pipe's unfinished message back
and its engine frees the frame it was decoding (``session_base_t::
clean_pipes``, ``pipe_t::rollback``). Honest DEALERs reconnect by themselves
(``RECONNECT_IVL``).

So the guard, one per listener when ``memory_budget`` is set (Linux only: it
reads ``/proc/self/statm``; elsewhere it stays off and says so once):

1. samples the resident set every ``memory_check_interval`` seconds on the
   event loop and compares it with the baseline taken when the listener
   started;
2. past ``memory_budget`` bytes of growth it **trips**: it ends every TCP
   connection whose local port is the listener's (``shutdown(2)`` on the
   descriptors found in ``/proc/self/fd``; they stay libzmq's), waits
   ``_SETTLE`` seconds *blocking the loop* — on purpose: the ZAP handler runs
   on this loop, so no connection can be admitted again meanwhile and the
   measurement below sees no new sender — lets the socket process its
   commands, and returns freed memory to the system (glibc ``malloc_trim``;
   libzmq's I/O thread has its own malloc arena, whose freed pages glibc
   would otherwise keep);
3. measures again. If the growth is still over half the budget, it was not
   held by connections (the process grew for other reasons: caches, a
   service): cutting connections cannot help, so the baseline moves up to
   the current size and this is logged (``memory_guard_rebaselined``).
   Otherwise the baseline stays: the bound is on growth since start.

Each trip is counted (``memory_trips``, ``memory_cut_connections`` in the
listener's stats), logged at most once per ``log_window`` with the number
suppressed since, and passed to the transport's ``on_memory_trip`` hook (the
node records it as a ``memory_guard`` drop: counted, logged and audited,
rate-limited). The cost to honest peers is a reconnect (about
``RECONNECT_IVL`` plus a CURVE handshake) per trip, and the messages they had
in flight. The guard acts after the fact: between two samples a fast sender
adds at most what loopback/TCP and libzmq's CURVE decoding deliver in
``memory_check_interval`` (tens of MiB at 20 ms), which the budget must leave
room for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import sys
import time
from collections.abc import Callable

from securemesh.transport._base import TransportOptions, TransportStats

__all__ = ["MemoryGuard", "cut_connections", "resident_bytes"]

log = logging.getLogger("securemesh.transport")

#: Seconds the trip waits (blocking the loop) for libzmq's I/O thread to free.
_SETTLE = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size, or None where ``/proc`` does not have it."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def cut_connections(port: int) -> int:
    """End every connected TCP socket of this process whose local port is ``port``.

    ``shutdown(2)`` only: the descriptors stay libzmq's, which sees the end of
    the stream and closes them. The listening socket itself (not connected)
    is left alone. Returns how many were cut.
    """
    cut = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in names:
        try:
            fd = int(name)
            sock = socket.socket(fileno=fd)
        except (ValueError, OSError):  # not a socket, or gone
            continue
        try:
            local = sock.getsockname()
            if not isinstance(local, tuple) or len(local) < 2 or local[1] != port:
                continue
            sock.getpeername()  # raises for the listening socket
            sock.shutdown(socket.SHUT_RDWR)
            cut += 1
        except OSError:
            continue
        finally:
            sock.detach()
    return cut


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> None:
        trim(0)

    return run


class MemoryGuard:
    """Watches the process's RSS for one listener (see the module doc)."""

    def __init__(
        self,
        port: int,
        options: TransportOptions,
        *,
        stats: TransportStats,
        process_commands: Callable[[], None],
        on_trip: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rss: Callable[[], int | None] = resident_bytes,
    ) -> None:
        self._port = port
        self._budget = options.memory_budget
        self._interval = options.memory_check_interval
        self._log_window = options.log_window
        self._stats = stats
        self._process_commands = process_commands
        self._on_trip = on_trip
        self._clock = clock
        self._rss = rss
        self._trim = _malloc_trim()
        self._logged_at: float | None = None
        self._suppressed = 0
        start = rss()
        self.baseline = start
        self._task: asyncio.Task[None] | None = None
        if start is None:
            log.warning(
                "memory guard off: this system has no /proc/self/statm",
                extra={"event": "memory_guard_off"},
            )
        else:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.sleep(self._interval)
                self.check()
            except asyncio.CancelledError:
                return
            except Exception:  # never let a failed check end the guard
                log.exception("memory guard check failed")

    def check(self) -> bool:
        """One sample; trip if over budget. True if it tripped."""
        now_rss = self._rss()
        if now_rss is None or self.baseline is None:
            return False
        if now_rss - self.baseline <= self._budget:
            return False
        self._trip(now_rss)
        return True

    def _trip(self, before: int) -> None:
        assert self.baseline is not None
        cut = cut_connections(self._port)
        time.sleep(_SETTLE)  # blocking on purpose: no ZAP answer, no new sender (module doc)
        with contextlib.suppress(Exception):
            self._process_commands()
        self._trim()
        after = self._rss() or before
        stats = self._stats
        stats.memory_trips += 1
        stats.memory_cut_connections += cut
        if self._on_trip is not None:
            try:
                self._on_trip(cut)  # the node counts and audits it (rate-limited)
            except Exception:
                log.exception("memory guard hook failed")
        rebaselined = after - self.baseline > self._budget // 2
        if rebaselined:
            self.baseline = after
        now = self._clock()
        if rebaselined or self._logged_at is None or now - self._logged_at >= self._log_window:
            log.warning(
                "memory budget exceeded: cut the listener's connections"
                if not rebaselined
                else "memory growth not held by connections: memory guard re-baselined",
                extra={
                    "event": "memory_guard_rebaselined" if rebaselined else "memory_guard",
                    "cut_connections": cut,
                    "rss_before": before,
                    "rss_after": after,
                    "baseline": self.baseline,
                    "suppressed": self._suppressed,
                },
            )
            self._logged_at = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
