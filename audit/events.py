"""Typed, versioned audit events, signed by the node where they happened.

Theory of operation
-------------------

An :class:`AuditEvent` says who did what, where, when: a random 128-bit
``event_id`` (also the idempotency key of log appends), ``time_ms`` (Unix
milliseconds on the origin's clock), ``origin`` (the node id where it
happened), ``kind`` (a namespaced string, see below), ``subject`` (what it happened to),
``outcome`` and a small flat ``details`` map. It is a strict, frozen pydantic
model: no coercion, no unknown fields, hard limits on every field.

**Kinds are open.** A kind is a lowercase dotted string, ``namespace.name``
(:data:`KIND_PATTERN`, at most :data:`MAX_KIND_LENGTH` characters), e.g.
``storage.put`` or ``counter.tick``. :class:`EventKind` names the built-in
kinds (stable strings: never rename one); a service declares its own
(``Service.audit_kinds``). Decoding accepts any well-formed kind, so logs
written before kinds were opened decode to the same events and verify as
before (the encoding is unchanged: the kind was always a JSON string). Which
*origins* may log a namespace is the cloud's decision
(:func:`securemesh.audit.events.kind_namespace`, the cloud's ``[[audit.kinds]]``
rules).

**Canonical encoding** (:meth:`AuditEvent.canonical_bytes`): the model's JSON
data, serialised with sorted keys, ``","``/``":"`` separators and no other
whitespace, non-ASCII characters kept as UTF-8 (not ``\\u`` escapes), integers
as decimals, floats in Python's shortest round-trip ``repr`` (NaN and infinities
are refused), ``null``/``true``/``false``. Decoding accepts only bytes that
re-encode to themselves, so every event has exactly one encoding.

**Signing** (:func:`sign_event`): the origin node signs, with its Ed25519
identity key (RFC 8032), the domain-separated message
``b"securemesh/audit-event/v1\\x00" || canonical bytes`` — the prefix keeps an
audit signature from ever being valid as an envelope, manifest or certificate
signature by the same key. The result is a :class:`SignedEvent` whose wire
form (:meth:`SignedEvent.to_bytes`) is::

    "SMAE" | version (1 byte, 0x01) | key id (8) | signature (64) | canonical event

where the key id is ``SHA-256(verify key)[:8]`` (it picks the right key across
rotations; it is not a security boundary). **These bytes are the Merkle leaf
entry** (RFC 6962 ``d(i)``), so the log commits to the origin's signature and
the cloud cannot forge or alter a node's events: anyone holding the node's
certificate can re-check them (:meth:`SignedEvent.verify`), also from an
offline proof file.

Decoding is strict and bounded: size first, then framing, then JSON, then the
model, then the canonical round-trip. Verification returns the verified event
or raises :class:`~securemesh.errors.AuthenticationError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from securemesh.crypto.signing import (
    SIGNATURE_SIZE,
    VERIFY_KEY_SIZE,
    Signer,
    verify_signature,
)
from securemesh.errors import AuthenticationError, DecodeError, LocalError, SizeLimitExceeded

__all__ = [
    "EVENT_SIGNATURE_DOMAIN",
    "EVENT_VERSION",
    "MAX_DETAIL_KEYS",
    "MAX_DETAIL_KEY_LENGTH",
    "MAX_DETAIL_STR_LENGTH",
    "MAX_EVENT_SIZE",
    "MAX_SIGNED_EVENT_SIZE",
    "REQUIRED_DETAILS",
    "BUILTIN_NAMESPACES",
    "KIND_PATTERN",
    "MAX_KIND_LENGTH",
    "AuditEvent",
    "DetailValue",
    "EventKind",
    "KindStr",
    "Outcome",
    "SignedEvent",
    "Subject",
    "SubjectType",
    "event_key_id",
    "is_valid_kind",
    "kind_namespace",
    "new_event",
    "sign_event",
]

EVENT_VERSION: Final = 1
MAX_EVENT_SIZE: Final = 8 * 1024
"""Hard limit on an event's canonical encoding."""
MAX_DETAIL_KEYS: Final = 32
MAX_DETAIL_KEY_LENGTH: Final = 64
MAX_DETAIL_STR_LENGTH: Final = 1024
EVENT_SIGNATURE_DOMAIN: Final = b"securemesh/audit-event/v1\x00"
"""Prefix of every audit-event signature input (domain separation)."""

_MAGIC: Final = b"SMAE"
_WIRE_VERSION: Final = 1
_KEY_ID_SIZE: Final = 8
_HEADER_SIZE: Final = len(_MAGIC) + 1 + _KEY_ID_SIZE + SIGNATURE_SIZE
MAX_SIGNED_EVENT_SIZE: Final = _HEADER_SIZE + MAX_EVENT_SIZE
"""Hard limit on :meth:`SignedEvent.to_bytes` (= a log leaf entry)."""

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1


class EventKind(StrEnum):
    """What happened. Values are stable strings stored in the log: never rename one."""

    NODE_ENROLLED = "node.enrolled"
    CERT_RENEWED = "cert.renewed"
    CERT_REVOKED = "cert.revoked"
    MESSAGE_REJECTED = "message.rejected"  # details: reason (the RemoteError.reason code)
    TASK_SUBMITTED = "task.submitted"
    TASK_PLACED = "task.placed"
    TASK_FINISHED = "task.finished"
    TASK_FAILED = "task.failed"
    OBJECT_PUT = "object.put"
    OBJECT_GET = "object.get"
    OBJECT_REPAIR = "object.repair"
    OBJECT_DELETE = "object.delete"
    STORAGE_CHALLENGE = "storage.challenge"  # proof-of-storage result in outcome/details
    FL_ROUND_STARTED = "fl.round_started"
    FL_ROUND_FINISHED = "fl.round_finished"  # details: model_hash (hex of the global model)
    HE_JOB = "he.job"
    AUDIT_FLAGGED = "audit.flagged"  # the cloud's mark on an appended event; details: reason


MAX_KIND_LENGTH: Final = 64
KIND_PATTERN: Final = r"^[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_]{0,31})+$"
"""A kind: lowercase dotted identifiers, a namespace and at least one more part."""
_KIND_RE: Final = re.compile(KIND_PATTERN)
KindStr = Annotated[
    str, StringConstraints(pattern=KIND_PATTERN, min_length=3, max_length=MAX_KIND_LENGTH)
]
BUILTIN_NAMESPACES: Final[frozenset[str]] = frozenset(k.value.split(".", 1)[0] for k in EventKind)
"""Namespaces of the built-in kinds (``node``, ``cert``, ``message``, ``task``, ...)."""


def is_valid_kind(kind: str) -> bool:
    """Whether ``kind`` is a well-formed namespaced kind (no registry is consulted)."""
    return (
        isinstance(kind, str) and len(kind) <= MAX_KIND_LENGTH and _KIND_RE.match(kind) is not None
    )


def kind_namespace(kind: str) -> str:
    """``"storage"`` for ``"storage.put"``: the part a cloud's kind rules match on."""
    return kind.split(".", 1)[0]


REQUIRED_DETAILS: Final[dict[str, tuple[str, ...]]] = {
    EventKind.MESSAGE_REJECTED: ("reason",),
    EventKind.FL_ROUND_FINISHED: ("model_hash",),
    EventKind.AUDIT_FLAGGED: ("reason",),
}
"""Detail keys that events of these kinds must carry (non-empty strings)."""


class SubjectType(StrEnum):
    NODE = "node"
    OBJECT = "object"
    TASK = "task"
    ROUND = "round"
    MESSAGE = "message"
    KEY = "key"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid", validate_default=True)

# Identifiers: printable ASCII without spaces, so they are safe in tables, filters and logs.
# Node ids follow securemesh.crypto.certs (certificate node_id).
NodeIdStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
SubjectIdStr = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,256}$")]
EventIdStr = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
DetailKey = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=MAX_DETAIL_KEY_LENGTH),
]
DetailInt = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]
DetailStr = Annotated[str, StringConstraints(max_length=MAX_DETAIL_STR_LENGTH)]
DetailValue = DetailStr | bool | DetailInt | FiniteFloat | None
"""A detail value: a short string, a bool, a 64-bit int, a finite float or None."""


class Subject(BaseModel):
    """What the event happened to: a node, object, task, FL round, message or key."""

    model_config = _STRICT

    type: SubjectType
    id: SubjectIdStr


class AuditEvent(BaseModel):
    """One audit record, as the origin node saw it (version 1)."""

    model_config = _STRICT

    version: Literal[1] = EVENT_VERSION
    event_id: EventIdStr
    time_ms: Annotated[int, Field(ge=0, le=_INT64_MAX)]
    origin: NodeIdStr
    kind: KindStr
    subject: Subject
    outcome: Outcome
    details: Annotated[dict[DetailKey, DetailValue], Field(max_length=MAX_DETAIL_KEYS)] = Field(
        default_factory=dict
    )

    @field_validator("details", mode="before")
    @classmethod
    def _no_big_ints(cls, value: Any) -> Any:
        # Without this, an int beyond 64 bits would fall through the union to float.
        if isinstance(value, dict):
            for v in value.values():
                if type(v) is int and not _INT64_MIN <= v <= _INT64_MAX:
                    raise ValueError("detail integers must fit in 64 bits")
        return value

    @model_validator(mode="after")
    def _check_required_details(self) -> AuditEvent:
        for key in REQUIRED_DETAILS.get(self.kind, ()):
            value = self.details.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{self.kind} events need a non-empty string detail {key!r}")
        return self

    def canonical_bytes(self) -> bytes:
        """The deterministic encoding that is signed (see the module docstring)."""
        # The model's JSON data (``model_dump(mode="json")``), built by hand:
        # the enums are str subclasses that json encodes as their values, and
        # strict validation leaves only str/bool/int/float/None in details.
        # (Same bytes; tests compare it with model_dump for random events.)
        subject = self.subject
        doc = {
            "details": self.details,
            "event_id": self.event_id,
            "kind": self.kind,
            "origin": self.origin,
            "outcome": self.outcome,
            "subject": {"id": subject.id, "type": subject.type},
            "time_ms": self.time_ms,
            "version": self.version,
        }
        try:
            data = json.dumps(
                doc,
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            ).encode("utf-8")
        except (UnicodeEncodeError, ValueError) as exc:  # lone surrogates, NaN
            raise LocalError(f"event cannot be encoded: {exc}") from exc
        if len(data) > MAX_EVENT_SIZE:
            raise LocalError(f"event encodes to {len(data)} bytes, over {MAX_EVENT_SIZE}")
        return data

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> AuditEvent:
        """Strictly decode canonical bytes. UNVERIFIED: no signature is checked here."""
        if not isinstance(data, bytes):
            raise DecodeError("event data must be bytes")
        if len(data) > MAX_EVENT_SIZE:
            raise SizeLimitExceeded(f"event is larger than {MAX_EVENT_SIZE} bytes")
        try:
            event = cls.model_validate_json(data, strict=True)
        except ValidationError as exc:
            raise DecodeError(f"malformed audit event: {exc.error_count()} error(s)") from exc
        try:
            again = event.canonical_bytes()
        except LocalError as exc:
            raise DecodeError("audit event cannot be re-encoded") from exc
        if again != data:
            raise DecodeError("audit event is not canonically encoded")
        return event


def new_event(
    kind: EventKind | str,
    *,
    origin: str,
    subject: Subject | tuple[SubjectType | str, str],
    outcome: Outcome | str = Outcome.SUCCESS,
    details: dict[str, Any] | None = None,
    now: float | None = None,
    event_id: str | bytes | None = None,
) -> AuditEvent:
    """Build an event for "now" with a fresh random id (both injectable for tests).

    ``now`` is Unix time in seconds (``time.time()`` when omitted), rounded to
    whole milliseconds; ``event_id`` is 16 bytes or their 32-char lowercase hex.
    Raises :class:`~securemesh.errors.LocalError` if the event is invalid.
    """
    if event_id is None:
        event_id = secrets.token_hex(16)
    elif isinstance(event_id, bytes):
        if len(event_id) != 16:
            raise LocalError("an event id is 16 bytes")
        event_id = event_id.hex()
    seconds = time.time() if now is None else now
    try:
        if isinstance(subject, tuple):
            subject = Subject(type=SubjectType(subject[0]), id=subject[1])
        return AuditEvent(
            event_id=event_id,
            time_ms=round(seconds * 1000),
            origin=origin,
            kind=str(kind.value if isinstance(kind, EventKind) else kind),
            subject=subject,
            outcome=Outcome(outcome),
            details=dict(details or {}),
        )
    except (ValidationError, ValueError) as exc:
        raise LocalError(f"invalid audit event: {exc}") from exc


def event_key_id(verify_key: bytes) -> bytes:
    """The 8-byte key id carried by signed events: SHA-256(verify key)[:8]."""
    if len(verify_key) != VERIFY_KEY_SIZE:
        raise LocalError(f"an Ed25519 public key is {VERIFY_KEY_SIZE} bytes")
    return hashlib.sha256(verify_key).digest()[:_KEY_ID_SIZE]


@dataclass(frozen=True, slots=True)
class SignedEvent:
    """Canonical event bytes plus the origin node's Ed25519 signature over them.

    Construct with :func:`sign_event` or :meth:`from_bytes`; read the event only
    through :meth:`verify` (or, where the origin key is not known yet,
    :meth:`unverified_event`, whose name says what it is).
    """

    HEADER_SIZE: ClassVar[int] = _HEADER_SIZE

    event_bytes: bytes
    key_id: bytes
    signature: bytes
    _event: AuditEvent = field(repr=False, compare=False)

    def to_bytes(self) -> bytes:
        """The wire form, which is also the Merkle leaf entry."""
        return _MAGIC + bytes([_WIRE_VERSION]) + self.key_id + self.signature + self.event_bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedEvent:
        """Strictly decode the wire form (size, framing, canonical event). Not verified."""
        if not isinstance(data, bytes):
            raise DecodeError("signed event must be bytes")
        if len(data) > MAX_SIGNED_EVENT_SIZE:
            raise SizeLimitExceeded(f"signed event is larger than {MAX_SIGNED_EVENT_SIZE} bytes")
        if len(data) <= _HEADER_SIZE or data[:4] != _MAGIC:
            raise DecodeError("not a signed audit event")
        if data[4] != _WIRE_VERSION:
            raise DecodeError(f"unsupported signed event version {data[4]}")
        key_id = data[5 : 5 + _KEY_ID_SIZE]
        signature = data[5 + _KEY_ID_SIZE : _HEADER_SIZE]
        event_bytes = data[_HEADER_SIZE:]
        event = AuditEvent.from_canonical_bytes(event_bytes)
        return cls(event_bytes, key_id, signature, event)

    def unverified_event(self) -> AuditEvent:
        """The decoded event WITHOUT checking the signature (e.g. to find its origin's key)."""
        return self._event

    def verify(self, verify_key: bytes) -> AuditEvent:
        """Return the event if it is signed by ``verify_key``; raise AuthenticationError."""
        if len(verify_key) != VERIFY_KEY_SIZE:
            raise AuthenticationError("verify key has the wrong length")
        if event_key_id(verify_key) != self.key_id:
            raise AuthenticationError("event was signed by a different key")
        verify_signature(verify_key, EVENT_SIGNATURE_DOMAIN + self.event_bytes, self.signature)
        return self._event

    def __repr__(self) -> str:
        ev = self._event
        return f"SignedEvent({ev.kind} {ev.event_id} origin={ev.origin} unverified)"


def sign_event(event: AuditEvent, signer: Signer) -> SignedEvent:
    """Sign ``event`` with the origin node's identity key."""
    data = event.canonical_bytes()
    signature = signer.sign(EVENT_SIGNATURE_DOMAIN + data)
    if len(signature) != SIGNATURE_SIZE:
        raise LocalError("signer returned a signature of the wrong size")
    # Keep a private decoded copy so later mutation of ``event.details`` cannot
    # make the object disagree with the signed bytes.
    return SignedEvent(
        data, event_key_id(signer.verify_key), signature, AuditEvent.from_canonical_bytes(data)
    )
