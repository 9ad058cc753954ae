"""The ZeroMQ transport: ROUTER listeners and DEALER connections, CurveZMQ everywhere.

Theory of operation
-------------------
* **CURVE on every socket** (ZeroMQ RFC 26/CurveZMQ): listeners are CURVE
  servers with our secret key; connections are CURVE clients that must know
  the server's public key, so a connection only ever talks to the listener it
  meant to reach. :class:`ZmqTransport` refuses to start when libzmq was built
  without CURVE (``zmq.has("curve")``).
* **ZAP** (ZeroMQ RFC 27): each transport owns a ``zmq.asyncio`` context and
  binds that context's one ZAP endpoint, ``inproc://zeromq.zap.01``, *before*
  any listener binds (libzmq admits every CURVE client when no ZAP handler is
  bound, so the order matters). The handler answers each request by calling
  the transport's ``authenticator(client_key)``: return → ``200`` with the
  key's hex as ZAP ``User-Id``; raise (or anything malformed) → ``400``.
  Default deny. The listener reads ``User-Id`` from each received message's
  metadata (``frame.get("User-Id")``), so every message is attributed to the
  key that authenticated *its connection*, never to a claimed identity.
* **Addressing**: a ROUTER routes by the routing id libzmq gives each
  connection. The listener remembers, per authenticated key, the routing id
  of the latest connection it heard from; ``ROUTER_MANDATORY`` makes a send to
  a vanished peer fail (``EHOSTUNREACH`` → PeerUnavailable) instead of
  dropping silently, and makes a full peer queue visible (``EAGAIN``).
* **Back-pressure**: ``SNDHWM``/``RCVHWM`` bound every queue (a listener's
  ``RCVHWM`` is lowered to about ``max_queued_bytes`` per connection: libzmq
  counts messages, not bytes). A connection's ``send`` tries a non-blocking
  send; while the server's queue is full it waits (polls for ``POLLOUT``)
  until ``timeout``, then raises SendTimeout. A listener's ``send`` never
  waits: ``ROUTER_MANDATORY`` reports a full peer pipe as ``EAGAIN`` and the
  message is dropped at once (SendTimeout), so one peer that does not read
  cannot stall a node's receive loop (issue 9 #3).
* **Fair receive**: the rest of a received batch waits in a per-peer,
  round-robin backlog (:mod:`._fair`) and turns alternate between it and the
  socket, so one peer's 1,024-message batch does not make the others wait
  behind it; the backlog is bounded (a peer beyond its share has its
  batches dropped, ``stats.dropped_overflow``).
* **Whole messages**: parts are read with ``copy=False`` and copied only once
  the message is known to be within ``max_frames`` and ``max_message_size``;
  a larger one is dropped uncopied (``stats.dropped_oversize``).
* **Bulk frames are not copied** (``ZERO_COPY_MIN``, 64 KiB): an envelope's
  raw frames (parts 2 onwards) of that size stay libzmq's buffers (handed on
  as memoryviews, made read-only by :func:`securemesh.wire.decode`), and
  parts of that size are sent with ``copy=False``, so a relay forwards a
  shard without copying it in Python; smaller parts, the header, the body
  and a batch's payload are copied as ``bytes`` (cheaper at that size). libzmq
  itself limits each *frame* (``MAXMSGSIZE``) but not the number of frames,
  and hands a multipart message over only once it is complete: what one
  incomplete message holds inside libzmq is not bounded by any socket option
  (docs/threat-model.md §7).
* **Memory guard** (listeners with ``memory_budget``): past that growth of the
  process's resident memory the listener's connections are cut, which makes
  libzmq free unfinished messages (:mod:`._memguard`).
* **Before authentication**: :class:`~._admission.AcceptGuard` watches the
  listener's socket monitor and refuses connections beyond the pending
  handshake, per-address rate and open-file limits.
* **Batches** (connections only): a DEALER's ``send`` queues the message and
  returns; the queue is flushed on the event loop's next pass, or at once when
  it holds ``_BATCH_MESSAGES`` messages. Two or more small messages queued
  together leave as *one* ZeroMQ message ``[b"", batch]`` (format in
  :func:`pack_batch`), so a burst pays the per-message ZeroMQ and event-loop
  costs once. Order is kept; nothing is dropped that ZeroMQ would have kept
  (the queue is a bounded extension of the socket's own: ``send`` waits for
  room and raises SendTimeout as before). Both ends accept batches; an empty
  first frame is therefore reserved and refused in application messages.
* **Reconnect**: DEALERs reconnect by themselves with ``RECONNECT_IVL`` growing
  to ``RECONNECT_IVL_MAX``; queued messages wait (bounded) meanwhile.
  ``MAXMSGSIZE`` makes libzmq drop a peer sending an oversize frame;
  ``LINGER 0`` makes close immediate; ``HANDSHAKE_IVL`` bounds a stalled
  CURVE handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, cast

import zmq
import zmq.asyncio

from securemesh.errors import PeerUnavailable, SendTimeout, TransportClosed, TransportError
from securemesh.transport._admission import AcceptGuard
from securemesh.transport._base import (
    CURVE_KEY_SIZE,
    Connection,
    CurveKeyPair,
    KeyAuthenticator,
    Listener,
    RejectHook,
    Transport,
    TransportOptions,
    TransportStats,
    check_outgoing,
    deny_all_keys,
    listener_rcvhwm,
    validate_outgoing,
)
from securemesh.transport._fair import FULL_TURN, FairBacklog
from securemesh.transport._memguard import MemoryGuard

__all__ = ["ZAP_DOMAIN", "ZmqTransport"]

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MAX_VERDICTS = 100_000
ZAP_DOMAIN = b"securemesh"
_ZAP_VERSION = b"1.0"


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def _configure_common(sock: zmq.asyncio.Socket, options: TransportOptions) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, options.sndhwm)
    sock.setsockopt(zmq.RCVHWM, options.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_frame_size)
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(options.handshake_timeout * 1000))


def _tcp_port(endpoint: str) -> int | None:
    """The port of a ``tcp://host:port`` endpoint (None for other transports)."""
    if not endpoint.startswith("tcp://"):
        return None
    try:
        return int(endpoint.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _call_hook(hook: RejectHook | None, key: bytes, exc: BaseException) -> None:
    """Run the rejection hook; its failure must never kill the ZAP handler."""
    if hook is None:
        return
    try:
        hook(key, exc)
    except Exception:
        log.exception("on_reject hook failed")


def _rearm(sock: zmq.asyncio.Socket) -> None:
    """After using the synchronous shadow socket, let pending futures re-check.

    The ZeroMQ FD is edge-triggered: a send or receive on the shadow may consume
    the edge a pending ``zmq.asyncio`` future waits for. Reading ``EVENTS``
    through the asyncio socket makes pyzmq schedule those futures again.
    """
    if not sock.closed:
        sock.get(zmq.EVENTS)


#: Frames of at least this many bytes are sent and received without a copy
#: (pyzmq's own default ``copy_threshold``: below it a copy is the cheaper way).
ZERO_COPY_MIN = zmq.COPY_THRESHOLD
_FIRST_RAW = 2  # an envelope's parts: header, body, raw frames..., auth
# Plain ints: pyzmq's flag enums make every ``flags | SNDMORE`` an enum call.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)
# The backend's send, under pyzmq's Python ``Socket.send`` (which only adds the
# DRAFT ``routing_id``/``group`` options we never use, at ~0.3 us per part).
_csend = zmq.backend.Socket.send


class _Rearmer:
    """One deferred :func:`_rearm` per event-loop pass, however many socket calls ran.

    Reading ``EVENTS`` costs as much as a small send; a burst of sends (or of
    receives) on the shadow socket needs it only once, before pending futures
    would next be woken, i.e. on the loop's next pass. Futures registered
    after a shadow call check ``EVENTS`` themselves when they are created.
    """

    __slots__ = ("_pending", "_sock")

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self._sock = sock
        self._pending = False

    def __call__(self) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._pending = False
        _rearm(self._sock)


def _send_parts(shadow: zmq.Socket[bytes], parts: Sequence[bytes]) -> None:
    """``send_multipart(parts, NOBLOCK)`` without pyzmq's per-frame flag arithmetic.

    Atomic like ``send_multipart``: the high-water mark is checked at the first
    part only, so either ``Again`` is raised before anything is queued or every
    part is queued. Every part is copied: the path of small messages (the
    bus's usual traffic); a message with a part of ``ZERO_COPY_MIN`` bytes or
    more goes through :func:`_send_shared` (:func:`_send_message` picks).
    """
    last = len(parts) - 1
    for i in range(last):
        _csend(shadow, parts[i], _MORE_NOBLOCK)
    _csend(shadow, parts[last], _NOBLOCK)


def _send_shared(shadow: zmq.Socket[bytes], parts: Sequence[bytes]) -> None:
    """:func:`_send_parts`, but a part of ``ZERO_COPY_MIN`` bytes or more is handed to
    libzmq without copying (pyzmq ``copy=False``: libzmq keeps a reference to the
    buffer until its I/O thread is done with it; every such buffer is immutable --
    ``bytes`` or a read-only view --, so nothing can change it meanwhile); smaller
    ones are copied, which is cheaper for them."""
    last = len(parts)
    for i, part in enumerate(parts, 1):
        flags = _NOBLOCK if i == last else _MORE_NOBLOCK
        if len(part) < ZERO_COPY_MIN:
            _csend(shadow, part, flags)
        else:
            _csend(shadow, part, flags, False)


def _send_message(shadow: zmq.Socket[bytes], parts: Sequence[bytes]) -> None:
    """One message: :func:`_send_parts` if all of it is smaller than ``ZERO_COPY_MIN``
    (no part can be large then: one C-level sum, the small messages' only extra cost),
    else :func:`_send_shared`."""
    if sum(map(len, parts)) < ZERO_COPY_MIN:
        _send_parts(shadow, parts)
    else:
        _send_shared(shadow, parts)


def _outgoing(frames: Sequence[bytes], options: TransportOptions) -> list[bytes]:
    """:func:`check_outgoing` with a fast path for the usual few small ``bytes`` frames.

    A read-only flat byte view of ``ZERO_COPY_MIN`` bytes or more (a raw
    frame being forwarded, as :func:`securemesh.wire.decode` made it) is kept
    as it is, so that it reaches libzmq without a copy (:func:`_send_parts`);
    any other non-``bytes`` frame is copied to ``bytes``, as before.
    """
    if type(frames) is list and 0 < len(frames) <= options.max_frames and frames[0]:
        limit = options.max_frame_size
        for f in frames:
            if type(f) is not bytes or len(f) > limit:
                break
        else:
            return frames
    if isinstance(frames, list | tuple) and any(type(f) is memoryview for f in frames):
        return validate_outgoing(
            [f if type(f) is bytes or _shareable(f) else bytes(f) for f in frames], options
        )
    return check_outgoing(frames, options)


def _shareable(frame: object) -> bool:
    """A large, read-only, flat byte view: sent as it is (its ``len`` is its size)."""
    return (
        type(frame) is memoryview
        and frame.readonly
        and frame.format == "B"
        and frame.ndim == 1
        and frame.c_contiguous
        and frame.nbytes >= ZERO_COPY_MIN
    )


# ------------------------------------------------------------------ batches
#
#   batch   = u8(1) || u16(count) || message * count          (2 <= count <= 1024)
#   message = u8(n) || u32(len(frame_1)) .. u32(len(frame_n)) || frame_1 .. frame_n
#
# sent as the ZeroMQ message [b"", batch] (big-endian; 1 <= n <= max_frames; no
# trailing bytes). An empty first frame never starts an application message.

_BATCH_VERSION = 1
_BATCH_MESSAGES = 64  # flush at this many queued messages (also the queue's bound)
_BATCH_BYTES = 256 * 1024  # a batch's payload stays below this
_BATCH_ITEM = 16 * 1024  # messages larger than this leave on their own
_BATCH_LIMIT = 1024  # the most messages a receiver accepts in one batch
_BATCH_HEAD = struct.Struct(">BH")
_MESSAGE_HEADS = [struct.Struct(f">B{n}I") for n in range(256)]


def pack_batch(messages: Sequence[Sequence[bytes]]) -> bytes:
    """Join 2..1024 messages (each 1..255 frames) into one batch payload."""
    if not 2 <= len(messages) <= _BATCH_LIMIT:
        raise TransportError("a batch holds 2 to 1024 messages")
    parts = [_BATCH_HEAD.pack(_BATCH_VERSION, len(messages))]
    append, extend = parts.append, parts.extend
    for frames in messages:
        n = len(frames)
        if not 1 <= n <= 255 or not frames[0]:
            raise TransportError("a batched message has 1 to 255 frames, the first non-empty")
        append(_MESSAGE_HEADS[n].pack(n, *map(len, frames)))
        extend(frames)
    return b"".join(parts)


def unpack_batch(payload: bytes, max_frames: int) -> list[list[bytes]] | None:
    """The messages of a batch payload, or None if it is malformed in any way."""
    try:
        return _split_batch(payload, max_frames)
    except (ValueError, IndexError, struct.error):
        return None


def _split_batch(payload: bytes, max_frames: int) -> list[list[bytes]]:
    size = len(payload)
    version, count = _BATCH_HEAD.unpack_from(payload)
    if version != _BATCH_VERSION or not 2 <= count <= _BATCH_LIMIT:
        raise ValueError("bad batch head")
    off = _BATCH_HEAD.size
    out: list[list[bytes]] = []
    heads = _MESSAGE_HEADS
    for _ in range(count):
        n = payload[off]
        if not 1 <= n <= max_frames:
            raise ValueError("bad frame count")
        head = heads[n]
        lengths = head.unpack_from(payload, off)
        off += head.size
        frames = []
        for i in range(1, n + 1):
            end = off + lengths[i]
            if end > size:
                raise ValueError("frame past the end")
            frames.append(payload[off:end])
            off = end
        if not frames[0]:
            raise ValueError("empty first frame")
        out.append(frames)
    if off != size:
        raise ValueError("trailing bytes")
    return out


def _packable(frames: Sequence[bytes]) -> int:
    """The payload size of ``frames`` in a batch, or -1 if it leaves on its own."""
    size = 1 + 4 * len(frames)
    for f in frames:
        size += len(f)
    return size if size <= _BATCH_ITEM else -1


def _unbatch(frames: list[bytes], max_frames: int) -> list[list[bytes]] | None:
    """The messages of a received ``[b"", batch]``, or None if malformed."""
    if len(frames) != 2:  # [b"", payload]
        return None
    return unpack_batch(frames[1], max_frames)


def _read_parts(
    recv: Callable[..., zmq.Frame],
    parts: list[zmq.Frame],
    more: bool,
    cap: int,
    limit: int,
) -> list[bytes] | None:
    """Read the rest of a multipart message; its frames as bytes, or None if too big.

    A multipart message arrives whole, so these receives never block. Parts
    stay libzmq's own buffers (``copy=False``) until the whole message is
    known to be within ``limit`` bytes; nothing of a larger one is copied, and
    its parts are released as soon as it is over. At most ``cap`` parts are
    kept (more means malformed: the caller drops it by count).
    """
    size = sum(map(len, parts))
    keep = size <= limit
    while more:
        part = recv(_NOBLOCK, copy=False)
        more = part.more
        if keep:
            size += len(part)
            if size > limit:
                keep = False
                parts.clear()  # released now, never copied
            elif len(parts) < cap:
                parts.append(part)
    if not keep:
        return None
    if size < ZERO_COPY_MIN:  # no part is large: all copied (the usual small message)
        return [p.bytes for p in parts]
    # header and body (parts 0 and 1; a batch's payload is part 1) always as bytes;
    # a large raw frame stays libzmq's buffer, shared, not copied (read-only once
    # securemesh.wire.decode has it, which every receiver runs first)
    return [
        p.bytes if i < _FIRST_RAW or len(p) < ZERO_COPY_MIN else cast("bytes", p.buffer)
        for i, p in enumerate(parts)
    ]


async def _wait_and_take(
    sock: zmq.asyncio.Socket,
    take: Callable[[], tuple[bytes, list[bytes]] | None],
    timeout: float | None,
) -> tuple[bytes, list[bytes]]:
    """Wait for a message by *polling*, then take it synchronously.

    A pending ``recv`` future that is cancelled (timeout, task cancellation)
    can lose the message it was completing at that instant; a poll future
    consumes nothing, so cancelling it is always harmless.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        got = take()
        if got is not None:
            return got
        if deadline is None:
            await sock.poll(timeout=None, flags=zmq.POLLIN)  # type: ignore[call-arg]
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        ms = max(1, math.ceil(remaining * 1000))
        await sock.poll(timeout=ms, flags=zmq.POLLIN)  # type: ignore[call-arg]


class _ZapHandler:
    """A ZAP server (RFC 27) on one context, backed by the transport's authenticator."""

    def __init__(self, transport: ZmqTransport) -> None:
        self._transport = transport
        self._sock = transport.new_socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._task = asyncio.get_running_loop().create_task(self._serve())
        self.stats = TransportStats()

    async def _serve(self) -> None:
        while True:
            try:
                request = await self._sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            reply = self._handle(request)
            if reply is not None:
                with contextlib.suppress(zmq.ZMQError):
                    await self._sock.send_multipart(reply)

    def _handle(self, request: list[bytes]) -> list[bytes] | None:
        # [routing id, b"", version, request id, domain, address, identity,
        #  mechanism, credentials...]
        if len(request) < 8 or request[1] != b"":
            return None
        envelope, body = request[:2], request[2:]
        version, request_id, domain, address, _ident, mechanism = body[:6]
        credentials = body[6:]

        def answer(code: bytes, text: bytes, user_id: bytes = b"") -> list[bytes]:
            return [*envelope, _ZAP_VERSION, request_id, code, text, user_id, b""]

        if version != _ZAP_VERSION:
            return answer(b"400", b"unsupported ZAP version")
        if domain != ZAP_DOMAIN or mechanism != b"CURVE" or len(credentials) != 1:
            return answer(b"400", b"CURVE in the securemesh domain only")
        key = credentials[0]
        self._transport._handshake_seen(address)
        if len(key) != CURVE_KEY_SIZE:
            return answer(b"400", b"bad key")
        if not self._transport._admit(key, count=True):
            return answer(b"400", b"not admitted")
        return answer(b"200", b"OK", key.hex().encode("ascii"))

    def close(self) -> None:
        self._task.cancel()
        self._sock.close(linger=0)


#: Backlog turns after a socket read found nothing, before the socket is read again:
#: a message arriving meanwhile waits behind at most this many held ones.
_EMPTY_SOCKET_PAUSE = 16
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class _Receiver:
    """``recv`` shared by the listener and the connection: the fast path takes an
    already-queued message without another coroutine, the slow path waits."""

    _CLOSED_TEXT: ClassVar[str]
    _closed: bool
    _sock: zmq.asyncio.Socket
    _transport: ZmqTransport
    _backlog: FairBacklog
    _credit: int  # backlog turns left before the socket's next turn
    _shadow: zmq.Socket[bytes]
    _rearm: _Rearmer
    stats: TransportStats

    def _take(self, peer: bytes, frames: list[bytes]) -> tuple[bytes, list[bytes]] | None:
        """Count and return a message from an admitted ``peer``, None if malformed.

        A batch's first message is returned and the rest wait in the backlog
        (per peer, served round-robin: :mod:`securemesh.transport._fair`); a
        peer that still has messages there gets its oldest one, in order.
        """
        max_frames = self._transport.options.max_frames
        if not frames or len(frames) > max_frames:
            self.stats.dropped_malformed += 1
            return None
        if frames[0]:
            self.stats.received += 1
            if self._backlog.has(peer):  # behind what it already has here, in order
                return self._behind(peer, [frames], sum(map(len, frames)))
            return peer, frames
        batch = _unbatch(frames, max_frames)
        if batch is None:
            self.stats.dropped_malformed += 1
            return None
        self.stats.received += len(batch)
        return self._behind(peer, batch, len(frames[1]))

    def _behind(
        self, peer: bytes, messages: list[list[bytes]], size: int
    ) -> tuple[bytes, list[bytes]] | None:
        """Queue ``messages`` behind what ``peer`` holds here; return its oldest.

        Beyond its share (:meth:`FairBacklog.room`) they are dropped whole.
        """
        backlog = self._backlog
        if not backlog.room(peer, len(messages), size):
            self.stats.dropped_overflow += len(messages)
            return None
        backlog.put(peer, messages, size)
        return peer, cast("list[bytes]", backlog.pop_peer(peer))

    def _read(self) -> tuple[bytes, list[bytes]] | None:
        raise NotImplementedError

    def _try_recv(self) -> tuple[bytes, list[bytes]] | None:
        """Fast path: take an already-queued message without creating futures.

        While batches are held, the socket gets a turn once the backlog has used
        its credit: one backlog message after a socket read that found one,
        ``_EMPTY_SOCKET_PAUSE`` after one that found nothing, ``FULL_TURN``
        while the backlog is full (bounded memory; see :mod:`._fair`). So a
        message waiting in the socket is served after at most
        ``_EMPTY_SOCKET_PAUSE`` held ones (``FULL_TURN`` under a flood), and
        the socket's turn costs one ``EVENTS`` read when it is empty (a failed
        non-blocking read costs three times as much: pyzmq raises).
        """
        backlog = self._backlog
        if not backlog.count:
            return self._read()
        credit = self._credit - 1
        if credit > 0:
            self._credit = credit
            return backlog.pop()
        if cast("int", self._shadow.get(_EVENTS)) & _POLLIN:
            got = self._read()
            if got is not None:
                self._credit = FULL_TURN if backlog.full() else 2
                return got
        else:
            self._rearm()  # the EVENTS read may have taken a pending future's edge
        self._credit = FULL_TURN if backlog.full() else _EMPTY_SOCKET_PAUSE
        return backlog.pop()

    def recv_nowait(self) -> tuple[bytes, list[bytes]] | None:
        if self._closed:
            raise TransportClosed(self._CLOSED_TEXT)
        try:
            return self._try_recv()
        except zmq.ZMQError:
            if self._closed:
                raise TransportClosed(self._CLOSED_TEXT) from None
            raise TransportError("receive failed") from None

    def recv_run_nowait(self) -> tuple[bytes, list[list[bytes]]] | None:
        """A held peer's run of messages up to the socket's next turn, else as recv_nowait.

        The backlog's credit is spent per message, as message-by-message
        :meth:`recv_nowait` spends it, so the socket's turns come exactly as
        often (fairness unchanged); only the Python calls per message go.
        """
        if self._closed:
            raise TransportClosed(self._CLOSED_TEXT)
        backlog = self._backlog
        if backlog.count:
            credit = self._credit - 1
            if credit > 0:
                run = backlog.pop_run(credit)
                assert run is not None
                self._credit = credit + 1 - len(run[1])
                return run
        got = self.recv_nowait()  # the socket's turn (or other peers held): one message
        return None if got is None else (got[0], [got[1]])

    async def recv(self, *, timeout: float | None = None) -> tuple[bytes, list[bytes]]:
        if not self._closed:
            try:
                got = self._try_recv()
            except zmq.ZMQError:
                got = None  # the slow path below reports it
            if got is not None:
                return got
        try:
            if self._closed:
                raise zmq.ZMQError(zmq.ENOTSOCK)
            return await _wait_and_take(self._sock, self._try_recv, timeout)
        except (asyncio.CancelledError, zmq.ZMQError):
            if self._closed:
                raise TransportClosed(self._CLOSED_TEXT) from None
            raise


class ZmqListener(_Receiver, Listener):
    """A CURVE-server ROUTER socket."""

    _CLOSED_TEXT = "listener closed"

    def __init__(self, transport: ZmqTransport, address: str) -> None:
        self._transport = transport
        self._local_key = transport.keypair.public
        opts = transport.options
        sock = transport.new_socket(zmq.ROUTER)
        try:
            _configure_common(sock, opts)
            sock.setsockopt(zmq.RCVHWM, listener_rcvhwm(opts))  # bytes per connection
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.curve_server = True
            sock.curve_secretkey = transport.keypair.secret
            sock.curve_publickey = transport.keypair.public
            sock.zap_domain = ZAP_DOMAIN
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot listen on {address}: {exc}") from exc
        self._sock = sock
        self._shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)  # sync fast path
        self._rearm = _Rearmer(sock)
        self._address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats = TransportStats()
        self.guard = AcceptGuard(sock, opts, register=transport._sockets.append, stats=self.stats)
        # whole messages libzmq holds unfinished: see _memguard (issue 9 #4)
        self.memory_guard: MemoryGuard | None = None
        port = _tcp_port(self._address)
        if opts.memory_budget and port is not None:
            self.memory_guard = MemoryGuard(
                port,
                opts,
                stats=self.stats,
                process_commands=lambda: _rearm(sock),
                on_trip=transport._memory_tripped,
            )
        self._routes: dict[bytes, bytes] = {}  # curve key -> routing id
        # key -> authenticator verdict since the last reauthenticate(): every
        # peer is re-checked once per generation, on its next message.
        self._verdicts: dict[bytes, bool] = {}
        self._user_ids: dict[str, bytes] = {}
        # the rest of batches received, per peer (bounded: see _fair)
        self._backlog = FairBacklog(opts.max_frame_size)
        self._credit = 0
        self._closed = False

    def peers(self) -> frozenset[bytes]:
        return frozenset(self._routes)

    def _verdict(self, key: bytes) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()  # bounded memory; peers are simply re-checked
            verdict = self._verdicts[key] = self._transport._admit(key, count=True)
        return verdict

    def reauthenticate(self) -> list[bytes]:
        self._verdicts.clear()
        cut = [key for key in self._routes if not self._verdict(key)]
        for key in cut:
            del self._routes[key]
        # batched messages of a peer cut off now: dropped too
        self.stats.dropped_unauthenticated += self._backlog.drop(cut)
        return cut

    def _peer_of(self, frame: zmq.Frame) -> bytes | None:
        user = frame.get("User-Id")
        if not isinstance(user, str):
            return None
        key = self._user_ids.get(user)
        if key is None:
            try:
                key = bytes.fromhex(user)
            except (TypeError, ValueError):
                return None
            if len(key) != CURVE_KEY_SIZE:
                return None
            if len(self._user_ids) < 65536:
                self._user_ids[user] = key
        return key

    def _accept(self, routing: zmq.Frame, frames: list[bytes]) -> tuple[bytes, list[bytes]] | None:
        # The sender is the key that authenticated the connection this message
        # came on (its ZAP User-Id, read from this very message), never a cache.
        peer = self._peer_of(routing)
        if peer is None or not self._verdict(peer):
            self.stats.dropped_unauthenticated += 1
            return None
        got = self._take(peer, frames)
        if got is not None:
            self._routes[peer] = routing.bytes
        return got

    def _read(self) -> tuple[bytes, list[bytes]] | None:
        """Take the next message from the socket (see :func:`_read_parts`).

        Receives part by part (``copy=False`` and ``Frame.more``), cheaper than
        ``recv_multipart``; the routing frame stays a ``Frame`` for its
        ``User-Id``.
        """
        recv = self._shadow.recv
        opts = self._transport.options
        cap, limit = opts.max_frames + 1, opts.max_message_size
        try:
            while True:
                try:
                    routing = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    return None
                frames = _read_parts(recv, [], routing.more, cap, limit)
                if frames is None:
                    self.stats.dropped_oversize += 1
                    continue
                got = self._accept(routing, frames)
                if got is not None:
                    return got
        finally:
            self._rearm()

    async def send(
        self, peer: bytes, frames: Sequence[bytes], *, timeout: float | None = None
    ) -> None:
        if self._closed:
            raise TransportClosed("listener closed")
        opts = self._transport.options
        out = _outgoing(frames, opts)
        routing_id = self._routes.get(peer)
        if routing_id is None:
            raise PeerUnavailable("no connection to that peer")
        # Never waits (issue 9 #3): the peer's own ZeroMQ pipe (SNDHWM messages)
        # is its bounded outbound queue; when it is full the message is dropped
        # here, so a peer that does not read cannot hold up anyone else.
        try:
            try:
                _csend(self._shadow, routing_id, _MORE_NOBLOCK)  # ROUTER_MANDATORY: here
                _send_message(self._shadow, out)
            finally:
                self._rearm()
        except zmq.Again:
            self.stats.send_timeouts += 1
            raise SendTimeout("the peer's queue is full: message dropped") from None
        except zmq.ZMQError as exc:
            if self._closed or exc.errno == zmq.ENOTSOCK:
                raise TransportClosed("listener closed") from None
            if exc.errno == zmq.EHOSTUNREACH:
                if self._routes.get(peer) == routing_id:
                    del self._routes[peer]
                raise PeerUnavailable("peer disconnected") from None
            raise TransportError(f"send failed: {exc}") from exc
        self.stats.sent += 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._routes.clear()
        self._backlog.clear()
        self.guard.close()
        if self.memory_guard is not None:
            self.memory_guard.close()
        self._sock.close(linger=0)


class ZmqConnection(_Receiver, Connection):
    """A CURVE-client DEALER socket connected to one listener."""

    _CLOSED_TEXT = "connection closed"

    def __init__(self, transport: ZmqTransport, address: str, server_key: bytes) -> None:
        if len(server_key) != CURVE_KEY_SIZE:
            raise TransportError("server key must be a 32-byte CURVE public key")
        self._transport = transport
        self._local_key = transport.keypair.public
        opts = transport.options
        sock = transport.new_socket(zmq.DEALER)
        try:
            _configure_common(sock, opts)
            sock.setsockopt(zmq.RECONNECT_IVL, int(opts.reconnect_ivl * 1000))
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(opts.reconnect_ivl_max * 1000))
            sock.curve_serverkey = server_key
            sock.curve_publickey = transport.keypair.public
            sock.curve_secretkey = transport.keypair.secret
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc}") from exc
        self._sock = sock
        self._shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)  # sync fast path
        self._rearm = _Rearmer(sock)
        self._address = address
        self._server_key = bytes(server_key)
        self._closed = False
        self.stats = TransportStats()
        # The send queue (see "Batches" in the module docstring).
        self._outq: deque[list[bytes]] = deque()
        self._kick: asyncio.Handle | None = None  # a flush on the loop's next pass
        self._blocked: asyncio.Task[None] | None = None  # waits for POLLOUT, then flushes
        self._room = asyncio.Event()  # set while the queue has room
        self._room.set()
        self._batch_bytes = min(_BATCH_BYTES, transport.options.max_frame_size)
        self._backlog = FairBacklog(opts.max_frame_size)
        self._credit = 0

    async def send(
        self, peer: bytes, frames: Sequence[bytes], *, timeout: float | None = None
    ) -> None:
        if self._closed:
            raise TransportClosed("connection closed")
        if peer != self._server_key:
            raise PeerUnavailable("a connection only reaches its server")
        out = _outgoing(frames, self._transport.options)
        queue = self._outq
        if len(queue) >= _BATCH_MESSAGES:
            await self._wait_room(timeout)
        queue.append(out)
        if len(queue) >= _BATCH_MESSAGES:
            if self._blocked is not None:
                self._room.clear()  # full while ZeroMQ's queue is: senders wait
            elif self._flush():
                self._wait_writable()
        elif self._kick is None and self._blocked is None:
            self._kick = asyncio.get_running_loop().call_soon(self._flush_soon)

    async def _wait_room(self, timeout: float | None) -> None:
        """Wait until the queue has room again (ZeroMQ's queue was full)."""
        loop = asyncio.get_running_loop()
        opts = self._transport.options
        deadline = loop.time() + (opts.send_timeout if timeout is None else timeout)
        while len(self._outq) >= _BATCH_MESSAGES:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError:
                self.stats.send_timeouts += 1
                raise SendTimeout("server queue stayed full for the whole send timeout") from None
            if self._closed:
                raise TransportClosed("connection closed")

    def _flush_soon(self) -> None:
        self._kick = None
        if self._blocked is None and self._flush():
            self._wait_writable()

    def _wait_writable(self) -> None:
        self._blocked = asyncio.get_running_loop().create_task(self._writable())

    async def _writable(self) -> None:
        try:
            while not self._closed:
                await self._sock.poll(timeout=None, flags=zmq.POLLOUT)  # type: ignore[call-arg]
                if not self._flush():
                    return
        except (asyncio.CancelledError, zmq.ZMQError):
            return  # closed
        finally:
            self._blocked = None

    def _flush(self) -> bool:
        """Hand the queue to ZeroMQ without blocking; True if ZeroMQ's queue filled up.

        Runs of small messages leave as one batch, a lone or large message as
        itself; order is kept. A message ZeroMQ refuses is put back in front.
        """
        queue, shadow = self._outq, self._shadow
        limit = self._batch_bytes
        batch: list[list[bytes]] = []
        try:
            while queue:
                first = queue.popleft()
                batch = [first]
                size = _packable(first)
                if size >= 0:
                    size += _BATCH_HEAD.size
                    while queue and len(batch) < _BATCH_MESSAGES:
                        item = _packable(queue[0])
                        if item < 0 or size + item > limit:
                            break
                        batch.append(queue.popleft())
                        size += item
                try:
                    if len(batch) > 1:
                        _send_parts(shadow, [b"", pack_batch(batch)])
                    elif size >= 0:  # small enough to batch: copied like a batch
                        _send_parts(shadow, first)
                    else:
                        _send_message(shadow, first)
                except zmq.Again:
                    queue.extendleft(reversed(batch))
                    if len(queue) >= _BATCH_MESSAGES:
                        self._room.clear()
                    return True
                self.stats.sent += len(batch)
        except zmq.ZMQError as exc:
            if not self._closed and exc.errno != zmq.ENOTSOCK:
                dropped = len(queue) + len(batch)
                log.warning("send failed, %d queued messages dropped: %s", dropped, exc)
            queue.clear()
        finally:
            self._rearm()
        self._room.set()
        return False

    def _read(self) -> tuple[bytes, list[bytes]] | None:
        """Take the next message from the socket (see :func:`_read_parts`)."""
        recv = self._shadow.recv
        opts = self._transport.options
        cap, limit = opts.max_frames + 1, opts.max_message_size
        try:
            while True:
                try:
                    part = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    return None
                frames = _read_parts(recv, [part], part.more, cap, limit)
                if frames is None:
                    self.stats.dropped_oversize += 1
                    continue
                got = self._take(self._server_key, frames)
                if got is not None:
                    return got
        finally:
            self._rearm()

    async def close(self) -> None:
        if self._closed:
            return
        if self._blocked is None:
            self._flush()  # best effort, as LINGER 0: into ZeroMQ's queue, not waited for
        self._closed = True
        for pending in (self._kick, self._blocked):
            if pending is not None:
                pending.cancel()
        self._outq.clear()
        self._backlog.clear()
        self._room.set()  # senders waiting for room see the connection closed
        self._sock.close(linger=0)


class ZmqTransport(Transport):
    """ZeroMQ (``zmq.asyncio``) transport with CurveZMQ and a callback ZAP handler.

    One transport owns one ZeroMQ context (and so the context's one ZAP
    endpoint); create it inside the running event loop that will use it.
    """

    def __init__(
        self,
        keypair: CurveKeyPair,
        *,
        authenticator: KeyAuthenticator = deny_all_keys,
        options: TransportOptions | None = None,
        on_reject: RejectHook | None = None,
    ) -> None:
        if not curve_available():
            raise TransportError("libzmq was built without CURVE: refusing to start")
        self.keypair = keypair
        self.authenticator = authenticator
        self.options = options if options is not None else TransportOptions()
        self.on_reject = on_reject
        #: called with the number of connections cut when a listener's memory guard
        #: trips (``TransportOptions.memory_budget``); its failure is logged, not raised
        self.on_memory_trip: Callable[[int], None] | None = None
        self.context = zmq.asyncio.Context()
        # Every socket we open, held strongly so that a transport dropped without
        # close() is still released cleanly: the garbage collector clears weak
        # references (pyzmq's own socket set) before finalizers run, so an
        # unclosed Context's __del__ would block forever in zmq_ctx_term on
        # sockets it no longer knows. The finalizer closes them first.
        self._sockets: list[zmq.asyncio.Socket] = []
        self._release = weakref.finalize(self, _release_context, self.context, self._sockets)
        self._zap: _ZapHandler | None = None
        self._endpoints: list[ZmqListener | ZmqConnection] = []
        self._rejected = 0
        self._closed = False

    def new_socket(self, kind: int) -> zmq.asyncio.Socket:
        """Open a socket on this transport's context (closed by :meth:`close`)."""
        sock = self.context.socket(kind)
        self._sockets.append(sock)
        return sock

    def _admit(self, key: bytes, *, count: bool) -> bool:
        try:
            self.authenticator(key)
        except Exception as exc:  # any failure of the callback is a refusal
            if count:
                self._rejected += 1
                for endpoint in self._endpoints:
                    if isinstance(endpoint, ZmqListener):
                        endpoint.stats.rejected_keys += 1
                # debug: a refused client retries every reconnect interval; the
                # bus counts, rate-limits and audits through on_reject instead.
                log.debug("curve key %s refused: %s", key.hex()[:16], type(exc).__name__)
                _call_hook(self.on_reject, key, exc)
            return False
        return True

    def _memory_tripped(self, cut: int) -> None:
        hook = self.on_memory_trip
        if hook is not None:
            hook(cut)

    def _handshake_seen(self, address: bytes) -> None:
        """ZAP saw a client at ``address``: its connection is past the handshake."""
        text = address.decode("ascii", "replace")
        for endpoint in self._endpoints:
            if isinstance(endpoint, ZmqListener):
                endpoint.guard.handshake_done(text)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("transport closed")

    async def listen(self, address: str) -> ZmqListener:
        self._check_open()
        if self._zap is None:
            try:
                self._zap = _ZapHandler(self)
            except zmq.ZMQError as exc:
                raise TransportError(f"cannot bind the ZAP handler: {exc}") from exc
        listener = ZmqListener(self, address)
        self._endpoints.append(listener)
        return listener

    async def connect(self, address: str, server_key: bytes) -> ZmqConnection:
        self._check_open()
        conn = ZmqConnection(self, address, bytes(server_key))
        self._endpoints.append(conn)
        return conn

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for endpoint in self._endpoints:
            await endpoint.close()
        self._endpoints.clear()
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        self._release()


def _release_context(context: zmq.asyncio.Context, sockets: list[zmq.asyncio.Socket]) -> None:
    """Close every socket (linger 0), then terminate the context; never blocks."""
    for sock in sockets:
        with contextlib.suppress(Exception):  # a loop already closed, a socket already gone
            if not sock.closed:
                sock.close(linger=0)
    sockets.clear()
    context.destroy(linger=0)
