"""Leaf entries: the bridge between signed events and log rows (private).

A leaf entry is exactly :meth:`SignedEvent.to_bytes` (``"SMAE" | v | key id |
signature | canonical event JSON``). Two decoders live here:

* :func:`decode_entry` — strict (the ingestion path): full pydantic
  validation and canonical round-trip via :meth:`SignedEvent.from_bytes`.
* :func:`make_fast_verifier` — the verifier's hot loop over entries that were
  strictly validated when appended: it splits the header, reads the origin
  with :func:`json.loads`, and checks the Ed25519 signature over the *exact*
  stored bytes with libsodium (pynacl ``VerifyKey.verify``, which releases the
  GIL). Soundness does not depend on the lighter parse: a signature that
  verifies under the registered key of the named origin means that node signed
  exactly these bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from securemesh.audit.events import (
    EVENT_SIGNATURE_DOMAIN,
    MAX_SIGNED_EVENT_SIZE,
    AuditEvent,
    SignedEvent,
    event_key_id,
)
from securemesh.errors import DecodeError, LocalError, SecureMeshError

__all__ = [
    "LEAF_COLUMNS",
    "Decoded",
    "decode_entry",
    "entry_of",
    "event_id_of",
    "make_fast_verifier",
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

_HEADER = SignedEvent.HEADER_SIZE
_KEY_ID_AT = 5
_SIG_AT = 13


def _details_json(event: AuditEvent) -> str:
    return json.dumps(event.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def projection(event: AuditEvent) -> dict[str, Any]:
    """The query columns derived from an event (see :mod:`._schema`)."""
    return {
        "event_id": event.event_id,
        "origin": event.origin,
        "kind": str(event.kind.value),
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
    _values: tuple[object, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def event_id(self) -> str:
        return self.signed.unverified_event().event_id

    @property
    def origin(self) -> str:
        return self.signed.unverified_event().origin

    def row_values(self) -> tuple[object, ...]:
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
                str(ev.kind.value),
                str(ev.subject.type.value),
                ev.subject.id,
                str(ev.outcome.value),
                ev.time_ms,
                _details_json(ev),
            )
        return self._values


def decode_entry(entry: bytes) -> Decoded:
    """Strictly decode a leaf entry (size, framing, canonical event). Not verified."""
    if not isinstance(entry, bytes):
        raise DecodeError("an audit entry must be bytes")
    signed = SignedEvent.from_bytes(entry)
    return Decoded(entry, hashlib.sha256(b"\x00" + entry).digest(), signed)


def verify_decoded(decoded: Decoded, verify_key: bytes) -> AuditEvent:
    """The verified event, or AuthenticationError."""
    return decoded.signed.verify(verify_key)


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


Row = tuple[int, bytes, bytes, str]
FastVerifier = Callable[[Sequence[Row]], list[tuple[int, str]]]


def make_fast_verifier(resolve: Callable[[str], bytes]) -> FastVerifier:
    """A function checking origin signatures of ``(index, entry, leaf_hash, event_id)`` rows.

    It also checks that the row's ``event_id`` column is the entry's event id
    (a row whose entry was swapped for another genuine event is named exactly).

    Returns ``[(index, problem)]`` for entries that fail. Thread-safe; verify
    keys are cached per origin (one resolver call per origin).
    """
    keys: dict[str, tuple[bytes, nacl.signing.VerifyKey] | None] = {}
    domain = EVENT_SIGNATURE_DOMAIN

    def key_for(origin: str) -> tuple[bytes, nacl.signing.VerifyKey] | None:
        if origin in keys:
            return keys[origin]
        try:
            vk = resolve(origin)
            found: tuple[bytes, nacl.signing.VerifyKey] | None = (
                event_key_id(vk),
                nacl.signing.VerifyKey(vk),
            )
        except (SecureMeshError, nacl.exceptions.CryptoError, ValueError):
            found = None
        keys[origin] = found
        return found

    def check(rows: Sequence[Row]) -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        loads = json.loads
        for idx, entry, _, event_id in rows:
            if (
                len(entry) <= _HEADER
                or len(entry) > MAX_SIGNED_EVENT_SIZE
                or entry[:5] != b"SMAE\x01"
            ):
                bad.append((idx, "not a signed audit event"))
                continue
            body = entry[_HEADER:]
            try:
                doc = loads(body)
                origin = doc["origin"]
                claimed_id = doc["event_id"]
            except (ValueError, KeyError, TypeError):
                bad.append((idx, "event does not decode"))
                continue
            if not isinstance(origin, str):
                bad.append((idx, "event does not decode"))
                continue
            if claimed_id != event_id:
                bad.append((idx, "entry is not the event this row was appended for"))
                continue
            k = key_for(origin)
            if k is None:
                bad.append((idx, f"unknown origin {origin[:64]!r}"))
                continue
            if entry[_KEY_ID_AT:_SIG_AT] != k[0]:
                bad.append((idx, "signed by a key that is not the origin's"))
                continue
            try:
                k[1].verify(domain + body, entry[_SIG_AT:_HEADER])
            except nacl.exceptions.BadSignatureError:
                bad.append((idx, "origin signature does not verify"))
        return bad

    return check
