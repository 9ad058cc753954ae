"""``securemesh.enroll``: join tokens, enrollment and renewal, authority state on disk.

Pieces (each module's docstring has its theory of operation):

* :mod:`~securemesh.enroll._token` — :class:`JoinToken` (``smj1.`` strings,
  strict decoding, first-contact CURVE key and proof key by HKDF) and the
  server's :class:`TokenRecord` (never the secret).
* :mod:`~securemesh.enroll._store` — :class:`TokenStore`: durable (SQLite via
  SQLAlchemy Core), one-time (atomic conditional UPDATE), expiring;
  :class:`TokenKeySync` feeds usable tokens' keys to a node's Directory.
* :mod:`~securemesh.enroll._protocol` — message bodies (:class:`EnrollRequest`,
  :class:`EnrollReply`, :class:`RenewRequest`, :class:`RenewReply`), the
  client's checks (:func:`build_enroll_request`, :func:`accept_enroll_reply`,
  :func:`accept_renew_reply`) and the pure server logic
  (:class:`EnrollmentServer`), which reports every outcome as an
  :class:`EnrollmentAudit`.
* :mod:`~securemesh.enroll._client` — first contact over ZeroMQ
  (:func:`enroll_over_zmq`, synchronous) and the reply envelope helpers.
* :mod:`~securemesh.enroll._state` — the data directory: ``securemesh init``,
  token issuers, revocation, saving an enrollment. Its file names and the
  functions the CLI, the daemon and the SDK call are re-exported here, so no
  other package imports a private module of this one (import-linter checks).

The node daemon puts the server side on the bus (``securemesh.node._enroll``:
``enroll.request`` as a first-contact type, ``cert.renew``; token keys fed to
its Directory with :class:`TokenKeySync`), and renews its own certificate with
:func:`build_renew_request` / :func:`accept_renew_reply`.

``TokenStore``/``TokenKeySync`` (SQLAlchemy) and ``enroll_over_zmq`` (pyzmq)
are imported lazily, so a device importing this package for tokens and
enrollment messages pulls in neither SQLAlchemy nor, until it enrolls, pyzmq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.enroll._protocol import (
    MSG_CERT_RENEW,
    MSG_ENROLL_REQUEST,
    EnrollmentAudit,
    EnrollmentServer,
    EnrollReply,
    EnrollRequest,
    EnrollResult,
    RenewReply,
    RenewRequest,
    accept_enroll_reply,
    accept_renew_reply,
    build_enroll_request,
    build_renew_request,
)
from securemesh.enroll._state import (
    AUTHORITY_CERT_FILE,
    AUTHORITY_STATE_FILE,
    IDENTITY_FILE,
    NODE_CERT_FILE,
    NODE_TOML,
    REVOCATION_FILE,
    SEQUENCE_FILE,
    TRUST_FILE,
    InitResult,
    TokenIssuer,
    init_authority,
    known_node_ids,
    load_authority,
    load_token_issuer,
    read_trust,
    require_authority,
    revoke_node,
)
from securemesh.enroll._token import (
    MAX_TOKEN_LENGTH,
    TOKEN_PREFIX,
    CurveKeyPairBytes,
    JoinToken,
    TokenRecord,
)

if TYPE_CHECKING:
    from securemesh.enroll._client import (
        MSG_ENROLL_REPLY,
        enroll_data_dir,
        enroll_over_zmq,
        open_enroll_request,
        read_join_token,
        reply_frames,
        request_frames,
        verify_reply,
    )
    from securemesh.enroll._store import DEFAULT_TOKEN_DB, TokenKeySync, TokenStore

__all__ = [
    "AUTHORITY_CERT_FILE",
    "AUTHORITY_STATE_FILE",
    "DEFAULT_TOKEN_DB",
    "IDENTITY_FILE",
    "MAX_TOKEN_LENGTH",
    "MSG_CERT_RENEW",
    "MSG_ENROLL_REPLY",
    "MSG_ENROLL_REQUEST",
    "NODE_CERT_FILE",
    "NODE_TOML",
    "REVOCATION_FILE",
    "SEQUENCE_FILE",
    "TOKEN_PREFIX",
    "TRUST_FILE",
    "CurveKeyPairBytes",
    "EnrollReply",
    "EnrollRequest",
    "EnrollResult",
    "EnrollmentAudit",
    "EnrollmentServer",
    "InitResult",
    "JoinToken",
    "RenewReply",
    "RenewRequest",
    "TokenIssuer",
    "TokenKeySync",
    "TokenRecord",
    "TokenStore",
    "accept_enroll_reply",
    "accept_renew_reply",
    "build_enroll_request",
    "build_renew_request",
    "enroll_data_dir",
    "enroll_over_zmq",
    "init_authority",
    "known_node_ids",
    "load_authority",
    "load_token_issuer",
    "open_enroll_request",
    "read_join_token",
    "read_trust",
    "reply_frames",
    "require_authority",
    "revoke_node",
    "request_frames",
    "verify_reply",
]

_LAZY = {
    "TokenStore": "securemesh.enroll._store",
    "TokenKeySync": "securemesh.enroll._store",
    "DEFAULT_TOKEN_DB": "securemesh.enroll._store",
    "enroll_data_dir": "securemesh.enroll._client",
    "read_join_token": "securemesh.enroll._client",
    "MSG_ENROLL_REPLY": "securemesh.enroll._client",
    "enroll_over_zmq": "securemesh.enroll._client",
    "open_enroll_request": "securemesh.enroll._client",
    "reply_frames": "securemesh.enroll._client",
    "request_frames": "securemesh.enroll._client",
    "verify_reply": "securemesh.enroll._client",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(module), name)
