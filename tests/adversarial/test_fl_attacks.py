"""Attacks on federated learning (SecAgg+ over the bus) by compromised devices (issue #15).

The edge of the operator-built mesh runs the FL coordinator
(``securemesh.fl:FLCoordinator``). Seven honest devices and four compromised
ones join the federation with the real SDK (``Device.join_federation``); a
compromised device's keys and SDK are the attacker's, so what it sends is
properly signed, and each rewrites its own SecAgg frames on the way out:

1. **malformed shares** — its ``ShareKeys`` ciphertexts are corrupted: the
   honest holders cannot open them, complain, and the server excludes it;
2. **another identity** — its masked input names an honest device as the
   client: excluded (the bus authenticated the real sender);
3. **twice** — it sends its masked input twice: excluded at the second;
4. **oversize** — its masked input is 1 MiB longer than the round's vector:
   excluded;
5. a device **not in the cohort** (enrolled, never joined) sends SecAgg
   frames during the round: ignored and counted (``rejected_frames``);
6. a participant **without the fl-operator role** sends ``fl.run``: refused
   by the policy (counted by the edge), no run starts.

Each exclusion is audited (``fl.client_excluded`` in the cloud's log, with
the stage and the reason), and both rounds still finish for the seven honest
devices with the exact mean of the round's survivors (U3): the second round's
global model, as the honest devices receive it, moved by those updates only
(the attackers' updates are 25 to 100 times larger, so including one would
show). Only the *twice* attacker can end up in U3: when its first copy was the
last input the stage waited for, the stage is over when the copy arrives; it
is still excluded (the copy is a stray message of the next stage), and its
input, accepted before, stays in the sum as the protocol says (Bonawitz et
al. 2017: U3 is fixed once the masked inputs are in). A sans-I/O test
adds what cannot be said over the bus with 32-bit rings: a masked input
outside ``Z_2^bits`` (here 24 bits) is refused as malformed.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_support import cli
from harness import FAST_KDF, PASSPHRASE, Mesh, operator_mesh, wait_until

from securemesh.fl import RunBody
from securemesh.fl._bus import MSG_SECAGG
from securemesh.fl._memory import run_in_memory
from securemesh.fl._messages import MaskedInput, ShareKeys, decode
from securemesh.fl._participant import Participant
from securemesh.fl._secagg import ServerState
from securemesh.sdk import Device

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fl"))
from fl_support import make_cohort

pytestmark = pytest.mark.slow

EDGE = "edge-1"
FL_RULES = '\n[[policy.allow]]\ntypes = ["fl.*"]\ntiers = ["end"]\n'
HONEST = [f"edge-1.h{i}" for i in range(7)]
SHARES, IDENTITY, TWICE, OVERSIZE = (
    "edge-1.m-shares",
    "edge-1.m-identity",
    "edge-1.m-twice",
    "edge-1.m-oversize",
)
ATTACKERS = [SHARES, IDENTITY, TWICE, OVERSIZE]
PARAMS = 6
INIT = np.zeros(PARAMS)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with operator_mesh(
        tmp_path_factory.mktemp("fl-attacks"),
        edge_services=["securemesh.fl:FLCoordinator"],
        edge_tables=FL_RULES,
    ) as built:
        yield built


def _device(mesh: Mesh, name: str, roles: str = "sensor") -> Device:
    data_dir = mesh.root / "devices" / name
    Device.enroll(
        mesh.token(roles=roles), data_dir=data_dir, node_id=name,
        passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=30,
    )  # fmt: skip
    return mesh.connect(data_dir)


def _delta(name: str) -> float:
    """Each honest device moves every parameter by its own small step; attackers by 1.0."""
    return 0.01 * (HONEST.index(name) + 1) if name in HONEST else 1.0


class Trainer:
    """The training callback: records the global parameters each round brings."""

    def __init__(self, name: str) -> None:
        self.step = _delta(name)
        self.seen: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, params: np.ndarray) -> tuple[np.ndarray, int]:
        with self.lock:
            self.seen.append(params.copy())
        return params + self.step, 10


def _tamper(participant: Participant, rewrite: Callable[[Any], list[bytes]], kind: type) -> None:
    """Rewrite the participant's outgoing SecAgg frames of message class ``kind``."""
    send = participant._send  # the SDK's send to the coordinator

    def tampered(msg_type: str, body: bytes, frames: Any) -> None:
        if msg_type == MSG_SECAGG:
            msg = decode(bytes(frames[0]))
            if isinstance(msg, kind):
                for frame in rewrite(msg):
                    send(msg_type, body, [frame])
                return
        send(msg_type, body, frames)

    participant._send = tampered  # type: ignore[method-assign]


def _corrupt_shares(msg: ShareKeys) -> list[bytes]:
    bad = tuple((holder, ct[:-1] + bytes([ct[-1] ^ 1])) for holder, ct in msg.ciphertexts)
    return [ShareKeys(msg.round_id, msg.client, bad).encode()]


def _as_victim(msg: MaskedInput) -> list[bytes]:
    return [MaskedInput(msg.round_id, HONEST[0], msg.vector, msg.complaints).encode()]


def _twice(msg: MaskedInput) -> list[bytes]:
    return [msg.encode(), msg.encode()]


def _oversize(msg: MaskedInput) -> list[bytes]:
    return [
        MaskedInput(msg.round_id, msg.client, msg.vector + bytes(1 << 20), msg.complaints).encode()
    ]


def _audited(mesh: Mesh, kind: str) -> list[dict[str, Any]]:
    db = str(mesh.cloud_dir / "audit.db")
    rows = json.loads(cli("audit", "query", "--db", db, "--kind", kind, "--format", "json"))
    assert isinstance(rows, list)
    return rows


def _fl(mesh: Mesh) -> dict[str, Any]:
    return dict(mesh.status("edge")["services"]["fl"])


def test_compromised_participants_are_excluded_and_the_round_goes_on(mesh: Mesh) -> None:
    devices: dict[str, Device] = {}
    try:
        for name in [*HONEST, *ATTACKERS, "edge-1.outsider"]:
            devices[name] = _device(mesh, name)
        devices["edge-1.ops"] = _device(mesh, "edge-1.ops", roles="fl-operator")
        trainers = {name: Trainer(name) for name in [*HONEST, *ATTACKERS]}
        participants = {
            name: devices[name].join_federation(EDGE, trainers[name], samples=10)
            for name in trainers
        }
        _tamper(participants[SHARES], _corrupt_shares, ShareKeys)
        _tamper(participants[IDENTITY], _as_victim, MaskedInput)
        _tamper(participants[TWICE], _twice, MaskedInput)
        _tamper(participants[OVERSIZE], _oversize, MaskedInput)

        # 6. a participant without fl-operator: fl.run is refused by the policy, counted
        rejected = sum(mesh.rejections("edge").values())
        run = RunBody(rounds=2, clients_per_round=11, clip=2.0, stage_timeout=8.0)
        devices[TWICE].send(EDGE, "fl.run", run, [INIT.astype("<f8").tobytes()])
        wait_until(
            lambda: sum(mesh.rejections("edge").values()) > rejected,
            what="the edge to count the unauthorized fl.run",
        )
        assert _fl(mesh)["rounds"] == 0
        assert not _fl(mesh)["running"]

        # the operator starts two rounds with all eleven joined devices
        before = _fl(mesh)["rejected_frames"]
        reply = (
            devices["edge-1.ops"]
            .request(EDGE, "fl.run", run, [INIT.astype("<f8").tobytes()], timeout=20)
            .json()
        )
        assert reply["started"] is True
        # 5. a device outside the cohort sends SecAgg frames meanwhile
        outsider = devices["edge-1.outsider"]
        for junk in (b"", b"\x00" * 64, _twice.__name__.encode()):
            outsider.send(EDGE, MSG_SECAGG, b"{}", [junk])
        wait_until(
            lambda: _fl(mesh)["rounds"] >= 2 and not _fl(mesh)["running"],
            timeout=90,
            what="two federated rounds",
        )
        fl = _fl(mesh)
        last = fl["last"]
        assert "aborted" not in last, last
        assert sorted(last["participants"]) == sorted([*HONEST, *ATTACKERS])
        assert fl["rejected_frames"] >= before + 3

        # every exclusion reached the cloud's audit log, with its stage and reason
        try:
            wait_until(
                lambda: (
                    len(_audited(mesh, "fl.round_finished")) >= 2
                    and len(_audited(mesh, "fl.client_excluded")) >= 2 * len(ATTACKERS)
                ),
                timeout=60,
                what="the rounds and the exclusions in the cloud log",
            )
        except AssertionError as exc:
            seen = [r["details"] for r in _audited(mesh, "fl.client_excluded")]
            done = [r["details"] for r in _audited(mesh, "fl.round_finished")]
            raise AssertionError(f"{exc}: rounds {done}, exclusions {seen}, fl {fl}") from exc
        by_node: dict[str, list[dict[str, Any]]] = {}
        for row in _audited(mesh, "fl.client_excluded"):
            assert row["subject"] == {"type": "round", "id": str(row["details"]["round"])}
            by_node.setdefault(row["details"]["client"], []).append(row["details"])
        assert set(by_node) == set(ATTACKERS), by_node
        expect = {
            SHARES: ("bad share",),
            IDENTITY: ("names another client",),
            # the copy is refused in the masked stage, or (when the first copy was the
            # last one the stage waited for) as a stray message of the next stage
            TWICE: ("second message", "unexpected MaskedInput"),
            OVERSIZE: ("masked input is not",),
        }
        for node, needles in expect.items():
            assert len(by_node[node]) == 2, by_node[node]  # once per round
            for details in by_node[node]:
                assert any(n in details["reason"] for n in needles), details
        assert all(d["accuser"] in HONEST for d in by_node[SHARES])

        # each round sums exactly its survivors (U3): every honest device, and no
        # attacker but one whose masked input was in before it misbehaved
        rounds = [r["details"] for r in _audited(mesh, "fl.round_finished")][-2:]
        for details in rounds:
            survivors = details["survivors"].split(",")
            assert set(HONEST) <= set(survivors) <= {*HONEST, TWICE}, survivors
        first_mean = np.mean([_delta(n) for n in rounds[0]["survivors"].split(",")])
        for name in HONEST:
            assert participants[name].rounds_done == 2, (name, participants[name].last_error)
            first, second = trainers[name].seen
            assert np.array_equal(first, INIT)
            # what the honest devices received for round 2: the init plus round 1's mean
            assert np.allclose(second - first, first_mean, atol=0.005), (second - first, first_mean)
    finally:
        for dev in devices.values():
            dev.close(drain_timeout=1.0)


def test_a_masked_input_outside_the_ring_is_refused() -> None:
    """With 24-bit rings in 32-bit words, a value >= 2^24 is malformed (sans-I/O)."""
    cohort = make_cohort(6, length=10, degree=5, bits=24)
    liar = cohort.config.cohort[-1]

    def out_of_ring(stage: str, frame: bytes) -> bytes:
        if stage != "masked":
            return frame
        msg = decode(frame)
        assert isinstance(msg, MaskedInput)
        vector = bytearray(msg.vector)
        vector[-4:] = b"\xff\xff\xff\xff"
        return MaskedInput(msg.round_id, msg.client, bytes(vector), msg.complaints).encode()

    run = run_in_memory(cohort.server(), cohort.clients(), tamper={liar: out_of_ring})
    assert run.server.state is ServerState.DONE
    (excluded,) = run.server.take_exclusions()
    assert excluded.client == liar
    assert "outside Z_2^24" in excluded.reason
    assert np.array_equal(run.server.result, cohort.expected(cohort.config.cohort[:-1]))
