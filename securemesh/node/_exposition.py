"""A daemon's status snapshot in the Prometheus text exposition format.

Theory of operation
-------------------
The daemon already writes everything an operator watches to ``status.json``
every ``status_interval`` (:mod:`._daemon`). :func:`render_metrics` turns such
a snapshot into the text format Prometheus scrapes (version 0.0.4 of the
exposition format: ``# HELP`` / ``# TYPE`` lines, then ``name{labels} value``)
— a pure function of the snapshot, so it serves two read-only paths without
any listening socket on the daemon:

* ``securemesh node metrics`` prints it (for a scrape wrapper or a look);
* ``metrics_file`` in ``node.toml`` makes the daemon write it, atomically,
  on every status tick — for node_exporter's *textfile collector*, which
  reads ``*.prom`` files from one directory.

Every series has a ``node`` label (several daemons may share a host).
Counters are the node's own since it started (a restart starts them at 0,
which Prometheus' ``rate()`` handles). Numeric top-level fields of each
service's ``status()`` become ``securemesh_service_stat{service,stat}``
gauges (one nested level is flattened as ``outer.inner``), so a service
exports figures without code here. Label values are escaped as the format
requires (backslash, double quote, newline); nothing in a snapshot is
secret (it never holds keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["render_metrics"]

_COUNTERS = ("received", "accepted", "rejected", "forwarded", "dispatched", "replies", "sent")
#: at most this many service stats per service (a service status can be large)
MAX_SERVICE_STATS = 64


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, object], float | int]] = []

    def add(self, value: object, **labels: object) -> None:
        number = _number(value)
        if number is not None:
            self.samples.append((labels, number))

    def lines(self, node: str) -> Iterator[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            pairs = [("node", node), *labels.items()]
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
            yield f"{self.name}{{{text}}} {value!r}"


Families = Callable[[str, str, str], "_Family"]


def render_metrics(status: Mapping[str, Any]) -> str:
    """The text exposition of a ``status.json`` snapshot (as :func:`read_status` returns
    it, with ``alive`` and ``age_s``); ends with a newline."""
    node = str(status.get("node_id") or "unknown")
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        fam = _Family(f"securemesh_{name}", kind, help_text)
        families.append(fam)
        return fam

    _process(status, family)
    _counters(_dict(status.get("counters")), family)
    _links(status, family)
    _stats(status, family)
    lines = [line for fam in families for line in fam.lines(node)]
    return "\n".join(lines) + "\n"


def _process(status: Mapping[str, Any], family: Families) -> None:
    family("up", "gauge", "1 if the daemon was alive when its status was read.").add(
        bool(status.get("alive", status.get("state") == "running"))
    )
    family("status_age_seconds", "gauge", "Age of the status snapshot.").add(status.get("age_s"))
    family("uptime_seconds", "gauge", "Seconds since the node started.").add(status.get("uptime_s"))
    family("draining", "gauge", "1 while the node drains before it stops.").add(
        status.get("draining")
    )
    family("inflight_requests", "gauge", "Handlers running now.").add(status.get("inflight"))
    family("routes", "gauge", "Nodes routed through a child.").add(status.get("routes"))
    family("known_nodes", "gauge", "Certificates in the node's directory.").add(
        status.get("known_nodes")
    )
    family(
        "certificate_expiry_timestamp_seconds", "gauge", "When the node's certificate expires."
    ).add(_dict(status.get("certificate")).get("not_after"))
    family("sessions", "gauge", "Established MAC sessions.").add(
        _dict(status.get("sessions")).get("count")
    )


def _counters(counters: Mapping[str, Any], family: Families) -> None:
    messages = family("messages_total", "counter", "Messages by what happened to them.")
    for kind in _COUNTERS:
        messages.add(counters.get(kind), kind=kind)
    family("send_failures_total", "counter", "Sends the transport failed or dropped.").add(
        counters.get("send_failures")
    )
    family("audit_failures_total", "counter", "Audit events that could not be recorded.").add(
        counters.get("audit_failures")
    )
    rejections = family("rejections_total", "counter", "Rejected messages by reason.")
    for reason, count in sorted(_dict(counters.get("rejections")).items()):
        rejections.add(count, reason=reason)
    drops = family("drops_total", "counter", "Messages dropped unread, by reason.")
    for reason, count in sorted(_dict(counters.get("drops")).items()):
        drops.add(count, reason=reason)


def _links(status: Mapping[str, Any], family: Families) -> None:
    children = family("children", "gauge", "Child nodes by state.")
    states = {"connected": 0, "disconnected": 0, "revoked": 0}
    listed = status.get("children")
    for child in listed if isinstance(listed, list) else ():
        if isinstance(child, dict):
            if child.get("revoked"):
                states["revoked"] += 1
            else:
                states["connected" if child.get("connected") else "disconnected"] += 1
    for state, count in states.items():
        children.add(count, state=state)
    parent = status.get("parent")
    if isinstance(parent, dict):
        family("parent_connected", "gauge", "1 if the link to the parent is up.").add(
            bool(parent.get("connected")), parent=parent.get("node_id") or ""
        )
        rtt = _number(parent.get("rtt_ms"))
        family("parent_rtt_seconds", "gauge", "Last measured round trip to the parent.").add(
            None if rtt is None else rtt / 1000
        )
        family("parent_failures", "gauge", "Consecutive failures of the parent link.").add(
            parent.get("failures")
        )


def _stats(status: Mapping[str, Any], family: Families) -> None:
    transport = family("transport_stat", "gauge", "Transport counters and gauges by channel.")
    for channel, stats in sorted(_dict(status.get("transport")).items()):
        for stat, value in sorted(_dict(stats).items()):
            transport.add(value, channel=channel, stat=stat)
    service = family("service_stat", "gauge", "Numeric figures from each service's status.")
    for name, stats in sorted(_dict(status.get("services")).items()):
        for stat, value in _flatten(_dict(stats))[:MAX_SERVICE_STATS]:
            service.add(value, service=name, stat=stat)


def _flatten(stats: Mapping[str, Any]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in sorted(stats.items()):
        if isinstance(value, dict):
            out.extend(
                (f"{key}.{inner}", v)
                for inner, v in sorted(value.items())
                if _number(v) is not None
            )
        elif _number(value) is not None:
            out.append((str(key), value))
    return out
