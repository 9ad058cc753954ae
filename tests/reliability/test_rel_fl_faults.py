"""SIGKILL of FL devices mid-round: the rounds complete with the survivors above threshold.

cloud-1 <- edge-a (the ``fl`` coordinator) daemons; six participants, each its
own process (``fl_device.py``: a connected SDK device that joined the
federation), and an ``fl-operator`` device in this process that starts a
two-round run with all six per round. A participant writes a mark when it
trains; the test SIGKILLs one on its round-1 mark and another on its round-2
mark — while the round runs (the victim may already have sent its masked
input: SecAgg+ then unmasks without it). Both rounds must finish, not abort,
with exactly the processes still alive at that round's end among the
survivors, and the ``fl.round_finished`` events must reach the cloud log.

(``tests/fl/test_fl_daemons.py`` covers a device that leaves before a round;
this kills processes inside rounds.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_support import (
    DeviceMesh,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    poll,
    read_status,
    reaped,
)

from securemesh.fl import LogisticRegression, RunBody, model_hash

pytestmark = [pytest.mark.slow, pytest.mark.reliability_long]

HERE = Path(__file__).resolve().parent
PASSPHRASE = "rel-fl-passphrase"
TOP = "status_interval = 0.2\nheartbeat_interval = 0.3\n"
EDGE_TOP = 'services = ["securemesh.fl:FLCoordinator"]\n'
EDGE_RULES = '\n[[policy.allow]]\ntypes = ["fl.*"]\ntiers = ["end"]\n'
DEVICES = [f"edge-a.p{i}" for i in range(6)]
MODEL = LogisticRegression(4, 2)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[DeviceMesh]:
    env = daemon_env(passphrase=PASSPHRASE)
    with reaped(env) as daemons:
        m = DeviceMesh(tmp_path, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP)
            daemons.run("cloud-1", cloud)
            enroll_edge(
                cloud, m.dir("edge-a"), "edge-a", PASSPHRASE, top=TOP + EDGE_TOP, tables=EDGE_RULES
            )
            daemons.run("edge-a", m.dir("edge-a"))
            tokens = {name: end_token(m.dir("edge-a")) for name in DEVICES}
            tokens["edge-a.ops"] = end_token(m.dir("edge-a"), "fl-operator")
            m.enroll_devices("edge-a", tokens, PASSPHRASE, unconnected=DEVICES)
            yield m
        finally:
            m.close_devices()


def test_rounds_complete_when_devices_are_killed_mid_round(mesh: DeviceMesh) -> None:
    marks = mesh.root / "marks"
    marks.mkdir()
    env = daemon_env(passphrase=PASSPHRASE)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, name in enumerate(DEVICES):
            with open(mesh.root / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, str(HERE / "fl_device.py"), str(mesh.dir(name)), str(i),
                     str(marks)],
                    env=env, stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
        for i, name in enumerate(DEVICES):
            joined, proc = marks / f"{i}.joined", procs[name]
            poll(lambda f=joined, p=proc: f.exists() or p.poll() is not None, f"{name} to join")
            assert procs[name].poll() is None, (mesh.root / f"{name}.log").read_text()[-2000:]

        init = MODEL.init(np.random.default_rng(0))
        ops = mesh.devices["edge-a.ops"]
        reply = ops.request(
            "edge-a", "fl.run",
            RunBody(rounds=2, clients_per_round=len(DEVICES), clip=2.0, stage_timeout=3.0),
            [init.astype("<f8").tobytes()], timeout=20,
        ).json()  # fmt: skip
        assert reply["started"] is True

        # round 1: p5 dies after it trained; round 2: p4 does
        victims = {1: (5, DEVICES[5]), 2: (4, DEVICES[4])}
        for round_no, (index, name) in victims.items():
            poll(lambda f=marks / f"{index}.trained-{round_no}": f.exists(), f"{name} to train")
            procs[name].kill()
            procs[name].wait(timeout=30)

        def done() -> bool:
            fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
            return fl["rounds"] >= 2 and not fl["running"]

        poll(done, "two federated rounds", timeout=90)
        status: dict[str, Any] = ops.request("edge-a", "fl.status", {}, timeout=10).json()
        last = status["last"]
        assert "aborted" not in last, last
        assert status["rounds"] == 2
        # p5 (dead all round 2) is not among its survivors; p4 may be, if its masked
        # input was in before the kill (SecAgg+ then removes its self-mask with the
        # survivors' shares)
        assert set(DEVICES[:4]) <= set(last["survivors"]) <= set(DEVICES[:5])
        assert last["model_hash"] != model_hash(init)
        cloud_db = str(mesh.dir("cloud-1") / "audit.db")

        def rounds_logged() -> list[dict[str, Any]]:
            out = cli(
                "audit", "query", "--db", cloud_db, "--kind", "fl.round_finished",
                "--format", "json",
            )  # fmt: skip
            rows = json.loads(out)
            assert isinstance(rows, list)
            return rows

        poll(lambda: len(rounds_logged()) >= 2, "fl.round_finished events in the cloud log")
        rows = rounds_logged()
        assert [r["details"]["round"] for r in rows] == [1, 2]
        # round 1 can only have lost p5 (killed after training)
        first = set(rows[0]["details"]["survivors"].split(","))
        assert set(DEVICES[:5]) <= first
        assert rows[1]["details"]["survivors"] == ",".join(last["survivors"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
