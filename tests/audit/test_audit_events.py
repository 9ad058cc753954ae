"""Tests for securemesh.audit.events: the event model, canonical bytes, origin signatures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from securemesh.audit.events import (
    EVENT_SIGNATURE_DOMAIN,
    MAX_DETAIL_KEYS,
    MAX_EVENT_SIZE,
    MAX_SIGNED_EVENT_SIZE,
    REQUIRED_DETAILS,
    AuditEvent,
    EventKind,
    Outcome,
    SignedEvent,
    Subject,
    SubjectType,
    event_key_id,
    new_event,
    sign_event,
)
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    LocalError,
    RemoteError,
    SizeLimitExceeded,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "event_vectors.json").read_text(encoding="utf-8")
)
SIGNER = Ed25519Signer.from_seed(bytes.fromhex(VECTORS["signer_seed_hex"]))
OTHER = Ed25519Signer.from_seed(bytes([2]) * 32)
NOW = 1_700_000_000.123
EID = "0123456789abcdef0123456789abcdef"


def vector_event() -> AuditEvent:
    v = VECTORS["event"]
    return new_event(
        v["kind"],
        origin=v["origin"],
        subject=(v["subject_type"], v["subject_id"]),
        outcome=v["outcome"],
        details=v["details"],
        now=v["now"],
        event_id=v["event_id"],
    )


def simple(**overrides: Any) -> AuditEvent:
    args: dict[str, Any] = {
        "origin": "edge-1",
        "subject": ("object", "obj-42"),
        "outcome": "success",
        "details": {"size": 10},
        "now": NOW,
        "event_id": EID,
    }
    kind = overrides.pop("kind", EventKind.OBJECT_PUT)
    args.update(overrides)
    return new_event(kind, **args)


# ------------------------------------------------------------ golden bytes


def test_canonical_bytes_golden() -> None:
    ev = vector_event()
    assert ev.canonical_bytes() == VECTORS["canonical_utf8"].encode("utf-8")
    assert AuditEvent.from_canonical_bytes(ev.canonical_bytes()) == ev


def test_signed_event_golden() -> None:
    se = sign_event(vector_event(), SIGNER)  # Ed25519 is deterministic (RFC 8032)
    assert se.to_bytes().hex() == VECTORS["signed_event_hex"]
    assert se.key_id == event_key_id(SIGNER.verify_key)
    again = SignedEvent.from_bytes(bytes.fromhex(VECTORS["signed_event_hex"]))
    assert again.verify(SIGNER.verify_key) == vector_event()


def test_canonical_form_rules() -> None:
    ev = simple(details={"b": 1, "a": "é", "c": 1.5, "d": None, "e": True})
    text = ev.canonical_bytes().decode("utf-8")
    assert " " not in text
    assert '"details":{"a":"é","b":1,"c":1.5,"d":null,"e":true}' in text
    assert text.startswith('{"details"')
    assert text.endswith('"time_ms":1700000000123,"version":1}')


# ------------------------------------------------------------ construction


def test_new_event_fields() -> None:
    ev = simple()
    assert ev.version == 1
    assert ev.time_ms == 1_700_000_000_123
    assert ev.kind == EventKind.OBJECT_PUT
    assert ev.subject == Subject(type=SubjectType.OBJECT, id="obj-42")
    assert ev.outcome is Outcome.SUCCESS
    fresh = new_event("he.job", origin="cloud-1", subject=("task", "t1"))
    assert len(fresh.event_id) == 32
    assert fresh.event_id != new_event("he.job", origin="cloud-1", subject=("task", "t1")).event_id
    assert simple(event_id=bytes(range(16))).event_id == bytes(range(16)).hex()


def test_all_required_kinds_exist() -> None:
    wanted = {
        "node.enrolled", "cert.renewed", "cert.revoked", "message.rejected",
        "task.submitted", "task.placed", "task.finished", "task.failed",
        "object.put", "object.get", "object.repair", "object.delete",
        "storage.challenge", "fl.round_started", "fl.round_finished", "he.job",
    }  # fmt: skip
    assert wanted <= {k.value for k in EventKind}


def test_required_details() -> None:
    with pytest.raises(LocalError):
        simple(kind="message.rejected", details={})
    with pytest.raises(LocalError):
        simple(kind="message.rejected", details={"reason": ""})
    ev = simple(kind="message.rejected", outcome="denied", details={"reason": "bad_auth"})
    assert ev.details["reason"] == "bad_auth"
    with pytest.raises(LocalError):
        simple(kind="fl.round_finished", subject=("round", "r1"), details={"model_hash": 5})
    simple(kind="fl.round_finished", subject=("round", "r1"), details={"model_hash": "ab" * 32})


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": "Object.Put"},  # kinds are open, but must be well-formed
        {"kind": "nonamespace"},
        {"kind": "a..b"},
        {"kind": "counter.tick!"},
        {"kind": "x." + "y" * 70},
        {"outcome": "maybe"},
        {"origin": ""},
        {"origin": "has space"},
        {"origin": "x" * 65},
        {"origin": "-leading-dash"},
        {"subject": ("planet", "earth")},
        {"subject": ("object", "")},
        {"subject": ("object", "a\nb")},
        {"subject": ("object", "x" * 257)},
        {"event_id": "ABCDEF0123456789ABCDEF0123456789"},
        {"event_id": "0123"},
        {"event_id": b"short"},
        {"now": -1.0},
        {"details": {f"k{i}": i for i in range(MAX_DETAIL_KEYS + 1)}},
        {"details": {"k" * 65: 1}},
        {"details": {"": 1}},
        {"details": {"bad key": 1}},
        {"details": {"s": "x" * 1025}},
        {"details": {"f": float("nan")}},
        {"details": {"f": float("inf")}},
        {"details": {"i": 1 << 63}},
        {"details": {"l": [1, 2]}},
        {"details": {"d": {"nested": 1}}},
        {"details": {"b": b"bytes"}},
        {"details": {"s": "\ud800"}},  # lone surrogate cannot be UTF-8
        {"details": {f"k{i}": "x" * 1000 for i in range(9)}},  # > 8 KiB in total
    ],
    ids=str,
)
def test_invalid_events_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(LocalError):
        simple(**overrides).canonical_bytes()


def test_limits_at_the_edge() -> None:
    ev = simple(details={f"k{i:02d}": i for i in range(MAX_DETAIL_KEYS)})
    assert len(ev.details) == MAX_DETAIL_KEYS
    simple(details={"k" * 64: "x" * 1024, "i": -(1 << 63), "j": (1 << 63) - 1})
    ev = simple(details={"t": True, "one": 1, "f": 1.0})
    assert ev.details["t"] is True
    assert type(ev.details["one"]) is int
    assert type(ev.details["f"]) is float


def test_model_is_strict_and_frozen() -> None:
    ev = simple()
    with pytest.raises(ValidationError):
        ev.time_ms = 5
    with pytest.raises(ValidationError):
        AuditEvent(
            event_id=EID,
            time_ms="5",
            origin="edge-1",
            kind=EventKind.HE_JOB,
            subject=Subject(type=SubjectType.TASK, id="t"),
            outcome=Outcome.SUCCESS,
        )


# ------------------------------------------------------------ strict decoding


def _canonical_dict() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(simple().canonical_bytes())
    return d


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.replace(b",", b", ", 1),  # whitespace
        lambda b: b + b"\n",
        lambda b: b" " + b,
        lambda b: b.replace(b'"size":10', b'"size":010'),
        lambda b: b.replace(b'"size":10', b'"size":1e1'),
        lambda b: b.replace(b'"size":10', b'"size":NaN'),
        lambda b: b.replace(b'"version":1', b'"version":2'),
        lambda b: b.replace(b'"version":1', b'"version":true'),
        lambda b: b.replace(b'"time_ms":1700000000123', b'"time_ms":"1700000000123"'),
        lambda b: b.replace(b'{"details"', b'{"extra":1,"details"'),
        lambda b: b.replace(b'"edge-1"', b'"edge-1","origin":"edge-2"'),  # duplicate key
        lambda b: b.replace(b'"obj-42"', b'"obj\\u002d42"'),  # needless escape
        lambda b: b.replace(b'"outcome":"success"', b'"outcome":"SUCCESS"'),
        lambda b: b"[" + b + b"]",
        lambda b: b"\xef\xbb\xbf" + b,  # BOM
        lambda b: b.replace(b"edge-1", b"edge-\xff"),
        lambda b: b"",
    ],
)
def test_from_canonical_bytes_rejects_non_canonical(mutate: Any) -> None:
    good = simple().canonical_bytes()
    bad = mutate(good)
    assert bad != good
    with pytest.raises(DecodeError):
        AuditEvent.from_canonical_bytes(bad)


def test_key_order_matters() -> None:
    d = _canonical_dict()
    reordered = json.dumps(dict(reversed(list(d.items()))), separators=(",", ":")).encode()
    with pytest.raises(DecodeError):
        AuditEvent.from_canonical_bytes(reordered)


def test_oversize_is_checked_first() -> None:
    with pytest.raises(SizeLimitExceeded):
        AuditEvent.from_canonical_bytes(b" " * (MAX_EVENT_SIZE + 1))
    with pytest.raises(SizeLimitExceeded):
        SignedEvent.from_bytes(b"SMAE" + b"\x01" * MAX_SIGNED_EVENT_SIZE)


# ------------------------------------------------------------ signatures


def test_sign_verify_round_trip() -> None:
    ev = simple()
    se = sign_event(ev, SIGNER)
    wire = se.to_bytes()
    assert wire[:5] == b"SMAE\x01"
    assert len(wire) == SignedEvent.HEADER_SIZE + len(ev.canonical_bytes())
    back = SignedEvent.from_bytes(wire)
    assert back == se
    assert back.unverified_event() == ev
    assert back.verify(SIGNER.verify_key) == ev
    assert "unverified" in repr(back)
    assert SIGNER.verify_key.hex()[:16] not in repr(back)


def test_wrong_key_and_forgeries() -> None:
    se = sign_event(simple(), SIGNER)
    with pytest.raises(AuthenticationError):
        se.verify(OTHER.verify_key)
    with pytest.raises(AuthenticationError):
        se.verify(b"short")
    # The signature is domain separated: a plain signature over the bytes is refused.
    ev_bytes = simple().canonical_bytes()
    plain = SignedEvent.from_bytes(
        b"SMAE\x01" + event_key_id(SIGNER.verify_key) + SIGNER.sign(ev_bytes) + ev_bytes
    )
    with pytest.raises(AuthenticationError):
        plain.verify(SIGNER.verify_key)
    # Another node's event re-labelled with our key id still fails.
    theirs = sign_event(simple(origin="edge-2"), OTHER).to_bytes()
    relabelled = theirs[:5] + event_key_id(SIGNER.verify_key) + theirs[13:]
    with pytest.raises(AuthenticationError):
        SignedEvent.from_bytes(relabelled).verify(SIGNER.verify_key)
    assert EVENT_SIGNATURE_DOMAIN.endswith(b"\x00")


def test_mutating_the_source_event_does_not_change_the_signed_one() -> None:
    ev = simple(details={"size": 10})
    se = sign_event(ev, SIGNER)
    ev.details["size"] = 11
    assert se.verify(SIGNER.verify_key).details["size"] == 10


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SMAE",
        b"XXXX\x01" + bytes(72) + b"{}",
        b"SMAE\x02" + bytes(72) + b"{}",
        b"SMAE\x01" + bytes(72),
        b"SMAE\x01" + bytes(72) + b"{}",
    ],
)
def test_signed_event_framing(data: bytes) -> None:
    with pytest.raises(DecodeError):
        SignedEvent.from_bytes(data)


details_values = (
    st.text(max_size=40)
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from([k for k in EventKind if k not in REQUIRED_DETAILS]),
    outcome=st.sampled_from(list(Outcome)),
    subject_type=st.sampled_from(list(SubjectType)),
    subject_id=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=50
    ),
    details=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
        details_values,
        max_size=10,
    ),
    time_ms=st.integers(0, (1 << 63) - 1),
    eid=st.binary(min_size=16, max_size=16),
)
def test_round_trip_property(  # noqa: PLR0917 - hypothesis passes strategies by keyword
    kind: EventKind,
    outcome: Outcome,
    subject_type: SubjectType,
    subject_id: str,
    details: dict[str, Any],
    time_ms: int,
    eid: bytes,
) -> None:
    ev = AuditEvent(
        event_id=eid.hex(),
        time_ms=time_ms,
        origin="node-7",
        kind=kind,
        subject=Subject(type=subject_type, id=subject_id),
        outcome=outcome,
        details=details,
    )
    data = ev.canonical_bytes()
    assert AuditEvent.from_canonical_bytes(data) == ev
    wire = sign_event(ev, SIGNER).to_bytes()
    assert SignedEvent.from_bytes(wire).verify(SIGNER.verify_key) == ev


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_caught(data: st.DataObject) -> None:
    wire = sign_event(simple(details={"reason": "x", "n": 1}), SIGNER).to_bytes()
    pos = data.draw(st.integers(0, len(wire) - 1), "position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != wire[pos]), "byte")
    bad = wire[:pos] + bytes([new]) + wire[pos + 1 :]
    with pytest.raises(RemoteError):
        SignedEvent.from_bytes(bad).verify(SIGNER.verify_key)


def test_open_kinds_are_namespaced_strings() -> None:
    """A service's own kind (``counter.tick``) is an event kind like the built-ins."""
    from securemesh.audit.events import (
        BUILTIN_NAMESPACES,
        SignedEvent,
        is_valid_kind,
        kind_namespace,
        sign_event,
    )

    ev = simple(kind="counter.tick", details={"n": 3})
    assert ev.kind == "counter.tick"
    signed = SignedEvent.from_bytes(sign_event(ev, SIGNER).to_bytes())
    assert signed.verify(SIGNER.verify_key).kind == "counter.tick"
    assert kind_namespace("storage.put") == "storage"
    assert {"node", "cert", "message", "task", "object", "storage", "fl", "he", "audit"} == set(
        BUILTIN_NAMESPACES
    )
    assert is_valid_kind("fl.round_started")
    assert not is_valid_kind("Counter.tick")
    assert not is_valid_kind("counter")
    assert not is_valid_kind("counter.tick." + "x" * 60)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.one_of(
        st.from_regex(r"[a-z][a-z0-9_]{0,12}(\.[a-z][a-z0-9_]{0,12}){1,3}", fullmatch=True),
        st.text(alphabet="abcxyz019_.A -", max_size=80),
    )
)
def test_a_kind_is_accepted_exactly_when_it_is_well_formed(kind: str) -> None:
    from securemesh.audit.events import SignedEvent, is_valid_kind, sign_event

    if is_valid_kind(kind):
        signed = sign_event(simple(kind=kind), SIGNER)
        assert SignedEvent.from_bytes(signed.to_bytes()).verify(SIGNER.verify_key).kind == kind
    else:
        with pytest.raises(LocalError):
            simple(kind=kind)
