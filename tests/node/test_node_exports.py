"""Lock the public surface of securemesh.node and securemesh.messages; keep the import light."""

from __future__ import annotations

import subprocess
import sys

import securemesh.messages
import securemesh.node

EXPECTED = {
    securemesh.node: {
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
    },
    securemesh.messages: {
        "Ack",
        "B64",
        "CERT_LOOKUP",
        "CertLookup",
        "ERROR_MESSAGE_MAX",
        "ErrorReply",
        "MAX_REPORT_LABELS",
        "MAX_REPORT_SERVICES",
        "MESH_ERROR",
        "MESH_PING",
        "MESH_REVOCATION",
        "MeshMessage",
        "NODE_HELLO",
        "NODE_REPORT",
        "NodeHello",
        "NodeReport",
        "REVOCATION_SYNC",
        "ROUTE_ANNOUNCE",
        "Revocation",
        "RevocationSync",
        "RouteAnnounce",
        "SESSION_FINISH",
        "SESSION_HELLO",
        "SESSION_RESET",
        "SessionData",
        "b64d",
        "b64e",
    },
}


def test_public_surface_is_locked() -> None:
    for module, names in EXPECTED.items():
        assert set(module.__all__) == names, module.__name__
        for name in names:
            assert getattr(module, name) is not None


def test_importing_the_node_runtime_stays_light() -> None:
    code = (
        "import sys, securemesh.node, securemesh.messages\n"
        "heavy = [m for m in ('zmq', 'sqlalchemy', 'numpy', 'tenseal', 'securemesh.cli',"
        " 'securemesh.node._daemon') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
