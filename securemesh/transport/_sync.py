"""A blocking request over CurveZMQ, for code that runs without an event loop.

Theory of operation
-------------------
:class:`SyncRequester` is one CURVE-client DEALER (ZeroMQ RFC 26) connected
to one listener whose public key it pins, with the socket options the rest
of the transport uses (``LINGER 0``, ``MAXMSGSIZE``, ``HANDSHAKE_IVL``). Its
:meth:`~SyncRequester.request` sends one multipart message and waits, until a
deadline, for the first reply that the caller's ``accept`` takes. It is the
one ZeroMQ path of the enrollment client's first contact and of the audit
ingest client (issue #8 item 6: only :mod:`securemesh.transport` imports
pyzmq).

A socket monitor tells a ZAP refusal apart from silence: when the server
refuses our key (``EVENT_HANDSHAKE_FAILED_AUTH`` before any
``EVENT_HANDSHAKE_SUCCEEDED``; ZMTP 3 ``ERROR``), libzmq drops the queued
request and does not reconnect, so :meth:`~SyncRequester.request` returns
None at once and the caller decides whether to try again on a fresh
requester (the enrollment client does, with backoff: a daemon admits a new
token's key at its next refresh). The send itself waits at most until the
deadline (``SNDTIMEO``); a send that cannot be queued means the pipe is gone,
which after ``connect`` only a refusal does, so it is reported the same way.

Received messages are bounded like everywhere in the transport: each frame
by ``MAXMSGSIZE`` (libzmq disconnects a peer that sends a larger one), the
whole message by ``max_frames`` and ``max_message_size`` (larger ones are
dropped before ``accept`` sees them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from securemesh.errors import TransportError
from securemesh.transport._base import CURVE_KEY_SIZE, CurveKeyPair

__all__ = ["SyncRequester"]

R = TypeVar("R")

#: ``on_idle`` is called after each slice of this many seconds without a message.
IDLE_SLICE = 1.0


class SyncRequester:
    """One CURVE-client DEALER to ``endpoint`` (a blocking twin of a connection).

    Not thread-safe; :meth:`close` it (or use it as a context manager).
    """

    def __init__(
        self,
        endpoint: str,
        server_key: bytes,
        keypair: CurveKeyPair,
        *,
        max_frame_size: int,
        max_frames: int = 16,
        max_message_size: int | None = None,
        handshake_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(server_key) != CURVE_KEY_SIZE:
            raise TransportError("server key must be a 32-byte CURVE public key")
        if not zmq.has("curve"):
            raise TransportError("libzmq was built without CURVE: refusing to connect")
        self._clock = clock
        self._max_frames = max_frames
        self._max_message_size = (
            max_message_size if max_message_size is not None else max_frames * max_frame_size
        )
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self._sock = sock
        self._handshaken = False
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, max_frame_size)
            sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, int(handshake_timeout * 1000)))
            sock.curve_serverkey = bytes(server_key)
            sock.curve_publickey = keypair.public
            sock.curve_secretkey = keypair.secret
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
        self._endpoint = endpoint

    def __enter__(self) -> SyncRequester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        frames: Sequence[bytes | memoryview],
        *,
        deadline: float,
        accept: Callable[[list[bytes]], R | None],
        on_idle: Callable[[], None] | None = None,
    ) -> R | None:
        """Send ``frames``; return the first reply ``accept`` takes (not None).

        ``deadline`` is on the requester's ``clock``. Returns None if the
        server refused our key in the handshake; raises
        :class:`~securemesh.errors.TransportError` when the deadline passes.
        Replies ``accept`` returns None for, and oversize ones, are skipped.
        """
        sock = self._sock
        remaining_ms = max(1, int((deadline - self._clock()) * 1000))
        try:
            sock.setsockopt(zmq.SNDTIMEO, remaining_ms)
            sock.send_multipart(list(frames), copy=True)
        except zmq.Again:
            return None  # connect() made the pipe: only a refusal removes it
        except zmq.ZMQError as exc:
            raise TransportError(f"send to {self._endpoint} failed: {exc}") from exc
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TransportError(f"no reply from {self._endpoint} in time")
            ready = dict(poller.poll(max(1, int(min(remaining, IDLE_SLICE) * 1000))))
            if not ready:
                if on_idle is not None:
                    on_idle()
                continue
            if sock in ready:
                reply = self._receive()
                if reply is not None:
                    taken = accept(reply)
                    if taken is not None:
                        return taken
            if self._monitor in ready:
                event = recv_monitor_message(self._monitor)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._handshaken = True
                elif not self._handshaken:  # HANDSHAKE_FAILED_AUTH before any success
                    return None

    def _receive(self) -> list[bytes] | None:
        """The next message, or None if it is over ``max_frames``/``max_message_size``."""
        parts = self._sock.recv_multipart(copy=False)
        if len(parts) > self._max_frames or sum(map(len, parts)) > self._max_message_size:
            return None
        return [p.bytes for p in parts]

    def close(self) -> None:
        """Close the socket and its monitor (linger 0) and the context; idempotent."""
        if self._ctx.closed:
            return
        sock = self._sock
        try:
            if not sock.closed:
                sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        sock.close(linger=0)
        self._ctx.term()
