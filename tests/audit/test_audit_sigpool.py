"""Append-time signature checks in worker processes reach the same verdicts as threads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_log_helpers import make_events

from securemesh.audit import _sigpool
from securemesh.audit.events import SignedEvent, event_key_id
from securemesh.audit.log import AuditLog, open_log
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import AuthenticationError

N = 300  # > 2 chunks of 32: the process path


def _open(
    path: Path, log_signer: Ed25519Signer, edges: dict[str, Ed25519Signer], procs: bool
) -> AuditLog:
    lg = open_log(path, signer=log_signer, clock=lambda: 1_800_000_000.0)
    lg._verify_processes = procs  # the constructor's option, set on an opened log
    for name, signer in edges.items():
        lg.register_node(name, signer.verify_key)
    return lg


@pytest.fixture
def logs(
    tmp_path: Path, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> Iterator[tuple[AuditLog, AuditLog]]:
    with_procs = _open(tmp_path / "p.db", log_signer, edge_signers, True)
    with_threads = _open(tmp_path / "t.db", log_signer, edge_signers, False)
    yield with_procs, with_threads
    with_procs.close()
    with_threads.close()


def _events(edges: dict[str, Ed25519Signer]) -> list[bytes]:
    events = make_events(edges["edge-1"], "edge-1", N)
    wire = [e.to_bytes() for e in events]
    # 70: signed by edge-2's key while naming edge-1 (key id mismatch)
    wire[70] = make_events(edges["edge-2"], "edge-1", 1, start=7_000)[0].to_bytes()
    # 201: a flipped signature bit
    bad = bytearray(wire[201])
    bad[20] ^= 0x01
    wire[201] = bytes(bad)
    return wire


def test_append_entries_rejects_the_same_events(
    logs: tuple[AuditLog, AuditLog], edge_signers: dict[str, Ed25519Signer]
) -> None:
    wire = _events(edge_signers)
    outcomes = [lg.append_entries(wire) for lg in logs]
    assert _sigpool.shared_pool()._procs  # the first log really used worker processes
    assert [(o.event_id, o.index, str(o.error)) for o in outcomes[0]] == [
        (o.event_id, o.index, str(o.error)) for o in outcomes[1]
    ]
    rejected = {i: str(o.error) for i, o in enumerate(outcomes[0]) if not o.accepted}
    assert rejected == {
        70: "event was signed by a different key: origin 'edge-1' has no registered key "
        f"with key id {event_key_id(edge_signers['edge-2'].verify_key).hex()}",
        201: "signature does not verify",
    }
    assert logs[0].size() == logs[1].size() == N - 2
    assert logs[0].latest_tree_head().root == logs[1].latest_tree_head().root  # type: ignore[union-attr]


def test_append_is_all_or_nothing_with_processes(
    logs: tuple[AuditLog, AuditLog], edge_signers: dict[str, Ed25519Signer]
) -> None:
    wire = _events(edge_signers)
    for lg in logs:
        with pytest.raises(AuthenticationError, match="signed by a different key"):
            lg.append(wire)
        assert lg.size() == 0
    good = [e.to_bytes() for e in make_events(edge_signers["edge-2"], "edge-2", N)]
    assert logs[0].append(good) == logs[1].append(good) == list(range(N))


def test_a_dead_worker_falls_back_to_threads(
    tmp_path: Path, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    pool = _sigpool.SignaturePool(2)
    assert pool.try_acquire()
    pool.release()
    pool._procs[1].kill()
    pool._procs[1].wait()
    original = _sigpool._shared
    _sigpool._shared = (_sigpool.os.getpid(), pool)
    try:
        lg = _open(tmp_path / "d.db", log_signer, edge_signers, True)
        wire = _events(edge_signers)
        outcomes = lg.append_entries(wire)
        assert [i for i, o in enumerate(outcomes) if not o.accepted] == [70, 201]
        assert not pool.usable  # the dead worker was noticed; later calls use threads
        more = [e.to_bytes() for e in make_events(edge_signers["edge-2"], "edge-2", 100)]
        assert lg.append(more) == list(range(N - 2, N - 2 + 100))
        lg.close()
    finally:
        _sigpool._shared = original
        pool.shutdown()


def test_worker_protocol_round_trip(edge_signers: dict[str, Ed25519Signer]) -> None:
    pool = _sigpool.SignaturePool(1)
    try:
        assert pool.try_acquire()
        wire = _events(edge_signers)[:240]
        vk = edge_signers["edge-1"].verify_key
        w = pool.send([(i, e, vk) for i, e in enumerate(wire)])
        assert w == 0
        assert pool.receive(0) == [
            (70, _sigpool.CODE_OTHER_KEY),
            (201, _sigpool.CODE_BAD_SIGNATURE),
        ]
        assert isinstance(SignedEvent.from_bytes(wire[0]), SignedEvent)
        pool.release()
    finally:
        pool.shutdown()


def test_a_worker_that_never_starts_leaves_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot run the worker (here: one that exits at once) is noticed."""
    monkeypatch.setattr(_sigpool, "_WORKER_CODE", "raise SystemExit(3)")
    pool = _sigpool.SignaturePool(2)
    assert not pool.try_acquire()
    assert not pool.usable
    pool.shutdown()
