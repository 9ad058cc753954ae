"""SIGKILL of storage edges while a put and a get are in flight (k=2, n=3, real daemons).

The grid is ``tests/storage``'s (cloud + edge-a, edge-b, edge-c daemons, an SDK
device at edge-a driving a :class:`~securemesh.storage.StorageClient`). The
victims are killed from the client's own progress callbacks, so the kill lands
while segments are travelling — no sleep guesses when that is.

* **put**: edge-c is SIGKILLed after two segments of a 24-segment put went out.
  The put either completes (then the object reads back) or fails with one clean
  error of the library's tree (no hang: the client's timeout bounds it); an
  object whose manifest is listed must read back; after edge-c restarts, the
  same put succeeds when retried. An object acknowledged *before* the kill
  still reads back with edge-c dead (>= k shards left).
* **get**: edge-b is SIGKILLed after the first segment of a get was delivered;
  the get still returns every byte, from the k edges left.

(``tests/storage/test_storage_daemons.py`` already covers a get after the kill
of n-k edges, repair onto a new edge and the cloud's automatic repair.)
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import poll

from securemesh.errors import SecureMeshError
from securemesh.storage import Candidate

pytestmark = [pytest.mark.slow, pytest.mark.reliability_long]

_GRID_SOURCE = Path(__file__).resolve().parent.parent / "storage" / "test_storage_daemons.py"


def _storage_grid_module() -> Any:
    """``tests/storage/test_storage_daemons.py`` (its ``storage_grid``), under its own name."""
    spec = importlib.util.spec_from_file_location("_reliability_storage_grid", _GRID_SOURCE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grid_support = _storage_grid_module()
SEG: int = grid_support.SEG
EDGES: tuple[str, ...] = grid_support.EDGES


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with grid_support.storage_grid(
        tmp_path_factory.mktemp("rel-storage"), EDGES, k=2, n=3, env_extra={}, timeout=5.0
    ) as g:
        yield g


def kill(grid: Any, name: str) -> None:
    proc = grid.daemons.procs[name]
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def restart(grid: Any, name: str) -> None:
    grid.daemons.run(name, grid.dir(name))
    poll(
        lambda: name in {c.node_id for c in grid.run(grid.client.nodes())},
        f"the cloud to list {name} again",
    )


def test_sigkill_of_an_edge_during_a_put_loses_nothing_acknowledged(grid: Any) -> None:
    acked = os.urandom(3 * SEG + 7)
    grid.run(grid.client.put("rel/acked", acked))
    data = os.urandom(24 * SEG + 5)

    def kill_after_two(done: int, total: int) -> None:
        if done >= 2:
            kill(grid, "edge-c")

    outcome: dict[str, Any] = {}

    def put() -> None:
        try:
            outcome["manifest"] = grid.run(
                grid.client.put("rel/inflight", data, progress=kill_after_two)
            )
        except BaseException as exc:  # judged below
            outcome["error"] = exc

    thread = threading.Thread(target=put)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the put hung after an edge was killed"
    assert grid.daemons.procs["edge-c"].poll() is not None, "edge-c was not killed mid-put"
    error = outcome.get("error")
    print(f"put with edge-c killed mid-way: {'completed' if error is None else repr(error)}")
    if error is not None:  # a clean failure: one of the library's errors, or its timeout
        assert isinstance(error, SecureMeshError | TimeoutError), repr(error)

    alive = [Candidate(e) for e in EDGES if e != "edge-c"] + [Candidate("edge-c")]
    # acknowledged before the kill: still readable from the k edges left
    back, _ = grid.run(grid.client.get("rel/acked", nodes=alive))
    assert back == acked
    if "manifest" in outcome or "rel/inflight" in grid.run(grid.client.list()):
        back, _ = grid.run(grid.client.get("rel/inflight", nodes=alive))
        assert back == data

    # the fault clears: edge-c restarts (same data dir); the put is retried and succeeds
    restart(grid, "edge-c")
    if "manifest" not in outcome:
        grid.run(grid.client.put("rel/inflight", data))
    back, _ = grid.run(grid.client.get("rel/inflight"))
    assert back == data
    back, _ = grid.run(grid.client.get("rel/acked"))
    assert back == acked
    grid.kept["rel/inflight"] = data


def test_sigkill_of_an_edge_during_a_get_still_returns_every_byte(grid: Any) -> None:
    data = grid.kept["rel/inflight"]
    got = bytearray()

    def write(chunk: bytes) -> None:
        got.extend(chunk)
        if len(got) >= SEG:  # the first segment is out: kill one of the n - k spare edges
            kill(grid, "edge-b")

    grid.run(grid.client.get_into("rel/inflight", write, nodes=[Candidate(e) for e in EDGES]))
    assert grid.daemons.procs["edge-b"].poll() is not None, "edge-b was not killed mid-get"
    assert bytes(got) == data
