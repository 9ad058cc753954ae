"""Device over real ZeroMQ on loopback: enroll, connect, send, request, on, close."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict
from sdk_support import FAST_KDF, PASSPHRASE, Clock, EnrollFn, Infra

from securemesh.errors import (
    EncodeError,
    LocalError,
    PeerUnavailable,
    RemoteCallError,
    StateFileError,
    TransportClosed,
    TransportError,
    WrongPassphrase,
)
from securemesh.sdk import AsyncDevice, Device, Message, Reply


class Reading(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    sensor: str
    celsius: float


def connect(path: Path, clock: Clock) -> Device:
    return Device.connect(path, passphrase=PASSPHRASE, clock=clock, connect_timeout=10.0)


def test_enroll_writes_a_daemon_compatible_data_dir(
    infra: Infra, enroll: EnrollFn, tmp_path: Path
) -> None:
    info = enroll("dev-1")
    assert (info.node_id, info.tier, info.roles, info.issuer) == (
        "dev-1",
        "end",
        ("sensor",),
        "edge-1",
    )
    assert info.new_keys
    files = {p.name for p in (tmp_path / "dev-1").iterdir()}
    assert {"identity.key", "node.cert", "authority.cert", "trust.json", "node.toml"} <= files
    assert {"revocation.list", "sequence.state"} <= files
    from securemesh.node import load_config

    config = load_config(tmp_path / "dev-1" / "node.toml")
    assert config.tier == "end"
    assert config.parent is not None
    assert config.parent.endpoint == infra.edge.address
    # The key file is encrypted: no key material in clear, the passphrase is needed.
    with pytest.raises(WrongPassphrase):
        Device.connect(tmp_path / "dev-1", passphrase="wrong", connect_timeout=1)


def test_send_request_and_handlers(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    with connect(tmp_path / "dev-1", clock) as dev:
        assert dev.state == "connected"
        assert dev.parent_id == "edge-1"
        edge = dev.parent_id
        # one-way: dict body (canonical JSON) with a raw frame
        dev.send(edge, "app.reading", {"celsius": 21.5, "sensor": "t1"}, frames=[b"\x00raw"])
        sender, body, frames = infra.readings.get(timeout=10)
        assert (sender, body, frames) == ("dev-1", {"celsius": 21.5, "sensor": "t1"}, (b"\x00raw",))
        # one-way: a pydantic model
        dev.send(edge, "app.reading", Reading(sensor="t2", celsius=-3.25))
        assert infra.readings.get(timeout=10)[1] == {"sensor": "t2", "celsius": -3.25}
        # request/reply with frames
        reply = dev.request(edge, "app.echo", {"n": 1}, frames=[b"a", b"b"], timeout=10)
        assert isinstance(reply, Message)
        assert reply.sender == "edge-1"
        assert reply.msg_type == "app.echo"
        assert reply.json() == {"n": 1, "_serial": dev.certificate.serial, "_sender": "dev-1"}
        assert reply.frames == (b"a", b"b")
        assert reply.certificate is not None
        assert reply.certificate.node_id == "edge-1"
        # the edge's handler fails: a mesh.error reply
        with pytest.raises(RemoteCallError, match="internal"):
            dev.request(edge, "app.fail", {}, timeout=10)

        # handlers: run on the SDK handler thread, may call back into the device
        threads: queue.Queue[str] = queue.Queue()

        def on_cmd(msg: Message) -> object:
            threads.put(threading.current_thread().name)
            inner = dev.request(edge, "app.echo", {"inner": msg.json()["x"]}, timeout=10)
            return Reply({"ok": True, "inner": inner.json()["inner"]}, frames=[b"r"])

        def on_model(msg: Message) -> Reading:
            return msg.body(Reading)

        dev.on("dev.cmd", on_cmd)
        dev.on("dev.model", on_model)
        answer = infra.edge_request("dev-1", "dev.cmd", {"x": 7})
        assert json.loads(answer.body_bytes) == {"inner": 7, "ok": True}
        assert [bytes(f) for f in answer.raw_frames] == [b"r"]
        assert threads.get(timeout=5).startswith("securemesh-sdk-handler")
        echoed = infra.edge_request("dev-1", "dev.model", {"sensor": "s", "celsius": 1.0})
        assert json.loads(echoed.body_bytes) == {"sensor": "s", "celsius": 1.0}
        # a handler that raises -> an error reply, the device keeps serving
        dev.on("dev.fail", lambda msg: 1 / 0)
        with pytest.raises(RemoteCallError):
            infra.edge_request("dev-1", "dev.fail", {})
        # handlers cannot close the device they run on
        errors: queue.Queue[BaseException] = queue.Queue()

        def closer(msg: Message) -> None:
            try:
                dev.close()
            except LocalError as exc:
                errors.put(exc)

        dev.on("dev.close", closer)
        infra.edge_request("dev-1", "dev.close", {})
        assert isinstance(errors.get(timeout=5), LocalError)
        assert dev.status()["sdk"] == {
            "state": "connected",
            "renewals": 0,
            "renew_at": dev.async_device.renew_at,
            "last_renewal_error": None,
        }
    assert str(dev.state) == "closed"
    with pytest.raises(TransportClosed):
        dev.send("edge-1", "app.reading", {})
    dev.close()  # idempotent


def test_handler_authorization_by_tier(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    with connect(tmp_path / "dev-1", clock) as dev:
        calls: list[str] = []
        dev.on("dev.cloud-only", lambda msg: calls.append(msg.sender), tiers=["cloud"])
        # an edge may not send it: rejected by the device's pipeline (no reply)
        with pytest.raises(TimeoutError):
            infra.edge_request("dev-1", "dev.cloud-only", {}, timeout=0.5)
        # the cloud may (routed cloud -> edge -> device, verified again at the device)
        reply = infra.loop.call(infra.cloud.request("dev-1", "dev.cloud-only", b"{}", timeout=10))
        assert reply.sender == "dev-1"
        assert calls == ["cloud-1"]
        counters = dev.status()["counters"]
        assert isinstance(counters, dict)
        assert counters["rejections"] == {"unauthorized": 1}


def test_an_unanswered_request_names_peer_type_and_wait(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    with connect(tmp_path / "dev-1", clock) as dev:
        # the edge has no handler for it: refused there, and a refusal gets no reply
        with pytest.raises(TimeoutError) as caught:
            dev.request("edge-1", "app.nobody-handles-this", {}, timeout=0.5)
        text = str(caught.value)
        assert "'edge-1'" in text
        assert "'app.nobody-handles-this'" in text
        assert "0.5 s" in text
        assert "a refused request" in text
        assert "gets no reply" in text
        # the node's own timeout path (without the SDK's outer wait) says the same
        node = dev._dev.node
        with pytest.raises(
            TimeoutError, match=r"no reply from 'edge-1' to 'app\.none' within 0\.3 s"
        ):
            dev._call(node.request("edge-1", "app.none", b"{}", timeout=0.3))


def test_an_operator_policy_in_the_device_toml_bounds_its_handlers(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    """With ``[policy]`` rules in the device's node.toml, ``dev.on`` only narrows them."""
    enroll("dev-1")
    with open(tmp_path / "dev-1" / "node.toml", "a", encoding="utf-8") as f:
        f.write('\n[[policy.allow]]\ntypes = ["dev.cfg"]\ntiers = ["cloud"]\n')
    with connect(tmp_path / "dev-1", clock) as dev:
        calls: list[str] = []
        # the app would take dev.cfg from the edge and the cloud, and dev.other from them
        dev.on("dev.cfg", lambda msg: calls.append(msg.sender), tiers=["edge", "cloud"])
        dev.on("dev.other", lambda msg: calls.append(msg.sender), tiers=["edge", "cloud"])
        with pytest.raises(TimeoutError):  # the operator: dev.cfg from the cloud only
            infra.edge_request("dev-1", "dev.cfg", {}, timeout=0.5)
        with pytest.raises(TimeoutError):  # the operator names no dev.other at all
            infra.edge_request("dev-1", "dev.other", {}, timeout=0.5)
        reply = infra.loop.call(infra.cloud.request("dev-1", "dev.cfg", b"{}", timeout=10))
        assert reply.sender == "dev-1"
        assert calls == ["cloud-1"]
        counters = dev.status()["counters"]
        assert isinstance(counters, dict)
        assert counters["rejections"] == {"unauthorized": 2}


def test_bodies_are_validated_before_sending(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    with connect(tmp_path / "dev-1", clock) as dev:
        for bad in ({"x": float("nan")}, {"x": b"bytes"}, {1: "key"}, {"x": {1, 2}}, [1, 2], 42):
            with pytest.raises(EncodeError):
                dev.send("edge-1", "app.reading", bad)
        with pytest.raises(EncodeError):  # bigger than the 64 KiB body limit
            dev.send("edge-1", "app.reading", {"x": "a" * 70_000})
        dev.send("edge-1", "app.reading", {"ok": True})
        assert infra.readings.get(timeout=10)[1] == {"ok": True}


def test_one_device_per_data_dir_and_tokens_are_one_time(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    token = infra.token()
    Device.enroll(
        token,
        data_dir=tmp_path / "d1",
        node_id="dev-1",
        passphrase=PASSPHRASE,
        kdf_params=FAST_KDF,
        clock=clock,
    )
    with connect(tmp_path / "d1", clock):
        with pytest.raises(StateFileError):
            connect(tmp_path / "d1", clock)
        with pytest.raises(StateFileError):  # re-enrolling needs the device closed
            enroll("dev-1", data_dir=tmp_path / "d1")
    with pytest.raises(TransportError, match="refused this token's key"):
        Device.enroll(
            token,
            data_dir=tmp_path / "d2",
            node_id="dev-2",
            passphrase=PASSPHRASE,
            kdf_params=FAST_KDF,
            clock=clock,
            timeout=1.0,
        )


def test_async_device(infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock) -> None:
    import asyncio

    enroll("dev-a")

    async def main() -> None:
        async with await AsyncDevice.connect(
            tmp_path / "dev-a", passphrase=PASSPHRASE, clock=clock
        ) as dev:
            seen = asyncio.Event()

            async def on_ping(msg: Message) -> dict[str, object]:
                seen.set()
                return {"pong": msg.json()["n"]}

            dev.on("dev.ping", on_ping)
            reply = await dev.request("edge-1", "app.echo", {"a": 1}, timeout=10)
            assert reply.json()["a"] == 1
            answer = await asyncio.to_thread(infra.edge_request, "dev-a", "dev.ping", {"n": 3})
            assert json.loads(answer.body_bytes) == {"pong": 3}
            assert seen.is_set()

    asyncio.run(main())


def test_connect_times_out_cleanly_when_the_edge_is_unreachable(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    toml = tmp_path / "dev-1" / "node.toml"
    text = toml.read_text()
    assert str(infra.edge.address) in text
    toml.write_text(text.replace(str(infra.edge.address), "tcp://127.0.0.1:9"))
    with pytest.raises(PeerUnavailable, match="did not answer"):
        Device.connect(tmp_path / "dev-1", passphrase=PASSPHRASE, clock=clock, connect_timeout=0.5)
    # nothing left behind: the data dir is usable again (sequence lock released)
    dev = Device.connect(
        tmp_path / "dev-1", passphrase=PASSPHRASE, clock=clock, connect_timeout=None
    )
    try:
        assert dev.state == "connecting"
        assert dev.parent_id is None
        # the timeout bounds the whole call, queueing towards the absent edge included
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            dev.request("edge-1", "app.echo", {}, timeout=0.5)
        assert time.monotonic() - begun < 3
    finally:
        dev.close()


def test_replay_marks_survive_a_restart(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    with connect(tmp_path / "dev-1", clock) as dev:
        dev.on("dev.cmd", lambda msg: None)
        infra.edge_request("dev-1", "dev.cmd", {})
        marks = dev.async_device.node.replay_high_water_marks()
        assert "edge-1" in marks
    saved = json.loads((tmp_path / "dev-1" / "replay.json").read_text())
    assert saved["edge-1"] >= marks["edge-1"]
    with connect(tmp_path / "dev-1", clock) as dev:
        restored = dev.async_device.node.replay_high_water_marks()
        assert restored["edge-1"] >= saved["edge-1"]


def test_replay_marks_are_saved_on_the_injected_monotonic_clock(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    """Issue 8 ("time is a parameter"): the 30 s replay-save interval reads ``monotonic``."""
    enroll("dev-1")
    skip = [0.0]

    def monotonic() -> float:
        return time.monotonic() + skip[0]

    replay_file = tmp_path / "dev-1" / "replay.json"

    def saved() -> dict[str, int]:
        return json.loads(replay_file.read_text()) if replay_file.exists() else {}

    with Device.connect(
        tmp_path / "dev-1",
        passphrase=PASSPHRASE,
        clock=clock,
        monotonic=monotonic,
        renew_check_interval=0.05,
        connect_timeout=10.0,
    ) as dev:
        dev.on("dev.cmd", lambda msg: None)
        infra.edge_request("dev-1", "dev.cmd", {})
        assert "edge-1" in dev.async_device.node.replay_high_water_marks()
        assert "edge-1" not in saved()  # the interval has not passed on its clock
        skip[0] = 31.0  # the injected clock jumps past the interval: the next tick saves
        deadline = time.monotonic() + 10
        while "edge-1" not in saved():
            assert time.monotonic() < deadline, "replay marks not saved after the interval"
            time.sleep(0.02)


def test_session_fast_path_to_the_edge(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-a")
    with connect(tmp_path / "dev-a", clock) as dev_a:
        for n in range(3):
            out = dev_a.request("edge-1", "app.echo", {"n": n}, auth="session", timeout=10)
            assert out.json()["n"] == n
        dev_a.send("edge-1", "app.reading", {"mac": True}, auth="session")
        assert infra.readings.get(timeout=10)[1] == {"mac": True}
        sessions = dev_a.status()["sessions"]
        assert isinstance(sessions, dict)
        assert sessions["peers"] == ["edge-1"]


def test_device_to_device_through_the_edge(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-a")
    enroll("dev-b")
    with connect(tmp_path / "dev-a", clock) as dev_a, connect(tmp_path / "dev-b", clock) as dev_b:
        dev_b.on("peer.ping", lambda msg: {"pong": msg.sender}, tiers=["end"])
        # Neither device knows the other's certificate: dev-b holds the request
        # while it asks the edge (cert.lookup), dev-a holds the reply the same
        # way. The FIRST request is answered; nothing is lost or rejected.
        assert "dev-a" not in dev_b.async_device.node.directory
        reply = dev_a.request("dev-b", "peer.ping", {}, timeout=10)
        assert reply.json() == {"pong": "dev-a"}
        assert reply.certificate is not None
        assert reply.certificate.node_id == "dev-b"
        for dev in (dev_a, dev_b):
            status = dev.status()
            counters = status["counters"]
            assert isinstance(counters, dict)
            assert counters["rejections"] == {}
            held = status["held"]
            assert isinstance(held, dict)
            assert (held["held"], held["released"], held["messages"]) == (1, 1, 0)
        # later messages verify at once (nothing held any more)
        for n in range(3):
            assert (
                dev_a.request("dev-b", "peer.ping", {"n": n}, timeout=10).json()["pong"] == "dev-a"
            )
        for dev in (dev_a, dev_b):
            held = dev.status()["held"]
            assert isinstance(held, dict)
            assert held["held"] == 1


def test_close_while_a_handler_waits_on_a_request(
    infra: Infra, enroll: EnrollFn, tmp_path: Path, clock: Clock
) -> None:
    enroll("dev-1")
    dev = connect(tmp_path / "dev-1", clock)
    started = threading.Event()
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def slow(msg: Message) -> None:
        started.set()
        try:
            dev.request("edge-1", "app.nobody-answers", {}, timeout=30)
            outcome.put(None)
        except BaseException as exc:
            outcome.put(exc)

    dev.on("dev.slow", slow)
    infra.loop.call(infra.edge.send("dev-1", "dev.slow", b"{}"))
    assert started.wait(10)
    begun = time.monotonic()
    dev.close(drain_timeout=0.2)
    assert time.monotonic() - begun < 10
    assert isinstance(outcome.get(timeout=5), TransportClosed)
