"""AsyncDevice: the device runtime as coroutines (the synchronous Device wraps it).

Theory of operation
-------------------
A device is a :class:`~securemesh.node.MeshNode` of tier ``end`` with one
parent link (a CurveZMQ DEALER to its edge, which authenticates the edge by
the CURVE key in ``node.toml``) and no listener. :meth:`AsyncDevice.connect`
loads the data directory (:mod:`securemesh.sdk._files`; the Argon2id key
derivation runs in a worker thread), builds the node over
:class:`~securemesh.transport.ZmqTransport` with a persistent
:class:`~securemesh.wire.SequenceCounter`, starts it and (by default) waits
until the edge answered the device's ``node.hello``.

**Messages.** :meth:`send` and :meth:`request` are the node's (SIGNED
envelopes by default, ``auth="session"`` for the MAC fast path to the edge);
bodies go through :func:`~securemesh.sdk._message.encode_body` (models, dicts,
JSON bytes); replies and handler arguments are :class:`Message` views of
verified messages. :meth:`on` registers a handler *and* the policy that
authorizes its type (by default: sent by an ``edge`` or ``cloud`` node —
a device accepts commands from its infrastructure, not from other devices,
unless ``tiers`` says so). Nothing else reaches a handler: the node's
pipeline verified certificate, signature/MAC, replay window and policy first.

**Renewal.** A background task compares the injectable ``clock`` with the
certificate every ``renew_check_interval`` seconds; from ``renew_fraction``
(half) of the validity period on, it sends ``cert.renew`` (REQUEST) to the
parent, verifies the reply (:func:`securemesh.enroll.accept_renew_reply`:
same node, tier, roles and keys, new serial, verified under the trust store,
revocation list not rolled back), installs the certificate in the node
(:meth:`MeshNode.install_certificate` re-announces it with ``node.hello``)
and saves it to the data directory. Failures are retried with exponential
backoff (capped at 60 s) until the certificate expires; then the device's
``state`` becomes ``"expired"``, sends fail locally with
:class:`~securemesh.errors.CertificateExpired`, and the application must
re-enroll (:meth:`enroll` with a fresh token, same ``data_dir``: keys kept)
and connect again.

**Restarts.** As the daemon does, the device persists its envelope
sequence counter (``sequence.state``, so it never reuses a number) and the
replay high-water marks of its senders (``replay.json``, every 30 s and on
close, restored on connect), so frames it accepted before a restart stay
refused after it.

**Audit.** As a node daemon does (the same assembly,
:func:`securemesh.node.assemble_node`), the device writes every
message its pipeline rejects as a signed ``message.rejected`` event (reason,
claimed sender, at most one per peer and reason per ``limits.log_window``)
to a durable SQLite outbox, ``audit-outbox.db`` in its data directory, before
anything else; :meth:`record_audit` adds the application's own events. A
shipper task sends them as ``audit.append`` requests through the edge to the
cloud log and deletes each only once the cloud acknowledged it with its leaf
index; while the cloud is unreachable they wait on disk (across restarts of
the device too) and are retried with capped backoff (``[audit]`` in
``node.toml``). ``status()["audit"]`` shows ``outbox_pending``, ``shipped``
and the last error.

**Revocation.** A ``mesh.revocation`` broadcast (or the list in a renewal
reply) that revokes this device sets ``state`` to ``"revoked"`` (sends then
fail locally with :class:`~securemesh.errors.CertificateRevoked`); the edge
cuts the device off its live connection regardless. Newer revocation lists
are saved to the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from securemesh.errors import (
    CertificateExpired,
    CertificateRevoked,
    LocalError,
    PeerUnavailable,
    SecureMeshError,
    TransportClosed,
)
from securemesh.sdk._device import DEFAULT_TIERS, Device
from securemesh.sdk._files import (
    DeviceFiles,
    Enrollment,
    load_device,
    resolve_passphrase,
    save_renewal,
)
from securemesh.sdk._message import Message, Reply, encode_body

if TYPE_CHECKING:
    from securemesh.crypto.certs import Certificate
    from securemesh.crypto.keystore import KdfParams
    from securemesh.node import AssembledNode, MeshNode, VerifiedMessage

__all__ = ["AsyncDevice", "Handler", "State"]

log = logging.getLogger("securemesh.sdk")

State = Literal["connecting", "connected", "expired", "revoked", "closed"]
#: ``handler(msg)`` returning a body (model, dict, JSON bytes), a :class:`Reply`,
#: ``None`` (an empty ``{}`` reply to a request) — or an awaitable of one (AsyncDevice).
Handler = Callable[[Message], Any]
Auth = Literal["signed", "session"]

_MAX_BACKOFF = 60.0
#: Replay high-water marks per sender (the daemon's file and format).
_REPLAY_SAVE_INTERVAL = 30.0


def _reply_for(result: object) -> object:
    """A handler's return value in the node's terms (its ``Reply``/model/bytes/None)."""
    from securemesh.node import Reply as NodeReply  # noqa: PLC0415

    if result is None:
        return None
    if isinstance(result, Reply):
        return NodeReply(encode_body(result.body), tuple(bytes(f) for f in result.frames))
    return encode_body(result)


class AsyncDevice:
    """A connected device, driven from one asyncio event loop (see module docstring).

    Build it with ``await AsyncDevice.connect(data_dir, ...)``. Every method
    must be called from the loop it was connected on; use :class:`Device` from
    ordinary threads.
    """

    def __init__(
        self,
        files: DeviceFiles,
        assembled: AssembledNode,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        renew_fraction: float,
        renew_check_interval: float | None,
    ) -> None:
        self._files = files
        self._assembled = assembled
        node = self._node = assembled.node
        self._audit = assembled.audit
        self._clock = clock
        self._monotonic = monotonic
        self._signed = files.certificate
        self._authority_cert = files.authority_certificate
        self._renew_fraction = renew_fraction
        life = max(1.0, float(files.cert.not_after - files.cert.not_before))
        self._check_interval = (
            renew_check_interval
            if renew_check_interval is not None
            else max(0.05, min(60.0, life / 100.0))
        )
        self._renew_lock = asyncio.Lock()
        self._state: State = "connecting"
        self._tasks: list[asyncio.Task[None]] = []
        self._saved_rl_version = node.revocation_list_version
        self._replay_saved = monotonic()
        #: Number of successful renewals since connect.
        self.renewals = 0
        #: Last renewal failure (repr), if the latest attempt failed.
        self.last_renewal_error: str | None = None
        self._renewal_listeners: list[Callable[[Certificate], None]] = []
        node.directory.on_revoked.append(self._on_revoked)

    # ------------------------------------------------------------ construction

    @staticmethod
    async def enroll(
        token: str,
        *,
        data_dir: str | Path,
        node_id: str,
        passphrase: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        kdf_params: KdfParams | None = None,
    ) -> Enrollment:
        """:meth:`Device.enroll` in a worker thread (it blocks on key derivation and I/O)."""
        return await asyncio.to_thread(
            Device.enroll,
            token,
            data_dir=data_dir,
            node_id=node_id,
            passphrase=passphrase,
            timeout=timeout,
            clock=clock,
            kdf_params=kdf_params,
        )

    @classmethod
    async def connect(
        cls,
        data_dir: str | Path,
        *,
        passphrase: str | None = None,
        connect_timeout: float | None = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        renew_fraction: float | None = None,
        renew_check_interval: float | None = None,
    ) -> AsyncDevice:
        """Load ``data_dir``, connect to the edge and (unless ``connect_timeout`` is None)
        wait for its hello.

        Raises :class:`~securemesh.errors.CertificateExpired` when the stored
        certificate is no longer valid (re-enroll), ConfigError /
        WrongPassphrase for an unusable data directory,
        :class:`~securemesh.errors.StateFileError` if another Device has it
        open, and :class:`~securemesh.errors.PeerUnavailable` if the edge does
        not answer within ``connect_timeout`` seconds.
        """
        if renew_fraction is not None and not 0.0 < renew_fraction < 1.0:
            raise LocalError("renew_fraction must be between 0 and 1")
        path = Path(data_dir)
        secret = resolve_passphrase(passphrase, path)
        files = await asyncio.to_thread(load_device, path, secret, now=clock())

        from securemesh.node import NodeMaterial, assemble_node  # noqa: PLC0415

        config = files.config
        # The SDK renews (and persists) itself, on its own clock checks.
        config = config.model_copy(update={"auto_renew": False})
        if renew_fraction is None:
            renew_fraction = config.renew_fraction
        material = NodeMaterial(
            data_dir=path,
            identity=files.identity,
            certificate=files.certificate,
            trust=files.trust,
            authority_certificate=files.authority_certificate,
        )
        # The daemon's assembly: transport, node, audit (rejections -> data_dir/audit-outbox.db
        # -> the cloud log), replay marks restored.
        assembled = await assemble_node(config, material, clock=clock, monotonic=monotonic)
        try:
            device = cls(
                files,
                assembled,
                clock=clock,
                monotonic=monotonic,
                renew_fraction=renew_fraction,
                renew_check_interval=renew_check_interval,
            )
            await assembled.start()
        except BaseException:
            await assembled.stop(0)
            assembled.close()
            raise
        device._tasks.append(asyncio.create_task(device._maintenance()))
        if connect_timeout is not None:
            try:
                await device.wait_connected(connect_timeout)
            except BaseException:
                await device.close(drain_timeout=0)
                raise
        return device

    # ---------------------------------------------------------------- facts

    @property
    def node(self) -> MeshNode:
        """The underlying MeshNode (advanced use: status, metrics, ping)."""
        return self._node

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def parent_id(self) -> str | None:
        """The edge's node id once it answered our hello (the usual ``dest``)."""
        return self._node.parent_id

    @property
    def certificate(self) -> Certificate:
        """The current (verified) certificate; changes on renewal."""
        return self._node.certificate

    @property
    def data_dir(self) -> Path:
        return self._files.data_dir

    @property
    def state(self) -> State:
        if self._state in ("connecting", "connected"):
            if self._clock() >= self._node.certificate.not_after:
                return "expired"
            return "connected" if self._node.parent_ready.is_set() else "connecting"
        return self._state

    def status(self) -> dict[str, object]:
        """The node's status snapshot plus the SDK's state and renewal facts."""
        status = self._node.status()
        status["sdk"] = {
            "state": self.state,
            "renewals": self.renewals,
            "renew_at": self.renew_at,
            "last_renewal_error": self.last_renewal_error,
        }
        status["audit"] = self._audit.status()
        return status

    @property
    def renew_at(self) -> float:
        """When the background task starts renewing the current certificate (Unix s)."""
        cert = self._node.certificate
        return cert.not_before + (cert.not_after - cert.not_before) * self._renew_fraction

    async def wait_connected(self, timeout: float) -> None:
        """Wait until the edge answered our hello (PeerUnavailable after ``timeout`` s).

        A wait longer than a second is logged (a warning: what it waits for).
        If the edge never answers, its CURVE handshake is asked once why
        (:func:`securemesh.transport.curve_admission`): a refused key raises CertificateRevoked
        saying that the edge revoked this device.
        """
        parent = self._files.config.parent
        where = parent.endpoint if parent is not None else "?"
        first = min(timeout, 1.0)
        with contextlib.suppress(TimeoutError):
            await self._node.wait_parent(first)
            return
        if timeout > first:
            log.warning(
                "waiting up to %g s for the edge at %s to answer this device's hello",
                timeout,
                where,
                extra={"event": "connect_waiting", "endpoint": where},
            )
            with contextlib.suppress(TimeoutError):
                await self._node.wait_parent(timeout - first)
                return
        if parent is not None and await self._edge_refuses_us(parent.endpoint):
            raise CertificateRevoked(
                f"the edge at {where} refuses this device's key: {self.node_id!r} was "
                "revoked there (or its certificate is no longer valid there); ask the "
                "operator, and re-enroll with a fresh token if it was revoked by mistake"
            )
        raise PeerUnavailable(f"the edge at {where} did not answer within {timeout:g} s")

    async def _edge_refuses_us(self, endpoint: str) -> bool:
        from securemesh.crypto.z85 import z85_decode  # noqa: PLC0415
        from securemesh.transport import curve_admission  # noqa: PLC0415

        parent = self._files.config.parent
        assert parent is not None
        identity = self._files.identity

        verdict = await asyncio.to_thread(
            curve_admission,
            endpoint,
            parent.curve_key_bytes,
            identity.curve_public,
            z85_decode(identity.curve_secret_z85()),
            timeout=2.0,
        )
        return verdict == "refused"

    def on_renewal(self, callback: Callable[[Certificate], None]) -> None:
        """Call ``callback(new_certificate)`` (in the loop) after each successful renewal."""
        self._renewal_listeners.append(callback)

    # ---------------------------------------------------------------- messaging

    def _check_usable(self) -> None:
        state = self.state
        if state == "closed":
            raise TransportClosed("the device is closed")
        if state == "revoked":
            raise CertificateRevoked("this device's certificate was revoked")
        if state == "expired":
            raise CertificateExpired(
                "this device's certificate expired: re-enroll with a fresh token"
            )

    async def send(
        self,
        dest: str,
        msg_type: str,
        body: object,
        frames: Sequence[bytes] = (),
        *,
        auth: Auth = "signed",
    ) -> None:
        """One-way message to node ``dest`` (routed by the edge)."""
        self._check_usable()
        await self._node.send(dest, msg_type, encode_body(body), tuple(frames), auth=auth)

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: object,
        frames: Sequence[bytes] = (),
        *,
        timeout: float | None = None,
        auth: Auth = "signed",
    ) -> Message:
        """Send a REQUEST and return the verified reply.

        ``timeout`` bounds the whole call — waiting for room in the queue to
        the edge (the transport's ``send_timeout`` otherwise) and for the
        reply; default ``limits.request_timeout``. Raises TimeoutError,
        :class:`~securemesh.errors.RemoteCallError` (the peer's handler
        failed or refused), or a TransportError.
        """
        self._check_usable()
        call = self._node.request(
            dest, msg_type, encode_body(body), tuple(frames), timeout=timeout, auth=auth
        )
        if timeout is None:
            return Message(await call)
        # the transport never half-sends a cancelled message (its contract)
        try:
            return Message(await asyncio.wait_for(call, timeout))
        except TimeoutError as exc:
            if exc.args:  # the node's own, already saying who and what
                raise
            from securemesh.node import no_reply_message  # noqa: PLC0415 - loaded by connect()

            raise TimeoutError(no_reply_message(dest, msg_type, timeout)) from None

    def on(
        self,
        msg_type: str,
        handler: Handler,
        *,
        tiers: Iterable[str] | None = DEFAULT_TIERS,
        roles: Iterable[str] | None = None,
    ) -> None:
        """Handle ``msg_type`` (replacing a previous handler) from senders of ``tiers``/``roles``.

        A coroutine function runs as a task (bounded by ``limits.max_inflight``);
        a plain function runs inline on the loop (keep it short). For a
        REQUEST the return value is the reply; an exception becomes a
        ``mesh.error`` reply.
        """
        if inspect.iscoroutinefunction(handler):

            async def run_async(msg: VerifiedMessage) -> object:
                return _reply_for(await handler(Message(msg)))

            self._register(msg_type, run_async, tiers, roles)
        else:

            def run_inline(msg: VerifiedMessage) -> object:
                return _reply_for(handler(Message(msg)))

            self._register(msg_type, run_inline, tiers, roles)

    def on_in_executor(
        self,
        msg_type: str,
        handler: Handler,
        executor: Executor,
        *,
        tiers: Iterable[str] | None = DEFAULT_TIERS,
        roles: Iterable[str] | None = None,
    ) -> None:
        """Like :meth:`on`, but run the (blocking) handler on ``executor``."""

        async def run(msg: VerifiedMessage) -> object:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(executor, handler, Message(msg))
            if inspect.isawaitable(result):
                raise LocalError("a handler run in a thread must not be a coroutine function")
            return _reply_for(result)

        self._register(msg_type, run, tiers, roles)

    def _register(
        self,
        msg_type: str,
        fn: Callable[[VerifiedMessage], object],
        tiers: Iterable[str] | None,
        roles: Iterable[str] | None,
    ) -> None:
        from securemesh.policy import AllowTypes  # noqa: PLC0415

        policy = AllowTypes(
            types=[msg_type],
            tiers=None if tiers is None else list(tiers),
            roles=None if roles is None else list(roles),
        )
        if self._node.config.policy.allow:
            # the operator wrote a [policy] into the device's node.toml: ours only narrows it
            self._node.on(msg_type, fn, policy=policy)
        else:
            # no operator rules on the device: the application's own rule is the rule
            self._node.on_protocol(msg_type, fn, policy=policy)

    # -------------------------------------------------------------------- audit

    def record_audit(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Record an audit event signed by this device; durable in the outbox when it returns.

        ``kind`` is a namespaced kind: a built-in
        :class:`~securemesh.audit.events.EventKind` value (``object.put``,
        ``task.finished``, ...) or a service's own (the cloud appends it only
        if its ``[[audit.kinds]]`` rules let devices log that namespace).
        ``subject`` is a ``(type, id)`` pair (type ``node``, ``object``,
        ``task``, ``round``, ``message`` or ``key``), ``outcome``
        ``success``/``failure``/``denied``, ``details`` a flat map of short
        scalars. Returns the event id; the shipper sends it to the cloud log.
        Invalid events raise before anything is stored.
        """
        return self._audit.recorder.record(
            kind, subject, outcome=outcome, details=details, event_id=event_id
        )

    # ------------------------------------------------------------------ renewal

    async def renew(self, *, timeout: float | None = None) -> Certificate:
        """Renew the certificate now (``cert.renew`` to the parent); return the new one."""
        from securemesh.crypto.certs import SignedCertificate  # noqa: PLC0415
        from securemesh.enroll import (  # noqa: PLC0415
            MSG_CERT_RENEW,
            RenewReply,
            accept_renew_reply,
            build_renew_request,
        )

        async with self._renew_lock:
            self._check_usable()
            node = self._node
            dest = self._renewal_target()
            reply = await node.request(
                dest, MSG_CERT_RENEW, build_renew_request(self._signed), timeout=timeout
            )
            body = reply.body(RenewReply)
            node.directory.update_revocation_list(body.revocation_list)  # fires on_revoked
            self._check_usable()
            signed = accept_renew_reply(
                self._files.identity, self._signed, body, node.directory.trust, self._clock()
            )
            authority = (
                None
                if body.issuer_certificate is None
                else SignedCertificate.from_bytes(body.issuer_certificate)
            )
            cert = await node.install_certificate(signed, authority_certificate=authority)
            self._signed = signed
            if authority is not None:
                self._authority_cert = authority
            await asyncio.to_thread(
                save_renewal,
                self._files.data_dir,
                signed,
                authority_certificate=authority,
                revocation_list=bytes(body.revocation_list),
            )
            self.renewals += 1
            self.last_renewal_error = None
            log.info(
                "certificate renewed",
                extra={"event": "cert_renewed", "serial": cert.serial, "not_after": cert.not_after},
            )
            for callback in list(self._renewal_listeners):
                try:
                    callback(cert)
                except Exception:
                    log.exception("renewal listener failed")
            return cert

    def _renewal_target(self) -> str:
        """Who answers ``cert.renew``: the issuing edge (a delegated authority), else the
        cloud node this device learned from its edge's hello, else the edge itself."""
        from securemesh.crypto.certs import Tier  # noqa: PLC0415

        node = self._node
        if node.parent_id is None:
            raise PeerUnavailable("not connected to the edge yet")
        issuer = node.certificate.issuer
        directory = node.directory
        if directory.trust.root_key(issuer) is None and issuer in directory:
            return issuer
        for node_id in directory.node_ids():
            signed = directory.signed_certificate(node_id)
            if signed is not None and signed.unverified_certificate().tier is Tier.CLOUD:
                return node_id
        return node.parent_id

    def _save_replay_marks(self) -> None:
        self._assembled.save_marks()
        self._replay_saved = self._monotonic()

    async def _maintenance(self) -> None:
        failures = 0
        while True:
            delay = self._check_interval
            try:
                self._save_newer_revocation_list()
                if self._monotonic() - self._replay_saved >= _REPLAY_SAVE_INTERVAL:
                    self._save_replay_marks()
                now = self._clock()
                if (
                    self._state in ("connecting", "connected")
                    and self.renew_at <= now < self._node.certificate.not_after
                    and self._node.parent_ready.is_set()
                ):
                    try:
                        await self.renew()
                        failures = 0
                    except (TimeoutError, SecureMeshError) as exc:
                        failures += 1
                        self.last_renewal_error = repr(exc)
                        delay = min(_MAX_BACKOFF, self._check_interval * 2 ** min(failures, 10))
                        log.warning(
                            "certificate renewal failed",
                            extra={"event": "renew_failed", "error": repr(exc)},
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("device maintenance failed")
            await asyncio.sleep(delay)

    def _save_newer_revocation_list(self) -> None:
        node = self._node
        version = node.revocation_list_version
        if version is None or node.revocation_list_bytes is None:
            return
        if self._saved_rl_version is not None and version <= self._saved_rl_version:
            return
        from securemesh.crypto import keystore  # noqa: PLC0415

        keystore.write_file_atomic(
            self._files.data_dir / "revocation.list", node.revocation_list_bytes
        )
        self._saved_rl_version = version

    def _on_revoked(self, node_ids: frozenset[str]) -> None:
        if self._node.node_id in node_ids and self._state != "closed":
            self._state = "revoked"
            log.warning("this device was revoked", extra={"event": "device_revoked"})

    # -------------------------------------------------------------------- close

    async def close(self, *, drain_timeout: float | None = 5.0) -> None:
        """Stop renewal, drain in-flight handlers (``drain_timeout`` s), disconnect."""
        if self._state == "closed":
            return
        self._state = "closed"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            # services (audit shipping: unshipped events stay in the outbox), then the node
            await self._assembled.stop(drain_timeout)
        finally:
            try:
                self._save_newer_revocation_list()
                self._save_replay_marks()
            except (OSError, SecureMeshError):
                log.warning("could not save the revocation list / replay marks", exc_info=True)
            self._assembled.close()

    async def __aenter__(self) -> AsyncDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
