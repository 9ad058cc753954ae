"""Drive one secure-aggregation round in one process, over an in-memory transport.

The transport is a list of ``(sender, recipient, frame)``: every frame is
encoded and decoded exactly as on the bus, only the envelope is missing. Used
by the tests and ``bench/fl.py``; it measures the time spent in client and
server code separately and the bytes each client sends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from securemesh.fl._secagg import SecAggClient, SecAggServer, Vector

__all__ = ["DROP_STAGES", "MemoryRound", "run_in_memory"]

# A client listed in ``dropouts`` with one of these stays silent from that stage on:
# "advertise" never starts, "share" advertises only, "masked" drops *before* sending
# its masked input, "consistency" drops right *after* it, "unmask" before unmasking.
DROP_STAGES = ("advertise", "share", "masked", "consistency", "unmask")


@dataclass
class MemoryRound:
    server: SecAggServer
    clients: dict[str, SecAggClient]
    client_s: float = 0.0
    server_s: float = 0.0
    bytes_sent: dict[str, int] = field(default_factory=dict)

    @property
    def result(self) -> Vector | None:
        return self.server.result


def run_in_memory(
    server: SecAggServer,
    clients: Mapping[str, SecAggClient],
    *,
    dropouts: Mapping[str, str] | None = None,
    tamper: Mapping[str, object] | None = None,
) -> MemoryRound:
    """Run the round to its end; a dropped client's deadline passes on a simulated clock.

    ``tamper`` maps a client id to a callable ``(stage, frame) -> frame`` applied
    to what that client sends (tests use it for malformed or forged messages).
    """
    drops = dict(dropouts or {})
    for stage in drops.values():
        if stage not in DROP_STAGES:
            raise ValueError(f"unknown drop stage {stage!r}")
    order = {name: i for i, name in enumerate(DROP_STAGES)}
    run = MemoryRound(server, dict(clients))
    now = 0.0

    def silent(client: str, stage: str) -> bool:
        return client in drops and order[drops[client]] <= order[stage]

    def deliver(client: str, frame: bytes | None, stage: str) -> None:
        if frame is None:
            return
        if tamper and client in tamper:
            frame = tamper[client](stage, frame)  # type: ignore[operator]
        run.bytes_sent[client] = run.bytes_sent.get(client, 0) + len(frame)
        t0 = time.perf_counter()
        server.receive(client, frame, now)
        run.server_s += time.perf_counter() - t0

    for cid, client in clients.items():
        if silent(cid, "advertise"):
            continue
        t0 = time.perf_counter()
        frame = client.start()
        run.client_s += time.perf_counter() - t0
        deliver(cid, frame, "advertise")
    stages = iter(DROP_STAGES[1:])
    stage = "advertise"
    while not server.finished:
        out = server.take_outbox()
        if not out:
            now += server.config.stage_timeout
            t0 = time.perf_counter()
            server.tick(now)
            run.server_s += time.perf_counter() - t0
            continue
        stage = next(stages, "done")
        for cid, frame in out:
            if cid not in clients or silent(cid, stage if stage != "done" else "unmask"):
                continue
            t0 = time.perf_counter()
            reply = clients[cid].receive(frame, now)
            run.client_s += time.perf_counter() - t0
            deliver(cid, reply, stage)
    for cid, frame in server.take_outbox():  # an Abort reaches who is still there
        if cid in clients and not silent(cid, "unmask"):
            clients[cid].receive(frame, now)
    return run
