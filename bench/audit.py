"""Benchmark of the cloud audit log. The last line printed is ONE JSON object.

    python bench/audit.py [--entries 1000000] [--append-events 10240] [--pg-url URL]
                          [--workdir DIR [--keep-fixture]]

Figures (issue 4):

* ``ed25519_verify_per_s`` — bare pynacl ``VerifyKey.verify`` rate, one thread,
  on messages the size of real signed events, in this run.
* ``sqlite_appends_per_s`` / ``pg_appends_per_s`` — ``AuditLog.append`` of
  signed events in calls of 256 (one transaction and one signed checkpoint
  each); every event is strictly decoded and its origin signature verified
  before it is sequenced. SQLite runs with ``synchronous=FULL``.
* ``ratio_sqlite_vs_verify`` — ``sqlite_appends_per_s / ed25519_verify_per_s``.
* ``inclusion_proof_ms_at_1m`` — median time of ``AuditLog.inclusion_proof``
  (read from the database) over random leaves of an ``--entries`` log.
* ``verify_s_at_1m`` — full ``verify_log`` of that log (every leaf hash,
  every origin signature, every signed tree head);
  ``verify_incremental_s_at_1m`` — the same with a last-seen checkpoint at
  the full size (signatures already checked by this client are not redone).

The ``--entries`` log is built through the same sequencing code
(``AuditLog._sequence``: strict decode, compact range, node rows, one signed
checkpoint per 256 entries) but skips the per-event signature check and runs
with ``synchronous=OFF`` — a fast path for the fixture only; events are
produced from a canonical template and signed with pynacl directly.

With ``--keep-fixture`` the ``--entries`` log is kept in ``--workdir``
(``big-N.db`` plus ``big-N.vk``, the log's public key in hex) and a later run
with the same options reuses it instead of building it again (~90 s at 1M);
``build_fixture_s`` is then ``null``. The append figures are always measured
on fresh databases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.signing

from securemesh.audit.events import EVENT_SIGNATURE_DOMAIN, event_key_id

if TYPE_CHECKING:
    from securemesh.audit.log import AuditLog
    from securemesh.crypto.signing import Ed25519Signer

# The log, verifier and SQLAlchemy are imported inside the functions that use
# them: verify_log's worker processes (multiprocessing "spawn") re-import this
# script as their __main__, and should pay for what a worker needs, as they do
# under ``python -m securemesh audit verify`` (whose __main__ is not re-imported).

ORIGINS = 4
_TEMPLATE = (
    '{"details":{"n":%d,"peer":"peer-%d"},"event_id":"%032x","kind":"object.put",'
    '"origin":"edge-%d","outcome":"success","subject":{"id":"obj-%d","type":"object"},'
    '"time_ms":%d,"version":1}'
)


def _node_keys() -> list[nacl.signing.SigningKey]:
    return [nacl.signing.SigningKey(bytes([65 + k]) * 32) for k in range(ORIGINS)]


def gen_entries(start: int, count: int, keys: list[nacl.signing.SigningKey]) -> list[bytes]:
    """Signed-event entries (``SignedEvent.to_bytes()``) from a canonical template."""
    heads = [b"SMAE\x01" + event_key_id(bytes(k.verify_key)) for k in keys]
    out = []
    for i in range(start, start + count):
        o = i % ORIGINS
        body = (_TEMPLATE % (i, i % 7, i + 1, o, i, 1_700_000_000_000 + i)).encode()
        sig = keys[o].sign(EVENT_SIGNATURE_DOMAIN + body).signature
        out.append(heads[o] + sig + body)
    return out


def register(log: AuditLog, keys: list[nacl.signing.SigningKey]) -> None:
    for k, key in enumerate(keys):
        log.register_node(f"edge-{k}", bytes(key.verify_key))


def bench_verify_rate(keys: list[nacl.signing.SigningKey], n: int = 20_000) -> float:
    entries = gen_entries(10**9, n, keys)
    vks = [k.verify_key for k in keys]
    items = [
        (vks[i % ORIGINS], EVENT_SIGNATURE_DOMAIN + e[77:], e[13:77]) for i, e in enumerate(entries)
    ]
    t = time.perf_counter()
    for vk, msg, sig in items:
        vk.verify(msg, sig)
    return n / (time.perf_counter() - t)


def bench_appends(url: str, keys: list[nacl.signing.SigningKey], n: int) -> float:
    from securemesh.audit.log import open_log  # (imported here: see the imports)
    from securemesh.crypto.signing import Ed25519Signer

    entries = gen_entries(0, n, keys)
    with open_log(url, signer=Ed25519Signer.generate(), synchronous="FULL") as log:
        register(log, keys)
        log.append(entries[:256])  # warm-up: connections, statement caches
        t = time.perf_counter()
        for i in range(256, n, 256):
            log.append(entries[i : i + 256])
        dt = time.perf_counter() - t
        assert log.size() == n
    return (n - 256) / dt


def pg_schema_url(base: str) -> tuple[str, str] | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        eng = create_engine(base, connect_args={"connect_timeout": 3})
        schema = f"bench_audit_{secrets.token_hex(4)}"
        with eng.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        eng.dispose()
    except Exception as exc:
        print(f"PostgreSQL unavailable ({exc}); pg_appends_per_s = null", file=sys.stderr)
        return None
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(base)
    with eng.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def build_big_log(path: Path, keys: list[nacl.signing.SigningKey], n: int) -> Ed25519Signer:
    """The fixture fast path (see the module docstring)."""
    from securemesh.audit._entry import decode_entry
    from securemesh.audit.log import open_log  # (imported here: see the imports)
    from securemesh.crypto.signing import Ed25519Signer

    signer = Ed25519Signer.generate()
    with open_log(path, signer=signer, synchronous="OFF") as log:
        register(log, keys)
        step = 65_536
        for start in range(0, n, step):
            count = min(step, n - start)
            decoded = [decode_entry(e) for e in gen_entries(start, count, keys)]
            log._sequence(decoded)
            print(f"  built {start + count}/{n}", file=sys.stderr, flush=True)
    return signer


def bench_proofs(path: Path, n: int, samples: int, rng: random.Random) -> float:
    from securemesh.audit.log import open_log  # (imported here: see the imports)
    from securemesh.audit.merkle import leaf_hash, verify_inclusion

    with open_log(path) as log:
        head = log.latest_tree_head()
        assert head is not None
        assert head.size == n
        for _ in range(20):  # warm-up
            log.inclusion_proof(rng.randrange(n), n)
        times = []
        for _ in range(samples):
            i = rng.randrange(n)
            t = time.perf_counter()
            proof = log.inclusion_proof(i, n)
            times.append(time.perf_counter() - t)
            if len(times) <= 50:  # spot-check correctness
                verify_inclusion(leaf_hash(log.get_entry(i)), i, n, proof, head.root)
    return statistics.median(times) * 1000


def main() -> int:  # noqa: PLR0915 - a linear script
    from securemesh.audit.log import open_log  # (imported here: see the imports)
    from securemesh.audit.verify import LastSeen, verify_log

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--append-events", type=int, default=10_240)
    ap.add_argument("--proofs", type=int, default=2000)
    ap.add_argument(
        "--pg-url",
        default=os.environ.get(
            "SECUREMESH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--keep-fixture",
        action="store_true",
        help="keep the --entries log in --workdir and reuse it if it is already there",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    keys = _node_keys()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench-audit-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    verify_rate = bench_verify_rate(keys)
    print(f"ed25519 verify: {verify_rate:,.0f}/s", file=sys.stderr)
    for suffix in ("", "-wal", "-shm"):  # always a fresh log (a reused --workdir)
        (tmp / f"append.db{suffix}").unlink(missing_ok=True)
    sqlite_rate = bench_appends(str(tmp / "append.db"), keys, args.append_events)
    print(f"sqlite appends: {sqlite_rate:,.0f}/s", file=sys.stderr)
    pg_rate: float | None = None
    made = pg_schema_url(args.pg_url)
    if made is not None:
        url, schema = made
        try:
            pg_rate = bench_appends(url, keys, args.append_events)
            print(f"postgres appends: {pg_rate:,.0f}/s", file=sys.stderr)
        finally:
            drop_schema(args.pg_url, schema)

    big = tmp / f"big-{args.entries}.db"
    vk_file = tmp / f"big-{args.entries}.vk"
    build_s: float | None = None
    if args.keep_fixture and big.exists() and vk_file.exists():
        log_vk = bytes.fromhex(vk_file.read_text().strip())
        print(f"reusing the fixture {big}", file=sys.stderr)
    else:
        for f in (big, vk_file):
            f.unlink(missing_ok=True)
        tb = time.perf_counter()
        log_vk = build_big_log(big, keys, args.entries).verify_key
        build_s = time.perf_counter() - tb
        vk_file.write_text(log_vk.hex() + "\n")
        print(f"built {args.entries} entries in {build_s:.1f}s", file=sys.stderr)
    proof_ms = bench_proofs(big, args.entries, args.proofs, rng)
    print(f"inclusion proof median: {proof_ms:.3f} ms", file=sys.stderr)

    with open_log(big) as log:
        tv = time.perf_counter()
        report = verify_log(log.engine, log_verify_key=log_vk, log_origin=log.origin)
        verify_s = time.perf_counter() - tv
        print(f"full verify: {verify_s:.1f}s", file=sys.stderr)
        assert report.size == args.entries
        assert report.latest_note is not None
        seen = LastSeen(log.origin, report.size, report.root, report.latest_note)
        tv = time.perf_counter()
        verify_log(log.engine, log_verify_key=log_vk, log_origin=log.origin, last_seen=seen)
        verify_inc_s = time.perf_counter() - tv
        print(f"incremental verify: {verify_inc_s:.1f}s", file=sys.stderr)
    if not args.keep_fixture:
        big.unlink()
        vk_file.unlink()

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    result = {
        "entries": args.entries,
        "ed25519_verify_per_s": round(verify_rate),
        "sqlite_appends_per_s": round(sqlite_rate),
        "pg_appends_per_s": None if pg_rate is None else round(pg_rate),
        "ratio_sqlite_vs_verify": round(sqlite_rate / verify_rate, 3),
        "inclusion_proof_ms_at_1m": round(proof_ms, 4),
        "verify_s_at_1m": round(verify_s, 2),
        "verify_incremental_s_at_1m": round(verify_inc_s, 2),
        "build_fixture_s": None if build_s is None else round(build_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "fixture_digest": hashlib.sha256(gen_entries(0, 1, keys)[0]).hexdigest()[:16],
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
