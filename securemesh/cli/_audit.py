"""``securemesh audit``: query, tail, show, verify, prove and export the audit log.

A thin shell over :mod:`securemesh.audit.admin`, :mod:`securemesh.audit.query`
and :mod:`securemesh.audit.verify`, following the shared conventions of
:mod:`securemesh.cli._common` (one ``error:`` line, ``--format``,
``--data-dir``, ISO 8601 UTC times with ``Z``, ``-S/-U``).

**Where the log is.** ``--db URL`` (a SQLite file or a PostgreSQL URL); else,
when ``--data-dir`` is not given, ``$SECUREMESH_AUDIT_DB``; else the data
dir's ``node.toml`` ``[audit] log_db`` (a cloud node's configuration); else
``<data dir>/audit.db``. The data dir is ``--data-dir`` (on ``audit`` or on
the subcommand), ``$SECUREMESH_DATA_DIR`` or ``~/.local/share/securemesh``,
as for the other command groups. The log key file is ``--log-key-file``, else
``node.toml`` ``[audit] log_key``, else ``<data dir>/audit-log.key``.

**Read commands never create.** ``query``, ``tail``, ``show``, ``verify``,
``prove``, ``export``, ``info`` and ``list-nodes`` open the log read-only
(:func:`securemesh.audit.log.open_log` ``read_only=True``): a missing log is
``error: no audit log at PATH``. Only ``init-log``, ``register-node``,
``append`` and ``rebuild-index`` create or change it.

**Verification never passes vacuously.** ``audit verify`` of an empty log
fails unless ``--allow-empty``; a ``--log-key`` that signed none of the
log's checkpoints is named as the wrong key (``checkpoints are signed by key
id X, not by the given key Y``), not reported as tampering.

**The log key is encrypted** (the key store of
:mod:`securemesh.crypto.keystore`); the commands that use it (``init-log``,
``append``, ``rewrap-log-key``) read its passphrase from
``$SECUREMESH_PASSPHRASE`` (``--passphrase-env``) or the terminal; a plain key
file written by an older release is still read, and ``rewrap-log-key``
encrypts it in place.

Commands that check signatures need the log's public key: ``--log-key`` takes
a verifier string (``<name>+<id>+<base64>``) or a file holding one; by default
the ``.pub`` file written by ``audit init-log`` next to the log key is used.

Exit codes: 0 success; 1 an error (for ``audit verify``: the log is tampered,
and the message names the entries); 2 usage.
"""

# Library modules (SQLAlchemy, the node config) are imported inside each command
# so that `securemesh --help` and the other command groups stay fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from securemesh.cli._common import (
    CliError,
    Progress,
    accept_relative_times,
    data_dir_given,
    data_dir_options,
    format_options,
    iso_utc,
    os_error,
    parse_time_arg,
    passphrase_options,
    print_record,
    print_records,
    read_passphrase,
    resolve_data_dir,
    time_range_options,
)
from securemesh.crypto import keystore
from securemesh.errors import LocalError, SecureMeshError

if TYPE_CHECKING:
    from securemesh.audit.log import AuditLog
    from securemesh.audit.query import QueryFilter, QueryRow

__all__ = ["register"]

_DB_ENV: Final = "SECUREMESH_AUDIT_DB"  # = securemesh.audit.paths.DB_ENV (a slow import)
_LOG_DB_FILE: Final = "audit.db"
_LOG_KEY_FILE: Final = "audit-log.key"
_STATE_FILE: Final = "audit-last-seen.json"
_EVENT_ID: Final = re.compile(r"[0-9a-f]{32}")
_MAX_LINE: Final = 64 * 1024  # an `audit append` input line (an event is at most ~8 KiB)

Command = Callable[[argparse.Namespace], int]

#: Argon2id cost of new and re-wrapped log key files (tests lower it to UNSAFE_FAST_PARAMS).
_KDF_PARAMS: keystore.KdfParams = keystore.DEFAULT_PARAMS


# ------------------------------------------------------------------ plumbing


def _guarded(cmd: Command) -> Command:
    """Every failure of an audit command becomes one ``error:`` line (no traceback).

    Our own mistakes (LocalError) lose their class name; an OSError names the
    file; a database driver error is reduced to its one-line reason. Errors
    about the log's *content* (RemoteError: tampering, bad proofs) pass as they
    are, class name included.
    """

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except CliError:
            raise
        except LocalError as exc:
            raise CliError(str(exc)) from exc
        except SecureMeshError:
            raise
        except OSError as exc:
            raise os_error(exc) from exc
        except Exception as exc:
            sa = sys.modules.get("sqlalchemy.exc")
            if sa is None or not isinstance(exc, sa.SQLAlchemyError):
                raise
            from securemesh.audit.store import db_error_reason

            raise CliError(f"audit database error: {db_error_reason(exc)}") from exc

    return run


@dataclass(frozen=True, slots=True)
class _Where:
    """Where the audit log and its key are (module docstring)."""

    data_dir: Path
    db: str
    log_key_file: Path


def _node_toml_audit(data_dir: Path) -> tuple[str | None, str | None]:
    """``[audit] log_db, log_key`` of the data dir's ``node.toml`` (how the daemon finds them)."""
    toml = data_dir / "node.toml"
    if not toml.is_file():
        return None, None
    from securemesh.node import load_config

    audit = load_config(toml).audit
    return audit.log_db, audit.log_key


def _where(args: argparse.Namespace) -> _Where:
    data_dir = resolve_data_dir(args)
    db: str | None = args.db
    key: str | None = args.log_key_file
    if db is None and not data_dir_given(args):
        db = os.environ.get(_DB_ENV) or None
    if db is None or key is None:
        cfg_db, cfg_key = _node_toml_audit(data_dir)
        db = db or cfg_db or str(data_dir / _LOG_DB_FILE)
        key = key or cfg_key or str(data_dir / _LOG_KEY_FILE)
    if not db:
        raise CliError("--db is empty")
    return _Where(data_dir, db, Path(key))


def _open_read(args: argparse.Namespace) -> AuditLog:
    """The log, read-only: nothing is created or migrated (module docstring)."""
    from securemesh.audit.log import open_log

    return open_log(_where(args).db, read_only=True)


def _open_write(args: argparse.Namespace, *, signer: bool = False) -> AuditLog:
    from securemesh.audit.admin import load_log_key, log_key_is_encrypted
    from securemesh.audit.log import open_log

    where = _where(args)
    if signer:
        passphrase = None
        if log_key_is_encrypted(where.log_key_file):  # a plain (older) key file needs none
            passphrase = read_passphrase(args.passphrase_env, confirm=False)
        key = load_log_key(where.log_key_file, passphrase)
        return open_log(where.db, signer=key.signer, origin=key.name)
    return open_log(where.db)


def _log_key(args: argparse.Namespace) -> tuple[str, bytes]:
    from securemesh.audit.admin import load_verifier

    if args.log_key:
        return load_verifier(args.log_key)
    pub = Path(str(_where(args).log_key_file) + ".pub")
    if not pub.is_file():
        raise CliError(
            f"no log public key: pass --log-key VERIFIERKEY ({pub}, written by "
            "audit init-log, is not there)"
        )
    return load_verifier(str(pub))


def _log_key_if_any(args: argparse.Namespace) -> tuple[str, bytes] | None:
    """The log's public key for checking query hits, if given or beside the log key file."""
    if args.log_key or Path(str(_where(args).log_key_file) + ".pub").exists():
        return _log_key(args)
    return None


def _check_key_signs(log: AuditLog, key: tuple[str, bytes], *, every_head: bool) -> None:
    """Refuse a log key that signed none of the log's checkpoints, naming both keys.

    A wrong ``--log-key`` would otherwise make every checkpoint look forged.
    If the given key signed any checkpoint, verification proper runs (and
    reports any that it did not sign as tampered).
    """
    from securemesh.audit.checkpoint import key_id, note_signers

    name, vk = key
    want = (name, key_id(name, vk))
    heads = list(log.tree_heads()) if every_head else [h for h in [log.latest_tree_head()] if h]
    others: dict[tuple[str, bytes], None] = {}
    for head in heads:
        try:
            signers = note_signers(head.note)
        except SecureMeshError:
            continue  # malformed: verification proper reports it
        if want in signers:
            return
        others.update(dict.fromkeys(signers))
    if not others:
        return
    found = ", ".join(f"{kid.hex()} ({n})" for n, kid in others)
    raise CliError(
        f"checkpoints are signed by key id {found}, not by the given key {want[1].hex()} "
        f"({name}): give this log's key (its audit-log.key.pub); if that is the key given, "
        "every checkpoint was re-signed and the log must be treated as tampered"
    )


def _open_out(path: str) -> IO[str]:
    """``--out FILE`` opened for writing (``-`` is standard output)."""
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise os_error(exc, "write") from exc


def _check_out(path: str) -> None:
    """Fail before any work if ``--out FILE`` cannot be created (its directory is missing)."""
    if path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise CliError(f"cannot write {path}: it is a directory")
    if not target.parent.is_dir():
        raise CliError(f"cannot write {path}: no directory {target.parent}")


def _write_out(path: str, data: str) -> None:
    out = _open_out(path)
    try:
        out.write(data)
    finally:
        if out is not sys.stdout:
            out.close()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


# ------------------------------------------------------------------ records


def _row_doc(row: QueryRow) -> dict[str, Any]:
    return row.to_json()


_ROW_COLUMNS: Final = (
    ("INDEX", lambda d: str(d["index"])),
    ("TIME (UTC)", lambda d: d["time"]),
    ("ORIGIN", lambda d: d["origin"]),
    ("KIND", lambda d: d["kind"]),
    ("SUBJECT", lambda d: f"{d['subject']['type']}:{d['subject']['id']}"),
    ("OUTCOME", lambda d: d["outcome"]),
    ("DETAILS", lambda d: d["details"]),
)


def _print_rows(rows: list[QueryRow], fmt: str) -> None:
    print_records([_row_doc(r) for r in rows], fmt, columns=_ROW_COLUMNS)


def _filters(args: argparse.Namespace) -> QueryFilter:
    from securemesh.audit.query import QueryFilter, parse_field_filters

    now = time.time()
    return QueryFilter(
        origin=args.node,
        kind=args.kind,
        subject=args.subject,
        outcome=args.outcome,
        since_ms=_ms(parse_time_arg(args.since, now=now)) if args.since else None,
        until_ms=_ms(parse_time_arg(args.until, now=now)) if args.until else None,
        text=args.text,
        fields=parse_field_filters(args.fields),
    )


# ------------------------------------------------------------------ commands


def _cmd_init_log(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import create_log_key
    from securemesh.audit.log import open_log

    where = _where(args)
    passphrase = read_passphrase(args.passphrase_env, confirm=True)
    key = create_log_key(
        where.log_key_file,
        passphrase=passphrase,
        name=args.origin,
        force=args.force,
        params=_KDF_PARAMS,
    )
    open_log(where.db).close()
    print(
        f"wrote {where.log_key_file} (secret, encrypted) and {where.log_key_file}.pub",
        file=sys.stderr,
    )
    print(key.verifier)
    return 0


def _cmd_rewrap_log_key(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import load_log_key, log_key_is_encrypted, rewrap_log_key

    key_file = _where(args).log_key_file
    if not log_key_is_encrypted(key_file):
        passphrase = read_passphrase(args.passphrase_env, confirm=True)
        key = rewrap_log_key(key_file, passphrase, params=_KDF_PARAMS)
        print(f"encrypted the log key {key_file}", file=sys.stderr)
    else:
        passphrase = read_passphrase(args.passphrase_env, confirm=False)
        key = load_log_key(key_file, passphrase)
        print(f"the log key {key_file} is already encrypted", file=sys.stderr)
    print(key.verifier)
    return 0


def _cmd_register_node(args: argparse.Namespace) -> int:
    from securemesh.audit.events import event_key_id

    key = _verify_key_arg(args.verify_key, "verify key")
    with _open_write(args) as log:
        added = log.register_node(args.node_id, key)
    state = "registered" if added else "already registered"
    print(f"{state}: {args.node_id} key id {event_key_id(key).hex()}", file=sys.stderr)
    return 0


def _verify_key_arg(text: str, what: str) -> bytes:
    """An Ed25519 verify key as hex, base64 or unpadded base64url (what ``keys show`` prints)."""
    t = text.strip()
    key: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", t):
        key = bytes.fromhex(t)
    elif re.fullmatch(r"[A-Za-z0-9+/_-]{43}=?", t):
        try:
            key = base64.urlsafe_b64decode(t.replace("+", "-").replace("/", "_").rstrip("=") + "=")
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise CliError(
            f"{what} {text!r} is not an Ed25519 verify key: give 64 hex digits or base64 "
            "(as `securemesh keys show` prints it)"
        )
    return key


def _cmd_list_nodes(args: argparse.Namespace) -> int:
    from securemesh.audit.events import event_key_id

    with _open_read(args) as log:
        nodes = log.registered_nodes()
    rows = [
        {"node_id": node, "key_id": event_key_id(vk).hex(), "verify_key": vk.hex()}
        for node in sorted(nodes)
        for vk in nodes[node]
    ]
    print_records(
        rows,
        args.format,
        columns=(
            ("NODE", lambda d: d["node_id"]),
            ("KEY ID", lambda d: d["key_id"]),
            ("VERIFY KEY", lambda d: d["verify_key"]),
        ),
    )
    return 0


def _append_lines(name: str) -> Iterator[bytes]:
    """Signed events from ``name`` (``-`` = stdin): base64 lines or ``audit export`` lines."""
    try:
        f = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise os_error(exc, "read") from exc
    label = "standard input" if name == "-" else name
    try:
        for number, raw in enumerate(iter(lambda: f.readline(_MAX_LINE + 1), ""), start=1):
            if len(raw) > _MAX_LINE:
                raise CliError(f"{label} line {number}: longer than {_MAX_LINE} bytes")
            line = raw.strip()
            if not line:
                continue
            try:
                if line.startswith("{"):
                    doc = json.loads(line)
                    line = str(doc["entry"]) if isinstance(doc, dict) else ""
                yield base64.b64decode(line, validate=True)
            except (ValueError, KeyError) as exc:  # binascii.Error and JSON errors too
                raise CliError(
                    f"{label} line {number}: not a base64 signed event nor a line of `audit export`"
                ) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{label}: not UTF-8 text") from exc
    finally:
        if f is not sys.stdin:
            f.close()


def _cmd_append(args: argparse.Namespace) -> int:
    entries: list[bytes] = []
    for name in args.files:
        entries.extend(_append_lines(name))
    with _open_write(args, signer=True) as log:
        indices = log.append(entries)
    for i in indices:
        print(i)
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from securemesh.audit.query import query

    flt = _filters(args)
    log_key = _log_key_if_any(args)  # every hit is checked against its leaf and the log's head
    with _open_read(args) as log:
        page = query(log.engine, flt, limit=args.limit, cursor=args.cursor, log_key=log_key)
    _print_rows(page.rows, args.format)
    if page.next_cursor is not None:
        print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _scan(
    log: AuditLog,
    flt: QueryFilter,
    after: int,
    *,
    keep: int | None = None,
    log_key: tuple[str, bytes] | None = None,
) -> tuple[list[QueryRow], int]:
    """Rows matching ``flt`` after index ``after`` (only the last ``keep``, if given);
    and the last index scanned."""
    from securemesh.audit.query import MAX_LIMIT, decode_cursor, encode_cursor, query

    size = log.size()  # rows below it are committed: a scan to the end sees them all
    rows: collections.deque[QueryRow] = collections.deque(maxlen=keep)
    last = after
    cursor = None if after < 0 else encode_cursor(after)
    while True:
        page = query(log.engine, flt, limit=MAX_LIMIT, cursor=cursor, log_key=log_key)
        rows.extend(page.rows)
        if page.rows:
            last = max(last, page.rows[-1].index)
        if page.next_cursor is None:
            return list(rows), max(last, size - 1)
        cursor = page.next_cursor
        last = max(last, decode_cursor(cursor))


def _last_matching(
    log: AuditLog, flt: QueryFilter, n: int, log_key: tuple[str, bytes] | None
) -> tuple[list[QueryRow], int]:
    """The newest ``n`` rows matching ``flt`` (windows from the end, growing 4x)."""
    if n == 0:
        return [], log.size() - 1
    size = log.size()
    window = max(4 * n, 256)
    while True:
        start = max(0, size - window)
        rows, last = _scan(log, flt, start - 1, keep=n, log_key=log_key)
        if len(rows) >= n or start == 0:
            return rows, last
        window *= 4


def _cmd_tail(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise CliError("-n/--lines must be 0 or more")
    if args.interval <= 0:
        raise CliError("--interval must be positive")
    flt = _filters(args)
    # following prints a record per line as it comes: JSON is JSON lines then
    fmt = "jsonl" if args.follow and args.format == "json" else args.format
    log_key = _log_key_if_any(args)  # every hit is checked against its leaf and the log's head
    with _open_read(args) as log:
        rows, after = _last_matching(log, flt, args.lines, log_key)
        _print_rows(rows, fmt)
        while args.follow:
            sys.stdout.flush()
            time.sleep(args.interval)
            rows, after = _scan(log, flt, after, log_key=log_key)
            if rows:
                _print_rows(rows, fmt)
    return 0


def _target_index(log: AuditLog, target: str) -> int:
    """A leaf index or a 32-hex-digit event id, as a leaf index (or a clear error)."""
    t = target.strip().lower()
    if re.fullmatch(r"[0-9]{1,19}", t):
        index = int(t)
        size = log.size()
        if index >= size:
            raise CliError(f"no leaf {index} (log size {size})")
        return index
    if _EVENT_ID.fullmatch(t):
        found = log.index_of(t)
        if found is None:
            raise CliError(f"no event {t} in the log (log size {log.size()})")
        return found
    raise CliError(f"expected a leaf index or a 32-hex-digit event id, got {target!r}")


def _cmd_show(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import show_entry

    with _open_read(args) as log:
        index = _target_index(log, args.target)
        key = _log_key(args)
        _check_key_signs(log, key, every_head=False)
        shown = show_entry(log, index, log_key=key)
    doc = shown.to_json()
    doc["time"] = iso_utc(doc["event"]["time_ms"] / 1000)
    ev = doc["event"]
    print_record(
        doc,
        args.format,
        fields=(
            ("index", lambda d: str(d["index"])),
            ("event id", lambda _: ev["event_id"]),
            ("time (UTC)", lambda d: d["time"]),
            ("origin", lambda _: ev["origin"]),
            ("kind", lambda _: ev["kind"]),
            ("subject", lambda _: f"{ev['subject']['type']}:{ev['subject']['id']}"),
            ("outcome", lambda _: ev["outcome"]),
            ("details", lambda _: json.dumps(ev["details"], sort_keys=True)),
            ("origin signature", lambda _: "verified"),
            ("leaf hash", lambda d: d["leaf_hash"]),
            ("inclusion", lambda d: f"verified in signed tree of size {d['tree_size']}"),
            ("root", lambda d: d["root"]),
        ),
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import verify_stored_log
    from securemesh.audit.store import describe_url

    where = _where(args)
    state = None if args.no_state else (args.state or where.data_dir / _STATE_FILE)
    t0 = time.perf_counter()
    with _open_read(args) as log:
        key = _log_key(args)
        _check_key_signs(log, key, every_head=True)
        progress = Progress("verify", force=args.progress)
        try:
            report = verify_stored_log(
                log, log_key=key, state_path=state, full=args.full, progress=progress
            )
        finally:
            progress.close()
    if report.size == 0 and not args.allow_empty:
        raise CliError(
            f"the audit log at {describe_url(where.db)} is empty: nothing was verified "
            "(pass --allow-empty to accept an empty log)"
        )
    dt = time.perf_counter() - t0
    doc = {
        "ok": True,
        "log": describe_url(where.db),
        "size": report.size,
        "root": report.root.hex(),
        "tree_heads_checked": report.heads_checked,
        "signatures_checked": report.signatures_checked,
        "seconds": round(dt, 3),
    }
    if args.format in {"json", "jsonl"}:
        print_record(doc, args.format)
    else:
        print(
            f"OK: {report.size} entries, {report.signatures_checked} origin signatures, "
            f"{report.heads_checked} signed tree heads verified in {dt:.1f}s; "
            f"root {report.root.hex()}"
        )
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    if (args.target is None) == (args.consistency is None):
        raise CliError("give an entry (INDEX or EVENT_ID) or --consistency OLD NEW, not both")
    _check_out(args.out)
    with _open_read(args) as log:
        key = _log_key(args)
        _check_key_signs(log, key, every_head=args.consistency is not None)
        if args.consistency is not None:
            text = _consistency_doc(log, key, *args.consistency)
            what = f"consistency of tree sizes {args.consistency[0]} and {args.consistency[1]}"
        else:
            from securemesh.audit.admin import prove_entry

            index = _target_index(log, args.target)
            text = prove_entry(log, index, log_key=key).decode("utf-8")
            what = f"entry {index}"
    _write_out(args.out, text if text.endswith("\n") else text + "\n")
    print(f"wrote the proof of {what} to {args.out}", file=sys.stderr)
    return 0


def _consistency_doc(log: AuditLog, key: tuple[str, bytes], old: int, new: int) -> str:
    """A consistency file (RFC 9162 §2.1.4) between two signed tree heads, checked first."""
    from securemesh.audit.proofs import build_consistency_bundle, verify_consistency_bundle

    if not 1 <= old <= new:
        raise CliError("--consistency OLD NEW needs 1 <= OLD <= NEW")
    heads = []
    for size in (old, new):
        try:
            heads.append(log.tree_head(size))
        except LocalError:
            sizes = [h.size for h in log.tree_heads()]
            near = sorted(sizes, key=lambda s: abs(s - size))[:5]
            raise CliError(
                f"no signed tree head of size {size} (log size {log.size()}; "
                f"nearest signed sizes: {', '.join(map(str, sorted(near))) or 'none'})"
            ) from None
    data = build_consistency_bundle(
        old_note=heads[0].note, new_note=heads[1].note, proof=log.consistency_proof(old, new)
    )
    name, vk = key
    verify_consistency_bundle(data, log_key_name=name, log_verify_key=vk, log_origin=name)
    return data.decode("utf-8")


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import event_json, load_verifier
    from securemesh.audit.proofs import (
        CONSISTENCY_FORMAT,
        MAX_BUNDLE_SIZE,
        bundle_format,
        verify_consistency_bundle,
        verify_proof_bundle,
    )

    name, vk = load_verifier(args.log_key)
    origin_key = None if args.origin_key is None else _verify_key_arg(args.origin_key, "origin key")
    try:
        with open(args.file, "rb") as f:
            data = f.read(MAX_BUNDLE_SIZE + 1)
    except OSError as exc:
        raise os_error(exc, "read") from exc
    if bundle_format(data) == CONSISTENCY_FORMAT:
        if origin_key is not None:
            raise CliError("--origin-key is for proofs of an entry, not of consistency")
        both = verify_consistency_bundle(
            data, log_key_name=name, log_verify_key=vk, log_origin=name
        )
        print_record(
            {
                "ok": True,
                "old_size": both.old.size,
                "old_root": both.old.root_hash.hex(),
                "new_size": both.new.size,
                "new_root": both.new.root_hash.hex(),
            },
            args.format,
        )
        return 0
    proven = verify_proof_bundle(
        data, log_key_name=name, log_verify_key=vk, log_origin=name, origin_verify_key=origin_key
    )
    event = event_json(proven.event)
    out = {
        "ok": True,
        "leaf_index": proven.leaf_index,
        "tree_size": proven.checkpoint.size,
        "root": proven.checkpoint.root_hash.hex(),
        "origin_key_source": proven.origin_key_source,
        "time": iso_utc(proven.event.time_ms / 1000),
        "event": event,
    }
    print_record(out, args.format)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import export_jsonl

    _check_out(args.out)
    with _open_read(args) as log:
        out = _open_out(args.out)
        try:
            n = export_jsonl(log, out)
        finally:
            if out is not sys.stdout:
                out.close()
    print(f"exported {n} entries", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from securemesh.audit.checkpoint import note_signers, open_checkpoint
    from securemesh.audit.merkle import EMPTY_ROOT
    from securemesh.audit.store import describe_url

    where = _where(args)
    key = _log_key(args) if args.log_key is not None or _pub_exists(args) else None
    with _open_read(args) as log:
        size = log.size()
        head = log.latest_tree_head()
        nodes = len(log.registered_nodes())
        heads = sum(1 for _ in log.tree_heads())
    doc: dict[str, Any] = {
        "log": describe_url(where.db),
        "size": size,
        "root": (head.root if head is not None else EMPTY_ROOT).hex(),
        "tree_heads": heads,
        "registered_nodes": nodes,
        "latest_checkpoint": None,
    }
    if head is not None:
        signers = [f"{n}+{kid.hex()}" for n, kid in _safe_signers(note_signers, head.note)]
        verified: str = "not checked (no log public key)"
        if key is not None:
            name, vk = key
            try:
                open_checkpoint(head.note, key_name=name, verify_key=vk, origin=name)
                verified = f"verified with {name}"
            except SecureMeshError as exc:
                verified = f"FAILED with {name}: {exc}"
        doc["latest_checkpoint"] = {
            "size": head.size,
            "root": head.root.hex(),
            "time": iso_utc(head.time_ms / 1000),
            "signed_by": signers,
            "signature": verified,
            "note": head.note.decode("utf-8", errors="replace"),
        }
    cp: Mapping[str, Any] = doc["latest_checkpoint"] or {}
    fields: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        ("log", lambda d: d["log"]),
        ("size", lambda d: str(d["size"])),
        ("root", lambda d: d["root"]),
        ("tree heads", lambda d: str(d["tree_heads"])),
        ("registered nodes", lambda d: str(d["registered_nodes"])),
        ("latest checkpoint", lambda _: f"size {cp['size']}" if cp else "none (empty log)"),
    ]
    if cp:
        fields += [
            ("  time (UTC)", lambda _: cp["time"]),
            ("  signed by", lambda _: cp["signed_by"]),
            ("  signature", lambda _: cp["signature"]),
            ("  note", lambda _: cp["note"].rstrip("\n")),
        ]
    print_record(doc, args.format, fields=fields)
    return 0


def _pub_exists(args: argparse.Namespace) -> bool:
    return Path(str(_where(args).log_key_file) + ".pub").is_file()


def _safe_signers(
    fn: Callable[[bytes], list[tuple[str, bytes]]], note: bytes
) -> list[tuple[str, bytes]]:
    try:
        return fn(note)
    except SecureMeshError:
        return []


def _cmd_rebuild_index(args: argparse.Namespace) -> int:
    from securemesh.audit.query import rebuild_index

    with _open_write(args) as log:
        n = rebuild_index(log.engine)
    print(f"rebuilt the query projection of {n} entries", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def register(  # noqa: PLR0915 - one flat list of subcommands reads best
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``audit`` and its subcommands."""
    audit = subparsers.add_parser(
        "audit", parents=[data_dir_options()], help="query, verify and prove the audit log"
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False, parents=[data_dir_options()])
    common.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help=f"SQLite file or PostgreSQL URL (default ${_DB_ENV}, node.toml [audit] log_db, "
        "or <data dir>/audit.db)",
    )
    common.add_argument(
        "--log-key-file",
        default=None,
        metavar="PATH",
        help="the log's signing key file (default <data dir>/audit-log.key; "
        "its public key is PATH.pub)",
    )
    common.add_argument(
        "--log-key",
        default=None,
        metavar="VERIFIERKEY",
        help="the log's public verifier key (string or file); default PATH.pub",
    )
    table_json = format_options(choices=("table", "json", "jsonl"))

    def add(name: str, cmd: Command, help_: str, *parents: argparse.ArgumentParser) -> Any:
        p = sub.add_parser(name, parents=[common, *parents], help=help_)
        p.set_defaults(func=_guarded(cmd))
        return p

    p = add(
        "init-log",
        _cmd_init_log,
        "create the log key (encrypted) and database",
        passphrase_options(),
    )
    p.add_argument("--origin", default="securemesh.audit/log", help="log name / origin line")
    p.add_argument("--force", action="store_true", help="replace an existing log key")

    p = add(
        "register-node",
        _cmd_register_node,
        "add a verify key to an origin node's key history (older keys stay)",
    )
    p.add_argument("node_id")
    p.add_argument("verify_key", help="Ed25519 verify key: hex, base64 or base64url")

    add(
        "list-nodes",
        _cmd_list_nodes,
        "registered origin nodes and their keys, oldest first",
        table_json,
    )

    p = add(
        "append",
        _cmd_append,
        "append signed events (base64 lines or export jsonl)",
        passphrase_options(),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="'-' for standard input")

    add(
        "rewrap-log-key",
        _cmd_rewrap_log_key,
        "encrypt a plain log key file (from before the key store) in place",
        passphrase_options(),
    )

    filters = argparse.ArgumentParser(add_help=False, parents=[time_range_options()])
    filters.add_argument("--node", help="origin node id")
    filters.add_argument("--kind", help="event kind, e.g. message.rejected")
    filters.add_argument("--subject", help="TYPE:ID or ID")
    filters.add_argument("--outcome", choices=("success", "failure", "denied"))
    filters.add_argument("--text", help="free text in details, subject, kind, origin")
    filters.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="match a detail")

    p = accept_relative_times(add("query", _cmd_query, "search events", filters, table_json))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--cursor", help="continue after a previous page")

    p = accept_relative_times(
        add("tail", _cmd_tail, "the newest events (with the filters of query)", filters, table_json)
    )
    p.add_argument("-n", "--lines", type=_positive_int, default=10)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval with -f")

    p = add("show", _cmd_show, "one entry, with its inclusion proof", table_json)
    p.add_argument("target", metavar="INDEX|EVENT_ID")

    p = add("verify", _cmd_verify, "verify the whole log", table_json)
    p.add_argument("--state", help="last-seen checkpoint file (default in the data dir)")
    p.add_argument("--no-state", action="store_true", help="do not read or save client state")
    p.add_argument(
        "--full", action="store_true", help="re-check signatures this client already checked"
    )
    p.add_argument(
        "--allow-empty", action="store_true", help="accept an empty log (else it is an error)"
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr (by default: on a terminal, after a second)",
    )

    p = add("prove", _cmd_prove, "write an offline inclusion or consistency proof")
    p.add_argument("target", nargs="?", metavar="INDEX|EVENT_ID")
    p.add_argument(
        "--consistency",
        nargs=2,
        type=int,
        metavar=("OLD", "NEW"),
        help="prove that the signed tree of size NEW extends the one of size OLD",
    )
    p.add_argument("--out", default="-", metavar="FILE", help="default: standard output")

    p = sub.add_parser(
        "verify-proof",
        parents=[format_options(default="json")],
        help="check a proof file (entry or consistency) with only the log's public key",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--log-key", required=True, metavar="VERIFIERKEY", help="string or file")
    p.add_argument(
        "--origin-key", help="expected origin verify key (hex or base64, as keys show prints)"
    )
    p.set_defaults(func=_guarded(_cmd_verify_proof))

    p = add("export", _cmd_export, "every entry as JSON lines")
    p.add_argument("--out", default="-", metavar="FILE")

    add("info", _cmd_info, "the log's size, root and latest checkpoint", table_json)

    add("rebuild-index", _cmd_rebuild_index, "recompute the query columns from the entries")
