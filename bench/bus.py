"""Bus benchmark: raw ZeroMQ vs CURVE vs the full SecureMesh path, one process, loopback.

    python bench/bus.py [--messages 20000] [--rounds 3] [--rtts 2000]

Every figure is measured in this one run, on ``tcp://127.0.0.1``, with 1 KiB
messages, sender and receiver on ONE asyncio event loop in ONE thread (the
machines have 2 cores; every path — baseline included — pays for both ends on
the same core, so the ratios compare like with like). Throughput is *one
directional*: messages fully received **and processed** per second at the
receiver; the sender pipelines its sends but keeps at most ``--window``
messages in flight (sent, not yet processed) so no high-water mark is hit and
nothing is dropped. Each figure is the best of ``--rounds`` interleaved rounds.

Paths:

* ``raw`` — pyzmq ``zmq.asyncio`` DEALER → ROUTER, no security (the
  baseline). Two receive styles are measured and the *faster* one is the
  baseline: idiomatic ``await recv_multipart()`` per message, and "poll, then
  drain with NOBLOCK" (what the mesh transport does). ``raw_sync_msgs_per_s``
  is a synchronous pyzmq figure for reference only (no event loop).
* ``curve`` — the same asyncio sockets with CurveZMQ (RFC 26) on the
  connection; no ZAP handler (ZAP runs once per connection, not per message).
* ``mesh`` — two :class:`~securemesh.node.MeshNode` (a device and its cloud
  parent) over :class:`~securemesh.transport.ZmqTransport`: CURVE with the
  callback ZAP handler, then per message the whole pipeline — size limits,
  decode, sender certificate (valid, unexpired, unrevoked) and its binding to
  the CURVE key, session MAC (keyed BLAKE2b, after one session handshake),
  replay window, authorization by policy, dispatch to a registered handler
  that counts. The device sends with ``node.send(..., auth="session")``.
  Its connection queues what it is given and sends what accumulated in one
  event-loop pass as one ZeroMQ message (a batch, protocol.md §2.1) — part
  of the product, not of the bench; every envelope in a batch is still
  checked on its own. The raw and CURVE baselines send one ZeroMQ message
  per message, as plain pyzmq code does.
* ``signed`` — SIGNED envelopes (Ed25519) through the same pipeline. Two
  figures: ``signed_msgs_per_s`` is the *receiver's* rate — the device node
  encodes and signs the envelopes before the clock starts (its real
  ``_encode``, fresh sequence numbers) and pushes them through its own
  transport connection, so the loop measures exactly what the receiving node
  does per message; that is what ``ratio_signed_vs_verify`` compares with the
  bare verify rate (a receiver verifies; it does not also sign).
  ``signed_e2e_msgs_per_s`` has the sender sign inside the timed loop too
  (``node.send(..., auth="signed")``), sign + verify on one core.
* ``ed25519_verify_per_s`` — bare pynacl verify of a signature over 1 KiB.
* Latency: sequential request/reply round trips (1 KiB each way): raw
  DEALER→ROUTER echo vs ``node.request(..., auth="session")`` to a handler
  that returns the body; p50/p99 in microseconds.

The last line is one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.signing
import zmq
import zmq.asyncio

from securemesh.crypto import Authority, NodeIdentity, SignedCertificate, TrustStore
from securemesh.crypto.signing import Ed25519Signer
from securemesh.crypto.z85 import z85_decode
from securemesh.node import Directory, MeshNode, NodeConfig, VerifiedMessage
from securemesh.transport import CurveKeyPair, ZmqTransport

KIB = 1024
HWM = 1000  # TransportOptions' default SNDHWM/RCVHWM, used by every path
BODY = b'{"data":"' + b"x" * (KIB - 11) + b'"}'
assert len(BODY) == KIB
PAYLOAD = os.urandom(KIB)
MSG_TYPE = "app.bench"
ECHO_TYPE = "app.echo"


# ------------------------------------------------------------------ helpers


class Flow:
    """Bounded in-flight accounting shared by one sender and one receiver."""

    def __init__(self, total: int, window: int) -> None:
        self.total = total
        self.window = window
        self.received = 0
        self.sent = 0
        self.room = asyncio.Event()
        self.done = asyncio.Event()

    def got(self, n: int = 1) -> None:
        self.received += n
        if self.received >= self.total:
            self.done.set()
        if self.sent - self.received < self.window // 2:
            self.room.set()

    async def wait_room(self) -> None:
        while self.sent - self.received >= self.window:
            self.room.clear()
            await self.room.wait()


async def timed(flow: Flow, sender: Awaitable[None], timeout: float = 120.0) -> float:
    """Run the sender; return received/second once the receiver got everything."""
    start = time.perf_counter()
    send_task = asyncio.ensure_future(sender)
    await asyncio.wait_for(flow.done.wait(), timeout)
    elapsed = time.perf_counter() - start
    await send_task
    return flow.total / elapsed


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50 * 1e6, p99 * 1e6


def curve_pair() -> tuple[bytes, bytes]:
    public, secret = zmq.curve_keypair()
    return z85_decode(public.decode()), z85_decode(secret.decode())


# --------------------------------------------------------------- raw / CURVE


def _pair(
    ctx: zmq.asyncio.Context, *, curve: bool
) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
    if curve:
        spub, ssec = curve_pair()
        cpub, csec = curve_pair()
        router.curve_server = True
        router.curve_secretkey = ssec
        router.curve_publickey = spub
        dealer.curve_serverkey = spub
        dealer.curve_publickey = cpub
        dealer.curve_secretkey = csec
    router.bind("tcp://127.0.0.1:0")
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    return router, dealer


async def _connected(router: zmq.asyncio.Socket, dealer: zmq.asyncio.Socket) -> None:
    await dealer.send(b"hi")
    await router.recv_multipart()


async def _raw_sender(dealer: zmq.asyncio.Socket, flow: Flow) -> None:
    while flow.sent < flow.total:
        await flow.wait_room()
        await dealer.send(PAYLOAD)
        flow.sent += 1


async def _recv_await(router: zmq.asyncio.Socket, flow: Flow) -> None:
    while flow.received < flow.total:
        _rid, data = await router.recv_multipart()
        if len(data) == KIB:
            flow.got()


async def _recv_drain(router: zmq.asyncio.Socket, flow: Flow) -> None:
    shadow: zmq.Socket[bytes] = zmq.Socket.shadow(router.underlying)
    while flow.received < flow.total:
        await router.poll(flags=zmq.POLLIN)  # type: ignore[call-arg]
        while True:
            try:
                _rid, data = shadow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(data) == KIB:
                flow.got()
        router.get(zmq.EVENTS)  # re-arm pyzmq's edge-triggered futures


async def zmq_throughput(n: int, window: int, *, curve: bool, drain: bool) -> float:
    ctx = zmq.asyncio.Context()
    router, dealer = _pair(ctx, curve=curve)
    try:
        await _connected(router, dealer)
        flow = Flow(n, window)
        recv = _recv_drain if drain else _recv_await
        rtask = asyncio.ensure_future(recv(router, flow))
        rate = await timed(flow, _raw_sender(dealer, flow))
        await rtask
        return rate
    finally:
        ctx.destroy(linger=0)


def raw_sync_throughput(n: int, window: int) -> float:
    """Synchronous reference: send a window, drain it, repeat (one thread)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
    try:
        router.bind("tcp://127.0.0.1:0")
        dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
        dealer.send(b"hi")
        router.recv_multipart()
        received = 0
        start = time.perf_counter()
        while received < n:
            batch = min(window, n - received)
            for _ in range(batch):
                dealer.send(PAYLOAD)
            for _ in range(batch):
                router.recv_multipart()
            received += batch
        return n / (time.perf_counter() - start)
    finally:
        ctx.destroy(linger=0)


async def raw_latency(count: int) -> list[float]:
    ctx = zmq.asyncio.Context()
    router, dealer = _pair(ctx, curve=False)
    try:
        await _connected(router, dealer)

        async def echo() -> None:
            for _ in range(count):
                rid, data = await router.recv_multipart()
                await router.send_multipart([rid, data])

        task = asyncio.ensure_future(echo())
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            await dealer.send(PAYLOAD)
            await dealer.recv()
            samples.append(time.perf_counter() - t0)
        await task
        return samples
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------- mesh


class Mesh:
    """A cloud node listening on loopback and one device connected to it."""

    def __init__(self) -> None:
        self.now = time.time()
        self.authority = Authority.create("bench-root", now=self.now - 60)
        self.flow: Flow | None = None
        self.nodes: list[MeshNode] = []
        self.members: dict[str, tuple[NodeIdentity, SignedCertificate]] = {}

    def _trust(self) -> TrustStore:
        trust = TrustStore({self.authority.authority_id: self.authority.verify_key})
        trust.update_revocation_list(self.authority.revocation_list)
        return trust

    def _node(self, node_id: str, tier: str, parent: MeshNode | None) -> MeshNode:
        identity, cert = self.members[node_id]
        directory = Directory(self._trust())
        for other_id, (_ident, other) in self.members.items():
            if other_id != node_id:  # as after enrollment + route announcements
                directory.add_certificate(other)
        cfg: dict[str, Any] = {
            "node_id": node_id,
            "tier": tier,
            "policy": {"allow": [{"types": ["app.*"], "tiers": ["end"]}]},
            "heartbeat_interval": 3600.0,
        }
        if parent is None:
            cfg["listen"] = "tcp://127.0.0.1:0"
        else:
            cfg["parent"] = {
                "endpoint": parent.address,
                "curve_key": parent.certificate.curve_key.hex(),
            }
        keypair = CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))
        transport = ZmqTransport(keypair, authenticator=directory.authenticate)
        node = MeshNode(NodeConfig.model_validate(cfg), identity, cert, directory, transport)
        self.nodes.append(node)
        return node

    async def start(self) -> None:
        self.members = {}
        for node_id, tier in (("cloud-1", "cloud"), ("device-1", "end")):
            identity = NodeIdentity.generate()
            cert = self.authority.issue(
                node_id, tier, (), identity.public(), lifetime_s=3600, now=self.now, backdate_s=60
            )
            self.members[node_id] = (identity, cert)
        self.cloud = self._node("cloud-1", "cloud", None)
        self.cloud.on(MSG_TYPE, self._count)
        self.cloud.on(ECHO_TYPE, lambda msg: msg.body_bytes)
        await self.cloud.start()
        self.device = self._node("device-1", "end", self.cloud)
        await self.device.start()
        await self.device.wait_parent(10)
        # the session handshake, outside the timed part
        await self.device.request("cloud-1", ECHO_TYPE, b"{}", auth="session", timeout=10)

    def _count(self, msg: VerifiedMessage) -> None:
        if self.flow is not None and len(msg.body_bytes) == KIB:
            self.flow.got()

    async def stop(self) -> None:
        for node in reversed(self.nodes):
            await node.stop(0)

    async def throughput(self, n: int, window: int, auth: str) -> float:
        flow = self.flow = Flow(n, window)
        device = self.device

        async def sender() -> None:
            send = device.send
            while flow.sent < flow.total:
                await flow.wait_room()
                await send("cloud-1", MSG_TYPE, BODY, auth=auth)  # type: ignore[arg-type]
                flow.sent += 1

        rate = await timed(flow, sender())
        self.flow = None
        return rate

    async def presigned_throughput(self, n: int, window: int) -> float:
        """The receiver's rate for SIGNED envelopes signed before the clock starts."""
        device = self.device
        encoded = [device._encode("cloud-1", MSG_TYPE, BODY, ()) for _ in range(n)]
        link = device._parent_link
        assert link is not None
        flow = self.flow = Flow(n, window)

        async def sender() -> None:
            for frames in encoded:
                await flow.wait_room()
                await link.send(frames, 5.0)
                flow.sent += 1

        rate = await timed(flow, sender())
        self.flow = None
        return rate

    async def latency(self, count: int) -> list[float]:
        request = self.device.request
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            await request("cloud-1", ECHO_TYPE, BODY, auth="session", timeout=10)
            samples.append(time.perf_counter() - t0)
        return samples


# ---------------------------------------------------------------------- main


def verify_rate(seconds: float) -> float:
    signer = Ed25519Signer.from_seed(bytes(range(32)))
    key = nacl.signing.VerifyKey(signer.verify_key)
    sig = signer.sign(PAYLOAD)
    verify = key.verify
    verify(PAYLOAD, sig)
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(256):
            verify(PAYLOAD, sig)
        calls += 256
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def best(
    results: dict[str, list[float]], name: str, fn: Callable[[], float | Awaitable[float]]
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        value = fn()
        if not isinstance(value, float):
            value = await value
        results.setdefault(name, []).append(value)

    return run


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    n, w = args.messages, args.window
    n_signed = max(1000, n // 3)
    results: dict[str, list[float]] = {}
    mesh = Mesh()
    await mesh.start()
    try:
        # warm-up of every path (JIT-free Python, but caches/allocators/TCP)
        await zmq_throughput(2000, w, curve=False, drain=True)
        await mesh.throughput(2000, w, "session")
        steps = [
            best(results, "raw_await", lambda: zmq_throughput(n, w, curve=False, drain=False)),
            best(results, "raw_drain", lambda: zmq_throughput(n, w, curve=False, drain=True)),
            best(results, "raw_sync", lambda: raw_sync_throughput(n, w)),
            best(results, "curve_await", lambda: zmq_throughput(n, w, curve=True, drain=False)),
            best(results, "curve_drain", lambda: zmq_throughput(n, w, curve=True, drain=True)),
            best(results, "mesh", lambda: mesh.throughput(n, w, "session")),
            best(results, "signed", lambda: mesh.presigned_throughput(n_signed, w)),
            best(results, "signed_e2e", lambda: mesh.throughput(n_signed, w, "signed")),
            best(results, "verify", lambda: verify_rate(0.5)),
        ]
        for round_no in range(args.rounds):
            for step in steps:
                await step()
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        raw_lat = await raw_latency(args.rtts)
        mesh_lat = await mesh.latency(args.rtts)
        rejected = mesh.cloud.metrics.snapshot()
    finally:
        await mesh.stop()

    top = {k: max(v) for k, v in results.items()}
    raw = max(top["raw_await"], top["raw_drain"])
    curve = max(top["curve_await"], top["curve_drain"])
    raw_p50, raw_p99 = percentiles(raw_lat)
    mesh_p50, mesh_p99 = percentiles(mesh_lat)
    return {
        "bench": "bus",
        "message_bytes": KIB,
        "messages": n,
        "signed_messages": n_signed,
        "window": w,
        "rounds": args.rounds,
        "raw_msgs_per_s": round(raw),
        "raw_await_msgs_per_s": round(top["raw_await"]),
        "raw_drain_msgs_per_s": round(top["raw_drain"]),
        "raw_sync_msgs_per_s": round(top["raw_sync"]),
        "curve_msgs_per_s": round(curve),
        "mesh_msgs_per_s": round(top["mesh"]),
        "signed_msgs_per_s": round(top["signed"]),
        "signed_e2e_msgs_per_s": round(top["signed_e2e"]),
        "ed25519_verify_per_s": round(top["verify"]),
        "ratio_curve_vs_raw": round(curve / raw, 3),
        "ratio_mesh_vs_raw": round(top["mesh"] / raw, 3),
        "ratio_mesh_vs_curve": round(top["mesh"] / curve, 3),
        "ratio_signed_vs_verify": round(top["signed"] / top["verify"], 3),
        "ratio_signed_e2e_vs_verify": round(top["signed_e2e"] / top["verify"], 3),
        "raw_rtt_p50_us": round(raw_p50, 1),
        "raw_rtt_p99_us": round(raw_p99, 1),
        "mesh_rtt_p50_us": round(mesh_p50, 1),
        "mesh_rtt_p99_us": round(mesh_p99, 1),
        "receiver_rejections": rejected.get("rejected", 0),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="per throughput figure")
    parser.add_argument("--window", type=int, default=500, help="max messages in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtts", type=int, default=2000, help="round trips per latency figure")
    args = parser.parse_args(argv)
    if args.window > HWM:
        parser.error(f"--window must stay within the high-water mark ({HWM})")
    started = time.perf_counter()
    out = asyncio.run(amain(args))
    out["seconds"] = round(time.perf_counter() - started, 1)
    labels = [
        ("raw (zmq.asyncio, no security)", "raw_msgs_per_s"),
        ("  raw, await recv_multipart", "raw_await_msgs_per_s"),
        ("  raw, poll + NOBLOCK drain", "raw_drain_msgs_per_s"),
        ("  raw, synchronous pyzmq (reference)", "raw_sync_msgs_per_s"),
        ("CURVE only", "curve_msgs_per_s"),
        ("SecureMesh session MAC (full pipeline)", "mesh_msgs_per_s"),
        ("SecureMesh SIGNED, receiver", "signed_msgs_per_s"),
        ("SecureMesh SIGNED, sign+verify in loop", "signed_e2e_msgs_per_s"),
        ("Ed25519 verify (pynacl, bare)", "ed25519_verify_per_s"),
    ]
    for label, key in labels:
        print(f"{label:<42} {out[key]:>10,} msgs/s")
    print(
        f"ratio mesh/raw {out['ratio_mesh_vs_raw']}  signed/verify {out['ratio_signed_vs_verify']}"
        f"  rtt raw p50/p99 {out['raw_rtt_p50_us']}/{out['raw_rtt_p99_us']} us"
        f"  mesh p50/p99 {out['mesh_rtt_p50_us']}/{out['mesh_rtt_p99_us']} us"
    )
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
