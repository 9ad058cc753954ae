"""Authority and node state on disk: ``securemesh init``, tokens, revocation, enrollment.

Theory of operation
-------------------
Everything lives in one data directory per node, in the layout the node
daemon reads (:mod:`securemesh.node._config`), plus the authority's own files::

    identity.key        this node's NodeIdentity, encrypted (Argon2id + XChaCha20-Poly1305)
    node.cert           this node's signed certificate (raw bytes)
    trust.json          {"roots": {"<authority id>": "<base64url root verify key>"}}
    revocation.list     the current signed revocation list (raw bytes)
    authority.cert      the delegated authority that issued node.cert (device enrolled
                        by an edge; optional)
    delegation.cert     this edge's own delegated-authority certificate (optional)
    tokens.db           join tokens issued here (cloud, or an edge with delegation.cert)
    authority/          cloud only: authority.key (root key, encrypted) + authority.json
                        (its non-secret state); :func:`save_authority`,
                        :func:`load_authority` (the crypto layer only makes the bytes)
    sequence.state      the node's envelope sequence counter (securemesh.wire.SequenceCounter)
    node.toml           the daemon's configuration

Secrets are only ever in ``identity.key`` and ``authority/authority.key``,
both encrypted under the passphrase (environment variable or TTY prompt,
see :mod:`securemesh.cli._mesh`). Creating tokens needs no passphrase: a
token carries only *public* data of the server plus its own fresh secret.
Revoking needs the root key (passphrase): :func:`revoke_node` signs a new
list, saves the authority state (so a list version is never reused) and
replaces ``revocation.list`` atomically. A running cloud daemon notices the
new file (its mtime changes; it verifies the list, installs it — rollbacks
refused — and broadcasts ``mesh.revocation``).

Every file is written atomically (temporary file, fsync, rename) with mode
0600; directories are created 0700.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from securemesh._fileio import read_small_file
from securemesh.crypto import keystore
from securemesh.crypto.certs import (
    MAX_AUTHORITY_STATE_SIZE,
    Authority,
    Certificate,
    DelegatedAuthority,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
    validate_node_id,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_encode
from securemesh.enroll._protocol import EnrollResult
from securemesh.enroll._token import JoinToken, validate_endpoint
from securemesh.errors import ConfigError, CorruptKeyFile, LocalError

__all__ = [
    "AUTHORITY_DIR",
    "AUTHORITY_CERT_FILE",
    "AUTHORITY_KEY_FILE",
    "AUTHORITY_STATE_FILE",
    "DELEGATION_CERT_FILE",
    "IDENTITY_FILE",
    "NODE_CERT_FILE",
    "NODE_TOML",
    "POLICY_HINT",
    "REVOCATION_FILE",
    "SEQUENCE_FILE",
    "TRUST_FILE",
    "InitResult",
    "NodeFiles",
    "TokenIssuer",
    "enrolled_node_id",
    "existing_trust",
    "identity_for_enrollment",
    "init_authority",
    "load_authority",
    "known_node_ids",
    "load_delegated_authority",
    "load_token_issuer",
    "read_trust",
    "require_authority",
    "revoke_node",
    "save_authority",
    "save_authority_state",
    "save_enrollment",
    "write_node_toml",
    "write_trust",
]

IDENTITY_FILE: Final = "identity.key"
NODE_CERT_FILE: Final = "node.cert"
TRUST_FILE: Final = "trust.json"
REVOCATION_FILE: Final = "revocation.list"
AUTHORITY_CERT_FILE: Final = "authority.cert"
DELEGATION_CERT_FILE: Final = "delegation.cert"
AUTHORITY_DIR: Final = "authority"
#: In ``authority/``: the root key (key store format) and the authority's public state.
AUTHORITY_KEY_FILE: Final = "authority.key"
AUTHORITY_STATE_FILE: Final = "authority.json"
NODE_TOML: Final = "node.toml"
SEQUENCE_FILE: Final = "sequence.state"
_MAX_SMALL_FILE: Final = 64 * 1024
_B64_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _read(path: Path, limit: int, what: str) -> bytes:
    """A small data-dir file; an oversized one is corrupt (CorruptKeyFile)."""
    return read_small_file(path, limit=limit, what=what, too_large=CorruptKeyFile)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keystore.write_file_atomic(path, data, overwrite=True)


# ------------------------------------------------------------------ authority


def save_authority(
    directory: Path,
    authority: Authority,
    passphrase: str,
    *,
    params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
) -> None:
    """Write ``authority.key`` (encrypted) and ``authority.json`` into ``directory`` (0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(directory / AUTHORITY_KEY_FILE, authority.sealed_key(passphrase, params=params))
    save_authority_state(directory, authority)


def save_authority_state(directory: Path, authority: Authority) -> None:
    """Rewrite only the public state (after every revocation: list versions never repeat)."""
    _write(directory / AUTHORITY_STATE_FILE, authority.state_bytes())


def load_authority(directory: Path, passphrase: str) -> Authority:
    """The authority saved in ``directory``: WrongPassphrase, CorruptKeyFile, ConfigError."""
    sealed = _read(directory / AUTHORITY_KEY_FILE, keystore.MAX_FILE_SIZE, "authority key")
    state = _read(directory / AUTHORITY_STATE_FILE, MAX_AUTHORITY_STATE_SIZE, "authority state")
    return Authority.from_stored(sealed, state, passphrase)


# ---------------------------------------------------------------------- trust


def write_trust(data_dir: Path, roots: dict[str, bytes]) -> None:
    """Write ``trust.json`` (root ids -> base64url verify keys)."""
    doc = {"roots": {rid: _b64e(key) for rid, key in sorted(roots.items())}}
    _write(data_dir / TRUST_FILE, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")


def read_trust(data_dir: Path) -> TrustStore:
    """``trust.json`` plus ``revocation.list`` (if present, verified) as a TrustStore."""
    raw = _read(data_dir / TRUST_FILE, _MAX_SMALL_FILE, "trust file")
    try:
        doc = json.loads(raw)
        roots = doc["roots"]
        if not isinstance(doc, dict) or set(doc) != {"roots"} or not isinstance(roots, dict):
            raise ValueError("expected {'roots': {...}}")
        keys: dict[str, bytes] = {}
        for rid, text in roots.items():
            if not isinstance(text, str) or _B64_RE.fullmatch(text) is None:
                raise ValueError(f"bad key for root {rid!r}")
            keys[str(rid)] = base64.urlsafe_b64decode(text + "=")
        trust = TrustStore(keys)
    except (ValueError, KeyError, TypeError, LocalError) as exc:
        raise CorruptKeyFile(f"{data_dir / TRUST_FILE} is invalid: {exc}") from exc
    rl_path = data_dir / REVOCATION_FILE
    if rl_path.exists():
        from securemesh.crypto.certs import MAX_REVOCATION_LIST_SIZE  # noqa: PLC0415

        trust.update_revocation_list(_read(rl_path, MAX_REVOCATION_LIST_SIZE, "revocation list"))
    return trust


# ------------------------------------------------------------------ node.toml


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise LocalError(f"cannot write {type(value).__name__} to TOML")


#: Appended to the ``node.toml`` of an edge or cloud: the policy, explained
#: (deny by default; the rule the device example needs, commented out).
POLICY_HINT: Final = """
# Policy: deny by default. This node accepts -- and forwards -- only message
# types a [[policy.allow]] rule below allows, from senders of the listed tiers
# (and, if given, roles). Anything else is refused, counted in status.json
# ("rejections": {"unauthorized": N}) and audited; a refused request gets no
# reply, so its sender sees a timeout. A message that crosses several nodes is
# authorized on every hop. Services add handlers for their types
# (services = ["module:register"]); a type with no handler is refused as
# no_handler. For the device example (examples/device_app.py with
# examples/sensor_service.py, see examples/edge.toml) an edge needs, at the
# top of this file:
#   services = ["sensor_service:register"]   # run with PYTHONPATH=examples
# and this rule (tokens made with `token create --tier end --roles sensor`):
# [[policy.allow]]
# types = ["sensor.reading", "sensor.time"]
# tiers = ["end"]
# roles = ["sensor"]
"""


def write_node_toml(
    path: Path,
    *,
    node_id: str,
    tier: Tier,
    data_dir: Path,
    listen: str | None = None,
    parent_endpoint: str | None = None,
    parent_key: bytes | None = None,
    overwrite: bool = False,
) -> bool:
    """Write a minimal ``node.toml`` for :class:`securemesh.node.NodeConfig`.

    Returns False (and leaves the file alone) when it exists and ``overwrite``
    is false: an operator's edits are never clobbered.
    """
    if path.exists() and not overwrite:
        return False
    lines = [
        "# Written by securemesh; see docs for every option (policy, limits, session).",
        f"node_id = {_toml_value(node_id)}",
        f"tier = {_toml_value(tier.value)}",
        f"data_dir = {_toml_value(str(data_dir))}",
    ]
    if listen is not None:
        lines.append(f"listen = {_toml_value(listen)}")
    if parent_endpoint is not None and parent_key is not None:
        lines += [
            "",
            "[parent]",
            f"endpoint = {_toml_value(parent_endpoint)}",
            f"curve_key = {_toml_value(z85_encode(parent_key))}",
        ]
    text = "\n".join(lines) + "\n"
    if tier is not Tier.END:
        text += POLICY_HINT
    _write(path, text.encode())
    return True


# ------------------------------------------------------------------------ init


@dataclass(frozen=True, slots=True)
class InitResult:
    authority: Authority
    identity: NodeIdentity
    certificate: SignedCertificate
    config_path: Path


def init_authority(
    data_dir: Path,
    passphrase: str,
    *,
    authority_id: str,
    cloud_node_id: str,
    listen: str,
    now: float,
    cert_lifetime_s: int,
    roles: Iterable[str] = (),
    kdf_params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
) -> InitResult:
    """Create the mesh authority and the cloud node's identity, certificate and config.

    Refuses (ConfigError) if ``data_dir`` already holds an authority or an
    identity: re-initialising would silently orphan every enrolled node.
    """
    validate_node_id(authority_id, what="authority id")
    validate_node_id(cloud_node_id)
    validate_endpoint(listen)
    auth_dir = data_dir / AUTHORITY_DIR
    for existing in (auth_dir / AUTHORITY_KEY_FILE, data_dir / IDENTITY_FILE):
        if existing.exists():
            raise ConfigError(f"{existing} exists: this data dir is already initialised")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    authority = Authority.create(authority_id, now=now)
    save_authority(auth_dir, authority, passphrase, params=kdf_params)
    identity = NodeIdentity.generate()
    identity.save(data_dir / IDENTITY_FILE, passphrase, params=kdf_params)
    cert = authority.issue(
        cloud_node_id, Tier.CLOUD, roles, identity.public(), lifetime_s=cert_lifetime_s, now=now
    )
    _write(data_dir / NODE_CERT_FILE, cert.to_bytes())
    write_trust(data_dir, {authority_id: authority.verify_key})
    _write(data_dir / REVOCATION_FILE, authority.revocation_list.to_bytes())
    config = data_dir / NODE_TOML
    write_node_toml(
        config,
        node_id=cloud_node_id,
        tier=Tier.CLOUD,
        data_dir=data_dir.resolve(),
        listen=listen,
        overwrite=True,
    )
    return InitResult(authority, identity, cert, config)


# ---------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """What ``token create`` needs, all public: who issues, for which root, where to connect."""

    issuer: str
    authority_id: str
    root_key: bytes
    server_key: bytes
    server_id: str
    endpoint: str | None
    tiers: frozenset[Tier]
    delegated: bool
    #: an edge's name constraint: node ids its tokens may enroll start with this
    name_prefix: str | None = None


def _node_cert(data_dir: Path) -> Certificate:
    return SignedCertificate.from_bytes(
        _read(data_dir / NODE_CERT_FILE, _MAX_SMALL_FILE, "certificate")
    ).unverified_certificate()


def _listen_of(data_dir: Path) -> str | None:
    path = data_dir / NODE_TOML
    if not path.exists():
        return None
    import tomllib  # noqa: PLC0415

    try:
        text = _read(path, 1024 * 1024, "node config").decode("utf-8")
        listen = tomllib.loads(text).get("listen")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if not isinstance(listen, str):
        return None
    # A wildcard bind address is not somewhere a new node can connect to.
    return None if "://0.0.0.0:" in listen or "://*:" in listen else listen


def enrolled_node_id(data_dir: Path) -> str | None:
    """The node id of ``data_dir``'s certificate (``node.cert``), None if not enrolled yet."""
    if not (data_dir / NODE_CERT_FILE).is_file():
        return None
    return _node_cert(data_dir).node_id


def load_token_issuer(data_dir: Path) -> TokenIssuer:
    """Find out whether ``data_dir`` is a root (cloud) or a delegated edge, from public files."""
    auth_state = data_dir / AUTHORITY_DIR / AUTHORITY_STATE_FILE
    node = _node_cert(data_dir)
    endpoint = _listen_of(data_dir)
    if auth_state.exists():
        try:
            state = json.loads(_read(auth_state, 4 * 1024 * 1024, "authority state"))
            authority_id = state["authority_id"]
            root_key = base64.urlsafe_b64decode(state["verify_key"] + "=")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptKeyFile(f"{auth_state} is invalid: {exc}") from exc
        return TokenIssuer(
            issuer=authority_id,
            authority_id=authority_id,
            root_key=root_key,
            server_key=node.curve_key,
            server_id=node.node_id,
            endpoint=endpoint,
            tiers=frozenset(Tier),
            delegated=False,
        )
    delegation_path = data_dir / DELEGATION_CERT_FILE
    if delegation_path.exists():
        dcert = SignedCertificate.from_bytes(
            _read(delegation_path, _MAX_SMALL_FILE, "delegation certificate")
        ).unverified_certificate()
        if dcert.delegation is None or dcert.public_keys() != node.public_keys():
            raise CorruptKeyFile(f"{delegation_path} is not this node's delegated authority")
        trust = read_trust(data_dir)
        delegate_root = trust.root_key(dcert.issuer)
        if delegate_root is None:
            raise ConfigError(f"trust.json does not name the root {dcert.issuer!r}")
        return TokenIssuer(
            issuer=dcert.node_id,
            authority_id=dcert.issuer,
            root_key=delegate_root,
            server_key=node.curve_key,
            server_id=node.node_id,
            endpoint=endpoint,
            tiers=dcert.delegation.tiers,
            delegated=True,
            name_prefix=dcert.delegation.name_prefix,
        )
    raise ConfigError(
        f"{data_dir} holds neither a mesh authority nor a delegated authority: "
        "create tokens on the cloud, or on an edge enrolled with a delegate token"
    )


def load_delegated_authority(data_dir: Path, identity: NodeIdentity) -> DelegatedAuthority:
    """The edge's DelegatedAuthority from ``delegation.cert`` and its identity."""
    blob = _read(data_dir / DELEGATION_CERT_FILE, _MAX_SMALL_FILE, "delegation certificate")
    return DelegatedAuthority(blob, identity.signer)


# ------------------------------------------------------------------ revocation


def require_authority(data_dir: Path) -> Path:
    """``data_dir/authority`` if it holds the mesh authority's key; ConfigError otherwise."""
    auth_dir = data_dir / AUTHORITY_DIR
    if not (auth_dir / AUTHORITY_KEY_FILE).exists():
        raise ConfigError(f"{data_dir} holds no mesh authority (revoke runs on the cloud)")
    return auth_dir


def revoke_node(
    data_dir: Path,
    passphrase: str,
    *,
    node_ids: Iterable[str] = (),
    serials: Iterable[int] = (),
    now: float,
) -> SignedRevocationList:
    """Sign a new revocation list with the root, save it, replace ``revocation.list``."""
    auth_dir = require_authority(data_dir)
    node_list = [validate_node_id(n) for n in node_ids]
    authority = load_authority(auth_dir, passphrase)
    signed = authority.revoke(node_ids=node_list, serials=serials, now=now)
    save_authority_state(auth_dir, authority)  # never reuse a list version
    _write(data_dir / REVOCATION_FILE, signed.to_bytes())
    return signed


def known_node_ids(data_dir: Path) -> tuple[frozenset[str], frozenset[str]]:
    """Node ids the authority in ``data_dir`` knows it issued, and namespaces it delegated.

    ``(ids, prefixes)``, from public files only: this node's certificate, the
    certificates in ``peers/`` (the daemon keeps every certificate it issued
    there), the nodes that used a token of ``tokens.db``, and the ids already
    in ``revocation.list``. An edge's namespace (its id and a dot) is a prefix
    when it was enrolled with a delegate token or is an edge in ``peers/``:
    its devices' ids were issued by the edge, not here. ``revoke`` refuses an
    id outside both unless forced.
    """
    ids: set[str] = set()
    prefixes: set[str] = set()
    if (data_dir / NODE_CERT_FILE).exists():
        ids.add(_node_cert(data_dir).node_id)
    peers = data_dir / "peers"
    if peers.is_dir():
        for path in sorted(peers.glob("*.cert"))[:100_000]:
            try:
                cert = SignedCertificate.from_bytes(
                    _read(path, _MAX_SMALL_FILE, "peer certificate")
                ).unverified_certificate()
            except ValueError:  # unreadable or malformed (Local/RemoteError): not ours
                continue
            ids.add(cert.node_id)
            if cert.tier is Tier.EDGE:
                prefixes.add(cert.node_id + ".")
    if (data_dir / "tokens.db").exists():
        from securemesh.enroll._store import TokenStore  # noqa: PLC0415 - sqlalchemy

        with TokenStore.in_dir(data_dir) as store:
            for record in store.list_tokens():
                if record.used_by is not None:
                    ids.add(record.used_by)
                    if record.delegate:
                        prefixes.add(record.used_by + ".")
    rl_path = data_dir / REVOCATION_FILE
    if rl_path.exists():
        from securemesh.crypto.certs import MAX_REVOCATION_LIST_SIZE  # noqa: PLC0415

        blob = _read(rl_path, MAX_REVOCATION_LIST_SIZE, "revocation list")
        ids.update(SignedRevocationList.from_bytes(blob).unverified_list().node_ids)
    return frozenset(ids), frozenset(prefixes)


# ------------------------------------------------------------------ enrollment


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """Paths written for an enrolled node."""

    data_dir: Path
    config_path: Path
    config_written: bool


def save_enrollment(
    data_dir: Path,
    token: JoinToken,
    result: EnrollResult,
    *,
    listen: str | None = None,
) -> NodeFiles:
    """Write ``node.cert``, trust, revocation list, authority/delegation certs and node.toml.

    The identity key file is written by the caller before enrolling (keys are
    generated, or kept on re-enrollment, locally).
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(data_dir / NODE_CERT_FILE, result.certificate.to_bytes())
    write_trust(data_dir, dict(result.trust.roots))
    _write(data_dir / REVOCATION_FILE, result.revocation_list.to_bytes())
    if result.issuer_certificate is not None:
        _write(data_dir / AUTHORITY_CERT_FILE, result.issuer_certificate.to_bytes())
    else:
        (data_dir / AUTHORITY_CERT_FILE).unlink(missing_ok=True)
    if result.authority_certificate is not None:
        _write(data_dir / DELEGATION_CERT_FILE, result.authority_certificate.to_bytes())
    cert = result.cert
    config = data_dir / NODE_TOML
    written = write_node_toml(
        config,
        node_id=cert.node_id,
        tier=cert.tier,
        data_dir=data_dir.resolve(),
        listen=None if cert.tier is Tier.END else listen,
        parent_endpoint=token.endpoint,
        parent_key=token.server_key,
    )
    return NodeFiles(data_dir, config, written)


def identity_for_enrollment(
    data_dir: Path,
    passphrase: str,
    *,
    kdf_params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
) -> tuple[NodeIdentity, bool]:
    """Load ``identity.key`` (re-enrollment keeps the keys) or create it. (identity, created)."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        return NodeIdentity.load(path, passphrase), False
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity = NodeIdentity.generate()
    identity.save(path, passphrase, params=kdf_params)
    return identity, True


def existing_trust(data_dir: Path) -> TrustStore | None:
    """The node's trust store if it was enrolled before (so a rollback is refused)."""
    if not (data_dir / TRUST_FILE).exists():
        return None
    return read_trust(data_dir)
