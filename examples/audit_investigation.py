"""An audit investigation: what did a node do, and prove it to someone else.

A security team's script over the cloud audit log (docs/audit.md). Two steps:

1. ``collect`` -- on a machine that can read the log (the cloud, or a
   read-only replica): the node's timeline in a time range, the events in it
   that match the suspicious filters (kind, outcome, ``FIELD=VALUE`` on the
   details), and for each of those an inclusion proof. All of it goes into a
   case directory, with the log's public key::

       python examples/audit_investigation.py collect \\
           --data-dir /var/lib/securemesh/cloud-1 --node edge-1.alice \\
           --since=-1h --until=now --kind storage.share reader=edge-1.bob \\
           --case ./case-42

2. ``verify`` -- anywhere, offline, with only the case directory (no database,
   no network): every proof is checked against the log's public key -- the
   signed checkpoint, the entry's inclusion in that tree (RFC 9162), the
   origin's signature on the event -- and the events are printed::

       python examples/audit_investigation.py verify ./case-42

   A reviewer who already holds the log's public key passes it with
   ``--log-key`` (string or file) instead of trusting the copy in the case.

``collect`` reads the log through the ``securemesh audit`` CLI (``query`` and
``prove``: read-only, every row checked against its signed leaf); ``verify``
uses the library (``securemesh.audit.verify_proof_bundle``). Exit 0: every
proof verified; 1: a mistake or a proof that does not verify (one ``error:``
line); 3: no event matched the suspicious filters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from securemesh.audit import parse_verifier_key, verify_proof_bundle
from securemesh.errors import SecureMeshError

NOTHING_FOUND = 3


class Failed(Exception):
    """A step failed; the message is the one ``error:`` line."""


def audit_cli(*args: str) -> str:
    """``securemesh audit ARGS`` with this interpreter; its stdout (raises Failed)."""
    done = subprocess.run(
        [sys.executable, "-m", "securemesh", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise Failed(f"securemesh audit {args[0]}: {reason[0].removeprefix('error: ')}")
    return done.stdout


def query(where: list[str], filters: list[str], limit: int) -> list[dict[str, Any]]:
    rows = json.loads(audit_cli("query", *where, *filters, "--limit", str(limit), "-o", "json"))
    if not isinstance(rows, list):
        raise Failed("audit query did not print a list")
    return rows


def line(row: dict[str, Any]) -> str:
    subject = row["subject"]
    return (
        f"{row['index']:>6}  {row['time']}  {row['origin']:<14} {row['kind']:<20} "
        f"{subject['type']}:{subject['id']}  {row['outcome']}"
    )


def collect(args: argparse.Namespace) -> int:
    where = ["--data-dir", str(args.data_dir)]
    span = ["--node", args.node, f"--since={args.since}", f"--until={args.until}"]
    timeline = query(where, span, args.limit)
    print(f"timeline of {args.node} ({args.since} .. {args.until}): {len(timeline)} events")
    for row in timeline:
        print("  " + line(row))
    suspicious_filters = [*span, *args.fields]
    if args.kind:
        suspicious_filters += ["--kind", args.kind]
    if args.outcome:
        suspicious_filters += ["--outcome", args.outcome]
    suspicious = query(where, suspicious_filters, args.limit)[: args.max_proofs]
    if not suspicious:
        print("no event matched the suspicious filters", file=sys.stderr)
        return NOTHING_FOUND
    case: Path = args.case
    case.mkdir(parents=True, exist_ok=True)
    (case / "timeline.json").write_text(json.dumps(timeline, indent=2) + "\n")
    pub = Path(args.log_key) if args.log_key else args.data_dir / "audit-log.key.pub"
    try:
        shutil.copyfile(pub, case / "audit-log.key.pub")
    except OSError as exc:
        raise Failed(f"cannot copy the log's public key {pub}: {exc.strerror}") from exc
    print(f"suspicious: {len(suspicious)} events; proofs in {case}")
    for row in suspicious:
        proof = case / f"entry-{row['index']}.proof.json"
        audit_cli("prove", *where, str(row["index"]), "--out", str(proof))
        print(f"  {line(row)}  -> {proof.name}")
    return 0


def verify(args: argparse.Namespace) -> int:
    case: Path = args.case
    key_text = args.log_key or str(case / "audit-log.key.pub")
    try:
        text = Path(key_text).read_text().strip() if Path(key_text).is_file() else key_text
    except OSError as exc:
        raise Failed(f"cannot read the log key {key_text}: {exc.strerror}") from exc
    name, log_key = parse_verifier_key(text)
    proofs = sorted(case.glob("entry-*.proof.json"))
    if not proofs:
        raise Failed(f"no entry-*.proof.json in {case}")
    for path in proofs:
        try:
            proven = verify_proof_bundle(
                path.read_bytes(), log_key_name=name, log_verify_key=log_key, log_origin=name
            )
        except SecureMeshError as exc:
            raise Failed(f"{path.name} does NOT verify: {exc}") from exc
        event = proven.event
        print(
            f"{path.name}: entry {proven.leaf_index} of the log's signed tree of "
            f"{proven.checkpoint.size} (root {proven.checkpoint.root_hash.hex()[:16]}…): "
            f"{event.origin} {event.kind} {event.subject.type}:{event.subject.id} "
            f"{event.outcome} {json.dumps(event.details, sort_keys=True)}"
        )
    print(f"OK: {len(proofs)} proofs verified with only the log's public key ({name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SecureMesh audit investigation example")
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("collect", help="timeline, suspicious events and their proofs")
    c.add_argument("--data-dir", required=True, type=Path, help="the cloud node's data dir")
    c.add_argument("--node", required=True, help="the node under investigation (event origin)")
    c.add_argument("--since", default="-1d", help="ISO 8601, now, today, or --since=-30m ...")
    c.add_argument("--until", default="now")
    c.add_argument("--kind", help="suspicious: this event kind")
    c.add_argument("--outcome", choices=("success", "failure", "denied"))
    c.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="suspicious: details")
    c.add_argument("--case", required=True, type=Path, help="the case directory to write")
    c.add_argument("--log-key", help="the log's public key file (default DIR/audit-log.key.pub)")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--max-proofs", type=int, default=10)
    c.set_defaults(func=collect)
    v = sub.add_parser("verify", help="check a case directory's proofs offline")
    v.add_argument("case", type=Path)
    v.add_argument("--log-key", help="the log's public key (string or file)")
    v.set_defaults(func=verify)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (Failed, SecureMeshError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
