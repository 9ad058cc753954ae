"""``securemesh demo`` (the README's first command) runs end to end, says so, and leaves
no process behind.

The whole demo (about a minute on the 2-core machine) is the README's main job and
runs by default, checking every step line and that no process survives; ``--keep``,
an interrupted demo (Ctrl-C once its whole mesh is up: cloud, three edges, twelve
device processes) and a demo killed with SIGKILL are opt-in (``--demo-long``).
Processes are found by the demo's working directory on their command line (every
daemon and device has it), read from ``/proc``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: a hang bound for the whole demo, not a performance target (it takes ~80 s)
DEMO_TIMEOUT = 400
STEPS = (
    r"✔  1\. mesh authority and cloud node created",
    r"✔  2\. cloud daemon running",
    r"✔  3\. three edges enrolled and running — edge-1, edge-2, edge-3 enrolled",
    r"✔  4\. devices enrolled at the edges — 12 device processes enrolled, certificates issued "
    r"by edge-1 x5, edge-2 x4, edge-3 x3",
    r"✔  5\. sensor readings delivered — 240 signed readings from 12 devices, the edges "
    r"counted 240 \(edge-1: 100, edge-2: 80, edge-3: 60\)",
    r"✔  6\. routed request answered by the cloud — 20 requests .* median RTT [0-9.]+ ms",
    r"✔  7\. device certificate renewed over the bus — cert\.renew answered by 'edge-1'",
    r"✔  8\. forged and replayed messages rejected — .*bad_auth: [1-9].*replayed: [1-9]",
    r"✔  9\. file stored sharded across the edges — 'demo/readings\.bin' \(1,048,897 B\) "
    r"encrypted, 2-of-3 erasure-coded over edge-., edge-., edge-.: 5 segments, 15 shards",
    r"✔ 10\. tasks placed by intent — privacy edge-only → edge-. \(cloud-1 ruled out; intent, "
    r"predicted [0-9]+ ms\); deadline 3 s, heavy → cloud-1 .*; energy-weighted → edge-2 .*; "
    r"data locality → edge-. \(holds a shard; it decrypted the file: sha256 matches.*; "
    r"deadline 0\.1 s, heavy → refused \(deadline: deadline=4\)",
    r"✔ 11\. HE aggregation decrypted — 4 devices encrypted 24 readings each \(standard-8192\); "
    r"cloud-1 added ciphertexts only; edge-2\.sensor-1 decrypted the sum: max error [0-9.e+-]+ "
    r"vs the plaintext sum",
    r"✔ 12\. federated learning with a dropout — 3 SecAgg\+ rounds at edge-1: 5 joined, "
    r"edge-1\.sensor-5 killed, 4 survivors per round; global model loss .*: 0\.693 → ",
    r"✔ 13\. edge killed, file still read — SIGKILL edge-3: 'demo/readings\.bin' read back "
    r"byte-equal \(sha256 [0-9a-f]{16}…\) from 2 of its 3 shard columns",
    r"✔ 14\. redundancy restored by repair — edge-4 enrolled in edge-3's place, edge-3 lost for "
    r"the cloud after [0-9]+ s; the owner's repair rebuilt 5 shards "
    r"\(column .: edge-3 → edge-4\), manifest re-signed: 3 of 3 columns .* none missing",
    r"✔ 15\. device revoked and cut off — 'edge-1\.sensor-1' revoked: cut off live after "
    r"[0-9.]+ s, its next request failed \((CertificateRevoked|TimeoutError|[A-Za-z]+)\)",
    r"✔ 16\. audit events in the cloud log — [0-9]+ signed events from [0-9]+ origins .*fl\.\*: "
    r"[1-9].*he\.\*: [1-9].*object\.\*: [1-9].*task\.\*: [1-9]",
    r"✔ 17\. audit log verified — [0-9]+ entries",
    r"✔ 18\. offline inclusion proof verified — entry [0-9]+ \(cert\.revoked",
    r" step \| what +\| result \| figure +\| time",
    r"    4 \| devices enrolled at the edges +\| ok     \| 12 device processes +\| +[0-9.]+s",
    r"   18 \| offline inclusion proof verified +\| ok     \| entry [0-9]+ of [0-9]+ +\| +[0-9.]+s",
    r"all 18 steps passed in [0-9.]+s",
)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    env.pop("SECUREMESH_PASSPHRASE", None)
    return env


def processes_under(root: str) -> dict[int, str]:
    """Live processes whose command line mentions ``root`` (pid -> command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if root in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def working_dir(first_line: str) -> str:
    match = re.search(r"working directory (\S+)", first_line)
    assert match is not None, first_line
    return match.group(1)


def wait_gone(root: str, timeout: float = 30.0) -> dict[int, str]:
    """Processes are reaped by the demo before it exits; allow the kernel a moment."""
    deadline = time.monotonic() + timeout
    left = processes_under(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_under(root)
    return left


def start_and_wait_for_the_mesh() -> tuple[subprocess.Popen[str], str]:
    """A demo in its own process group, once the cloud, the three edge daemons and the
    twelve device processes run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "securemesh", "demo"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        root = working_dir(proc.stdout.readline())
        deadline = time.monotonic() + 120
        while len(processes_under(root)) < 16:
            assert proc.poll() is None, proc.stdout.read() + proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, processes_under(root)
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, root


def test_an_interrupted_demo_stops_every_process_it_started(request: pytest.FixtureRequest) -> None:
    """Ctrl-C (SIGINT to the demo's process group) once the mesh runs: nothing survives."""
    if not request.config.getoption("--demo-long"):
        pytest.skip("runs with --demo-long (the default run has the whole demo)")
    proc, root = start_and_wait_for_the_mesh()
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "interrupted: stopping every process the demo started" in out
    assert wait_gone(root) == {}
    assert not os.path.exists(root)
    assert "SECUREMESH_PASSPHRASE" not in out + err


def test_a_killed_demo_leaves_no_process(request: pytest.FixtureRequest) -> None:
    """SIGKILL to the demo alone (no cleanup can run): its children stop by themselves."""
    if not request.config.getoption("--demo-long"):
        pytest.skip("runs with --demo-long")
    proc, root = start_and_wait_for_the_mesh()
    try:
        proc.kill()
        proc.wait()
        assert wait_gone(root) == {}
    finally:
        for pid in processes_under(root):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_the_whole_demo_runs_every_step_and_cleans_up() -> None:
    """The README's main job, in the default run (about a minute here)."""
    proc = subprocess.run(
        [sys.executable, "-m", "securemesh", "demo"],
        env=_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    for line in STEPS:
        assert re.search(line, out), f"missing {line!r} in:\n{out}"
    assert "✘" not in out
    # every process gone, the working directory removed, the passphrase never shown
    root = working_dir(out)
    assert wait_gone(root) == {}
    assert not os.path.exists(root)
    assert "SECUREMESH_PASSPHRASE=" not in out


def test_keep_leaves_the_mesh_running_with_instructions(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--demo-long"):
        pytest.skip("--keep (the whole demo, then the printed commands) runs with --demo-long")
    proc = subprocess.run(
        [sys.executable, "-m", "securemesh", "demo", "--keep"],
        env=_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False,
    )  # fmt: skip
    out = proc.stdout
    root = working_dir(out)
    try:
        assert proc.returncode == 0, out + proc.stderr[-3000:]
        assert "all 18 steps passed" in out
        running = processes_under(root)
        # the daemons run on (edge-3 was killed in step 13); the device processes are gone
        assert len(running) == 4, running
        assert all(" node run " in cmd for cmd in running.values())
        env = _env()
        env["SECUREMESH_PASSPHRASE"] = (Path(root) / "passphrase").read_text()
        # every command the demo printed works against the running mesh
        keep_part = out.split("The mesh is still running", 1)[1]
        commands = re.findall(r"^  (securemesh (?!node stop).*)$", keep_part, re.MULTILINE)
        assert len(commands) == 7, keep_part
        for command in commands:
            done = subprocess.run(
                [sys.executable, "-m", *command.split()],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}: {done.stderr}"
            if command.startswith("securemesh node status"):
                assert '"node_id": "cloud-1"' in done.stdout
            if command.startswith("securemesh store ls"):
                assert done.stdout.split() == ["NAME", "hello"]
        # the printed way to stop it works
        stop = re.search(r"^  (securemesh node stop .*) && rm -rf ", out, re.MULTILINE)
        assert stop is not None, out
        for command in stop.group(1).split(" && "):
            done = subprocess.run(
                [sys.executable, "-m", *command.split()],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert wait_gone(root) == {}
    finally:
        for pid in processes_under(root):  # reap what the test left, if it failed
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
