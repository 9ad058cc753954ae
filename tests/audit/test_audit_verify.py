"""``verify_log``: a clean log verifies; every kind of tampering is found and named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from audit_log_helpers import make_events
from sqlalchemy import delete, select, update

from securemesh.audit import _schema as s
from securemesh.audit._registry import registry_resolver
from securemesh.audit.events import event_key_id
from securemesh.audit.log import AuditLog
from securemesh.audit.verify import (
    LastSeen,
    load_last_seen,
    save_last_seen,
    verify_log,
)
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import LocalError, LogIntegrityError

N = 600


@pytest.fixture
def log(populated_log: AuditLog) -> AuditLog:
    return populated_log


def _verify(log: AuditLog, log_signer: Ed25519Signer, last_seen: LastSeen | None = None) -> None:
    """Verify twice: the whole log as one segment, and in aligned segments of 64.

    Heads are at 100, 356 and 600, so with segments of 64 heads fall inside
    segments, signed ranges straddle segment boundaries and tampering at
    63/64, 255/256 … crosses them. Both must reach the same verdict.
    """
    results: list[LogIntegrityError | None] = []
    for opts in ({}, {"segment_size": 64}):
        try:
            verify_log(
                log.engine,
                log_verify_key=log_signer.verify_key,
                log_origin=log.origin,
                last_seen=last_seen,
                fetch_batch=48,
                **opts,
            )
            results.append(None)
        except LogIntegrityError as exc:
            results.append(exc)
    whole, segmented = results
    assert (whole is None) == (segmented is None)
    if whole is not None:
        assert segmented is not None
        assert whole.entries == segmented.entries
        raise whole


def _tampered(
    log: AuditLog, log_signer: Ed25519Signer, last_seen: LastSeen | None = None
) -> list[int]:
    with pytest.raises(LogIntegrityError) as info:
        _verify(log, log_signer, last_seen)
    return info.value.entries


def _sql(log: AuditLog, stmt: object) -> None:
    with log.engine.begin() as conn:
        conn.execute(stmt)  # type: ignore[call-overload]


def _substitute(log: AuditLog, index: int, entry: bytes) -> None:
    """Replace the stored entry at ``index`` and its leaf hash, consistently."""
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    _sql(log, update(s.leaves).where(s.leaves.c.idx == index).values(entry=entry, leaf_hash=leaf))


def test_clean_log_verifies_and_reports(log: AuditLog, log_signer: Ed25519Signer) -> None:
    report = verify_log(log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin)
    assert report.size == N
    assert report.signatures_checked == N
    assert report.heads_checked == 3  # 100, then batches of at most 256: 356, 600
    assert report.latest_note == log.latest_checkpoint()


@pytest.mark.parametrize("index", [0, 1, 255, 300, N - 1])
def test_changed_byte_in_entry_is_named(
    log: AuditLog, log_signer: Ed25519Signer, index: int
) -> None:
    entry = bytearray(log.get_entry(index))
    entry[-10] ^= 0x01
    _sql(log, update(s.leaves).where(s.leaves.c.idx == index).values(entry=bytes(entry)))
    assert _tampered(log, log_signer) == [index]


def test_changed_entry_with_recomputed_leaf_hash_is_named(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    entry = bytearray(log.get_entry(42))
    entry[-3] ^= 0x20
    new = bytes(entry)
    _substitute(log, 42, new)
    assert _tampered(log, log_signer) == [42]


def test_substituted_validly_signed_event_is_named(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    # a genuine edge-1 event that was never appended, swapped in at index 7
    other = make_events(edge_signers["edge-1"], "edge-1", 1, start=10_000)[0].to_bytes()
    _substitute(log, 7, other)
    assert _tampered(log, log_signer) == [7]


def test_substituted_event_with_all_columns_rewritten_is_named(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    # a careful operator also rewrites the event id and leaf hash columns
    ev = make_events(edge_signers["edge-1"], "edge-1", 1, start=10_001)[0]
    other = ev.to_bytes()
    _sql(
        log,
        update(s.leaves)
        .where(s.leaves.c.idx == 7)
        .values(
            entry=other,
            leaf_hash=hashlib.sha256(b"\x00" + other).digest(),
            event_id=ev.unverified_event().event_id,
        ),
    )
    assert _tampered(log, log_signer) == [7]


def test_changed_leaf_hash_is_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 500).values(leaf_hash=b"\x11" * 32))
    assert _tampered(log, log_signer) == [500]


@pytest.mark.parametrize("index", [0, 99, 100, 350, N - 1])
def test_deleted_row_is_named(log: AuditLog, log_signer: Ed25519Signer, index: int) -> None:
    _sql(log, delete(s.leaves).where(s.leaves.c.idx == index))
    assert _tampered(log, log_signer) == [index]


def test_reordered_rows_are_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 10).values(idx=-1))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 400).values(idx=10))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == -1).values(idx=400))
    assert _tampered(log, log_signer) == [10, 400]


def test_adjacent_swap_is_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 200).values(idx=-1))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 201).values(idx=200))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == -1).values(idx=201))
    assert _tampered(log, log_signer) == [200, 201]


def test_forged_tree_head_is_reported(log: AuditLog, log_signer: Ed25519Signer) -> None:
    with log.engine.connect() as conn:
        note = conn.execute(
            select(s.tree_heads.c.note).where(s.tree_heads.c.size == 100)
        ).scalar_one()
    forged = bytes(note)[:-6] + b"AAAA=\n"
    _sql(log, update(s.tree_heads).where(s.tree_heads.c.size == 100).values(note=forged))
    with pytest.raises(LogIntegrityError, match="size 100"):
        _verify(log, log_signer)


def test_unsigned_extra_row_is_named(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    extra = make_events(edge_signers["edge-2"], "edge-2", 1, start=9_999)[0].to_bytes()
    row = {
        "idx": N,
        "event_id": "f" * 32,
        "entry": extra,
        "leaf_hash": hashlib.sha256(b"\x00" + extra).digest(),
        "origin": "edge-2",
        "kind": "object.put",
        "subject_type": "object",
        "subject_id": "x",
        "outcome": "success",
        "time_ms": 0,
        "details": "{}",
    }
    _sql(log, s.leaves.insert().values(**row))
    assert _tampered(log, log_signer) == [N]


def test_rollback_is_refused_with_client_state(
    log: AuditLog, log_signer: Ed25519Signer, tmp_path: Path
) -> None:
    state_file = tmp_path / "last-seen.json"
    head = log.latest_tree_head()
    assert head is not None
    save_last_seen(state_file, LastSeen(log.origin, head.size, head.root, head.note))
    seen = load_last_seen(state_file)
    assert seen is not None
    _verify(log, log_signer, seen)
    # the operator rolls the database back to the consistent tree of size 356
    old = log.tree_head(356)
    with log.engine.begin() as conn:
        conn.execute(delete(s.leaves).where(s.leaves.c.idx >= 356))
        conn.execute(delete(s.tree_heads).where(s.tree_heads.c.size > 356))
        conn.execute(update(s.sequencer).values(size=356, root=old.root, frontier=_peaks(log, 356)))
    _verify(log, log_signer)  # a client that never saw more cannot tell ...
    entries = _tampered(log, log_signer, seen)  # ... but this one can
    assert entries == list(range(356, N))


def test_fork_at_same_size_is_refused(log: AuditLog, log_signer: Ed25519Signer) -> None:
    head = log.latest_tree_head()
    assert head is not None
    seen = LastSeen(log.origin, head.size, b"\x00" * 32, head.note)
    with pytest.raises(LogIntegrityError, match="fork"):
        _verify(log, log_signer, seen)


def test_wrong_log_key_fails(log: AuditLog) -> None:
    with pytest.raises(LogIntegrityError):
        verify_log(
            log.engine,
            log_verify_key=Ed25519Signer.from_seed(b"X" * 32).verify_key,
            log_origin=log.origin,
        )


def test_unregistered_origin_entries_are_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, delete(s.origins).where(s.origins.c.node_id == "edge-2"))
    assert _tampered(log, log_signer) == list(range(N // 2, N))


def test_last_seen_file_is_validated(tmp_path: Path) -> None:
    p = tmp_path / "seen.json"
    assert load_last_seen(p) is None
    p.write_text("{not json")
    with pytest.raises(LocalError):
        load_last_seen(p)
    p.write_bytes(b"x" * 100_000)
    with pytest.raises(LocalError):
        load_last_seen(p)


def _peaks(log: AuditLog, size: int) -> bytes:
    from securemesh.audit.merkle import peak_ids

    out = []
    with log.engine.connect() as conn:
        for n in peak_ids(size):
            q = select(s.tree_nodes.c.hash).where(
                s.tree_nodes.c.level == n.level, s.tree_nodes.c.idx == n.index
            )
            out.append(bytes(conn.execute(q).scalar_one()))
    return b"".join(out)


def test_incremental_verify_still_catches_old_entries(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    head = log.latest_tree_head()
    assert head is not None
    seen = LastSeen(log.origin, head.size, head.root, head.note)
    report = verify_log(
        log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin, last_seen=seen
    )
    assert report.signatures_checked == 0  # all below the last-seen size
    entry = bytearray(log.get_entry(12))
    entry[-3] ^= 0x20  # invalidates the origin signature ...
    new = bytes(entry)
    _sql(  # ... and the leaf hash is rewritten to match
        log,
        update(s.leaves)
        .where(s.leaves.c.idx == 12)
        .values(entry=new, leaf_hash=hashlib.sha256(b"\x00" + new).digest()),
    )
    assert _tampered(log, log_signer, seen) == [12]
    with pytest.raises(LogIntegrityError, match="entry 12: event does not decode"):
        verify_log(
            log.engine,
            log_verify_key=log_signer.verify_key,
            log_origin=log.origin,
            last_seen=seen,
            recheck_signatures=True,
        )


@pytest.mark.slow
def test_worker_processes_find_the_same_entries(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    """The multi-process signature path (used for large logs) names the same entries."""
    forged = make_events(edge_signers["edge-2"], "edge-1", 1, start=20_000)[0].to_bytes()
    _substitute(log, 333, forged)
    with pytest.raises(LogIntegrityError) as info:
        verify_log(
            log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin, processes=2
        )
    assert info.value.entries == [333]
    assert "entry is not the event this row was appended for" in str(info.value)


@pytest.mark.parametrize("index", [63, 64, 127, 128, 255, 256])
def test_segment_boundary_tampering_is_named(
    log: AuditLog, log_signer: Ed25519Signer, index: int
) -> None:
    entry = bytearray(log.get_entry(index))
    entry[-10] ^= 0x01
    _sql(log, update(s.leaves).where(s.leaves.c.idx == index).values(entry=bytes(entry)))
    _sql(log, delete(s.leaves).where(s.leaves.c.idx == index + 1))
    assert _tampered(log, log_signer) == [index, index + 1]


def test_swap_across_a_segment_boundary_is_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 127).values(idx=-1))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 128).values(idx=127))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == -1).values(idx=128))
    assert _tampered(log, log_signer) == [127, 128]


def test_segment_size_must_be_a_power_of_two(log: AuditLog, log_signer: Ed25519Signer) -> None:
    with pytest.raises(LocalError, match="power of two"):
        verify_log(
            log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin, segment_size=48
        )


@pytest.mark.slow
def test_worker_processes_name_tampering_across_segments(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    """Worker processes, segments of 64: every kind of finding, the exact entries named."""
    forged = make_events(edge_signers["edge-2"], "edge-1", 1, start=20_000)[0].to_bytes()
    _substitute(log, 64, forged)
    entry = bytearray(log.get_entry(99))
    entry[-10] ^= 0x01
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 99).values(entry=bytes(entry)))
    _sql(log, delete(s.leaves).where(s.leaves.c.idx == 320))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 383).values(idx=-1))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 384).values(idx=383))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == -1).values(idx=384))
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 599).values(leaf_hash=b"\x11" * 32))
    with pytest.raises(LogIntegrityError) as info:
        verify_log(
            log.engine,
            log_verify_key=log_signer.verify_key,
            log_origin=log.origin,
            processes=2,
            segment_size=64,
            fetch_batch=40,
        )
    assert info.value.entries == [64, 99, 320, 383, 384, 599]
    assert "entry 64: entry is not the event this row was appended for" in str(info.value)
    assert "entry 320: missing (row deleted)" in str(info.value)


@pytest.mark.slow
def test_worker_processes_verify_a_clean_log_like_one_pass(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    head = log.latest_tree_head()
    assert head is not None
    one = verify_log(log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin)
    many = verify_log(
        log.engine,
        log_verify_key=log_signer.verify_key,
        log_origin=log.origin,
        processes=2,
        segment_size=32,
    )
    assert (many.size, many.root, many.heads_checked) == (one.size, one.root, one.heads_checked)
    assert many.root == head.root
    assert many.signatures_checked == N
    seen = LastSeen(log.origin, 356, log.tree_head(356).root, log.tree_head(356).note)
    inc = verify_log(
        log.engine,
        log_verify_key=log_signer.verify_key,
        log_origin=log.origin,
        processes=2,
        segment_size=32,
        last_seen=seen,
    )
    assert inc.signatures_checked == N - 356
    bad = LastSeen(log.origin, 356, b"\x01" * 32, seen.note)
    with pytest.raises(LogIntegrityError, match="no longer hash to the root"):
        verify_log(
            log.engine,
            log_verify_key=log_signer.verify_key,
            log_origin=log.origin,
            processes=2,
            segment_size=32,
            last_seen=bad,
        )


def test_row_moved_below_zero_is_named(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _sql(log, update(s.leaves).where(s.leaves.c.idx == 5).values(idx=-3))
    assert _tampered(log, log_signer) == [-3, 5]


def test_entries_under_each_registered_key_verify_and_a_dropped_key_is_named(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    """edge-1 re-enrolled: its old and new entries verify; a registry without the
    new key (or a caller's resolver that does not know it) names exactly those."""
    new = Ed25519Signer.from_seed(b"N" * 32)
    log.register_node("edge-1", new.verify_key)
    log.append(make_events(new, "edge-1", 50, start=N))
    _verify(log, log_signer)
    registry = {
        "edge-1": {event_key_id(new.verify_key): new.verify_key},  # the old key is not known
        "edge-2": log.registered_keys("edge-2"),
    }
    with pytest.raises(LogIntegrityError) as info:
        verify_log(
            log.engine,
            log_verify_key=log_signer.verify_key,
            log_origin=log.origin,
            key_resolver=registry_resolver(registry),
        )
    assert info.value.entries == list(range(N // 2))
    assert "signed by a key that is not the origin's" in str(info.value)
    _sql(
        log,
        delete(s.origins).where(
            (s.origins.c.node_id == "edge-1") & (s.origins.c.verify_key == new.verify_key)
        ),
    )
    assert _tampered(log, log_signer) == list(range(N, N + 50))
