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

Limits are enforced before any work: ``ZMQ_MAXMSGSIZE`` on the server
socket (libzmq disconnects a peer that sends a frame larger than one signed
event), then the frame count; the client bounds and strictly validates the
reply. ZeroMQ delivers a multipart message whole, so a peer can still make
the server buffer many small frames before the count is checked; the bus's
ZAP policy (enrolled nodes only) is what bounds that.

The server's CURVE key authenticates the cloud to the edge, and the server
admits only the client CURVE keys it was given (``client_keys``;
``--client-keys-file``, Z85 public keys one a line): a ZAP handler (pyzmq's
:class:`zmq.auth.thread.ThreadAuthenticator`, on the server's own context)
refuses every other key during the CURVE handshake, so a stranger cannot
even make the server buffer frames. Event authenticity still comes from the
origin signatures, checked by the service. (This endpoint does not use the
transport seam yet: issue #8 item 6, "one ZeroMQ code path".)

The client follows the "lazy pirate" pattern: on a reply timeout the REQ
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
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from securemesh.audit.admission import EventPolicy
from securemesh.audit.events import MAX_SIGNED_EVENT_SIZE
from securemesh.audit.outbox import DEFERRED, Ack, Outbox, ShipResult, ship_once
from securemesh.audit.service import MAX_FRAMES, AuditService
from securemesh.errors import (
    ConfigError,
    DecodeError,
    LocalError,
    RemoteError,
    SizeLimitExceeded,
    TransportError,
)

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
        if len(secret) != 40:
            raise ConfigError(f"{p} is not a Z85 CURVE secret key")
        public = zmq.curve_public(secret)
    else:
        public, secret = zmq.curve_keypair()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
    Path(str(p) + ".pub").write_bytes(public + b"\n")
    return public, secret


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
        if len(key) != 40:
            raise ConfigError(f"{p}: not a Z85 CURVE public key: {key[:48]!r}")
        keys.add(key)
    if not keys:
        raise ConfigError(f"{p} names no client key: the endpoint would admit nobody")
    return frozenset(keys)


class _AllowedKeys:
    """The ZAP credentials provider: a CURVE client key is admitted iff it is listed."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys


def _encode_acks(acks: Sequence[Ack]) -> bytes:
    return json.dumps([[e, i] for e, i in acks], separators=(",", ":")).encode()


def _decode_acks(data: bytes) -> list[Ack]:
    if len(data) > MAX_REPLY_SIZE:
        raise SizeLimitExceeded("acknowledgement is too large")
    try:
        doc = json.loads(data)
    except ValueError as exc:
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


class IngestServer:
    """ROUTER socket in front of an :class:`AuditService` (one request at a time)."""

    def __init__(
        self,
        service: AuditService,
        *,
        bind: str,
        curve_secret: bytes,
        client_keys: Iterable[bytes],
    ) -> None:
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415 - the server only

        allowed = frozenset(bytes(k) for k in client_keys)
        if not allowed or any(len(k) != 40 for k in allowed):
            raise ConfigError("client_keys: one or more Z85 CURVE public keys (40 bytes)")
        self._service = service
        # its own context: the ZAP handler is per context, and admits only ``allowed``
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._auth = ThreadAuthenticator(self._ctx, log=_log)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(allowed))
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, _MAX_FRAME)  # per frame: peer is dropped
        self._sock.curve_server = True
        self._sock.curve_secretkey = curve_secret
        self._sock.curve_publickey = zmq.curve_public(curve_secret)
        self._sock.bind(bind)
        endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint: str = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._stop = threading.Event()

    def serve_one(self, timeout_ms: int) -> bool:
        """Handle at most one request; return whether one was handled."""
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return False
        frames = self._sock.recv_multipart(copy=True)
        # ROUTER + REQ: [identity, b"", MAGIC, entries...]
        if len(frames) < 3 or frames[1] != b"":
            return True  # not a REQ peer: drop
        ident, body = frames[0], frames[2:]
        reply = self._handle(body)
        self._sock.send_multipart([ident, b"", MAGIC, reply])
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
        self._sock.close(0)
        self._auth.stop()
        self._ctx.term()


class IngestClient:
    """The edge side: ``send_batch(entries) -> acks`` over REQ with lazy-pirate retry."""

    def __init__(
        self,
        endpoint: str,
        *,
        server_public: bytes,
        keypair: tuple[bytes, bytes],
        timeout_ms: int = 2000,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        """``keypair``: this client's Z85 ``(public, secret)`` CURVE keys; the server
        must list the public one (see :func:`load_or_create_curve_key`)."""
        self._endpoint = endpoint
        self._server_public = server_public
        self._timeout_ms = timeout_ms
        self._ctx = context or zmq.Context.instance()
        self._public, self._secret = keypair
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            s = self._ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_SIZE + 1024)
            s.curve_serverkey = self._server_public
            s.curve_publickey = self._public
            s.curve_secretkey = self._secret
            s.connect(self._endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def send_batch(self, entries: list[bytes]) -> list[Ack]:
        """Send up to 256 entries; return the acknowledgements or raise TransportError."""
        if not 1 <= len(entries) <= MAX_FRAMES:
            raise TransportError(f"a batch holds 1..{MAX_FRAMES} events")
        sock = self._socket()
        try:
            sock.send_multipart([MAGIC, *entries])
            if not sock.poll(self._timeout_ms, zmq.POLLIN):
                raise TransportError("audit service did not answer in time")
            frames = sock.recv_multipart()
        except zmq.ZMQError as exc:
            self._reset()
            raise TransportError(f"audit transport failed: {exc}") from exc
        except TransportError:
            self._reset()
            raise
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
