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
* ``ok``: the object came back byte for byte.

The LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
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


def _daemons_cpu(pids: list[int]) -> float:
    """The running daemons' CPU seconds so far (utime + stime, proc(5))."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of the line
    return ticks / os.sysconf("SC_CLK_TCK")


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
                with src.open("rb") as fh:
                    start, cpu, mesh0 = time.perf_counter(), time.process_time(), _daemons_cpu(pids)
                    asyncio.run(client.put("bench/object", fh))
                    put_s = time.perf_counter() - start
                    put_cpu = time.process_time() - cpu
                    mesh_put = _daemons_cpu(pids) - mesh0
                with dst.open("wb") as out:
                    start, cpu, mesh0 = time.perf_counter(), time.process_time(), _daemons_cpu(pids)
                    asyncio.run(client.get_into("bench/object", out.write))
                    get_s = time.perf_counter() - start
                    get_cpu = time.process_time() - cpu
                    mesh_get = _daemons_cpu(pids) - mesh0
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
        "client_cpu_put_s": round(put_cpu, 2),
        "client_cpu_get_s": round(get_cpu, 2),
        "mesh_cpu_put_s": round(mesh_put, 2),
        "mesh_cpu_get_s": round(mesh_get, 2),
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
    result = run(parser.parse_args())
    for key, value in result.items():
        print(f"{key:>20}: {value}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
