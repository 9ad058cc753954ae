"""Load on one edge: ``bench/load.py`` run small (100 devices, 6 s) as a real process.

The bench builds a cloud and an edge daemon, enrolls every simulated device with
its own token and drives each over its own CurveZMQ session (worker processes
with hundreds of SDK ``AsyncDevice`` sessions each); see its docstring. Here it
must report no acknowledged message lost, no request unanswered, every device's
messages counted in order by the edge, and the edge's RSS flat across windows.
``pytest --reliability-long`` runs it at the recorded size (1,000 devices, 5 min).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import daemon_env

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"
#: Short run: the edge's RSS may grow this much from the first window's end to the last's.
RSS_GROWTH_MIB = 32.0
#: Long run: the edge's memory rises while its 1,000 connections warm up (libzmq's
#: per-connection buffers, measured at about 40 KiB each, docs/reliability.md), then
#: must be flat: at most this growth over the last third of the windows, and at most
#: RSS_PER_DEVICE_KIB per device in all.
RSS_TAIL_GROWTH_MIB = 16.0
RSS_PER_DEVICE_KIB = 96
#: A generous bound on a loaded 2-core runner: a stall, not a slow round trip, fails it.
P99_LIMIT_MS = 2000.0


@pytest.mark.timeout(1800)  # the long variant runs ~10 minutes (setup included)
def test_many_devices_on_one_edge_lose_nothing_and_memory_stays_flat(
    reliability_long: bool,
) -> None:
    if reliability_long:
        size = ["--devices", "1000", "--duration", "300", "--window", "30", "--rate", "0.5"]
        timeout = 1800
    else:
        size = ["--devices", "100", "--duration", "6", "--window", "3", "--rate", "1"]
        timeout = 300
    # its own session: on a timeout or a failure here the whole group (the bench, its
    # daemons and its device workers) is killed, none left behind
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), *size, "--workers", "2" if not reliability_long else "4"],
        env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    print(json.dumps(result))  # the figures (pytest -s)
    expected = result["devices"] * result["rate_per_device"] * result["duration_s"]
    assert result["lost"] == 0, result
    assert result["failed"] == 0, result["failures"]
    assert result["out_of_order"] == 0, result
    # every device kept its pace: (almost) every planned message was sent and answered
    assert result["acked"] >= 0.9 * expected, result
    rss = result["edge_rss_mib"]
    if reliability_long:
        tail = rss[-max(2, len(rss) // 3) :]
        assert max(tail) - tail[0] < RSS_TAIL_GROWTH_MIB, rss
        per_device = (max(rss) - result["edge_rss_start_mib"]) * 1024 / result["devices"]
        assert per_device < RSS_PER_DEVICE_KIB, rss
    else:
        assert rss[-1] - rss[0] < RSS_GROWTH_MIB, rss
    # the long run's first window holds every device's first request, which also runs
    # its session handshake (auth="session"): a warm-up, left out of the bound
    p99 = result["p99_ms"][1:] if reliability_long else result["p99_ms"]
    assert all(p is not None and p < P99_LIMIT_MS for p in p99), result["p99_ms"]
