"""A small real enrollment endpoint for tests: EnrollmentServer behind a ZmqTransport listener.

It runs its own asyncio loop in a background thread, admits (ZAP) only the
first-contact keys of usable tokens in its TokenStore, answers
``enroll.request`` with a SIGNED ``enroll.reply`` and anything refused with an
(unverifiable for the client) ``mesh.error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_decode
from securemesh.enroll import EnrollmentServer
from securemesh.enroll._client import open_enroll_request, reply_frames
from securemesh.enroll._store import TokenStore
from securemesh.errors import AuthenticationError, RemoteError
from securemesh.transport import CurveKeyPair, ZmqTransport
from securemesh.wire import Flags, decode, encode_signed


class EnrollEndpoint:
    def __init__(
        self,
        enrollment: EnrollmentServer,
        store: TokenStore,
        identity: NodeIdentity,
        node_id: str,
    ) -> None:
        self.enrollment = enrollment
        self.store = store
        self.identity = identity
        self.node_id = node_id
        self.address = ""
        self.errors: list[str] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._seq = 0

    def _admit(self, key: bytes) -> None:
        if self.store.find_by_curve_key(key) is None:
            raise AuthenticationError("not a usable token key")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        keys = CurveKeyPair.from_secret(z85_decode(self.identity.curve_secret_z85()))
        transport = ZmqTransport(keys, authenticator=self._admit)
        try:
            listener = await transport.listen("tcp://127.0.0.1:*")
            self.address = listener.address
            self._ready.set()
            while not self._stop.is_set():
                try:
                    peer, frames = await listener.recv(timeout=0.05)
                except TimeoutError:
                    continue
                out = self._handle(peer, frames)
                if out is not None:
                    await listener.send(peer, out)
        finally:
            await transport.close()

    def _handle(self, peer: bytes, frames: list[bytes]) -> list[bytes] | None:
        self._seq += 1
        try:
            envelope, request = open_enroll_request(frames)
            reply = self.enrollment.handle_enroll(
                request,
                self_signature_verified_with=request.verify_key,
                sender=envelope.sender,
                peer_curve_key=peer,
            )
        except RemoteError as exc:
            self.errors.append(exc.reason)
            try:
                unverified = decode(frames)
            except RemoteError:
                return None
            return [
                bytes(f)
                for f in encode_signed(
                    msg_type="mesh.error",
                    sender=self.node_id,
                    recipient=unverified.sender,
                    sequence=self._seq,
                    timestamp_ms=unverified.timestamp_ms,
                    body=b'{"code":"rejected"}',
                    signer=self.identity,
                    correlation_id=unverified.correlation_id,
                    flags=Flags.REPLY,
                )
            ]
        return [
            bytes(f)
            for f in reply_frames(
                reply,
                server_id=self.node_id,
                signer=self.identity,
                recipient=envelope.sender,
                correlation_id=envelope.correlation_id,
                sequence=self._seq,
                now=envelope.timestamp_ms / 1000,
            )
        ]

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("enroll endpoint did not start")
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextlib.contextmanager
def running_endpoint(
    enrollment: EnrollmentServer, store: TokenStore, identity: NodeIdentity, node_id: str
) -> Iterator[EnrollEndpoint]:
    endpoint = EnrollEndpoint(enrollment, store, identity, node_id)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
