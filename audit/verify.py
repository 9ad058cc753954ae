"""Full verification of a stored audit log (``securemesh audit verify``).

Theory of operation
-------------------
The verifier trusts three things only: the log's public key (checkpoint
signatures), the origin nodes' verify keys (the ``audit_origins`` registry or
a caller's resolver), and the *last checkpoint this client saw* (a small local
state file). Everything else in the database — leaves, hashes, tree nodes,
tree heads, the sequencer row — is treated as possibly tampered with.

One pass over the leaves, in index order, in batches (bounded memory):

1. **Per entry.** The stored ``leaf_hash`` must equal SHA-256(0x00 ‖ entry)
   (RFC 9162 §2.1.1); the entry must decode, name a known origin and carry a
   valid Ed25519 signature by it. Signature checks run on a small thread pool
   (pynacl releases the GIL inside libsodium, so two threads use both cores).
   Indices must be contiguous from 0: a missing index is a deleted row.
2. **Per signed tree head.** The recomputed leaf hashes feed a compact range;
   at each stored head's size the recomputed root must equal the head's root,
   and the head's note must be a valid checkpoint by the log key for exactly
   that ``(size, root)``.
3. **Localisation.** When a head's root does not match, the entries between
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
from securemesh.audit._entry import make_fast_verifier
from securemesh.audit.checkpoint import open_checkpoint
from securemesh.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    inclusion_proof_plan,
    peak_ids,
    verify_inclusion,
)
from securemesh.audit.query import leaf_batches
from securemesh.audit.store import create_audit_engine, read_transaction
from securemesh.errors import (
    LocalError,
    LogIntegrityError,
    ProofError,
    SecureMeshError,
    UnknownOrigin,
)

__all__ = [
    "LastSeen",
    "VerifyReport",
    "load_last_seen",
    "save_last_seen",
    "verify_log",
]

_FETCH: Final = 8192
_SIG_CHUNK: Final = 1024
_MAX_STATE_FILE: Final = 64 * 1024
_PROCESS_THRESHOLD: Final = 100_000
_PROCESS_RANGE: Final = 25_000


def _process_count(
    processes: int | None, key_resolver: Callable[[str], bytes] | None, to_check: int
) -> int:
    if key_resolver is not None:  # a caller's resolver cannot cross a process boundary
        return 0
    if processes is not None:
        return max(0, processes)
    return (os.cpu_count() or 1) if to_check >= _PROCESS_THRESHOLD else 0


def _verify_range(url: str, lo: int, hi: int, registry: dict[str, bytes]) -> list[tuple[int, str]]:
    """Worker process: check the origin signatures of leaves ``[lo, hi)``."""

    def resolve(origin: str) -> bytes:
        try:
            return registry[origin]
        except KeyError:
            raise UnknownOrigin(f"origin {origin!r} is not registered") from None

    check = make_fast_verifier(resolve)
    engine = create_audit_engine(url, pool=False)
    bad: list[tuple[int, str]] = []
    try:
        for batch in _stream_leaves(engine, _FETCH, lo=lo, hi=hi):
            bad.extend(check(batch))
    finally:
        engine.dispose()
    return bad


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


def verify_log(  # noqa: PLR0912, PLR0915 - one pass, steps numbered in the docstring
    engine: Engine,
    *,
    log_verify_key: bytes,
    log_origin: str,
    key_name: str | None = None,
    key_resolver: Callable[[str], bytes] | None = None,
    last_seen: LastSeen | None = None,
    threads: int = 2,
    fetch_batch: int = _FETCH,
    recheck_signatures: bool = False,
    processes: int | None = None,
) -> VerifyReport:
    """Verify the whole log stored behind ``engine``; see the module docstring.

    ``key_resolver`` defaults to the database's origin registry. Signatures are
    checked on ``threads`` threads, or — by default for logs of at least
    100,000 entries checked against the registry — in ``processes`` worker
    processes (default: one per core) that read their own index ranges. With a
    ``last_seen`` checkpoint, origin signatures of the entries below its size
    were checked by this client before and are not checked again (unless
    ``recheck_signatures``): the recomputed root at that size must equal the
    root this client saw, which binds every one of those entries. Raises
    :class:`~securemesh.errors.LogIntegrityError` (``.entries`` = tampered
    leaf indices) on any finding.
    """
    kname = key_name if key_name is not None else log_origin
    findings = _Findings()
    nodes = _NodeReader(engine)

    with read_transaction(engine) as conn:
        registry = {
            str(r[0]): bytes(r[1])
            for r in conn.execute(select(s.origins.c.node_id, s.origins.c.verify_key))
        }
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
    max_idx = -1 if top is None else int(top)

    # --- tree heads: signatures first (a head we cannot trust checks nothing)
    heads: list[_Head] = []
    for r in head_rows:
        size, root, note = int(r[0]), bytes(r[1]), bytes(r[2])
        try:
            cp = open_checkpoint(note, key_name=kname, verify_key=log_verify_key, origin=log_origin)
        except SecureMeshError:
            findings.problem(f"tree head of size {size}: checkpoint signature does not verify")
            continue
        if cp.size != size or cp.root_hash != root:
            findings.problem(f"tree head of size {size}: row does not match its signed checkpoint")
            continue
        heads.append(_Head(size, root, note))
    latest = heads[-1] if heads else None

    def resolve(origin: str) -> bytes:
        if key_resolver is not None:
            return key_resolver(origin)
        try:
            return registry[origin]
        except KeyError:
            raise UnknownOrigin(f"origin {origin!r} is not registered") from None

    check_sigs = make_fast_verifier(resolve)

    # --- one streaming pass over the leaves
    cr = _Acc()
    head_iter = iter(heads)
    next_head = next(head_iter, None)
    range_start = 0
    range_hashes: dict[int, bytes] = {}
    expected = 0
    signatures = 0
    sha256 = hashlib.sha256
    pending: list[Future[list[tuple[int, str]]]] = []
    skip_below = 0 if (last_seen is None or recheck_signatures) else last_seen.size
    root_at_seen: bytes | None = None

    def drain(limit: int) -> None:
        while len(pending) > limit:
            for idx, why in pending.pop(0).result():
                findings.entry(idx, why)

    def close_heads_upto(size: int) -> None:
        nonlocal next_head, range_start, cr
        while next_head is not None and next_head.size <= size:
            h = next_head
            if cr.size == h.size and cr.root() != h.root:
                drain(0)  # signature findings first: they make localisation exact
                _localise(nodes, h, range_start, range_hashes, findings)
                resynced = _resync(nodes, h)
                if resynced is None:
                    findings.problem(
                        f"stored tree nodes at size {h.size} do not fold to its signed root"
                    )
                else:
                    cr = resynced
            range_hashes.clear()
            range_start = h.size
            next_head = next(head_iter, None)

    def push(index: int, h: bytes) -> None:
        nonlocal root_at_seen
        cr.append(h)
        range_hashes[index] = h
        if last_seen is not None and cr.size == last_seen.size:
            root_at_seen = cr.root()
        close_heads_upto(cr.size)

    n_procs = _process_count(processes, key_resolver, max_idx + 1 - skip_below)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, threads)))
        if n_procs:
            # Large logs: signature checks in worker processes that read their
            # own index ranges (no GIL to share); this process only hashes.
            procs = stack.enter_context(
                ProcessPoolExecutor(max_workers=n_procs, mp_context=mp.get_context("spawn"))
            )
            url = engine.url.render_as_string(hide_password=False)
            for lo in range(skip_below, max_idx + 1, _PROCESS_RANGE):
                hi = min(lo + _PROCESS_RANGE, max_idx + 1)
                pending.append(procs.submit(_verify_range, url, lo, hi, registry))
                signatures += hi - lo
        for rows in _stream_leaves(engine, fetch_batch):
            if not n_procs:
                to_check = (
                    rows if rows[0][0] >= skip_below else [r for r in rows if r[0] >= skip_below]
                )
                for lo in range(0, len(to_check), _SIG_CHUNK):
                    pending.append(pool.submit(check_sigs, to_check[lo : lo + _SIG_CHUNK]))
                    signatures += min(_SIG_CHUNK, len(to_check) - lo)
            for idx, entry, stored, _ in rows:
                while expected < idx:  # a gap: deleted row(s)
                    findings.entry(expected, "missing (row deleted)")
                    push(expected, b"\x00" * HASH_SIZE)
                    expected += 1
                if idx < expected:  # cannot happen with a primary key; be safe
                    findings.entry(idx, "duplicate index")
                    continue
                h = sha256(b"\x00" + entry).digest()
                if h != stored:
                    findings.entry(idx, "stored leaf hash does not match the entry bytes")
                push(idx, h)
                expected += 1
            if not n_procs:
                drain(8)
        drain(0)

    size = expected
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
    close_heads_upto(size)
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
            if last_seen.size > 0 and root_at_seen not in (None, last_seen.root):
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
