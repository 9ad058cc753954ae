"""Load: many simulated devices on ONE edge daemon for minutes; rate, latency, RSS, loss.

    python bench/load.py [--devices 1000] [--duration 180] [--window 30] [--rate 0.5]
                         [--workers 4] [--auth session|signed]

Builds a mesh in a temporary directory the operator way — ``securemesh init``
(cloud-1) and one edge daemon (``edge-0``, enrolled with a delegated token)
loading this file's :func:`register` (``load.echo``, ``load.stats``) — then
``--devices`` real devices: every one enrolled with its own single-use end
token at the edge (``securemesh token create``, then the SDK's enrollment
handshake) and connected over its own CurveZMQ session as an SDK
:class:`~securemesh.sdk.AsyncDevice`. Devices share processes: ``--workers``
worker processes each run one event loop driving ``devices / workers``
device sessions (each with its own transport, keys, sequence counter and
audit outbox — what one real device has). Key files get the cheap test
Argon2id cost (set-up speed only).

Every device sends ``load.echo`` requests to the edge, one at a time, about
``--rate`` per second (a fixed period, each device at a random phase), for
``--duration`` seconds; the edge's service counts what it received per sender
and answers. A reply is the acknowledgement. At the end every device asks
``load.stats`` for the edge's count of its messages: ``lost`` is the number
of acknowledged messages the edge did not count (must be 0); ``failed`` the
requests that got no reply (timeouts, errors) — not acknowledged, so not
lost, but reported.

Per window of ``--window`` seconds: ``msgs_per_s`` (acknowledged requests
sent in that window / window), ``p50_ms``/``p99_ms`` of their round trips,
and the edge daemon's RSS at the window's end (``edge_rss_mib``). The
LAST line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon_wait import stop_all, wait_file, wait_status_tick

HERE = Path(__file__).resolve().parent
PASSPHRASE = "bench-load-passphrase"
EDGE = "edge-0"


# ------------------------------------------------------- the edge's service (in the daemon)


def register(node: Any) -> None:
    """``services = ["load:register"]``: ``load.echo`` counts per sender, ``load.stats`` tells.

    State is O(1) per sender (a count and the last number), so the edge's
    memory does not grow with the number of messages.
    """
    count: dict[str, int] = defaultdict(int)
    last: dict[str, int] = defaultdict(int)
    out_of_order: dict[str, int] = defaultdict(int)

    def echo(msg: Any) -> bytes:
        n = int(json.loads(msg.body_bytes)["n"])
        sender = msg.sender
        count[sender] += 1
        if n <= last[sender]:
            out_of_order[sender] += 1
        last[sender] = max(last[sender], n)
        return b'{"ok":true}'

    def stats(msg: Any) -> bytes:
        sender = msg.sender
        return json.dumps(
            {"count": count[sender], "last": last[sender], "out_of_order": out_of_order[sender]}
        ).encode()

    node.on("load.echo", echo)
    node.on("load.stats", stats)


# ------------------------------------------------------------------- the parent: the mesh


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> str:
    from securemesh.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    if code:
        raise SystemExit(f"securemesh {' '.join(args[:2])} failed ({code}): {err.getvalue()}")
    return out.getvalue().strip()


#: Every simulated device connects from 127.0.0.1, so the edge's per-address limits
#: before authentication (``[limits]`` accept_*, max_pending_*: meant to throttle one
#: remote host) would throttle the whole fleet as one host; 1,000 real devices come
#: from 1,000 addresses. These are the only non-default settings of the edge.
EDGE_LIMITS = (
    "\n[limits]\nmax_pending_handshakes = 256\nmax_pending_per_address = 256\n"
    "accept_burst = 4096\naccept_rate = 1000.0\n"
)


def _configure(toml: Path, limits: str = "") -> None:
    top = 'services = ["load:register"]\n'  # default status and heartbeat intervals
    tables = '\n[[policy.allow]]\ntypes = ["load.*"]\ntiers = ["end"]\n' + limits
    toml.write_text(top + toml.read_text() + tables)


def _tail(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()[-3000:].decode("utf-8", "replace")
    return ""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def mesh(root: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """cloud-1 and edge-0 as daemons; yields edge-0's data dir and process; stops both."""
    import securemesh.cli._mesh as mesh_cli
    from securemesh.crypto import keystore

    mesh_cli._KDF_PARAMS = keystore.UNSAFE_FAST_PARAMS
    env = dict(os.environ, SECUREMESH_PASSPHRASE=PASSPHRASE)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    os.environ["SECUREMESH_PASSPHRASE"] = PASSPHRASE
    procs: list[subprocess.Popen[bytes]] = []

    def start(data_dir: Path) -> subprocess.Popen[bytes]:
        with (root / f"{data_dir.name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "securemesh", "node", "run", "--config",
                 str(data_dir / "node.toml")],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        cloud = root / "cloud-1"
        _cli("init", "--data-dir", str(cloud), "--authority-id", "root",
             "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
        _configure(cloud / "node.toml")
        start(cloud)
        wait_file(cloud / "ready", "the cloud")
        edge = root / EDGE
        token = _cli("token", "create", "--data-dir", str(cloud), "--tier", "edge",
                     "--delegate", "--ttl", "30m")  # fmt: skip
        _cli("enroll", "--data-dir", str(edge), "--token", token, "--node-id", EDGE,
             "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
        _configure(edge / "node.toml", EDGE_LIMITS)
        edge_proc = start(edge)
        wait_file(edge / "ready", EDGE)
        wait_file(edge / "status.json", f"{EDGE}'s status")
        yield edge, edge_proc
    finally:
        stop_all(procs, timeout=30)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _spawn_workers(
    args: argparse.Namespace, root: Path, names: list[str], tokens: dict[str, str], workers: int
) -> list[subprocess.Popen[bytes]]:
    """``workers`` processes of this script, each enrolling and driving its share of devices."""
    procs = []
    for w in range(workers):
        spec = root / f"worker-{w}.json"
        mine = {n: tokens[n] for n in names[w::workers]}
        spec.write_text(json.dumps({"tokens": mine, "root": str(root / "devices")}))
        command = [
            sys.executable, __file__, "--worker", str(spec), "--duration", str(args.duration),
            "--window", str(args.window), "--rate", str(args.rate), "--auth", args.auth,
        ]  # fmt: skip
        with (root / f"worker-{w}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=dict(os.environ, SECUREMESH_PASSPHRASE=PASSPHRASE),
                )
            )
    return procs


def run(args: argparse.Namespace) -> dict[str, Any]:
    workers = max(1, min(args.workers, args.devices))
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, mesh(Path(tmp)) as (edge, ep):
        root = Path(tmp)
        setup_start = time.monotonic()
        names = [f"{EDGE}.d{i:05d}" for i in range(args.devices)]
        tokens = {
            name: _cli("token", "create", "--data-dir", str(edge), "--tier", "end",
                       "--ttl", "30m").splitlines()[-1]
            for name in names
        }  # fmt: skip
        created = time.time()
        wait_status_tick(edge, created, timeout=90.0)  # the edge admitted the tokens
        procs = _spawn_workers(args, root, names, tokens, workers)
        try:
            for proc in procs:  # each prints "connected" once all its devices are
                assert proc.stdout is not None
                line = proc.stdout.readline().decode()
                if not line.startswith("connected"):
                    tails = [_tail(root / f"{EDGE}.log"), _tail(root / "worker-0.log")]
                    raise SystemExit(f"a worker failed to connect its devices: {tails}")
            setup_s = time.monotonic() - setup_start
            start_at = time.time() + 1.0
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{start_at}\n".encode())
                proc.stdin.close()
            # the edge's RSS at the start and the end of every window
            rss = [rss_mib(ep.pid)]
            windows = max(1, round(args.duration / args.window))
            loadavg = []
            for i in range(windows):
                wake = start_at + (i + 1) * args.window
                time.sleep(max(0.0, wake - time.time()))
                rss.append(rss_mib(ep.pid))
                loadavg.append(os.getloadavg()[0])
            results = []
            for proc in procs:
                assert proc.stdout is not None
                out = proc.stdout.read()
                if proc.wait(timeout=300):
                    raise SystemExit(f"a worker failed ({proc.returncode})")
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    lat: dict[int, list[float]] = defaultdict(list)
    for result in results:
        for key, values in result["latencies"].items():
            lat[int(key)].extend(values)
    per_window = []
    for i in range(windows):
        ordered = sorted(lat.get(i, []))
        p50, p99 = _percentile(ordered, 0.50), _percentile(ordered, 0.99)
        per_window.append({
            "window": i,
            "msgs_per_s": round(len(ordered) / args.window, 1),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "edge_rss_mib": round(rss[i + 1], 1),
            "loadavg_1m": round(loadavg[i], 2),
        })  # fmt: skip
    return {
        "devices": args.devices,
        "workers": workers,
        "duration_s": args.duration,
        "window_s": args.window,
        "rate_per_device": args.rate,
        "auth": args.auth,
        "setup_s": round(setup_s, 1),
        "acked": sum(r["acked"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "edge_rss_start_mib": round(rss[0], 1),
        "msgs_per_s": [w["msgs_per_s"] for w in per_window],
        "p50_ms": [w["p50_ms"] for w in per_window],
        "p99_ms": [w["p99_ms"] for w in per_window],
        "edge_rss_mib": [w["edge_rss_mib"] for w in per_window],
        "loadavg_1m": [w["loadavg_1m"] for w in per_window],
        "windows": per_window,
        "failures": [e for r in results for e in r["errors"]][:5],
    }


# ------------------------------------------------------------ a worker: hundreds of devices


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
    from securemesh.sdk import AsyncDevice

    spec = json.loads(Path(args.worker).read_text())
    root = Path(spec["root"])
    tokens: dict[str, str] = spec["tokens"]
    gate = asyncio.Semaphore(8)

    async def enroll_and_connect(name: str, token: str) -> AsyncDevice:
        async with gate:
            await AsyncDevice.enroll(
                token, data_dir=root / name, node_id=name, passphrase=PASSPHRASE,
                timeout=60, kdf_params=UNSAFE_FAST_PARAMS,
            )  # fmt: skip
            return await AsyncDevice.connect(root / name, passphrase=PASSPHRASE, connect_timeout=60)

    devices = await asyncio.gather(*(enroll_and_connect(n, t) for n, t in tokens.items()))
    print("connected", flush=True)
    start_at = float(await asyncio.to_thread(sys.stdin.readline))
    end_at = start_at + args.duration
    period = 1.0 / args.rate
    latencies: dict[int, list[float]] = defaultdict(list)
    acked: dict[str, int] = defaultdict(int)
    failed = 0
    errors: list[str] = []

    async def drive(dev: AsyncDevice) -> None:
        nonlocal failed
        n = 0
        next_at = start_at + random.uniform(0, period)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            if time.time() >= end_at:
                return
            n += 1
            sent = time.time()
            try:
                await dev.request(EDGE, "load.echo", {"n": n}, timeout=30, auth=args.auth)
            except Exception as exc:
                failed += 1
                if len(errors) < 5:
                    errors.append(repr(exc)[:200])
            else:
                latencies[int((sent - start_at) // args.window)].append(time.time() - sent)
                acked[dev.node_id] += 1
            next_at = max(next_at + period, time.time())

    await asyncio.gather(*(drive(dev) for dev in devices))
    lost = out_of_order = 0
    for dev in devices:  # the edge's count of each device's messages
        reply = await dev.request(EDGE, "load.stats", {}, timeout=60, auth=args.auth)
        got = reply.json()
        lost += max(0, acked[dev.node_id] - int(got["count"]))
        out_of_order += int(got["out_of_order"])
    await asyncio.gather(*(dev.close(drain_timeout=1.0) for dev in devices))
    return {
        "acked": sum(acked.values()),
        "failed": failed,
        "lost": lost,
        "out_of_order": out_of_order,
        "errors": errors,
        "latencies": {str(k): v for k, v in latencies.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per window")
    parser.add_argument("--rate", type=float, default=0.5, help="requests/s per device")
    parser.add_argument("--workers", type=int, default=4, help="device processes")
    parser.add_argument("--auth", choices=["session", "signed"], default="session")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))), flush=True)
        return 0
    result = run(args)
    for window in result["windows"]:
        print(json.dumps(window), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
