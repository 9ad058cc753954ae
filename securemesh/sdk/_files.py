"""A device's data directory: enrolling into it, loading it, saving renewals.

The layout is the node daemon's (:mod:`securemesh.enroll._state` writes it,
:mod:`securemesh.node._config` documents it), so a directory enrolled with the
SDK also works with ``securemesh node run`` and vice versa::

    identity.key      NodeIdentity, encrypted (Argon2id + XChaCha20-Poly1305)
    node.cert         this device's signed certificate
    authority.cert    the edge's delegated-authority certificate that issued it (if any)
    trust.json        the root(s) this device trusts (from the join token)
    revocation.list   newest signed revocation list seen
    sequence.state    envelope sequence counter (locked while a Device is open)
    replay.json       highest accepted sequence per sender (replay protection across restarts)
    audit-outbox.db   signed audit events waiting for the cloud log's acknowledgement
    node.toml         node id, tier, [parent] endpoint + CURVE key (from the token)

Everything here is synchronous and imported lazily by the SDK.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from securemesh._fileio import read_small_file
from securemesh.errors import CertificateExpired, ConfigError

if TYPE_CHECKING:
    from securemesh.crypto.certs import Certificate, SignedCertificate, TrustStore
    from securemesh.crypto.identity import NodeIdentity
    from securemesh.crypto.keystore import KdfParams
    from securemesh.node import NodeConfig

__all__ = [
    "PASSPHRASE_ENV",
    "DeviceFiles",
    "Enrollment",
    "enroll_device",
    "load_device",
    "resolve_passphrase",
    "save_renewal",
]

PASSPHRASE_ENV = "SECUREMESH_PASSPHRASE"  # noqa: S105 - a variable name
_MAX_CERT_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What :meth:`Device.enroll` did (public facts only)."""

    node_id: str
    tier: str
    roles: tuple[str, ...]
    serial: int
    issuer: str
    not_after: int
    data_dir: Path
    new_keys: bool


@dataclass
class DeviceFiles:
    """Everything :meth:`Device.connect` loads from the data directory."""

    data_dir: Path
    config: NodeConfig
    identity: NodeIdentity
    certificate: SignedCertificate
    cert: Certificate
    authority_certificate: SignedCertificate | None
    trust: TrustStore


def resolve_passphrase(passphrase: str | None, data_dir: Path | None = None) -> str:
    """The explicit passphrase, else ``$SECUREMESH_PASSPHRASE``; ConfigError if neither."""
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        where = f" for {data_dir}" if data_dir is not None else ""
        raise ConfigError(f"no passphrase{where}: pass passphrase=... or set {PASSPHRASE_ENV}")
    return passphrase


def _read(path: Path, what: str) -> bytes:
    return read_small_file(path, limit=_MAX_CERT_FILE, what=what, hint=" (enroll the device first)")


def enroll_device(
    token_text: str,
    *,
    data_dir: Path,
    node_id: str,
    passphrase: str,
    timeout: float,
    clock: Callable[[], float],
    kdf_params: KdfParams | None,
) -> Enrollment:
    """Generate (or keep) keys, enroll over ZeroMQ with the token, write the data dir."""
    from securemesh.crypto import keystore  # noqa: PLC0415
    from securemesh.enroll import (  # noqa: PLC0415 - lazy: enroll_data_dir loads pyzmq
        enroll_data_dir,
        read_join_token,
    )

    token = read_join_token(token_text, clock())
    done = enroll_data_dir(
        token,
        data_dir,
        node_id=node_id,
        passphrase=passphrase,
        kdf_params=kdf_params or keystore.DEFAULT_PARAMS,
        timeout=timeout,
        clock=clock,
        in_use_hint="close the connected Device before enrolling again",
    )
    if not done.files.config_written:
        _point_parent_at(done.files.config_path, token.endpoint, token.server_key)
    cert = done.result.cert
    return Enrollment(
        node_id=cert.node_id,
        tier=cert.tier.value,
        roles=tuple(cert.roles),
        serial=cert.serial,
        issuer=cert.issuer,
        not_after=cert.not_after,
        data_dir=data_dir,
        new_keys=done.new_keys,
    )


_PARENT_RE = re.compile(
    r"(?ms)^(\[parent\]\s*\n(?:[^\[]*?\n)?)"  # the table header and lines before endpoint
    r'endpoint = "[^"\n]*"(\n(?:[^\[]*?\n)?)curve_key = "[^"\n]*"'
)


def _point_parent_at(toml: Path, endpoint: str, server_key: bytes) -> None:
    """Re-enrolled through another edge: move ``[parent]`` to the token's server.

    ``node.toml`` is kept otherwise (an operator's limits and policy stay).
    """
    from securemesh.crypto import keystore  # noqa: PLC0415
    from securemesh.crypto.z85 import z85_encode  # noqa: PLC0415
    from securemesh.node import load_config  # noqa: PLC0415

    config = load_config(toml)
    parent = config.parent
    if parent is not None and parent.endpoint == endpoint and parent.curve_key_bytes == server_key:
        return
    text = toml.read_text(encoding="utf-8")
    new, count = _PARENT_RE.subn(
        lambda m: (
            f"{m.group(1)}endpoint = {json.dumps(endpoint)}{m.group(2)}"
            f"curve_key = {json.dumps(z85_encode(server_key))}"
        ),
        text,
    )
    if count != 1:
        raise ConfigError(
            f"{toml}: enrolled through {endpoint}, but [parent] could not be updated: "
            "set its endpoint and curve_key by hand"
        )
    keystore.write_file_atomic(toml, new.encode("utf-8"))
    load_config(toml)  # still valid


def load_device(
    data_dir: Path, passphrase: str, *, now: float | None = None, sdk_tier_check: bool = True
) -> DeviceFiles:
    """Load and verify the data directory; CertificateExpired says: re-enroll."""
    from securemesh.crypto.certs import SignedCertificate, verify_certificate  # noqa: PLC0415
    from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415
    from securemesh.enroll import (  # noqa: PLC0415
        AUTHORITY_CERT_FILE,
        IDENTITY_FILE,
        NODE_CERT_FILE,
        NODE_TOML,
        read_trust,
    )
    from securemesh.node import load_config  # noqa: PLC0415

    config = load_config(data_dir / NODE_TOML)
    if config.parent is None or config.listen is not None:
        raise ConfigError(f"{data_dir / NODE_TOML}: a device connects to a [parent], never listens")
    if sdk_tier_check and config.tier != "end":
        raise ConfigError(f"{data_dir / NODE_TOML}: the device SDK runs tier 'end' nodes")
    identity = NodeIdentity.load(data_dir / IDENTITY_FILE, passphrase)
    signed = SignedCertificate.from_bytes(_read(data_dir / NODE_CERT_FILE, "certificate"))
    authority = None
    if (data_dir / AUTHORITY_CERT_FILE).exists():
        authority = SignedCertificate.from_bytes(
            _read(data_dir / AUTHORITY_CERT_FILE, "authority certificate")
        )
    trust = read_trust(data_dir)
    t = time.time() if now is None else now
    try:
        cert = verify_certificate(
            signed, trust=trust, now=t, intermediates=[authority] if authority else []
        )
    except CertificateExpired as exc:
        raise CertificateExpired(
            f"the device certificate is not valid now ({exc}): re-enroll with a fresh token "
            "(Device.enroll keeps this data directory and its keys)"
        ) from exc
    if cert.public_keys() != identity.public() or cert.node_id != config.node_id:
        raise ConfigError(f"{data_dir}: node.cert does not belong to identity.key / node.toml")
    return DeviceFiles(data_dir, config, identity, signed, cert, authority, trust)


def save_renewal(
    data_dir: Path,
    certificate: SignedCertificate,
    *,
    authority_certificate: SignedCertificate | None,
    revocation_list: bytes | None,
) -> None:
    """Persist a renewed certificate (atomic writes; the identity file is untouched)."""
    from securemesh.crypto import keystore  # noqa: PLC0415
    from securemesh.enroll import (  # noqa: PLC0415
        AUTHORITY_CERT_FILE,
        NODE_CERT_FILE,
        REVOCATION_FILE,
    )

    if authority_certificate is not None:
        keystore.write_file_atomic(data_dir / AUTHORITY_CERT_FILE, authority_certificate.to_bytes())
    keystore.write_file_atomic(data_dir / NODE_CERT_FILE, certificate.to_bytes())
    if revocation_list is not None:
        keystore.write_file_atomic(data_dir / REVOCATION_FILE, revocation_list)
