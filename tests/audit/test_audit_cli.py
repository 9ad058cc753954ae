"""``securemesh audit …`` end to end, in-process through ``securemesh.cli.main``."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from audit_log_helpers import make_events
from sqlalchemy import update

from securemesh.audit import _schema as s
from securemesh.audit.admin import load_log_key
from securemesh.audit.events import event_key_id
from securemesh.audit.log import open_log
from securemesh.cli import _audit as audit_cli
from securemesh.cli import main
from securemesh.crypto import keystore
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import ConfigError, WrongPassphrase

N = 40
PASSPHRASE = "log-key-passphrase"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SECUREMESH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SECUREMESH_AUDIT_DB", raising=False)
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", PASSPHRASE)  # the log key file's
    monkeypatch.setattr(audit_cli, "_KDF_PARAMS", keystore.UNSAFE_FAST_PARAMS)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def populated(env: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(capsys, "init-log", "--origin", "example.org/audit")
    assert code == 0
    assert out.startswith("example.org/audit+")
    signer = Ed25519Signer.from_seed(b"1" * 32)
    assert run(capsys, "register-node", "edge-1", signer.verify_key.hex())[0] == 0
    events = make_events(signer, "edge-1", N)
    f = env / "events.b64"
    f.write_text("".join(base64.b64encode(e.to_bytes()).decode() + "\n" for e in events))
    code, out, _ = run(capsys, "append", str(f))
    assert code == 0
    assert out.split() == [str(i) for i in range(N)]
    return env


def test_query_filters_and_formats(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == list(range(N))
    assert rows[3]["subject"] == {"type": "object", "id": "obj-3"}
    assert rows[3]["details"] == {"n": 3, "peer": "peer-0"}

    code, out, _ = run(capsys, "query", "--kind", "task.finished", "--format", "json")
    kinds = {r["kind"] for r in json.loads(out)}
    assert kinds == {"task.finished"}

    _, out, _ = run(capsys, "query", "--outcome", "failure", "peer=peer-0", "--format", "jsonl")
    got = [json.loads(line)["details"]["n"] for line in out.splitlines()]
    assert got == [n for n in range(N) if n % 5 == 0 and n % 3 == 0]

    _, out, _ = run(capsys, "query", "--subject", "object:obj-9", "--format", "jsonl")
    assert [json.loads(line)["index"] for line in out.splitlines()] == [9]

    _, out, _ = run(capsys, "query", "--text", "OBJ-1", "--format", "jsonl")
    assert {json.loads(line)["index"] for line in out.splitlines()} == {12, 15, 18}

    since = "2023-11-14T22:13:30Z"  # events are at 1_700_000_000 + i seconds
    _, out, _ = run(
        capsys, "query", "--since", since, "--until", "2023-11-14T22:13:35Z", "--format", "jsonl"
    )
    assert [json.loads(line)["index"] for line in out.splitlines()] == [10, 11, 12, 13, 14]

    code, out, err = run(capsys, "query", "--limit", "15", "--format", "jsonl")
    assert len(out.splitlines()) == 15
    cursor = err.split("--cursor ")[1].strip()
    _, out, _ = run(capsys, "query", "--limit", "100", "--cursor", cursor, "--format", "jsonl")
    assert json.loads(out.splitlines()[0])["index"] == 15

    code, out, _ = run(capsys, "query", "--node", "edge-1", "--limit", "3")
    assert code == 0
    assert "object.put" in out
    assert "obj-0" in out


def test_tail_show_prove_verify_export(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "tail", "-n", "3", "--format", "jsonl")
    assert [json.loads(line)["index"] for line in out.splitlines()] == [37, 38, 39]

    code, out, _ = run(capsys, "show", "5", "--format", "json")
    assert code == 0
    shown = json.loads(out)
    assert shown["verified"] is True
    assert shown["event"]["details"]["n"] == 5
    code, out, _ = run(capsys, "show", "5")
    assert "verified" in out

    code, out, _ = run(capsys, "verify")
    assert code == 0
    assert out.startswith(f"OK: {N} entries")
    assert (populated / "data" / "audit-last-seen.json").exists()

    proof = populated / "proof.json"
    assert run(capsys, "prove", "7", "--out", str(proof))[0] == 0
    pub = str(populated / "data" / "audit-log.key.pub")
    code, out, _ = run(capsys, "verify-proof", str(proof), "--log-key", pub)
    assert code == 0
    assert json.loads(out)["leaf_index"] == 7
    # only the log's public key string is needed
    key_text = Path(pub).read_text().strip()
    assert run(capsys, "verify-proof", str(proof), "--log-key", key_text)[0] == 0
    # a proof file whose entry was altered is refused
    doc = json.loads(proof.read_text())
    entry = bytearray(base64.b64decode(doc["entry"]))
    entry[-5] ^= 1
    doc["entry"] = base64.b64encode(bytes(entry)).decode()
    proof.write_text(json.dumps(doc))
    code, _, err = run(capsys, "verify-proof", str(proof), "--log-key", key_text)
    assert code == 1
    assert "error" in err

    code, out, err = run(capsys, "export")
    lines = out.splitlines()
    assert len(lines) == N
    assert json.loads(lines[2])["event_unverified"]["details"]["n"] == 2
    exported = populated / "export.jsonl"
    exported.write_text(out)
    # re-appending an export is idempotent
    code, out, _ = run(capsys, "append", str(exported))
    assert out.split() == [str(i) for i in range(N)]


def test_verify_names_tampered_entry_and_refuses_rollback(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "verify")[0] == 0
    db = str(populated / "data" / "audit.db")
    with open_log(db) as log:
        entry = bytearray(log.get_entry(23))
        entry[-4] ^= 2
        with log.engine.begin() as conn:
            conn.execute(update(s.leaves).where(s.leaves.c.idx == 23).values(entry=bytes(entry)))
    code, _, err = run(capsys, "verify")
    assert code == 1
    assert "tampered entries: 23" in err

    # a different client state that saw a bigger tree: rollback
    state = populated / "other-state.json"
    state.write_text(
        json.dumps({"origin": "example.org/audit", "size": 1000, "root": "00" * 32, "note": ""})
    )
    code, _, err = run(capsys, "verify", "--state", str(state))
    assert code == 1
    assert "rollback" in err


def test_rebuild_index_restores_projection(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(populated / "data" / "audit.db")
    with open_log(db) as log, log.engine.begin() as conn:
        conn.execute(update(s.leaves).values(kind="x", origin="y"))
    _, out, _ = run(capsys, "query", "--kind", "object.put", "--format", "jsonl")
    assert out == ""
    assert run(capsys, "rebuild-index")[0] == 0
    _, out, _ = run(capsys, "query", "--kind", "object.put", "--format", "jsonl")
    assert len(out.splitlines()) == len([i for i in range(N) if i % 3 == 0])


def test_errors_are_reported_not_raised(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show", "0")
    assert code == 1
    assert "error" in err
    code, _, err = run(capsys, "query", "--since", "yesterday-ish")
    assert code == 1
    assert "cannot read time" in err
    code, _, err = run(capsys, "query", "notafield")
    assert code == 1


def test_console_script_runs(populated: Path) -> None:
    """The real entry point, in a subprocess, as a security team would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "securemesh", "audit", "query", "--limit", "2", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert [r["index"] for r in json.loads(done.stdout)] == [0, 1]


def test_cli_on_postgres(env: Path, capsys: pytest.CaptureFixture[str], audit_pg_url: str) -> None:
    db = ["--db", audit_pg_url]
    assert run(capsys, "init-log", *db)[0] == 0
    signer = Ed25519Signer.from_seed(b"2" * 32)
    assert run(capsys, "register-node", *db, "edge-2", signer.verify_key.hex())[0] == 0
    f = env / "e.b64"
    f.write_text(
        "".join(
            base64.b64encode(e.to_bytes()).decode() + "\n" for e in make_events(signer, "edge-2", 9)
        )
    )
    assert run(capsys, "append", *db, str(f))[1].split() == [str(i) for i in range(9)]
    code, out, _ = run(capsys, "verify", *db, "--format", "json")
    assert code == 0
    assert json.loads(out)["size"] == 9
    _, out, _ = run(capsys, "query", *db, "--kind", "node.enrolled", "--format", "jsonl")
    assert [json.loads(line)["index"] for line in out.splitlines()] == [2, 5, 8]


def test_tail_follow_prints_new_events(populated: Path) -> None:
    cmd = [sys.executable, "-m", "securemesh", "audit", "tail", "-f", "-n", "1"]
    proc = subprocess.Popen(
        [*cmd, "--interval", "0.05", "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["index"] == N - 1
        signer = Ed25519Signer.from_seed(b"1" * 32)
        key = load_log_key(populated / "data" / "audit-log.key", PASSPHRASE)
        with open_log(
            str(populated / "data" / "audit.db"), signer=key.signer, origin=key.name
        ) as log:
            log.append(make_events(signer, "edge-1", 2, start=N))
        assert json.loads(proc.stdout.readline())["index"] == N
        assert json.loads(proc.stdout.readline())["index"] == N + 1
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_register_node_adds_keys_and_verify_covers_the_whole_history(
    populated: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Re-registering a node adds a key: old entries still verify, show and prove."""
    old = Ed25519Signer.from_seed(b"1" * 32)
    new = Ed25519Signer.from_seed(b"9" * 32)
    code, _, err = run(capsys, "register-node", "edge-1", base64.b64encode(new.verify_key).decode())
    assert code == 0
    assert f"registered: edge-1 key id {event_key_id(new.verify_key).hex()}" in err
    code, _, err = run(capsys, "register-node", "edge-1", new.verify_key.hex())
    assert (code, "already registered" in err) == (0, True)
    assert run(capsys, "register-node", "edge-1", "ab" * 16)[0] == 1  # 16 bytes: not a key
    code, out, _ = run(capsys, "list-nodes", "--format", "json")
    assert code == 0
    assert sorted((r["node_id"], r["verify_key"]) for r in json.loads(out)) == sorted(
        [("edge-1", old.verify_key.hex()), ("edge-1", new.verify_key.hex())]
    )
    code, out, _ = run(capsys, "list-nodes")  # a table: NODE  KEY ID  VERIFY KEY
    assert ["edge-1", event_key_id(old.verify_key).hex(), old.verify_key.hex()] in [
        line.split() for line in out.splitlines()
    ]
    f = tmp_path / "new.b64"
    events = make_events(new, "edge-1", 5, start=N)
    f.write_text("".join(base64.b64encode(e.to_bytes()).decode() + "\n" for e in events))
    code, out, _ = run(capsys, "append", str(f))
    assert (code, out.split()) == (0, [str(i) for i in range(N, N + 5)])
    code, out, _ = run(capsys, "verify", "--full", "--format", "json")
    assert (code, json.loads(out)["size"]) == (0, N + 5)
    pub = str(populated / "data" / "audit-log.key.pub")
    for index, signer in ((3, old), (N + 2, new)):  # one entry under each key
        code, out, _ = run(capsys, "show", str(index), "--format", "json")
        assert (code, json.loads(out)["verified"]) == (0, True)
        proof = tmp_path / f"p{index}.json"
        assert run(capsys, "prove", str(index), "--out", str(proof))[0] == 0
        key = signer.verify_key.hex()
        assert (
            run(capsys, "verify-proof", str(proof), "--log-key", pub, "--origin-key", key)[0] == 0
        )


def test_the_log_key_is_encrypted_at_rest(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """init-log writes a key-store file: no seed on disk, the passphrase opens it."""
    assert run(capsys, "init-log")[0] == 0
    key_file = env / "data" / "audit-log.key"
    raw = key_file.read_bytes()
    assert raw.startswith(keystore.MAGIC)
    assert key_file.stat().st_mode & 0o077 == 0
    key = load_log_key(key_file, PASSPHRASE)
    assert key.signer.seed().hex().encode() not in raw
    assert key.signer.seed() not in raw
    with pytest.raises(WrongPassphrase):
        load_log_key(key_file, "not-it")
    with pytest.raises(ConfigError, match="encrypted"):
        load_log_key(key_file)
    # append without the passphrase: one error line, no traceback
    monkeypatch.delenv("SECUREMESH_PASSPHRASE")
    (env / "none.b64").write_text("")
    code, _, err = run(capsys, "append", str(env / "none.b64"))
    assert code != 0
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_a_plain_log_key_keeps_working_and_is_rewrapped(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file from before the key store: still used as is, then encrypted in place."""
    assert run(capsys, "init-log", "--origin", "example.org/old")[0] == 0
    key_file = env / "data" / "audit-log.key"
    old = load_log_key(key_file, PASSPHRASE)
    # what create_log_key wrote before: the seed as plain JSON, 0600
    key_file.write_text(json.dumps({"name": old.name, "seed": old.signer.seed().hex()}) + "\n")
    key_file.chmod(0o600)
    assert load_log_key(key_file).plain  # read without a passphrase
    signer = Ed25519Signer.from_seed(b"2" * 32)
    assert run(capsys, "register-node", "edge-1", signer.verify_key.hex())[0] == 0
    f = env / "events.b64"
    f.write_text(
        "".join(
            base64.b64encode(e.to_bytes()).decode() + "\n" for e in make_events(signer, "edge-1", 3)
        )
    )
    monkeypatch.delenv("SECUREMESH_PASSPHRASE")  # a plain key needs none
    code, out, _ = run(capsys, "append", str(f))
    assert (code, out.split()) == (0, ["0", "1", "2"])
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", PASSPHRASE)
    code, out, _ = run(capsys, "rewrap-log-key")
    assert code == 0
    assert out.strip() == old.verifier  # the same key, now sealed
    assert key_file.read_bytes().startswith(keystore.MAGIC)
    new = load_log_key(key_file, PASSPHRASE)
    assert (new.name, new.signer.seed(), new.plain) == (old.name, old.signer.seed(), False)
    code, out, _ = run(capsys, "append", str(f))  # idempotent by event id, now with the sealed key
    assert code == 0
    assert run(capsys, "verify", "--no-state")[0] == 0
