"""``securemesh audit …`` as an auditor runs it: real subprocesses, real SQLite/PostgreSQL logs.

Covers issue #10's auditor items: read commands never create and verification
never passes vacuously; a wrong log key is named as such; every mistake is one
``error:`` line with a non-zero exit and no traceback; and the shared CLI
conventions (``--format``, ``--data-dir``, ``-S/-U``, ISO 8601 ``Z`` times,
``tail`` filters, ``show`` by event id, ``info``, ``prove --consistency``,
``verify`` progress).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import FAST_KDF_CLI
from sqlalchemy import create_engine, inspect

from securemesh.audit.checkpoint import key_id, open_checkpoint, parse_verifier_key
from securemesh.audit.events import EventKind, SignedEvent, new_event, sign_event
from securemesh.audit.merkle import verify_consistency
from securemesh.crypto.signing import Ed25519Signer

NOW = time.time()
OLD_T0 = NOW - 3 * 86400  # 20 events three days ago
NEW_T0 = NOW - 20 * 60  # 20 events from 20 to 10.5 minutes ago, 30 s apart
NEW_STEP = 30.0
N_OLD = N_NEW = 20
N = N_OLD + N_NEW
EDGE = Ed25519Signer.from_seed(b"E" * 32)


def _events(start: int, n: int, t0: float, step: float) -> list[SignedEvent]:
    kinds = [EventKind.OBJECT_PUT, EventKind.TASK_FINISHED, EventKind.NODE_ENROLLED]
    out = []
    for i in range(start, start + n):
        kind = kinds[i % 3]
        ev = new_event(
            kind,
            origin="edge-1",
            subject=("object", f"obj-{i}") if kind == EventKind.OBJECT_PUT else ("node", "edge-1"),
            outcome="success" if i % 5 else "failure",
            details={"n": i},
            now=t0 + (i - start) * step,
            event_id=f"{i:032x}",
        )
        out.append(sign_event(ev, EDGE))
    return out


def _b64_lines(events: Sequence[SignedEvent]) -> str:
    return "".join(base64.b64encode(e.to_bytes()).decode() + "\n" for e in events)


#: the log key file's passphrase (init-log seals the key with it; append opens it)
PASSPHRASE = "log-key-passphrase"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SECUREMESH_DATA_DIR", "SECUREMESH_AUDIT_DB", "XDG_DATA_HOME"}
    }
    env["SECUREMESH_PASSPHRASE"] = PASSPHRASE  # the log key file's (init-log, append)
    env.update(extra)
    return env


def cli(
    *argv: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    data: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``securemesh audit ARGV`` in a subprocess (``data`` becomes $SECUREMESH_DATA_DIR)."""
    e = env if env is not None else _env()
    if data is not None:
        e = {**e, "SECUREMESH_DATA_DIR": str(data)}
    return subprocess.run(
        [*FAST_KDF_CLI, "audit", *argv],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=e,
        timeout=180,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one ``error:`` line and no traceback; return it."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


@dataclass(frozen=True)
class Log:
    data: Path  # the data dir: audit.db, audit-log.key(.pub)
    verifier: str

    @property
    def db(self) -> Path:
        return self.data / "audit.db"

    @property
    def pub(self) -> Path:
        return self.data / "audit-log.key.pub"


def _make_log(data: Path, origin: str = "example.org/audit") -> Log:
    verifier = ok(cli("init-log", "--origin", origin, data=data)).strip()
    ok(cli("register-node", "edge-1", EDGE.verify_key.hex(), data=data))
    return Log(data, verifier)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """40 events in two appends (signed tree heads at 20 and 40)."""
    root = tmp_path_factory.mktemp("auditlog")
    made = _make_log(root / "data")
    (root / "old.b64").write_text(_b64_lines(_events(0, N_OLD, OLD_T0, 1.0)))
    (root / "new.b64").write_text(_b64_lines(_events(N_OLD, N_NEW, NEW_T0, NEW_STEP)))
    assert ok(cli("append", str(root / "old.b64"), data=made.data)).split() == [
        str(i) for i in range(N_OLD)
    ]
    assert ok(cli("append", str(root / "new.b64"), data=made.data)).split() == [
        str(i) for i in range(N_OLD, N)
    ]
    return made


def _jsonl(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def _indices(out: str) -> list[int]:
    return [int(str(r["index"])) for r in _jsonl(out)]


# ------------------------------------------------------------------ never create


READ_COMMANDS = (
    ("query",),
    ("tail",),
    ("show", "0"),
    ("verify",),
    ("prove", "0"),
    ("export",),
    ("info",),
    ("list-nodes",),
)


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: a[0])
def test_read_commands_refuse_a_missing_log_and_create_nothing(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    db = tmp_path / "nonexistent" / "dir" / "audit.db"
    line = one_error(cli(*argv, "--db", str(db), data=tmp_path / "data"))
    assert line == f"error: no audit log at {db}"
    assert not (tmp_path / "nonexistent").exists()
    assert not (tmp_path / "data").exists()


def test_verify_without_db_does_not_create_the_default_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    line = one_error(cli("verify", env=_env(HOME=str(home))))
    assert line == f"error: no audit log at {home}/.local/share/securemesh/audit.db"
    assert list(home.iterdir()) == []


def test_read_commands_do_not_migrate_or_write(log: Log, tmp_path: Path) -> None:
    """An empty SQLite file stays empty; the populated log's file is not written to."""
    empty = tmp_path / "empty.db"
    empty.touch()
    assert one_error(cli("query", "--db", str(empty))) == f"error: no audit log at {empty}"
    assert empty.stat().st_size == 0
    before = log.db.read_bytes()
    ok(cli("query", "--format", "jsonl", data=log.data))
    ok(cli("verify", "--no-state", data=log.data))
    assert log.db.read_bytes() == before


def test_empty_log_verifies_only_when_allowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(cli("init-log", data=data))
    line = one_error(cli("verify", data=data))
    assert "is empty: nothing was verified" in line
    assert "--allow-empty" in line
    assert "OK: 0 entries" in ok(cli("verify", "--allow-empty", data=data))


# ------------------------------------------------------------------ wrong key


def test_a_wrong_log_key_is_named_not_reported_as_tampering(log: Log, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other_verifier = ok(cli("init-log", "--origin", "other.example/log", data=other)).strip()
    mine = key_id(*parse_verifier_key(log.verifier)).hex()
    theirs = key_id(*parse_verifier_key(other_verifier)).hex()
    for argv in (("verify", "--no-state"), ("show", "3"), ("prove", "3")):
        line = one_error(cli(*argv, "--log-key", str(other / "audit-log.key.pub"), data=log.data))
        assert f"checkpoints are signed by key id {mine} (example.org/audit)" in line
        assert f"not by the given key {theirs} (other.example/log)" in line
        assert "tampered entries" not in line
    # the right key still verifies
    assert ok(cli("verify", "--no-state", "--log-key", log.verifier, data=log.data)).startswith(
        f"OK: {N} entries"
    )


def test_show_names_the_log_size(log: Log) -> None:
    assert one_error(cli("show", "999", data=log.data)) == f"error: no leaf 999 (log size {N})"


# ------------------------------------------------------------------ no tracebacks


@pytest.fixture(scope="module")
def proof_file(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proof") / "entry7.json"
    ok(cli("prove", "7", "--out", str(out), data=log.data))
    return out


BAD_INPUTS: list[tuple[str, list[str], str | None, str]] = [
    # (id, argv with {log}/{pub}/{proof}/{dir}/{junk} placeholders, stdin, expected message part)
    (
        "verify-proof-missing-file",
        ["verify-proof", "/nope.json", "--log-key", "{pub}"],
        None,
        "cannot read /nope.json",
    ),
    (
        "verify-proof-bad-origin-key",
        ["verify-proof", "{proof}", "--log-key", "{pub}", "--origin-key", "notakey!"],
        None,
        "is not an Ed25519 verify key",
    ),
    (
        "verify-proof-bad-log-key",
        ["verify-proof", "{proof}", "--log-key", "nope"],
        None,
        "not a log verifier key",
    ),
    (
        "export-out-missing-dir",
        ["export", "--out", "/nope/dir/x.jsonl"],
        None,
        "cannot write /nope/dir/x.jsonl",
    ),
    (
        "prove-out-missing-dir",
        ["prove", "1", "--out", "/nope/x.json"],
        None,
        "cannot write /nope/x.json",
    ),
    (
        "append-not-base64",
        ["append", "-"],
        "notbase64!!\n",
        "standard input line 1: not a base64 signed event",
    ),
    ("append-bad-json", ["append", "-"], '{"entry": 5\n', "standard input line 1"),
    ("append-missing-file", ["append", "/nope/events.b64"], None, "cannot read /nope/events.b64"),
    (
        "tail-pg-unreachable",
        ["tail", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x"],
        None,
        "cannot open the audit database postgresql+psycopg://nobody@127.0.0.1:1/x",
    ),
    ("tail-db-directory", ["tail", "--db", "{dir}"], None, "is a directory, not an audit log"),
    (
        "query-db-not-a-database",
        ["query", "--db", "{junk}"],
        None,
        "is not a readable audit log: file is not a database",
    ),
    ("verify-db-not-a-database", ["verify", "--db", "{junk}"], None, "is not a readable audit log"),
    ("append-db-directory", ["append", "--db", "{dir}", "/dev/null"], None, ""),
    ("rebuild-index-db-not-a-database", ["rebuild-index", "--db", "{junk}"], None, ""),
    ("show-beyond-size", ["show", "999"], None, "no leaf 999 (log size 40)"),
    ("show-not-an-index", ["show", "first"], None, "expected a leaf index or a 32-hex-digit"),
    ("show-unknown-event", ["show", "f" * 32], None, f"no event {'f' * 32} in the log"),
    ("query-bad-time", ["query", "-S", "last tuesday"], None, "cannot read time"),
    ("query-bad-field", ["query", "notafield"], None, "expected FIELD=VALUE"),
    ("query-bad-cursor", ["query", "--cursor", "x"], None, "bad cursor"),
    (
        "prove-no-such-head",
        ["prove", "--consistency", "7", "40"],
        None,
        "no signed tree head of size 7",
    ),
    ("prove-sizes-reversed", ["prove", "--consistency", "40", "20"], None, "1 <= OLD <= NEW"),
    ("prove-both", ["prove", "3", "--consistency", "20", "40"], None, "not both"),
    (
        "verify-bad-log-key",
        ["verify", "--log-key", "example+00+AAAA"],
        None,
        "not a log verifier key",
    ),
    ("verify-missing-pub", ["verify", "--log-key-file", "/nope/k"], None, "no log public key"),
    (
        "register-node-bad-key",
        ["register-node", "edge-9", "abcd"],
        None,
        "is not an Ed25519 verify key",
    ),
    ("data-dir-a-file", ["query", "--data-dir", "{junk}"], None, "no audit log at"),
]


@pytest.mark.parametrize(
    ("argv", "stdin", "expected"),
    [pytest.param(a, s, e, id=i) for i, a, s, e in BAD_INPUTS],
)
def test_bad_inputs_get_one_error_line(  # noqa: PLR0917 - fixtures and parameters
    log: Log,
    proof_file: Path,
    tmp_path: Path,
    argv: list[str],
    stdin: str | None,
    expected: str,
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("this is not a database\n" * 20)
    subs = {
        "{pub}": str(log.pub),
        "{proof}": str(proof_file),
        "{dir}": str(tmp_path),
        "{junk}": str(junk),
    }
    args = [subs.get(a, a) for a in argv]
    line = one_error(cli(*args, stdin=stdin, data=log.data))
    assert expected in line


# ------------------------------------------------------------------ keys show's base64


def test_origin_key_accepts_hex_and_the_base64_keys_show_prints(log: Log, proof_file: Path) -> None:
    b64url = base64.urlsafe_b64encode(EDGE.verify_key).rstrip(b"=").decode()  # `keys show`
    b64 = base64.b64encode(EDGE.verify_key).decode()
    for form in (EDGE.verify_key.hex(), b64url, b64):
        out = ok(
            cli("verify-proof", str(proof_file), "--log-key", str(log.pub), f"--origin-key={form}")
        )
        doc = json.loads(out)
        assert (doc["leaf_index"], doc["origin_key_source"]) == (7, "caller")
        assert doc["time"].endswith("Z")
    stranger = base64.urlsafe_b64encode(Ed25519Signer.from_seed(b"S" * 32).verify_key)
    line = one_error(
        cli(
            "verify-proof",
            str(proof_file),
            "--log-key",
            str(log.pub),
            # base64url may start with "-": the = form keeps argparse from reading an option
            "--origin-key=" + stranger.rstrip(b"=").decode(),
        )
    )
    assert "AuthenticationError" in line


# ------------------------------------------------------------------ conventions


def test_formats_and_iso_times(log: Log) -> None:
    rows = _jsonl(ok(cli("query", "--format", "jsonl", data=log.data)))
    assert [r["index"] for r in rows] == list(range(N))
    assert all(str(r["time"]).endswith("Z") and "+00:00" not in str(r["time"]) for r in rows)
    assert len(json.loads(ok(cli("query", "--format", "json", "--limit", "3", data=log.data)))) == 3
    table = ok(cli("query", "--limit", "3", data=log.data)).splitlines()
    assert table[0].split()[:3] == ["INDEX", "TIME", "(UTC)"]
    assert table[1].split()[0] == "0"
    assert table[1].split()[1].endswith("Z")

    assert _indices(ok(cli("tail", "-n", "2", "-o", "jsonl", data=log.data))) == [N - 2, N - 1]
    shown = json.loads(ok(cli("show", "5", "--format", "json", data=log.data)))
    assert shown["verified"] is True
    assert shown["time"].endswith("Z")
    assert json.loads(ok(cli("show", "5", "--format", "jsonl", data=log.data)))["index"] == 5
    assert "inclusion:" in ok(cli("show", "5", data=log.data))
    nodes = json.loads(ok(cli("list-nodes", "--format", "json", data=log.data)))
    assert [n["node_id"] for n in nodes] == ["edge-1"]
    assert _jsonl(ok(cli("list-nodes", "--format", "jsonl", data=log.data)))[0]["node_id"] == (
        "edge-1"
    )
    report = json.loads(ok(cli("verify", "--no-state", "--format", "jsonl", data=log.data)))
    assert (report["ok"], report["size"]) == (True, N)


def test_data_dir_option_and_node_toml(log: Log, tmp_path: Path) -> None:
    bare = _env()  # neither SECUREMESH_DATA_DIR nor SECUREMESH_AUDIT_DB
    d = str(log.data)
    for argv in (("--data-dir", d, "query"), ("query", "--data-dir", d)):
        out = subprocess.run(
            [sys.executable, "-m", "securemesh", "audit", *argv, "-o", "jsonl", "--limit", "2"],
            capture_output=True,
            text=True,
            env=bare,
            timeout=180,
            check=True,
        ).stdout
        assert _indices(out) == [0, 1]
    # an explicit --data-dir wins over $SECUREMESH_AUDIT_DB
    out = ok(cli("query", "--data-dir", d, "-o", "jsonl", env=_env(SECUREMESH_AUDIT_DB="/nope")))
    assert len(_jsonl(out)) == N
    # a cloud's data dir whose node.toml puts the log elsewhere: found as the daemon finds it
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    (cloud / "node.toml").write_text(
        'node_id = "cloud-1"\ntier = "cloud"\n'
        f'data_dir = "{cloud}"\n[audit]\nlog_db = "{log.db}"\n'
        f'log_key = "{log.data}/audit-log.key"\n'
    )
    info = json.loads(ok(cli("info", "--data-dir", str(cloud), "-o", "json")))
    assert (info["log"], info["size"]) == (str(log.db), N)
    assert info["latest_checkpoint"]["signature"] == "verified with example.org/audit"
    assert ok(cli("verify", "--no-state", "--data-dir", str(cloud))).startswith(f"OK: {N} entries")


def test_since_until_aliases(log: Log) -> None:
    recent = list(range(N_OLD, N))
    old = list(range(N_OLD))
    # the subprocesses' clocks run later than NOW: the margins allow a slow machine
    # "today" only when no UTC midnight falls between the events and an hour from now
    today_ok = _midnight(time.time() + 3600) <= NEW_T0
    for since in ("-1h", "-90m", "yesterday", "today" if today_ok else "yesterday"):
        assert _indices(ok(cli("query", "-S", since, "-o", "jsonl", data=log.data))) == recent
    assert _indices(ok(cli("query", "-U", "-2d", "-o", "jsonl", data=log.data))) == old
    assert _indices(ok(cli("query", "--until", "-2d", "-o", "jsonl", data=log.data))) == old
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NEW_T0 + 10 * NEW_STEP - 1))
    assert _indices(ok(cli("query", "-S", iso, "-o", "jsonl", data=log.data))) == recent[10:]
    # tail takes the same filters
    assert (
        _indices(ok(cli("tail", "-n", "3", "-U", "-2d", "-o", "jsonl", data=log.data)))
        == (old[-3:])
    )


def _midnight(t: float) -> float:
    """The UTC midnight that starts the day of ``t``."""
    return t - t % 86400


def test_tail_takes_the_filters_of_query(log: Log) -> None:
    finished = [i for i in range(N) if i % 3 == 1]
    out = ok(cli("tail", "-n", "4", "--kind", "task.finished", "-o", "jsonl", data=log.data))
    assert _indices(out) == finished[-4:]
    out = ok(cli("tail", "-n", "100", "--outcome", "failure", "-o", "jsonl", data=log.data))
    assert _indices(out) == [i for i in range(N) if i % 5 == 0]
    out = ok(cli("tail", "-n", "2", "--subject", "object:obj-3", "-o", "jsonl", data=log.data))
    assert _indices(out) == [3]
    out = ok(cli("tail", "-n", "5", "n=7", "-o", "jsonl", data=log.data))
    assert _indices(out) == [7]
    assert ok(cli("tail", "-n", "0", "-o", "jsonl", data=log.data)) == ""


def test_tail_follow_with_a_filter(log: Log, tmp_path: Path) -> None:
    """-f prints only new matching events (a copy of the log, appended to by the CLI)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("audit.db", "audit-log.key", "audit-log.key.pub"):
        (data / name).write_bytes((log.data / name).read_bytes())
    cmd = [sys.executable, "-m", "securemesh", "audit", "tail", "-f", "-n", "1", "--interval"]
    proc = subprocess.Popen(
        [*cmd, "0.05", "--kind", "node.enrolled", "-o", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(SECUREMESH_DATA_DIR=str(data)),
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["index"] == 38  # last node.enrolled
        more = tmp_path / "more.b64"
        more.write_text(_b64_lines(_events(N, 6, NOW, 1.0)))  # 40..45; enrolled: 41, 44
        ok(cli("append", str(more), data=data))
        assert json.loads(proc.stdout.readline())["index"] == 41
        assert json.loads(proc.stdout.readline())["index"] == 44
    finally:
        proc.kill()
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_show_takes_an_event_id(log: Log) -> None:
    by_id = json.loads(ok(cli("show", f"{12:032x}", "-o", "json", data=log.data)))
    by_index = json.loads(ok(cli("show", "12", "-o", "json", data=log.data)))
    assert by_id == by_index
    assert by_id["event"]["event_id"] == f"{12:032x}"
    proof = ok(cli("prove", f"{12:032x}", data=log.data))  # prove too; --out defaults to stdout
    assert json.loads(proof)["leaf_index"] == 12


def test_info_prints_size_root_and_latest_checkpoint(log: Log) -> None:
    info = json.loads(ok(cli("info", "-o", "json", data=log.data)))
    verify = json.loads(ok(cli("verify", "--no-state", "-o", "json", data=log.data)))
    assert (info["size"], info["root"], info["tree_heads"]) == (N, verify["root"], 2)
    cp = info["latest_checkpoint"]
    assert (cp["size"], cp["root"]) == (N, verify["root"])
    assert cp["time"].endswith("Z")
    assert cp["signed_by"] == [f"example.org/audit+{log.verifier.split('+')[1]}"]
    assert cp["note"].startswith(f"example.org/audit\n{N}\n")
    table = ok(cli("info", data=log.data))
    assert f"size:              {N}" in table
    assert "verified with example.org/audit" in table


def test_prove_consistency(log: Log, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    ok(cli("prove", "--consistency", str(N_OLD), str(N), "--out", str(out), data=log.data))
    doc = json.loads(out.read_text())
    name, vk = parse_verifier_key(log.verifier)
    old = open_checkpoint(doc["old_checkpoint"].encode(), key_name=name, verify_key=vk)
    new = open_checkpoint(doc["new_checkpoint"].encode(), key_name=name, verify_key=vk)
    assert (old.size, new.size) == (N_OLD, N)
    proof = [base64.b64decode(h) for h in doc["consistency_proof"]]
    verify_consistency(N_OLD, N, old.root_hash, new.root_hash, proof)  # raises if not
    assert proof  # a real proof, not the trivial one
    # an auditor checks the file with only the log's public key
    checked = json.loads(ok(cli("verify-proof", str(out), "--log-key", log.verifier)))
    assert (checked["ok"], checked["old_size"], checked["new_size"]) == (True, N_OLD, N)
    doc["consistency_proof"] = doc["consistency_proof"][1:]
    out.write_text(json.dumps(doc))
    line = one_error(cli("verify-proof", str(out), "--log-key", log.verifier))
    assert "ConsistencyProofError" in line


def test_verify_progress(log: Log) -> None:
    done = cli("verify", "--no-state", "--progress", data=log.data)
    assert ok(done).startswith(f"OK: {N} entries")
    assert f"verify: {N}/{N} entries (100%)" in done.stderr
    quiet = cli("verify", "--no-state", data=log.data)  # stderr is a pipe: no progress
    assert ok(quiet).startswith("OK:")
    assert quiet.stderr == ""


# ------------------------------------------------------------------ PostgreSQL


def test_postgres_read_commands_run_no_ddl(audit_pg_url: str, tmp_path: Path) -> None:
    line = one_error(cli("query", "--db", audit_pg_url, data=tmp_path))
    assert line.startswith("error: no audit log at postgresql+psycopg://postgres@")
    engine = create_engine(audit_pg_url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []  # no table was created
    finally:
        engine.dispose()
    # a real log there: read commands work in a read-only session
    ok(cli("init-log", "--db", audit_pg_url, data=tmp_path))
    ok(cli("register-node", "--db", audit_pg_url, "edge-1", EDGE.verify_key.hex(), data=tmp_path))
    (tmp_path / "e.b64").write_text(_b64_lines(_events(0, 5, NEW_T0, 1.0)))
    ok(cli("append", "--db", audit_pg_url, str(tmp_path / "e.b64"), data=tmp_path))
    assert ok(cli("verify", "--db", audit_pg_url, "--no-state", data=tmp_path)).startswith("OK: 5")
    tail = ok(cli("tail", "--db", audit_pg_url, "-n", "2", "-o", "jsonl", data=tmp_path))
    assert _indices(tail) == [3, 4]
