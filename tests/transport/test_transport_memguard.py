"""The listener's memory guard (issue 9 #4): trip, cut; re-baseline when cutting cannot help."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

from securemesh.transport import TransportOptions, TransportStats
from securemesh.transport._memguard import MemoryGuard, cut_connections, resident_bytes

MIB = 2**20


def _server_and_client() -> tuple[socket.socket, socket.socket, socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    accepted, _ = server.accept()
    return server, client, accepted, port


def _readings(values: list[int]) -> Iterator[int]:
    yield from values
    while True:
        yield values[-1]


def test_a_trip_cuts_the_port_s_connections_and_keeps_the_baseline() -> None:
    server, client, accepted, port = _server_and_client()
    try:
        rss = _readings([100 * MIB, 110 * MIB, 170 * MIB, 104 * MIB])
        stats = TransportStats()
        options = TransportOptions(memory_budget=64 * MIB, memory_check_interval=3600)

        async def main() -> None:
            guard = MemoryGuard(
                port, options, stats=stats, process_commands=lambda: None, rss=lambda: next(rss)
            )
            try:
                assert not guard.check()  # +10 MiB: within budget
                assert guard.check()  # +70 MiB: trips, then measures +4 MiB
                assert guard.baseline == 100 * MIB  # the growth was the connections'
            finally:
                guard.close()

        asyncio.run(main())
        assert (stats.memory_trips, stats.memory_cut_connections) == (1, 1)
        assert client.recv(1) == b""  # cut: the peer sees the end of the stream
        # the listening socket itself is untouched: it still accepts
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            server.settimeout(10)
            again, _ = server.accept()
            again.close()
    finally:
        for s in (client, accepted, server):
            s.close()


def test_growth_that_cutting_does_not_free_moves_the_baseline() -> None:
    rss = _readings([100 * MIB, 170 * MIB, 168 * MIB, 175 * MIB])
    stats = TransportStats()
    options = TransportOptions(memory_budget=64 * MIB, memory_check_interval=3600)

    async def main() -> None:
        guard = MemoryGuard(
            1, options, stats=stats, process_commands=lambda: None, rss=lambda: next(rss)
        )
        try:
            assert guard.check()
            assert guard.baseline == 168 * MIB  # not the connections': re-baselined
            assert not guard.check()  # so the guard does not cut again and again
        finally:
            guard.close()

    asyncio.run(main())
    assert stats.memory_trips == 1


def test_helpers_on_this_system() -> None:
    assert (resident_bytes() or 0) > 0
    assert cut_connections(1) == 0  # nothing of ours on port 1


def test_daemons_run_with_the_guard_on_by_default() -> None:
    """Issue 9 #4: a daemon's listener is guarded unless the operator turns it off (0)."""
    from securemesh.node import LimitsConfig

    assert LimitsConfig().memory_budget == 256 * MIB
    assert LimitsConfig(memory_budget=0).memory_budget == 0
