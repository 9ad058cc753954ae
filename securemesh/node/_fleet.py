"""The ``children`` of ``status.json``: the fleet view behind ``securemesh node list``.

A node's children are the nodes below it: those connected to its listener
now, and those whose certificates it keeps in ``peers/`` (the certificates it
issued at enrollment and renewal, and any the operator dropped there), so a
disconnected or revoked device stays listed. One row per child, like
``kubectl get nodes``::

    {"node_id": "edge-1.sensor-7", "tier": "end", "roles": ["sensor"],
     "serial": 123, "not_after": 1765200000, "connected": true,
     "last_seen": 1765100000.5, "load_1m": 0.12, "inflight": 0, "revoked": false}

``connected``: a link to it exists and it was heard from within ``stale_after``
seconds (the daemon passes three of its heartbeat intervals: a ZeroMQ peer
that went away says nothing, so silence is the signal). ``last_seen`` is Unix
seconds (None if never seen since the daemon started),
``load_1m``/``inflight`` come from the child's last ``node.report`` (None
before one arrived), ``revoked`` is true if an installed revocation list names
its node id or serial (or its issuer's). Certificates are shown as stored,
unverified: this is a display for the operator, not an admission decision.
At most :data:`MAX_CHILDREN` rows (connected first, then by node id).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from securemesh._fileio import read_small_file
from securemesh.crypto.certs import Certificate, SignedCertificate, TrustStore
from securemesh.node._directory import Directory

__all__ = ["MAX_CHILDREN", "children"]

MAX_CHILDREN = 10_000
_MAX_CERT = 64 * 1024


def _revoked(trust: TrustStore, node_id: str, cert: Certificate | None) -> bool:
    for root in trust.roots:
        rl = trust.revocation_list(root)
        if rl is None:
            continue
        if node_id in rl.node_ids:
            return True
        if cert is not None and (rl.revokes(cert) or cert.issuer in rl.node_ids):
            return True
    return False


def _stored(directory: Directory, peers: Path, node_id: str) -> Certificate | None:
    signed = directory.signed_certificate(node_id)
    if signed is None:
        try:
            signed = SignedCertificate.from_bytes(
                read_small_file(peers / f"{node_id}.cert", limit=_MAX_CERT, what="certificate")
            )
        except ValueError:  # missing, unreadable or malformed: shown without certificate facts
            return None
    return signed.unverified_certificate()


def children(
    status: dict[str, Any], directory: Directory, peers: Path, *, now: float, stale_after: float
) -> list[dict[str, Any]]:
    """The rows, from the node's ``status()`` (its live links), ``directory`` and ``peers/``."""
    me = status.get("node_id")
    parent = status.get("parent")
    parent_id = parent.get("node_id") if isinstance(parent, dict) else None
    live: dict[str, dict[str, Any]] = {}
    for link in status.get("peers", []):
        if isinstance(link, dict) and isinstance(link.get("node_id"), str):
            live[link["node_id"]] = link
    names = set(live)
    with contextlib.suppress(OSError):
        names.update(p.name[: -len(".cert")] for p in peers.glob("*.cert"))
    names.discard(me)
    names.discard(parent_id)
    ordered = sorted(names, key=lambda n: (n not in live, n))[:MAX_CHILDREN]
    rows = []
    for node_id in ordered:
        cert = _stored(directory, peers, node_id)
        link = live.get(node_id)
        report = link.get("report") if link is not None else None
        report = report if isinstance(report, dict) else {}
        ago = link.get("last_seen_s_ago") if link is not None else None
        heard = isinstance(ago, int | float) and ago <= stale_after
        rows.append(
            {
                "node_id": node_id,
                "tier": None if cert is None else cert.tier.value,
                "roles": [] if cert is None else list(cert.roles),
                "serial": None if cert is None else cert.serial,
                "not_after": None if cert is None else cert.not_after,
                "connected": heard,
                "last_seen": None if not isinstance(ago, int | float) else round(now - ago, 3),
                "load_1m": report.get("load_1m"),
                "inflight": report.get("inflight"),
                "revoked": _revoked(directory.trust, node_id, cert),
            }
        )
    return rows
