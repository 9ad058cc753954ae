"""``assemble_node``: one way to build a running node, for the daemon and the SDK device alike.

Theory of operation
-------------------
:func:`assemble_node` (a coroutine) takes a node's configuration, what was loaded from its
data directory (:class:`NodeMaterial`: identity, certificate, trust, ...) and
the services to run, and builds, in this order:

1. the :class:`~securemesh.node.Directory` over the trust store, then the
   ZeroMQ transport whose ZAP handler it backs (:func:`zmq_transport`);
2. the persistent envelope counter (``sequence.state``) and the
   :class:`~securemesh.node.MeshNode`, with the replay high-water marks and
   route evidence restored (``replay.json``, ``route-evidence.json``);
3. the node's audit (``audit-outbox.db``, rejection hook, shipper, and on a
   cloud the ``audit.append`` ingest), installed as the first
   :class:`~securemesh.node.Service` (``audit``), and the non-blocking
   :class:`~securemesh.node.QueuedAuditRecorder` every service records through;
4. the :class:`~securemesh.node.ServiceHost` with the given services installed
   in order (the daemon passes its enrollment service first, then those of
   ``node.toml``), and the node's ``node.report`` filled from ``[report]`` and
   the installed services' names.

The returned :class:`AssembledNode` starts (node, then services) and stops
(services in reverse order, then the node), saves the replay marks and closes
everything it opened. On any failure while assembling, what was already
opened is closed again before the error propagates.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securemesh._fileio import read_small_file
from securemesh.errors import ConfigError
from securemesh.node._service import QueuedAuditRecorder, Service, ServiceHost

if TYPE_CHECKING:
    from securemesh.crypto.certs import SignedCertificate, TrustStore
    from securemesh.crypto.identity import NodeIdentity
    from securemesh.crypto.keystore import KdfParams
    from securemesh.node._audit_bus import NodeAudit
    from securemesh.node._config import NodeConfig
    from securemesh.node._directory import Directory
    from securemesh.node._node import MeshNode
    from securemesh.node._service import NodeContext
    from securemesh.transport import ZmqTransport
    from securemesh.wire import SequenceCounter

__all__ = [
    "AssembledNode",
    "NodeMaterial",
    "assemble_node",
    "load_replay_marks",
    "save_replay_marks",
    "zmq_transport",
]

REPLAY_FILE = "replay.json"
ROUTE_EVIDENCE_FILE = "route-evidence.json"
SEQUENCE_FILE = "sequence.state"


def load_replay_marks(path: Path, *, what: str = "replay state") -> dict[str, int]:
    """``{node id: sequence}`` JSON (``replay.json``, ``route-evidence.json``).

    Empty if missing, :class:`ConfigError` if corrupt.
    """
    if not path.exists():
        return {}
    try:
        data = json.loads(read_small_file(path, limit=4 * 1024 * 1024, what=what))
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


def save_replay_marks(path: Path, marks: Mapping[str, int]) -> None:
    from securemesh.crypto import keystore  # noqa: PLC0415

    keystore.write_file_atomic(path, json.dumps(dict(marks), sort_keys=True).encode(), mode=0o600)


def zmq_transport(config: NodeConfig, identity: NodeIdentity, directory: Directory) -> ZmqTransport:
    """The node's ZeroMQ transport: its CURVE key, ZAP by ``directory``, ``[limits]`` queues.

    pyzmq is imported here, not when this module is.
    """
    from securemesh.crypto.z85 import z85_decode  # noqa: PLC0415
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
        memory_budget=lim.memory_budget,
    )
    keypair = CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))
    return ZmqTransport(keypair, authenticator=directory.authenticate, options=options)


def _memory_trip_recorder(node: MeshNode, clock: Callable[[], float]) -> Callable[[int], None]:
    """A listener's memory guard tripped: a ``memory_guard`` drop (counted, logged, audited).

    No peer is named: libzmq attributes no bytes to connections, so every
    connection of the listener was cut (securemesh/transport/_memguard.py).
    """
    from securemesh.node._metrics import Rejection  # noqa: PLC0415

    def record(cut: int) -> None:
        node.metrics.drop(
            Rejection(
                "memory_guard",
                None,
                None,
                None,
                f"memory budget exceeded: cut {cut} connections of the listener",
                clock(),
            )
        )

    return record


@dataclass(frozen=True, slots=True)
class NodeMaterial:
    """What a node is made of, as loaded (and checked) from its data directory."""

    data_dir: Path
    identity: NodeIdentity
    certificate: SignedCertificate
    trust: TrustStore
    authority_certificate: SignedCertificate | None = None


class AuditShipping(Service):
    """The runtime's audit (outbox shipping; on a cloud also ingest) as a Service.

    Wraps :class:`~securemesh.node._audit_bus.NodeAudit`, opened by
    :func:`assemble_node` before any other service so that they can record.
    """

    name = "audit"

    def __init__(self, audit: NodeAudit, recorder: QueuedAuditRecorder) -> None:
        self.audit = audit
        self.recorder = recorder

    def install(self, ctx: NodeContext) -> None:
        return None  # NodeAudit.open already hooked rejections and the ingest handler

    async def start(self) -> None:
        self.audit.start()

    async def stop(self) -> None:
        await self.audit.stop()

    def status(self) -> Mapping[str, object]:
        out = self.audit.status()
        out["service_events"] = self.recorder.status()
        return out


class AssembledNode:
    """A node built by :func:`assemble_node`: start, stop, close, status."""

    def __init__(
        self,
        *,
        config: NodeConfig,
        data_dir: Path,
        node: MeshNode,
        counter: SequenceCounter,
        audit: NodeAudit,
        recorder: QueuedAuditRecorder,
        host: ServiceHost,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.node = node
        self.counter = counter
        self.audit = audit
        self.recorder = recorder
        self.services = host
        self._closed = False

    async def start(self) -> None:
        """Listen/connect, then start the services (audit shipping first)."""
        await self.node.start()
        await self.services.start()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop the services (reverse order, tasks cancelled), then the node; save marks."""
        try:
            await self.services.stop()
        finally:
            await self.node.stop(drain_timeout)

    def save_marks(self) -> None:
        """Persist replay high-water marks (and route evidence) so a restart keeps them."""
        save_replay_marks(self.data_dir / REPLAY_FILE, self.node.replay_high_water_marks())
        if self.node.tier.value != "end":
            save_replay_marks(self.data_dir / ROUTE_EVIDENCE_FILE, self.node.route_evidence())

    def close(self) -> None:
        """Close the recorder thread, the counter and the audit stores (after :meth:`stop`)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.recorder.close()
        finally:
            try:
                self.counter.close()
            finally:
                self.audit.close()

    def status(self) -> dict[str, object]:
        status = self.node.status()
        status["audit"] = self.audit.status()
        status["services"] = self.services.status()
        return status


def _report_fields(config: NodeConfig, host: ServiceHost) -> Callable[[], dict[str, object]]:
    # optional report fields are absent, not empty (protocol.md §3.1)
    static: dict[str, Any] = {
        k: v for k, v in config.report.model_dump(exclude_none=True).items() if v != {}
    }

    def fields() -> dict[str, object]:
        return {**static, "services": host.names()[:64]}

    return fields


async def assemble_node(
    config: NodeConfig,
    files: NodeMaterial,
    services: Iterable[Service] = (),
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    rng: Callable[[int], bytes] = os.urandom,
    key_passphrase: tuple[str, KdfParams] | None = None,
) -> AssembledNode:
    """Build a node (transport, node, audit, services) ready to :meth:`~AssembledNode.start`.

    A coroutine (call it on the loop the node will run on). ``clock`` (Unix
    seconds), ``monotonic`` and ``rng`` reach the node, its directory, its audit
    and the services. ``key_passphrase`` (passphrase, KDF cost) seals a cloud's
    audit-log key in the key store (the daemon passes the identity's).

    Raises :class:`~securemesh.errors.ConfigError` for unusable services or
    audit stores, and what :class:`MeshNode` raises for a certificate that does
    not fit the identity or configuration (LocalError, CertificateError);
    whatever was opened is closed again.
    """
    from securemesh.node._audit_bus import NodeAudit  # noqa: PLC0415 - sqlite3, pydantic
    from securemesh.node._directory import Directory  # noqa: PLC0415
    from securemesh.node._node import MeshNode  # noqa: PLC0415
    from securemesh.wire import SequenceCounter  # noqa: PLC0415

    data_dir = files.data_dir
    directory = Directory(files.trust, clock=clock)
    replay = load_replay_marks(data_dir / REPLAY_FILE)
    evidence = load_replay_marks(data_dir / ROUTE_EVIDENCE_FILE, what="route evidence")
    counter = SequenceCounter(data_dir / SEQUENCE_FILE)
    transport: ZmqTransport | None = None
    audit: NodeAudit | None = None
    recorder: QueuedAuditRecorder | None = None
    try:
        transport = zmq_transport(config, files.identity, directory)
        node = MeshNode(
            config,
            files.identity,
            files.certificate,
            directory,
            transport,
            clock=clock,
            monotonic=monotonic,
            rng=rng,
            sequence=counter.next,
            authority_certificate=files.authority_certificate,
            replay_restore=replay,
            route_evidence_restore=evidence,
        )
        audit = NodeAudit.open(
            config,
            node,
            data_dir,
            files.identity.signer,
            clock=clock,
            key_passphrase=key_passphrase,
        )
        recorder = QueuedAuditRecorder(
            audit.outbox, origin=node.node_id, signer=files.identity.signer, clock=clock
        )
        recorder.wake = audit.shipper.wake
        transport.on_memory_trip = _memory_trip_recorder(node, clock)
        host = ServiceHost(node, audit=recorder, data_dir=data_dir, clock=clock, rng=rng)
        host.install(AuditShipping(audit, recorder))
        for service in services:
            host.install(service)
        node.report_fields = _report_fields(config, host)
    except BaseException:
        if recorder is not None:
            recorder.close()
        if audit is not None:
            audit.close()
        counter.close()
        if transport is not None:
            await transport.close()
        raise
    return AssembledNode(
        config=config,
        data_dir=data_dir,
        node=node,
        counter=counter,
        audit=audit,
        recorder=recorder,
        host=host,
    )
