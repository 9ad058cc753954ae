"""The query index is checked: ``verify`` compares it with the entries, ``query`` checks each hit.

The attack (issue 9, item 7): someone with write access to the database edits
only the indexed columns of a row (origin, kind, subject, outcome, time,
details). Before, ``audit verify`` passed — it checked entries, hashes and
heads, not the columns — while ``audit query`` printed the forged values, or
no longer found the event at all (a *hidden* event). Now verify names every
such row, also below the client's last-seen checkpoint (the signed root binds
the entries, not the columns), and a query refuses to show a hit that does
not match its signed, included leaf.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from audit_log_helpers import make_events
from sqlalchemy import update

from securemesh.audit import _schema as s
from securemesh.audit.log import AuditLog, open_log
from securemesh.audit.query import QueryFilter, query, rows_after
from securemesh.audit.verify import LastSeen, verify_log
from securemesh.cli import main
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import LogIntegrityError

N = 600  # conftest.POPULATED

#: One forged value per index column (row 42 is an ``object.put`` by edge-1, see make_events).
FORGERIES: dict[str, Any] = {
    "origin": "edge-2",
    "kind": "cert.revoked",
    "subject_type": "node",
    "subject_id": "obj-43",
    "outcome": "failure",
    "time_ms": 978_307_200_000,  # 2001
    "details": '{"n":42,"peer":"peer-2"}',
}


@pytest.fixture
def log(populated_log: AuditLog) -> AuditLog:
    return populated_log


def _set(log: AuditLog, index: int, **values: Any) -> None:
    with log.engine.begin() as conn:
        conn.execute(update(s.leaves).where(s.leaves.c.idx == index).values(**values))


def _verify(log: AuditLog, signer: Ed25519Signer, **kwargs: Any) -> None:
    verify_log(log.engine, log_verify_key=signer.verify_key, log_origin=log.origin, **kwargs)


def _key(log: AuditLog, signer: Ed25519Signer) -> tuple[str, bytes]:
    return (log.origin, signer.verify_key)


@pytest.mark.parametrize("column", sorted(FORGERIES))
def test_verify_names_a_row_whose_index_column_was_edited(
    log: AuditLog, log_signer: Ed25519Signer, column: str
) -> None:
    _verify(log, log_signer)
    _set(log, 42, **{column: FORGERIES[column]})
    with pytest.raises(LogIntegrityError) as info:
        _verify(log, log_signer)
    assert info.value.entries == [42]
    assert f"query index does not match the signed entry ({column})" in str(info.value)
    with pytest.raises(LogIntegrityError) as info:  # the segmented path agrees
        _verify(log, log_signer, segment_size=64, fetch_batch=48)
    assert info.value.entries == [42]


def test_incremental_verify_checks_the_index_below_the_last_seen_size(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    head = log.latest_tree_head()
    assert head is not None
    seen = LastSeen(log.origin, head.size, head.root, head.note)
    report = verify_log(
        log.engine, log_verify_key=log_signer.verify_key, log_origin=log.origin, last_seen=seen
    )
    assert report.signatures_checked == 0
    _set(log, 7, subject_id="obj-9999", details='{"n":7,"peer":"peer-9"}')
    with pytest.raises(LogIntegrityError) as info:
        _verify(log, log_signer, last_seen=seen)
    assert info.value.entries == [7]
    assert "(subject_id, details)" in str(info.value)


def test_an_event_hidden_from_a_filter_is_named_by_verify(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    """Edit the kind and origin of a row so that the query a security team runs misses it."""
    flt = QueryFilter(origin="edge-1", kind="node.enrolled")
    key = _key(log, log_signer)
    before = [r.index for r in query(log.engine, flt, limit=1000, log_key=key).rows]
    assert 50 in before  # 50 % 3 == 2: a node.enrolled by edge-1
    _set(log, 50, kind="object.get", origin="edge-2")
    after = [r.index for r in query(log.engine, flt, limit=1000, log_key=key).rows]
    assert after == [i for i in before if i != 50]  # hidden from the query ...
    with pytest.raises(LogIntegrityError) as info:  # ... but not from verify
        _verify(log, log_signer)
    assert info.value.entries == [50]
    assert "(origin, kind)" in str(info.value)


@pytest.mark.parametrize("column", sorted(FORGERIES))
def test_a_query_never_returns_a_forged_index_value(
    log: AuditLog, log_signer: Ed25519Signer, column: str
) -> None:
    _set(log, 42, **{column: FORGERIES[column]})
    flt = QueryFilter(**{"origin": "edge-2"} if column == "origin" else {})
    for key in (_key(log, log_signer), None):
        with pytest.raises(LogIntegrityError, match=r"entry 42 failed its check") as info:
            query(log.engine, flt, limit=1000, log_key=key)
        assert info.value.entries == [42]
        assert column in str(info.value)
    with pytest.raises(LogIntegrityError):
        rows_after(log.engine, 40, log_key=_key(log, log_signer))
    # a page that does not reach the row is served
    page = query(log.engine, QueryFilter(), limit=40, log_key=_key(log, log_signer))
    assert [r.index for r in page.rows] == list(range(40))


def test_query_rows_come_from_the_checked_entry(log: AuditLog, log_signer: Ed25519Signer) -> None:
    page = query(log.engine, QueryFilter(kind="object.put"), limit=5, log_key=_key(log, log_signer))
    assert [r.index for r in page.rows] == [0, 3, 6, 9, 12]
    assert page.next_cursor == "i12"
    row = page.rows[1]
    assert (row.origin, row.kind, row.subject_type, row.subject_id) == (
        "edge-1",
        "object.put",
        "object",
        "obj-3",
    )
    assert row.details == {"n": 3, "peer": "peer-0"}
    assert [r.index for r in rows_after(log.engine, N - 3, log_key=_key(log, log_signer))] == [
        N - 2,
        N - 1,
    ]


def test_a_substituted_row_with_every_column_consistent_is_refused_by_query(
    log: AuditLog, log_signer: Ed25519Signer, edge_signers: dict[str, Ed25519Signer]
) -> None:
    """A genuine, validly signed event the log never committed to, with a matching index."""
    signed = make_events(edge_signers["edge-1"], "edge-1", 1, start=10_000)[0]
    entry = signed.to_bytes()
    from securemesh.audit._entry import decode_entry

    values = decode_entry(entry).row_values()
    cols = ("event_id", "entry", "leaf_hash", *s.leaves.c.keys()[4:])
    _set(log, 9, **dict(zip(cols, values, strict=True)))
    with pytest.raises(LogIntegrityError, match="not included in the tree head") as info:
        query(log.engine, QueryFilter(origin="edge-1"), limit=20, log_key=_key(log, log_signer))
    assert info.value.entries == [9]


def test_a_query_checks_the_head_with_the_log_key(log: AuditLog) -> None:
    other = Ed25519Signer.from_seed(b"X" * 32)
    with pytest.raises(LogIntegrityError, match="not signed by the log key"):
        query(log.engine, QueryFilter(), limit=3, log_key=(log.origin, other.verify_key))


def test_a_bad_origin_signature_is_refused_by_query(
    log: AuditLog, log_signer: Ed25519Signer
) -> None:
    entry = bytearray(log.get_entry(4))
    entry[20] ^= 0x01  # inside the signature: the event and its index still agree
    new = bytes(entry)
    _set(log, 4, entry=new, leaf_hash=hashlib.sha256(b"\x00" + new).digest())
    with pytest.raises(LogIntegrityError, match="origin signature does not verify"):
        query(log.engine, QueryFilter(), limit=10, log_key=_key(log, log_signer))


def test_cli_query_prints_nothing_from_a_forged_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``securemesh audit query`` over a log whose index was edited: one error line, exit 1."""
    from securemesh.cli import _audit as audit_cli
    from securemesh.crypto import keystore

    monkeypatch.setenv("SECUREMESH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SECUREMESH_AUDIT_DB", raising=False)
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", "log-key-passphrase")  # seals the log key
    monkeypatch.setattr(audit_cli, "_KDF_PARAMS", keystore.UNSAFE_FAST_PARAMS)
    assert main(["audit", "init-log", "--origin", "example.org/audit"]) == 0
    signer = Ed25519Signer.from_seed(b"1" * 32)
    with open_log(tmp_path / "audit.db") as lg:
        lg.register_node("edge-1", signer.verify_key)
    events = make_events(signer, "edge-1", 6)
    f = tmp_path / "events.b64"
    import base64

    f.write_text("".join(base64.b64encode(e.to_bytes()).decode() + "\n" for e in events))
    assert main(["audit", "append", str(f)]) == 0
    capsys.readouterr()
    with open_log(tmp_path / "audit.db") as lg:
        _set(lg, 3, kind="cert.revoked", subject_type="node", subject_id="edge-2")
    code = main(["audit", "query", "--kind", "cert.revoked", "--format", "jsonl"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "entry 3 failed its check" in err
    assert main(["audit", "verify", "--no-state"]) == 1
    assert "entry 3: query index does not match" in capsys.readouterr().err


@pytest.mark.slow
def test_worker_processes_name_index_tampering(log: AuditLog, log_signer: Ed25519Signer) -> None:
    _set(log, 64, kind="he.job")
    _set(log, 250, time_ms=1)
    with pytest.raises(LogIntegrityError) as info:
        _verify(log, log_signer, processes=2, segment_size=64)
    assert info.value.entries == [64, 250]
