"""``securemesh.audit``: the tamper-evident Merkle audit log (RFC 6962 / RFC 9162)."""

__all__: list[str] = []

# The pure core (no database): events, checkpoints, offline proofs. The Merkle
# functions stay in ``securemesh.audit.merkle``. Importing these pulls in pydantic
# and pynacl only (no SQLAlchemy).
from securemesh.audit.checkpoint import (
    Checkpoint,
    format_verifier_key,
    open_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
)
from securemesh.audit.events import (
    AuditEvent,
    EventKind,
    Outcome,
    SignedEvent,
    Subject,
    SubjectType,
    new_event,
    sign_event,
)
from securemesh.audit.proofs import VerifiedProof, build_proof_bundle, verify_proof_bundle

__all__ += [
    "AuditEvent",
    "Checkpoint",
    "EventKind",
    "Outcome",
    "SignedEvent",
    "Subject",
    "SubjectType",
    "VerifiedProof",
    "build_proof_bundle",
    "format_verifier_key",
    "new_event",
    "open_checkpoint",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_event",
    "verify_proof_bundle",
]
