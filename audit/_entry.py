"""Leaf entries: the bridge between signed events and log rows (private).

A leaf entry is exactly :meth:`SignedEvent.to_bytes` (``"SMAE" | v | key id |
signature | canonical event JSON``). Two decoders live here:

* :func:`decode_entry` — strict (the ingestion path): full pydantic
  validation and canonical round-trip via :meth:`SignedEvent.from_bytes`.
* :func:`make_entry_checker` — the verifier's hot loop over stored entries:
  it splits the header, reads the event id and origin (:func:`event_fields`:
  a regular-expression fast path for the canonical shape, :func:`json.loads`
  otherwise, same answers), checks the Ed25519 signature over the *exact*
  stored bytes with libsodium (``crypto_sign_open``, which releases the GIL),
  and that the row's query-index columns (origin, kind, subject, outcome,
  time, details) say what the signed entry says.
  Soundness does not depend on the lighter parse: a signature that verifies
  under a registered key of the named origin (the one the entry's key id
  names) means that node signed exactly these bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import nacl.bindings
import nacl.exceptions
import nacl.signing

from securemesh.audit._registry import UnregisteredKey
from securemesh.audit.events import (
    EVENT_SIGNATURE_DOMAIN,
    MAX_SIGNED_EVENT_SIZE,
    AuditEvent,
    SignedEvent,
    event_key_id,
)
from securemesh.crypto.signing import VERIFY_KEY_SIZE, signature_opener
from securemesh.errors import AuthenticationError, DecodeError, LocalError, SecureMeshError

__all__ = [
    "INDEX_COLUMNS",
    "LEAF_COLUMNS",
    "Decoded",
    "decode_entry",
    "entry_of",
    "event_fields",
    "event_id_of",
    "make_entry_checker",
    "projection",
    "verify_decoded",
]

LEAF_COLUMNS = (
    "idx",
    "event_id",
    "entry",
    "leaf_hash",
    "origin",
    "kind",
    "subject_type",
    "subject_id",
    "outcome",
    "time_ms",
    "details",
)
"""Column order of :meth:`Decoded.row_values` (after ``idx``)."""

LeafValues = tuple[str, bytes, bytes, str, str, str, str, str, int, str]
"""A leaf row after ``idx``: event_id, entry, leaf_hash, then the query projection."""

_HEADER = SignedEvent.HEADER_SIZE
_KEY_ID_AT = 5
_SIG_AT = 13


def _details_json(event: AuditEvent) -> str:
    return json.dumps(event.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_DETAILS_START = b'{"details":'
_DETAILS_END = b',"event_id":"'


def details_json_of_canonical(event_bytes: bytes) -> str:
    """``_details_json(event)`` read straight out of the event's canonical bytes.

    In the canonical encoding (sorted keys, compact, UTF-8) ``details`` is the
    first key and its value is the JSON of the details map with the same
    settings, followed by ``,"event_id":"``. That sequence starts with an
    unescaped quote, so it cannot occur inside a JSON string, and after the
    details value only fixed-shape fields follow: its *last* occurrence ends
    the details value (a detail may itself be called ``event_id``).
    """
    if not event_bytes.startswith(_DETAILS_START):
        raise LocalError("not a canonical audit event")
    end = event_bytes.rindex(_DETAILS_END)
    return event_bytes[len(_DETAILS_START) : end].decode("utf-8")


def projection(event: AuditEvent) -> dict[str, Any]:
    """The query columns derived from an event (see :mod:`._schema`)."""
    return {
        "event_id": event.event_id,
        "origin": event.origin,
        "kind": event.kind,
        "subject_type": str(event.subject.type.value),
        "subject_id": event.subject.id,
        "outcome": str(event.outcome.value),
        "time_ms": event.time_ms,
        "details": _details_json(event),
    }


@dataclass(slots=True)
class Decoded:
    """A strictly decoded entry; the event is UNVERIFIED until :func:`verify_decoded`."""

    entry: bytes
    leaf_hash: bytes
    signed: SignedEvent
    _values: LeafValues | None = field(default=None, repr=False, compare=False)

    @property
    def event_id(self) -> str:
        return self.signed.unverified_event().event_id

    @property
    def origin(self) -> str:
        return self.signed.unverified_event().origin

    def row_values(self) -> LeafValues:
        """Column values in :data:`LEAF_COLUMNS` order, without the leading ``idx``.

        Computed once (the verifier threads compute it off the sequencer's path).
        """
        if self._values is None:
            ev = self.signed.unverified_event()
            self._values = (
                ev.event_id,
                self.entry,
                self.leaf_hash,
                ev.origin,
                ev.kind,
                str(ev.subject.type.value),
                ev.subject.id,
                str(ev.outcome.value),
                ev.time_ms,
                details_json_of_canonical(self.signed.event_bytes),
            )
        return self._values


def decode_entry(entry: bytes) -> Decoded:
    """Strictly decode a leaf entry (size, framing, canonical event). Not verified."""
    if not isinstance(entry, bytes):
        raise DecodeError("an audit entry must be bytes")
    signed = SignedEvent.from_bytes(entry)
    return Decoded(entry, hashlib.sha256(b"\x00" + entry).digest(), signed)


@functools.lru_cache(maxsize=4096)
def _cached_key_id(verify_key: bytes) -> bytes:
    return event_key_id(verify_key)


_local = threading.local()


def verify_decoded(decoded: Decoded, verify_key: bytes) -> AuditEvent:
    """The verified event, or AuthenticationError.

    The checks and errors of :meth:`SignedEvent.verify` (key length, key id,
    Ed25519 signature over the domain-separated canonical bytes), with the key
    id cached per key and libsodium called through this thread's
    :func:`_signature_opener` (the ingestion hot path).
    """
    signed = decoded.signed
    vk = bytes(verify_key)
    if len(vk) != VERIFY_KEY_SIZE:
        raise AuthenticationError("verify key has the wrong length")
    if _cached_key_id(vk) != signed.key_id:
        raise AuthenticationError("event was signed by a different key")
    opener = getattr(_local, "opener", None)
    if opener is None:
        opener = _local.opener = _signature_opener()
    if not opener(signed.signature + EVENT_SIGNATURE_DOMAIN + signed.event_bytes, vk):
        raise AuthenticationError("signature does not verify")
    return signed.unverified_event()


def entry_of(signed_event: object) -> bytes:
    if isinstance(signed_event, SignedEvent):
        return signed_event.to_bytes()
    if isinstance(signed_event, bytes):
        return signed_event
    raise LocalError(f"expected a SignedEvent or its bytes, got {type(signed_event).__name__}")


def event_id_of(signed_event: object) -> str:
    if isinstance(signed_event, SignedEvent):
        return signed_event.unverified_event().event_id
    return decode_entry(entry_of(signed_event)).event_id


class EntryChecker(Protocol):
    """``check(entry, event_id, index=None, signature=True) -> finding or None``."""

    def __call__(
        self,
        entry: bytes,
        event_id: str,
        index: Sequence[Any] | None = None,
        signature: bool = True,
    ) -> str | None: ...


# A regular subset of JSON (no whitespace, [0-9] digits, RFC 8259 strings and
# escapes, no NaN/Infinity) in the exact shape of a canonical version-1 event.
# Any text it fully matches is a JSON object that json.loads parses, and whose
# top-level "event_id" and "origin" are the two groups: the verifier reads them
# from the match and only falls back to json.loads for anything else.
_JSON_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_JSON_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_JSON_PAIR = f"{_JSON_STR}:(?:{_JSON_STR}|{_JSON_NUM}|true|false|null)"
_CANONICAL_SHAPE = re.compile(
    r'\{"details":(\{(?:' + _JSON_PAIR + "(?:," + _JSON_PAIR + r")*)?\})"
    r',"event_id":"([0-9a-f]{32})","kind":"([a-z0-9._]{1,64})"'
    r',"origin":"([A-Za-z0-9][A-Za-z0-9._-]{0,63})","outcome":"([a-z]{1,32})"'
    r',"subject":\{"id":(' + _JSON_STR + r'),"type":"([a-z]{1,32})"\}'
    r',"time_ms":(0|[1-9][0-9]*),"version":1\}'
)
# group numbers in _CANONICAL_SHAPE
_G_DETAILS, _G_EVENT_ID, _G_KIND, _G_ORIGIN, _G_OUTCOME, _G_SUBJECT_ID, _G_SUBJECT_TYPE, _G_TIME = (
    range(1, 9)
)

INDEX_COLUMNS = LEAF_COLUMNS[4:]
"""The query-index columns after ``event_id`` that :func:`make_entry_checker` compares."""


def canonical_from_index(event_id: str, index: Sequence[Any]) -> bytes | None:
    """The canonical event bytes that a row's event id and index columns describe.

    If they equal the stored entry's event bytes, every column equals the
    event's field (the verifier's fast path: no parse at all). Why: the
    canonical encoding (sorted keys, compact) is
    ``{"details":D,"event_id":"E","kind":"K","origin":"O","outcome":"C",
    "subject":{"id":S,"type":"T"},"time_ms":N,"version":1}``. Read both
    strings backwards from their common end: N is digits, T, C, O, K and E
    contain no ``"`` (required here; real ones never do), so each ends at the
    same quote in both; S is a JSON string literal whose opening quote is
    preceded by ``:``, while every quote inside a literal is preceded by a
    backslash, so S starts at the same place too; what is left, D, is then
    the same. None if a column has the wrong type or a quote where none may be.
    """
    if len(index) != 7:
        return None
    origin, kind, stype, sid, outcome, time_ms, details = index
    if type(time_ms) is not int:
        return None
    try:
        fixed = event_id + kind + origin + outcome + stype
        if '"' in fixed or type(sid) is not str or type(details) is not str:
            return None
    except TypeError:
        return None
    quoted = json.dumps(sid, ensure_ascii=False) if '"' in sid or "\\" in sid else f'"{sid}"'
    return (
        f'{{"details":{details},"event_id":"{event_id}","kind":"{kind}","origin":"{origin}"'
        f',"outcome":"{outcome}","subject":{{"id":{quoted},"type":"{stype}"}}'
        f',"time_ms":{time_ms},"version":1}}'
    ).encode("utf-8", "surrogatepass")


def _index_of_match(m: re.Match[str]) -> tuple[object, ...]:
    """The index columns (:data:`INDEX_COLUMNS` order) of a canonical-shape match."""
    sid = m.group(_G_SUBJECT_ID)
    subject_id = sid[1:-1] if "\\" not in sid else json.loads(sid)
    return (
        m.group(_G_ORIGIN),
        m.group(_G_KIND),
        m.group(_G_SUBJECT_TYPE),
        subject_id,
        m.group(_G_OUTCOME),
        int(m.group(_G_TIME)),
        m.group(_G_DETAILS),
    )


def _index_of_entry(entry: bytes) -> tuple[object, ...] | None:
    """The index columns of an entry outside the fast path (strict decode), None if it fails."""
    try:
        values = decode_entry(entry).row_values()
    except (SecureMeshError, ValueError):
        return None
    return values[3:]


def _index_mismatch(expected: tuple[object, ...], stored: Sequence[Any]) -> str | None:
    """The finding for index columns that differ from the entry's, or None."""
    if len(stored) != len(expected):
        return "query index row is incomplete"
    wrong = [
        name for name, want, got in zip(INDEX_COLUMNS, expected, stored, strict=True) if want != got
    ]
    if not wrong:
        return None
    return f"query index does not match the signed entry ({', '.join(wrong)})"


def event_fields(body: bytes) -> tuple[object, object] | None:
    """``(event_id, origin)`` of an event body as :func:`json.loads` reads them.

    None if the body is not a JSON object with both keys. The fast path (a
    full match of :data:`_CANONICAL_SHAPE` on the UTF-8 text) returns exactly
    what ``json.loads(body)`` would; anything else goes through ``json.loads``.
    """
    try:
        m = _CANONICAL_SHAPE.fullmatch(body.decode("utf-8"))
    except UnicodeDecodeError:
        m = None
    if m is not None:
        return m.group(_G_EVENT_ID), m.group(_G_ORIGIN)
    try:
        doc = json.loads(body)
        return doc["event_id"], doc["origin"]
    except (ValueError, KeyError, TypeError, RecursionError):  # deep nesting: RecursionError
        return None


def _signature_opener() -> Callable[[bytes, bytes], bool]:
    """:func:`~securemesh.crypto.signing.signature_opener` sized for one signed event."""
    return signature_opener(MAX_SIGNED_EVENT_SIZE + len(EVENT_SIGNATURE_DOMAIN))


def make_entry_checker(  # noqa: PLR0915 - the verifier's hot loop, inlined
    resolve: Callable[[str, bytes], bytes],
) -> EntryChecker:
    """``check(entry, event_id, index=None, signature=True) -> problem or None`` for a leaf row.

    Checks framing and size, that the event names ``event_id`` (the row's
    column) and, with ``signature``, a known origin, that the entry's key id
    names one of that origin's keys (``resolve(origin, key id)``: the registry
    is a key history, a node may have several) and that the Ed25519 signature
    verifies under it over the exact stored bytes (libsodium
    ``crypto_sign_open``, the function pynacl's ``VerifyKey.verify`` calls,
    without its wrapper; it releases the GIL). Keys are cached per ``(origin,
    key id)`` (one resolver call each).

    ``index`` is the row's query-index columns (:data:`INDEX_COLUMNS` order:
    origin, kind, subject type and id, outcome, time, details JSON); if given,
    each must equal what the entry says, so an index edited to forge a query
    answer, or to hide an event from a filter, is a finding. The fast path
    reads them from the same match as the event id; anything else is decoded
    strictly. One checker per thread.
    """
    keys: dict[tuple[str, bytes], bytes] = {}
    missing: dict[tuple[str, bytes], str] = {}
    domain = EVENT_SIGNATURE_DOMAIN
    sign_open = _signature_opener()
    shape = _CANONICAL_SHAPE.fullmatch

    def key_for(origin: str, key_id: bytes) -> bytes | str:
        """The verify key, or the finding when there is none."""
        slot = (origin, key_id)
        if slot in missing:
            return missing[slot]
        try:
            vk = bytes(resolve(origin, key_id))
            nacl.signing.VerifyKey(vk)  # length and type checks
        except UnregisteredKey:
            missing[slot] = "signed by a key that is not the origin's"
            return missing[slot]
        except (SecureMeshError, nacl.exceptions.CryptoError, ValueError, TypeError):
            missing[slot] = f"unknown origin {origin[:64]!r}"
            return missing[slot]
        if event_key_id(vk) != key_id:  # a caller's resolver answered with another key
            missing[slot] = "signed by a key that is not the origin's"
            return missing[slot]
        keys[slot] = vk
        return vk

    def check(  # noqa: PLR0911, PLR0912 - one return per finding
        entry: bytes,
        event_id: str,
        index: Sequence[Any] | None = None,
        signature: bool = True,
    ) -> str | None:
        if len(entry) <= _HEADER or len(entry) > MAX_SIGNED_EVENT_SIZE or entry[:5] != b"SMAE\x01":
            return "not a signed audit event"
        body = entry[_HEADER:]
        m: re.Match[str] | None = None
        # Fast path: the row's columns rebuild exactly the stored canonical body,
        # which proves every column (see canonical_from_index), and names the
        # event id and origin without parsing the body.
        fast = index is not None and canonical_from_index(event_id, index) == body
        if fast:
            origin = index[0]  # type: ignore[index]
        else:
            # event_fields(body), inlined (a million calls per verify)
            try:
                m = shape(body.decode("utf-8"))
            except UnicodeDecodeError:
                m = None
            if m is not None:
                claimed_id, origin = m.group(_G_EVENT_ID, _G_ORIGIN)
            else:
                fields = event_fields(body)
                if fields is None:
                    return "event does not decode"
                claimed_id, origin = fields
                if not isinstance(origin, str):
                    return "event does not decode"
            if claimed_id != event_id:
                return "entry is not the event this row was appended for"
        if signature:
            key_id = entry[_KEY_ID_AT:_SIG_AT]
            vk = keys.get((origin, key_id))
            if vk is None:
                found = key_for(origin, key_id)
                if isinstance(found, str):
                    return found
                vk = found
            if not sign_open(entry[_SIG_AT:_HEADER] + domain + body, vk):
                return "origin signature does not verify"
        if index is not None and not fast:
            expected = _index_of_match(m) if m is not None else _index_of_entry(entry)
            if expected is None:
                return "event does not decode"
            return _index_mismatch(expected, index)
        return None

    return check
