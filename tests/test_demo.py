"""``securemesh demo`` (the README's first command) runs end to end and says so."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_every_step_and_cleans_up() -> None:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    env.pop("SECUREMESH_PASSPHRASE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "securemesh", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang bound, not a performance target (bench/ measures speed)
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    for line in (
        r"✔  1\. mesh authority and cloud node created",
        r"✔  2\. cloud daemon running",
        r"✔  3\. edge enrolled and running",
        r"✔  4\. device enrolled at the edge — 'edge-1\.sensor-1'",
        r"✔  5\. sensor readings delivered — 20 signed readings sent, the edge counted 20",
        r"✔  6\. routed request answered by the cloud — 20 requests .* median RTT [0-9.]+ ms",
        r"✔  7\. device certificate renewed over the bus — cert\.renew answered by 'edge-1'",
        r"✔  8\. forged and replayed messages rejected — .*bad_auth: [1-9].*replayed: [1-9]",
        r"✔  9\. device revoked and cut off",
        r"✔ 10\. audit events in the cloud log — [0-9]+ signed events from cloud-1, edge-1",
        r"✔ 11\. audit log verified — [0-9]+ entries",
        r"✔ 12\. offline inclusion proof verified — entry [0-9]+ \(cert\.revoked",
        r"all 12 steps passed in [0-9.]+s",
    ):
        assert re.search(line, out), f"missing {line!r} in:\n{out}"
    assert "✘" not in out
    # the working directory is removed (no --keep), and the passphrase never shown
    match = re.search(r"working directory (\S+)", out)
    assert match is not None
    assert not os.path.exists(match.group(1))
    assert "SECUREMESH_PASSPHRASE" not in out
