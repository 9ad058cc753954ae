"""Concurrent appenders in several processes never fork, gap or duplicate the tree.

Four writer processes (multiprocessing, spawn) append overlapping event sets
to the same log at once — on PostgreSQL (``SELECT … FOR UPDATE`` on the
sequencer row) and on SQLite (``BEGIN IMMEDIATE``). Afterwards indices are
0..n-1 with no gap, each event is in the log exactly once, every process got
the same index for the same event, and the root recomputed from the leaves is
the root of the last signed checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from securemesh.audit import _schema as s
from securemesh.audit import merkle
from securemesh.audit.log import open_log
from securemesh.audit.verify import verify_log
from securemesh.crypto.signing import Ed25519Signer

WRITERS = 4
EVENTS = 240  # distinct events; each writer appends an overlapping 120 of them
HERE = str(Path(__file__).resolve().parent)


def _writer(url: str, k: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    sys.path.insert(0, HERE)
    from audit_log_helpers import make_events

    try:
        signer = Ed25519Signer.from_seed(b"1" * 32)
        events = make_events(signer, "edge-1", EVENTS)
        # writer k takes a window of 120 events starting at 40*k (wrapping), in
        # small calls, so batches from different processes interleave
        mine = [events[(40 * k + i) % EVENTS] for i in range(120)]
        got: dict[str, int] = {}
        with open_log(url, signer=Ed25519Signer.from_seed(b"L" * 32)) as log:
            for start in range(0, len(mine), 7):
                chunk = mine[start : start + 7]
                for ev, idx in zip(chunk, log.append(chunk), strict=True):
                    got[ev.unverified_event().event_id] = idx
        out.put((k, got, None))
    except BaseException as exc:  # report to the parent instead of dying silently
        out.put((k, {}, repr(exc)))


def _run_writers(url: str) -> dict[str, int]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_writer, args=(url, k, q)) for k in range(WRITERS)]
    try:
        for p in procs:
            p.start()
        results = [q.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [err for _, _, err in results if err]
    assert not errors, errors
    merged: dict[str, int] = {}
    for _, got, _ in results:
        for event_id, idx in got.items():
            assert merged.setdefault(event_id, idx) == idx, "two indices for one event"
    return merged


def _check_log(url: str) -> None:
    log_signer = Ed25519Signer.from_seed(b"L" * 32)
    with open_log(url, signer=log_signer) as log:
        with log.engine.connect() as conn:
            rows = conn.execute(
                select(s.leaves.c.idx, s.leaves.c.event_id, s.leaves.c.entry).order_by(
                    s.leaves.c.idx
                )
            ).all()
        assert [int(r.idx) for r in rows] == list(range(EVENTS))  # contiguous, no gap
        assert len({r.event_id for r in rows}) == EVENTS  # each event exactly once
        head = log.latest_tree_head()
        assert head is not None
        assert head.size == EVENTS
        assert merkle.root([bytes(r.entry) for r in rows]) == head.root
        log.open_checkpoint(head.note)
        verify_log(log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin)


def _prepare(url: str) -> None:
    with open_log(url, signer=Ed25519Signer.from_seed(b"L" * 32)) as log:
        log.register_node("edge-1", Ed25519Signer.from_seed(b"1" * 32).verify_key)


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_writer_processes_postgres(audit_pg_url: str) -> None:
    _prepare(audit_pg_url)
    indices = _run_writers(audit_pg_url)
    assert sorted(indices.values()) == list(range(EVENTS))
    _check_log(audit_pg_url)


@pytest.mark.slow
def test_concurrent_writer_processes_sqlite(tmp_path: Path) -> None:
    url = str(tmp_path / "audit.db")
    _prepare(url)
    indices = _run_writers(url)
    assert sorted(indices.values()) == list(range(EVENTS))
    _check_log(url)
