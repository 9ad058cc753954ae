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
2. **Run** a :class:`~securemesh.node.MeshNode` over
   :class:`~securemesh.transport.ZmqTransport` (CurveZMQ + ZAP backed by the
   node's :class:`~securemesh.node.Directory`), with a persistent
   :class:`~securemesh.wire.SequenceCounter` (``sequence.state``) so a restart
   never reuses a sequence number.
3. **Ready**: once listening (and, for a node with a parent, once the sockets
   exist) it writes ``ready`` (JSON: pid, node id, listen address) and logs
   one line with ``"event": "ready"``.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securemesh._fileio import read_small_file
from securemesh.crypto import keystore
from securemesh.crypto.certs import SignedCertificate, SignedRevocationList, TrustStore
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_decode
from securemesh.errors import (
    CertificateError,
    ConfigError,
    KeyStoreError,
    LocalError,
    SecureMeshError,
)
from securemesh.node._audit_bus import OUTBOX_FILE, NodeAudit
from securemesh.node._config import NodeConfig, load_config
from securemesh.node._directory import Directory
from securemesh.node._node import MeshNode

if TYPE_CHECKING:
    from securemesh.transport import ZmqTransport

__all__ = [
    "PASSPHRASE_ENV",
    "JsonLogFormatter",
    "NodeFiles",
    "configure_logging",
    "load_node_state",
    "load_services",
    "read_status",
    "run_daemon",
    "run_node",
]

log = logging.getLogger("securemesh.daemon")

PASSPHRASE_ENV = "SECUREMESH_PASSPHRASE"  # noqa: S105 - a variable name
_MAX_SMALL_FILE = 4 * 1024 * 1024
#: Seconds between saves of the replay high-water marks while running (and at stop).
REPLAY_SAVE_INTERVAL = 30.0

#: ``service(node)`` registers handlers on a node before it starts.
Service = Callable[[MeshNode], None]


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """Paths inside a node's data directory (layout in :mod:`securemesh.node._config`)."""

    data_dir: Path

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
        return cls(Path(config.data_dir))


def write_trust_file(path: Path, roots: dict[str, bytes]) -> None:
    """Write ``trust.json`` (helper for ``securemesh init`` and tests)."""
    from securemesh.messages import b64e  # noqa: PLC0415

    data = {"roots": {name: b64e(key) for name, key in sorted(roots.items())}}
    keystore.write_file_atomic(path, json.dumps(data, indent=2).encode() + b"\n", mode=0o644)


def _read_small(path: Path, what: str) -> bytes:
    return read_small_file(path, limit=_MAX_SMALL_FILE, what=what)


def load_replay_marks(path: Path, *, what: str = "replay state") -> dict[str, int]:
    """``{node id: sequence}`` JSON (``replay.json``, ``route-evidence.json``).

    Empty if missing, :class:`ConfigError` if corrupt.
    """
    if not path.exists():
        return {}
    try:
        data = json.loads(_read_small(path, what))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        marks: dict[str, int] = {}
        for key, value in data.items():
            if not isinstance(key, str) or type(value) is not int or not 0 <= value < 2**64:
                raise ValueError("entries are node id -> u64")
            marks[key] = value
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is corrupt: {exc}") from exc
    return marks


def save_replay_marks(path: Path, marks: dict[str, int]) -> None:
    keystore.write_file_atomic(path, json.dumps(marks, sort_keys=True).encode(), mode=0o600)


def load_passphrase(config: NodeConfig) -> str:
    """The identity passphrase: ``passphrase_file`` if set, else ``$SECUREMESH_PASSPHRASE``."""
    if config.passphrase_file is not None:
        text = _read_small(Path(config.passphrase_file), "passphrase file").decode(
            "utf-8", "strict"
        )
        value = text.rstrip("\r\n")
    else:
        value = os.environ.get(PASSPHRASE_ENV, "")
        if not value:
            raise ConfigError(
                f"no passphrase: set {PASSPHRASE_ENV} or passphrase_file in node.toml"
            )
    if not value:
        raise ConfigError("the passphrase is empty")
    return value


def load_trust(files: NodeFiles) -> TrustStore:
    """``trust.json`` roots plus ``revocation.list`` (if present), verified.

    :func:`~securemesh.enroll._state.read_trust` (the same files an enrollment
    wrote), with a daemon's errors: ConfigError, and a trust file naming no
    root is one.
    """
    from securemesh.enroll._state import read_trust  # noqa: PLC0415

    try:
        trust = read_trust(files.data_dir)
    except (SecureMeshError, OSError) as exc:
        raise ConfigError(f"invalid trust in {files.data_dir}: {exc}") from exc
    if not trust.roots:
        raise ConfigError(f"trust file {files.trust} names no root")
    return trust


def zmq_transport(config: NodeConfig, identity: NodeIdentity, directory: Directory) -> ZmqTransport:
    """The node's ZeroMQ transport: its CURVE key, ZAP by ``directory``, ``[limits]`` queues.

    pyzmq is imported here, not when this module is. Daemons and SDK devices
    build theirs alike.
    """
    from securemesh.transport import CurveKeyPair, TransportOptions, ZmqTransport  # noqa: PLC0415

    lim = config.limits
    options = TransportOptions(
        sndhwm=lim.sndhwm,
        rcvhwm=lim.rcvhwm,
        send_timeout=lim.send_timeout,
        max_frame_size=max(lim.max_raw_frame, lim.max_body, 4096),
        max_frames=lim.max_frames,
        # the whole message: the envelope's own max_total (MeshNode's wire limits)
        max_message_size=max(64 * 1024 * 1024, lim.max_body + lim.max_raw_frame),
        max_pending_handshakes=lim.max_pending_handshakes,
        max_pending_per_address=lim.max_pending_per_address,
        accept_burst=lim.accept_burst,
        accept_rate=lim.accept_rate,
        fd_reserve=lim.fd_reserve,
        log_window=lim.log_window,
    )
    keypair = CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))
    return ZmqTransport(keypair, authenticator=directory.authenticate, options=options)


@dataclass
class NodeState:
    """Everything loaded from the data directory."""

    identity: NodeIdentity
    certificate: SignedCertificate
    authority_certificate: SignedCertificate | None
    trust: TrustStore


def load_node_state(config: NodeConfig, passphrase: str) -> NodeState:
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
                now=time.time(),
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode() + b"\n"
    keystore.write_file_atomic(path, payload, mode=0o644)


class _Daemon:
    def __init__(self, config: NodeConfig, node: MeshNode, files: NodeFiles) -> None:
        self.config = config
        self.node = node
        self.files = files
        self._peers_mtime = -1.0
        self._rl_mtime = -1.0
        self.token_sync: Any = None
        self._replay_saved = time.monotonic()
        self.audit: NodeAudit | None = None

    def _enrolled(self, node_id: str) -> None:
        if self.token_sync is not None:
            self.token_sync.refresh(self.node.directory)
        self._save_peer(node_id)
        if self.audit is not None:
            self.audit.enrolled(node_id)

    def _renewed(self, node_id: str) -> None:
        self._save_peer(node_id)
        if self.audit is not None:
            self.audit.renewed(node_id)

    def _save_peer(self, node_id: str) -> None:
        """Keep a certificate this node issued in ``peers/`` so a restart still admits it."""
        signed = self.node.directory.signed_certificate(node_id)
        if signed is None or "/" in node_id or node_id.startswith("."):
            return
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

    def enable_enrollment(self, state: NodeState, passphrase: str) -> None:
        """Serve enrollment if this data dir holds an authority (cloud) or a delegation (edge)."""
        root_dir = self.files.data_dir / "authority"
        delegated = self.files.delegation_certificate.exists()
        if not (root_dir / "authority.json").exists() and not delegated:
            return
        from securemesh.crypto.certs import Authority, DelegatedAuthority  # noqa: PLC0415
        from securemesh.enroll import EnrollmentServer, TokenKeySync, TokenStore  # noqa: PLC0415
        from securemesh.node._enroll import serve_enrollment  # noqa: PLC0415

        node = self.node
        authority: Authority | DelegatedAuthority
        if (root_dir / "authority.json").exists():
            try:
                authority = Authority.load(root_dir, passphrase)
            except KeyStoreError as exc:
                raise ConfigError(f"authority in {root_dir}: {exc}") from exc
        else:
            authority = DelegatedAuthority(
                _read_small(self.files.delegation_certificate, "delegation certificate"),
                state.identity.signer,
            )

        def current_list() -> SignedRevocationList:
            blob = node.revocation_list_bytes
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

    def write_status(self, *, state: str) -> None:
        status = self.node.status()
        status.update({"pid": os.getpid(), "written_at": time.time(), "state": state})
        if self.audit is not None:
            status["audit"] = self.audit.status()
        _write_json(self.files.status, status)

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

    async def tick(self) -> None:
        now = time.monotonic()
        if now - self._replay_saved >= REPLAY_SAVE_INTERVAL:
            self._replay_saved = now
            save_replay_marks(self.files.replay, self.node.replay_high_water_marks())
            save_replay_marks(self.files.route_evidence, self.node.route_evidence())
        if self.token_sync is not None:
            self.token_sync.refresh(self.node.directory)
        self.admit_peers()
        await self.sync_revocation_list()
        self.write_status(state="running")


def load_services(entries: Iterable[str]) -> list[Service]:
    """Import ``"module:function"`` entries from the configuration (ConfigError if missing)."""
    import importlib  # noqa: PLC0415

    loaded: list[Service] = []
    for entry in entries:
        module_name, _, attr = entry.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"service {entry!r} cannot be loaded: {exc}") from exc
        if not callable(func):
            raise ConfigError(f"service {entry!r} is not callable")
        loaded.append(func)
    return loaded


def _version_of(path: Path) -> int | None:
    try:
        return (
            SignedRevocationList.from_bytes(_read_small(path, "revocation list"))
            .unverified_list()
            .version
        )
    except (ConfigError, CertificateError):
        return None


def _installed_version(node: MeshNode) -> int | None:
    versions = [
        rl.version
        for root in node.directory.trust.roots
        if (rl := node.directory.trust.revocation_list(root)) is not None
    ]
    return max(versions) if versions else None


async def run_node(  # noqa: PLR0915 - start-up, run and shutdown in order
    config: NodeConfig,
    *,
    passphrase: str,
    services: Iterable[Service] = (),
    stop: asyncio.Event | None = None,
) -> int:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives; return the exit code."""
    from securemesh.wire import SequenceCounter  # noqa: PLC0415

    files = NodeFiles.of(config)
    state = load_node_state(config, passphrase)
    directory = Directory(state.trust)
    transport = zmq_transport(config, state.identity, directory)
    counter = SequenceCounter(files.sequence)
    try:
        node = MeshNode(
            config,
            state.identity,
            state.certificate,
            directory,
            transport,
            sequence=counter.next,
            authority_certificate=state.authority_certificate,
            replay_restore=load_replay_marks(files.replay),
            route_evidence_restore=load_replay_marks(files.route_evidence, what="route evidence"),
        )
    except (LocalError, CertificateError) as exc:
        await transport.close()
        counter.close()
        raise ConfigError(f"cannot start node: {exc}") from exc
    if files.revocation_list.exists():
        version = _version_of(files.revocation_list)
        if version is not None:
            node._note_revocation_list(version, _read_small(files.revocation_list, "list"))
    node.on_certificate.append(
        lambda signed: keystore.write_file_atomic(files.certificate, signed.to_bytes())
    )
    daemon = _Daemon(config, node, files)
    try:
        audit = daemon.audit = NodeAudit.open(config, node, files.data_dir, state.identity.signer)
        daemon.enable_enrollment(state, passphrase)
        for service in [*load_services(config.services), *services]:
            service(node)
    except BaseException:
        await transport.close()
        counter.close()
        if daemon.audit is not None:
            daemon.audit.close()
        raise
    daemon.admit_peers()
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    try:
        await node.start()
        audit.start()
        ready = {"pid": os.getpid(), "node_id": node.node_id, "listen": node.address}
        _write_json(files.ready, ready)
        daemon.write_status(state="running")
        log.info("ready", extra={"event": "ready", **ready})
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
        with contextlib.suppress(FileNotFoundError):
            files.ready.unlink()
        await audit.stop()
        await node.stop(config.limits.drain_timeout)
        with contextlib.suppress(SecureMeshError, OSError):
            save_replay_marks(files.replay, node.replay_high_water_marks())
            save_replay_marks(files.route_evidence, node.route_evidence())
        with contextlib.suppress(SecureMeshError, OSError):
            daemon.write_status(state="stopped")
        counter.close()
        audit.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped", extra={"event": "stopped", "node_id": node.node_id})
    return 0


def run_daemon(config_path: str | os.PathLike[str], *, services: Iterable[Service] = ()) -> int:
    """``securemesh node run``: load the config, configure JSON logs, run until a signal."""
    config = load_config(Path(config_path))
    configure_logging(config.log_level)
    passphrase = load_passphrase(config)
    return asyncio.run(run_node(config, passphrase=passphrase, services=services))


def read_status(config: NodeConfig) -> dict[str, Any]:
    """``securemesh node status``: the daemon's last ``status.json`` plus liveness facts."""
    files = NodeFiles.of(config)
    raw = _read_small(files.status, "status file (is the daemon running?)")
    try:
        status = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"status file {files.status} is not JSON") from exc
    if not isinstance(status, dict):
        raise ConfigError(f"status file {files.status} is not a JSON object")
    written = status.get("written_at")
    status["age_s"] = round(time.time() - written, 3) if isinstance(written, int | float) else None
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
