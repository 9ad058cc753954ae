"""SecureMesh's one rooted exception tree.

Every error the library raises on purpose derives from :class:`SecureMeshError`.
The tree splits, as h11 does, between what *we* got wrong (:class:`LocalError`:
bad configuration, misuse of an API, a key file we cannot read) and what a
*peer* sent us that is not acceptable (:class:`RemoteError`). Each class also
subclasses the matching built-in (``ValueError``, ``PermissionError``,
``OSError``), as pynacl's exceptions do, so generic handlers still work.

Every :class:`RemoteError` carries a short, stable ``reason`` code. The reason
is what goes into rejection counters, logs and audit records. A peer learns
nothing of a rejection in the verification pipeline (silence, protocol.md §7);
only an authenticated, authorized requester whose request a handler refuses
gets a ``mesh.error`` reply with the ``reason`` and the error's
``public_detail`` (empty unless the raiser set a text that is safe to show:
e.g. which body field failed validation, never an input value). So a forger
learns nothing about which check failed (STYLE.md §5).

::

    SecureMeshError
    ├── LocalError                      (ValueError)   our side: misuse, config
    │   ├── ConfigError
    │   ├── KeyStoreError                              a key file cannot be used
    │   │   ├── WrongPassphrase
    │   │   └── CorruptKeyFile
    │   ├── TransportError              (OSError)      sockets, CURVE unavailable
    │   │   ├── TransportClosed                        used after close()
    │   │   ├── SendTimeout                            peer queue full past the timeout
    │   │   └── PeerUnavailable                        no connection to that peer
    │   ├── EncodeError                                we asked to send an invalid message
    │   └── StateFileError              (OSError)      local state file unusable or locked
    └── RemoteError                     (ValueError)   the peer's fault; has .reason
        ├── DecodeError                                not well-formed
        │   ├── SizeLimitExceeded                      over a hard limit, checked first
        │   └── UnexpectedMessage                      valid message, wrong protocol state
        ├── AuthenticationError                        signature or MAC does not verify
        ├── ReplayError
        │   ├── ReplayedMessage                        sequence already seen
        │   ├── StaleMessage                           sequence left of the window
        │   └── ClockSkewError                         timestamp too far from our clock
        ├── CertificateError
        │   ├── CertificateMalformed
        │   ├── CertificateSignatureInvalid
        │   ├── CertificateExpired                     also "not yet valid"
        │   ├── CertificateRevoked
        │   ├── UnknownIssuer
        │   ├── CertificateNotYetValid                 (CertificateExpired) not_before ahead
        │   ├── DelegationNotAllowed                   outside the issuer's delegation
        │   │   └── NameConstraintViolation            node id outside the delegate's namespace
        │   ├── RevocationListRollback                 older or conflicting revocation list
        │   └── KeyContinuityViolation                 known id, other keys, no re-enrollment
        ├── TokenError                                 join token unknown, used or expired
        ├── AuthorizationError          (PermissionError)  policy denies this message
        │   └── RouteRefused                           route.announce without fresh attachment
        ├── ProofError                                 a Merkle proof does not verify
        │   ├── InclusionProofError                    RFC 9162 §2.1.3.2 fails
        │   └── ConsistencyProofError                  RFC 9162 §2.1.4.2 fails
        ├── LogIntegrityError                          stored audit log entries tampered; .entries
        ├── UnknownOrigin                              audit event from a node the log does not know
        ├── UnknownNode                                (CertificateError) node id unknown
        ├── NoRoute                                    the node has no link toward the recipient
        ├── NoHandler                                  no handler registered for that message type
        ├── UnexpectedReply                            a REPLY answering no request of ours
        └── RemoteCallError                            the peer answered with an error reply
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "RouteRefused",
    "CertificateError",
    "CertificateExpired",
    "CertificateMalformed",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "CertificateSignatureInvalid",
    "ClockSkewError",
    "ConfigError",
    "ConsistencyProofError",
    "PeerUnavailable",
    "SendTimeout",
    "TransportClosed",
    "UnexpectedMessage",
    "CorruptKeyFile",
    "DecodeError",
    "DelegationNotAllowed",
    "EncodeError",
    "InclusionProofError",
    "KeyStoreError",
    "LocalError",
    "LogIntegrityError",
    "ProofError",
    "RemoteError",
    "ReplayError",
    "ReplayedMessage",
    "RevocationListRollback",
    "NameConstraintViolation",
    "KeyContinuityViolation",
    "SecureMeshError",
    "SizeLimitExceeded",
    "StaleMessage",
    "StateFileError",
    "TokenError",
    "TransportError",
    "UnknownIssuer",
    "UnknownOrigin",
    "WrongPassphrase",
    "UnknownNode",
    "NoRoute",
    "NoHandler",
    "UnexpectedReply",
    "RemoteCallError",
]


class SecureMeshError(Exception):
    """Root of every error SecureMesh raises on purpose."""

    def diagnostics(self) -> str:
        """A one-paragraph explanation for a person (the CLI prints this)."""
        return f"{type(self).__name__}: {self}"


# --------------------------------------------------------------------------- local


class LocalError(SecureMeshError, ValueError):
    """Something on our side is wrong: configuration, API misuse, local files."""

    def diagnostics(self) -> str:
        """The message alone: it says what to fix in the user's words (no class name)."""
        return str(self) or type(self).__name__


class ConfigError(LocalError):
    """A configuration file or argument is invalid."""


class KeyStoreError(LocalError):
    """A stored key cannot be used."""


class WrongPassphrase(KeyStoreError):
    """The passphrase does not decrypt the key file."""


class CorruptKeyFile(KeyStoreError):
    """The key file is truncated, altered or not a SecureMesh key file."""


class TransportError(LocalError, OSError):
    """The transport cannot do what was asked (socket setup, CURVE missing, closed)."""


class TransportClosed(TransportError):
    """The transport endpoint was closed; no further send or receive is possible."""


class SendTimeout(TransportError):
    """The peer's queue stayed at its high-water mark for longer than the send timeout."""


class PeerUnavailable(TransportError):
    """There is no authenticated connection to the addressed peer."""


class EncodeError(LocalError):
    """We were asked to build a message that cannot be sent (bad field, over a limit)."""


class StateFileError(LocalError, OSError):
    """A local state file (e.g. a sequence-counter reservation) is corrupt or in use."""


# -------------------------------------------------------------------------- remote


class RemoteError(SecureMeshError, ValueError):
    """What a peer sent is not acceptable. ``reason`` is a stable, short code."""

    reason: ClassVar[str] = "rejected"
    #: Text safe to send the peer in ``mesh.error`` (no input values, short); "" = none.
    public_detail: str = ""


class DecodeError(RemoteError):
    """The input is not well-formed."""

    reason = "malformed"


class SizeLimitExceeded(DecodeError):
    """A field or frame is larger than its hard limit (checked before any other work)."""

    reason = "oversize"


class UnexpectedMessage(DecodeError):
    """A well-formed message arrived in a protocol state that does not accept it."""

    reason = "unexpected_message"


class AuthenticationError(RemoteError):
    """A signature or MAC does not verify."""

    reason = "bad_auth"


class ReplayError(RemoteError):
    """The message was already accepted, or is too old to tell."""

    reason = "replay"


class ReplayedMessage(ReplayError):
    """The sequence number was already accepted."""

    reason = "replayed"


class StaleMessage(ReplayError):
    """The sequence number is to the left of the replay window."""

    reason = "stale"


class ClockSkewError(ReplayError):
    """The timestamp is further from our clock than the allowed skew."""

    reason = "clock_skew"


class CertificateError(RemoteError):
    """A certificate cannot be accepted."""

    reason = "bad_certificate"


class CertificateMalformed(CertificateError):
    """The certificate bytes do not decode to a well-formed certificate."""

    reason = "certificate_malformed"


class CertificateSignatureInvalid(CertificateError):
    """The issuer's signature over the certificate does not verify."""

    reason = "certificate_signature"


class CertificateExpired(CertificateError):
    """The certificate is outside its validity period (expired or not yet valid)."""

    reason = "certificate_expired"


class CertificateRevoked(CertificateError):
    """The certificate's serial or node is on the current revocation list."""

    reason = "certificate_revoked"


class UnknownIssuer(CertificateError):
    """The certificate was issued by an authority we do not trust."""

    reason = "unknown_issuer"


class CertificateNotYetValid(CertificateExpired):
    """The certificate's ``not_before`` lies in the future (a subclass of expired)."""

    reason = "certificate_not_yet_valid"


class DelegationNotAllowed(CertificateError):
    """A delegated authority issued a certificate its own constraint does not allow."""

    reason = "delegation_not_allowed"


class RevocationListRollback(CertificateError):
    """A revocation list is older than (or conflicts with) the one already trusted."""

    reason = "revocation_rollback"


class NameConstraintViolation(DelegationNotAllowed):
    """A delegated authority issued a node id outside its name constraint (its namespace)."""

    reason = "name_constraint"


class KeyContinuityViolation(CertificateError):
    """A certificate would replace a known node's keys without a root re-enrollment."""

    reason = "key_continuity"


class TokenError(RemoteError):
    """A join token is unknown, already used, expired or does not match the request."""

    reason = "bad_token"


class AuthorizationError(RemoteError, PermissionError):
    """Policy does not allow this sender to send this message type."""

    reason = "unauthorized"


class RouteRefused(AuthorizationError):
    """A route announcement lacks the node's own fresh attachment statement for that link."""

    reason = "route_refused"


class ProofError(RemoteError):
    """A Merkle inclusion or consistency proof (RFC 9162 §2.1.3-§2.1.4) does not verify."""

    reason = "bad_proof"


class InclusionProofError(ProofError):
    """An inclusion proof does not lead from the leaf to the signed root (RFC 9162 §2.1.3.2)."""

    reason = "bad_inclusion_proof"


class ConsistencyProofError(ProofError):
    """A consistency proof does not link the two tree heads (RFC 9162 §2.1.4.2)."""

    reason = "bad_consistency_proof"


class LogIntegrityError(RemoteError):
    """The stored audit log does not match its own tree heads or signatures.

    ``entries`` lists the leaf indices found tampered (possibly empty when the
    damage cannot be pinned to single entries, e.g. a rolled-back tree).
    """

    reason = "log_tampered"

    def __init__(self, message: str, *, entries: list[int] | None = None) -> None:
        super().__init__(message)
        self.entries: list[int] = list(entries) if entries is not None else []


class UnknownOrigin(RemoteError):
    """An audit event names an origin node whose verify key the log does not know."""

    reason = "unknown_origin"


class UnknownNode(CertificateError):
    """No certificate is known for the node id a message names as its sender."""

    reason = "unknown_sender"


class NoRoute(RemoteError):
    """The message is addressed to a node this node has no (loop-free) link toward."""

    reason = "no_route"


class NoHandler(RemoteError):
    """No handler is registered for the message type (dispatch, pipeline step 7)."""

    reason = "no_handler"


class UnexpectedReply(RemoteError):
    """A REPLY whose correlation id matches no request we sent or forwarded to its sender."""

    reason = "unexpected_reply"


class RemoteCallError(RemoteError):
    """The peer answered our request with an error reply (``mesh.error``); ``code`` says why."""

    reason = "remote_error"

    def __init__(self, message: str, *, code: str = "rejected", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        #: the reply's ``message`` (e.g. which body field failed validation), maybe ""
        self.detail = detail
