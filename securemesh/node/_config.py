"""``node.toml``: the node's configuration, a strict pydantic model loaded with ``tomllib``.

Example (an edge)::

    node_id = "edge-1"
    tier = "edge"
    data_dir = "/var/lib/securemesh/edge-1"
    listen = "tcp://0.0.0.0:7101"
    log_level = "info"
    heartbeat_interval = 10.0
    services = ["myapp.edge:register"]        # register(node) adds handlers
    # passphrase_file = "/run/secrets/edge-1"   # else the systemd credential
    # passphrase_credential = "securemesh-passphrase", else env SECUREMESH_PASSPHRASE

    [parent]
    endpoint = "tcp://cloud.example:7100"
    curve_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # Z85 (40) or hex (64)

    [limits]
    max_inflight = 256
    request_timeout = 10.0

    [[policy.allow]]
    types = ["sensor.*"]
    tiers = ["end"]

Strict: no coercion ("10" is not 10), unknown keys are errors, every number is
bounded. :func:`load_config` turns every problem into one
:class:`~securemesh.errors.ConfigError` naming the file and the field.

Data directory layout (read by the daemon, :mod:`securemesh.node._daemon`)::

    identity.key        NodeIdentity, encrypted (securemesh keys generate)
    node.cert           this node's signed certificate (raw bytes)
    trust.json          {"roots": {"<authority id>": "<base64url verify key>"}}
    revocation.list     current signed revocation list (optional, raw bytes)
    authority.cert      delegated-authority certificate of the issuer (optional)
    peers/*.cert        certificates of nodes to admit before they say hello (optional)
    sequence.state      the envelope sequence counter (created)
    replay.json         replay high-water marks per sender (saved every 30 s and at stop)
    route-evidence.json freshest route evidence per node (edges, cloud; saved on change)
    audit-outbox.db     signed audit events waiting for the cloud log's acknowledgement
    audit.db            cloud only: the audit log (SQLite; [audit] log_db may name another DB)
    audit-log.key(.pub) cloud only: the log key (created at first start) and its verifier
    tokens.db           join tokens (cloud, or an edge with delegation.cert; see securemesh.enroll)
    delegation.cert     this edge's own delegated-authority certificate (optional)
    authority/          cloud only: the root authority (securemesh init)
    ready               written when the node is listening/connected (removed on stop)
    status.json         refreshed every status_interval seconds
    (metrics_file)      the same in Prometheus text format, if node.toml names one
    services/<name>/    each service's own data directory (docs/services.md)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from securemesh.crypto.z85 import z85_decode
from securemesh.errors import ConfigError
from securemesh.policy import PolicyConfig

__all__ = [
    "AuditConfig",
    "KindRuleConfig",
    "LimitsConfig",
    "NodeConfig",
    "ParentConfig",
    "ReportConfig",
    "SessionConfig",
    "load_config",
    "parse_curve_key",
]

NodeId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
]
Endpoint = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r"^(tcp|ipc|inproc|memory)://\S+$")
]


def parse_curve_key(text: str) -> bytes:
    """A CURVE public key written as Z85 (40 characters) or hex (64); ConfigError otherwise."""
    try:
        if len(text) == 40:
            key = z85_decode(text)
        elif len(text) == 64:
            key = bytes.fromhex(text)
        else:
            raise ValueError("length")
    except ValueError as exc:
        raise ConfigError("a CURVE key is 40 Z85 or 64 hex characters") from exc
    if len(key) != 32:
        raise ConfigError("a CURVE key is 32 bytes")
    return key


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ParentConfig(_Strict):
    """Where this node connects out to (its edge, or the cloud)."""

    endpoint: Endpoint
    curve_key: str

    @field_validator("curve_key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            parse_curve_key(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def curve_key_bytes(self) -> bytes:
        return parse_curve_key(self.curve_key)


class LimitsConfig(_Strict):
    """Resource bounds. Defaults suit an edge; devices usually tighten them."""

    max_body: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    max_raw_frame: int = Field(default=16 * 1024 * 1024, ge=0, le=256 * 1024 * 1024)
    max_frames: int = Field(default=16, ge=3, le=1024)
    max_inflight: int = Field(default=256, ge=1, le=100_000)
    capacity: int = Field(default=100, ge=0, le=1_000_000)
    request_timeout: float = Field(default=10.0, gt=0, le=3600)
    forward_timeout: float = Field(default=1.0, ge=0, le=60)
    send_timeout: float = Field(default=5.0, ge=0, le=600)
    sndhwm: int = Field(default=1000, ge=1, le=1_000_000)
    rcvhwm: int = Field(default=1000, ge=1, le=1_000_000)
    max_clock_skew: float = Field(default=120.0, ge=0, le=86_400)
    max_senders: int = Field(default=10_000, ge=1, le=10_000_000)
    log_window: float = Field(default=60.0, ge=0, le=86_400)
    drain_timeout: float = Field(default=10.0, ge=0, le=600)
    # before authentication (listeners; securemesh.transport._admission)
    max_pending_handshakes: int = Field(default=8, ge=1, le=100_000)
    max_pending_per_address: int = Field(default=4, ge=1, le=100_000)
    accept_burst: int = Field(default=64, ge=1, le=1_000_000)
    accept_rate: float = Field(default=20.0, gt=0, le=1_000_000)
    fd_reserve: int = Field(default=64, ge=0, le=100_000)
    # listeners: cut every connection past this growth of the resident memory, freeing
    # what libzmq holds of unfinished messages (0: off; securemesh.transport._memguard).
    # On by default: without it one admitted peer can make the daemon hold an unbounded
    # unfinished multipart message (issue 9 #4); 256 MiB is far above what honest
    # traffic holds on a listener (storage shards, HE ciphertexts are streamed).
    memory_budget: int = Field(default=256 << 20, ge=0, le=1 << 40)


class SessionConfig(_Strict):
    """Session fast path: when to run a fresh handshake (new keys, new session id)."""

    max_age: float = Field(default=600.0, gt=0, le=7 * 86_400)
    max_messages: int = Field(default=1 << 24, ge=1, le=1 << 40)
    handshake_timeout: float = Field(default=5.0, gt=0, le=600)


class HoldConfig(_Strict):
    """Relayed messages from an origin whose certificate is being looked up (``cert.lookup``)."""

    per_sender: int = Field(default=64, ge=1, le=100_000)
    total: int = Field(default=1024, ge=1, le=1_000_000)
    max_bytes: int = Field(default=16 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    #: Seconds a message may wait; the lookup gives up after this long too.
    max_age: float = Field(default=5.0, gt=0, le=600)
    #: Seconds after a lookup ended before the same origin is looked up (and held) again.
    retry_after: float = Field(default=5.0, ge=0, le=3600)


class KindRuleConfig(_Strict):
    """``[[audit.kinds]]`` (cloud): which origins may log events of a kind namespace.

    ``tiers``/``roles`` as in ``[policy]``: None means any; otherwise the
    origin's certificate needs one of the tiers and (if given) one of the roles.
    Namespaces with no rule take the default (``edge`` and ``cloud`` origins);
    the built-in namespaces keep their fixed rule (any enrolled origin).
    """

    namespace: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    tiers: list[Literal["end", "edge", "cloud"]] | None = Field(
        default=None, min_length=1, max_length=3
    )
    roles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]] | None = Field(
        default=None, min_length=1, max_length=64
    )


class AuditConfig(_Strict):
    """Audit ingestion over the bus (:mod:`securemesh.node._audit_bus`)."""

    #: Ship this node's outbox to the cloud log (``audit.append``).
    ship: bool = True
    #: Cloud: the log database, a SQLite path or a PostgreSQL URL (default
    #: ``<data_dir>/audit.db``).
    log_db: str | None = Field(default=None, min_length=1, max_length=1024)
    #: Cloud: the log key file (default ``<data_dir>/audit-log.key``; created at
    #: first start, its public verifier key written to ``<file>.pub``).
    log_key: str | None = Field(default=None, min_length=1, max_length=1024)
    #: Node id of the cloud log (default: the cloud node learned from the parent).
    cloud_node: NodeId | None = None
    #: Seconds between looks at an empty outbox (new events also wake the shipper).
    ship_interval: float = Field(default=1.0, gt=0, le=3600)
    request_timeout: float = Field(default=5.0, gt=0, le=600)
    backoff_max: float = Field(default=10.0, gt=0, le=3600)
    #: Keep ``(event id, leaf index)`` of every acknowledged event in the outbox.
    keep_receipts: bool = False
    #: Cloud: who may log each non-built-in kind namespace (see :class:`KindRuleConfig`).
    kinds: list[KindRuleConfig] = Field(default_factory=list, max_length=256)

    @field_validator("kinds")
    @classmethod
    def _no_builtin_namespace(cls, rules: list[KindRuleConfig]) -> list[KindRuleConfig]:
        from securemesh.audit.events import BUILTIN_NAMESPACES  # noqa: PLC0415

        for rule in rules:
            if rule.namespace in BUILTIN_NAMESPACES:
                raise ValueError(f"namespace {rule.namespace!r} is built in: its rule is fixed")
        return rules


_LabelKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
_Label = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class ReportConfig(_Strict):
    """``[report]``: static scheduler facts this node adds to its ``node.report`` heartbeat."""

    #: Joules per unit of work.
    energy_per_unit: float | None = Field(default=None, ge=0.0, le=1e9)
    #: Carbon intensity of the node's power, gCO2e/kWh.
    carbon_intensity: float | None = Field(default=None, ge=0.0, le=1e6)
    failure_domain: _Label | None = None
    labels: dict[_LabelKey, _Label] = Field(default_factory=dict, max_length=32)


class NodeConfig(_Strict):
    """The whole ``node.toml``."""

    node_id: NodeId
    tier: Literal["end", "edge", "cloud"]
    data_dir: str | None = None
    listen: Endpoint | None = None
    parent: ParentConfig | None = None
    passphrase_file: str | None = None
    #: systemd credential holding the passphrase: ``$CREDENTIALS_DIRECTORY/<name>``.
    passphrase_credential: str = Field(
        default="securemesh-passphrase", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    heartbeat_interval: float = Field(default=10.0, gt=0, le=86_400)
    #: Seconds between ``revocation.sync`` requests to the parent (also sent after
    #: every (re)connect): revocation lists converge even if a broadcast was missed.
    revocation_sync_interval: float = Field(default=60.0, gt=0, le=86_400)
    status_interval: float = Field(default=2.0, gt=0, le=3600)
    #: Also write the status in the Prometheus text format to this file (relative to
    #: ``data_dir`` unless absolute) on every status tick: for node_exporter's textfile
    #: collector, which reads ``*.prom`` (securemesh.node._exposition).
    metrics_file: str | None = Field(default=None, min_length=1, max_length=4096)
    #: ``"package.module:name"`` entries. ``name`` is a factory returning a
    #: :class:`~securemesh.node.Service` (or a Service class), installed through the
    #: service seam (docs/services.md); legacy: a ``register(node)`` function that
    #: registers handlers directly.
    services: list[
        Annotated[str, Field(max_length=256, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    ] = Field(default_factory=list, max_length=64)
    #: Renew the certificate over the bus once this fraction of its lifetime passed.
    auto_renew: bool = True
    renew_fraction: float = Field(default=0.5, ge=0.05, le=0.95)
    #: Node id that answers ``cert.renew`` for root-issued certificates (default:
    #: the cloud node learned from the parent's hello).
    authority_node: NodeId | None = None
    #: Lifetime (seconds) of the certificates this node issues and renews when it
    #: serves enrollment (a cloud with ``authority/``, an edge with
    #: ``delegation.cert``); a cloud's delegations to edges get the same lifetime.
    issued_cert_lifetime: int = Field(default=86_400, ge=10, le=10 * 365 * 86_400)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    hold: HoldConfig = Field(default_factory=HoldConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def model_post_init(self, __context: object) -> None:
        if self.tier == "cloud" and self.parent is not None:
            raise ValueError("a cloud node has no parent")
        if self.tier == "end" and self.listen is not None:
            raise ValueError("an end device does not listen")
        if self.tier == "end" and self.parent is None:
            raise ValueError("an end device needs a [parent]")


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate ``node.toml``; every problem becomes a ConfigError."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from exc
    if len(raw) > 1024 * 1024:
        raise ConfigError(f"{file}: larger than 1 MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{file}: invalid node configuration: {problems}") from exc
