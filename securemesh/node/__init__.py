"""``securemesh.node``: the mesh node runtime (links, verification pipeline, routing, daemon).

* :class:`MeshNode` — the asyncio runtime of one node over a
  :class:`~securemesh.transport.Transport` (see :mod:`securemesh.node._node`).
* :class:`Directory` — known certificates and token keys; the default-deny
  CURVE-key authenticator.
* :class:`Pipeline` / :class:`VerifiedMessage` / :class:`Rejection` — the
  per-message verification steps and their two possible outcomes.
* :class:`NodeConfig` / :func:`load_config` — ``node.toml``.
* :func:`serve_enrollment` — answer ``enroll.request``/``cert.renew`` with a
  :class:`securemesh.enroll.EnrollmentServer`; :class:`RejectionAuditor` — the
  audit hook writing signed ``message.rejected`` events to an outbox.
* :func:`no_reply_message` — the text of a request's ``TimeoutError`` (peer, type,
  time waited, and that a refused request gets no reply).
* :class:`Service` / :class:`NodeContext` / :class:`ServiceHost` — the service
  seam (docs/services.md); :class:`QueuedAuditRecorder` (a node's non-blocking
  audit recorder) and :class:`NullAuditRecorder` (for unit tests);
  :func:`combine_policies` — a service's policy AND the operator's;
  :func:`verify_statement` — check a service's ``ctx.sign_statement`` signature.
* :func:`assemble_node` / :class:`AssembledNode` / :class:`NodeMaterial` — build
  a node with its audit and services, for the daemon and the SDK device alike
  (imported lazily: pyzmq).
* :func:`run_daemon` / :func:`run_node` / :func:`read_status` — ``securemesh
  node run|status`` (imported lazily: they load the daemon module and pyzmq);
  :func:`render_metrics` — a status snapshot in the Prometheus text format
  (``securemesh node metrics``, ``metrics_file``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.node._audit import RejectionAuditor
from securemesh.node._config import (
    LimitsConfig,
    NodeConfig,
    ParentConfig,
    SessionConfig,
    load_config,
    parse_curve_key,
)
from securemesh.node._directory import Directory, DirectoryEntry
from securemesh.node._enroll import serve_enrollment
from securemesh.node._exposition import render_metrics
from securemesh.node._metrics import AuditHook, Metrics, Rejection
from securemesh.node._node import Handler, MeshNode, Reply, no_reply_message
from securemesh.node._pipeline import (
    FirstContactMessage,
    FirstContactResolver,
    Pipeline,
    VerifiedMessage,
)
from securemesh.node._policy import combine_policies
from securemesh.node._service import (
    AuditRecorderLike,
    CertificateView,
    LegacyService,
    NodeContext,
    NullAuditRecorder,
    QueuedAuditRecorder,
    Service,
    ServiceHost,
    load_services,
    verify_statement,
)

if TYPE_CHECKING:
    from securemesh.node._assemble import AssembledNode, NodeMaterial, assemble_node
    from securemesh.node._daemon import NodeFiles, read_status, run_daemon, run_node

__all__ = [
    "AssembledNode",
    "AuditHook",
    "AuditRecorderLike",
    "CertificateView",
    "Directory",
    "DirectoryEntry",
    "FirstContactMessage",
    "FirstContactResolver",
    "Handler",
    "LegacyService",
    "LimitsConfig",
    "MeshNode",
    "Metrics",
    "NodeConfig",
    "NodeContext",
    "NodeFiles",
    "NodeMaterial",
    "NullAuditRecorder",
    "ParentConfig",
    "Pipeline",
    "QueuedAuditRecorder",
    "Rejection",
    "RejectionAuditor",
    "Reply",
    "Service",
    "ServiceHost",
    "SessionConfig",
    "VerifiedMessage",
    "assemble_node",
    "combine_policies",
    "load_config",
    "load_services",
    "no_reply_message",
    "parse_curve_key",
    "read_status",
    "render_metrics",
    "run_daemon",
    "run_node",
    "serve_enrollment",
    "verify_statement",
]

_LAZY = {"NodeFiles", "read_status", "run_daemon", "run_node"}
_LAZY_ASSEMBLE = {"AssembledNode", "NodeMaterial", "assemble_node"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from securemesh.node import _daemon  # noqa: PLC0415 - lazy: the daemon pulls in more

        return getattr(_daemon, name)
    if name in _LAZY_ASSEMBLE:
        from securemesh.node import _assemble  # noqa: PLC0415 - lazy: sqlite3, pyzmq

        return getattr(_assemble, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
