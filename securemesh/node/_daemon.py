"""The node daemon behind ``securemesh node run`` and ``securemesh node status``.

Theory of operation
-------------------
``run_daemon(config_path)`` is one process per edge or cloud node (devices may
run it too):

1. **Load** ``node.toml`` (:func:`~securemesh.node.load_config`, strict) and the
   data directory (:class:`NodeFiles`): the encrypted identity (passphrase from
   ``passphrase_file`` or the environment variable ``SECUREMESH_PASSPHRASE``),
   the node certificate, ``trust.json`` (root keys), the revocation list, the
   issuing delegate's certificate, and ``peers/*.cert`` (certificates to admit
   before they say hello). Anything missing or inconsistent is one
   :class:`~securemesh.errors.ConfigError` and exit status 1, before any socket
   opens.
2. **Assemble** the node with :func:`~securemesh.node.assemble_node` (as the
   SDK device does): a :class:`~securemesh.node.MeshNode` over
   :class:`~securemesh.transport.ZmqTransport` (CurveZMQ + ZAP backed by the
   node's :class:`~securemesh.node.Directory`), with a persistent
   :class:`~securemesh.wire.SequenceCounter` (``sequence.state``) so a restart
   never reuses a sequence number, and its services: ``audit`` (shipping; on a
   cloud the log's ingest), ``enrollment`` (:class:`EnrollmentService`, if the
   data dir holds an authority or a delegation), then ``services`` of
   ``node.toml`` (factories returning a :class:`~securemesh.node.Service`, or
   legacy ``register(node)`` functions). Services start once the node runs and
   stop, in reverse order, before it stops; ``status.json`` shows them under
   ``services``.
3. **Ready**: once listening (and, for a node with a parent, once the sockets
   exist) it writes ``ready`` (JSON: pid, node id, listen address) and logs
   one line with ``"event": "ready"``. Under a service manager that passes
   ``NOTIFY_SOCKET`` (systemd ``Type=notify``) it also sends ``READY=1``, a
   ``STATUS=`` line per status tick, ``WATCHDOG=1`` pings from the event loop
   when ``WatchdogSec=`` is set, and ``STOPPING=1`` on shutdown
   (:mod:`._notify`).
4. **Status**: every ``status_interval`` seconds it rewrites ``status.json``
   atomically (:meth:`MeshNode.status` plus pid and time); ``securemesh node
   status`` reads that file (:func:`read_status`) — no control socket, so the
   command works without any credential and cannot disturb the daemon.
   On the same tick it (a) persists a newer revocation list received over the
   bus to ``revocation.list``; (b) if ``revocation.list`` on disk is *newer*
   than the installed one (``securemesh revoke`` wrote it), installs it and,
   on a cloud node, broadcasts it; (c) admits certificates newly dropped into
   ``peers/``.
5. **Stop** on SIGTERM or SIGINT: :meth:`MeshNode.stop` drains in-flight
   handlers (``limits.drain_timeout``), removes ``ready``, writes a final status.

Logs are JSON lines on stderr (``ts``, ``level``, ``logger``, ``msg`` and the
record's structured fields). Nothing logs key material: the node logs node ids,
message types, reasons and 16-hex-digit CURVE key prefixes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securemesh._fileio import read_small_file
from securemesh.crypto import keystore
from securemesh.crypto.certs import (
    Authority,
    SignedCertificate,
    SignedRevocationList,
    TrustStore,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.errors import (
    CertificateError,
    ConfigError,
    KeyStoreError,
    LocalError,
    SecureMeshError,
)
from securemesh.node._assemble import (
    NodeMaterial,
    assemble_node,
    load_replay_marks,
    save_replay_marks,
    zmq_transport,
)
from securemesh.node._audit_bus import OUTBOX_FILE, NodeAudit
from securemesh.node._config import NodeConfig, load_config
from securemesh.node._exposition import render_metrics
from securemesh.node._fleet import children
from securemesh.node._node import MeshNode, renewal_due_at
from securemesh.node._notify import SystemdNotifier
from securemesh.node._secrets import PASSPHRASE_ENV, read_passphrase, scrub_environment
from securemesh.node._service import LegacyService, NodeContext, Service, load_services

if TYPE_CHECKING:
    from securemesh.node._assemble import AssembledNode

__all__ = [
    "PASSPHRASE_ENV",
    "JsonLogFormatter",
    "NodeFiles",
    "configure_logging",
    "load_node_state",
    "load_replay_marks",
    "load_services",
    "read_status",
    "run_daemon",
    "run_node",
    "save_replay_marks",
    "zmq_transport",
]

log = logging.getLogger("securemesh.daemon")

_MAX_SMALL_FILE = 4 * 1024 * 1024
#: Seconds between saves of the replay high-water marks while running (and at stop).
REPLAY_SAVE_INTERVAL = 30.0
#: after an enrollment, status.json is rewritten within this many seconds (once per burst)
STATUS_BURST_DELAY = 0.25
#: Route evidence is saved as soon as it moves on (a node attached elsewhere), at most
#: once per this many seconds, so a crashed parent restarts with it (not 30 s old).
ROUTE_EVIDENCE_SAVE_GAP = 0.2

#: Legacy: ``register(node)`` registers handlers on a node before it starts.
LegacyRegister = Callable[[MeshNode], object]


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """Paths inside a node's data directory (layout in :mod:`securemesh.node._config`)."""

    data_dir: Path
    #: ``metrics_file`` of node.toml, resolved against the data dir (None: not written)
    metrics: Path | None = None

    @property
    def identity(self) -> Path:
        return self.data_dir / "identity.key"

    @property
    def certificate(self) -> Path:
        return self.data_dir / "node.cert"

    @property
    def trust(self) -> Path:
        return self.data_dir / "trust.json"

    @property
    def revocation_list(self) -> Path:
        return self.data_dir / "revocation.list"

    @property
    def authority_certificate(self) -> Path:
        return self.data_dir / "authority.cert"

    @property
    def delegation_certificate(self) -> Path:
        """This edge's own delegated-authority certificate (it issues ``end`` certificates)."""
        return self.data_dir / "delegation.cert"

    @property
    def peers(self) -> Path:
        return self.data_dir / "peers"

    @property
    def sequence(self) -> Path:
        return self.data_dir / "sequence.state"

    @property
    def replay(self) -> Path:
        """Replay high-water marks per sender, so a restart does not reopen old numbers."""
        return self.data_dir / "replay.json"

    @property
    def route_evidence(self) -> Path:
        """Freshest route evidence per node, so a restart does not accept stale routes."""
        return self.data_dir / "route-evidence.json"

    @property
    def audit_outbox(self) -> Path:
        """Signed ``message.rejected`` events waiting to be shipped to the cloud log."""
        return self.data_dir / OUTBOX_FILE

    @property
    def ready(self) -> Path:
        return self.data_dir / "ready"

    @property
    def status(self) -> Path:
        return self.data_dir / "status.json"

    @classmethod
    def of(cls, config: NodeConfig) -> NodeFiles:
        if config.data_dir is None:
            raise ConfigError("node.toml needs data_dir to run as a daemon")
        data_dir = Path(config.data_dir)
        metrics = None if config.metrics_file is None else data_dir / config.metrics_file
        return cls(data_dir, metrics)


def write_trust_file(path: Path, roots: dict[str, bytes]) -> None:
    """Write ``trust.json`` (helper for ``securemesh init`` and tests)."""
    from securemesh.messages import b64e  # noqa: PLC0415

    data = {"roots": {name: b64e(key) for name, key in sorted(roots.items())}}
    keystore.write_file_atomic(path, json.dumps(data, indent=2).encode() + b"\n", mode=0o644)


def _read_small(path: Path, what: str) -> bytes:
    return read_small_file(path, limit=_MAX_SMALL_FILE, what=what)


def load_passphrase(
    config: NodeConfig, *, passphrase_file: str | os.PathLike[str] | None = None
) -> str:
    """The identity passphrase: ``--passphrase-file``, ``passphrase_file``, the systemd
    credential, else ``$SECUREMESH_PASSPHRASE`` (:mod:`securemesh.node._secrets`)."""
    return read_passphrase(config, passphrase_file=passphrase_file)


def load_trust(files: NodeFiles) -> TrustStore:
    """``trust.json`` roots plus ``revocation.list`` (if present), verified.

    :func:`~securemesh.enroll._state.read_trust` (the same files an enrollment
    wrote), with a daemon's errors: ConfigError, and a trust file naming no
    root is one.
    """
    from securemesh.enroll import read_trust  # noqa: PLC0415

    try:
        trust = read_trust(files.data_dir)
    except (SecureMeshError, OSError) as exc:
        raise ConfigError(f"invalid trust in {files.data_dir}: {exc}") from exc
    if not trust.roots:
        raise ConfigError(f"trust file {files.trust} names no root")
    return trust


@dataclass
class NodeState:
    """Everything loaded from the data directory."""

    identity: NodeIdentity
    certificate: SignedCertificate
    authority_certificate: SignedCertificate | None
    trust: TrustStore


def load_node_state(config: NodeConfig, passphrase: str, *, now: float | None = None) -> NodeState:
    """The node's identity, certificates and trust (``now``: Unix time, default the clock)."""
    at = time.time() if now is None else now
    files = NodeFiles.of(config)
    try:
        identity = NodeIdentity.load(files.identity, passphrase)
    except KeyStoreError as exc:
        raise ConfigError(f"identity {files.identity}: {exc}") from exc
    try:
        cert = SignedCertificate.from_bytes(_read_small(files.certificate, "certificate"))
        authority = None
        if files.authority_certificate.exists():
            authority = SignedCertificate.from_bytes(
                _read_small(files.authority_certificate, "authority certificate")
            )
    except CertificateError as exc:
        raise ConfigError(f"certificate file is invalid: {exc}") from exc
    trust = load_trust(files)
    if files.delegation_certificate.exists():
        try:
            trust.add_delegated_authority(
                _read_small(files.delegation_certificate, "delegation certificate"),
                now=at,
            )
        except CertificateError as exc:
            log.warning(
                "own delegation certificate not usable",
                extra={"event": "delegation_refused", "error": str(exc)},
            )
    return NodeState(identity, cert, authority, trust)


# --------------------------------------------------------------------- logging

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` + structured extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("securemesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# ---------------------------------------------------------------------- running


def _write_json(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode() + b"\n"
    keystore.write_file_atomic(path, payload, mode=0o644, durable=durable)


class _Daemon:
    def __init__(
        self,
        config: NodeConfig,
        files: NodeFiles,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.files = files
        self.notifier = notifier
        self._clock = clock
        self._monotonic = monotonic
        self._peers_mtime = -1.0
        self._rl_mtime = -1.0
        self.token_sync: Any = None
        self._replay_saved = monotonic()
        self.audit: NodeAudit | None = None
        self.assembled: AssembledNode | None = None
        self.saver: asyncio.Task[None] | None = None
        self._status_pending = False
        #: the enrollment server and, on an edge, its delegation (enable_enrollment)
        self.enrollment_server: Any = None
        self.delegation: SignedCertificate | None = None
        #: a cloud's root authority (it renews the cloud's own certificate)
        self.root_authority: Authority | None = None

    @property
    def node(self) -> MeshNode:
        if self.assembled is None:
            raise LocalError("the daemon's node is not assembled yet")
        return self.assembled.node

    def _enrolled(self, node_id: str) -> None:
        if self.token_sync is not None:
            self.token_sync.refresh(self.node.directory)
        self._save_peer(node_id)
        if self.audit is not None:
            self.audit.enrolled(node_id)
        # the fleet view (status.json children) shows a new node soon, not at the next
        # tick: one write per burst of enrollments (status.json lists every child: at
        # 1,000 devices ~0.9 MB of JSON, ~90 ms of this loop per write)
        self._status_soon()

    def _status_soon(self) -> None:
        """Write status.json within STATUS_BURST_DELAY seconds, once however many ask."""
        if self._status_pending:
            return
        self._status_pending = True

        def write() -> None:
            self._status_pending = False
            with contextlib.suppress(SecureMeshError, OSError):
                self.write_status(state="running")

        try:
            asyncio.get_running_loop().call_later(STATUS_BURST_DELAY, write)
        except RuntimeError:  # no running loop (not from a handler): write now
            write()

    def _renewed(self, node_id: str) -> None:
        self._save_peer(node_id)
        if self.audit is not None:
            self.audit.renewed(node_id)

    def _save_peer(self, node_id: str) -> None:
        """Keep a certificate this node issued in ``peers/`` so a restart still admits it."""
        directory = self.node.directory
        signed = directory.signed_certificate(node_id)
        if signed is None or "/" in node_id or node_id.startswith("."):
            return
        if not directory.is_admissible(node_id):
            return  # enrolled through an edge: it connects there, not here (item 6)
        try:
            self.files.peers.mkdir(mode=0o755, exist_ok=True)
            keystore.write_file_atomic(
                self.files.peers / f"{node_id}.cert", signed.to_bytes(), mode=0o644
            )
        except OSError as exc:
            log.warning(
                "peer certificate not saved",
                extra={"event": "peer_save_failed", "node": node_id, "error": str(exc)},
            )

    def enable_enrollment(self, node: MeshNode, state: NodeState, passphrase: str) -> bool:
        """Serve enrollment if this data dir holds an authority (cloud) or a delegation (edge)."""
        root_dir = self.files.data_dir / "authority"
        delegated = self.files.delegation_certificate.exists()
        if not (root_dir / "authority.json").exists() and not delegated:
            return False
        from securemesh.crypto.certs import Authority, DelegatedAuthority  # noqa: PLC0415
        from securemesh.enroll import (  # noqa: PLC0415
            AUTHORITY_STATE_FILE,
            EnrollmentServer,
            TokenKeySync,
            TokenStore,
            load_authority,
        )
        from securemesh.node._enroll import serve_enrollment  # noqa: PLC0415

        authority: Authority | DelegatedAuthority
        if (root_dir / AUTHORITY_STATE_FILE).exists():
            try:
                authority = load_authority(root_dir, passphrase)
            except KeyStoreError as exc:
                raise ConfigError(f"authority in {root_dir}: {exc}") from exc
            self.root_authority = authority
        else:
            authority = DelegatedAuthority(
                _read_small(self.files.delegation_certificate, "delegation certificate"),
                state.identity.signer,
            )
            self.delegation = authority.certificate

        def current_list() -> SignedRevocationList:
            blob = node.revocation_list_bytes
            on_disk = _version_of(self.files.revocation_list)
            if on_disk is not None and (blob is None or on_disk > (_version_of_blob(blob) or 0)):
                # ``securemesh revoke`` wrote a newer one the tick has not installed yet
                blob = _read_small(self.files.revocation_list, "revocation list")
            if blob is not None:
                return SignedRevocationList.from_bytes(blob)
            if isinstance(authority, Authority):
                return authority.revocation_list
            raise ConfigError("no revocation list installed yet")

        store = TokenStore.in_dir(self.files.data_dir)
        server = EnrollmentServer(
            authority,
            store,
            server_certificate=node.signed_certificate,
            lifetime_s=self.config.issued_cert_lifetime,
            trust=node.directory.trust,
            revocation_list=current_list,
        )
        node.on_certificate.append(server.set_server_certificate)
        self.enrollment_server = server
        self.token_sync = TokenKeySync(store)
        self.token_sync.refresh(node.directory)
        serve_enrollment(
            node,
            server,
            upstream=self.config.authority_node,
            on_enrolled=self._enrolled,
            on_renewed=self._renewed,
        )
        log.info(
            "enrollment enabled",
            extra={"event": "enrollment_enabled", "authority": authority.authority_id},
        )
        return True

    def write_status(self, *, state: str) -> dict[str, Any]:
        """Rewrite ``status.json``; the snapshot written."""
        assert self.assembled is not None
        status = self.assembled.status()
        status.update({"pid": os.getpid(), "written_at": self._clock(), "state": state})
        if state == "stopped":
            status["draining"] = False  # it drained; it is not draining any more
        status["children"] = children(
            status,
            self.node.directory,
            self.files.peers,
            now=self._clock(),
            stale_after=3 * self.config.heartbeat_interval,
        )
        # a snapshot rewritten every status_interval: atomic for readers, no fsync (two
        # fsyncs per tick stalled this event loop for 10-30 ms on a busy disk)
        _write_json(self.files.status, status, durable=False)
        if self.files.metrics is not None:
            # world-readable like a node_exporter textfile (it holds no secret)
            keystore.write_file_atomic(
                self.files.metrics, render_metrics(status).encode(), mode=0o644, durable=False
            )
        return status

    def note_saved_revocation_list(self) -> None:
        """Tell the node the version of the ``revocation.list`` it starts with (if any)."""
        path = self.files.revocation_list
        if path.exists():
            version = _version_of(path)
            if version is not None:
                self.node._note_revocation_list(version, _read_small(path, "list"))

    def admit_peers(self) -> None:
        peers = self.files.peers
        try:
            mtime = peers.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._peers_mtime:
            return
        self._peers_mtime = mtime
        for path in sorted(peers.glob("*.cert")):
            try:
                self.node.directory.add_certificate(_read_small(path, "peer certificate"))
            except (SecureMeshError, OSError) as exc:
                log.warning(
                    "peer certificate refused",
                    extra={"event": "peer_refused", "file": path.name, "error": str(exc)},
                )

    async def sync_revocation_list(self) -> None:
        node = self.node
        path = self.files.revocation_list
        if node.revocation_list_bytes is not None:
            current = node.revocation_list_version
            on_disk = _version_of(path)
            if on_disk is None or (current is not None and current > on_disk):
                keystore.write_file_atomic(path, node.revocation_list_bytes, mode=0o644)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._rl_mtime:
            return
        self._rl_mtime = mtime
        version = _version_of(path)
        installed = _installed_version(node)
        if version is None or (installed is not None and version <= installed):
            return
        blob = _read_small(path, "revocation list")
        try:
            if node.tier.value == "cloud":
                new = SignedRevocationList.from_bytes(blob).unverified_list()
                old = node.directory.trust.revocation_list(new.issuer)
                sent = await node.publish_revocation(blob)
                if self.audit is not None:
                    self.audit.revoked(old, new)
                log.info(
                    "revocation list published",
                    extra={"event": "revocation_published", "version": version, "links": sent},
                )
            else:
                node.directory.update_revocation_list(blob)
                node._note_revocation_list(version, blob)
                node._enforce_revocation()
        except SecureMeshError as exc:
            log.warning("revocation list refused", extra={"event": "rl_refused", "error": str(exc)})

    async def save_route_evidence(self) -> None:
        """Write ``route-evidence.json`` soon after every change, until cancelled.

        A parent that crashed and lost a move would take the old attachment
        statement again (see :mod:`securemesh.node._attach`); so the evidence
        is not left for the periodic save. Changes in a burst are coalesced.
        """
        changed = self.node.route_evidence_changed
        while True:
            await changed.wait()
            changed.clear()
            evidence = self.node.route_evidence()
            try:
                await asyncio.to_thread(save_replay_marks, self.files.route_evidence, evidence)
            except (SecureMeshError, OSError) as exc:
                changed.set()  # try again after the gap
                log.warning(
                    "route evidence not saved", extra={"event": "save_error", "error": str(exc)}
                )
            await asyncio.sleep(ROUTE_EVIDENCE_SAVE_GAP)

    async def stop_saver(self) -> None:
        if self.saver is not None:
            self.saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.saver

    async def tick(self) -> None:
        now = self._monotonic()
        if now - self._replay_saved >= REPLAY_SAVE_INTERVAL and self.assembled is not None:
            self._replay_saved = now
            self.assembled.save_marks()
        if self.token_sync is not None:
            self.token_sync.refresh(self.node.directory)
        self.admit_peers()
        await self.sync_revocation_list()
        status = self.write_status(state="running")
        if self.notifier is not None:
            self.notifier.notify(STATUS=status_line(status))


class EnrollmentService(Service):
    """The daemon's enrollment serving (``enroll.request``, ``cert.renew``) as a Service.

    Wraps :meth:`_Daemon.enable_enrollment` (a cloud with ``authority/``, or an
    edge with ``delegation.cert``; otherwise it installs nothing).

    On a cloud it renews the cloud's own certificate with the root it holds, for
    the same lifetime, at ``renew_fraction`` (nobody above it could). On an
    edge it keeps its delegation alive: once ``renew_fraction`` of
    the delegation certificate's lifetime has passed (as for the node's own
    certificate) it sends the delegation in ``cert.renew`` to the cloud,
    checks the reply (:func:`~securemesh.enroll.accept_renew_reply`: same
    keys, node, tier, roles and delegation, a new serial, a chain to the
    root), writes ``delegation.cert`` atomically and issues with the new
    delegation from then on. Devices' certificates never outlive the
    delegation, so without this a fleet stopped renewing once the delegation
    expired (one day with the defaults). A failure is logged and retried
    every ``heartbeat_interval``.
    """

    name = "enrollment"

    def __init__(self, daemon: _Daemon, state: NodeState, passphrase: str) -> None:
        self._daemon = daemon
        self._state = state
        self._passphrase = passphrase
        self._ctx: NodeContext | None = None
        self.enabled = False
        self.delegation_renewals = 0
        self.delegation_failures = 0

    def install(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self.enabled = self._daemon.enable_enrollment(ctx.node, self._state, self._passphrase)

    async def start(self) -> None:
        ctx, daemon = self._ctx, self._daemon
        if ctx is None:
            return
        if daemon.delegation is not None:
            ctx.spawn(
                self._keep_renewed(
                    self._delegation, self.renew_delegation, self._delegation_failed
                ),
                name="delegation-renewal",
            )
        if daemon.root_authority is not None:
            node = ctx.node
            ctx.spawn(
                self._keep_renewed(
                    lambda: node.signed_certificate, self.renew_own_certificate, _renewal_failed
                ),
                name="own-certificate-renewal",
            )

    async def _keep_renewed(
        self,
        current: Callable[[], SignedCertificate],
        renew: Callable[[], Awaitable[SignedCertificate]],
        failed: Callable[[BaseException, bool], None],
    ) -> None:
        """Renew ``current()`` with ``renew`` once ``renew_fraction`` of its lifetime has
        passed; after a failure, ``failed(error, expired)`` and a retry every
        ``heartbeat_interval``."""
        assert self._ctx is not None
        config, clock = self._daemon.config, self._ctx.clock
        while True:
            cert = current().unverified_certificate()
            wait = renewal_due_at(cert, config.renew_fraction) - clock()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))
                continue
            try:
                await renew()
            except (TimeoutError, SecureMeshError, OSError) as exc:
                failed(exc, clock() >= cert.not_after)
                await asyncio.sleep(config.heartbeat_interval)

    async def renew_own_certificate(self) -> SignedCertificate:
        """Renew the cloud's certificate with its root now, for the same lifetime; install
        it (node.cert, the enrollment server, a hello to every child) and audit it."""
        ctx, authority = self._ctx, self._daemon.root_authority
        if ctx is None or authority is None:
            raise LocalError("only a node holding the root authority renews itself")
        node = ctx.node
        current = node.signed_certificate
        old = current.unverified_certificate()
        renewed = authority.renew(
            current, now=ctx.clock(), lifetime_s=int(old.not_after - old.not_before)
        )
        await node.install_certificate(renewed)
        if self._daemon.audit is not None:
            self._daemon.audit.renewed(node.node_id)
        cert = renewed.unverified_certificate()
        log.info(
            "certificate renewed",
            extra={"event": "cert_renewed", "serial": cert.serial, "not_after": cert.not_after},
        )
        return renewed

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {"enabled": self.enabled}
        delegation = self._daemon.delegation
        if delegation is not None:
            cert = delegation.unverified_certificate()
            out["delegation"] = {
                "serial": cert.serial,
                "not_after": cert.not_after,
                "renewals": self.delegation_renewals,
                "failures": self.delegation_failures,
            }
        return out

    def _delegation(self) -> SignedCertificate:
        assert self._daemon.delegation is not None
        return self._daemon.delegation

    def _delegation_failed(self, exc: BaseException, expired: bool) -> None:
        self.delegation_failures += 1
        log.warning(
            "delegation renewal failed"
            + ("; re-enroll the edge with a fresh --delegate token" if expired else ""),
            extra={"event": "delegation_renew_failed", "error": repr(exc)},
        )

    async def renew_delegation(self) -> SignedCertificate:
        """Renew the edge's delegation with the cloud now (``cert.renew``); the new one."""
        from securemesh.crypto.certs import DelegatedAuthority  # noqa: PLC0415
        from securemesh.enroll import (  # noqa: PLC0415
            MSG_CERT_RENEW,
            RenewReply,
            accept_renew_reply,
            build_renew_request,
        )

        ctx, daemon = self._ctx, self._daemon
        current = daemon.delegation
        if ctx is None or current is None:
            raise LocalError("this node holds no delegation")
        node = ctx.node
        target = node._renewal_target()
        if target is None or target == node.node_id:
            raise LocalError("no authority to renew the delegation with (set authority_node)")
        reply = await ctx.request(target, MSG_CERT_RENEW, build_renew_request(current))
        renewed = accept_renew_reply(
            self._state.identity, current, reply.body(RenewReply), node.directory.trust, ctx.clock()
        )
        keystore.write_file_atomic(daemon.files.delegation_certificate, renewed.to_bytes())
        node.directory.add_delegation(renewed)  # our own devices' new certificates chain to it
        daemon.enrollment_server.set_delegated_authority(
            DelegatedAuthority(renewed, self._state.identity.signer)
        )
        daemon.delegation = renewed
        self.delegation_renewals += 1
        cert = renewed.unverified_certificate()
        log.info(
            "delegation renewed",
            extra={
                "event": "delegation_renewed",
                "serial": cert.serial,
                "not_after": cert.not_after,
            },
        )
        return renewed


def _renewal_failed(exc: BaseException, expired: bool) -> None:
    log.warning(
        "certificate renewal failed" + ("; the certificate has expired" if expired else ""),
        extra={"event": "cert_renew_failed", "error": repr(exc), "expired": expired},
    )


def _as_services(services: Iterable[Service | LegacyRegister]) -> list[Service]:
    out: list[Service] = []
    for i, service in enumerate(services):
        out.append(service if isinstance(service, Service) else LegacyService(service, f"app-{i}"))
    return out


def _version_of(path: Path) -> int | None:
    try:
        return (
            SignedRevocationList.from_bytes(_read_small(path, "revocation list"))
            .unverified_list()
            .version
        )
    except (ConfigError, CertificateError):
        return None


def _version_of_blob(blob: bytes) -> int | None:
    try:
        return SignedRevocationList.from_bytes(blob).unverified_list().version
    except CertificateError:
        return None


def _installed_version(node: MeshNode) -> int | None:
    versions = [
        rl.version
        for root in node.directory.trust.roots
        if (rl := node.directory.trust.revocation_list(root)) is not None
    ]
    return max(versions) if versions else None


async def _assemble(
    daemon: _Daemon,
    passphrase: str,
    services: Iterable[Service | LegacyRegister],
    *,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
) -> AssembledNode:
    """The daemon's node: enrollment, then ``node.toml``'s services, then ``services``."""
    config, files = daemon.config, daemon.files
    state = load_node_state(config, passphrase, now=clock())
    # the cloud's log key is sealed like the identity: same passphrase, same KDF cost
    key_kdf = keystore.kdf_params_of(_read_small(files.identity, "identity"))
    material = NodeMaterial(
        data_dir=files.data_dir,
        identity=state.identity,
        certificate=state.certificate,
        trust=state.trust,
        authority_certificate=state.authority_certificate,
    )
    try:
        assembled = await assemble_node(
            config,
            material,
            [
                EnrollmentService(daemon, state, passphrase),
                *load_services(config.services),
                *_as_services(services),
            ],
            clock=clock,
            monotonic=monotonic,
            key_passphrase=(passphrase, key_kdf),
        )
    except ConfigError:
        raise
    except (LocalError, CertificateError) as exc:
        raise ConfigError(f"cannot start node: {exc}") from exc
    daemon.assembled = assembled
    daemon.audit = assembled.audit
    return assembled


async def run_node(
    config: NodeConfig,
    *,
    passphrase: str,
    services: Iterable[Service | LegacyRegister] = (),
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives; return the exit code.

    ``clock`` (Unix seconds) and ``monotonic`` reach the node, its directory,
    its audit and the daemon's own bookkeeping. ``services``:
    :class:`~securemesh.node.Service` objects (or legacy ``register(node)``
    functions), installed after enrollment and the ``services`` of ``node.toml``.
    """
    files = NodeFiles.of(config)
    notifier = SystemdNotifier.from_environment()
    daemon = _Daemon(config, files, clock=clock, monotonic=monotonic, notifier=notifier)
    assembled = await _assemble(daemon, passphrase, services, clock=clock, monotonic=monotonic)
    node = assembled.node
    daemon.note_saved_revocation_list()
    node.on_certificate.append(
        lambda signed: keystore.write_file_atomic(files.certificate, signed.to_bytes())
    )
    daemon.admit_peers()
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    started = False
    watchdog: asyncio.Task[None] | None = None
    try:
        await assembled.start()
        daemon.saver = asyncio.create_task(daemon.save_route_evidence())
        started = True
        ready = {"pid": os.getpid(), "node_id": node.node_id, "listen": node.address}
        _write_json(files.ready, ready)
        status = daemon.write_status(state="running")
        log.info("ready", extra={"event": "ready", **ready})
        watchdog = _notify_ready(notifier, status)
        while not stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), config.status_interval)
            if not stop_event.is_set():
                try:
                    await daemon.tick()
                except (SecureMeshError, OSError) as exc:
                    log.warning(
                        "status tick failed", extra={"event": "tick_error", "error": str(exc)}
                    )
        log.info("stopping", extra={"event": "stopping", "node_id": node.node_id})
    finally:
        await _notify_stopping(notifier, watchdog)
        with contextlib.suppress(FileNotFoundError):
            files.ready.unlink()
        await daemon.stop_saver()
        await assembled.stop(config.limits.drain_timeout)
        with contextlib.suppress(SecureMeshError, OSError):
            assembled.save_marks()
        # A node that never started (its port in use, ...) leaves status.json alone.
        with contextlib.suppress(SecureMeshError, OSError):
            if started:
                daemon.write_status(state="stopped")
        assembled.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped", extra={"event": "stopped", "node_id": node.node_id})
    return 0


def _notify_ready(
    notifier: SystemdNotifier | None, status: Mapping[str, Any]
) -> asyncio.Task[None] | None:
    """``READY=1`` to the service manager; the watchdog task if it asked for pings."""
    if notifier is None:
        return None
    notifier.notify(READY=1, MAINPID=os.getpid(), STATUS=status_line(status))
    interval = notifier.watchdog_interval
    return None if interval is None else asyncio.create_task(_watchdog(notifier, interval))


async def _notify_stopping(
    notifier: SystemdNotifier | None, watchdog: asyncio.Task[None] | None
) -> None:
    """``STOPPING=1`` (the drain starts), then no more pings and no more messages."""
    if watchdog is not None:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    if notifier is not None:
        notifier.notify(STOPPING=1, STATUS="draining")
        notifier.close()


async def _watchdog(notifier: SystemdNotifier, interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` s from this loop: a wedged loop stops the pings."""
    while True:
        notifier.notify(WATCHDOG=1)
        await asyncio.sleep(interval)


def status_line(status: Mapping[str, Any]) -> str:
    """One line for the service manager (``systemctl status``) from a status snapshot."""
    parts = [f"{status.get('state', '?')}", f"{len(status.get('children') or ())} children"]
    parent = status.get("parent")
    if isinstance(parent, dict):
        parts.append(f"parent {'connected' if parent.get('connected') else 'unreachable'}")
    counters = status.get("counters")
    if isinstance(counters, dict):
        parts.append(f"{counters.get('accepted', 0)} accepted")
        parts.append(f"{counters.get('rejected', 0)} rejected")
    return ", ".join(parts)


def run_daemon(
    config_path: str | os.PathLike[str],
    *,
    services: Iterable[Service | LegacyRegister] = (),
    passphrase_file: str | os.PathLike[str] | None = None,
) -> int:
    """``securemesh node run``: load the config, configure JSON logs, run until a signal.

    The passphrase variable is scrubbed from the environment (also from
    ``/proc/<pid>/environ``) before anything else starts (:mod:`._secrets`).
    """
    config = load_config(Path(config_path))
    configure_logging(config.log_level)
    passphrase = load_passphrase(config, passphrase_file=passphrase_file)
    scrub_environment(PASSPHRASE_ENV)
    return asyncio.run(run_node(config, passphrase=passphrase, services=services))


def read_status(config: NodeConfig, *, now: float | None = None) -> dict[str, Any]:
    """``securemesh node status``: the daemon's last ``status.json`` plus liveness facts
    (``age_s`` against ``now``, Unix seconds, default the clock)."""
    files = NodeFiles.of(config)
    raw = _read_small(files.status, "status file (is the daemon running?)")
    try:
        status = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"status file {files.status} is not JSON") from exc
    if not isinstance(status, dict):
        raise ConfigError(f"status file {files.status} is not a JSON object")
    written = status.get("written_at")
    at = time.time() if now is None else now
    status["age_s"] = round(at - written, 3) if isinstance(written, int | float) else None
    pid = status.get("pid")
    alive = False
    if isinstance(pid, int) and pid > 0 and files.ready.exists():
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    status["alive"] = alive
    return status
