"""A standalone ZeroMQ ingestion endpoint for the audit service, and its edge client.

**Not the production path**: node daemons ship their outboxes over the mesh
bus (``audit.append``, :mod:`securemesh.node._audit_bus`), where only enrolled
nodes connect and each event's origin is checked against the sender. This
endpoint serves the same :class:`~securemesh.audit.service.AuditService` to
clients outside a mesh (bulk import, benchmarks, its own fault test); it only
moves frames, all decisions are in the service.

Wire protocol (one request, one reply, CurveZMQ-encrypted, RFC 26/CurveZMQ):

* request: ``[b"SMAI/1", entry_1, …, entry_n]`` with 1 ≤ n ≤ 256, each entry
  a signed event (:meth:`SignedEvent.to_bytes`) of at most
  :data:`~securemesh.audit.events.MAX_SIGNED_EVENT_SIZE` bytes;
* reply: ``[b"SMAI/1", acks]`` where ``acks`` is compact JSON
  ``[["<event id>", <leaf index, -1 or -2>], …]`` (at most :data:`MAX_REPLY_SIZE`
  bytes), or ``[b"SMAI/1", b"error"]`` for a malformed request.

Both ends go through the transport seam (issue #8 item 6, one ZeroMQ code
path): the server is a :class:`~securemesh.transport.ZmqTransport` listener
(ROUTER, CURVE server, its own ZAP handler), the client a
:class:`~securemesh.transport.SyncRequester` (a blocking CURVE-client DEALER).
Limits are enforced before any work: ``MAXMSGSIZE`` (libzmq disconnects a
peer that sends a frame larger than one signed event), then the transport's
whole-message bounds (at most 257 frames and 257 signed events' bytes;
larger messages are dropped uncopied and counted in :attr:`IngestServer.stats`,
no reply); the client bounds and strictly validates the reply.

The server's CURVE key authenticates the cloud to the edge, and the server
admits only the client CURVE keys it was given (``client_keys``;
``--client-keys-file``, Z85 public keys one a line): the transport's ZAP
handler refuses every other key during the CURVE handshake (default deny:
there is no "any CURVE key" mode), so a stranger cannot even make the server
buffer frames. Event authenticity still comes from the origin signatures,
checked by the service.

The client follows the "lazy pirate" pattern: on a reply timeout the
socket is discarded and a new one connects, so a killed and restarted service
is picked up transparently; the outbox resends what was not acknowledged.

Run the service as a process::

    python -m securemesh.audit.ingest --db URL --log-key-file PATH \\
        --curve-secret-file PATH --client-keys-file PATH \\
        --bind tcp://127.0.0.1:0 --ready-file PATH

``--ready-file`` receives the bound endpoint once the socket listens. Events
dated more than ``--max-clock-skew`` seconds (120) ahead of the server's clock
are refused (:mod:`securemesh.audit.admission`; without node certificates the
kind and subject rules of the bus do not apply here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from securemesh.audit.admission import EventPolicy
from securemesh.audit.events import MAX_SIGNED_EVENT_SIZE
from securemesh.audit.outbox import DEFERRED, Ack, Outbox, ShipResult, ship_once
from securemesh.audit.service import MAX_FRAMES, AuditService
from securemesh.crypto.z85 import z85_decode, z85_encode
from securemesh.errors import (
    ConfigError,
    DecodeError,
    LocalError,
    PeerUnavailable,
    RemoteError,
    SendTimeout,
    SizeLimitExceeded,
    TransportError,
)
from securemesh.transport import AllowKeys, CurveKeyPair, TransportOptions, TransportStats

if TYPE_CHECKING:
    from securemesh.transport import Listener, SyncRequester, ZmqTransport

__all__ = [
    "MAGIC",
    "read_client_keys",
    "MAX_REPLY_SIZE",
    "IngestClient",
    "IngestServer",
    "load_or_create_curve_key",
    "main",
    "ship_until_empty",
]

MAGIC: Final = b"SMAI/1"
MAX_REPLY_SIZE: Final = 64 * 1024
_MAX_FRAME: Final = MAX_SIGNED_EVENT_SIZE
_EVENT_ID_LEN: Final = 32

_log = logging.getLogger(__name__)


def load_or_create_curve_key(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 CURVE keys; the secret is created 0600 if missing.

    The public key is also written to ``PATH.pub`` for edges to pin.
    """
    p = Path(path)
    if p.exists():
        secret = p.read_bytes().strip()
        public = _z85_pair(secret, what=str(p))[0]
    else:
        pair = CurveKeyPair.generate()
        public = z85_encode(pair.public).encode("ascii")
        secret = z85_encode(pair.secret).encode("ascii")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
    Path(str(p) + ".pub").write_bytes(public + b"\n")
    return public, secret


def _z85_key(text: bytes, *, what: str) -> bytes:
    """A raw 32-byte CURVE key from its 40-character Z85 text, or ConfigError."""
    try:
        raw = z85_decode(text.decode("ascii")) if len(text) == 40 else b""
    except (UnicodeDecodeError, DecodeError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{what}: not a Z85 CURVE key")
    return raw


def _z85_pair(secret: bytes, *, what: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` as Z85 from a Z85 secret key."""
    pair = CurveKeyPair.from_secret(_z85_key(secret, what=what))
    return z85_encode(pair.public).encode("ascii"), secret


def read_client_keys(path: str | Path) -> frozenset[bytes]:
    """Z85 CURVE public keys, one a line; anything after the key and a space is a note.

    (No ``#`` comments: ``#`` is a Z85 digit.) Blank lines are skipped.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the client keys {p}: {exc}") from exc
    keys = set()
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        key = words[0].encode("ascii")
        _z85_key(key, what=f"{p}: {key[:48]!r}")
        keys.add(key)
    if not keys:
        raise ConfigError(f"{p} names no client key: the endpoint would admit nobody")
    return frozenset(keys)


def _encode_acks(acks: Sequence[Ack]) -> bytes:
    return json.dumps([[e, i] for e, i in acks], separators=(",", ":")).encode()


def _decode_acks(data: bytes) -> list[Ack]:
    if len(data) > MAX_REPLY_SIZE:
        raise SizeLimitExceeded("acknowledgement is too large")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise DecodeError("acknowledgement is not JSON") from exc
    if not isinstance(doc, list) or len(doc) > MAX_FRAMES:
        raise DecodeError("acknowledgement is not a list of at most 256 pairs")
    out: list[Ack] = []
    for item in doc:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or len(item[0]) != _EVENT_ID_LEN
            or type(item[1]) is not int
            or item[1] < DEFERRED
        ):
            raise DecodeError("malformed acknowledgement pair")
        out.append((item[0], item[1]))
    return out


#: The transport limits of both ends: a request is the magic and up to 256 events.
_OPTIONS: Final = TransportOptions(
    max_frame_size=_MAX_FRAME,
    max_frames=MAX_FRAMES + 1,
    max_message_size=(MAX_FRAMES + 1) * _MAX_FRAME,
    max_queued_bytes=4 * (MAX_FRAMES + 1) * _MAX_FRAME,
    send_timeout=0.0,
)


class IngestServer:
    """A transport listener in front of an :class:`AuditService` (one request at a time).

    Runs its own event loop, driven by :meth:`serve_one` / :meth:`serve_forever`
    from one thread at a time; :meth:`stop` may be called from any thread.
    """

    def __init__(
        self,
        service: AuditService,
        *,
        bind: str,
        curve_secret: bytes,
        client_keys: Iterable[bytes],
    ) -> None:
        allowed = frozenset(bytes(k) for k in client_keys)
        if not allowed or any(len(k) != 40 for k in allowed):
            raise ConfigError("client_keys: one or more Z85 CURVE public keys (40 bytes)")
        raw_keys = [_z85_key(k, what="client_keys") for k in allowed]
        pair = CurveKeyPair.from_secret(_z85_key(bytes(curve_secret), what="curve_secret"))
        self._service = service
        self._loop = asyncio.new_event_loop()
        try:
            self._transport, self._listener = self._loop.run_until_complete(
                self._open(pair, raw_keys, bind)
            )
        except BaseException:
            self._loop.close()
            raise
        self.endpoint: str = self._listener.address
        self._stop = threading.Event()

    @staticmethod
    async def _open(
        pair: CurveKeyPair, keys: list[bytes], bind: str
    ) -> tuple[ZmqTransport, Listener]:
        from securemesh.transport import ZmqTransport  # noqa: PLC0415 - the server only

        # only the listed keys: the ZAP handler refuses every other one (default deny)
        transport = ZmqTransport(pair, authenticator=AllowKeys(keys), options=_OPTIONS)
        try:
            return transport, await transport.listen(bind)
        except BaseException:
            await transport.close()
            raise

    @property
    def stats(self) -> TransportStats:
        """The listener's counters (oversize, malformed and unauthenticated drops, refused keys)."""
        return self._listener.stats

    def serve_one(self, timeout_ms: int) -> bool:
        """Handle at most one request; return whether one was handled."""
        return self._loop.run_until_complete(self._serve_one(timeout_ms / 1000))

    async def _serve_one(self, timeout: float) -> bool:
        try:
            peer, frames = await self._listener.recv(timeout=timeout)
        except TimeoutError:
            return False
        reply = self._handle(frames)
        # never waits: a client that does not read loses its reply (and retries)
        with contextlib.suppress(SendTimeout, PeerUnavailable):
            await self._listener.send(peer, [MAGIC, reply])
        return True

    def _handle(self, body: list[bytes]) -> bytes:
        if body[0] != MAGIC or not 2 <= len(body) <= MAX_FRAMES + 1:
            return b"error"
        entries = body[1:]
        if any(len(e) > MAX_SIGNED_EVENT_SIZE for e in entries):
            return b"error"
        try:
            acks = self._service.handle_batch(entries)
        except RemoteError as exc:
            _log.warning("audit batch refused: %s", exc.reason)
            return b"error"
        return _encode_acks(acks)

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            self.serve_one(200)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._transport.close())
        self._loop.close()


class IngestClient:
    """The edge side: ``send_batch(entries) -> acks`` with lazy-pirate retry.

    A :class:`~securemesh.transport.SyncRequester`; after a failure the
    socket is discarded and the next call connects a new one.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        server_public: bytes,
        keypair: tuple[bytes, bytes],
        timeout_ms: int = 2000,
    ) -> None:
        """``keypair``: this client's Z85 ``(public, secret)`` CURVE keys; the server
        must list the public one (see :func:`load_or_create_curve_key`)."""
        self._endpoint = endpoint
        self._server_key = _z85_key(bytes(server_public), what="server_public")
        self._timeout = timeout_ms / 1000
        self._pair = CurveKeyPair.from_secret(_z85_key(bytes(keypair[1]), what="keypair"))
        self._requester: SyncRequester | None = None

    def _socket(self) -> SyncRequester:
        if self._requester is None:
            from securemesh.transport import SyncRequester  # noqa: PLC0415 - pyzmq

            self._requester = SyncRequester(
                self._endpoint,
                self._server_key,
                self._pair,
                max_frame_size=MAX_REPLY_SIZE + 1024,
                max_frames=2,
                handshake_timeout=max(self._timeout, 1.0),
            )
        return self._requester

    def _reset(self) -> None:
        if self._requester is not None:
            self._requester.close()
            self._requester = None

    def send_batch(self, entries: list[bytes]) -> list[Ack]:
        """Send up to 256 entries; return the acknowledgements or raise TransportError."""
        if not 1 <= len(entries) <= MAX_FRAMES:
            raise TransportError(f"a batch holds 1..{MAX_FRAMES} events")
        requester = self._socket()
        deadline = time.monotonic() + self._timeout
        try:
            frames = requester.request(
                [MAGIC, *entries], deadline=deadline, accept=lambda reply: reply
            )
        except TransportError as exc:
            self._reset()
            raise TransportError(f"audit service did not answer in time ({exc})") from None
        if frames is None:
            self._reset()
            raise TransportError("the audit service refused this client's key")
        if len(frames) != 2 or frames[0] != MAGIC:
            raise DecodeError("malformed reply from the audit service")
        if frames[1] == b"error":
            raise RemoteError("the audit service refused the batch")
        return _decode_acks(frames[1])

    def close(self) -> None:
        self._reset()


def ship_until_empty(
    outbox: Outbox,
    client: IngestClient,
    *,
    batch: int = 64,
    stop: threading.Event | None = None,
    on_error_wait: float = 0.05,
) -> ShipResult:
    """Ship until nothing is due (or ``stop`` is set), retrying through failures.

    Deferred entries that are not due yet stay in the outbox.
    """
    sent = acked = rejected = deferred = 0
    waiter = stop or threading.Event()
    while not waiter.is_set():
        try:
            r = ship_once(outbox, client.send_batch, limit=batch)
        except TransportError:
            waiter.wait(on_error_wait)
            continue
        sent, acked, rejected = sent + r.sent, acked + r.acked, rejected + r.rejected
        deferred += r.deferred
        if r.sent == 0:
            break
    return ShipResult(sent, acked, rejected, deferred)


def _write_ready(path: str, endpoint: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(endpoint + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingestion endpoint until SIGTERM/SIGINT."""
    # the server side only: edges importing the client need no SQLAlchemy
    from securemesh.audit.admin import load_log_key  # noqa: PLC0415 - plain or encrypted
    from securemesh.audit.log import open_log  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m securemesh.audit.ingest")
    ap.add_argument("--db", required=True, help="audit database (SQLite path or PostgreSQL URL)")
    ap.add_argument("--log-key-file", required=True)
    ap.add_argument(
        "--passphrase-env",
        default="SECUREMESH_PASSPHRASE",
        help="environment variable holding the log key file's passphrase",
    )
    ap.add_argument("--curve-secret-file", required=True, help="created if missing")
    ap.add_argument(
        "--client-keys-file",
        required=True,
        help="Z85 CURVE public keys of the clients to admit, one a line",
    )
    ap.add_argument("--bind", default="tcp://127.0.0.1:0")
    ap.add_argument("--ready-file", help="write the bound endpoint here once listening")
    ap.add_argument(
        "--max-clock-skew",
        type=float,
        default=120.0,
        help="refuse events dated more than this many seconds in the future (default 120)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        key = load_log_key(args.log_key_file, os.environ.get(args.passphrase_env) or None)
        _, secret = load_or_create_curve_key(args.curve_secret_file)
        clients = read_client_keys(args.client_keys_file)
    except LocalError as exc:  # one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bind = args.bind.replace(":0", ":*") if args.bind.endswith(":0") else args.bind
    log = open_log(args.db, signer=key.signer, origin=key.name)
    server = IngestServer(
        AuditService(log, policy=EventPolicy(max_future_skew=args.max_clock_skew)),
        bind=bind,
        curve_secret=secret,
        client_keys=clients,
    )

    def _stop(_signum: int, _frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.ready_file:
        _write_ready(args.ready_file, server.endpoint)
    print(f"audit ingest listening on {server.endpoint}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
        log.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
