"""The transport seam: abstract endpoints that move multipart frames between peers.

Theory of operation
-------------------
The transport is the lowest layer that touches the network (ARCHITECTURE.md
§2, layer 5). It moves *frames* (``list[bytes]``) and says which
authenticated peer they came from; it knows nothing about envelopes,
certificates or sessions. Everything above it is tested against the in-memory
twin, and both implementations pass one conformance suite
(``tests/transport/test_transport_conformance.py``), after httpx's
``_transports/base.py`` and trio's ``testing/_check_streams.py``.

Vocabulary:

* A **peer** is named by its 32-byte raw CurveZMQ public key (RFC 26), the key
  the transport authenticated, not by anything the peer claims. The bus binds a
  message's claimed sender to this key (the certificate carries the node's
  CURVE key).
* A :class:`Transport` makes endpoints: :meth:`Transport.listen` gives a
  :class:`Listener` (ZeroMQ ROUTER: edge and cloud nodes), and
  :meth:`Transport.connect` a :class:`Connection` (ZeroMQ DEALER: a device or
  edge connecting out to its parent, whose public key it must know).
* Admission: a listener asks its :data:`KeyAuthenticator` about every
  connecting key. It returns ``None`` to admit and raises to refuse (default:
  :func:`deny_all_keys`). The bus backs it with "enrolled and not revoked".
  :meth:`Listener.reauthenticate` makes the listener re-ask it about every
  connected peer (after a new revocation list) and cut off those now refused,
  live connections included.

Semantics common to every implementation (the conformance suite checks them):

* **Ordering**: messages between two endpoints arrive in the order sent.
  Multipart messages are atomic: all frames or none.
* **Addressing**: a listener learns a peer when that peer's first message
  arrives on a connection, and can send to it from then on; before that, and
  after the peer disconnected, :meth:`Channel.send` raises
  :class:`~securemesh.errors.PeerUnavailable`. A connection has exactly one
  peer, the server key it was given.
* **Bounded queues and back-pressure**: each direction of each connection
  buffers at most about ``sndhwm + rcvhwm`` messages (ZeroMQ high-water marks;
  TCP buffers add a bounded amount on real sockets; a listener's receive mark
  is lowered to hold about ``max_queued_bytes`` per connection). When the
  queue toward its server is full, a *connection's* ``send`` **waits** up to
  ``timeout`` seconds (default ``TransportOptions.send_timeout``) for room,
  then raises :class:`~securemesh.errors.SendTimeout` and counts it in
  ``stats.send_timeouts``; the message is then *not* queued. A *listener's*
  ``send`` never waits (issue 9 #3): each peer has its own bounded outbound
  queue (its ZeroMQ pipe), and when that is full the message is dropped at
  once — ``SendTimeout``, counted the same way — so a peer that does not read
  never holds up the others. Nothing is dropped silently and memory never
  grows without bound.
* **Receive** waits for the next message, fair-queued across peers (one
  flooding peer cannot starve the others), up to ``timeout`` seconds
  (``None``: forever), raising the built-in :class:`TimeoutError`.
  Messages with more than ``max_frames`` frames or more than
  ``max_message_size`` bytes in all (``stats.dropped_oversize``, dropped
  without being copied), or from a peer cut off by
  :meth:`Listener.reauthenticate`, are discarded and counted; ZeroMQ itself
  disconnects a peer that sends a frame over ``max_frame_size`` (``MAXMSGSIZE``).
* **Cancellation**: a ``send`` or ``recv`` that times out or is cancelled
  never loses, duplicates or half-sends a message (receives wait by polling
  and then take the message synchronously).
* **Close** is immediate (``LINGER 0``): queued outbound messages are
  discarded, pending and later ``send``/``recv`` raise
  :class:`~securemesh.errors.TransportClosed`; closing twice is harmless.
* **Reconnect**: a connection whose listener goes away keeps its queue and
  reconnects with exponential backoff (``reconnect_ivl`` …
  ``reconnect_ivl_max``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric import x25519

from securemesh.errors import AuthenticationError, LocalError, TransportError

__all__ = [
    "CURVE_KEY_SIZE",
    "AllowKeys",
    "Channel",
    "Connection",
    "CurveKeyPair",
    "KeyAuthenticator",
    "Listener",
    "RejectHook",
    "Transport",
    "TransportOptions",
    "TransportStats",
    "deny_all_keys",
]

CURVE_KEY_SIZE = 32

#: ``authenticator(curve_public_key)``: return ``None`` to admit, raise to refuse.
KeyAuthenticator = Callable[[bytes], None]
#: Called with the refused key and the exception the authenticator raised.
RejectHook = Callable[[bytes, BaseException], None]


def deny_all_keys(curve_key: bytes) -> None:
    """The default authenticator: admits nobody."""
    raise AuthenticationError("no authenticator configured: every key is refused")


class AllowKeys:
    """An authenticator admitting a fixed, mutable set of keys (tests, small setups)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys = {bytes(k) for k in keys}

    def add(self, key: bytes) -> None:
        self._keys.add(bytes(key))

    def discard(self, key: bytes) -> None:
        self._keys.discard(bytes(key))

    def __call__(self, curve_key: bytes) -> None:
        if curve_key not in self._keys:
            raise AuthenticationError("curve key not admitted")


@dataclass(frozen=True, slots=True)
class CurveKeyPair:
    """A CurveZMQ key pair (Curve25519, RFC 26), raw 32-byte keys. Secret never printed."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.public) != CURVE_KEY_SIZE or len(self.secret) != CURVE_KEY_SIZE:
            raise LocalError("CURVE keys are 32 bytes")
        derived = (
            x25519.X25519PrivateKey.from_private_bytes(self.secret).public_key().public_bytes_raw()
        )
        if derived != self.public:
            raise LocalError("CURVE public key does not match the secret key")

    @classmethod
    def from_secret(cls, secret: bytes) -> CurveKeyPair:
        if len(secret) != CURVE_KEY_SIZE:
            raise LocalError("CURVE keys are 32 bytes")
        sk = x25519.X25519PrivateKey.from_private_bytes(secret)
        return cls(public=sk.public_key().public_bytes_raw(), secret=bytes(secret))

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] | None = None) -> CurveKeyPair:
        return cls.from_secret((rng if rng is not None else os.urandom)(CURVE_KEY_SIZE))


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Limits and timings shared by both transports."""

    sndhwm: int = 1000
    rcvhwm: int = 1000
    send_timeout: float = 5.0
    max_frame_size: int = 16 * 1024 * 1024
    max_frames: int = 16
    #: a whole received message (all frames) above this is dropped uncopied
    max_message_size: int = 64 * 1024 * 1024
    #: what a listener lets libzmq queue per connection: its RCVHWM (in messages)
    #: is lowered to ``max(2, max_queued_bytes // max_frame_size)``
    max_queued_bytes: int = 64 * 1024 * 1024
    reconnect_ivl: float = 0.1
    reconnect_ivl_max: float = 5.0
    handshake_timeout: float = 10.0
    # pre-authentication limits (ZeroMQ listeners: securemesh.transport._admission)
    max_pending_handshakes: int = 8
    max_pending_per_address: int = 4
    accept_burst: int = 64
    accept_rate: float = 20.0
    fd_reserve: int = 64
    log_window: float = 60.0
    #: listeners: cut every connection when the process's resident memory grew by
    #: more than this many bytes since the listener started (0: off; Linux only;
    #: securemesh.transport._memguard)
    memory_budget: int = 0
    memory_check_interval: float = 0.02

    def __post_init__(self) -> None:
        if self.sndhwm < 1 or self.rcvhwm < 1:
            raise LocalError("high-water marks must be at least 1 (0 would mean unbounded)")
        if (
            self.send_timeout < 0
            or self.max_frame_size < 1
            or self.max_frames < 1
            or self.max_message_size < 1
            or self.max_queued_bytes < 1
        ):
            raise LocalError("invalid transport limits")
        if (
            min(self.max_pending_handshakes, self.max_pending_per_address, self.accept_burst) < 1
            or self.accept_rate <= 0
            or self.fd_reserve < 0
            or self.log_window < 0
            or self.memory_budget < 0
            or self.memory_check_interval <= 0
        ):
            raise LocalError("invalid pre-authentication limits")
        if not 0 < self.reconnect_ivl <= self.reconnect_ivl_max:
            raise LocalError("need 0 < reconnect_ivl <= reconnect_ivl_max")


def listener_rcvhwm(options: TransportOptions) -> int:
    """A listener's receive high-water mark: ``rcvhwm``, lowered so that at most about
    ``max_queued_bytes`` wait per connection (libzmq counts messages, not bytes)."""
    return max(2, min(options.rcvhwm, options.max_queued_bytes // options.max_frame_size))


@dataclass(slots=True)
class TransportStats:
    """Counters an endpoint keeps (the node exports them as metrics)."""

    sent: int = 0
    received: int = 0
    send_timeouts: int = 0
    rejected_keys: int = 0
    dropped_malformed: int = 0
    dropped_unauthenticated: int = 0
    dropped_oversize: int = 0
    dropped_overflow: int = 0
    refused_connections: int = 0
    memory_trips: int = 0
    memory_cut_connections: int = 0


def check_outgoing(frames: Sequence[bytes], options: TransportOptions) -> list[bytes]:
    """Validate frames we are asked to send (a local error if invalid)."""
    return validate_outgoing([bytes(f) if not isinstance(f, bytes) else f for f in frames], options)


def validate_outgoing(out: list[bytes], options: TransportOptions) -> list[bytes]:
    """:func:`check_outgoing`'s checks of frames already in the form to send (``len`` = size)."""
    if not out:
        raise TransportError("a message has at least one frame")
    if not out[0]:
        raise TransportError("a message's first frame is not empty (reserved for batches)")
    if len(out) > options.max_frames:
        raise TransportError(f"a message has at most {options.max_frames} frames")
    if any(len(f) > options.max_frame_size for f in out):
        raise TransportError(f"a frame is at most {options.max_frame_size} bytes")
    return out


class Channel(abc.ABC):
    """What listeners and connections have in common."""

    stats: TransportStats
    # Set by every implementation's __init__; the properties below read them.
    _local_key: bytes
    _address: str
    _closed: bool

    @property
    def local_key(self) -> bytes:
        """Our own CURVE public key."""
        return self._local_key

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> str:
        """A listener's resolved address peers connect to (e.g. ``tcp://127.0.0.1:41235``),
        or the address a connection dials."""
        return self._address

    @abc.abstractmethod
    async def send(
        self, peer: bytes, frames: Sequence[bytes], *, timeout: float | None = None
    ) -> None:
        """Queue one multipart message to ``peer`` (see back-pressure in the module doc)."""

    @abc.abstractmethod
    async def recv(self, *, timeout: float | None = None) -> tuple[bytes, list[bytes]]:
        """Return ``(peer_curve_key, frames)`` of the next message."""

    @abc.abstractmethod
    def recv_nowait(self) -> tuple[bytes, list[bytes]] | None:
        """The next message if one is already here, else None; never waits.

        The same message :meth:`recv` would return (and the same checks);
        raises TransportClosed when closed. A loop that drains with it must
        still yield to the event loop now and then.
        """

    def recv_run_nowait(self) -> tuple[bytes, list[list[bytes]]] | None:
        """Messages of one peer that are already here, in order, else None; never waits.

        What successive :meth:`recv_nowait` calls would return, taken at once
        while only that peer's messages are held (a transport that keeps no
        backlog returns one message at a time). The caller handles every
        message it was given. Raises TransportClosed when closed.
        """
        got = self.recv_nowait()
        return None if got is None else (got[0], [got[1]])

    @abc.abstractmethod
    async def close(self) -> None:
        """Close now (linger 0). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Listener(Channel):
    """A bound endpoint serving many authenticated peers (ZeroMQ ROUTER)."""

    @abc.abstractmethod
    def peers(self) -> frozenset[bytes]:
        """Peers this listener can currently send to."""

    @abc.abstractmethod
    def reauthenticate(self) -> list[bytes]:
        """Forget every admission verdict; re-check peers and return the known ones refused.

        Call it after the set of admitted keys shrank (a new revocation list).
        Known peers are re-checked at once; every other connected peer is
        re-checked at its next message. A refused peer's messages are discarded
        (``stats.dropped_unauthenticated``) and sending to it raises
        PeerUnavailable, on its *current* connection too (ZAP alone would only
        stop its next connect).
        """


class Connection(Channel):
    """An outgoing connection to one listener (ZeroMQ DEALER); its only peer is the server."""

    _server_key: bytes

    @property
    def server_key(self) -> bytes:
        return self._server_key


class Transport(abc.ABC):
    """Makes listeners and connections for one local identity (a CURVE key pair)."""

    @abc.abstractmethod
    async def listen(self, address: str) -> Listener: ...

    @abc.abstractmethod
    async def connect(self, address: str, server_key: bytes) -> Connection: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every endpoint this transport made. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
