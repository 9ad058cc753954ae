"""Encrypted edge storage: put/get throughput over real daemons vs the in-process pipeline.

    python bench/storage.py [--size-mib 256] [--edges 6] [--k 4] [--n 6] [--segment-mib 4]

Builds a mesh in a temporary directory — ``securemesh init`` (cloud, with
``securemesh.storage:make_cloud_service``), ``--edges`` edge daemons (each its
own failure domain, ``make_service``) and one SDK device enrolled at the
first edge — then, as that device, puts a ``--size-mib`` file (random bytes)
with ``securemesh.sdk.storage_client`` and gets it back into a file,
streaming both ways. Key files get the cheap test Argon2id cost (setup speed
only; nothing measured depends on it).

* ``put_mb_per_s`` / ``get_mb_per_s``: object bytes / wall time (MB = 10^6 B);
* ``pipeline_mb_per_s``: the same machine's in-process limit — seal, zfec-code
  and hash every segment of the same size (``encode_segment``), no network;
* ``ratio_put``, ``ratio_get``: the above over the pipeline (targets >= 0.5);
* ``client_peak_rss_mb``: this process's peak RSS (VmHWM) after put and get —
  the device (its loop and node) lives in this process (target <= 128 MB for
  256 MiB); ``client_rss_before_mb`` is the same peak just before the put
  (interpreter, imports, the connected device);
* ``client_cpu_put_s`` / ``client_cpu_get_s``: this process's CPU time over the
  put / the get (its device's loop included); ``mesh_cpu_put_s`` /
  ``mesh_cpu_get_s``: all daemons' CPU time over the same (``/proc/PID/stat``)
  -- wall figures are noisy on a shared machine, CPU per byte is what to
  compare between runs;
* ``cpu_put_s`` / ``cpu_get_s``: the same CPU seconds split by role --
  ``client`` (this process), ``edge0`` (the device's edge: relay and store),
  ``cloud`` (relay, index), ``edges`` (the other edges together: store) and
  ``total``; ``zmq_io`` is the part of the total spent in libzmq's own
  threads (CurveZMQ, TCP) of all of them; ``ms_per_mb_put`` / ``ms_per_mb_get``:
  those over the object's MB (10^6 B), the figure that says where the path's
  CPU goes;
  ``idle_ms_per_s``: the same split over ``IDLE_S`` seconds before the put,
  with nothing stored (status ticks, reports, memory guards), per second;
* ``ok``: the object came back byte for byte.

``--py-spy DIR`` also samples every process with ``py-spy record --nonblocking``
(raw collapsed stacks, ``DIR/{put,get}-{client,cloud,edge0,edge-N}.txt``)
over exactly the put and the get, for where the CPU goes; ``--perf DIR`` runs
``perf record -a -g`` over the same (``DIR/{put,get}.data``: native frames,
libzmq's threads and the kernel included).

The LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from daemon_wait import stop_all, wait_file, wait_status_tick

from securemesh.crypto import keystore
from securemesh.crypto.identity import NodeIdentity
from securemesh.enroll import IDENTITY_FILE
from securemesh.sdk import Device, storage_client
from securemesh.storage import encode_segment

PASSPHRASE = "bench-storage-passphrase"
MB = 1_000_000
IDLE_S = 3.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The mesh set-up commands run in their own interpreter (with the cheap test KDF
# cost): init migrates the cloud's audit log (SQLAlchemy + Alembic), which must
# not count in this process's peak RSS -- here only the device is measured.
_CLI = (
    "import sys; import securemesh.cli._mesh as m; from securemesh.crypto import keystore; "
    "m._KDF_PARAMS = keystore.UNSAFE_FAST_PARAMS; from securemesh.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CLI, *args], capture_output=True, check=False, env=os.environ
    )
    if done.returncode:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        raise SystemExit(f"securemesh {' '.join(args[:2])} failed ({done.returncode})")
    return done.stdout.decode().strip()


def _configure(toml: Path, factory: str, domain: str = "") -> None:
    top = "status_interval = 0.5\nheartbeat_interval = 0.5\n"
    top += f'services = ["securemesh.storage:{factory}"]\n'
    tables = '\n[[policy.allow]]\ntypes = ["storage.*"]\ntiers = ["end", "edge", "cloud"]\n'
    if domain:
        tables += f'\n[report]\nfailure_domain = "{domain}"\n'
    toml.write_text(top + toml.read_text() + tables)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _threads_cpu(pid: int) -> tuple[float, float]:
    """(the process's, its libzmq I/O threads') CPU seconds so far (utime + stime, proc(5)).

    The process's figure includes threads that have ended; libzmq's threads
    (``ZMQbg/...``: CurveZMQ, TCP) live as long as the socket's context and
    hold no Python frames, so a Python profiler does not see them.
    """

    def ticks(stat: Path) -> tuple[str, int]:
        comm, fields = stat.read_text().rsplit(")", 1)
        utime, stime = fields.split()[11:13]  # fields 14 and 15 of the line
        return comm.split("(", 1)[1], int(utime) + int(stime)

    zmq_ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            name, spent = ticks(task / "stat")
            if name.startswith("ZMQbg"):
                zmq_ticks += spent
    hz = os.sysconf("SC_CLK_TCK")
    return ticks(Path(f"/proc/{pid}/stat"))[1] / hz, zmq_ticks / hz


def _roles_cpu(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far by role, and ``zmq_io``: libzmq's threads in all of them."""
    spent = dict.fromkeys(roles, 0.0)
    spent["zmq_io"] = 0.0
    for role, pids in roles.items():
        for pid in pids:
            total, zmq_io = _threads_cpu(pid)
            spent[role] += total
            spent["zmq_io"] += zmq_io
    return spent


def _split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {role: after[role] - before[role] for role in before}
    spent["total"] = sum(v for role, v in spent.items() if role != "zmq_io")
    return {role: round(value, 2) for role, value in spent.items()}


@contextlib.contextmanager
def _sampled(
    out: Path | None, phase: str, roles: dict[str, int], *, perf: Path | None = None
) -> Iterator[None]:
    """``py-spy record`` every process of ``roles`` for the block (nothing if ``out`` is None),
    and/or ``perf record -a -g`` (the whole machine, native frames: libzmq's threads too)."""
    spies = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for role, pid in roles.items():
            command = ["py-spy", "record", "--nonblocking", "-r", "100", "-f", "raw",
                       "-p", str(pid), "-o", str(out / f"{phase}-{role}.txt")]  # fmt: skip
            spies.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    if perf is not None:
        perf.mkdir(parents=True, exist_ok=True)
        (perf / "pids.json").write_text(json.dumps(roles))  # perf report --pid ...
        command = ["perf", "record", "-a", "-g", "-F", "499", "-o", str(perf / f"{phase}.data")]
        spies.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    if not spies:
        yield
        return
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)


def _per_mb(spent: dict[str, float], size: int) -> dict[str, float]:
    return {role: round(value * 1000 / (size / MB), 1) for role, value in spent.items()}


@contextlib.contextmanager
def mesh(root: Path, edges: int) -> Iterator[tuple[list[str], list[int]]]:
    """Cloud + edges as daemons; yields the edge ids and the daemons' pids; stops every daemon."""
    os.environ["SECUREMESH_PASSPHRASE"] = PASSPHRASE
    env = {**os.environ, "SECUREMESH_STORAGE_CHALLENGE_INTERVAL": "3600"}
    procs: list[subprocess.Popen[bytes]] = []

    def start(data_dir: Path) -> None:
        log = (root / f"{data_dir.name}.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "securemesh", "node", "run", "--config",
             str(data_dir / "node.toml")],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        ))  # fmt: skip

    try:
        cloud = root / "cloud-1"
        _cli("init", "--data-dir", str(cloud), "--authority-id", "root",
             "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
        _configure(cloud / "node.toml", "make_cloud_service")
        start(cloud)
        wait_file(cloud / "ready", "the cloud")
        ids = [f"edge-{i}" for i in range(edges)]
        for edge in ids:
            token = _cli("token", "create", "--data-dir", str(cloud), "--tier", "edge",
                         "--delegate", "--ttl", "10m")  # fmt: skip
            _cli("enroll", "--data-dir", str(root / edge), "--token", token, "--node-id", edge,
                 "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
            _configure(root / edge / "node.toml", "make_service", f"rack-{edge}")
            start(root / edge)
        for edge in ids:
            wait_file(root / edge / "ready", edge)
        yield ids, [proc.pid for proc in procs]
    finally:
        stop_all(procs)


def pipeline_rate(size: int, segment: int, k: int, n: int) -> float:
    key, oid, chunk = os.urandom(32), os.urandom(16), os.urandom(segment)
    count = -(-size // segment)
    start = time.perf_counter()
    for i in range(count):
        encode_segment(key, oid, i, count, chunk[: min(segment, size - i * segment)], k, n)
    return size / (time.perf_counter() - start) / MB


def run(args: argparse.Namespace) -> dict[str, object]:
    size, segment = args.size_mib * 1024 * 1024, args.segment_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        root = Path(tmp)
        src, dst = root / "src.bin", root / "dst.bin"
        digest = hashlib.sha256()
        with src.open("wb") as fh:
            for _ in range(args.size_mib):
                block = os.urandom(1024 * 1024)
                digest.update(block)
                fh.write(block)
        with mesh(root, args.edges) as (edges, pids):
            edge0 = root / edges[0]
            wait_file(edge0 / "status.json", "the first edge's status")
            token = _cli("token", "create", "--data-dir", str(edge0), "--tier", "end",
                         "--ttl", "10m")  # fmt: skip
            wait_status_tick(edge0, time.time())  # the edge admits a new token's key on a tick
            Device.enroll(token, data_dir=root / "dev", node_id=f"{edges[0]}.bench",
                          passphrase=PASSPHRASE, timeout=30,
                          kdf_params=keystore.UNSAFE_FAST_PARAMS)  # fmt: skip
            identity = NodeIdentity.load(root / "dev" / IDENTITY_FILE, PASSPHRASE)
            with Device.connect(root / "dev", passphrase=PASSPHRASE, connect_timeout=30) as dev:
                client = storage_client(dev, identity, index="cloud-1", k=args.k, n=args.n,
                                        segment_size=segment, timeout=120.0,
                                        parallel_segments=args.parallel)  # fmt: skip
                deadline = time.monotonic() + 90
                while len(asyncio.run(client.nodes())) < args.edges:
                    if time.monotonic() > deadline:
                        raise SystemExit("the cloud does not list every edge")
                    time.sleep(0.2)
                rss_before = _peak_rss_mb()
                roles = {"client": [os.getpid()], "cloud": pids[:1], "edge0": pids[1:2],
                         "edges": pids[2:]}  # fmt: skip
                spied = {"client": os.getpid(), "cloud": pids[0], "edge0": pids[1]}
                spied.update(zip(edges[1:], pids[2:], strict=True))
                cpu0 = _roles_cpu(roles)
                time.sleep(IDLE_S)  # the mesh's background work (ticks, reports, guards)
                idle = _split(cpu0, _roles_cpu(roles))
                with src.open("rb") as fh, _sampled(args.py_spy, "put", spied, perf=args.perf):
                    start, cpu0 = time.perf_counter(), _roles_cpu(roles)
                    asyncio.run(client.put("bench/object", fh))
                    put_s = time.perf_counter() - start
                    cpu_put = _split(cpu0, _roles_cpu(roles))
                with dst.open("wb") as out, _sampled(args.py_spy, "get", spied, perf=args.perf):
                    start, cpu0 = time.perf_counter(), _roles_cpu(roles)
                    asyncio.run(client.get_into("bench/object", out.write))
                    get_s = time.perf_counter() - start
                    cpu_get = _split(cpu0, _roles_cpu(roles))
                rss = _peak_rss_mb()
        with dst.open("rb") as fh:
            ok = hashlib.file_digest(fh, "sha256").hexdigest() == digest.hexdigest()
    pipeline = pipeline_rate(size, segment, args.k, args.n)
    put_rate, get_rate = size / put_s / MB, size / get_s / MB
    return {
        "size_mib": args.size_mib,
        "edges": args.edges,
        "k": args.k,
        "n": args.n,
        "segment_mib": args.segment_mib,
        "parallel_segments": args.parallel,
        "put_mb_per_s": round(put_rate, 1),
        "get_mb_per_s": round(get_rate, 1),
        "pipeline_mb_per_s": round(pipeline, 1),
        "ratio_put": round(put_rate / pipeline, 3),
        "ratio_get": round(get_rate / pipeline, 3),
        "client_cpu_put_s": cpu_put["client"],
        "client_cpu_get_s": cpu_get["client"],
        "mesh_cpu_put_s": round(cpu_put["total"] - cpu_put["client"], 2),
        "mesh_cpu_get_s": round(cpu_get["total"] - cpu_get["client"], 2),
        "cpu_put_s": cpu_put,
        "cpu_get_s": cpu_get,
        "idle_ms_per_s": {role: round(v * 1000 / IDLE_S, 1) for role, v in idle.items()},
        "ms_per_mb_put": _per_mb(cpu_put, size),
        "ms_per_mb_get": _per_mb(cpu_get, size),
        "load_average": round(os.getloadavg()[0], 2),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "client_peak_rss_mb": round(rss, 1),
        "client_rss_before_mb": round(rss_before, 1),
        "ok": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--edges", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--segment-mib", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="segments in flight")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="sample every process over the put and the get into DIR")  # fmt: skip
    parser.add_argument("--perf", type=Path, default=None, metavar="DIR",
                        help="perf record -a -g over the put and the get into DIR")  # fmt: skip
    result = run(parser.parse_args())
    for key, value in result.items():
        print(f"{key:>20}: {value}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
