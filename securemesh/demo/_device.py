"""One demo device as its own process: ``python -m securemesh.demo._device DATA_DIR``.

The demo (:mod:`securemesh.demo._run`) starts a dozen of these. Each is an SDK
:class:`~securemesh.sdk.Device` in its own interpreter, driven over a line
protocol: one JSON object per line on standard input (``{"op": ..., ...}``),
one JSON line per command on standard output (``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``). Logs go to standard error. The device's
passphrase comes from ``$SECUREMESH_PASSPHRASE`` and its join token arrives
with the ``enroll`` command (never on the command line). End of input or
``{"op": "quit"}`` closes the device and exits 0.

Everything a command does is the real client API an application uses: the
SDK (``send``, ``request``, ``renew``, ``submit``, ``join_federation``), the
storage client (``securemesh.sdk.storage_client``), the HE key owner and
contributor (``he_key_owner``, ``he_contribute``) and ``submit_over_objects``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securemesh.crypto.keystore import KdfParams
from securemesh.errors import SecureMeshError

if TYPE_CHECKING:
    from securemesh.sdk import Device
    from securemesh.storage import StorageClient

#: a small device's Argon2id cost for its key file (32 MiB, docs/sdk.md: pick a smaller
#: memlimit on small devices); still a real KDF
DEVICE_KDF = KdfParams(opslimit=2, memlimit=32 * 1024 * 1024)
SEGMENT_SIZE = 256 * 1024


def demo_bytes(seed: int, size: int) -> bytes:
    """The demo file's content: reproducible from the seed (the demo checks it byte for byte)."""
    return random.Random(seed).randbytes(size)  # noqa: S311 - test data, not a key


def fl_data(seed: int) -> tuple[Any, Any]:
    """This device's private training data: two Gaussian blobs (never leaves the device)."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    x = rng.normal(0, 1, (80, 4)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return x, y.astype(np.int64)


class Runner:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.passphrase = os.environ.get("SECUREMESH_PASSPHRASE", "")
        self.device: Device | None = None
        self._client: StorageClient | None = None
        self.he_owner: Any = None
        self.he_jobs: dict[str, Any] = {}
        self.participant: Any = None
        self.fl_losses: list[float] = []
        self.fl_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing

    @property
    def dev(self) -> Device:
        if self.device is None:
            raise SecureMeshError("the device is not connected")
        return self.device

    def connect(self) -> Device:
        from securemesh.sdk import Device  # noqa: PLC0415

        self.device = Device.connect(self.data_dir, passphrase=self.passphrase, connect_timeout=30)
        return self.device

    def client(self) -> StorageClient:
        if self._client is None:
            from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415
            from securemesh.enroll import IDENTITY_FILE  # noqa: PLC0415
            from securemesh.sdk import storage_client  # noqa: PLC0415

            identity = NodeIdentity.load(self.data_dir / IDENTITY_FILE, self.passphrase)
            self._client = storage_client(
                self.dev, identity, index="cloud-1", k=2, n=3, segment_size=SEGMENT_SIZE,
                timeout=6.0,  # per request; a killed edge costs this once per call
            )  # fmt: skip
        return self._client

    def close(self) -> None:
        if self.device is not None:
            self.device.close(drain_timeout=1.0)
            self.device = None

    # ------------------------------------------------------------ commands

    def op_enroll(self, token: str, node_id: str) -> dict[str, Any]:
        from securemesh.sdk import Device  # noqa: PLC0415

        info = Device.enroll(
            token, data_dir=self.data_dir, node_id=node_id, passphrase=self.passphrase,
            timeout=30, kdf_params=DEVICE_KDF,
        )  # fmt: skip
        self.connect()
        return {"node_id": info.node_id, "issuer": info.issuer}

    def op_readings(self, to: str, count: int) -> dict[str, Any]:
        dev = self.dev
        for i in range(count):
            dev.send(to, "demo.reading", {"sensor": "temperature", "value": 20.0 + i / 10})
        got, deadline = 0, time.monotonic() + 15
        while got < count and time.monotonic() < deadline:
            got = int(dev.request(to, "demo.readings", {}, timeout=5).json()["readings"])
        return {"count": got}

    def op_sums(self, to: str, count: int) -> dict[str, Any]:
        rtts = []
        for n in range(count):
            values = list(range(n + 10))
            t0 = time.perf_counter()
            reply = self.dev.request(to, "demo.sum", {"values": values}, timeout=10)
            rtts.append(time.perf_counter() - t0)
            body = reply.json()
            if body["sum"] != sum(values) or body["by"] != to or reply.sender != to:
                raise SecureMeshError(f"wrong reply from {to}: {body}")
        return {"median_ms": statistics.median(rtts) * 1000}

    def op_renew(self) -> dict[str, Any]:
        old = self.dev.certificate
        new = self.dev.renew(timeout=10)
        return {
            "old": old.serial, "new": new.serial, "issuer": new.issuer,
            "old_not_after": old.not_after, "not_after": new.not_after,
        }  # fmt: skip

    def op_request(
        self, to: str, msg_type: str, body: Any, timeout: float = 10.0
    ) -> dict[str, Any]:
        return {"reply": self.dev.request(to, msg_type, body, timeout=timeout).json()}

    def op_attack(self, edge: str) -> dict[str, Any]:
        """Hold the device's own keys and connection: send a forged and a replayed envelope."""
        node_id = self.dev.node_id
        self.close()
        asyncio.run(self._attack(node_id, edge))
        self.connect().request(edge, "demo.readings", {}, timeout=10)  # still served
        return {}

    async def _attack(self, node_id: str, edge: str) -> None:
        from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415
        from securemesh.crypto.signing import Ed25519Signer  # noqa: PLC0415
        from securemesh.crypto.z85 import z85_decode  # noqa: PLC0415
        from securemesh.node import load_config  # noqa: PLC0415
        from securemesh.transport import CurveKeyPair, ZmqTransport  # noqa: PLC0415
        from securemesh.wire import SequenceCounter, encode_signed  # noqa: PLC0415

        config = load_config(self.data_dir / "node.toml")
        assert config.parent is not None
        identity = NodeIdentity.load(self.data_dir / "identity.key", self.passphrase)
        keypair = CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))
        with SequenceCounter(self.data_dir / "sequence.state") as counter:
            seq_forged, seq_valid = counter.next(), counter.next()

        def envelope(sequence: int, signer: Any) -> list[bytes]:
            return [
                bytes(f)
                for f in encode_signed(
                    msg_type="demo.reading",
                    sender=node_id,
                    recipient=edge,
                    sequence=sequence,
                    timestamp_ms=int(time.time() * 1000),
                    body=b'{"sensor":"temperature","value":99.0}',
                    signer=signer,
                )
            ]

        transport = ZmqTransport(keypair)
        try:
            server = config.parent.curve_key_bytes
            conn = await transport.connect(config.parent.endpoint, server)
            # a forged signature (someone else's key under the device's name)
            await conn.send(server, envelope(seq_forged, Ed25519Signer.generate()), timeout=5)
            # a valid envelope, captured and sent again
            valid = envelope(seq_valid, identity.signer)
            await conn.send(server, valid, timeout=5)
            await conn.send(server, valid, timeout=5)
            await asyncio.sleep(0.2)  # let the frames leave before the socket closes
        finally:
            await transport.close()

    def op_store_nodes(self) -> dict[str, Any]:
        return {"nodes": sorted(c.node_id for c in asyncio.run(self.client().nodes()))}

    def op_store_put(self, name: str, seed: int, size: int) -> dict[str, Any]:
        data = demo_bytes(seed, size)
        m = asyncio.run(self.client().put(name, data))
        return {
            "placement": list(m.placement), "k": m.k, "n": m.n, "segments": len(m.segments),
            "sha256": hashlib.sha256(data).hexdigest(),
        }  # fmt: skip

    def op_store_get(self, name: str) -> dict[str, Any]:
        from securemesh.storage import Candidate  # noqa: PLC0415

        client = self.client()

        async def get() -> tuple[bytes, Any, list[str]]:
            manifest = await client.stat(name)
            holders = list(await client.locate(manifest))
            data, report = await client.get(name, nodes=[Candidate(n) for n in holders])
            return data, report, holders

        data, report, holders = asyncio.run(get())
        return {
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "holders": holders,
            "missing": sorted({node for _, _, node, _ in report.missing}),
            "corrupt": len(report.corrupt),
        }  # fmt: skip

    def op_store_repair(self, name: str) -> dict[str, Any]:
        report = asyncio.run(self.client().repair(name))
        return {
            "moved": {str(j): list(v) for j, v in report.moved.items()},
            "rebuilt": report.shards_rebuilt, "placement": list(report.manifest.placement),
        }  # fmt: skip

    def op_submit(
        self,
        to: str,
        task_type: str,
        args: dict[str, Any],
        intent: dict[str, Any],
        *,
        work: float = 1.0,
        objects: list[str] | None = None,
    ) -> dict[str, Any]:
        from securemesh.sdk import submit_over_objects  # noqa: PLC0415
        from securemesh.tasks import TaskIntent  # noqa: PLC0415

        want = TaskIntent(**intent)
        placed = None
        if objects:
            handle, placement = submit_over_objects(
                self.dev, self.client(), to, task_type, args, names=objects, intent=want, work=work
            )
            placed = placement.node
        else:
            handle = self.dev.submit(to, task_type, args, intent=want, work=work)
        try:
            result = handle.result(timeout=want.deadline_s + 20)
        except SecureMeshError as exc:
            code = getattr(exc, "code", "error")
            return {"refused": str(code), "detail": str(getattr(exc, "detail", exc))}
        return {
            "task_id": handle.task_id,
            "signed": result.model_dump(mode="json"),
            "placed": placed,
        }

    def op_he_create(self, aggregator: str, length: int, contributors: int) -> dict[str, Any]:
        from securemesh.sdk import he_key_owner  # noqa: PLC0415

        self.he_owner = he_key_owner(self.dev, aggregator)
        job = asyncio.run(
            self.he_owner.create_job(
                "sum", length=length, max_contributors=contributors, timeout=60,
                max_abs_value=100.0,
            )
        )  # fmt: skip
        self.he_jobs[job.id] = job
        return {"job": job.id, "preset": job.info.preset}

    def op_he_contribute(self, aggregator: str, job: str, values: list[float]) -> dict[str, Any]:
        from securemesh.sdk import he_contribute  # noqa: PLC0415

        accepted = he_contribute(self.dev, aggregator, job, values)
        return {"complete": bool(accepted.complete)}

    def op_he_result(self, job: str) -> dict[str, Any]:
        result = asyncio.run(self.he_owner.result(self.he_jobs[job], wait=60))
        return {
            "total": [float(v) for v in result.total], "count": result.count,
            "contributors": sorted(result.contributors), "bound": float(result.error_bound),
        }  # fmt: skip

    def op_fl_join(self, coordinator: str, seed: int) -> dict[str, Any]:
        import numpy as np  # noqa: PLC0415

        from securemesh.fl import LocalTraining, LogisticRegression, train_local  # noqa: PLC0415

        model = LogisticRegression(4, 2)
        x, y = fl_data(seed)
        rng = np.random.default_rng(1000 + seed)

        def train(params: Any) -> tuple[Any, int]:
            loss, _ = model.loss_grad(params, x, y)  # the global model on this device's data
            with self.fl_lock:
                self.fl_losses.append(float(loss))
            return params + train_local(model, params, x, y, LocalTraining(lr=0.2), rng=rng), len(y)

        self.participant = self.dev.join_federation(coordinator, train, samples=len(y))
        return {}

    def op_fl_report(self) -> dict[str, Any]:
        p = self.participant
        with self.fl_lock:
            losses = list(self.fl_losses)
        return {"rounds": p.rounds_done, "losses": losses, "error": p.last_error}

    def op_fl_start(self, coordinator: str, rounds: int, cohort: int) -> dict[str, Any]:
        import numpy as np  # noqa: PLC0415

        from securemesh.fl import LogisticRegression, RunBody  # noqa: PLC0415

        init = LogisticRegression(4, 2).init(np.random.default_rng(0))
        body = RunBody(rounds=rounds, clients_per_round=cohort, clip=2.0, stage_timeout=15.0)
        reply = self.dev.request(
            coordinator, "fl.run", body, [init.astype("<f8").tobytes()], timeout=20
        ).json()
        return {"reply": reply}


#: the demo's pid, in its children's environment: they stop when it dies (even by SIGKILL)
PARENT_ENV = "SECUREMESH_DEMO_PARENT"


def die_with_parent() -> None:
    """Get SIGTERM when the demo process dies, however it dies (Linux ``PR_SET_PDEATHSIG``):
    a demo killed with SIGKILL, which runs no cleanup, leaves no process behind."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    """``DATA_DIR``: run a device; ``--node ARGS...``: ``securemesh ARGS`` (a daemon) that
    stops with the demo."""
    die_with_parent()
    if argv[:1] == ["--node"]:
        from securemesh.cli import main as cli_main  # noqa: PLC0415

        return cli_main(argv[1:])
    if len(argv) != 1:
        print("usage: python -m securemesh.demo._device DATA_DIR", file=sys.stderr)
        return 2
    runner = Runner(Path(argv[0]))
    # load the mesh stack now, while the demo still sets up the edges (CPU overlaps waits)
    import securemesh.enroll  # noqa: PLC0415
    import securemesh.node  # noqa: F401, PLC0415

    out = sys.stdout
    sys.stdout = sys.stderr  # the protocol owns standard output: anything printed goes to the log
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                break
            fn: Callable[..., dict[str, Any]] = getattr(runner, f"op_{op}")
            try:
                reply = {"ok": True, **fn(**cmd)}
            except Exception as exc:  # any failure is this command's answer, on its line
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: exit quietly
        pass
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
