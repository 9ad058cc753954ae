"""Encrypted aggregation: N contributors x L floats through SecureMesh vs TenSEAL in one process.

    python bench/he.py [--contributors 20] [--length 100000] [--preset standard-8192]

Builds a mesh in a temporary directory — ``securemesh init`` (cloud-1) and one
edge daemon (``edge-0``) loading ``securemesh.he:make_service`` — and, in this
process, ``--contributors`` + 1 SDK devices enrolled at the edge: the key
owner (role ``he-keyholder``) and the contributors. Key files get the cheap
test Argon2id cost (set-up speed only; nothing measured depends on it).

* ``mesh_s``: the key owner creates a ``sum`` job (secret context, public
  context to the edge), every contributor in turn (one at a time: the same
  sequence of work as the baseline) fetches the job and its public context,
  encrypts its vector (one ciphertext per 4,096 floats) and sends the chunks
  as raw frames; the edge checks and adds them; the owner receives and
  decrypts the result; ``mesh_concurrent_s``: the same with every
  contributor at once, as independent devices would (this machine's two
  cores then work in parallel: ``ratio_concurrent``, not comparable);
* ``tenseal_s``: the same computation directly with TenSEAL in one process —
  context, encrypt + serialize each vector (one CKKS vector per contributor,
  TenSEAL's own packing), deserialize, add, decrypt;
* ``ratio_vs_tenseal`` = mesh_s / tenseal_s (target <= 1.25). The mesh
  overlaps a contributor's encryption with the edge's loading and adding (two
  processes), so ``cpu_ratio`` (CPU seconds of this process and both daemons
  during ``mesh_s`` over the baseline's) is the overhead with no overlap;
  ``ratio_concurrent`` = mesh_concurrent_s / tenseal_s;
* ``bytes_per_contributor``: what one contributor sends — every request's
  raw frames and JSON body plus the envelope's header and auth frame at their
  largest (251 + 64 bytes per message); ``tenseal_bytes``: TenSEAL's
  serialized vector of the same values; ``bytes_ratio`` (target <= 1.1);
* ``max_abs_error`` of both results against the plaintext sum, and the
  preset's stated ``error_bound``.

The LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tenseal as ts
from daemon_wait import stop_all, wait_file, wait_status_tick
from pydantic import BaseModel

import securemesh.cli._mesh as mesh_cli
from securemesh.cli import main as cli_main
from securemesh.crypto import keystore
from securemesh.he import HeResult, KeyOwner, contribute, get_preset
from securemesh.node import VerifiedMessage
from securemesh.sdk import Device, DeviceRequester

PASSPHRASE = "bench-he-passphrase"
ENVELOPE_OVERHEAD = 251 + 64  # largest v1 header + the auth frame (Ed25519 signature)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(list(args))
    if code:
        raise SystemExit(f"securemesh {' '.join(args[:2])} failed ({code})")
    return out.getvalue().strip()


def _configure(toml: Path) -> None:
    # the daemons' default status and heartbeat intervals (2 s, 10 s): their work is
    # part of what a deployment pays, at the rate it pays it
    top = 'services = ["securemesh.he:make_service"]\n'
    tables = '\n[[policy.allow]]\ntypes = ["he.*"]\ntiers = ["end", "edge", "cloud"]\n'
    toml.write_text(top + toml.read_text() + tables)


class CountingRequester(DeviceRequester):
    """A device's requests, counting the bytes it sends."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.sent = 0

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
    ) -> VerifiedMessage:
        raw = body if isinstance(body, bytes) else body.model_dump_json().encode()
        self.sent += len(raw) + sum(len(f) for f in frames) + ENVELOPE_OVERHEAD
        return await super().request(dest, msg_type, body, frames, timeout=timeout)


@contextlib.contextmanager
def mesh(root: Path) -> Iterator[tuple[Path, list[int]]]:
    """cloud-1 and edge-0 as daemons; yields edge-0's data dir and their pids; stops both."""
    os.environ["SECUREMESH_PASSPHRASE"] = PASSPHRASE
    procs: list[subprocess.Popen[bytes]] = []

    def start(data_dir: Path) -> None:
        log = (root / f"{data_dir.name}.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "securemesh", "node", "run", "--config",
             str(data_dir / "node.toml")],
            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log,
        ))  # fmt: skip

    try:
        cloud = root / "cloud-1"
        _cli("init", "--data-dir", str(cloud), "--authority-id", "root",
             "--cloud-node-id", "cloud-1", "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
        _configure(cloud / "node.toml")
        start(cloud)
        wait_file(cloud / "ready", "the cloud")
        edge = root / "edge-0"
        token = _cli("token", "create", "--data-dir", str(cloud), "--tier", "edge",
                     "--delegate", "--ttl", "10m")  # fmt: skip
        _cli("enroll", "--data-dir", str(edge), "--token", token, "--node-id", "edge-0",
             "--listen", f"tcp://127.0.0.1:{_port()}")  # fmt: skip
        _configure(edge / "node.toml")
        start(edge)
        wait_file(edge / "ready", "edge-0")
        wait_file(edge / "status.json", "edge-0's status")
        yield edge, [p.pid for p in procs]
    finally:
        stop_all(procs)


def cpu_split(pids: Sequence[int]) -> list[float]:
    """CPU time (user + system) so far of this process, then of each daemon in ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = [sum(os.times()[:2])]
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / ticks)
    return out


def baseline(xs: list[np.ndarray], preset_name: str) -> tuple[float, np.ndarray, int]:
    """The same sum with TenSEAL alone: seconds, result, bytes of one serialized vector."""
    p = get_preset(preset_name)
    start = time.perf_counter()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes)
    )
    ctx.global_scale = p.scale
    blobs = [ts.ckks_vector(ctx, x).serialize() for x in xs]
    total = ts.ckks_vector_from(ctx, blobs[0])
    for blob in blobs[1:]:
        total.add_(ts.ckks_vector_from(ctx, blob))
    result = np.asarray(total.decrypt())
    return time.perf_counter() - start, result, len(blobs[0])


def run(args: argparse.Namespace) -> dict[str, object]:
    mesh_cli._KDF_PARAMS = keystore.UNSAFE_FAST_PARAMS
    rng = np.random.default_rng(2026)
    xs = [rng.uniform(-1, 1, args.length) for _ in range(args.contributors)]
    want = np.sum(xs, axis=0)
    devices: list[Device] = []
    with tempfile.TemporaryDirectory(prefix="bench-he-") as tmp, mesh(Path(tmp)) as (edge, pids):
        root = Path(tmp)
        names = ["edge-0.owner"] + [f"edge-0.c{i}" for i in range(args.contributors)]
        tokens = {}
        for name in names:
            roles = ["--roles", "he-keyholder"] if name.endswith("owner") else []
            tokens[name] = _cli("token", "create", "--data-dir", str(edge), "--tier", "end",
                                *roles, "--ttl", "10m")  # fmt: skip
        wait_status_tick(edge, time.time())
        try:
            for name in names:
                Device.enroll(tokens[name], data_dir=root / name, node_id=name,
                              passphrase=PASSPHRASE, timeout=30,
                              kdf_params=keystore.UNSAFE_FAST_PARAMS)  # fmt: skip
                devices.append(
                    Device.connect(root / name, passphrase=PASSPHRASE, connect_timeout=30)
                )
            owner = KeyOwner(DeviceRequester(devices[0]), aggregator="edge-0")
            counters = [CountingRequester(d) for d in devices[1:]]

            def one(i: int, job_id: str) -> None:
                asyncio.run(contribute(counters[i], "edge-0", job_id, xs[i], timeout=300))

            def measure(workers: int) -> tuple[float, HeResult, list[float]]:
                cpu = cpu_split(pids)
                start = time.perf_counter()
                job = asyncio.run(owner.create_job(
                    "sum", length=args.length, max_contributors=args.contributors,
                    timeout=600, preset=args.preset, precision=1.0,
                ))  # fmt: skip
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(one, range(args.contributors), [job.id] * args.contributors))
                result = asyncio.run(owner.result(job, wait=600))
                after = cpu_split(pids)
                used = [b - a for a, b in zip(cpu, after, strict=True)]
                return time.perf_counter() - start, result, used

            seq_s, result, mesh_cpu = measure(1)
            sent = max(c.sent for c in counters)
            conc_s, conc_result, _ = measure(args.contributors)
        finally:
            for dev in devices:
                dev.close(drain_timeout=1.0)
    cpu = sum(os.times()[:2])
    tenseal_s, base_result, tenseal_bytes = baseline(xs, args.preset)
    tenseal_cpu = sum(os.times()[:2]) - cpu
    return {
        "bench": "he",
        "contributors": args.contributors,
        "length": args.length,
        "preset": args.preset,
        "mesh_s": round(seq_s, 3),
        "tenseal_s": round(tenseal_s, 3),
        "ratio_vs_tenseal": round(seq_s / tenseal_s, 3),
        "mesh_cpu_s": round(sum(mesh_cpu), 3),
        "mesh_cpu_split_s": {
            k: round(v, 3) for k, v in zip(("devices", "cloud", "edge"), mesh_cpu, strict=True)
        },
        "tenseal_cpu_s": round(tenseal_cpu, 3),
        "cpu_ratio": round(sum(mesh_cpu) / tenseal_cpu, 3),
        "mesh_concurrent_s": round(conc_s, 3),
        "ratio_concurrent": round(conc_s / tenseal_s, 3),
        "bytes_per_contributor": sent,
        "tenseal_bytes": tenseal_bytes,
        "bytes_ratio": round(sent / tenseal_bytes, 4),
        "max_abs_error": float(max(np.max(np.abs(r.total - want)) for r in (result, conc_result))),
        "tenseal_max_abs_error": float(np.max(np.abs(base_result - want))),
        "error_bound": result.error_bound,
        "count": result.count,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contributors", type=int, default=20)
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--preset", default="standard-8192")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
