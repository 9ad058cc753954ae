"""One aligned range of leaves, checked end to end (private; used by :mod:`.verify`).

:func:`scan_segment` reads the leaves ``[lo, hi)`` in index order with one
raw DB-API query per ``fetch`` rows and, per row: fills gaps (a missing index
is a deleted row, hashed as 32 zero bytes so the tree shape is kept), recomputes
the leaf hash ``SHA-256(0x00 ‖ entry)`` and compares it with the stored one,
checks that the query-index columns match the entry and the origin
signature (:func:`~._entry.make_entry_checker`; signatures only for indices
``>= skip_below``: below, the client's last-seen root binds the entries, but
not the index columns, which are checked on every run), and appends the
recomputed hash to a compact range *local to the segment*.

``lo`` is a multiple of ``2**k`` with ``hi - lo <= 2**k``, so the leaves
``[lo, s)`` for ``lo < s <= hi`` decompose into the same perfect subtrees in
the local range as in the whole tree: the compact range of ``[0, s)`` is the
one of ``[0, lo)`` followed by the local one, and, folding from the right, the
root of ``[0, s)`` is the fold of the prefix peaks followed by the local root
of ``[lo, s)``. The segment reports that local root at each requested size
(the signed tree heads) and its final local peaks; the caller combines them
with the prefix it already has. Segments are independent, so they run in
worker processes (:func:`scan_segment_in_worker`), each reading its own range:
no GIL, no leaf data crossing process boundaries.

This module avoids SQLAlchemy on the SQLite path so that a worker process
starts quickly.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from securemesh.audit._entry import EntryChecker, make_entry_checker
from securemesh.audit._registry import Registry, registry_resolver

__all__ = ["Segment", "Source", "fold_peaks", "scan_segment", "scan_segment_in_worker"]

_ZERO: Final = b"\x00" * 32
_SQL: Final = (
    "SELECT idx, entry, leaf_hash, event_id, origin, kind, subject_type, subject_id, "
    "outcome, time_ms, details FROM audit_leaves WHERE idx >= {p} AND idx < {p} ORDER BY idx"
)

Source = tuple[str, str]
"""``("sqlite", file path)`` or ``("url", SQLAlchemy URL)``: how a worker reaches the log."""


@dataclass(slots=True)
class Segment:
    """What :func:`scan_segment` found in ``[lo, hi)``."""

    lo: int
    hi: int
    findings: list[tuple[int, str]] = field(default_factory=list)
    roots: dict[int, bytes] = field(default_factory=dict)
    """Local root of ``[lo, s)`` for each requested absolute size ``s``."""
    peaks: list[bytes] = field(default_factory=list)
    """Local compact range of ``[lo, hi)`` (largest subtree first)."""
    signatures: int = 0


def fold_peaks(peaks: Sequence[bytes]) -> bytes:
    """Fold perfect-subtree hashes from the right (the RFC 9162 root of a compact range)."""
    acc = peaks[-1]
    sha256 = hashlib.sha256
    for p in reversed(peaks[:-1]):
        acc = sha256(b"\x01" + p + acc).digest()
    return acc


def scan_segment(  # noqa: PLR0917 - hot path, positional
    rows: Iterable[Sequence[Sequence[Any]]],
    lo: int,
    hi: int,
    sizes: Iterable[int],
    check: EntryChecker,
    skip_below: int,
) -> Segment:
    """Check the rows of ``[lo, hi)``: batches of ``(idx, entry, leaf_hash, event_id, *index)``
    (the columns of :data:`_SQL`)."""
    seg = Segment(lo, hi)
    bad = seg.findings
    want = {s - lo for s in sizes if lo < s <= hi}
    roots: dict[int, bytes] = {}
    peaks: list[bytes] = []
    pop = peaks.pop
    push = peaks.append
    sha256 = hashlib.sha256
    n = 0  # local size
    checked = 0

    def add(h: bytes) -> None:  # only for gaps (the hot loop inlines this)
        nonlocal n
        j = n
        while j & 1:
            h = sha256(b"\x01" + pop() + h).digest()
            j >>= 1
        push(h)
        n += 1
        if n in want:
            roots[n + lo] = fold_peaks(peaks)

    for batch in rows:
        for row in batch:
            idx, entry, stored, event_id = row[0], row[1], row[2], row[3]
            if type(entry) is not bytes:
                entry = bytes(entry)  # memoryview from some drivers
            if idx != lo + n:
                if idx < lo + n:  # cannot happen with a primary key; be safe
                    bad.append((idx, "duplicate index"))
                    continue
                while lo + n < idx:
                    bad.append((lo + n, "missing (row deleted)"))
                    add(_ZERO)
            h = sha256(b"\x00" + entry).digest()
            if h != stored:
                bad.append((idx, "stored leaf hash does not match the entry bytes"))
            signature = idx >= skip_below
            checked += signature
            problem = check(entry, event_id, row[4:], signature)
            if problem is not None:
                bad.append((idx, problem))
            j = n
            while j & 1:
                h = sha256(b"\x01" + pop() + h).digest()
                j >>= 1
            push(h)
            n += 1
            if n in want:
                roots[n + lo] = fold_peaks(peaks)
    seg.roots = roots
    seg.peaks = peaks
    seg.signatures = checked
    return seg


def read_rows(cursor: Any, mark: str, lo: int, hi: int, fetch: int) -> Iterator[list[Any]]:
    """Rows of ``[lo, hi)`` in index order, one query per ``fetch`` indices."""
    sql = _SQL.format(p=mark)
    for a in range(lo, hi, fetch):
        cursor.execute(sql, (a, min(a + fetch, hi)))
        rows = cursor.fetchall()
        if rows:
            yield rows


def _open_source(source: Source) -> tuple[Any, str, Callable[[], None]]:
    kind, where = source
    if kind == "sqlite":
        conn = sqlite3.connect(where, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA query_only = 1")
        return conn, "?", conn.close
    from securemesh.audit.store import create_audit_engine, is_sqlite  # noqa: PLC0415

    engine = create_audit_engine(where, pool=False)
    raw = engine.raw_connection()

    def close() -> None:
        raw.close()
        engine.dispose()

    return raw, ("?" if is_sqlite(engine) else "%s"), close


def scan_segment_in_worker(  # noqa: PLR0917 - submitted positionally to a process pool
    source: Source,
    lo: int,
    hi: int,
    sizes: list[int],
    registry: Registry,
    skip_below: int,
    fetch: int,
) -> Segment:
    """Worker process entry point: :func:`scan_segment` over its own connection.

    ``registry`` is the origin key history as plain data (:mod:`._registry`).
    """
    resolve = registry_resolver(registry)
    conn, mark, close = _open_source(source)
    try:
        cur = conn.cursor()
        seg = scan_segment(
            read_rows(cur, mark, lo, hi, fetch),
            lo,
            hi,
            sizes,
            make_entry_checker(resolve),
            skip_below,
        )
        cur.close()
        if source[0] != "sqlite":
            conn.rollback()
    finally:
        close()
    return seg
