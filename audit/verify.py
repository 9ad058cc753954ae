"""Full verification of a stored audit log (``securemesh audit verify``).

Theory of operation
-------------------
The verifier trusts three things only: the log's public key (checkpoint
signatures), the origin nodes' verify keys (every key each node has had, in
the ``audit_origins`` registry, or a caller's ``resolve(origin, key id)``),
and the *last checkpoint this client saw* (a small local state file).
Everything else in the database — leaves, hashes, tree nodes,
tree heads, the sequencer row — is treated as possibly tampered with.

The leaves are checked in aligned *segments* ``[k·S, (k+1)·S)`` (``S`` a
power of two, 8,192 by default), each read and checked by a worker — a process
per core for large logs, else a thread — that returns only its findings and
subtree roots (:mod:`._scan`); this process folds them together in index order
(bounded memory, no leaf data crossing process boundaries):

1. **Per entry** (in the worker). The stored ``leaf_hash`` must equal
   SHA-256(0x00 ‖ entry) (RFC 9162 §2.1.1); the entry must decode, name a
   known origin and carry a valid Ed25519 signature over the exact stored
   bytes by the key of that origin its key id names. The row's query-index
   columns (origin, kind, subject, outcome, time, details) must say what the
   entry says — for every row, also below the last-seen size, since the
   signed root binds the entries but not the columns (an edited column would
   forge a query answer or hide an event from a filter). Indices must be
   contiguous from 0: a missing index is a deleted row.
2. **Per signed tree head.** Each head's note must be a valid checkpoint by
   the log key for exactly that ``(size, root)`` (checked here while the
   workers run), and the recomputed root at that size must equal the head's
   root. A segment starting at a multiple of its size is a perfect subtree,
   so the root at a size ``s`` inside it is the fold of the peaks before the
   segment with the segment's own root of ``[k·S, s)``, which the worker
   reports for every stored head size.
3. **Localisation.** When a head's root does not match, the segment is
   walked again here leaf by leaf, and the entries between
   the previous good head and this one are checked one by one: each
   recomputed leaf hash must be provably included (RFC 9162 §2.1.3) in the
   *signed* root, with the proof read from the stored tree nodes (a table
   apart from the leaves, level 0 included, so a moved or rewritten leaf row
   does not spoil its neighbours' proofs). A proof
   that verifies against a signed root is sound whatever the database says,
   so exactly the entries that fail are reported (a changed byte, a swapped
   or reordered row, a deleted row). The compact range is then resynchronised
   to the signed state from the stored peaks, checked to fold to the signed
   root, so one tampered entry does not condemn every later one.
4. **Against the client's last-seen checkpoint.** The latest head may not be
   smaller than it (rollback) nor have a different root at the same size
   (fork), and the recomputed root at its size must equal it. On success the
   latest checkpoint becomes the new last-seen state.

Any finding raises :class:`~securemesh.errors.LogIntegrityError` whose
``entries`` are the tampered leaf indices; success returns a
:class:`VerifyReport`.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from securemesh.audit import _schema as s
from securemesh.audit._entry import make_entry_checker
from securemesh.audit._registry import load_registry, registry_resolver
from securemesh.audit._scan import (
    Segment,
    Source,
    fold_peaks,
    read_rows,
    scan_segment,
    scan_segment_in_worker,
)
from securemesh.audit.checkpoint import open_checkpoint
from securemesh.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    inclusion_proof_plan,
    peak_ids,
    verify_inclusion,
)
from securemesh.audit.query import leaf_batches
from securemesh.audit.store import is_sqlite, read_transaction
from securemesh.errors import (
    LocalError,
    LogIntegrityError,
    ProofError,
    SecureMeshError,
)

__all__ = [
    "LastSeen",
    "VerifyReport",
    "load_last_seen",
    "save_last_seen",
    "verify_log",
]

_FETCH: Final = 8192
_MAX_STATE_FILE: Final = 64 * 1024
_PROCESS_THRESHOLD: Final = 100_000
_SEGMENT: Final = 1 << 13


def _process_count(
    processes: int | None, key_resolver: Callable[[str, bytes], bytes] | None, total: int
) -> int:
    if key_resolver is not None:  # a caller's resolver cannot cross a process boundary
        return 0
    if processes is not None:
        return max(0, processes)
    return (os.cpu_count() or 1) if total >= _PROCESS_THRESHOLD else 0


def _source_of(engine: Engine) -> Source:
    """How a worker process reaches the database behind ``engine``."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        return ("sqlite", url.database)
    return ("url", url.render_as_string(hide_password=False))


def _scan_here(  # noqa: PLR0917 - the worker's arguments, positionally
    engine: Engine,
    lo: int,
    hi: int,
    sizes: list[int],
    resolve: Callable[[str, bytes], bytes],
    skip_below: int,
    fetch: int,
) -> Segment:
    """:func:`~._scan.scan_segment` on a pooled connection of this process (thread path)."""
    check = make_entry_checker(resolve)  # one per thread (see make_entry_checker)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        mark = "?" if is_sqlite(engine) else "%s"
        seg = scan_segment(read_rows(cur, mark, lo, hi, fetch), lo, hi, sizes, check, skip_below)
        cur.close()
        if not is_sqlite(engine):
            raw.rollback()
    finally:
        raw.close()
    return seg


@dataclass(frozen=True, slots=True)
class LastSeen:
    """The client-side record of the last checkpoint it verified."""

    origin: str
    size: int
    root: bytes
    note: bytes


@dataclass(slots=True)
class VerifyReport:
    """What a successful verification covered."""

    size: int
    root: bytes
    heads_checked: int
    signatures_checked: int
    latest_note: bytes | None
    warnings: list[str] = field(default_factory=list)


def load_last_seen(path: str | Path) -> LastSeen | None:
    """Read the client's last-seen checkpoint file, or None if there is none yet."""
    p = Path(path)
    if not p.exists():
        return None
    raw = p.read_bytes()
    if len(raw) > _MAX_STATE_FILE:
        raise LocalError(f"{p} is too large to be a last-seen checkpoint file")
    try:
        doc = json.loads(raw)
        state = LastSeen(
            origin=str(doc["origin"]),
            size=int(doc["size"]),
            root=bytes.fromhex(doc["root"]),
            note=base64.b64decode(doc["note"], validate=True),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalError(f"{p} is not a valid last-seen checkpoint file") from exc
    if state.size < 0 or len(state.root) != HASH_SIZE:
        raise LocalError(f"{p} is not a valid last-seen checkpoint file")
    return state


def save_last_seen(path: str | Path, state: LastSeen) -> None:
    """Atomically replace the last-seen checkpoint file (write, fsync, rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "origin": state.origin,
        "size": state.size,
        "root": state.root.hex(),
        "note": base64.b64encode(state.note).decode("ascii"),
    }
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


@dataclass(frozen=True, slots=True)
class _Head:
    size: int
    root: bytes
    note: bytes


class _Findings:
    def __init__(self) -> None:
        self.entries: set[int] = set()
        self.problems: list[str] = []

    def entry(self, index: int, why: str) -> None:
        if index not in self.entries and len(self.problems) < 1000:
            self.problems.append(f"entry {index}: {why}")
        self.entries.add(index)

    def problem(self, why: str) -> None:
        if len(self.problems) < 1000:
            self.problems.append(why)


def _stream_leaves(
    engine: Engine, batch: int, *, lo: int = 0, hi: int | None = None
) -> Iterator[Sequence[tuple[int, bytes, bytes, str]]]:
    """``(idx, entry, leaf_hash, event_id)`` of leaves ``[lo, hi)``, ``batch`` rows at a time."""
    c = s.leaves.c
    for rows in leaf_batches(engine, c.entry, c.leaf_hash, c.event_id, batch=batch, lo=lo, hi=hi):
        yield [(int(r[0]), bytes(r[1]), bytes(r[2]), str(r[3])) for r in rows]


class _NodeReader:
    """Stored perfect-subtree hashes (``audit_tree_nodes``, level 0 included)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def fetch(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        got: dict[tuple[int, int], bytes] = {}
        by_level: dict[int, list[int]] = {}
        for lvl, i in wanted:
            by_level.setdefault(lvl, []).append(i)
        with read_transaction(self._engine) as conn:
            for lvl, idxs in sorted(by_level.items()):
                idxs.sort()
                for at in range(0, len(idxs), 500):
                    for r in conn.execute(
                        select(s.tree_nodes.c.idx, s.tree_nodes.c.hash).where(
                            s.tree_nodes.c.level == lvl,
                            s.tree_nodes.c.idx.in_(idxs[at : at + 500]),
                        )
                    ):
                        got[(lvl, int(r[0]))] = bytes(r[1])
        return got


def _fold(peaks: Sequence[bytes]) -> bytes:
    if not peaks:
        return EMPTY_ROOT
    acc = peaks[-1]
    for p in reversed(peaks[:-1]):
        acc = hashlib.sha256(b"\x01" + p + acc).digest()
    return acc


def _localise(
    nodes: _NodeReader,
    head: _Head,
    start: int,
    hashes: dict[int, bytes],
    findings: _Findings,
) -> None:
    """Check each recomputed leaf hash in [start, head.size) by inclusion in the signed root."""
    plans = {i: inclusion_proof_plan(i, head.size) for i in hashes}
    wanted = {(n.level, n.index) for plan in plans.values() for g in plan for n in g}
    got = nodes.fetch(wanted)
    for i in range(start, head.size):
        h = hashes.get(i)
        if h is None or i in findings.entries:
            continue  # missing or already found tampered
        try:
            proof = []
            for group in plans[i]:
                proof.append(_fold([got[(n.level, n.index)] for n in group]))
            verify_inclusion(h, i, head.size, proof, head.root)
        except (KeyError, ProofError):
            findings.entry(i, f"not included in the signed tree head of size {head.size}")


class _Acc:
    """The compact range of :class:`~securemesh.audit.merkle.CompactRange`, inlined.

    The verifier appends a million leaf hashes; creating ``Node`` objects for
    each merge (which only the sequencer needs) would dominate its main thread.
    """

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: list[bytes] | None = None) -> None:
        self.size = size
        self.peaks: list[bytes] = peaks if peaks is not None else []

    def append(self, h: bytes) -> None:
        j = self.size
        peaks = self.peaks
        while j & 1:
            h = hashlib.sha256(b"\x01" + peaks.pop() + h).digest()
            j >>= 1
        peaks.append(h)
        self.size += 1

    def add_subtree(self, h: bytes, level: int) -> None:
        """Append the root of a perfect subtree of ``2**level`` leaves (size aligned to it)."""
        j = self.size >> level
        peaks = self.peaks
        while j & 1:
            h = hashlib.sha256(b"\x01" + peaks.pop() + h).digest()
            j >>= 1
        peaks.append(h)
        self.size += 1 << level

    def root(self) -> bytes:
        return _fold(self.peaks)


def _resync(nodes: _NodeReader, head: _Head) -> _Acc | None:
    """The compact range at ``head.size`` from stored peaks, if they fold to the signed root."""
    ids = peak_ids(head.size)
    got = nodes.fetch({(n.level, n.index) for n in ids})
    try:
        peaks = [got[(n.level, n.index)] for n in ids]
    except KeyError:
        return None
    if _fold(peaks) != head.root:
        return None
    return _Acc(head.size, peaks)


class _Combine:
    """Joins segment results, in index order, into the whole tree's compact range.

    Fast path (:meth:`take_segment`): the root at each signed head inside the
    segment is the fold of the prefix peaks and the segment's local root there.
    If one does not match, :meth:`replay` re-reads the leaves from the last good
    head on and walks them one by one, localising the tampered entries by
    inclusion in the signed roots and resynchronising from the stored peaks
    (steps 2-3 of the module docstring).
    """

    def __init__(
        self,
        nodes: _NodeReader,
        heads: list[_Head],
        findings: _Findings,
        last_seen: LastSeen | None,
    ) -> None:
        self.acc = _Acc()
        self._nodes = nodes
        self._heads = heads
        self._next = 0  # heads[_next] is the first head not yet checked
        self._range_start = 0  # size of the last head checked
        self._findings = findings
        self._seen = last_seen.size if last_seen is not None else None
        self.root_at_seen: bytes | None = None

    def _heads_upto(self, size: int) -> list[_Head]:
        j = self._next
        while j < len(self._heads) and self._heads[j].size <= size:
            j += 1
        return self._heads[self._next : j]

    def take_segment(self, seg: Segment) -> bool:
        """Absorb a segment if every signed head inside it matches; False otherwise."""
        prefix = self.acc.peaks
        inside = self._heads_upto(seg.hi)
        for h in inside:
            if fold_peaks([*prefix, seg.roots[h.size]]) != h.root:
                return False
        if self._seen is not None and seg.lo < self._seen <= seg.hi:
            self.root_at_seen = fold_peaks([*prefix, seg.roots[self._seen]])
        width = seg.hi - seg.lo  # its set bits are the local peaks' levels, largest first
        levels = [lvl for lvl in range(width.bit_length() - 1, -1, -1) if width >> lvl & 1]
        for lvl, peak in zip(levels, seg.peaks, strict=True):
            self.acc.add_subtree(peak, lvl)
        if inside:
            self._next += len(inside)
            self._range_start = inside[-1].size
        return True

    def replay(self, engine: Engine, lo: int, hi: int, fetch: int) -> None:
        """Walk ``[last good head, hi)`` leaf by leaf (only after a mismatch)."""
        hashes: dict[int, bytes] = {}
        sha256 = hashlib.sha256
        expected = lo
        for rows in _stream_leaves(engine, fetch, lo=self._range_start, hi=hi):
            for idx, entry, _, _ in rows:
                h = sha256(b"\x00" + entry).digest()
                if idx < lo:
                    hashes[idx] = h  # already in the compact range
                    continue
                while expected < idx:  # a gap (already reported by the segment)
                    self._push(expected, b"\x00" * HASH_SIZE, hashes)
                    expected += 1
                self._push(idx, h, hashes)
                expected += 1
        while expected < hi:  # cannot happen: the segment ends at a stored row
            self._push(expected, b"\x00" * HASH_SIZE, hashes)
            expected += 1

    def _push(self, index: int, h: bytes, hashes: dict[int, bytes]) -> None:
        self.acc.append(h)
        hashes[index] = h
        size = self.acc.size
        if self._seen is not None and size == self._seen:
            self.root_at_seen = self.acc.root()
        while self._next < len(self._heads) and self._heads[self._next].size <= size:
            head = self._heads[self._next]
            if self.acc.size == head.size and self.acc.root() != head.root:
                _localise(self._nodes, head, self._range_start, hashes, self._findings)
                resynced = _resync(self._nodes, head)
                if resynced is None:
                    self._findings.problem(
                        f"stored tree nodes at size {head.size} do not fold to its signed root"
                    )
                else:
                    self.acc = resynced
            hashes.clear()
            self._range_start = head.size
            self._next += 1


def verify_log(  # noqa: PLR0912, PLR0915 - one pass, steps numbered in the docstring
    engine: Engine,
    *,
    log_verify_key: bytes,
    log_origin: str,
    key_name: str | None = None,
    key_resolver: Callable[[str, bytes], bytes] | None = None,
    last_seen: LastSeen | None = None,
    threads: int = 2,
    fetch_batch: int = _FETCH,
    recheck_signatures: bool = False,
    processes: int | None = None,
    segment_size: int = _SEGMENT,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify the whole log stored behind ``engine``; see the module docstring.

    ``key_resolver(origin, key id) -> verify key`` defaults to the database's
    origin registry (every key each node ever registered). The leaves
    are checked in aligned segments of ``segment_size`` (a power of two)
    entries, on ``threads`` threads, or — by default for logs of at least
    100,000 entries checked against the registry — in ``processes`` worker
    processes (default: one per core) that read their own segments and return
    only findings and subtree roots. With a ``last_seen`` checkpoint, origin
    signatures of the entries below its size were checked by this client
    before and are not checked again (unless ``recheck_signatures``): the
    recomputed root at that size must equal the root this client saw, which
    binds every one of those entries. ``progress(entries done, total)`` is
    called after each segment is combined (``audit verify``'s progress bar). Raises
    :class:`~securemesh.errors.LogIntegrityError` (``.entries`` = tampered
    leaf indices) on any finding.
    """
    if segment_size < 1 or segment_size & (segment_size - 1):
        raise LocalError("segment_size must be a power of two")
    kname = key_name if key_name is not None else log_origin
    findings = _Findings()
    nodes = _NodeReader(engine)

    with read_transaction(engine) as conn:
        registry = load_registry(conn)
        head_rows = conn.execute(
            select(s.tree_heads.c.size, s.tree_heads.c.root, s.tree_heads.c.note).order_by(
                s.tree_heads.c.size
            )
        ).all()
        seq = conn.execute(
            select(s.sequencer.c.size, s.sequencer.c.root).where(
                s.sequencer.c.id == s.SEQUENCER_ROW_ID
            )
        ).one_or_none()
        top = conn.execute(select(func.max(s.leaves.c.idx))).scalar_one_or_none()
        # Segments cover [0, max]; a row moved below 0 is named here.
        for (neg,) in conn.execute(select(s.leaves.c.idx).where(s.leaves.c.idx < 0).limit(1000)):
            findings.entry(int(neg), "index out of range (negative)")
    total = 0 if top is None or int(top) < 0 else int(top) + 1
    skip_below = 0 if (last_seen is None or recheck_signatures) else last_seen.size

    resolve = key_resolver if key_resolver is not None else registry_resolver(registry)

    # Sizes whose recomputed roots are needed: every stored head (checked or
    # not yet) and the client's last-seen size.
    wanted = {int(r[0]) for r in head_rows}
    if last_seen is not None:
        wanted.add(last_seen.size)
    wanted_sizes = sorted(wanted)
    segments = [(lo, min(lo + segment_size, total)) for lo in range(0, total, segment_size)]

    def sizes_in(lo: int, hi: int) -> list[int]:
        right = bisect.bisect_right
        return wanted_sizes[right(wanted_sizes, lo) : right(wanted_sizes, hi)]

    n_procs = _process_count(processes, key_resolver, total)
    with contextlib.ExitStack() as stack:
        futures: list[Future[Segment]] = []
        if n_procs:
            # Large logs: each worker process reads and checks its own segments
            # (no GIL to share); this process only combines subtree roots.
            procs = stack.enter_context(
                ProcessPoolExecutor(max_workers=n_procs, mp_context=mp.get_context("spawn"))
            )
            source = _source_of(engine)
            for lo, hi in segments:
                futures.append(
                    procs.submit(
                        scan_segment_in_worker,
                        source,
                        lo,
                        hi,
                        sizes_in(lo, hi),
                        registry,
                        skip_below,
                        fetch_batch,
                    )
                )
        else:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, threads)))
            for lo, hi in segments:
                futures.append(
                    pool.submit(
                        _scan_here,
                        engine,
                        lo,
                        hi,
                        sizes_in(lo, hi),
                        resolve,
                        skip_below,
                        fetch_batch,
                    )
                )

        # --- tree heads: signatures (a head we cannot trust checks nothing),
        # checked here while the segments are scanned
        heads: list[_Head] = []
        for r in head_rows:
            hsize, hroot, note = int(r[0]), bytes(r[1]), bytes(r[2])
            try:
                cp = open_checkpoint(
                    note, key_name=kname, verify_key=log_verify_key, origin=log_origin
                )
            except SecureMeshError:
                findings.problem(f"tree head of size {hsize}: checkpoint signature does not verify")
                continue
            if cp.size != hsize or cp.root_hash != hroot:
                findings.problem(
                    f"tree head of size {hsize}: row does not match its signed checkpoint"
                )
                continue
            heads.append(_Head(hsize, hroot, note))
        latest = heads[-1] if heads else None

        # --- combine the segments in index order
        state = _Combine(nodes, heads, findings, last_seen)
        signatures = 0
        for (lo, hi), fut in zip(segments, futures, strict=True):
            seg = fut.result()
            signatures += seg.signatures
            for idx, why in seg.findings:
                findings.entry(idx, why)
            if not state.take_segment(seg):
                state.replay(engine, lo, hi, fetch_batch)
            if progress is not None:
                progress(hi, total)

    cr = state.acc
    size = total
    # rows past the last signed head: never covered by a checkpoint
    if latest is not None and size > latest.size:
        for i in range(latest.size, size):
            findings.entry(i, "not covered by any signed tree head")
    if latest is None and size > 0:
        for i in range(size):
            findings.entry(i, "not covered by any signed tree head")
    if latest is not None and latest.size > size:
        for i in range(size, latest.size):
            findings.entry(i, "missing (the signed tree head is larger than the stored log)")
    root = cr.root()
    if seq is not None and (int(seq[0]) != size or bytes(seq[1]) != root):
        findings.problem("the sequencer state does not match the stored leaves")

    if last_seen is not None:
        if last_seen.origin != log_origin:
            findings.problem(f"last-seen checkpoint is for log {last_seen.origin!r}")
        cur = latest.size if latest is not None else 0
        if cur < last_seen.size:
            findings.problem(
                f"rollback: the log's latest signed size {cur} is smaller than the "
                f"{last_seen.size} this client saw"
            )
            for i in range(max(size, cur), last_seen.size):
                findings.entry(i, "rolled back (seen by this client, no longer in the log)")
        else:
            at = next((h for h in heads if h.size == last_seen.size), None)
            if at is None and last_seen.size > 0:
                findings.problem(f"no signed tree head at the last-seen size {last_seen.size}")
            elif at is not None and at.root != last_seen.root:
                findings.problem(
                    f"fork: the signed root at size {last_seen.size} differs from the one "
                    "this client saw"
                )
            if last_seen.size > 0 and state.root_at_seen not in (None, last_seen.root):
                findings.problem(
                    f"the entries below size {last_seen.size} no longer hash to the root "
                    "this client saw"
                )

    if findings.entries or findings.problems:
        listed = sorted(findings.entries)
        shown = ", ".join(map(str, listed[:50])) + (" …" if len(listed) > 50 else "")
        msg = "audit log verification failed"
        if listed:
            msg += f"; tampered entries: {shown}"
        msg += "\n  " + "\n  ".join(findings.problems[:50])
        raise LogIntegrityError(msg, entries=listed)
    return VerifyReport(
        size=size,
        root=root,
        heads_checked=len(heads),
        signatures_checked=signatures,
        latest_note=latest.note if latest is not None else None,
    )
