"""Offline proof files: one audit event, its inclusion proof and a signed checkpoint.

Theory of operation
-------------------

``securemesh audit prove ENTRY`` writes a proof bundle that a security team can
check later, elsewhere, holding only the log's public key
(``securemesh audit verify-proof FILE``). The bundle is a JSON object
(UTF-8, at most :data:`MAX_BUNDLE_SIZE` bytes)::

    {
      "format": "securemesh-audit-proof",
      "version": 1,
      "leaf_index": 41,
      "tree_size": 1000,
      "entry": "<base64 of the leaf entry = SignedEvent.to_bytes()>",
      "inclusion_proof": ["<base64 32-byte hash>", ...],     (RFC 9162 §2.1.3.1 order)
      "checkpoint": "<the C2SP signed checkpoint note, as text>",
      "origin_verify_key": "<base64 32-byte Ed25519 key of the event's origin node>",
      "origin_certificate": "<base64 signed node certificate>" | null
    }

:func:`verify_proof_bundle` trusts nothing in the file. In order:

1. size limit, then strict JSON (exact field set and types, canonical base64);
2. the checkpoint's signature with **only** the caller's log key
   (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), and its origin if given;
3. ``tree_size`` equals the checkpoint's size, and the RFC 9162 §2.1.3.2
   inclusion proof leads from ``leaf_hash(entry)`` at ``leaf_index`` to the
   checkpoint's root — so the log operator committed to exactly these bytes;
4. the entry decodes as a signed event and the origin's Ed25519 signature
   verifies, so the event is what the origin node said.

What binds the origin key to the origin node? Step 4 alone proves only that
*someone holding that key* signed the event. The caller chooses the binding,
recorded in :attr:`VerifiedProof.origin_key_source`:

* ``"caller"`` — the caller passed ``origin_verify_key`` (e.g. from its own
  registry); the bundle's key must equal it;
* ``"certificate"`` — the caller passed a mesh :class:`~securemesh.crypto.certs.TrustStore`;
  the bundle must carry the origin's certificate, which must verify against the
  trust store at the event's time, name the event's origin and carry that key;
* ``"bundle"`` — neither: the key is the bundle's own claim. The inclusion
  and checkpoint checks still hold (the log committed to this signed event),
  but a log operator could have minted both the key and the event.

``securemesh audit prove --consistency OLD NEW`` writes a *consistency* file
(:func:`build_consistency_bundle`): two signed checkpoints and the RFC 9162
§2.1.4 proof that the newer tree extends the older one::

    {
      "format": "securemesh-audit-consistency",
      "version": 1,
      "old_checkpoint": "<signed checkpoint note, as text>",
      "new_checkpoint": "<signed checkpoint note, as text>",
      "consistency_proof": ["<base64 32-byte hash>", ...]     (RFC 9162 §2.1.4.1 order)
    }

:func:`verify_consistency_bundle` checks, with only the log's key: size limit
and strict JSON; both checkpoints' signatures (and origin); then the proof
(RFC 9162 §2.1.4.2) from the old checkpoint's root to the new one's.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from securemesh.audit.checkpoint import Checkpoint, open_checkpoint
from securemesh.audit.events import AuditEvent, SignedEvent
from securemesh.audit.merkle import (
    HASH_SIZE,
    MAX_PROOF_LENGTH,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from securemesh.crypto.certs import TrustStore, verify_certificate
from securemesh.crypto.signing import VERIFY_KEY_SIZE
from securemesh.errors import (
    AuthenticationError,
    CertificateError,
    DecodeError,
    InclusionProofError,
    LocalError,
    SizeLimitExceeded,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CONSISTENCY_FORMAT",
    "MAX_BUNDLE_SIZE",
    "VerifiedConsistency",
    "VerifiedProof",
    "build_consistency_bundle",
    "build_proof_bundle",
    "bundle_format",
    "verify_consistency_bundle",
    "verify_proof_bundle",
]

BUNDLE_FORMAT: Final = "securemesh-audit-proof"
BUNDLE_VERSION: Final = 1
MAX_BUNDLE_SIZE: Final = 1024 * 1024
"""Hard limit on a proof file, checked before parsing."""
CONSISTENCY_FORMAT: Final = "securemesh-audit-consistency"
_CONSISTENCY_FIELDS: Final = frozenset(
    {"format", "version", "old_checkpoint", "new_checkpoint", "consistency_proof"}
)
_MAX_CERT_SIZE: Final = 16 * 1024

_FIELDS: Final = frozenset(
    {
        "format",
        "version",
        "leaf_index",
        "tree_size",
        "entry",
        "inclusion_proof",
        "checkpoint",
        "origin_verify_key",
        "origin_certificate",
    }
)

OriginKeySource = Literal["caller", "certificate", "bundle"]


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """What :func:`verify_proof_bundle` established (see the module docstring)."""

    event: AuditEvent
    signed_event: SignedEvent
    leaf_index: int
    checkpoint: Checkpoint
    origin_verify_key: bytes
    origin_certificate: bytes | None
    origin_key_source: OriginKeySource


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_proof_bundle(
    *,
    entry: bytes,
    leaf_index: int,
    tree_size: int,
    inclusion_proof: list[bytes],
    checkpoint_note: bytes,
    origin_verify_key: bytes,
    origin_certificate: bytes | None = None,
) -> bytes:
    """Serialise a proof bundle (UTF-8 JSON, sorted keys, 2-space indent, final newline).

    Nothing is verified here beyond shapes; the producer (the log) should have
    checked the proof already, and every consumer must use :func:`verify_proof_bundle`.
    """
    if type(leaf_index) is not int or type(tree_size) is not int or not 0 <= leaf_index < tree_size:
        raise LocalError("leaf index must be in [0, tree_size)")
    if len(inclusion_proof) > MAX_PROOF_LENGTH or any(len(h) != HASH_SIZE for h in inclusion_proof):
        raise LocalError("inclusion proof must be at most 64 hashes of 32 bytes")
    if len(origin_verify_key) != VERIFY_KEY_SIZE:
        raise LocalError("origin verify key must be 32 bytes")
    try:
        note_text = checkpoint_note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalError("checkpoint note is not UTF-8") from exc
    doc: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "entry": _b64(entry),
        "inclusion_proof": [_b64(h) for h in inclusion_proof],
        "checkpoint": note_text,
        "origin_verify_key": _b64(origin_verify_key),
        "origin_certificate": None if origin_certificate is None else _b64(origin_certificate),
    }
    data = (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    if len(data) > MAX_BUNDLE_SIZE:
        raise LocalError(f"proof bundle is larger than {MAX_BUNDLE_SIZE} bytes")
    return data


# ------------------------------------------------------------------ strict parsing


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError(f"duplicate field {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid JSON number {name}")


def _b64field(value: object, what: str, *, size: int | None = None, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > (limit * 4) // 3 + 4:
        raise DecodeError(f"{what} must be a base64 string of at most {limit} bytes")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise DecodeError(f"{what} is not valid base64") from exc
    if _b64(raw) != value:
        raise DecodeError(f"{what} is not canonical base64")
    if size is not None and len(raw) != size:
        raise DecodeError(f"{what} must be {size} bytes")
    return raw


def _int_field(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < (1 << 63):
        raise DecodeError(f"{what} must be a non-negative 64-bit integer")
    return value


@dataclass(frozen=True, slots=True)
class _UnverifiedBundle:
    leaf_index: int
    tree_size: int
    entry: bytes
    inclusion_proof: list[bytes]
    checkpoint_note: bytes
    origin_verify_key: bytes
    origin_certificate: bytes | None


def _parse_unverified(data: bytes) -> _UnverifiedBundle:
    if not isinstance(data, bytes):
        raise DecodeError("a proof bundle is bytes")
    if len(data) > MAX_BUNDLE_SIZE:
        raise SizeLimitExceeded(f"proof bundle is larger than {MAX_BUNDLE_SIZE} bytes")
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("proof bundle is not UTF-8 JSON") from exc
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise DecodeError("proof bundle does not have exactly the expected fields")
    if doc["format"] != BUNDLE_FORMAT or type(doc["version"]) is not int:
        raise DecodeError("not a SecureMesh audit proof")
    if doc["version"] != BUNDLE_VERSION:
        raise DecodeError(f"unsupported proof bundle version {doc['version']}")
    proof = doc["inclusion_proof"]
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_LENGTH:
        raise DecodeError(f"inclusion proof must be a list of at most {MAX_PROOF_LENGTH} hashes")
    note = doc["checkpoint"]
    if not isinstance(note, str):
        raise DecodeError("checkpoint must be a string")
    cert = doc["origin_certificate"]
    return _UnverifiedBundle(
        leaf_index=_int_field(doc["leaf_index"], "leaf_index"),
        tree_size=_int_field(doc["tree_size"], "tree_size"),
        entry=_b64field(doc["entry"], "entry", limit=MAX_BUNDLE_SIZE),
        inclusion_proof=[
            _b64field(h, "proof hash", size=HASH_SIZE, limit=HASH_SIZE) for h in proof
        ],
        checkpoint_note=note.encode("utf-8"),
        origin_verify_key=_b64field(
            doc["origin_verify_key"], "origin_verify_key", size=VERIFY_KEY_SIZE, limit=64
        ),
        origin_certificate=None
        if cert is None
        else _b64field(cert, "origin_certificate", limit=_MAX_CERT_SIZE),
    )


# ------------------------------------------------------------------ verification


def _bind_origin_key(
    bundle: _UnverifiedBundle,
    origin: str,
    event_time_ms: int,
    origin_verify_key: bytes | None,
    trust: TrustStore | None,
) -> OriginKeySource:
    if origin_verify_key is not None:
        if bytes(origin_verify_key) != bundle.origin_verify_key:
            raise AuthenticationError("the bundle's origin key is not the expected key")
        return "caller"
    if trust is None:
        return "bundle"
    if bundle.origin_certificate is None:
        raise AuthenticationError("the bundle carries no origin certificate")
    # The certificate must have been valid when the event was signed, not today.
    cert = verify_certificate(bundle.origin_certificate, trust=trust, now=event_time_ms / 1000)
    if cert.node_id != origin or cert.verify_key != bundle.origin_verify_key:
        raise CertificateError("the origin certificate is for another node or key")
    return "certificate"


def verify_proof_bundle(
    data: bytes,
    *,
    log_key_name: str,
    log_verify_key: bytes,
    log_origin: str | None = None,
    origin_verify_key: bytes | None = None,
    trust: TrustStore | None = None,
) -> VerifiedProof:
    """Verify an offline proof file with only the log's public key (and optionally
    a binding for the origin's key); return what was proven or raise.

    Raises :class:`SizeLimitExceeded` / :class:`DecodeError` (malformed),
    :class:`AuthenticationError` (checkpoint or event signature, origin key
    mismatch), :class:`InclusionProofError` (the entry is not in the signed
    tree) or a :class:`CertificateError` (origin certificate, with ``trust``).
    """
    bundle = _parse_unverified(data)
    # Step 2: the checkpoint, with nothing but the caller's log key.
    cp = open_checkpoint(
        bundle.checkpoint_note,
        key_name=log_key_name,
        verify_key=log_verify_key,
        origin=log_origin,
    )
    # Step 3: the entry is leaf ``leaf_index`` of that signed tree.
    if bundle.tree_size != cp.size:
        raise InclusionProofError("tree_size does not match the signed checkpoint")
    verify_inclusion(
        leaf_hash(bundle.entry), bundle.leaf_index, cp.size, bundle.inclusion_proof, cp.root_hash
    )
    # Step 4: the origin's signature over the event.
    signed = SignedEvent.from_bytes(bundle.entry)
    event = signed.verify(bundle.origin_verify_key)
    source = _bind_origin_key(bundle, event.origin, event.time_ms, origin_verify_key, trust)
    return VerifiedProof(
        event=event,
        signed_event=signed,
        leaf_index=bundle.leaf_index,
        checkpoint=cp,
        origin_verify_key=bundle.origin_verify_key,
        origin_certificate=bundle.origin_certificate,
        origin_key_source=source,
    )


# ------------------------------------------------------------------ consistency files


@dataclass(frozen=True, slots=True)
class VerifiedConsistency:
    """Two signed checkpoints of one log, the newer proven to extend the older."""

    old: Checkpoint
    new: Checkpoint


def build_consistency_bundle(*, old_note: bytes, new_note: bytes, proof: list[bytes]) -> bytes:
    """Serialise a consistency file (module docstring); the producer checked the proof."""
    if len(proof) > MAX_PROOF_LENGTH or any(len(h) != HASH_SIZE for h in proof):
        raise LocalError("consistency proof must be at most 64 hashes of 32 bytes")
    try:
        old_text, new_text = old_note.decode("utf-8"), new_note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalError("checkpoint note is not UTF-8") from exc
    doc = {
        "format": CONSISTENCY_FORMAT,
        "version": BUNDLE_VERSION,
        "old_checkpoint": old_text,
        "new_checkpoint": new_text,
        "consistency_proof": [_b64(h) for h in proof],
    }
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _parse_json(data: bytes, what: str) -> Any:
    if not isinstance(data, bytes):
        raise DecodeError(f"a {what} is bytes")
    if len(data) > MAX_BUNDLE_SIZE:
        raise SizeLimitExceeded(f"{what} is larger than {MAX_BUNDLE_SIZE} bytes")
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(f"{what} is not UTF-8 JSON") from exc


def bundle_format(data: bytes) -> str | None:
    """The ``format`` a proof file claims (UNVERIFIED: only to pick its verifier)."""
    doc = _parse_json(data, "proof file")
    fmt = doc.get("format") if isinstance(doc, dict) else None
    return fmt if isinstance(fmt, str) else None


def verify_consistency_bundle(
    data: bytes, *, log_key_name: str, log_verify_key: bytes, log_origin: str | None = None
) -> VerifiedConsistency:
    """Verify a consistency file with only the log's public key; return both checkpoints.

    Raises :class:`SizeLimitExceeded` / :class:`DecodeError` (malformed),
    :class:`AuthenticationError` (a checkpoint's signature or origin) or
    :class:`~securemesh.errors.ConsistencyProofError` (RFC 9162 §2.1.4.2 fails).
    """
    doc = _parse_json(data, "consistency file")
    if not isinstance(doc, dict) or set(doc) != _CONSISTENCY_FIELDS:
        raise DecodeError("consistency file does not have exactly the expected fields")
    if doc["format"] != CONSISTENCY_FORMAT or doc["version"] != BUNDLE_VERSION:
        raise DecodeError("not a SecureMesh audit consistency file of version 1")
    proof = doc["consistency_proof"]
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_LENGTH:
        raise DecodeError(f"consistency proof must be a list of at most {MAX_PROOF_LENGTH} hashes")
    hashes = [_b64field(h, "proof hash", size=HASH_SIZE, limit=HASH_SIZE) for h in proof]
    cps = []
    for field in ("old_checkpoint", "new_checkpoint"):
        note = doc[field]
        if not isinstance(note, str):
            raise DecodeError(f"{field} must be a string")
        cps.append(
            open_checkpoint(
                note.encode("utf-8"),
                key_name=log_key_name,
                verify_key=log_verify_key,
                origin=log_origin,
            )
        )
    old, new = cps
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, hashes)
    return VerifiedConsistency(old, new)
