"""ZeroMQ-specific transport behaviour: raw intruders, CURVE requirement, ZAP, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import TransportError
from securemesh.transport import AllowKeys, CurveKeyPair, TransportOptions, ZmqTransport
from securemesh.transport import _zmq as zt
from securemesh.transport._zmq import ZmqListener

WAIT = 5.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 30.0)

    asyncio.run(bounded())


def raw_dealer(
    ctx: zmq.asyncio.Context,
    address: str,
    *,
    server_key: bytes | None,
    keys: CurveKeyPair | None,
) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None and keys is not None:
        sock.curve_serverkey = server_key
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    sock.connect(address)
    return sock


@contextlib.asynccontextmanager
async def admitted_raw_peers(
    count: int, options: TransportOptions | None = None
) -> AsyncIterator[tuple[ZmqListener, list[zmq.asyncio.Socket], list[bytes]]]:
    """A listener admitting ``count`` raw pyzmq DEALERs (an attacker's own sockets)."""
    server_keys = CurveKeyPair.generate()
    peers = [CurveKeyPair.generate() for _ in range(count)]
    server = ZmqTransport(
        server_keys, authenticator=AllowKeys([p.public for p in peers]), options=options
    )
    raw_ctx = zmq.asyncio.Context()
    try:
        listener = await server.listen("tcp://127.0.0.1:0")
        socks = [
            raw_dealer(raw_ctx, listener.address, server_key=server_keys.public, keys=p)
            for p in peers
        ]
        yield listener, socks, [p.public for p in peers]
    finally:
        raw_ctx.destroy(linger=0)
        await server.close()


@pytest.mark.parametrize("kind", ["unknown_curve_key", "no_curve", "plain"])
def test_raw_zmq_intruder_is_never_delivered_and_good_peer_is_served(kind: str) -> None:
    async def main() -> None:
        server_keys, good_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        rejected = asyncio.Event()
        server = ZmqTransport(
            server_keys,
            authenticator=AllowKeys([good_keys.public]),
            on_reject=lambda key, exc: rejected.set(),
        )
        client = ZmqTransport(good_keys)
        raw_ctx = zmq.asyncio.Context()
        try:
            listener = await server.listen("tcp://127.0.0.1:0")
            if kind == "unknown_curve_key":
                intruder = raw_dealer(
                    raw_ctx,
                    listener.address,
                    server_key=server_keys.public,
                    keys=CurveKeyPair.generate(),
                )
            else:
                intruder = raw_dealer(raw_ctx, listener.address, server_key=None, keys=None)
                if kind == "plain":
                    intruder.plain_username = b"admin"
                    intruder.plain_password = b"admin"
            for i in range(20):
                await intruder.send_multipart([b"intrusion", str(i).encode()])
            if kind == "unknown_curve_key":  # reached ZAP, refused there
                await asyncio.wait_for(rejected.wait(), WAIT)
            good = await client.connect(listener.address, server_keys.public)
            await good.send(server_keys.public, [b"good"])
            peer, frames = await listener.recv(timeout=WAIT)
            assert (peer, frames) == (good_keys.public, [b"good"])
            with pytest.raises(TimeoutError):
                await listener.recv(timeout=0.3)
            await listener.send(peer, [b"served"])
            assert (await good.recv(timeout=WAIT))[1] == [b"served"]
            assert await intruder.poll(100) == 0  # the intruder never hears anything
        finally:
            raw_ctx.destroy(linger=0)
            await client.close()
            await server.close()

    run(main())


def test_oversize_and_overlong_messages_from_an_admitted_peer() -> None:
    options = TransportOptions(max_frame_size=1024, max_frames=3)

    async def main() -> None:
        server_keys, peer_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        server = ZmqTransport(
            server_keys, authenticator=AllowKeys([peer_keys.public]), options=options
        )
        raw_ctx = zmq.asyncio.Context()
        try:
            listener = await server.listen("tcp://127.0.0.1:0")
            raw = raw_dealer(
                raw_ctx, listener.address, server_key=server_keys.public, keys=peer_keys
            )
            await raw.send_multipart([b"a", b"b", b"c", b"d"])  # too many frames: dropped
            await raw.send_multipart([b"ok"])
            assert (await listener.recv(timeout=WAIT))[1] == [b"ok"]
            assert listener.stats.dropped_malformed == 1
            # far too many: the rest is drained part by part, not kept, and the
            # next message arrives whole and in order
            await raw.send_multipart([b"x"] * 200)
            await raw.send_multipart([b"ok", b"2"])
            assert (await listener.recv(timeout=WAIT))[1] == [b"ok", b"2"]
            assert listener.stats.dropped_malformed == 2
            await raw.send_multipart([bytes(2048)])  # over MAXMSGSIZE: libzmq drops the peer
            # The raw DEALER reconnects by itself and the listener serves it
            # again; the oversize message is never delivered.
            received: list[list[bytes]] = []
            async with asyncio.timeout(WAIT):
                for i in range(10_000):
                    await raw.send_multipart([b"again", str(i).encode()])
                    try:
                        peer, frames = await listener.recv(timeout=0.02)
                    except TimeoutError:
                        continue
                    received.append(frames)
                    break
            assert peer == peer_keys.public
            assert received[-1][0] == b"again"
            assert all(len(f) <= 1024 for frames in received for f in frames)
        finally:
            raw_ctx.destroy(linger=0)
            await server.close()

    run(main())


def test_reconnect_after_the_listener_comes_back() -> None:
    options = TransportOptions(reconnect_ivl=0.01, reconnect_ivl_max=0.2)

    async def main() -> None:
        server_keys, client_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        server = ZmqTransport(
            server_keys, authenticator=AllowKeys([client_keys.public]), options=options
        )
        client = ZmqTransport(client_keys, options=options)
        try:
            first = await server.listen("tcp://127.0.0.1:0")
            address = first.address
            conn = await client.connect(address, server_keys.public)
            await conn.send(server_keys.public, [b"one"])
            assert (await first.recv(timeout=WAIT))[1] == [b"one"]
            await first.close()
            # libzmq releases the port asynchronously after close: retry the bind.
            async with asyncio.timeout(WAIT):
                while True:
                    try:
                        second = await server.listen(address)
                    except TransportError:
                        await asyncio.sleep(0.01)
                        continue
                    break
            # Messages in flight when a connection drops may be lost (the
            # transport is at-most-once; the bus acknowledges and resends), so
            # keep sending until the reconnected DEALER gets one through.
            async with asyncio.timeout(WAIT):
                for i in range(10_000):
                    await conn.send(server_keys.public, [b"two", str(i).encode()])
                    try:
                        peer, frames = await second.recv(timeout=0.02)
                    except TimeoutError:
                        continue
                    break
            assert peer == client_keys.public
            assert frames[0] == b"two"
            assert conn._sock.getsockopt(zmq.RECONNECT_IVL) == 10
            assert conn._sock.getsockopt(zmq.RECONNECT_IVL_MAX) == 200
        finally:
            await client.close()
            await server.close()

    run(main())


def test_socket_options_are_set() -> None:
    options = TransportOptions(sndhwm=7, rcvhwm=9, max_frame_size=4096)

    async def main() -> None:
        keys = CurveKeyPair.generate()
        server = ZmqTransport(keys, options=options)
        try:
            listener = await server.listen("tcp://127.0.0.1:0")
            conn = await server.connect(listener.address, keys.public)
            for sock in (listener._sock, conn._sock):
                assert sock.getsockopt(zmq.SNDHWM) == 7
                assert sock.getsockopt(zmq.RCVHWM) == 9
                assert sock.getsockopt(zmq.LINGER) == 0
                assert sock.getsockopt(zmq.MAXMSGSIZE) == 4096
            assert listener._sock.getsockopt(zmq.CURVE_SERVER) == 1
            assert listener._sock.getsockopt(zmq.ZAP_DOMAIN) == zt.ZAP_DOMAIN
            # a listener's RCVHWM holds ~max_queued_bytes per connection (issue 9 #4)
            big = ZmqTransport(keys, options=TransportOptions(max_queued_bytes=64 << 20))
            try:
                big_listener = await big.listen("tcp://127.0.0.1:0")
                assert big_listener._sock.getsockopt(zmq.RCVHWM) == 4  # 64 MiB / 16 MiB
            finally:
                await big.close()
            assert listener.address.startswith("tcp://127.0.0.1:")
            assert not listener.address.endswith(":0")
        finally:
            await server.close()

    run(main())


def test_refuses_to_start_without_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zt, "curve_available", lambda: False)
    with pytest.raises(TransportError, match="CURVE"):
        ZmqTransport(CurveKeyPair.generate())


def test_bad_addresses_are_transport_errors() -> None:
    async def main() -> None:
        server = ZmqTransport(CurveKeyPair.generate())
        try:
            with pytest.raises(TransportError):
                await server.listen("nonsense://x")
            with pytest.raises(TransportError):
                await server.connect("tcp://127.0.0.1:1", b"short")
        finally:
            await server.close()

    run(main())


# ------------------------------------------------------------------- ZAP


class _FakeTransport:
    """Just enough of ZmqTransport for the ZAP request parser."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def _admit(self, key: bytes, *, count: bool) -> bool:
        return key == self.allowed

    def _handshake_seen(self, address: bytes) -> None:
        """No listeners here, so no pending handshakes to settle."""


def _zap_handle(request: list[bytes], allowed: bytes) -> list[bytes] | None:
    handler = zt._ZapHandler.__new__(zt._ZapHandler)
    handler._transport = _FakeTransport(allowed)  # type: ignore[assignment]
    return handler._handle(request)


def test_zap_request_parsing() -> None:
    key = bytes(range(32))
    base = [b"rid", b"", b"1.0", b"7", zt.ZAP_DOMAIN, b"127.0.0.1", b"", b"CURVE", key]
    reply = _zap_handle(base, key)
    assert reply == [b"rid", b"", b"1.0", b"7", b"200", b"OK", key.hex().encode(), b""]
    refused = _zap_handle(base, bytes(32))
    assert refused is not None
    assert refused[4] == b"400"
    assert refused[6] == b""  # no User-Id for a refusal
    for bad in (
        [*base[:2], b"2.0", *base[3:]],
        [*base[:4], b"other", *base[5:]],
        [*base[:7], b"PLAIN", b"user", b"pass"],
        [*base[:8], key[:31]],
        [*base, b"extra"],
    ):
        answer = _zap_handle(bad, key)
        assert answer is not None
        assert answer[4] == b"400"
    assert _zap_handle(base[:5], key) is None


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_zap_parser_never_admits_garbage(request: list[bytes]) -> None:
    key = bytes(range(32))
    answer = _zap_handle(request, key)
    if answer is not None and answer[-4] == b"200":
        assert request[-1] == key
        assert request[2] == b"1.0"


def test_importing_the_transport_package_does_not_load_pyzmq() -> None:
    code = (
        "import sys, securemesh.transport as t; "
        "assert 'zmq' not in sys.modules, 'zmq imported eagerly'; "
        "t.ZmqTransport; assert 'zmq' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transport_package_imports_no_wire_or_certificates() -> None:
    """The transport only moves frames: no envelopes, certificates or sessions."""
    import ast
    from pathlib import Path

    import securemesh.transport as pkg

    forbidden = ("securemesh.wire", "securemesh.crypto", "securemesh.session", "securemesh.node")
    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


_DROPPED_WITHOUT_CLOSE = """
import asyncio, gc
from securemesh.transport import AllowKeys, CurveKeyPair, ZmqTransport

async def main():
    server, client = CurveKeyPair.generate(), CurveKeyPair.generate()
    a = ZmqTransport(server, authenticator=AllowKeys([client.public]))
    b = ZmqTransport(client)
    listener = await a.listen("tcp://127.0.0.1:0")
    conn = await b.connect(listener.address, server.public)
    await conn.send(server.public, [b"hello"])
    peer, frames = await listener.recv(timeout=10)
    assert frames == [b"hello"]
    # a, b, listener and conn are dropped here without close(): the cycle
    # (transport <-> endpoints <-> sockets) is left to the garbage collector.

asyncio.run(main())
gc.collect()
print("collected")
"""


def test_a_transport_dropped_without_close_is_collected_without_hanging() -> None:
    # pyzmq's Context.__del__ terminates the context; if it ran while one of
    # its sockets was still open (the GC clears pyzmq's weak socket set before
    # finalizers run), zmq_ctx_term blocked the whole process forever.
    done = subprocess.run(
        [sys.executable, "-c", _DROPPED_WITHOUT_CLOSE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "collected"


# ------------------------------------------------------------------ batches

_message = st.lists(st.binary(max_size=64), min_size=1, max_size=16).filter(lambda fs: fs[0] != b"")


@given(st.lists(_message, min_size=2, max_size=40))
def test_batches_round_trip(messages: list[list[bytes]]) -> None:
    assert zt.unpack_batch(zt.pack_batch(messages), max_frames=16) == messages


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_unpack_batch_never_raises_and_is_strict(payload: bytes) -> None:
    got = zt.unpack_batch(payload, max_frames=16)
    if got is not None:  # then it is exactly what would be sent for those messages
        assert zt.pack_batch(got) == payload


def test_malformed_batches_are_refused() -> None:
    good = zt.pack_batch([[b"a"], [b"b", b"c"]])
    for bad in (
        good + b"\x00",  # trailing byte
        good[:-1],  # cut short
        b"\x02" + good[1:],  # unknown version
        zt.pack_batch([[b"a"], [b"b"]])[:1] + b"\x00\x01" + zt.pack_batch([[b"a"], [b"b"]])[3:],
        b"\x01\x00\x02\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01b",  # empty first frame
        b"\x01\x00\x02\x11" + b"\x00" * 80,  # 17 frames > max_frames
    ):
        assert zt.unpack_batch(bad, max_frames=16) is None
    with pytest.raises(TransportError):
        zt.pack_batch([[b"a"]])  # one message is not a batch
    with pytest.raises(TransportError):
        zt.pack_batch([[b"a"], [b"", b"b"]])


def test_a_burst_leaves_as_batches_on_the_wire() -> None:
    """What a plain CURVE ROUTER (no SecureMesh) receives from a connection's burst."""

    async def main() -> None:
        server_keys, client_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        raw_ctx = zmq.asyncio.Context()  # no ZAP handler bound: admits any CURVE client
        client = ZmqTransport(client_keys)
        try:
            router = raw_ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.curve_server = True
            router.curve_secretkey = server_keys.secret
            router.curve_publickey = server_keys.public
            port = router.bind_to_random_port("tcp://127.0.0.1")
            conn = await client.connect(f"tcp://127.0.0.1:{port}", server_keys.public)
            sent = [[b"m", i.to_bytes(2, "big")] for i in range(200)]
            for frames in sent:
                await conn.send(server_keys.public, frames)
            got: list[list[bytes]] = []
            wire_messages = 0
            async with asyncio.timeout(WAIT):
                while len(got) < len(sent):
                    _routing, *frames = await router.recv_multipart()
                    wire_messages += 1
                    if frames[0] == b"":
                        batch = zt.unpack_batch(frames[1], max_frames=16)
                        assert batch is not None
                        got.extend(batch)
                    else:
                        got.append(frames)
            assert got == sent
            assert wire_messages <= len(sent) // zt._BATCH_MESSAGES + 1
            assert conn.stats.sent == len(sent)
        finally:
            await client.close()
            raw_ctx.destroy(linger=0)

    run(main())


def test_malformed_batches_from_an_admitted_peer_are_dropped_and_it_is_still_served() -> None:
    async def main() -> None:
        async with admitted_raw_peers(1) as (listener, (raw,), _):
            good = zt.pack_batch([[b"one"], [b"two", b"2"]])
            await raw.send_multipart([b"", good + b"junk"])
            await raw.send_multipart([b"", good, b"extra frame"])
            await raw.send_multipart([b""])
            await raw.send_multipart([b"", b"\xff" * 100])
            await raw.send_multipart([b"", good])
            got = [(await listener.recv(timeout=WAIT))[1] for _ in range(2)]
            assert got == [[b"one"], [b"two", b"2"]]
            assert listener.stats.dropped_malformed == 4
            assert listener.stats.received == 2

    run(main())


async def _two_batches_then_quiet(
    listener: Any, flood: Any, quiet: Any, flood_key: bytes
) -> list[bytes]:
    """The flood sends two 1,024-message batches; once its first message is received the
    quiet peer sends one message; the flood's first message (frames) is returned."""
    batch = zt.pack_batch([[b"flood", i.to_bytes(2, "big")] for i in range(1024)])
    await flood.send_multipart([b"", batch])
    await flood.send_multipart([b"", batch])
    peer, first = await listener.recv(timeout=WAIT)  # the flood's first batch lands
    assert peer == flood_key
    await quiet.send_multipart([b"quiet"])
    # give the I/O thread a moment to put it in the listener's queue (if it is late,
    # the backlog is served meanwhile: the callers' bounds have a wide margin)
    await asyncio.sleep(0.2)
    return list(first)


def test_a_batch_flood_gets_one_turn_at_a_time() -> None:
    """Issue 9 #8b: a peer's 1,024-message batch does not make another peer wait behind it."""

    async def main() -> None:
        async with admitted_raw_peers(2) as (listener, (flood, quiet), (flood_key, quiet_key)):
            first = await _two_batches_then_quiet(listener, flood, quiet, flood_key)
            order: list[bytes] = []
            flood_seen = [first]
            while quiet_key not in order:
                peer, frames = await listener.recv(timeout=WAIT)
                order.append(peer)
                if peer == flood_key:
                    flood_seen.append(frames)
            # before: behind all 1,023 held messages of the batch
            assert len(order) < 256, "the quiet peer waited behind the batch"
            # the flood's own messages keep their order across both batches
            rest = []
            while len(flood_seen) + len(rest) < 2048:
                peer, frames = await listener.recv(timeout=WAIT)
                assert peer == flood_key
                rest.append(frames)
            numbers = [int.from_bytes(f[1], "big") for f in flood_seen + rest]
            assert numbers == list(range(1024)) * 2

    run(main())


def test_runs_of_held_messages_keep_order_turns_and_the_socket_s_turn() -> None:
    """recv_run_nowait (the node's receive loop) hands out a held batch in runs no
    longer than the backlog's credit: the quiet peer still gets its turn as soon as
    with message-by-message receives, and the flood's order is kept."""

    async def main() -> None:
        async with admitted_raw_peers(2) as (listener, (flood, quiet), (flood_key, quiet_key)):
            first = await _two_batches_then_quiet(listener, flood, quiet, flood_key)
            handed: list[tuple[bytes, list[bytes]]] = []
            longest = 0
            while len(handed) < 2048:
                got = listener.recv_run_nowait()
                if got is None:
                    peer, frames = await listener.recv(timeout=WAIT)
                    got = (peer, [frames])
                longest = max(longest, len(got[1]))
                handed.extend((got[0], frames) for frames in got[1])
            order = [peer for peer, _ in handed]
            assert order.index(quiet_key) < 256, "the quiet peer waited behind the batch"
            assert 1 < longest <= zt.FULL_TURN  # runs happen, within one turn of credit
            numbers = [
                int.from_bytes(f[1], "big")
                for p, f in [(flood_key, first), *handed]
                if p == flood_key
            ]
            assert numbers == list(range(1024)) * 2
            assert listener.recv_run_nowait() is None

    run(main())


def test_a_message_over_the_total_size_is_dropped_uncopied() -> None:
    """Issue 9 #4: many frames each under MAXMSGSIZE, together over max_message_size."""

    async def main() -> None:
        options = TransportOptions(max_frame_size=1024 * 1024, max_message_size=2 * 1024 * 1024)
        async with admitted_raw_peers(1, options) as (listener, (raw,), _):
            big = bytes(1000 * 1024)
            await raw.send_multipart([b"too", big, big, big])  # 3 MB in 4 frames
            await raw.send_multipart([b"ok", big])
            _, frames = await listener.recv(timeout=WAIT)
            assert frames == [b"ok", big]
            assert listener.stats.dropped_oversize == 1
            assert listener.stats.received == 1

    run(main())


def test_connections_are_refused_before_authentication_beyond_the_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 9 #5/#8e: pending handshakes per address, the accept rate and descriptors."""

    async def main() -> None:
        server_keys, good_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
        options = TransportOptions(max_pending_per_address=2, accept_burst=3, accept_rate=0.001)
        server = ZmqTransport(
            server_keys, authenticator=AllowKeys([good_keys.public]), options=options
        )
        client = ZmqTransport(good_keys)
        raws: list[socket.socket] = []
        try:
            listener = await server.listen("tcp://127.0.0.1:0")
            host, port = listener.address.removeprefix("tcp://").rsplit(":", 1)
            for _ in range(4):  # silent raw TCP clients: they never finish a handshake
                raws.append(socket.create_connection((host, int(port))))
            async with asyncio.timeout(WAIT):
                while listener.stats.refused_connections < 2:
                    await asyncio.sleep(0.01)
            guard = listener.guard
            assert guard.refused["pending_per_address"] == 2
            assert guard.pending == 2
            for raw in raws:
                raw.close()  # their DISCONNECTED frees the pending slots
            async with asyncio.timeout(WAIT):
                while guard.pending:
                    await asyncio.sleep(0.01)
            # refused ones took no token: the 3rd (the good client) is in
            conn = await client.connect(listener.address, server_keys.public)
            await conn.send(server_keys.public, [b"hello"])
            assert (await listener.recv(timeout=WAIT))[1] == [b"hello"]
            # no token left for this address: the next connection is refused
            raws = [socket.create_connection((host, int(port)))]
            async with asyncio.timeout(WAIT):
                while guard.refused["accept_rate"] < 1:
                    await asyncio.sleep(0.01)
            # near the open-file limit: refused, and said once
            guard._fd_ceiling = 0
            with caplog.at_level(logging.WARNING, logger="securemesh.transport"):
                raws += [socket.create_connection((host, int(port))) for _ in range(2)]
                async with asyncio.timeout(WAIT):
                    while guard.refused["fd_limit"] < 2:
                        await asyncio.sleep(0.01)
            said = [r for r in caplog.records if getattr(r, "event", None) == "fd_limit"]
            assert len(said) == 1
            assert guard.snapshot()["near_fd_limit"] is True
            # the admitted connection is untouched by all of this
            await conn.send(server_keys.public, [b"still here"])
            assert (await listener.recv(timeout=WAIT))[1] == [b"still here"]
        finally:
            for raw in raws:
                raw.close()
            await client.close()
            await server.close()

    run(main())
