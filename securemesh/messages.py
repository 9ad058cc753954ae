"""Bodies of the mesh's own message types: strict pydantic models, unknown keys refused.

Theory of operation
-------------------
Every envelope body is UTF-8 JSON parsed with
``Model.model_validate_json(body, strict=True)`` (see :meth:`securemesh.wire.Envelope.body`).
The models here set ``strict=True, extra="forbid", frozen=True`` so that a body
is accepted only in exactly the shape written here: no coercion ("1" is not 1),
no unknown keys, bounded lengths. Binary values (certificates, handshake
messages) travel as unpadded base64url strings (RFC 4648 §5) and are decoded
strictly by :func:`b64d`; bulk values (a revocation list of up to 1 MiB) travel
in raw frames instead, because a body is at most 64 KiB.

Message types of the node layer (the enrollment types ``enroll.request``,
``enroll.reply`` and ``cert.renew`` live in :mod:`securemesh.enroll`):

=====================  =====================  ==========================================
type                   body                   meaning
=====================  =====================  ==========================================
``node.hello``         :class:`NodeHello`     first message on a link (REQUEST) and its
                                              REPLY: the sender's certificate first, then
                                              certificates the receiver may need (issuing
                                              delegate, ancestors); re-sent after renewal
``node.report``        :class:`NodeReport`    heartbeat/resource report to the parent
                                              (REQUEST; the REPLY is :class:`Ack`)
``route.announce``     :class:`RouteAnnounce` an edge tells its parent which nodes it
                                              reaches (with their certificates)
``mesh.revocation``    :class:`Revocation`    broadcast; raw frame 0 is the signed list
``revocation.sync``    :class:`RevocationSync` "these are my list versions" to the parent
                                              (REQUEST); the REPLY names the parent's and
                                              carries each newer signed list as a raw frame
``session.hello``      :class:`SessionData`   handshake HELLO (REQUEST), REPLY is ACCEPT
``session.finish``     :class:`SessionData`   handshake FINISH (one-way)
``session.reset``      :class:`Ack`           "I hold no session for your MAC envelopes":
                                              the receiver drops its sessions toward the
                                              sender and handshakes again (after a restart)
``mesh.error``         :class:`ErrorReply`    error REPLY to a REQUEST a handler refused
``mesh.ping``          :class:`Ack`           liveness probe (REQUEST; REPLY :class:`Ack`)
``cert.lookup``        :class:`CertLookup`    "send me this node's certificate" to a parent
                                              (REQUEST; REPLY :class:`NodeHello` with it and
                                              its issuing delegate); asked up the tree
=====================  =====================  ==========================================
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from securemesh.errors import DecodeError

__all__ = [
    "CERT_LOOKUP",
    "ERROR_MESSAGE_MAX",
    "MESH_ERROR",
    "MESH_PING",
    "MAX_REPORT_LABELS",
    "MAX_REPORT_SERVICES",
    "MESH_REVOCATION",
    "NODE_HELLO",
    "NODE_REPORT",
    "REVOCATION_SYNC",
    "ROUTE_ANNOUNCE",
    "SESSION_FINISH",
    "SESSION_HELLO",
    "SESSION_RESET",
    "Ack",
    "B64",
    "CertLookup",
    "ErrorReply",
    "MeshMessage",
    "NodeHello",
    "NodeReport",
    "Revocation",
    "RevocationSync",
    "RouteAnnounce",
    "SessionData",
    "b64d",
    "b64e",
]

NODE_HELLO: Final = "node.hello"
NODE_REPORT: Final = "node.report"
ROUTE_ANNOUNCE: Final = "route.announce"
REVOCATION_SYNC: Final = "revocation.sync"
MESH_REVOCATION: Final = "mesh.revocation"
SESSION_HELLO: Final = "session.hello"
SESSION_FINISH: Final = "session.finish"
SESSION_RESET: Final = "session.reset"
MESH_ERROR: Final = "mesh.error"
MESH_PING: Final = "mesh.ping"
CERT_LOOKUP: Final = "cert.lookup"
#: Longest ``mesh.error`` message (characters).
ERROR_MESSAGE_MAX: Final = 256

_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
#: An unpadded base64url string (at most 8 KiB of text: certificates are <= 4 KiB).
B64 = Annotated[str, Field(max_length=8192, pattern=r"^[A-Za-z0-9_-]*$")]
NodeId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def b64e(data: bytes) -> str:
    """Unpadded base64url of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, max_size: int = 8192) -> bytes:
    """Decode canonical unpadded base64url; :class:`DecodeError` for anything else."""
    if len(text) > (max_size * 4 + 2) // 3 or _B64_RE.fullmatch(text) is None:
        raise DecodeError("not unpadded base64url (or too long)")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("not base64url") from exc
    if b64e(data) != text:
        raise DecodeError("non-canonical base64url")
    return data


class MeshMessage(BaseModel):
    """Base of every mesh body: strict, no unknown keys, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Ack(MeshMessage):
    """An empty acknowledgement."""


class NodeHello(MeshMessage):
    """``certificates[0]`` is the sender's signed certificate; the rest help the receiver.

    The rest: the delegated-authority certificate that issued it (if any), and
    certificates of the sender's ancestors (a device learns its edge's and the
    cloud's certificates from its edge's hello reply).

    ``attachment``: required in a hello to the parent (the parent refuses one
    without it), absent otherwise — the sender's signed attachment statement
    naming the parent's CURVE key (:mod:`securemesh.node._attach`), the
    evidence the parent forwards in ``route.announce``. Optional fields are
    sent absent, not ``null`` (both are accepted; protocol.md §3.1).
    """

    certificates: list[B64] = Field(min_length=1, max_length=8)
    attachment: B64 | None = None


MAX_REPORT_LABELS: Final = 32
MAX_REPORT_SERVICES: Final = 64
ReportLabelKey = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
]
ReportLabel = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class NodeReport(MeshMessage):
    """Resource report for the scheduler (load averages from ``os.getloadavg``)."""

    load_1m: float = Field(ge=0.0)
    load_5m: float = Field(ge=0.0)
    load_15m: float = Field(ge=0.0)
    queue_length: int = Field(ge=0)
    capacity: int = Field(ge=0)
    inflight: int = Field(ge=0)
    rtt_ms: float | None = Field(default=None, ge=0.0)
    uptime_s: float = Field(ge=0.0)
    # Optional, typed and bounded scheduler facts (``[report]`` in node.toml and the
    # services the node runs). Absent in reports from older peers, which stay valid.
    #: Joules per unit of work (the node's own benchmark unit).
    energy_per_unit: float | None = Field(default=None, ge=0.0, le=1e9)
    #: Carbon intensity of the node's power, gCO2e per kWh.
    carbon_intensity: float | None = Field(default=None, ge=0.0, le=1e6)
    #: Nodes sharing a failure domain (rack, site, power feed) fail together.
    failure_domain: ReportLabel | None = None
    #: Free-form labels (``[report.labels]``); absent when there are none.
    labels: dict[ReportLabelKey, ReportLabel] | None = Field(
        default=None, max_length=MAX_REPORT_LABELS
    )
    #: Names of the services this node runs (``Service.name``); absent when none.
    services: list[ReportLabelKey] | None = Field(default=None, max_length=MAX_REPORT_SERVICES)


class RouteAnnounce(MeshMessage):
    """Nodes reachable through the sender (certificates), and node ids no longer reachable.

    ``attachments``: the announced nodes' own signed attachment statements; the
    receiver routes a node through the sender only with a fresh one (protocol.md).
    """

    certificates: list[B64] = Field(default_factory=list, max_length=512)
    authorities: list[B64] = Field(default_factory=list, max_length=8)
    withdrawn: list[NodeId] = Field(default_factory=list, max_length=512)
    attachments: list[B64] = Field(default_factory=list, max_length=512)


class Revocation(MeshMessage):
    """``mesh.revocation``: raw frame 0 carries the signed revocation list bytes."""

    version: int = Field(ge=1, le=2**63 - 1)


class RevocationSync(MeshMessage):
    """``revocation.sync``: the installed revocation-list version per root authority.

    The REPLY carries the parent's versions and, as raw frames, every signed
    list newer than the asker's (at most one per root).
    """

    versions: dict[NodeId, Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        default_factory=dict, max_length=8
    )


class SessionData(MeshMessage):
    """One session handshake message (:mod:`securemesh.session`), base64url."""

    data: B64


class CertLookup(MeshMessage):
    """Ask a neighbour for the certificate of ``node_id`` (it verifies it like any other)."""

    node_id: NodeId


class ErrorReply(MeshMessage):
    """An error answer to a request. ``code`` is a stable short code; text is for people.

    Sent only to an authenticated, authorized requester whose request a
    handler refused (or that arrived while the node drains); pipeline
    rejections are silent (protocol.md §7). ``message`` never echoes input
    values: e.g. ``"attachment: missing"`` for a body that failed validation.
    """

    code: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    message: str = Field(default="", max_length=ERROR_MESSAGE_MAX)
