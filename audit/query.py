"""Querying the audit log's projection (``securemesh audit query / tail / export``).

Theory of operation
-------------------
The columns ``origin, kind, subject_type, subject_id, outcome, time_ms,
details`` of ``audit_leaves`` are a *projection* of the signed entries, made
at append time for indexed queries. They only *find* rows; what is returned
comes from the signed entry: every hit is checked (:mod:`._hits`, in the same
read transaction) — entry decodes, index columns equal the entry's fields,
origin signature, leaf hash included in the latest tree head, signed by the
log key when ``log_key`` is given — and a hit that fails raises
:class:`~securemesh.errors.LogIntegrityError` instead of being shown. An
event hidden from a filter by an edited column cannot be seen by a query;
``audit verify`` compares every row's columns with its entry and names it.
:func:`rebuild_index` recomputes the columns from the entries (after a
restore, or when ``audit verify`` flags the index).

Filters map to indexed SQL predicates; ``FIELD=VALUE`` filters on event
details are pre-filtered in SQL (``LIKE``) and then matched exactly in
Python on the decoded details, so pagination scans forward by leaf index and
the cursor is simply the last index scanned (stable, since the log is
append-only).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from securemesh.audit import _schema as s
from securemesh.audit._entry import decode_entry, projection
from securemesh.audit._hits import HIT_COLUMNS, HitChecker
from securemesh.audit.events import AuditEvent
from securemesh.audit.store import read_transaction, write_transaction
from securemesh.errors import LocalError

__all__ = [
    "MAX_LIMIT",
    "QueryFilter",
    "QueryPage",
    "QueryRow",
    "decode_cursor",
    "encode_cursor",
    "parse_field_filters",
    "parse_time",
    "query",
    "rebuild_index",
    "rows_after",
]

MAX_LIMIT: Final = 10_000
_SCAN: Final = 1000
_RELATIVE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """What to look for; ``None`` means "any"."""

    origin: str | None = None
    kind: str | None = None
    subject: str | None = None  # "type:id" or just "id"
    outcome: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    text: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueryRow:
    index: int
    event_id: str
    origin: str
    kind: str
    subject_type: str
    subject_id: str
    outcome: str
    time_ms: int
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The exact machine format of ``--format json/jsonl``."""
        return {
            "index": self.index,
            "event_id": self.event_id,
            "time": _iso(self.time_ms),
            "time_ms": self.time_ms,
            "origin": self.origin,
            "kind": self.kind,
            "subject": {"type": self.subject_type, "id": self.subject_id},
            "outcome": self.outcome,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class QueryPage:
    rows: list[QueryRow]
    next_cursor: str | None


def _iso(ms: int) -> str:
    """ISO 8601 UTC with ``Z`` (the CLI's one time format, securemesh.cli._common.iso_utc)."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_time(text: str, *, now: float) -> int:
    """ISO 8601 (``2026-11-25T10:00:00Z``, date only allowed) or relative (``90s, 15m, 1h, 2d,
    1w`` before ``now``); returns Unix milliseconds."""
    t = text.strip()
    m = _RELATIVE.match(t)
    if m:
        return int((now - int(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    try:
        parsed = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise LocalError(f"cannot read time {text!r}: use ISO 8601 or e.g. 15m, 1h, 2d") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def parse_field_filters(items: list[str]) -> dict[str, str]:
    """``["peer=edge-1", "reason=bad_auth"]`` -> ``{"peer": "edge-1", ...}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _FIELD.match(name):
            raise LocalError(f"expected FIELD=VALUE, got {item!r}")
        out[name] = value
    return out


def encode_cursor(index: int) -> str:
    return f"i{index}"


def decode_cursor(cursor: str) -> int:
    if not re.fullmatch(r"i\d{1,19}", cursor):
        raise LocalError(f"bad cursor {cursor!r}")
    return int(cursor[1:])


def _predicates(f: QueryFilter) -> list[ColumnElement[bool]]:
    c = s.leaves.c
    preds: list[ColumnElement[bool]] = []
    if f.origin is not None:
        preds.append(c.origin == f.origin)
    if f.kind is not None:
        preds.append(c.kind == f.kind)
    if f.subject is not None:
        stype, sep, sid = f.subject.partition(":")
        if sep:
            preds.append(c.subject_type == stype)
            preds.append(c.subject_id == sid)
        else:
            preds.append(c.subject_id == f.subject)
    if f.outcome is not None:
        preds.append(c.outcome == f.outcome)
    if f.since_ms is not None:
        preds.append(c.time_ms >= f.since_ms)
    if f.until_ms is not None:
        preds.append(c.time_ms < f.until_ms)
    if f.text:
        pat = f"%{_escape_like(f.text)}%"
        preds.append(
            or_(
                c.details.ilike(pat, escape="\\"),
                c.subject_id.ilike(pat, escape="\\"),
                c.kind.ilike(pat, escape="\\"),
                c.origin.ilike(pat, escape="\\"),
                c.outcome.ilike(pat, escape="\\"),
            )
        )
    for name in f.fields:
        preds.append(c.details.like(f'%"{_escape_like(name)}"%', escape="\\"))
    return preds


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _field_match(details: Mapping[str, Any], fields: Mapping[str, str]) -> bool:
    for name, want in fields.items():
        cur: Any = details
        for part in name.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return False
            cur = cur[part]
        got = cur if isinstance(cur, str) else json.dumps(cur)
        if got != want:
            return False
    return True


def _row(index: int, event: AuditEvent) -> QueryRow:
    return QueryRow(
        index=index,
        event_id=event.event_id,
        origin=event.origin,
        kind=str(event.kind),
        subject_type=str(event.subject.type.value),
        subject_id=event.subject.id,
        outcome=str(event.outcome.value),
        time_ms=event.time_ms,
        details=dict(event.details),
    )


def _checked_rows(
    engine: Engine,
    preds: Sequence[ColumnElement[bool]],
    after: int,
    limit: int,
    log_key: tuple[str, bytes] | None,
) -> list[QueryRow]:
    """Up to ``limit`` rows with index > ``after`` matching ``preds``, each checked (module doc)."""
    c = s.leaves.c
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(*(c[name] for name in HIT_COLUMNS))
            .where(c.idx > after, *preds)
            .order_by(c.idx)
            .limit(limit)
        ).all()
        if not rows:
            return []
        events = HitChecker(conn, log_key=log_key).check(rows)
    return [_row(int(r[0]), ev) for r, ev in zip(rows, events, strict=True)]


def query(
    engine: Engine,
    flt: QueryFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    log_key: tuple[str, bytes] | None = None,
) -> QueryPage:
    """Matching rows in log order after ``cursor``; ``next_cursor`` is None at the end.

    Every row is checked against its signed entry and the tree before it is
    returned (module doc); ``log_key = (name, verify key)`` binds that check
    to the log's signed checkpoint.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise LocalError(f"limit must be in 1..{MAX_LIMIT}")
    after = -1 if cursor is None else decode_cursor(cursor)
    preds = _predicates(flt)
    out: list[QueryRow] = []
    while len(out) < limit:
        # every row read is checked (a signature each): read only what can be shown
        want = _SCAN if flt.fields else min(_SCAN, limit - len(out))
        rows = _checked_rows(engine, preds, after, want, log_key)
        if not rows:
            return QueryPage(out, None)
        for row in rows:
            after = row.index
            if flt.fields and not _field_match(row.details, flt.fields):
                continue
            out.append(row)
            if len(out) == limit:
                break
        if len(rows) < want and len(out) < limit:
            return QueryPage(out, None)
    return QueryPage(out, encode_cursor(after))


def rows_after(
    engine: Engine,
    after: int,
    *,
    limit: int = 1000,
    log_key: tuple[str, bytes] | None = None,
) -> list[QueryRow]:
    """Rows with index > ``after`` in log order (``audit tail``), each checked like a query hit."""
    return _checked_rows(engine, [], after, limit, log_key)


def leaf_batches(
    engine: Engine,
    *columns: ColumnElement[Any],
    batch: int,
    lo: int = 0,
    hi: int | None = None,
) -> Iterator[Sequence[Sequence[Any]]]:
    """Rows ``(idx, *columns)`` of the leaves with ``lo <= idx < hi``, in index order.

    Keyset pagination: each batch is one short read transaction asking for the
    next ``batch`` rows after the last index seen, so a long scan neither holds
    a transaction open nor slows down with an OFFSET. Not in ``__all__``: shared
    by :func:`iter_entries` and :mod:`securemesh.audit.verify`.
    """
    after = lo - 1
    bounds = [] if hi is None else [s.leaves.c.idx < hi]
    while True:
        with read_transaction(engine) as conn:
            rows = conn.execute(
                select(s.leaves.c.idx, *columns)
                .where(s.leaves.c.idx > after, *bounds)
                .order_by(s.leaves.c.idx)
                .limit(batch)
            ).all()
        if not rows:
            return
        yield rows
        after = int(rows[-1][0])


def iter_entries(engine: Engine, *, batch: int = 1000) -> Iterator[tuple[int, bytes]]:
    """``(index, entry bytes)`` for every leaf in order (export, rebuild)."""
    for rows in leaf_batches(engine, s.leaves.c.entry, batch=batch):
        for r in rows:
            yield int(r[0]), bytes(r[1])


def rebuild_index(engine: Engine, *, batch: int = 1000) -> int:
    """Recompute the query projection of every leaf from its entry; return rows fixed."""
    fixed = 0
    c = s.leaves.c
    buf: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        nonlocal fixed
        if not buf:
            return
        with write_transaction(engine) as conn:
            for idx, values in buf:
                res = conn.execute(update(s.leaves).where(c.idx == idx).values(**values))
                fixed += res.rowcount
        buf.clear()

    for idx, entry in iter_entries(engine, batch=batch):
        buf.append((idx, projection(decode_entry(entry).signed.unverified_event())))
        if len(buf) >= batch:
            flush()
    flush()
    return fixed
