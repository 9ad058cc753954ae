"""Importing the SDK stays cheap: no heavy dependency, measured in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("sqlalchemy", "tenseal", "numpy", "securemesh.cli")
#: Not forbidden by the issue, but the bare import defers them too (they load on connect).
DEFERRED = ("pydantic", "nacl", "cryptography", "zmq", "asyncio", "securemesh.node")

PROBE = f"""
import resource, sys, time
t = time.perf_counter()
import securemesh.sdk
from securemesh.sdk import Device, Enrollment, Message, Reply
dt = time.perf_counter() - t
loaded = sorted(m for m in {FORBIDDEN + DEFERRED!r} if m in sys.modules)
from securemesh.sdk import AsyncDevice  # loads asyncio, nothing heavier
later = sorted(m for m in {FORBIDDEN + DEFERRED!r} if m in sys.modules)
hwm = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")]
# ru_maxrss is carried over exec from the (large) pytest parent on Linux: prefer VmHWM
rss = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, rss / 1024, ",".join(loaded) or "-",
      ",".join(later))
"""


def test_import_pulls_in_nothing_heavy_and_is_fast() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    seconds, rss_mb, loaded, later = float(out[0]), float(out[1]), out[2], out[3]
    assert loaded == "-", f"import securemesh.sdk loaded {loaded}"
    assert later == "asyncio"
    assert seconds < 0.25
    assert rss_mb < 35.0


def test_issue_statement_literally() -> None:
    stmt = (
        "import securemesh.sdk, sys; "
        f"assert not any(m in sys.modules for m in {FORBIDDEN!r}), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", stmt], check=True, timeout=60)


def test_footprint_bench_prints_json_last_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sdk_footprint.py"), "--runs", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("import_s", "peak_rss_mb", "baseline_import_s", "baseline_peak_rss_mb"):
        assert isinstance(result[key], float)
        assert result[key] > 0
    assert result["heavy_modules"] == []
    assert result["connect_stack_forbidden_modules"] == []
    assert result["import_vs_baseline"] > 0
    assert result["rss_vs_baseline"] > 0
