"""The in-memory twin of the ZeroMQ transport (same semantics, one asyncio loop).

Theory of operation
-------------------
A :class:`MemoryNetwork` is a registry of listeners by address
(``memory://name``; ``memory://*`` picks a fresh name, like binding port 0).
Each connection is a *link* with two bounded pipes (connection → listener and
back), each holding at most ``sndhwm + rcvhwm`` messages, mirroring the two
ZeroMQ high-water marks a message crosses. Admission mirrors CurveZMQ + ZAP:
the connector must name the listener's real public key, and the listener's
authenticator must admit the connector's key; otherwise the link is *dead*:
messages sent into it are never delivered and, once its pipe is full, ``send``
times out, exactly what a refused ZeroMQ DEALER sees.

Everything runs on the event loop that created the endpoints; nothing here is
thread-safe, which is fine for a test double.

Known differences from ZeroMQ, all on the "fail earlier" side: connecting to
an address nobody listens on raises TransportError at once (ZeroMQ would keep
retrying), and a closed listener's links never come back (no reconnect).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence

from securemesh.errors import PeerUnavailable, SendTimeout, TransportClosed, TransportError
from securemesh.transport._base import (
    Connection,
    CurveKeyPair,
    KeyAuthenticator,
    Listener,
    RejectHook,
    Transport,
    TransportOptions,
    TransportStats,
    check_outgoing,
    deny_all_keys,
)

__all__ = ["MemoryNetwork", "MemoryTransport"]

log = logging.getLogger(__name__)


def _call_hook(hook: RejectHook | None, key: bytes, exc: BaseException) -> None:
    """Run the rejection hook; its failure must never break admission."""
    if hook is None:
        return
    try:
        hook(key, exc)
    except Exception:
        log.exception("on_reject hook failed")


class _Pipe:
    """A bounded FIFO of messages with wake-ups for readers and writers."""

    __slots__ = ("capacity", "dead", "items", "readable", "writable")

    def __init__(self, capacity: int, readable: asyncio.Event, *, dead: bool = False) -> None:
        self.capacity = capacity
        self.items: deque[list[bytes]] = deque()
        self.readable = readable  # shared with the reader (fair queueing over pipes)
        self.writable = asyncio.Event()
        self.writable.set()
        self.dead = dead  # never delivered (refused authentication)

    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def push(self, frames: list[bytes]) -> None:
        self.items.append(frames)
        if self.full():
            self.writable.clear()
        if not self.dead:
            self.readable.set()

    def pop(self) -> list[bytes]:
        frames = self.items.popleft()
        self.writable.set()
        return frames


async def _push(
    pipe: _Pipe,
    frames: list[bytes],
    timeout: float,
    stats: TransportStats,
    is_closed: Callable[[], bool],
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pipe.full():
        remaining = deadline - loop.time()
        if remaining <= 0:
            stats.send_timeouts += 1
            raise SendTimeout("peer queue stayed full for the whole send timeout")
        try:
            await asyncio.wait_for(pipe.writable.wait(), remaining)
        except TimeoutError:
            continue
        if is_closed():
            raise TransportClosed("endpoint closed")
    pipe.push(frames)
    stats.sent += 1


class _Link:
    __slots__ = ("conn", "down", "peer", "up")

    def __init__(self, conn: MemoryConnection, peer: bytes, up: _Pipe, down: _Pipe) -> None:
        self.conn = conn
        self.peer = peer
        self.up = up  # connection -> listener
        self.down = down  # listener -> connection


class MemoryNetwork:
    """A namespace of in-memory listeners, shared by the transports of one test."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryListener] = {}
        self._names = itertools.count(1)

    def _bind(self, address: str, listener: MemoryListener) -> str:
        if not address.startswith("memory://") or len(address) <= len("memory://"):
            raise TransportError(f"memory addresses look like memory://name, got {address!r}")
        if address == "memory://*":
            address = f"memory://listener-{next(self._names)}"
        if address in self._listeners:
            raise TransportError(f"address in use: {address}")
        self._listeners[address] = listener
        return address

    def _unbind(self, address: str) -> None:
        self._listeners.pop(address, None)

    def _lookup(self, address: str) -> MemoryListener:
        try:
            return self._listeners[address]
        except KeyError:
            raise TransportError(f"nothing listens on {address}") from None


class MemoryListener(Listener):
    def __init__(self, transport: MemoryTransport, address: str) -> None:
        self._transport = transport
        self._local_key = transport.keypair.public
        self._address = address
        self._links: list[_Link] = []
        self._routes: dict[bytes, _Link] = {}
        self._verdicts: dict[bytes, bool] = {}  # as ZmqListener: re-checked per generation
        self._readable = asyncio.Event()
        self._rr = 0
        self._closed = False
        self.stats = TransportStats()

    def peers(self) -> frozenset[bytes]:
        return frozenset(k for k, link in self._routes.items() if not link.conn.closed)

    def _attach(self, conn: MemoryConnection, server_key: bytes) -> _Link:
        capacity = self._transport.options.sndhwm + self._transport.options.rcvhwm
        peer = conn.local_key
        admitted = server_key == self.local_key and self._transport._admit(peer, self.stats)
        up = _Pipe(capacity, self._readable, dead=not admitted or self._closed)
        down = _Pipe(capacity, conn._readable)
        link = _Link(conn, peer, up, down)
        if admitted and not self._closed:
            self._verdicts[peer] = True
            self._links.append(link)
        return link

    def _verdict(self, key: bytes) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._transport._admit(key, self.stats)
        return verdict

    def reauthenticate(self) -> list[bytes]:
        self._verdicts.clear()
        cut = [key for key in self._routes if not self._verdict(key)]
        for key in cut:
            del self._routes[key]
        return cut

    async def send(
        self, peer: bytes, frames: Sequence[bytes], *, timeout: float | None = None
    ) -> None:
        if self._closed:
            raise TransportClosed("listener closed")
        out = check_outgoing(frames, self._transport.options)
        link = self._routes.get(peer)
        if link is None or link.conn.closed:
            raise PeerUnavailable("no connection to that peer")
        # never waits, as ZmqListener: a full pipe to one peer drops the message
        if link.down.full():
            self.stats.send_timeouts += 1
            raise SendTimeout("the peer's queue is full: message dropped")
        link.down.push(out)
        self.stats.sent += 1

    def _poll(self) -> tuple[bytes, list[bytes]] | None:
        n = len(self._links)
        for i in range(n):
            link = self._links[(self._rr + i) % n]
            if link.up.items:
                self._rr = (self._rr + i + 1) % n
                frames = link.up.pop()
                if not self._verdict(link.peer):
                    self.stats.dropped_unauthenticated += 1
                    return None
                if len(frames) > self._transport.options.max_frames:
                    self.stats.dropped_malformed += 1
                    return None
                if not link.conn.closed:
                    self._routes[link.peer] = link
                self.stats.received += 1
                return link.peer, frames
        self._links = [lk for lk in self._links if not (lk.conn.closed and not lk.up.items)]
        self._readable.clear()
        raise LookupError

    def recv_nowait(self) -> tuple[bytes, list[bytes]] | None:
        while True:
            if self._closed:
                raise TransportClosed("listener closed")
            try:
                got = self._poll()
            except LookupError:
                return None
            if got is not None:
                return got

    async def recv(self, *, timeout: float | None = None) -> tuple[bytes, list[bytes]]:
        async with asyncio.timeout(timeout):
            while (got := self.recv_nowait()) is None:
                await self._readable.wait()  # cleared by _poll when it found nothing
            return got

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport.network._unbind(self._address)
        for link in self._links:
            link.up.items.clear()
            link.up.dead = True
            link.down.writable.set()  # wake our pending sends -> TransportClosed
        self._links.clear()
        self._routes.clear()
        self._readable.set()  # wake pending recv -> TransportClosed


class MemoryConnection(Connection):
    def __init__(self, transport: MemoryTransport, address: str, server_key: bytes) -> None:
        self._transport = transport
        self._local_key = transport.keypair.public
        self._address = address
        self._server_key = server_key
        self._readable = asyncio.Event()
        self._closed = False
        self.stats = TransportStats()
        self._link = transport.network._lookup(address)._attach(self, server_key)

    async def send(
        self, peer: bytes, frames: Sequence[bytes], *, timeout: float | None = None
    ) -> None:
        if self._closed:
            raise TransportClosed("connection closed")
        if peer != self._server_key:
            raise PeerUnavailable("a connection only reaches its server")
        out = check_outgoing(frames, self._transport.options)
        t = self._transport.options.send_timeout if timeout is None else timeout
        await _push(self._link.up, out, t, self.stats, lambda: self._closed)

    def recv_nowait(self) -> tuple[bytes, list[bytes]] | None:
        if self._closed:
            raise TransportClosed("connection closed")
        down = self._link.down
        if not down.items:
            return None
        frames = down.pop()
        self.stats.received += 1
        return self._server_key, frames

    async def recv(self, *, timeout: float | None = None) -> tuple[bytes, list[bytes]]:
        async with asyncio.timeout(timeout):
            while (got := self.recv_nowait()) is None:
                self._readable.clear()
                await self._readable.wait()
            return got

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._link.down.items.clear()
        self._link.up.writable.set()
        self._readable.set()


class MemoryTransport(Transport):
    """In-memory transport for tests; same API and semantics as ``ZmqTransport``."""

    def __init__(
        self,
        keypair: CurveKeyPair,
        *,
        network: MemoryNetwork,
        authenticator: KeyAuthenticator = deny_all_keys,
        options: TransportOptions | None = None,
        on_reject: RejectHook | None = None,
    ) -> None:
        self.keypair = keypair
        self.network = network
        self.authenticator = authenticator
        self.options = options if options is not None else TransportOptions()
        self.on_reject = on_reject
        self._endpoints: list[MemoryListener | MemoryConnection] = []

    def _admit(self, key: bytes, stats: TransportStats | None) -> bool:
        try:
            self.authenticator(key)
        except Exception as exc:  # any failure of the callback is a refusal
            if stats is not None:
                stats.rejected_keys += 1
                _call_hook(self.on_reject, key, exc)
            return False
        return True

    async def listen(self, address: str) -> MemoryListener:
        listener = MemoryListener(self, address)
        listener._address = self.network._bind(address, listener)
        self._endpoints.append(listener)
        return listener

    async def connect(self, address: str, server_key: bytes) -> MemoryConnection:
        conn = MemoryConnection(self, address, bytes(server_key))
        self._endpoints.append(conn)
        return conn

    async def close(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.close()
        self._endpoints.clear()
