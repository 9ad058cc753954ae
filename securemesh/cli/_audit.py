"""``securemesh audit``: query, tail, show, verify, prove and export the audit log.

A thin shell over :mod:`securemesh.audit.admin`, :mod:`securemesh.audit.query`
and :mod:`securemesh.audit.verify`. Every command takes ``--db URL`` (a SQLite
file path or a PostgreSQL URL; default ``$SECUREMESH_AUDIT_DB`` or
``<data dir>/audit.db``). Commands that check signatures need the log's
public key: ``--log-key`` takes a verifier string
(``<name>+<id>+<base64>``) or a file holding one; by default the ``.pub``
file written by ``audit init-log`` next to the log key is used.

Exit codes: 0 success; 1 a SecureMesh error (for ``audit verify``: the log is
tampered, and the message names the entries); 2 usage.
"""

# Library modules (SQLAlchemy, rich) are imported inside each command so that
# `securemesh --help` and the other command groups stay fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from securemesh.audit.paths import DB_ENV, default_data_dir, default_db_url
from securemesh.errors import ConfigError

__all__ = ["register"]

_FORMATS = ("table", "json", "jsonl")


def _data_dir() -> Path:
    return default_data_dir()


def _open(args: argparse.Namespace, *, signer: bool = False) -> Any:
    from securemesh.audit.admin import load_log_key
    from securemesh.audit.log import open_log

    if signer:
        key = load_log_key(args.log_key_file)
        return open_log(args.db, signer=key.signer, origin=key.name)
    return open_log(args.db)


def _log_key(args: argparse.Namespace) -> tuple[str, bytes]:
    from securemesh.audit.admin import load_verifier

    if args.log_key:
        return load_verifier(args.log_key)
    pub = Path(str(args.log_key_file) + ".pub")
    if not pub.exists():
        raise ConfigError(
            f"no log public key: pass --log-key VERIFIERKEY (or create {pub} with audit init-log)"
        )
    return load_verifier(str(pub))


def _log_key_if_any(args: argparse.Namespace) -> tuple[str, bytes] | None:
    """The log's public key for checking query hits, if given or beside the log key file."""
    if args.log_key or Path(str(args.log_key_file) + ".pub").exists():
        return _log_key(args)
    return None


def _print_rows(rows: list[Any], fmt: str, *, title: str | None = None) -> None:
    if fmt == "json":
        print(json.dumps([r.to_json() for r in rows], indent=2, sort_keys=True))
        return
    if fmt == "jsonl":
        for r in rows:
            print(json.dumps(r.to_json(), sort_keys=True, separators=(",", ":")))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("#", "time (UTC)", "origin", "kind", "subject", "outcome", "details"):
        table.add_column(col, overflow="fold")
    for r in rows:
        j = r.to_json()
        details = ", ".join(f"{k}={v}" for k, v in sorted(r.details.items()))
        table.add_row(
            str(r.index),
            j["time"].replace("+00:00", "Z"),
            r.origin,
            r.kind,
            f"{r.subject_type}:{r.subject_id}",
            r.outcome,
            details,
        )
    Console(soft_wrap=False, width=max(140, Console().width)).print(table)


# ------------------------------------------------------------------ commands


def _cmd_init_log(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import create_log_key
    from securemesh.audit.log import open_log

    key = create_log_key(args.log_key_file, name=args.origin, force=args.force)
    open_log(args.db).close()
    print(f"wrote {args.log_key_file} (secret) and {args.log_key_file}.pub", file=sys.stderr)
    print(key.verifier)
    return 0


def _cmd_register_node(args: argparse.Namespace) -> int:
    text = args.verify_key.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ConfigError("verify key must be 64 hex digits or base64") from exc
    from securemesh.audit.events import event_key_id

    if len(key) != 32:
        raise ConfigError("an Ed25519 verify key is 32 bytes")
    with _open(args) as log:
        added = log.register_node(args.node_id, key)
    state = "registered" if added else "already registered"
    print(f"{state}: {args.node_id} key id {event_key_id(key).hex()}", file=sys.stderr)
    return 0


def _cmd_list_nodes(args: argparse.Namespace) -> int:
    from securemesh.audit.events import event_key_id

    with _open(args) as log:
        nodes = log.registered_nodes()
    rows = [
        {"node_id": node, "key_id": event_key_id(vk).hex(), "verify_key": vk.hex()}
        for node in sorted(nodes)
        for vk in nodes[node]
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for r in rows:
            print(f"{r['node_id']}\t{r['key_id']}\t{r['verify_key']}")
    return 0


def _cmd_append(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import iter_jsonl_entries

    entries: list[bytes] = []
    for name in args.files:
        with sys.stdin if name == "-" else open(name, encoding="utf-8") as f:
            entries.extend(iter_jsonl_entries(iter(f)))
    with _open(args, signer=True) as log:
        indices = log.append(entries)
    for i in indices:
        print(i)
    return 0


def _filters(args: argparse.Namespace) -> Any:
    from securemesh.audit.query import QueryFilter, parse_field_filters, parse_time

    now = time.time()
    return QueryFilter(
        origin=args.node,
        kind=args.kind,
        subject=args.subject,
        outcome=args.outcome,
        since_ms=parse_time(args.since, now=now) if args.since else None,
        until_ms=parse_time(args.until, now=now) if args.until else None,
        text=args.text,
        fields=parse_field_filters(args.fields),
    )


def _cmd_query(args: argparse.Namespace) -> int:
    from securemesh.audit.query import query

    with _open(args) as log:
        page = query(
            log.engine,
            _filters(args),
            limit=args.limit,
            cursor=args.cursor,
            log_key=_log_key_if_any(args),
        )
    _print_rows(page.rows, args.format, title="audit events")
    if page.next_cursor is not None:
        print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from securemesh.audit.query import rows_after

    log_key = _log_key_if_any(args)
    with _open(args) as log:
        size = log.size()
        after = max(-1, size - args.lines - 1)
        while True:
            rows = rows_after(log.engine, after, log_key=log_key)
            if rows:
                _print_rows(rows, "jsonl" if args.format == "jsonl" else args.format)
                after = rows[-1].index
                sys.stdout.flush()
            if not args.follow:
                return 0
            if not rows:
                time.sleep(args.interval)


def _cmd_show(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import show_entry

    with _open(args) as log:
        shown = show_entry(log, args.index, log_key=_log_key(args))
    doc = shown.to_json()
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit entry {args.index}", show_header=False)
    ev = doc["event"]
    for k in ("event_id", "time_ms", "origin", "kind", "outcome"):
        table.add_row(k, str(ev[k]))
    table.add_row("subject", f"{ev['subject']['type']}:{ev['subject']['id']}")
    table.add_row("details", json.dumps(ev["details"], sort_keys=True))
    table.add_row("origin signature", "verified")
    table.add_row("leaf hash", doc["leaf_hash"])
    table.add_row("inclusion", f"verified in signed tree of size {doc['tree_size']}")
    table.add_row("root", doc["root"])
    Console().print(table)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import verify_stored_log

    state = None if args.no_state else (args.state or _data_dir() / "audit-last-seen.json")
    t0 = time.perf_counter()
    with _open(args) as log:
        report = verify_stored_log(log, log_key=_log_key(args), state_path=state, full=args.full)
    dt = time.perf_counter() - t0
    if args.format == "json":
        print(
            json.dumps(
                {
                    "ok": True,
                    "size": report.size,
                    "root": report.root.hex(),
                    "tree_heads_checked": report.heads_checked,
                    "signatures_checked": report.signatures_checked,
                    "seconds": round(dt, 3),
                },
                sort_keys=True,
            )
        )
    else:
        print(
            f"OK: {report.size} entries, {report.signatures_checked} origin signatures, "
            f"{report.heads_checked} signed tree heads verified in {dt:.1f}s; "
            f"root {report.root.hex()}"
        )
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import prove_entry

    with _open(args) as log:
        data = prove_entry(log, args.index, log_key=_log_key(args))
    Path(args.out).write_bytes(data)
    print(f"wrote proof of entry {args.index} to {args.out}", file=sys.stderr)
    return 0


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import event_json, load_verifier
    from securemesh.audit.proofs import MAX_BUNDLE_SIZE, verify_proof_bundle

    name, vk = load_verifier(args.log_key)
    with open(args.file, "rb") as f:
        data = f.read(MAX_BUNDLE_SIZE + 1)
    origin_key = bytes.fromhex(args.origin_key) if args.origin_key else None
    proven = verify_proof_bundle(
        data, log_key_name=name, log_verify_key=vk, log_origin=name, origin_verify_key=origin_key
    )
    out = {
        "ok": True,
        "leaf_index": proven.leaf_index,
        "tree_size": proven.checkpoint.size,
        "root": proven.checkpoint.root_hash.hex(),
        "origin_key_source": proven.origin_key_source,
        "event": event_json(proven.event),
    }
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from securemesh.audit.admin import export_jsonl

    with _open(args) as log:
        if args.out == "-":
            n = export_jsonl(log, sys.stdout)
        else:
            with open(args.out, "w", encoding="utf-8") as f:
                n = export_jsonl(log, f)
    print(f"exported {n} entries", file=sys.stderr)
    return 0


def _cmd_rebuild_index(args: argparse.Namespace) -> int:
    from securemesh.audit.query import rebuild_index

    with _open(args) as log:
        n = rebuild_index(log.engine)
    print(f"rebuilt the query projection of {n} entries", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ parser


def register(  # noqa: PLR0915 - one flat list of subcommands reads best
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``audit`` and its subcommands."""
    audit = subparsers.add_parser("audit", help="query, verify and prove the audit log")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=default_db_url(),
        metavar="URL",
        help=f"SQLite file or PostgreSQL URL (default ${DB_ENV} or <data dir>/audit.db)",
    )
    common.add_argument(
        "--log-key-file",
        default=str(_data_dir() / "audit-log.key"),
        metavar="PATH",
        help="the log's signing key file (its public key is PATH.pub)",
    )
    common.add_argument(
        "--log-key",
        default=None,
        metavar="VERIFIERKEY",
        help="the log's public verifier key (string or file); default PATH.pub",
    )

    p = sub.add_parser("init-log", parents=[common], help="create the log key and database")
    p.add_argument("--origin", default="securemesh.audit/log", help="log name / origin line")
    p.add_argument("--force", action="store_true", help="replace an existing log key")
    p.set_defaults(func=_cmd_init_log)

    p = sub.add_parser(
        "register-node",
        parents=[common],
        help="add a verify key to an origin node's key history (older keys stay)",
    )
    p.add_argument("node_id")
    p.add_argument("verify_key", help="Ed25519 verify key, hex or base64")
    p.set_defaults(func=_cmd_register_node)

    p = sub.add_parser(
        "list-nodes", parents=[common], help="registered origin nodes and their keys, oldest first"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_list_nodes)

    p = sub.add_parser(
        "append", parents=[common], help="append signed events (base64 lines or export jsonl)"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="'-' for standard input")
    p.set_defaults(func=_cmd_append)

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--node", help="origin node id")
    filters.add_argument("--kind", help="event kind, e.g. message.rejected")
    filters.add_argument("--subject", help="TYPE:ID or ID")
    filters.add_argument("--outcome", choices=("success", "failure", "denied"))
    filters.add_argument("--since", help="ISO 8601 time or relative (15m, 1h, 2d)")
    filters.add_argument("--until", help="ISO 8601 time or relative")
    filters.add_argument("--text", help="free text in details, subject, kind, origin")
    filters.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="match a detail")

    p = sub.add_parser("query", parents=[common, filters], help="search events")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--cursor", help="continue after a previous page")
    p.add_argument("--format", choices=_FORMATS, default="table")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("tail", parents=[common], help="show the newest events")
    p.add_argument("-n", "--lines", type=int, default=10)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval with -f")
    p.add_argument("--format", choices=_FORMATS, default="table")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser("show", parents=[common], help="one entry, with its inclusion proof")
    p.add_argument("index", type=int, metavar="INDEX")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("verify", parents=[common], help="verify the whole log")
    p.add_argument("--state", help="last-seen checkpoint file (default in the data dir)")
    p.add_argument("--no-state", action="store_true", help="do not read or save client state")
    p.add_argument(
        "--full", action="store_true", help="re-check signatures this client already checked"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("prove", parents=[common], help="write an offline proof file")
    p.add_argument("index", type=int, metavar="INDEX")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_prove)

    p = sub.add_parser("verify-proof", help="check a proof file with only the log's public key")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--log-key", required=True, metavar="VERIFIERKEY", help="string or file")
    p.add_argument("--origin-key", help="expected origin verify key (hex), if known")
    p.set_defaults(func=_cmd_verify_proof)

    p = sub.add_parser("export", parents=[common], help="every entry as JSON lines")
    p.add_argument("--out", default="-", metavar="FILE")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "rebuild-index", parents=[common], help="recompute the query columns from the entries"
    )
    p.set_defaults(func=_cmd_rebuild_index)
