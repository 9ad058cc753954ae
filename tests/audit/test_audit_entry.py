"""The verifier's light entry parsing agrees with the strict decoder and ``json.loads``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit._entry import (
    _CANONICAL_SHAPE,
    INDEX_COLUMNS,
    _details_json,
    _index_of_match,
    canonical_from_index,
    decode_entry,
    details_json_of_canonical,
    event_fields,
    make_entry_checker,
    verify_decoded,
)
from securemesh.audit._registry import registry_resolver
from securemesh.audit.events import (
    AuditEvent,
    EventKind,
    Outcome,
    SignedEvent,
    Subject,
    SubjectType,
    event_key_id,
    sign_event,
)
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import AuthenticationError, DecodeError, UnknownOrigin

SIGNER = Ed25519Signer.from_seed(b"E" * 32)
OTHER = Ed25519Signer.from_seed(b"F" * 32)
RENEWED = Ed25519Signer.from_seed(b"G" * 32)


def reference_fields(body: bytes) -> tuple[object, object] | None:
    """What the verifier read before the fast path: ``json.loads`` of the body."""
    try:
        doc = json.loads(body)
        return doc["event_id"], doc["origin"]
    except (ValueError, KeyError, TypeError):
        return None


detail_keys = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True) | st.sampled_from(
    ["origin", "event_id", "details", "kind", "version"]
)
detail_values = (
    st.text(max_size=40)
    | st.sampled_from(['","origin":"evil', '\\",\\"origin', "}", '"', "\\", "\x00\x1f\x7f"])
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
)
events = st.builds(
    AuditEvent,
    event_id=st.binary(min_size=16, max_size=16).map(bytes.hex),
    time_ms=st.integers(0, (1 << 63) - 1),
    origin=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    kind=st.sampled_from(
        [
            k
            for k in EventKind
            if k not in ("message.rejected", "fl.round_finished", "audit.flagged")
        ]
    ),
    subject=st.builds(
        Subject,
        type=st.sampled_from(list(SubjectType)),
        id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    ),
    outcome=st.sampled_from(list(Outcome)),
    details=st.dictionaries(detail_keys, detail_values, max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_canonical_events_take_the_fast_path_with_the_same_answer(ev: AuditEvent) -> None:
    body = ev.canonical_bytes()
    assert _CANONICAL_SHAPE.fullmatch(body.decode("utf-8")) is not None
    assert event_fields(body) == reference_fields(body) == (ev.event_id, ev.origin)


@settings(max_examples=300, deadline=None)
@given(events)
def test_details_projection_is_the_canonical_substring(ev: AuditEvent) -> None:
    assert details_json_of_canonical(ev.canonical_bytes()) == _details_json(ev)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(events).canonical_bytes())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] = draw(st.sampled_from(b'"\\{},:[] \x00\x80\xff0aZ'))
        elif op == "insert":
            body[pos:pos] = draw(
                st.sampled_from([b" ", b'"', b"\\", b",", b"\xc3\xa9", b"\xed\xa0\x80"])
            )
        elif op == "delete" and body:
            del body[pos]
        else:
            del body[pos:]
    return bytes(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    doc: Any = draw(json_values)
    if draw(st.booleans()):
        doc = {
            "details": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
            "event_id": draw(json_values),
            "origin": draw(json_values | st.text(max_size=10)),
        }
    return json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=(",", ":")).encode()


@settings(max_examples=500, deadline=None)
@given(mangled() | json_documents() | st.binary(max_size=80))
def test_event_fields_equals_json_loads_on_any_input(body: bytes) -> None:
    assert event_fields(body) == reference_fields(body)


def test_entry_checker_findings() -> None:
    ev = AuditEvent(
        event_id="ab" * 16,
        time_ms=1,
        origin="edge-1",
        kind=EventKind.OBJECT_PUT,
        subject=Subject(type=SubjectType.OBJECT, id="o"),
        outcome=Outcome.SUCCESS,
        details={"origin": "edge-2"},
    )
    # edge-1 re-enrolled: both its keys are in its history
    registry = {
        "edge-1": {event_key_id(k): k for k in (SIGNER.verify_key, RENEWED.verify_key)},
        "edge-2": {event_key_id(OTHER.verify_key): OTHER.verify_key},
    }
    check = make_entry_checker(registry_resolver(registry))
    good = sign_event(ev, SIGNER).to_bytes()
    assert check(good, ev.event_id) is None
    assert check(sign_event(ev, RENEWED).to_bytes(), ev.event_id) is None
    assert check(good, "cd" * 16) == "entry is not the event this row was appended for"
    assert check(sign_event(ev, OTHER).to_bytes(), ev.event_id) == (
        "signed by a key that is not the origin's"
    )
    forged = good[:20] + bytes([good[20] ^ 1]) + good[21:]
    assert check(forged, ev.event_id) == "origin signature does not verify"
    assert check(good[:-1], ev.event_id) == "event does not decode"
    assert check(b"XXXX" + good[4:], ev.event_id) == "not a signed audit event"
    stranger = ev.model_copy(update={"origin": "edge-9"})
    assert check(sign_event(stranger, SIGNER).to_bytes(), ev.event_id) == "unknown origin 'edge-9'"


@settings(max_examples=100, deadline=None)
@given(events, st.integers(0, 300), st.sampled_from(["good", "other-key", "short-key", "flip"]))
def test_verify_decoded_agrees_with_signed_event_verify(
    ev: AuditEvent, pos: int, case: str
) -> None:
    """The ingestion fast path accepts and rejects exactly as SignedEvent.verify does."""
    wire = bytearray(sign_event(ev, SIGNER).to_bytes())
    key = SIGNER.verify_key
    if case == "other-key":
        key = OTHER.verify_key
    elif case == "short-key":
        key = key[:31]
    elif case == "flip":
        at = 13 + pos % (len(wire) - 13)  # signature or event bytes
        wire[at] ^= 0x01
    try:
        decoded = decode_entry(bytes(wire))
    except DecodeError:
        return  # a flipped event byte that no longer decodes: not this test's subject
    try:
        expected: object = decoded.signed.verify(key)
    except AuthenticationError as exc:
        expected = str(exc)
    try:
        got: object = verify_decoded(decoded, key)
    except AuthenticationError as exc:
        got = str(exc)
    assert got == expected
    assert (got == ev) == (case == "good")


@settings(max_examples=300, deadline=None)
@given(events)
def test_canonical_bytes_is_the_json_of_model_dump(ev: AuditEvent) -> None:
    """canonical_bytes builds the model's JSON data by hand; it must equal model_dump's."""
    reference = json.dumps(
        ev.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")
    assert ev.canonical_bytes() == reference


def test_entry_checker_with_a_resolver_that_answers_another_key() -> None:
    """A caller's resolver that returns a key without the entry's key id: a finding."""
    ev = AuditEvent(
        event_id="ab" * 16,
        time_ms=1,
        origin="edge-1",
        kind=EventKind.OBJECT_PUT,
        subject=Subject(type=SubjectType.OBJECT, id="o"),
        outcome=Outcome.SUCCESS,
    )

    def resolve(origin: str, key_id: bytes) -> bytes:
        if origin != "edge-1":
            raise UnknownOrigin(origin)
        return OTHER.verify_key

    check = make_entry_checker(resolve)
    assert check(sign_event(ev, SIGNER).to_bytes(), ev.event_id) == (
        "signed by a key that is not the origin's"
    )
    assert check(sign_event(ev, OTHER).to_bytes(), ev.event_id) is None


@settings(max_examples=300, deadline=None)
@given(events, st.sampled_from(list(range(7))), st.data())
def test_entry_checker_compares_every_index_column(
    ev: AuditEvent, column: int, data: st.DataObject
) -> None:
    """The fast path's index columns are the strict decoder's; any edited column is a finding."""
    entry = sign_event(ev, SIGNER).to_bytes()
    index = decode_entry(entry).row_values()[3:]
    m = _CANONICAL_SHAPE.fullmatch(entry[SignedEvent.HEADER_SIZE :].decode("utf-8"))
    assert m is not None
    assert _index_of_match(m) == index
    check = make_entry_checker(
        registry_resolver({ev.origin: {event_key_id(SIGNER.verify_key): SIGNER.verify_key}})
    )
    assert check(entry, ev.event_id, index) is None
    assert check(entry, ev.event_id, index, False) is None
    forged = list(index)
    old = forged[column]
    forged[column] = data.draw(
        (st.integers(0, 1 << 62) if isinstance(old, int) else st.text(max_size=12)).filter(
            lambda v: v != old
        )
    )
    finding = check(entry, ev.event_id, forged, False)
    assert finding == f"query index does not match the signed entry ({INDEX_COLUMNS[column]})"


@settings(max_examples=300, deadline=None)
@given(events, st.integers(0, 5), st.integers(1, 12))
def test_the_index_fast_path_rebuilds_honest_rows_and_no_shifted_ones(
    ev: AuditEvent, at: int, cut: int
) -> None:
    """Honest columns rebuild the stored bytes; moving text across a column boundary never does."""
    entry = sign_event(ev, SIGNER).to_bytes()
    body = entry[SignedEvent.HEADER_SIZE :]
    values = decode_entry(entry).row_values()
    index = list(values[3:])
    assert canonical_from_index(ev.event_id, index) == body
    # text columns in body order: details, event id, kind, origin, outcome, subject id, type
    order = [6, None, 1, 0, 4, 3, 2]
    cols: list[object] = [index[i] if i is not None else ev.event_id for i in order]
    left, right = cols[at], cols[at + 1]
    assert isinstance(left, str)
    assert isinstance(right, str)
    text = body.decode()  # a piece of the stored text, with its separators and quotes
    piece = text[len(text) // 2 : len(text) // 2 + cut]
    cols[at] = left + piece
    forged_index = [index[5] if i == 5 else cols[order.index(i)] for i in range(7)]
    forged_id = str(cols[1])
    rebuilt = canonical_from_index(forged_id, forged_index)
    assert rebuilt != body
