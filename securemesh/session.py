"""Sans-I/O authenticated session handshake and the per-message session fast path.

Theory of operation
-------------------
Two nodes that exchange many messages should not pay one Ed25519 signature and
verification per message. They run this three-message handshake once, signed
by their identity keys, and then authenticate each message with a keyed MAC
(the wire's MAC mode) under keys only the two of them hold (ARCHITECTURE.md
§3, "session fast path"). Like h11,
this module never touches a socket: bytes go in, bytes come out, and the bus
moves them.

::

    initiator I                                          responder R
    HELLO  = v | 1 | id_I | id_R | n_I | pk_I  ------>   resolve_peer(id_I)
                                                          (secret, ct) = Encaps(pk_I, TH1)
           <------  ACCEPT = v | 2 | n_R | ct | sig_R | mac_R
    resolve_peer(id_R), check sig_R,
    secret = Decaps(ct, TH1), check mac_R
    FINISH = v | 3 | sig_I | mac_I   ------------------>  check sig_I, mac_I

* ``pk_I`` is a fresh hybrid X25519 + ML-KEM-768 public key and ``ct`` the
  hybrid ciphertext (:mod:`securemesh.crypto.kem`): the session secret stays
  private against a future quantum adversary as long as ML-KEM holds, and
  against a classical one as long as X25519 holds.
* The KEM combiner's context is ``SHA-256(TRANSCRIPT_LABEL || HELLO || n_R)``
  (``ct`` cannot be in it: it is produced by the encapsulation).
  ``TH1 = SHA-256(TRANSCRIPT_LABEL || HELLO || ACCEPT-body)``, where ACCEPT-body
  is ACCEPT without ``sig_R | mac_R``, is the key-derivation context, so the
  keys are bound to both identities, both nonces, ``pk_I`` and ``ct``.
* ``sig_R = Sign_R(SIG_LABEL_R || TH1)``; ``TH2 = SHA-256(TH1 || sig_R)``;
  ``mac_R = HMAC-SHA-256(responder_confirm, TH2)``;
  ``TH3 = SHA-256(TH2 || mac_R)``; ``sig_I = Sign_I(SIG_LABEL_I || TH3)``;
  ``mac_I = HMAC-SHA-256(initiator_confirm, SHA-256(TH3 || sig_I))``.
  Both parties sign a transcript containing both identities and both fresh
  nonces/ephemerals (ISO/IEC 9798-3 style "sign both identities", as SIGMA-I
  analyses it), the role labels stop reflection, and the MACs give explicit key
  confirmation (TLS 1.3 ``Finished``).
* Replays: a replayed HELLO makes R answer with a fresh ``n_R`` and ``ct``, so
  the old FINISH never verifies against it; a replayed ACCEPT or FINISH fails
  the signature over the fresh transcript; a message repeated into the same
  state machine is :class:`~securemesh.errors.UnexpectedMessage`. Any error is
  fatal: the handshake object moves to ``FAILED`` and must be discarded.

States and transitions are the table :data:`TRANSITIONS` (h11 ``_state.py``).

Identities: the peer's Ed25519 verify key comes from ``resolve_peer(node_id)``,
which the bus backs with certificate verification (valid, unexpired,
unrevoked); it raises (a :class:`~securemesh.errors.RemoteError`) for unknown or
revoked nodes and the handshake fails with that error.

Sessions
--------
After the handshake each side holds a :class:`Session`: the session id (the
envelope ``key_id`` of MAC-mode envelopes) and, per direction, a 32-byte key
for the wire's MAC mode (:meth:`Session.envelope_mac_keys`). Replay
protection of those envelopes is the wire's own
:class:`~securemesh.wire.ReplayGuard`, run by the node's pipeline on every
message, signed or MAC, so the session keeps no window of its own.

A session is used until :meth:`Session.needs_handshake` says its lifetime is
over — ``SessionLimits.max_age`` seconds since it was established (injectable
``clock``) or ``max_messages`` envelopes sent with it, the node's
``[session]`` configuration — and then replaced by a fresh handshake (fresh
ephemeral KEM keys: new keys, new session id, full forward secrecy). There is
no in-session rekeying: envelopes carry no epoch.

(An earlier version also had a record layer — ChaCha20-Poly1305 records with
epochs, a ratchet and a sliding replay window duplicating
``wire.ReplayWindow`` — that no code path used; it was removed.)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from securemesh.crypto.kem import (
    HybridCiphertext,
    HybridPrivateKey,
    HybridPublicKey,
    SessionKeys,
    derive_session_keys,
    encapsulate,
)
from securemesh.crypto.signing import SIGNATURE_SIZE, Signer, verify_signature
from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    LocalError,
    SizeLimitExceeded,
    UnexpectedMessage,
)

__all__ = [
    "ACCEPT_SIZE",
    "ENVELOPE_MAC_LABEL",
    "FINISH_SIZE",
    "MAX_HANDSHAKE_MESSAGE_SIZE",
    "MAX_HELLO_SIZE",
    "MAX_NODE_ID_SIZE",
    "PROTOCOL_VERSION",
    "TRANSITIONS",
    "Accept",
    "Event",
    "Finish",
    "Handshake",
    "HandshakeMessage",
    "Hello",
    "MessageType",
    "PeerResolver",
    "Role",
    "Session",
    "SessionLimits",
    "State",
    "decode_handshake_message",
]

PROTOCOL_VERSION = 1
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_NODE_ID_SIZE = 128
MAX_HELLO_SIZE = 2 + 2 * (1 + MAX_NODE_ID_SIZE) + NONCE_SIZE + HybridPublicKey.SIZE
ACCEPT_BODY_SIZE = 2 + NONCE_SIZE + HybridCiphertext.SIZE
ACCEPT_SIZE = ACCEPT_BODY_SIZE + SIGNATURE_SIZE + MAC_SIZE
FINISH_SIZE = 2 + SIGNATURE_SIZE + MAC_SIZE
MAX_HANDSHAKE_MESSAGE_SIZE = max(MAX_HELLO_SIZE, ACCEPT_SIZE, FINISH_SIZE)

TRANSCRIPT_LABEL = b"securemesh/v1 session handshake"
SIG_LABEL_RESPONDER = b"securemesh/v1 handshake signature: responder"
SIG_LABEL_INITIATOR = b"securemesh/v1 handshake signature: initiator"

#: Label deriving the wire MAC-mode keys from the traffic keys (Session.envelope_mac_keys).
ENVELOPE_MAC_LABEL = b"securemesh/v1 envelope mac"


#: ``resolve_peer(node_id) -> Ed25519 verify key``; raises for unknown/revoked nodes.
PeerResolver = Callable[[str], bytes]
Rng = Callable[[int], bytes]
Clock = Callable[[], float]


class MessageType(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    FINISH = 3


# ------------------------------------------------------------------ node ids


def _check_node_id(node_id: str, *, local: bool) -> bytes:
    """Node ids are 1..128 bytes of printable ASCII without spaces (0x21-0x7e)."""
    raw = node_id.encode("ascii", "replace")
    ok = 1 <= len(raw) <= MAX_NODE_ID_SIZE and all(0x21 <= b <= 0x7E for b in raw)
    if not ok or not node_id.isascii():
        if local:
            raise LocalError(f"invalid node id {node_id!r}")
        raise DecodeError("invalid node id")
    return raw


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    """Initiator → responder: who is talking to whom, a nonce and a hybrid public key."""

    initiator_id: str
    responder_id: str
    nonce: bytes
    public_key: HybridPublicKey

    def encode(self) -> bytes:
        i = _check_node_id(self.initiator_id, local=True)
        r = _check_node_id(self.responder_id, local=True)
        if len(self.nonce) != NONCE_SIZE:
            raise LocalError("nonce must be 32 bytes")
        return b"".join(
            (
                bytes((PROTOCOL_VERSION, MessageType.HELLO, len(i))),
                i,
                bytes((len(r),)),
                r,
                self.nonce,
                self.public_key.to_bytes(),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        _check_header(data, MessageType.HELLO, MAX_HELLO_SIZE)
        pos = 2
        ids: list[str] = []
        for _ in range(2):
            if pos >= len(data):
                raise DecodeError("truncated HELLO")
            n = data[pos]
            raw = bytes(data[pos + 1 : pos + 1 + n])
            if len(raw) != n:
                raise DecodeError("truncated HELLO")
            text = raw.decode("ascii", "replace")
            _check_node_id(text, local=False)
            ids.append(text)
            pos += 1 + n
        if len(data) - pos != NONCE_SIZE + HybridPublicKey.SIZE:
            raise DecodeError("HELLO has the wrong length")
        nonce = bytes(data[pos : pos + NONCE_SIZE])
        pk = HybridPublicKey.from_bytes(bytes(data[pos + NONCE_SIZE :]))
        return cls(initiator_id=ids[0], responder_id=ids[1], nonce=nonce, public_key=pk)


@dataclass(frozen=True, slots=True)
class Accept:
    """Responder → initiator: a nonce, the hybrid ciphertext, signature and key confirmation."""

    nonce: bytes
    ciphertext: HybridCiphertext
    signature: bytes
    confirm: bytes

    def body(self) -> bytes:
        """The part covered by ``TH1`` (everything before the signature)."""
        if len(self.nonce) != NONCE_SIZE:
            raise LocalError("nonce must be 32 bytes")
        return (
            bytes((PROTOCOL_VERSION, MessageType.ACCEPT)) + self.nonce + self.ciphertext.to_bytes()
        )

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE or len(self.confirm) != MAC_SIZE:
            raise LocalError("bad signature or MAC length")
        return self.body() + self.signature + self.confirm

    @classmethod
    def decode(cls, data: bytes) -> Accept:
        _check_header(data, MessageType.ACCEPT, ACCEPT_SIZE)
        if len(data) != ACCEPT_SIZE:
            raise DecodeError("ACCEPT has the wrong length")
        pos = 2 + NONCE_SIZE
        ct_end = pos + HybridCiphertext.SIZE
        return cls(
            nonce=bytes(data[2:pos]),
            ciphertext=HybridCiphertext.from_bytes(bytes(data[pos:ct_end])),
            signature=bytes(data[ct_end : ct_end + SIGNATURE_SIZE]),
            confirm=bytes(data[ct_end + SIGNATURE_SIZE :]),
        )


@dataclass(frozen=True, slots=True)
class Finish:
    """Initiator → responder: signature over the whole transcript and key confirmation."""

    signature: bytes
    confirm: bytes

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE or len(self.confirm) != MAC_SIZE:
            raise LocalError("bad signature or MAC length")
        return bytes((PROTOCOL_VERSION, MessageType.FINISH)) + self.signature + self.confirm

    @classmethod
    def decode(cls, data: bytes) -> Finish:
        _check_header(data, MessageType.FINISH, FINISH_SIZE)
        if len(data) != FINISH_SIZE:
            raise DecodeError("FINISH has the wrong length")
        return cls(
            signature=bytes(data[2 : 2 + SIGNATURE_SIZE]),
            confirm=bytes(data[2 + SIGNATURE_SIZE :]),
        )


HandshakeMessage = Hello | Accept | Finish


def _check_header(data: bytes, expected: MessageType, limit: int) -> None:
    if len(data) > limit:
        raise SizeLimitExceeded(f"handshake message over {limit} bytes")
    if len(data) < 2:
        raise DecodeError("truncated handshake message")
    if data[0] != PROTOCOL_VERSION:
        raise DecodeError("unsupported handshake version")
    if data[1] != expected:
        raise DecodeError("wrong handshake message type")


def decode_handshake_message(data: bytes) -> HandshakeMessage:
    """Decode any handshake message, strictly: size first, then version, type, fields."""
    if len(data) > MAX_HANDSHAKE_MESSAGE_SIZE:
        raise SizeLimitExceeded("handshake message too large")
    if len(data) < 2:
        raise DecodeError("truncated handshake message")
    kind = data[1]
    if kind == MessageType.HELLO:
        return Hello.decode(data)
    if kind == MessageType.ACCEPT:
        return Accept.decode(data)
    if kind == MessageType.FINISH:
        return Finish.decode(data)
    raise DecodeError("unknown handshake message type")


# ------------------------------------------------------------- state machine


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_ACCEPT = "await_accept"  # initiator sent HELLO
    AWAIT_FINISH = "await_finish"  # responder sent ACCEPT
    ESTABLISHED = "established"
    FAILED = "failed"  # terminal; discard the object


class Event(enum.Enum):
    SEND_HELLO = "send_hello"
    RECV_HELLO = "recv_hello"  # the responder answers with ACCEPT
    RECV_ACCEPT = "recv_accept"  # the initiator answers with FINISH
    RECV_FINISH = "recv_finish"


#: The only legal transitions. Anything else is UnexpectedMessage (a peer's
#: message) or LocalError (our call), and moves the machine to FAILED.
TRANSITIONS: dict[tuple[Role, State, Event], State] = {
    (Role.INITIATOR, State.IDLE, Event.SEND_HELLO): State.AWAIT_ACCEPT,
    (Role.INITIATOR, State.AWAIT_ACCEPT, Event.RECV_ACCEPT): State.ESTABLISHED,
    (Role.RESPONDER, State.IDLE, Event.RECV_HELLO): State.AWAIT_FINISH,
    (Role.RESPONDER, State.AWAIT_FINISH, Event.RECV_FINISH): State.ESTABLISHED,
}

_RECV_EVENTS = {
    MessageType.HELLO: Event.RECV_HELLO,
    MessageType.ACCEPT: Event.RECV_ACCEPT,
    MessageType.FINISH: Event.RECV_FINISH,
}


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How long a session may be used before a fresh handshake (the node's ``[session]``)."""

    max_age: float = 600.0
    max_messages: int = 1 << 24

    def __post_init__(self) -> None:
        if not self.max_age > 0 or self.max_messages < 1:
            raise LocalError("session limits must be positive")


def _sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class Handshake:
    """One side of the handshake. Create with :meth:`initiator` or :meth:`responder`.

    Initiator: ``hello = hs.initiate()``; ``finish = hs.receive(accept)``.
    Responder: ``accept = hs.receive(hello)``; ``hs.receive(finish)`` → ``None``.
    Then ``hs.session`` is the established :class:`Session`.

    On a responder, ``peer_id`` is the id the HELLO *claims* until the state is
    ``ESTABLISHED``; only ``hs.session.peer_id`` is authenticated.
    """

    def __init__(
        self,
        role: Role,
        *,
        node_id: str,
        signer: Signer,
        resolve_peer: PeerResolver,
        peer_id: str | None = None,
        rng: Rng | None = None,
        clock: Clock | None = None,
        limits: SessionLimits | None = None,
    ) -> None:
        _check_node_id(node_id, local=True)
        if role is Role.INITIATOR:
            if peer_id is None:
                raise LocalError("an initiator must name the peer it wants to reach")
            _check_node_id(peer_id, local=True)
            if peer_id == node_id:
                raise LocalError("a node cannot open a session to itself")
        self.role = role
        self.node_id = node_id
        self.peer_id = peer_id
        self.state = State.IDLE
        self._signer = signer
        self._resolve_peer = resolve_peer
        self._rng: Rng = rng if rng is not None else os.urandom
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._limits = limits if limits is not None else SessionLimits()
        self._kem_key: HybridPrivateKey | None = None
        self._hello: bytes = b""
        self._peer_verify_key: bytes = b""
        self._keys: SessionKeys | None = None
        self._th3: bytes = b""
        self._session: Session | None = None
        #: When this handshake object was made (``clock()``); the bus abandons
        #: handshakes older than its handshake timeout (see :meth:`expired`).
        self.started_at = self._clock()

    @classmethod
    def initiator(
        cls,
        *,
        node_id: str,
        peer_id: str,
        signer: Signer,
        resolve_peer: PeerResolver,
        rng: Rng | None = None,
        clock: Clock | None = None,
        limits: SessionLimits | None = None,
    ) -> Handshake:
        return cls(
            Role.INITIATOR,
            node_id=node_id,
            peer_id=peer_id,
            signer=signer,
            resolve_peer=resolve_peer,
            rng=rng,
            clock=clock,
            limits=limits,
        )

    @classmethod
    def responder(
        cls,
        *,
        node_id: str,
        signer: Signer,
        resolve_peer: PeerResolver,
        rng: Rng | None = None,
        clock: Clock | None = None,
        limits: SessionLimits | None = None,
    ) -> Handshake:
        return cls(
            Role.RESPONDER,
            node_id=node_id,
            signer=signer,
            resolve_peer=resolve_peer,
            rng=rng,
            clock=clock,
            limits=limits,
        )

    # ------------------------------------------------------------ transitions

    def _advance(self, event: Event, *, remote: bool) -> None:
        nxt = TRANSITIONS.get((self.role, self.state, event))
        if nxt is None:
            current = self.state
            self.state = State.FAILED
            msg = f"{self.role.value} in state {current.value} cannot handle {event.value}"
            if remote:
                raise UnexpectedMessage(msg)
            raise LocalError(msg)
        self.state = nxt

    def expired(self, timeout: float) -> bool:
        """True if the handshake is not established ``timeout`` seconds after it started."""
        return self.state is not State.ESTABLISHED and self._clock() - self.started_at >= timeout

    @property
    def session(self) -> Session:
        if self._session is None:
            raise LocalError("the handshake is not established")
        return self._session

    def initiate(self) -> bytes:
        """Initiator: return HELLO."""
        if self.role is not Role.INITIATOR:
            raise LocalError("only the initiator sends HELLO")
        self._advance(Event.SEND_HELLO, remote=False)
        if self.peer_id is None:  # unreachable: checked in __init__
            raise LocalError("an initiator must name its peer")
        self._kem_key = HybridPrivateKey.generate(self._rng)
        self._hello = Hello(
            initiator_id=self.node_id,
            responder_id=self.peer_id,
            nonce=self._rng(NONCE_SIZE),
            public_key=self._kem_key.public_key(),
        ).encode()
        return self._hello

    def receive(self, data: bytes) -> bytes | None:
        """Feed one handshake message from the peer; return the reply to send, if any.

        Raises a :class:`~securemesh.errors.RemoteError` (DecodeError,
        AuthenticationError, UnexpectedMessage, or whatever ``resolve_peer``
        raised) and moves to ``FAILED`` when the message is not acceptable.
        """
        if self.state is State.FAILED:
            raise LocalError("this handshake failed; start a new one")
        try:
            message = decode_handshake_message(data)
            kind = MessageType(data[1])
            self._advance(_RECV_EVENTS[kind], remote=True)
            if isinstance(message, Hello):
                return self._on_hello(data, message)
            if isinstance(message, Accept):
                return self._on_accept(message)
            self._on_finish(message)
            return None
        except BaseException:
            self.state = State.FAILED
            raise

    def _on_hello(self, raw: bytes, hello: Hello) -> bytes:
        if hello.responder_id != self.node_id:
            raise AuthenticationError("HELLO is addressed to another node")
        if hello.initiator_id == self.node_id:
            raise AuthenticationError("HELLO claims to come from ourselves")
        self._peer_verify_key = self._resolve_peer(hello.initiator_id)
        self.peer_id = hello.initiator_id
        nonce = self._rng(NONCE_SIZE)
        # TH1 covers ACCEPT-body, which contains ct: encapsulate first with a
        # context that binds HELLO and our nonce, then bind ct through TH1 in
        # the key derivation and signature.
        kem_context = _sha256(TRANSCRIPT_LABEL, raw, nonce)
        secret, ct = encapsulate(hello.public_key, context=kem_context, rng=self._rng)
        body = Accept(nonce=nonce, ciphertext=ct, signature=b"", confirm=b"").body()
        th1 = _sha256(TRANSCRIPT_LABEL, raw, body)
        keys = derive_session_keys(secret, th1)
        sig = self._signer.sign(SIG_LABEL_RESPONDER + th1)
        th2 = _sha256(th1, sig)
        confirm = _mac(keys.responder_confirm, th2)
        self._keys = keys
        self._th3 = _sha256(th2, confirm)
        return body + sig + confirm

    def _on_accept(self, accept: Accept) -> bytes:
        if self._kem_key is None or self.peer_id is None:  # unreachable: guarded by TRANSITIONS
            raise LocalError("handshake state is inconsistent")
        th1 = _sha256(TRANSCRIPT_LABEL, self._hello, accept.body())
        verify_key = self._resolve_peer(self.peer_id)
        verify_signature(verify_key, SIG_LABEL_RESPONDER + th1, accept.signature)
        kem_context = _sha256(TRANSCRIPT_LABEL, self._hello, accept.nonce)
        secret = self._kem_key.decapsulate(accept.ciphertext, context=kem_context)
        self._kem_key = None  # ephemeral: forget it as soon as it is used
        keys = derive_session_keys(secret, th1)
        th2 = _sha256(th1, accept.signature)
        if not hmac.compare_digest(_mac(keys.responder_confirm, th2), accept.confirm):
            raise AuthenticationError("responder key confirmation does not verify")
        th3 = _sha256(th2, accept.confirm)
        sig = self._signer.sign(SIG_LABEL_INITIATOR + th3)
        confirm = _mac(keys.initiator_confirm, _sha256(th3, sig))
        self._establish(keys)
        return Finish(signature=sig, confirm=confirm).encode()

    def _on_finish(self, finish: Finish) -> None:
        if self._keys is None:  # unreachable: guarded by TRANSITIONS
            raise LocalError("handshake state is inconsistent")
        verify_signature(self._peer_verify_key, SIG_LABEL_INITIATOR + self._th3, finish.signature)
        expected = _mac(self._keys.initiator_confirm, _sha256(self._th3, finish.signature))
        if not hmac.compare_digest(expected, finish.confirm):
            raise AuthenticationError("initiator key confirmation does not verify")
        self._establish(self._keys)

    def _establish(self, keys: SessionKeys) -> None:
        if self.peer_id is None:  # unreachable: set before any key exists
            raise LocalError("handshake state is inconsistent")
        self._session = Session(
            keys,
            role=self.role,
            peer_id=self.peer_id,
            clock=self._clock,
            limits=self._limits,
        )
        self._keys = None

    def __repr__(self) -> str:
        return (
            f"Handshake(role={self.role.value}, node_id={self.node_id!r}, "
            f"peer_id={self.peer_id!r}, state={self.state.value})"
        )


# ------------------------------------------------------------------ session


class Session:
    """An established session: its id and the MAC-mode envelope keys, for a limited time.

    Not thread-safe; one session belongs to one connection's task.
    """

    def __init__(
        self,
        keys: SessionKeys,
        *,
        role: Role,
        peer_id: str,
        clock: Clock,
        limits: SessionLimits,
    ) -> None:
        self.session_id = keys.session_id
        self.role = role
        self.peer_id = peer_id
        self._clock = clock
        self.limits = limits
        self.established_at = clock()
        if role is Role.INITIATOR:
            send_key, recv_key = keys.initiator_to_responder, keys.responder_to_initiator
        else:
            send_key, recv_key = keys.responder_to_initiator, keys.initiator_to_responder
        # Keys for the wire's MAC mode (keyed BLAKE2b, securemesh.wire): derived
        # from the traffic keys under their own label, so no key serves two
        # algorithms. One key per direction (wire docstring, "caller's duties").
        self._envelope_keys = (
            hmac.new(send_key, ENVELOPE_MAC_LABEL, hashlib.sha256).digest(),
            hmac.new(recv_key, ENVELOPE_MAC_LABEL, hashlib.sha256).digest(),
        )

    def envelope_mac_keys(self) -> tuple[bytes, bytes]:
        """``(send_key, receive_key)``: 32-byte keys for MAC-mode envelopes (never log them).

        ``HMAC-SHA256(traffic key, ENVELOPE_MAC_LABEL)`` per direction.
        Envelopes carry no epoch, so the bus rekeys MAC traffic by running a new
        handshake (a new session id) rather than by ratcheting these keys.
        """
        return self._envelope_keys

    def needs_handshake(self, messages_sent: int) -> bool:
        """True once ``limits.max_age`` seconds passed or ``limits.max_messages`` were sent."""
        return (
            messages_sent >= self.limits.max_messages
            or self._clock() - self.established_at >= self.limits.max_age
        )

    def __repr__(self) -> str:
        return (
            f"Session(role={self.role.value}, peer_id={self.peer_id!r}, "
            f"session_id={self.session_id.hex()})"
        )
