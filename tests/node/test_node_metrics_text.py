"""Status snapshots in the Prometheus text format (securemesh.node._exposition).

Every rendering is checked by a strict parser of the exposition format
(version 0.0.4: HELP and TYPE before a family's samples, valid names, label
values escaped), for hand-written snapshots, for arbitrary JSON (hypothesis:
a damaged status.json never makes the renderer fail or emit a bad line), and
for a real daemon's ``metrics_file`` and ``securemesh node metrics``.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
from daemon_support import daemon_env, init_cloud, poll, reaped
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.cli import main as cli_main
from securemesh.node import render_metrics

PASSPHRASE = "metrics-test-passphrase"
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"^({_NAME})\{{((?:{_LABEL},?)*)\}} (\S+)$")


def _unescape(text: str) -> str:
    """A label value as written (one pass: an escaped backslash before n stays two chars)."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse(text: str) -> dict[str, dict[str, Any]]:
    """Families by name: type, help, samples as (labels, value). Fails on any bad line."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert re.fullmatch(_NAME, name), line
            assert name not in families, line
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name == current, line
            assert kind in ("counter", "gauge"), line
            families[name]["type"] = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"bad sample line: {line!r}"
            name, labels_text, value = match.group(1), match.group(2), match.group(5)
            assert name == current, line
            assert families[name]["type"], line
            labels = {k: _unescape(v) for k, v in re.findall(_LABEL, labels_text)}
            number = float(value)
            assert math.isfinite(number), line
            families[name]["samples"].append((labels, number))
    return families


def value(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    for got, number in families[name]["samples"]:
        if all(got.get(k) == v for k, v in labels.items()):
            return float(number)
    raise AssertionError(f"no {name} {labels}")


STATUS: dict[str, Any] = {
    "node_id": "edge-1",
    "state": "running",
    "alive": True,
    "age_s": 0.4,
    "uptime_s": 120.5,
    "draining": False,
    "parent": {"node_id": "cloud-1", "connected": True, "rtt_ms": 1.5, "failures": 0},
    "children": [
        {"node_id": "edge-1.d1", "connected": True},
        {"node_id": "edge-1.d2", "connected": False},
        {"node_id": "edge-1.d3", "revoked": True},
    ],
    "counters": {
        "received": 10,
        "accepted": 7,
        "rejected": 3,
        "rejections": {"replay": 2, 'odd "reason"\\\n': 1},
        "drops": {"peer_queue_full": 4},
    },
    "sessions": {"count": 2, "peers": ["a", "b"]},
    "certificate": {"not_after": 1_800_000_000, "serial": 5},
    "transport": {"listener": {"refused_connections": {"rate": 1}, "frames_in": 99}},
    "services": {
        "storage": {"state": "running", "shards": 12, "bytes": {"used": 4096, "quota": 1.5e9}},
        "he": "not a dict",
    },
}


def test_a_snapshot_renders_to_the_figures_it_holds() -> None:
    fam = parse(render_metrics(STATUS))
    assert value(fam, "securemesh_up", node="edge-1") == 1
    assert value(fam, "securemesh_messages_total", kind="accepted") == 7
    assert value(fam, "securemesh_rejections_total", reason="replay") == 2
    assert value(fam, "securemesh_rejections_total", reason='odd "reason"\\\n') == 1  # escaped
    assert value(fam, "securemesh_drops_total", reason="peer_queue_full") == 4
    assert value(fam, "securemesh_children", state="connected") == 1
    assert value(fam, "securemesh_children", state="disconnected") == 1
    assert value(fam, "securemesh_children", state="revoked") == 1
    assert value(fam, "securemesh_parent_connected", parent="cloud-1") == 1
    assert value(fam, "securemesh_parent_rtt_seconds") == 0.0015
    assert value(fam, "securemesh_sessions") == 2
    assert value(fam, "securemesh_certificate_expiry_timestamp_seconds") == 1_800_000_000
    assert value(fam, "securemesh_transport_stat", channel="listener", stat="frames_in") == 99
    assert value(fam, "securemesh_service_stat", service="storage", stat="shards") == 12
    assert value(fam, "securemesh_service_stat", service="storage", stat="bytes.used") == 4096
    assert fam["securemesh_messages_total"]["type"] == "counter"
    assert fam["securemesh_up"]["type"] == "gauge"
    # non-numbers are not exported: no state string, no "he" figures
    stats = fam["securemesh_service_stat"]["samples"]
    assert {labels["stat"] for labels, _ in stats} == {"shards", "bytes.used", "bytes.quota"}


def test_a_stopped_daemon_is_down() -> None:
    fam = parse(render_metrics({"node_id": "edge-1", "state": "stopped"}))
    assert value(fam, "securemesh_up") == 0
    assert "securemesh_parent_connected" not in fam  # no parent, no series


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
_keys = st.sampled_from(
    ["node_id", "alive", "counters", "children", "parent", "services", "transport",
     "sessions", "certificate", "rejections", "drops", "accepted", "age_s", "state"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys | st.text(max_size=8), _json, max_size=10))
def test_any_json_renders_valid_text(status: dict[str, Any]) -> None:
    """A damaged or foreign status.json never breaks the renderer or the format."""
    parse(render_metrics(status))


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(list(args))
    return code, out.getvalue()


def test_daemon_writes_the_metrics_file(tmp_path: Path) -> None:
    cloud = tmp_path / "cloud-1"
    init_cloud(cloud, PASSPHRASE, top='status_interval = 0.3\nmetrics_file = "node.prom"\n')
    prom = cloud / "node.prom"
    with reaped(daemon_env(passphrase=PASSPHRASE)) as daemons:
        daemons.run("cloud-1", cloud)
        poll(prom.exists, "the metrics file")
        fam = parse(prom.read_text())
        assert value(fam, "securemesh_up", node="cloud-1") == 1
        assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter reads it
        code, text = _cli("node", "metrics", "--data-dir", str(cloud))
        assert code == 0
        assert value(parse(text), "securemesh_up", node="cloud-1") == 1
        assert daemons.stop("cloud-1") == 0
    assert value(parse(prom.read_text()), "securemesh_up") == 0  # the last write: stopped
    code, text = _cli("node", "metrics", "--data-dir", str(cloud))
    assert code == 3  # as `node status`: the file is left over from a stopped daemon
    assert value(parse(text), "securemesh_up") == 0


def test_node_metrics_without_a_daemon_is_one_error_line(tmp_path: Path) -> None:
    cloud = tmp_path / "cloud-1"
    init_cloud(cloud, PASSPHRASE)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(["node", "metrics", "--data-dir", str(cloud)])
    assert code == 1
    assert err.getvalue().startswith("error: ")
    assert err.getvalue().count("\n") == 1
    assert not (cloud / "status.json").exists()  # a read command creates nothing


@pytest.mark.parametrize("bad", ['metrics_file = ""', "metrics_file = 5"])
def test_metrics_file_is_validated(tmp_path: Path, bad: str) -> None:
    cloud = tmp_path / "cloud-1"
    init_cloud(cloud, PASSPHRASE, top=bad + "\n")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(["node", "status", "--data-dir", str(cloud)])
    assert code == 1
    assert "metrics_file" in err.getvalue()
