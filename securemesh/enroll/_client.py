"""First contact over ZeroMQ: the enrolling node's side of ``enroll.request``.

Theory of operation
-------------------
A node that holds only a join token connects a blocking DEALER
(:class:`securemesh.transport.SyncRequester`, the transport seam's one
synchronous ZeroMQ path) to ``token.endpoint`` as a CurveZMQ client (RFC 26) with

* ``CURVE_SERVERKEY`` = ``token.server_key``: the handshake fails unless the
  peer holds that server's secret key, so nobody else can answer;
* its own key pair = ``token.first_contact_curve_keypair()``: the server's ZAP
  handler admits this public key only while the token is unused and
  unexpired, and its policy allows only ``enroll.request`` from it.

It sends one SIGNED envelope (securemesh.wire), signed by the node's *new*
identity key: ``msg_type="enroll.request"``, ``sender`` = the requested node
id, ``recipient`` = ``token.server_id``, ``flags=REQUEST`` with a random
correlation id, body = :class:`~securemesh.enroll.EnrollRequest`. The
sequence number is the caller's: a node that re-enrolls must continue its
persisted counter (``sequence.state`` in its data dir, as the CLI does),
because the server's replay window remembers its node id.

The reply is read without trusting anything but the token:

1. :func:`securemesh.wire.decode` (size limits, form); it must be a REPLY with
   our correlation id, of type ``enroll.request`` (the node's convention:
   a reply keeps the request's type) or ``enroll.reply``, from
   ``token.server_id`` (``mesh.error`` replies are reported, unverified, as a
   refusal);
2. the body is *tentatively* parsed only to find ``server_certificate`` and
   ``revocation_list``; the list must verify under the token's root, and the
   server certificate must verify under that root and list, be an edge or
   cloud node, name ``envelope.sender``, and carry exactly ``token.server_key``
   as its CURVE key (so it is the certificate of the socket we talked to);
3. the envelope signature is verified with that certificate's verify key;
   only then is the body parsed for real, and
   :func:`~securemesh.enroll.accept_enroll_reply` checks the issued
   certificate.

:func:`reply_frames` is the matching server-side helper (what a node's
``enroll.request`` handler sends back).

:func:`enroll_data_dir` is the whole client side over a data directory, the
one path behind ``securemesh enroll`` and ``Device.enroll``: the trust store
of an earlier enrollment (so a rollback is refused), the identity (kept, or
generated and written encrypted), the next number of the persisted sequence
counter, :func:`enroll_over_zmq`, and :func:`~securemesh.enroll._state.save_enrollment`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from securemesh.crypto.certs import (
    SignedRevocationList,
    Tier,
    TrustStore,
    verify_certificate,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Signer
from securemesh.enroll._protocol import (
    MSG_ENROLL_REQUEST,
    EnrollReply,
    EnrollRequest,
    EnrollResult,
    accept_enroll_reply,
    build_enroll_request,
)
from securemesh.enroll._state import (
    SEQUENCE_FILE,
    NodeFiles,
    enrolled_node_id,
    existing_trust,
    identity_for_enrollment,
    save_enrollment,
)
from securemesh.enroll._token import CurveKeyPairBytes, JoinToken
from securemesh.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LocalError,
    StateFileError,
    TokenError,
    TransportError,
    UnexpectedMessage,
)
from securemesh.messages import ErrorReply
from securemesh.wire import (
    DEFAULT_LIMITS,
    Envelope,
    Flags,
    Frame,
    Limits,
    SequenceCounter,
    WireFrame,
    decode,
    encode_signed,
    parse_body,
)

if TYPE_CHECKING:
    from securemesh.crypto.keystore import KdfParams

__all__ = [
    "MSG_ENROLL_REPLY",
    "MSG_MESH_ERROR",
    "DataDirEnrollment",
    "enroll_data_dir",
    "enroll_over_zmq",
    "open_enroll_request",
    "read_join_token",
    "reply_frames",
    "request_frames",
    "verify_reply",
]

MSG_ENROLL_REPLY = "enroll.reply"
MSG_MESH_ERROR = "mesh.error"


def _error_code(body: bytes) -> str:
    """``code`` and message of a mesh.error body, for display only (it is unverified)."""
    try:
        err = parse_body(ErrorReply, bytes(body))
    except DecodeError:
        return "unknown"
    text = "".join(c if c.isprintable() else "?" for c in err.message)
    return f"{err.code} ({text})" if text else err.code


def request_frames(
    token: JoinToken,
    identity: NodeIdentity,
    node_id: str,
    *,
    now: float,
    sequence: int = 1,
    correlation_id: bytes | None = None,
) -> tuple[list[WireFrame], bytes]:
    """The ``enroll.request`` envelope frames and its correlation id."""
    corr = correlation_id if correlation_id is not None else secrets.token_bytes(16)
    body = build_enroll_request(token, identity, node_id)
    frames = encode_signed(
        msg_type=MSG_ENROLL_REQUEST,
        sender=node_id,
        recipient=token.server_id,
        sequence=sequence,
        timestamp_ms=int(now * 1000),
        body=body,
        signer=identity,
        correlation_id=corr,
        flags=Flags.REQUEST,
    )
    return frames, corr


def reply_frames(
    reply: EnrollReply,
    *,
    server_id: str,
    signer: Signer,
    recipient: str,
    correlation_id: bytes,
    sequence: int,
    now: float,
) -> list[WireFrame]:
    """A SIGNED ``enroll.reply`` envelope (what a server sends back to a first-contact peer)."""
    return encode_signed(
        msg_type=MSG_ENROLL_REPLY,
        sender=server_id,
        recipient=recipient,
        sequence=sequence,
        timestamp_ms=int(now * 1000),
        body=reply,
        signer=signer,
        correlation_id=correlation_id,
        flags=Flags.REPLY,
    )


def verify_reply(
    token: JoinToken,
    frames: Sequence[bytes],
    *,
    correlation_id: bytes,
    now: float,
) -> EnrollReply:
    """Steps 1-3 of the module docstring up to (not including) :func:`accept_enroll_reply`."""
    unverified = decode(list(frames))
    if not unverified.flags & Flags.REPLY or not hmac.compare_digest(
        unverified.correlation_id, correlation_id
    ):
        raise UnexpectedMessage("not the reply to our enrollment request")
    if unverified.msg_type == MSG_MESH_ERROR:
        raise TokenError(
            f"the server refused the enrollment: {_error_code(frames[1])} "
            "(from an unverified mesh.error reply)"
        )
    if unverified.msg_type not in (MSG_ENROLL_REPLY, MSG_ENROLL_REQUEST):
        raise UnexpectedMessage(f"unexpected reply type {unverified.msg_type!r}")
    if unverified.sender != token.server_id:
        raise AuthenticationError("the reply does not come from the token's server")
    tentative = parse_body(EnrollReply, bytes(frames[1]))
    trust = TrustStore({token.authority_id: token.root_key})
    trust.update_revocation_list(SignedRevocationList.from_bytes(tentative.revocation_list))
    server = verify_certificate(tentative.server_certificate, trust=trust, now=now)
    if server.tier is Tier.END:
        raise AuthenticationError("an end device cannot answer enrollments")
    if server.node_id != token.server_id:
        raise AuthenticationError("the reply's sender is not the certified server")
    if not hmac.compare_digest(server.curve_key, token.server_key):
        raise AuthenticationError("the server certificate is not for the token's server key")
    envelope: Envelope = unverified.verify_signature(server.verify_key)
    return envelope.body(EnrollReply)


def open_enroll_request(
    frames: Sequence[Frame], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Envelope, EnrollRequest]:
    """Server side: decode and verify a first-contact ``enroll.request`` envelope.

    The sender has no certificate yet, so the envelope is verified with the
    verify key *in its own body*: the body is parsed tentatively to find that
    key, the signature is checked with it, the sender must be the body's node
    id, and only then is the body parsed from the verified envelope. This
    proves possession of the new key, nothing more; the token proof is
    :meth:`EnrollmentServer.handle_enroll`'s job (pass it
    ``self_signature_verified_with=request.verify_key, sender=envelope.sender``).
    """
    unverified = decode(frames, limits=limits)
    if unverified.msg_type != MSG_ENROLL_REQUEST:
        raise UnexpectedMessage(f"expected {MSG_ENROLL_REQUEST}, got {unverified.msg_type!r}")
    tentative = parse_body(EnrollRequest, bytes(frames[1]))
    envelope = unverified.verify_signature(tentative.verify_key)
    request = envelope.body(EnrollRequest)
    if envelope.sender != request.node_id:
        raise AuthenticationError("the envelope sender is not the requested node id")
    return envelope, request


def enroll_over_zmq(
    token: JoinToken,
    identity: NodeIdentity,
    node_id: str,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
    sequence: int = 1,
    trust: TrustStore | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> EnrollResult:
    """Enroll ``identity`` as ``node_id`` at the token's server; return the verified result.

    ``on_wait(text)`` is called once if the wait passes a second, saying what
    it waits for (the CLI prints it).

    Blocking (no event loop: :class:`securemesh.transport.SyncRequester`). A
    refused handshake (the server does not admit the token's key, which a
    daemon does only at its next token refresh) is tried again on a fresh
    socket with backoff. Raises
    TransportError when no reply arrives within ``timeout`` seconds
    (unreachable server, or a token that is unknown, used or expired), and the
    verification errors of :func:`verify_reply` / :func:`accept_enroll_reply`.
    """
    frames, corr = request_frames(token, identity, node_id, now=clock(), sequence=sequence)
    pair = token.first_contact_curve_keypair()
    deadline = time.monotonic() + timeout
    backoff = _REFUSED_BACKOFF

    def ours(received: list[bytes]) -> EnrollReply | None:
        try:
            return verify_reply(token, received, correlation_id=corr, now=clock())
        except UnexpectedMessage:
            return None  # not our reply (cannot normally happen on a fresh socket)

    waiting = _WaitNotice(on_wait, start=time.monotonic())
    while (
        reply := _first_contact(token, pair, frames, deadline=deadline, ours=ours, waiting=waiting)
    ) is None:
        # The server refused the token's key. A daemon admits a new token's
        # key at its next refresh (about a second), so a token created a
        # moment ago meets a ZAP refusal; libzmq delivered nothing, so
        # trying again cannot use the token twice.
        if time.monotonic() + backoff >= deadline:
            raise TransportError(
                f"the server at {token.endpoint} refused this token's key for "
                f"{timeout:g} s (the token is unknown, used or expired)"
            )
        waiting.tick(
            f"the server at {token.endpoint} refuses this token's key; trying again for "
            f"up to {timeout:g} s (a daemon admits a new token within a few seconds; an "
            "unknown, used, withdrawn or expired token stays refused)"
        )
        time.sleep(backoff)
        backoff = min(backoff * 2, _REFUSED_BACKOFF_MAX)
    return accept_enroll_reply(token, identity, reply, clock(), node_id=node_id, trust=trust)


_REFUSED_BACKOFF = 0.1
_REFUSED_BACKOFF_MAX = 1.0
#: A wait longer than this is announced through ``on_wait`` (once).
_NOTICE_AFTER = 1.0
#: The largest enrollment reply frame accepted (certificates, a revocation list).
_MAX_REPLY_FRAME = 2 * 1024 * 1024


class _WaitNotice:
    """Calls ``on_wait`` once, the first time :meth:`tick` comes a second after ``start``."""

    def __init__(self, on_wait: Callable[[str], None] | None, *, start: float) -> None:
        self._on_wait = on_wait
        self._start = start

    def tick(self, text: str) -> None:
        if self._on_wait is not None and time.monotonic() - self._start >= _NOTICE_AFTER:
            self._on_wait(text)
            self._on_wait = None


def _first_contact(
    token: JoinToken,
    pair: CurveKeyPairBytes,
    frames: Sequence[bytes | memoryview],
    *,
    deadline: float,
    ours: Callable[[list[bytes]], EnrollReply | None],
    waiting: _WaitNotice,
) -> EnrollReply | None:
    """Send the request on a fresh socket; our reply, or None if the key was refused.

    :class:`securemesh.transport.SyncRequester` tells a ZAP refusal
    (``HANDSHAKE_FAILED_AUTH``: libzmq then drops the queued request) apart
    from silence. Raises TransportError at ``deadline``.
    """
    from securemesh.transport import CurveKeyPair, SyncRequester  # noqa: PLC0415 - pyzmq

    def idle() -> None:
        waiting.tick(
            f"waiting for the enrollment reply from {token.endpoint} (up to "
            f"{max(0.0, deadline - time.monotonic()):.0f} s more)"
        )

    remaining = max(0.001, deadline - time.monotonic())
    with SyncRequester(
        token.endpoint,
        token.server_key,
        CurveKeyPair(public=pair.public, secret=pair.secret),
        max_frame_size=_MAX_REPLY_FRAME,
        handshake_timeout=remaining,
    ) as requester:
        try:
            return requester.request(frames, deadline=deadline, accept=ours, on_idle=idle)
        except TransportError:
            raise TransportError(
                f"no enrollment reply from {token.endpoint} in time "
                "(server unreachable, or the token is unknown, used or expired)"
            ) from None


# ---------------------------------------------------------------- a data directory


def read_join_token(text: str, now: float) -> JoinToken:
    """Decode a join token and refuse an expired one (before any passphrase or key work)."""
    token = JoinToken.decode(text)
    if token.is_expired(now):
        raise ConfigError("this join token has expired: ask for a fresh one")
    return token


@dataclass(frozen=True, slots=True)
class DataDirEnrollment:
    """What :func:`enroll_data_dir` did: the verified result, the files, whether keys are new."""

    result: EnrollResult
    files: NodeFiles
    new_keys: bool


def enroll_data_dir(
    token: JoinToken,
    data_dir: Path,
    *,
    node_id: str,
    passphrase: str,
    kdf_params: KdfParams,
    timeout: float,
    clock: Callable[[], float] = time.time,
    listen: str | None = None,
    in_use_hint: str,
    in_use_error: type[LocalError] = StateFileError,
    on_wait: Callable[[str], None] | None = None,
    rename: bool = False,
    rename_hint: str = "",
) -> DataDirEnrollment:
    """Enroll the node of ``data_dir`` with ``token`` and write the daemon's layout there.

    Keys are kept (``identity.key`` exists: re-enrollment) or generated and
    saved under ``passphrase`` with ``kdf_params``. The envelope counter in
    ``sequence.state`` is continued, because the server's replay window
    remembers a re-enrolling node's id; if the counter is locked (the node is
    running) this raises ``in_use_error`` naming ``in_use_hint`` before the
    token is spent. ``listen`` goes to a new ``node.toml`` of an edge.
    ``on_wait``: as in :func:`enroll_over_zmq`. A data dir enrolled under
    another node id is refused (ConfigError, before the token is spent; the
    message ends with ``rename_hint``) unless ``rename``.
    """
    token.check_node_id(node_id)  # before any key is generated or file written
    enrolled = enrolled_node_id(data_dir)
    if enrolled is not None and enrolled != node_id and not rename:
        raise ConfigError(
            f"{data_dir} belongs to node {enrolled!r}, not {node_id!r}: re-enroll it with "
            f"that id, or use another data directory{rename_hint}"
        )
    trust = existing_trust(data_dir)
    identity, created = identity_for_enrollment(data_dir, passphrase, kdf_params=kdf_params)
    try:
        with SequenceCounter(data_dir / SEQUENCE_FILE) as counter:
            sequence = counter.next()
    except StateFileError as exc:
        raise in_use_error(f"{exc} ({in_use_hint})") from exc
    result = enroll_over_zmq(
        token,
        identity,
        node_id,
        timeout=timeout,
        clock=clock,
        sequence=sequence,
        trust=trust,
        on_wait=on_wait,
    )
    files = save_enrollment(data_dir, token, result, listen=listen)
    return DataDirEnrollment(result, files, created)
