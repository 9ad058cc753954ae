"""One conformance suite for every transport (trio ``testing/_check_streams.py`` style).

Each test is a plain function taking a ``kit`` (how to make transports of one
kind) and is parametrized over the in-memory twin and ZeroMQ over real
loopback TCP sockets. Tests run their coroutine with ``asyncio.run`` and never
sleep to synchronise: they wait on messages, events or polls with timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from securemesh.errors import (
    LocalError,
    PeerUnavailable,
    SendTimeout,
    TransportClosed,
    TransportError,
)
from securemesh.transport import (
    AllowKeys,
    Connection,
    CurveKeyPair,
    KeyAuthenticator,
    Listener,
    MemoryNetwork,
    MemoryTransport,
    Transport,
    TransportOptions,
    ZmqTransport,
    deny_all_keys,
)

TEST_TIMEOUT = 30.0
WAIT = 5.0  # upper bound for anything that should happen "soon"


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(bounded())


@dataclass
class Kit:
    """Makes transports of one kind; ``bind`` is a listen address with a free port."""

    name: str
    bind: str
    factory: Callable[..., Transport]

    def make(
        self,
        keypair: CurveKeyPair,
        authenticator: KeyAuthenticator = deny_all_keys,
        options: TransportOptions | None = None,
        on_reject: Callable[[bytes, BaseException], None] | None = None,
    ) -> Transport:
        return self.factory(
            keypair, authenticator=authenticator, options=options, on_reject=on_reject
        )


def _memory_kit() -> Kit:
    network = MemoryNetwork()

    def factory(keypair: CurveKeyPair, **kw: Any) -> Transport:
        return MemoryTransport(keypair, network=network, **kw)

    return Kit("memory", "memory://*", factory)


def _zmq_kit() -> Kit:
    def factory(keypair: CurveKeyPair, **kw: Any) -> Transport:
        return ZmqTransport(keypair, **kw)

    return Kit("zmq", "tcp://127.0.0.1:0", factory)


@pytest.fixture(params=["memory", "zmq"])
def kit(request: pytest.FixtureRequest) -> Kit:
    return _memory_kit() if request.param == "memory" else _zmq_kit()


@dataclass
class Mesh:
    """A listener and some admitted connections, all closed on exit."""

    kit: Kit
    server_keys: CurveKeyPair
    server: Transport
    listener: Listener
    allowed: AllowKeys
    clients: list[tuple[CurveKeyPair, Transport, Connection]] = field(default_factory=list)
    rejected: list[bytes] = field(default_factory=list)
    rejected_event: asyncio.Event = field(default_factory=asyncio.Event)
    admitted: list[bytes] = field(default_factory=list)

    async def add_client(
        self,
        *,
        admitted: bool = True,
        options: TransportOptions | None = None,
        server_key: bytes | None = None,
    ) -> Connection:
        keys = CurveKeyPair.generate()
        if admitted:
            self.allowed.add(keys.public)
        transport = self.kit.make(keys, options=options)
        conn = await transport.connect(
            self.listener.address, server_key if server_key is not None else self.server_keys.public
        )
        self.clients.append((keys, transport, conn))
        return conn


@contextlib.asynccontextmanager
async def mesh(kit: Kit, options: TransportOptions | None = None) -> AsyncIterator[Mesh]:
    keys = CurveKeyPair.generate()
    allowed = AllowKeys()
    holder: list[Mesh] = []

    def on_reject(key: bytes, exc: BaseException) -> None:
        holder[0].rejected.append(key)
        holder[0].rejected_event.set()

    def authenticator(key: bytes) -> None:
        allowed(key)
        holder[0].admitted.append(key)  # records every admission the transport made

    server = kit.make(keys, authenticator=authenticator, options=options, on_reject=on_reject)
    listener = await server.listen(kit.bind)
    m = Mesh(kit, keys, server, listener, allowed)
    holder.append(m)
    try:
        yield m
    finally:
        for _, transport, _ in m.clients:
            await transport.close()
        await server.close()


async def hello(conn: Connection, listener: Listener, tag: bytes = b"hello") -> bytes:
    """Make ``conn`` known to ``listener``; return the peer key the listener saw."""
    await conn.send(conn.server_key, [tag])
    peer, frames = await listener.recv(timeout=WAIT)
    assert frames == [tag]
    return peer


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll an async predicate with a deadline (for effects with no event to wait on)."""
    async with asyncio.timeout(timeout):
        delay = 0.001
        while not await predicate():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


# ------------------------------------------------------------------- basics


def test_round_trip_and_peer_identity(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            client_key = m.clients[0][0].public
            await conn.send(m.server_keys.public, [b"hello", b"", b"world"])
            peer, frames = await m.listener.recv(timeout=WAIT)
            assert peer == client_key  # the authenticated CURVE key, not a claim
            assert frames == [b"hello", b"", b"world"]
            assert m.listener.peers() == frozenset({client_key})
            await m.listener.send(peer, [b"reply"])
            server, frames = await conn.recv(timeout=WAIT)
            assert server == m.server_keys.public
            assert frames == [b"reply"]
            assert m.listener.local_key == m.server_keys.public
            assert conn.local_key == client_key
            assert m.listener.stats.received == 1
            assert conn.stats.sent == 1

    run(main())


def test_many_peers_are_told_apart(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conns = [await m.add_client() for _ in range(6)]
            for i, conn in enumerate(conns):
                await conn.send(conn.server_key, [b"from", str(i).encode()])
            seen: dict[bytes, bytes] = {}
            for _ in conns:
                peer, frames = await m.listener.recv(timeout=WAIT)
                seen[peer] = frames[1]
            expected = {keys.public: str(i).encode() for i, (keys, _, _) in enumerate(m.clients)}
            assert seen == expected
            for peer, tag in seen.items():
                await m.listener.send(peer, [b"to", tag])
            for i, conn in enumerate(conns):
                _, frames = await conn.recv(timeout=WAIT)
                assert frames == [b"to", str(i).encode()]

    run(main())


def test_ordering_per_peer(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            a = await m.add_client()
            b = await m.add_client()
            n = 300
            for i in range(n):
                await a.send(a.server_key, [b"a", i.to_bytes(4, "big")])
                await b.send(b.server_key, [b"b", i.to_bytes(4, "big")])
            got: dict[bytes, list[int]] = {b"a": [], b"b": []}
            for _ in range(2 * n):
                _, frames = await m.listener.recv(timeout=WAIT)
                got[frames[0]].append(int.from_bytes(frames[1], "big"))
            assert got[b"a"] == list(range(n))
            assert got[b"b"] == list(range(n))
            peer_a = m.clients[0][0].public
            for i in range(n):
                await m.listener.send(peer_a, [i.to_bytes(4, "big")])
            back = [int.from_bytes((await a.recv(timeout=WAIT))[1][0], "big") for _ in range(n)]
            assert back == list(range(n))

    run(main())


def test_bursts_of_mixed_messages_arrive_whole_and_in_order(kit: Kit) -> None:
    """A burst sent without yielding (ZeroMQ: batched) keeps order and every frame,
    also across large messages, which leave on their own, and multi-frame ones."""

    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            sent = []
            for i in range(500):
                tag = i.to_bytes(4, "big")
                if i % 50 == 7:
                    frames = [tag, bytes([i % 256]) * 40_000]  # larger than a batch item
                elif i % 3 == 0:
                    frames = [tag, b"", b"x" * (i % 17), b"\x00"]  # empty middle frame
                else:
                    frames = [tag, b"body" * (i % 300)]
                sent.append(frames)
                await conn.send(conn.server_key, frames)
            got = [(await m.listener.recv(timeout=WAIT))[1] for _ in sent]
            assert got == sent
            assert m.listener.stats.received == len(sent)

    run(main())


def test_recv_nowait_takes_only_what_is_already_here(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            peer = await hello(conn, m.listener)
            assert m.listener.recv_nowait() is None
            assert conn.recv_nowait() is None
            for i in range(3):
                await conn.send(conn.server_key, [b"n", bytes([i])])
            await m.listener.send(peer, [b"down"])
            got: list[tuple[bytes, list[bytes]]] = []

            async def three_here() -> bool:
                item = m.listener.recv_nowait()
                if item is not None:
                    got.append(item)
                return len(got) == 3

            await until(three_here)
            assert got == [(peer, [b"n", bytes([i])]) for i in range(3)]
            assert m.listener.recv_nowait() is None

            async def down_here() -> bool:
                item = conn.recv_nowait()
                if item is not None:
                    got.append(item)
                return len(got) == 4

            await until(down_here)
            assert got[-1] == (conn.server_key, [b"down"])
            await conn.close()
            with pytest.raises(TransportClosed):
                conn.recv_nowait()

    run(main())


def test_an_empty_first_frame_is_reserved(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            peer = await hello(conn, m.listener)
            with pytest.raises(TransportError, match="reserved"):
                await conn.send(conn.server_key, [b"", b"x"])
            with pytest.raises(TransportError, match="reserved"):
                await m.listener.send(peer, [b""])
            await conn.send(conn.server_key, [b"after"])
            assert (await m.listener.recv(timeout=WAIT))[1] == [b"after"]

    run(main())


def test_sending_while_a_receive_is_pending(kit: Kit) -> None:
    """Request/reply with a reader task always parked in recv (the SDK's shape).

    A send on the same socket must never swallow the wake-up the parked
    receive waits for (ZeroMQ's FD is edge-triggered).
    """

    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            replies: asyncio.Queue[bytes] = asyncio.Queue()

            async def reader() -> None:
                while True:
                    _, frames = await conn.recv()
                    await replies.put(frames[0])

            async def server() -> None:
                while True:
                    peer, frames = await m.listener.recv()
                    await m.listener.send(peer, frames)

            tasks = [asyncio.ensure_future(reader()), asyncio.ensure_future(server())]
            try:
                for i in range(300):
                    await asyncio.sleep(0)  # let the reader park in recv first
                    await conn.send(conn.server_key, [str(i).encode()])
                    assert await asyncio.wait_for(replies.get(), WAIT) == str(i).encode()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(main())


def test_timeouts_and_cancellation_never_lose_messages(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            n = 1000

            async def produce() -> None:
                for i in range(n):
                    await conn.send(conn.server_key, [i.to_bytes(4, "big")])
                    if i % 7 == 0:
                        await asyncio.sleep(0)

            producer = asyncio.ensure_future(produce())
            got: list[int] = []
            async with asyncio.timeout(WAIT * 2):
                while len(got) < n:
                    try:
                        _, frames = await m.listener.recv(timeout=0.0002)
                    except TimeoutError:
                        # Also cancel a receive from outside now and then.
                        task = asyncio.ensure_future(m.listener.recv())
                        await asyncio.sleep(0)
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            _, frames = await task
                            got.append(int.from_bytes(frames[0], "big"))
                        continue
                    got.append(int.from_bytes(frames[0], "big"))
            await producer
            assert got == list(range(n))

    run(main())


def test_large_frames_and_local_limits(kit: Kit) -> None:
    options = TransportOptions(max_frame_size=8 * 1024 * 1024, max_frames=4)

    async def main() -> None:
        async with mesh(kit, options) as m:
            conn = await m.add_client(options=options)
            big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
            await conn.send(conn.server_key, [b"big", big])
            peer, frames = await m.listener.recv(timeout=WAIT)
            assert frames == [b"big", big]
            await m.listener.send(peer, [big])
            assert (await conn.recv(timeout=WAIT))[1] == [big]
            with pytest.raises(TransportError):
                await conn.send(conn.server_key, [bytes(8 * 1024 * 1024 + 1)])
            with pytest.raises(TransportError):
                await conn.send(conn.server_key, [b"x"] * 5)
            with pytest.raises(TransportError):
                await conn.send(conn.server_key, [])

    run(main())


def test_addressing_errors(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            with pytest.raises(PeerUnavailable):  # not heard from yet
                await m.listener.send(m.clients[0][0].public, [b"x"])
            with pytest.raises(PeerUnavailable):
                await m.listener.send(CurveKeyPair.generate().public, [b"x"])
            with pytest.raises(PeerUnavailable):  # a connection reaches only its server
                await conn.send(CurveKeyPair.generate().public, [b"x"])

    run(main())


def test_recv_timeout(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.05)
            with pytest.raises(TimeoutError):
                await conn.recv(timeout=0.05)
            # Still usable after a timeout.
            assert await hello(conn, m.listener) == m.clients[0][0].public

    run(main())


# -------------------------------------------------------------------- close


def test_close_semantics(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            conn = await m.add_client()
            peer = await hello(conn, m.listener)
            pending_listener = asyncio.ensure_future(m.listener.recv())
            pending_conn = asyncio.ensure_future(conn.recv())
            await asyncio.sleep(0)  # let both start waiting (scheduling, not synchronisation)
            await m.listener.close()
            await conn.close()
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(pending_listener, WAIT)
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(pending_conn, WAIT)
            for endpoint in (m.listener, conn):
                assert endpoint.closed
                with pytest.raises(TransportClosed):
                    await endpoint.recv(timeout=0.01)
                await endpoint.close()  # idempotent
            with pytest.raises(TransportClosed):
                await m.listener.send(peer, [b"x"])
            with pytest.raises(TransportClosed):
                await conn.send(conn.server_key, [b"x"])
            await m.server.close()
            await m.server.close()

    run(main())


def test_listener_notices_a_departed_peer(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            leaving = await m.add_client()
            staying = await m.add_client()
            gone = await hello(leaving, m.listener, b"a")
            kept = await hello(staying, m.listener, b"b")
            await leaving.close()

            async def refused() -> bool:
                try:
                    await m.listener.send(gone, [b"x"], timeout=0.01)
                except PeerUnavailable:
                    return True
                return False

            await until(refused)
            await m.listener.send(kept, [b"still here"])
            assert (await staying.recv(timeout=WAIT))[1] == [b"still here"]

    run(main())


# ------------------------------------------------------------ back-pressure


async def fill(sender: Listener | Connection, dest: bytes, frame: bytes, *, limit: int) -> int:
    """Send numbered messages until one times out; return how many were queued."""
    for sent in range(limit):
        try:
            await sender.send(dest, [sent.to_bytes(4, "big"), frame], timeout=0.05)
        except SendTimeout:
            return sent
    return limit


@pytest.mark.parametrize("direction", ["to_listener", "to_connection"])
def test_bounded_queues_and_send_timeout(kit: Kit, direction: str) -> None:
    options = TransportOptions(sndhwm=4, rcvhwm=4)
    frame = bytes(64 * 1024)

    async def main() -> None:
        async with mesh(kit, options) as m:
            conn = await m.add_client(options=options)
            peer = await hello(conn, m.listener)
            if direction == "to_listener":
                sender, receiver, dest = conn, m.listener, conn.server_key
            else:
                sender, receiver, dest = m.listener, conn, peer
            sent = await fill(sender, dest, frame, limit=5000)
            # a connection waits for room in both high-water marks; a listener never
            # waits (its peer's pipe is the bound): at least its SNDHWM goes
            least = 8 if direction == "to_listener" else 4
            assert least <= sent < 5000, "the queue must fill, and must be bounded"
            assert sender.stats.send_timeouts == 1
            # Nothing was lost or reordered; the timed-out message was not queued.
            for i in range(sent):
                _, frames = await receiver.recv(timeout=WAIT)
                assert int.from_bytes(frames[0], "big") == i
            with pytest.raises(TimeoutError):
                await receiver.recv(timeout=0.05)
            await sender.send(dest, [b"after"], timeout=WAIT)
            assert (await receiver.recv(timeout=WAIT))[1] == [b"after"]

    run(main())


def test_a_listener_never_waits_for_a_peer_that_does_not_read(kit: Kit) -> None:
    """Issue 9 #3: a full queue toward one peer drops at once; others are served."""
    options = TransportOptions(sndhwm=4, rcvhwm=4)
    frame = bytes(64 * 1024)

    async def main() -> None:
        async with mesh(kit, options) as m:
            stalled = await m.add_client(options=options)
            reader = await m.add_client(options=options)
            stalled_key = await hello(stalled, m.listener, b"s")
            reader_key = await hello(reader, m.listener, b"r")
            loop = asyncio.get_running_loop()
            dropped = 0
            start = loop.time()
            for i in range(2000):  # the stalled peer never reads
                try:
                    await m.listener.send(stalled_key, [i.to_bytes(4, "big"), frame], timeout=WAIT)
                except SendTimeout:
                    dropped += 1
                    if dropped >= 20:
                        break
            assert dropped >= 20, "a peer that never reads must not absorb without bound"
            assert loop.time() - start < WAIT, "a full peer queue must not make send wait"
            assert m.listener.stats.send_timeouts == dropped
            await m.listener.send(reader_key, [b"for the reader"], timeout=WAIT)
            assert (await reader.recv(timeout=WAIT))[1] == [b"for the reader"]
            # what was queued for the stalled peer arrives whole and in order
            last = -1
            while True:
                try:
                    _, frames = await stalled.recv(timeout=0.5)
                except TimeoutError:
                    break
                number = int.from_bytes(frames[0], "big")
                assert number > last
                last = number
            assert last >= 3

    run(main())


def test_a_send_waiting_for_room_fails_when_its_connection_closes(kit: Kit) -> None:
    options = TransportOptions(sndhwm=4, rcvhwm=4)

    async def main() -> None:
        async with mesh(kit, options) as m:
            conn = await m.add_client(options=options)
            await hello(conn, m.listener)
            frame = bytes(64 * 1024)
            await fill(conn, conn.server_key, frame, limit=5000)
            for _ in range(1000):  # ZeroMQ's I/O thread may still drain a little: until one waits
                waiting = asyncio.ensure_future(conn.send(conn.server_key, [frame], timeout=WAIT))
                await asyncio.sleep(0.01)
                if not waiting.done():
                    break
                waiting.result()
            assert not waiting.done()
            await conn.close()
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(waiting, WAIT)

    run(main())


def test_a_flooding_peer_does_not_starve_others(kit: Kit) -> None:
    """Fair queueing: while one peer floods without pause, another is still heard."""
    options = TransportOptions(sndhwm=4, rcvhwm=4)
    frame = bytes(64 * 1024)

    async def main() -> None:
        async with mesh(kit, options) as m:
            flooder = await m.add_client(options=options)
            quiet = await m.add_client(options=options)
            await hello(flooder, m.listener, b"f")
            quiet_key = await hello(quiet, m.listener, b"q")
            stop = asyncio.Event()

            async def flood() -> None:
                while not stop.is_set():
                    with contextlib.suppress(SendTimeout):
                        await flooder.send(flooder.server_key, [b"flood", frame], timeout=0.01)
                    await asyncio.sleep(0)

            task = asyncio.ensure_future(flood())
            try:
                # Let the flood fill every queue before the quiet peer speaks.
                async def flood_is_blocked() -> bool:
                    return flooder.stats.send_timeouts >= 1

                await until(flood_is_blocked)
                await quiet.send(quiet.server_key, [b"quiet"])
                reads = 0
                while True:
                    peer, frames = await m.listener.recv(timeout=WAIT)
                    reads += 1
                    if peer == quiet_key:
                        break
                    assert reads < 2000, "the quiet peer is starved"
                assert frames == [b"quiet"]
            finally:
                stop.set()
                await task

    run(main())


# ---------------------------------------------------------- authentication


def test_unadmitted_key_is_never_delivered_and_others_are_served(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            intruder = await m.add_client(admitted=False)
            good = await m.add_client()
            intruder_key = m.clients[0][0].public
            # The intruder's send may queue (bounded) but is never delivered.
            with contextlib.suppress(SendTimeout):
                await intruder.send(intruder.server_key, [b"let me in"], timeout=0.5)
            await asyncio.wait_for(m.rejected_event.wait(), WAIT)
            assert intruder_key in m.rejected
            assert m.listener.stats.rejected_keys >= 1
            assert await hello(good, m.listener, b"good") == m.clients[1][0].public
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.2)
            assert intruder_key not in m.listener.peers()

    run(main())


def test_a_failing_reject_hook_does_not_break_admission(kit: Kit) -> None:
    async def main() -> None:
        server_keys, good_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        calls: list[bytes] = []

        def broken_hook(key: bytes, exc: BaseException) -> None:
            calls.append(key)
            raise RuntimeError("audit sink down")

        server = kit.make(server_keys, AllowKeys([good_keys.public]), on_reject=broken_hook)
        intruder_t = kit.make(CurveKeyPair.generate())
        good_t = kit.make(good_keys)
        try:
            listener = await server.listen(kit.bind)
            for attempt in (1, 2):  # the hook fails on each refusal; admission goes on
                intruder = await intruder_t.connect(listener.address, server_keys.public)
                with contextlib.suppress(SendTimeout):
                    await intruder.send(server_keys.public, [b"x"], timeout=0.05)

                async def refused(at_least: int = attempt) -> bool:
                    return len(calls) >= at_least

                await until(refused)
                await intruder.close()
            good = await good_t.connect(listener.address, server_keys.public)
            assert await hello(good, listener) == good_keys.public
        finally:
            await intruder_t.close()
            await good_t.close()
            await server.close()

    run(main())


def test_wrong_server_key_never_connects(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            impostor_key = CurveKeyPair.generate().public
            conn = await m.add_client(server_key=impostor_key)
            with contextlib.suppress(SendTimeout):
                await conn.send(impostor_key, [b"secret"], timeout=0.2)
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.3)
            good = await m.add_client()
            await hello(good, m.listener)

    run(main())


def test_reauthenticate_cuts_off_a_revoked_peer(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            revoked = await m.add_client()
            good = await m.add_client()
            bad_key = await hello(revoked, m.listener, b"r")
            good_key = await hello(good, m.listener, b"g")
            m.allowed.discard(bad_key)
            assert m.listener.reauthenticate() == [bad_key]
            assert bad_key in m.rejected
            with pytest.raises(PeerUnavailable):
                await m.listener.send(bad_key, [b"x"])
            await revoked.send(revoked.server_key, [b"after revocation"])
            await good.send(good.server_key, [b"g2"])
            peer, frames = await m.listener.recv(timeout=WAIT)
            assert (peer, frames) == (good_key, [b"g2"])
            assert m.listener.peers() == frozenset({good_key})

            async def counted() -> bool:
                return m.listener.stats.dropped_unauthenticated >= 1

            # The revoked peer's message is read and discarded, never delivered.
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.2)
            await until(counted)

    run(main())


def test_reauthenticate_drops_what_a_revoked_peer_sent_in_the_same_burst(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            revoked = await m.add_client()
            good = await m.add_client()
            for i in range(20):  # one burst: in ZeroMQ, batches read whole
                await revoked.send(revoked.server_key, [b"r", bytes([i])])
            bad_key, first = await m.listener.recv(timeout=WAIT)
            assert first == [b"r", b"\x00"]
            m.allowed.discard(bad_key)
            assert m.listener.reauthenticate() == [bad_key]
            await good.send(good.server_key, [b"g"])
            peer, frames = await m.listener.recv(timeout=WAIT)
            assert frames == [b"g"]
            assert peer != bad_key
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.2)

    run(main())


def test_revoked_peer_that_never_spoke_is_cut_off_too(kit: Kit) -> None:
    async def main() -> None:
        async with mesh(kit) as m:
            silent = await m.add_client()
            good = await m.add_client()
            silent_key = m.clients[0][0].public
            good_key = await hello(good, m.listener, b"g")

            async def silent_admitted() -> bool:  # its connection passed admission (ZAP)
                return silent_key in m.admitted

            await until(silent_admitted)
            m.allowed.discard(silent_key)
            assert m.listener.reauthenticate() == []  # not a known route yet
            await silent.send(silent.server_key, [b"first words"])
            await good.send(good.server_key, [b"g2"])
            assert await m.listener.recv(timeout=WAIT) == (good_key, [b"g2"])
            with pytest.raises(TimeoutError):
                await m.listener.recv(timeout=0.2)
            assert m.listener.stats.dropped_unauthenticated == 1
            assert silent_key not in m.listener.peers()
            # Re-admitted (e.g. a wrongly revoked node is reinstated): served again.
            m.allowed.add(silent_key)
            m.listener.reauthenticate()
            await silent.send(silent.server_key, [b"back"])
            assert await m.listener.recv(timeout=WAIT) == (silent_key, [b"back"])

    run(main())


def test_keypair_validation() -> None:
    keys = CurveKeyPair.generate()
    assert keys.secret.hex() not in repr(keys)
    with pytest.raises(LocalError):
        CurveKeyPair(public=CurveKeyPair.generate().public, secret=keys.secret)
    assert CurveKeyPair.from_secret(keys.secret) == keys


def test_transport_options_validation() -> None:
    for bad in (
        {"sndhwm": 0},
        {"rcvhwm": 0},
        {"max_frames": 0},
        {"reconnect_ivl": 0.0},
        {"reconnect_ivl": 10.0, "reconnect_ivl_max": 1.0},
    ):
        with pytest.raises(ValueError, match=r"."):
            TransportOptions(**bad)  # type: ignore[arg-type]
