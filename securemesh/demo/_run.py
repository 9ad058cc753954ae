"""The demo's orchestration: an operator, a dozen device processes, one line per step.

Theory of operation
-------------------
:func:`run_demo` plays the operator, using only what a real deployment uses:
the ``securemesh`` CLI as subprocesses, node daemons as separate processes
over CurveZMQ on 127.0.0.1, and twelve devices, each an SDK
:class:`~securemesh.sdk.Device` in its own process
(:mod:`securemesh.demo._device`, driven by one JSON line per command). All of
it lives in a fresh temporary directory; a random passphrase made for this
run reaches the children in ``$SECUREMESH_PASSPHRASE`` and is never printed.

The mesh: ``cloud-1`` (audit log in SQLite, the storage index and repairs,
the task scheduler, the HE aggregator) and ``edge-1``, ``edge-2``,
``edge-3`` (storage, task executors; ``edge-1`` also coordinates federated
learning), each configured in its ``node.toml`` the way docs/storage.md,
docs/tasks.md, docs/he.md and docs/federated-learning.md tell an operator.
Five devices enroll at edge-1, four at edge-2, three at edge-3.

The steps (:func:`run_demo` lists them; each prints one line with a figure
and its time; the first failure stops the demo with exit status 1):

1-3. ``securemesh init``, the cloud daemon, three edges (delegated
     authorities) connected to the cloud;
4.   twelve device processes enroll with tokens their edges made;
5-8. every device streams readings to its edge; a device's requests are
     routed to the cloud; it renews its certificate; a forged and a replayed
     envelope are rejected;
9.   a device stores a file 2-of-3 across the three edges (encrypted,
     erasure-coded);
10.  tasks with different intents (privacy, deadline, energy, data locality,
     an impossible deadline) are placed by the cloud's scheduler; each line
     says where it ran (the executor's signature checked against its
     certificate) and why (the scheduler's ``task.placed`` audit event);
11.  an HE key holder creates a sum job at the cloud; four devices encrypt
     their vectors; the decrypted sum is compared with the plaintext sum;
12.  five devices join a federation at edge-1, one is SIGKILLed; three
     SecAgg+ rounds run without it; the global model's loss per round;
13.  edge-3 is SIGKILLed; the file is read back byte-equal from the others;
14.  edge-4 enrolls in its place (a replaced server) and the owner's repair
     rebuilds the lost shard column there: 3 of 3 columns again;
15.  ``securemesh revoke``: the device is cut off live;
16-18. the events reach the cloud log; ``audit verify`` passes; an offline
     inclusion proof of the revocation verifies with the log's public key.

A summary table follows. Every process is stopped on the way out — also on
failure, Ctrl-C or SIGTERM — and the directory removed, unless ``keep``: then
the daemons stay up and the demo prints the commands to use and stop them. A
demo killed outright (SIGKILL: no cleanup runs) leaves no process either: on
Linux its children ask for SIGTERM when it dies (``PR_SET_PDEATHSIG``, in
:func:`securemesh.demo._device.die_with_parent`; the daemons start through
``python -m securemesh.demo._device --node node run ...`` for it, except with
``keep``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from securemesh.demo._device import PARENT_ENV
from securemesh.errors import SecureMeshError

__all__ = ["DemoFailed", "run_demo"]

CLOUD_ID = "cloud-1"
EDGES = ("edge-1", "edge-2", "edge-3")
SPARE_EDGE = "edge-4"  # enrolls in the killed edge's place
VICTIM = "edge-3"
DEVICES_PER_EDGE = {"edge-1": 5, "edge-2": 4, "edge-3": 3}
DEVICE_ID = "edge-1.sensor-1"  # the main device (devices enrolled at an edge live in its namespace)
KEYHOLDER = "edge-2.sensor-1"
HE_CONTRIBUTORS = ("edge-2.sensor-2", "edge-2.sensor-3", "edge-3.sensor-1", "edge-3.sensor-2")
FL_DEVICES = tuple(f"edge-1.sensor-{i}" for i in range(1, 6))
FL_DROPOUT = "edge-1.sensor-5"
FL_ROUNDS = 3
READINGS = 20
ROUND_TRIPS = 20
FILE_NAME = "demo/readings.bin"
FILE_SIZE = 1024 * 1024 + 321
FILE_SEED = 7
HE_LENGTH = 24
STEP_TIMEOUT = 60.0  # a hang bound per device command, not a performance target

_SUBMIT = '"task.submit", "task.start", "task.result", "task.cancel", "task.status", "task.place"'
_TOP = "status_interval = 0.2\nheartbeat_interval = 0.5\n"
_AUDIT = "\n[audit]\nship_interval = 0.1\nrequest_timeout = 2.0\nbackoff_max = 1.0\n"
_COMMON_RULES = (
    '\n[[policy.allow]]\ntypes = ["demo.*"]\n'
    '\n[[policy.allow]]\ntypes = ["storage.*"]\ntiers = ["end", "edge", "cloud"]\n'
    '\n[[policy.allow]]\ntypes = ["he.*"]\ntiers = ["end", "edge", "cloud"]\n'
)
_CLOUD_SERVICES = (
    '"securemesh.demo:register_services", "securemesh.storage:make_cloud_service", '
    '"securemesh.demo:make_task_scheduler", "securemesh.he:make_service"'
)
_EDGE_SERVICES = (
    '"securemesh.demo:register_services", "securemesh.storage:make_service", '
    '"securemesh.demo:make_task_executor"'
)
# what each node's report tells the scheduler's cost model (docs/tasks.md)
_PROFILE = {
    CLOUD_ID: ("1000", "0.05", 2.0, "dc-1"),  # speed, price, J per work unit, failure domain
    "edge-1": ("400", "0.01", 0.3, "rack-1"),
    "edge-2": ("300", "0.01", 0.1, "rack-2"),
    "edge-3": ("200", "0.01", 0.5, "rack-3"),
    "edge-4": ("200", "0.01", 0.5, "rack-4"),
}


class DemoFailed(SecureMeshError):
    """A demo step did not do what it should (the message says which and why)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tables(node: str) -> str:
    speed, price, energy, domain = _PROFILE[node]
    return (
        f'\n[report]\nfailure_domain = "{domain}"\nenergy_per_unit = {energy}\n'
        f'\n[report.labels]\nspeed = "{speed}"\nprice = "{price}"\n'
    )


def _node_toml(node: str) -> tuple[str, str]:
    """(top-level keys, tables) added to the ``node.toml`` that init/enroll wrote."""
    if node == CLOUD_ID:
        top = f"services = [{_CLOUD_SERVICES}]\n"
        rules = f'\n[[policy.allow]]\ntypes = [{_SUBMIT}]\ntiers = ["end"]\nroles = ["submitter"]\n'
    else:
        services = _EDGE_SERVICES + (', "securemesh.fl:FLCoordinator"' if node == "edge-1" else "")
        top = f"services = [{services}]\n"
        rules = (
            '\n[[policy.allow]]\ntypes = ["task.run", "task.types", "task.abort"]\n'
            'tiers = ["cloud"]\n'
            f'\n[[policy.allow]]\ntypes = [{_SUBMIT}]\ntiers = ["end"]\n'  # relayed up
            '\n[[policy.allow]]\ntypes = ["fl.*"]\ntiers = ["end"]\n'
        )
    return _TOP + top, _COMMON_RULES + rules + _tables(node) + _AUDIT


class _DeviceProc:
    """One device process and the line protocol to it (a reader thread feeds a queue)."""

    def __init__(self, node_id: str, data_dir: Path, env: dict[str, str], log: Path) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(  # noqa: S603 - our own module, argv built here
                [sys.executable, "-m", "securemesh.demo._device", str(data_dir)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise DemoFailed(f"device {self.node_id} is gone ({exc})") from exc

    def recv(self, what: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise DemoFailed(f"{self.node_id}: no answer to {what} in {timeout:.0f} s") from None
        if line is None:
            raise DemoFailed(f"device {self.node_id} exited (status {self.proc.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise DemoFailed(f"{self.node_id}: {what}: {reply.get('error')}")
        return dict(reply)

    def call(self, op: str, timeout: float = STEP_TIMEOUT, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.recv(op, timeout)

    def ask_to_quit(self) -> None:
        """``quit`` and end of input: the device closes its connection and exits."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, DemoFailed):
                self.send("quit")
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def reap(self, deadline: float) -> None:
        """Wait for the exit until ``deadline`` (monotonic), then SIGKILL."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.ask_to_quit()
        self.reap(time.monotonic() + 10)


class _Demo:
    def __init__(self, root: Path, out: IO[str], *, keep: bool = False) -> None:
        self.root = root
        self.keep = keep
        self.out = out
        self.passphrase = secrets.token_urlsafe(24)  # never printed
        self.env = dict(os.environ, SECUREMESH_PASSPHRASE=self.passphrase)
        self.env.pop("SECUREMESH_AUDIT_DB", None)
        self.env[PARENT_ENV] = str(os.getpid())
        self.env.update(
            {
                # the cloud's own repair and proof-of-storage rounds: slower than the demo
                # (the owner repairs in step 14); a storage edge whose reports stop for
                # 5 s (10 heartbeats) is lost: left out of `storage.nodes`
                "SECUREMESH_STORAGE_CHALLENGE_INTERVAL": "30",
                "SECUREMESH_STORAGE_REPAIR_INTERVAL": "600",
                "SECUREMESH_STORAGE_LOSS_GRACE": "5",
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.devices: dict[str, _DeviceProc] = {}
        self.dirs: dict[str, Path] = {CLOUD_ID: root / CLOUD_ID}
        self.logs = root / "logs"
        self.logs.mkdir()
        enc = (getattr(out, "encoding", None) or "ascii").lower()
        self.ok = "✔" if "utf" in enc else "ok"
        self.bad = "✘" if "utf" in enc else "FAILED"
        self.file_sha = ""
        self.killed_at = 0.0
        self.figure = ""  # the step's short figure, for the summary table

    @property
    def cloud(self) -> Path:
        return self.dirs[CLOUD_ID]

    def dev(self, node_id: str = DEVICE_ID) -> _DeviceProc:
        return self.devices[node_id]

    # ----------------------------------------------------------- helpers

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(  # noqa: S603 - our own CLI, argv built here
            [sys.executable, "-m", "securemesh", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise DemoFailed(f"`securemesh {' '.join(args[:2])}` failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def parallel(self, jobs: list[Callable[[], list[str]]]) -> list[list[str]]:
        """Run independent jobs (CLI commands on different data dirs) in threads, at once."""
        results: list[list[str]] = [[] for _ in jobs]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                results[i] = jobs[i]()
            except (DemoFailed, subprocess.TimeoutExpired) as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise DemoFailed(str(errors[0]))
        return results

    def tokens(self, at: str, tier: str, roles: list[str], *, delegate: bool = False) -> list[str]:
        """One join token per entry of ``roles`` (comma-separated roles), valid 10 minutes, made
        by node ``at``: what ``securemesh token create`` does, with the same public API
        (:mod:`securemesh.enroll`), in this process -- the demo makes 16 of them, and an
        interpreter start-up per token costs seconds on a loaded 2-core machine."""
        from securemesh.crypto.certs import Tier  # noqa: PLC0415 - lazy: the CLI starts fast
        from securemesh.enroll import TokenStore, load_token_issuer  # noqa: PLC0415

        data_dir = self.dirs[at]
        issuer = load_token_issuer(data_dir)
        if issuer.endpoint is None:
            raise DemoFailed(f"{at} has no connectable listen endpoint")
        made = []
        with TokenStore.in_dir(data_dir) as store:
            for role_list in roles:
                token = store.create(
                    authority_id=issuer.authority_id,
                    root_key=issuer.root_key,
                    server_key=issuer.server_key,
                    server_id=issuer.server_id,
                    endpoint=issuer.endpoint,
                    issuer=issuer.issuer,
                    tier=Tier(tier),
                    roles=[r for r in role_list.split(",") if r],
                    ttl_s=600,
                    delegate=delegate,
                    name_prefix=issuer.name_prefix,
                )
                made.append(token.encode())
        return made

    def configure(self, node: str) -> None:
        top, tables = _node_toml(node)
        toml = self.dirs[node] / "node.toml"
        toml.write_text(top + toml.read_text() + tables)

    def start(self, name: str) -> None:
        data_dir = self.dirs[name]
        with open(self.logs / f"{name}.log", "ab") as log:
            # `securemesh node run`; without --keep through the device module's --node, which
            # makes the daemon stop when the demo dies (even SIGKILLed: no cleanup runs then)
            entry = ["securemesh"] if self.keep else ["securemesh.demo._device", "--node"]
            self.procs[name] = subprocess.Popen(  # noqa: S603 - our own daemon, argv built here
                [sys.executable, "-m", *entry, "node", "run", "--config",
                 str(data_dir / "node.toml")],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True,  # the demo stops it (also after Ctrl-C): no stray signal
            )  # fmt: skip

    def wait_started(self, name: str, timeout: float = 60.0) -> None:
        proc, data_dir = self.procs[name], self.dirs[name]

        def ready() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return bool(json.loads((data_dir / "ready").read_text()).get("pid") == proc.pid)
            return False

        self.wait(lambda: ready() or proc.poll() is not None, f"the {name} daemon", timeout)
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
            raise DemoFailed(f"the {name} daemon exited: {tail}")

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out waiting for {what}")
            time.sleep(0.05)

    def status(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.dirs[name] / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def rejections(self, name: str) -> dict[str, int]:
        counters = self.status(name).get("counters", {})
        rej = counters.get("rejections", {}) if isinstance(counters, dict) else {}
        return {str(k): int(v) for k, v in rej.items()} if isinstance(rej, dict) else {}

    def all_devices(self, op: str, names: Any = None, **args: Any) -> dict[str, dict[str, Any]]:
        """Send ``op`` to several devices at once, then collect every answer."""
        chosen = list(self.devices) if names is None else list(names)
        for name in chosen:
            self.devices[name].send(op, **args)
        return {name: self.devices[name].recv(op) for name in chosen}

    def stop_devices(self) -> None:
        """Ask every device process to quit at once; kill those still there after 10 s."""
        for device in self.devices.values():
            device.ask_to_quit()
        deadline = time.monotonic() + 10
        for device in self.devices.values():
            device.reap(deadline)

    def stop_all(self) -> None:
        """Stop every process this demo started: devices first, then the daemons."""
        self.stop_devices()
        self.stop_daemons()

    def stop_daemons(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def enroll_edges(self, edges: tuple[str, ...]) -> None:
        """Delegated edge tokens at the cloud, then ``securemesh enroll`` of each edge (at once),
        its ``node.toml`` completed, its daemon started."""
        tokens = self.tokens(CLOUD_ID, "edge", [""] * len(edges), delegate=True)
        for edge in edges:
            self.dirs[edge] = self.root / edge

        def enroll(edge: str, token: str) -> list[str]:
            listen = f"tcp://127.0.0.1:{_free_port()}"
            data_dir = str(self.dirs[edge])
            argv = ["enroll", "--data-dir", data_dir, "--token", token, "--node-id", edge]
            return [self.cli(*argv, "--listen", listen)]

        self.parallel([functools.partial(enroll, e, t) for e, t in zip(edges, tokens, strict=True)])
        for edge in edges:
            self.configure(edge)
            self.start(edge)

    def parent_connected(self, edge: str) -> bool:
        parent = self.status(edge).get("parent") or {}
        return bool(parent.get("connected"))

    def audit_rows(self) -> list[tuple[int, str, str, str, str]]:
        db = sqlite3.connect(f"file:{self.cloud / 'audit.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT idx, origin, kind, subject_id, details FROM audit_leaves ORDER BY idx"
            ).fetchall()
        finally:
            db.close()
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    # ------------------------------------------------------------- steps

    def step_init(self) -> str:
        self.cli(
            "init", "--data-dir", str(self.cloud), "--authority-id", "demo-root",
            "--cloud-node-id", CLOUD_ID, "--listen", f"tcp://127.0.0.1:{_free_port()}",
        )  # fmt: skip
        self.configure(CLOUD_ID)
        self.figure = "authority demo-root"
        return f"authority 'demo-root', cloud node '{CLOUD_ID}' in {self.cloud}"

    def step_cloud(self) -> str:
        self.start(CLOUD_ID)
        self.wait_started(CLOUD_ID)
        ready = json.loads((self.cloud / "ready").read_text())
        self.figure = f"{CLOUD_ID} ready"
        return (
            f"listening on {ready['listen']}, audit log {self.cloud / 'audit.db'}; "
            "storage index, task scheduler, HE aggregator"
        )

    def spawn_devices(self) -> None:
        """Start the device processes (idle until their ``enroll``): they load while the
        edges start."""
        for edge, count in DEVICES_PER_EDGE.items():
            for i in range(1, count + 1):
                name = f"{edge}.sensor-{i}"
                self.devices[name] = _DeviceProc(
                    name, self.root / "devices" / name, self.env, self.logs / f"{name}.log"
                )

    def step_edges(self) -> str:
        self.spawn_devices()
        self.enroll_edges(EDGES)
        for edge in EDGES:
            self.wait_started(edge)
        for edge in EDGES:
            self.wait(functools.partial(self.parent_connected, edge), f"{edge} to reach the cloud")
        rtts = {e: self.status(e)["parent"].get("rtt_ms") for e in EDGES}
        shown = ", ".join(f"{e} {r:.1f} ms" for e, r in rtts.items() if isinstance(r, int | float))
        figure = f" (link RTT {shown})" if shown else ""
        self.figure = f"{len(EDGES)} edges connected"
        return (
            f"{', '.join(EDGES)} enrolled with delegated authorities, connected to the "
            f"cloud{figure}"
        )

    def step_devices(self) -> str:
        names = list(self.devices)
        roles = {DEVICE_ID: "sensor,submitter,fl-operator", KEYHOLDER: "sensor,he-keyholder"}

        tokens: dict[str, str] = {}
        for edge in EDGES:
            mine = [n for n in names if n.startswith(edge + ".")]
            made = self.tokens(edge, "end", [roles.get(n, "sensor") for n in mine])
            tokens.update(zip(mine, made, strict=True))
        # each edge admits its new tokens' keys on its next status tick; until then a
        # handshake is refused and the device's enroll tries again
        for name in names:
            self.devices[name].send("enroll", token=tokens[name], node_id=name)
        issuers = Counter(self.devices[n].recv("enroll", 120)["issuer"] for n in names)
        shown = ", ".join(f"{e} x{issuers[e]}" for e in EDGES)
        pids = len({d.proc.pid for d in self.devices.values()})
        self.figure = f"{pids} device processes"
        return (
            f"{pids} device processes enrolled, certificates issued by {shown} ('{DEVICE_ID}', ...)"
        )

    def step_readings(self) -> str:
        for name, device in self.devices.items():
            device.send("readings", to=name.split(".")[0], count=READINGS)
        per_edge: Counter[str] = Counter()
        for name, device in self.devices.items():
            count = int(device.recv("readings")["count"])
            if count != READINGS:
                raise DemoFailed(f"{name}'s edge counted {count} of {READINGS} readings")
            per_edge[name.split(".")[0]] += count
        total = sum(per_edge.values())
        shown = ", ".join(f"{e}: {per_edge[e]}" for e in EDGES)
        self.figure = f"{total}/{total} readings counted"
        return (
            f"{total} signed readings from {len(self.devices)} devices, the edges counted "
            f"{total} ({shown})"
        )

    def step_routed(self) -> str:
        ms = self.dev().call("sums", to=CLOUD_ID, count=ROUND_TRIPS)["median_ms"]
        self.figure = f"median RTT {ms:.1f} ms"
        return (
            f"{ROUND_TRIPS} requests device → edge → cloud, verified at every hop, "
            f"median RTT {ms:.1f} ms"
        )

    def step_renew(self) -> str:
        r = self.dev().call("renew")
        if r["new"] == r["old"] or r["not_after"] < r["old_not_after"]:
            raise DemoFailed("the renewed certificate is not newer")
        self.dev().call("sums", to=CLOUD_ID, count=1)  # still verified upstream
        self.figure = f"new serial, issuer {r['issuer']}"
        return (
            f"cert.renew answered by '{r['issuer']}': serial {r['old']} → {r['new']}, "
            f"valid until {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(r['not_after']))}"
        )

    def step_forgery(self) -> str:
        edge = EDGES[0]
        before = self.rejections(edge)
        self.dev().call("attack", edge=edge)

        def counted() -> bool:
            now = self.rejections(edge)
            return all(now.get(r, 0) > before.get(r, 0) for r in ("bad_auth", "replayed"))

        self.wait(counted, "the edge to count the forged and the replayed message")
        now = self.rejections(edge)
        self.figure = "2 of 2 rejected"
        return (
            f"forged signature rejected (bad_auth: {now['bad_auth']}), replay rejected "
            f"(replayed: {now['replayed']}); the device is still served"
        )

    def step_store(self) -> str:
        dev = self.dev()
        self.wait(
            lambda: set(EDGES) <= set(dev.call("store_nodes")["nodes"]),
            "the cloud to list the three storage edges",
        )
        r = dev.call("store_put", name=FILE_NAME, seed=FILE_SEED, size=FILE_SIZE)
        if sorted(r["placement"]) != sorted(EDGES):
            raise DemoFailed(f"placement {r['placement']}")
        self.file_sha = r["sha256"]
        self.figure = f"{r['k']}-of-{r['n']}, {r['segments'] * r['n']} shards"
        return (
            f"'{FILE_NAME}' ({FILE_SIZE:,} B) encrypted, {r['k']}-of-{r['n']} erasure-coded over "
            f"{', '.join(r['placement'])}: {r['segments']} segments, "
            f"{r['segments'] * r['n']} shards"
        )

    def _placed(self, task_id: str) -> dict[str, Any]:
        for _, _, kind, subject, details in reversed(self.audit_rows()):
            if kind == "task.placed" and subject == task_id:
                return dict(json.loads(details))
        return {}

    def step_tasks(self) -> str:
        from securemesh.crypto.certs import SignedCertificate  # noqa: PLC0415
        from securemesh.tasks import SignedTaskResult, verify_result  # noqa: PLC0415

        def cert(node: str) -> Any:
            blob = (self.dirs[node] / "node.cert").read_bytes()
            return SignedCertificate.from_bytes(blob).unverified_certificate()

        def executors() -> set[str]:  # the edges whose reports list the tasks service
            peers = self.status(CLOUD_ID).get("peers") or []
            return {
                p["node_id"]
                for p in peers
                if isinstance(p, dict)
                and "tasks" in ((p.get("report") or {}).get("services") or [])
            }

        self.wait(lambda: set(EDGES) <= executors(), "the edges' reports listing the tasks service")
        values = [20.0 + i / 10 for i in range(READINGS)]
        stats = {"values": values}
        cases: list[tuple[str, str, dict[str, Any], dict[str, Any], float, list[str] | None]] = [
            ("privacy edge-only", "demo.stats", stats,
             {"deadline_s": 10.0, "privacy": "edge-only"}, 1.0, None),
            ("deadline 3 s, heavy", "demo.stats", stats, {"deadline_s": 3.0}, 1500.0, None),
            ("energy-weighted", "demo.stats", stats,
             {"deadline_s": 10.0, "time_weight": 0.0, "energy_weight": 1.0}, 100.0, None),
            ("data locality", "demo.digest", {},
             {"deadline_s": 20.0, "locality_weight": 1000.0}, 1.0, [FILE_NAME]),
            ("deadline 0.1 s, heavy", "demo.stats", stats, {"deadline_s": 0.1}, 1500.0, None),
        ]  # fmt: skip
        shown = []
        for label, task_type, args, intent, work, objects in cases:
            r = self.dev().call(
                "submit", to=CLOUD_ID, task_type=task_type, args=args, intent=intent, work=work,
                objects=objects,
            )  # fmt: skip
            if "refused" in r:
                if label.startswith("deadline 0.1"):
                    shown.append(f"{label} → refused ({r['refused']}: {r['detail']})")
                    continue
                raise DemoFailed(f"{label}: refused ({r['refused']}: {r['detail']})")
            if label.startswith("deadline 0.1"):
                raise DemoFailed(f"{label}: not refused")
            result = SignedTaskResult.model_validate(r["signed"])
            node = result.outcome.executor
            outcome = verify_result(result, cert(node))  # signed by the node that ran it
            if not outcome.ok:
                raise DemoFailed(f"{label}: failed on {node}: {outcome.error}")
            task_id = str(r["task_id"])
            self.wait(lambda: bool(self._placed(task_id)), "the task.placed event")  # noqa: B023
            placed = self._placed(task_id)
            why = self._why(label, node, outcome.result)
            shown.append(
                f"{label} → {node} ({why}; {placed.get('policy')}, "
                f"predicted {placed.get('predicted_ms')} ms)"
            )
        self.figure = f"{len(shown) - 1} placed, 1 refused"
        return "; ".join(shown)

    def _why(self, label: str, node: str, result: Any) -> str:
        if label.startswith("privacy"):
            if node == CLOUD_ID:
                raise DemoFailed("an edge-only task ran on the cloud")
            return "cloud-1 ruled out"
        if label.startswith("deadline"):
            if node != CLOUD_ID:
                raise DemoFailed(f"the heavy task with a deadline ran on {node}")
            return "only the fastest node meets it"
        if label.startswith("energy"):
            best = min((e for e in EDGES), key=lambda e: _PROFILE[e][2])
            if node != best:
                raise DemoFailed(f"the energy-weighted task ran on {node}, not {best}")
            return f"{_PROFILE[node][2]} J/unit vs cloud {_PROFILE[CLOUD_ID][2]}"
        if node not in EDGES:
            raise DemoFailed(f"the task over the stored file ran on {node}, not a shard holder")
        if not isinstance(result, dict) or result.get("sha256") != [self.file_sha]:
            raise DemoFailed(f"the executor read something else: {result}")
        return "holds a shard; it decrypted the file: sha256 matches"

    def step_he(self) -> str:
        import numpy as np  # noqa: PLC0415 - only the demo's check needs it

        owner = self.dev(KEYHOLDER)
        job = owner.call(
            "he_create", aggregator=CLOUD_ID, length=HE_LENGTH, contributors=len(HE_CONTRIBUTORS)
        )
        rng = np.random.default_rng(3)
        vectors = {n: rng.uniform(0.0, 5.0, HE_LENGTH).round(3) for n in HE_CONTRIBUTORS}
        for name, values in vectors.items():
            self.dev(name).send(
                "he_contribute", aggregator=CLOUD_ID, job=job["job"], values=values.tolist()
            )
        for name in vectors:
            self.dev(name).recv("he_contribute")
        r = owner.call("he_result", job=job["job"])
        plain = np.sum(np.stack(list(vectors.values())), axis=0)
        error = float(np.max(np.abs(np.array(r["total"]) - plain)))
        if r["count"] != len(vectors) or error > r["bound"]:
            raise DemoFailed(f"HE sum of {r['count']} off by {error} (bound {r['bound']})")
        self.figure = f"max error {error:.1e}"
        return (
            f"{len(vectors)} devices encrypted {HE_LENGTH} readings each ({job['preset']}); "
            f"{CLOUD_ID} added ciphertexts only; {KEYHOLDER} decrypted the sum: max error "
            f"{error:.1e} vs the plaintext sum (bound {r['bound']:.1e})"
        )

    def step_fl(self) -> str:
        self.all_devices("fl_join", FL_DEVICES, coordinator=EDGES[0], seed=0)
        # one joined device dies before the first round (SIGKILL): a dropout
        gone = self.devices.pop(FL_DROPOUT)
        gone.proc.kill()
        gone.proc.wait()
        start = self.dev().call(
            "fl_start", coordinator=EDGES[0], rounds=FL_ROUNDS, cohort=len(FL_DEVICES)
        )
        if not start["reply"].get("started"):
            raise DemoFailed(f"fl.run: {start['reply']}")

        def fl() -> dict[str, Any]:
            entry = self.status(EDGES[0]).get("services", {}).get("fl", {})
            return entry if isinstance(entry, dict) else {}

        self.wait(
            lambda: fl().get("rounds", 0) >= FL_ROUNDS and not fl().get("running"),
            f"{FL_ROUNDS} federated rounds",
            timeout=120,
        )
        last = self.dev().call("request", to=EDGES[0], msg_type="fl.status", body={})["reply"][
            "last"
        ]
        if "aborted" in last or FL_DROPOUT in last.get("survivors", []):
            raise DemoFailed(f"the last round: {last}")
        live = [n for n in FL_DEVICES if n != FL_DROPOUT]
        reports = self.all_devices("fl_report", live)
        if any(r["rounds"] != FL_ROUNDS for r in reports.values()):
            raise DemoFailed(
                f"rounds done per device: { {n: r['rounds'] for n, r in reports.items()} }"
            )
        # the global model each round started from, on the survivors' own data
        per_round = [
            sum(r["losses"][i] for r in reports.values()) / len(reports) for i in range(FL_ROUNDS)
        ]
        losses = " → ".join(f"{x:.3f}" for x in per_round)
        if not per_round[-1] < per_round[0]:
            raise DemoFailed(f"the model did not learn: loss {losses}")
        self.figure = f"loss {per_round[0]:.3f} → {per_round[-1]:.3f}"
        return (
            f"{FL_ROUNDS} SecAgg+ rounds at {EDGES[0]}: {len(FL_DEVICES)} joined, {FL_DROPOUT} "
            f"killed, {len(last['survivors'])} survivors per round; global model loss at the "
            f"start of rounds 1-{FL_ROUNDS}: {losses}"
        )

    def step_kill_edge(self) -> str:
        proc = self.procs[VICTIM]
        proc.kill()
        proc.wait()
        for name in [n for n in self.devices if n.startswith(VICTIM + ".")]:
            self.devices.pop(name).stop()  # its devices lost their edge: they quit
        self.killed_at = time.monotonic()
        r = self.dev().call("store_get", name=FILE_NAME)
        if r["sha256"] != self.file_sha or r["size"] != FILE_SIZE:
            raise DemoFailed(f"read back {r['size']} B, sha256 {r['sha256'][:16]}…")
        silent = f"; {', '.join(r['missing'])} did not answer" if r["missing"] else ""
        self.figure = "byte-equal"
        return (
            f"SIGKILL {VICTIM}: '{FILE_NAME}' read back byte-equal (sha256 {r['sha256'][:16]}…) "
            f"from 2 of its 3 shard columns{silent}"
        )

    def step_repair(self) -> str:
        self.enroll_edges((SPARE_EDGE,))
        self.wait_started(SPARE_EDGE)
        dev = self.dev()
        live = sorted({*EDGES, SPARE_EDGE} - {VICTIM})
        self.wait(
            lambda: dev.call("store_nodes")["nodes"] == live,
            f"the cloud to list {SPARE_EDGE} and to declare {VICTIM} lost",
        )
        lost_after = time.monotonic() - self.killed_at
        r = dev.call("store_repair", name=FILE_NAME)
        moved = [f"column {j}: {a} → {b}" for j, (a, b) in sorted(r["moved"].items())]
        if [b for _, b in r["moved"].values()] != [SPARE_EDGE]:
            raise DemoFailed(f"repair moved {r['moved']}")
        back = dev.call("store_get", name=FILE_NAME)
        if back["sha256"] != self.file_sha or back["missing"] or back["corrupt"]:
            raise DemoFailed(f"after the repair: {back}")
        again = dev.call("store_repair", name=FILE_NAME)
        if again["moved"]:
            raise DemoFailed(f"a second repair still moved {again['moved']}")
        self.figure = "3 of 3 columns"
        return (
            f"{SPARE_EDGE} enrolled in {VICTIM}'s place, {VICTIM} lost for the cloud after "
            f"{lost_after:.0f} s; the owner's repair rebuilt {r['rebuilt']} shards "
            f"({'; '.join(moved)}), manifest re-signed: 3 of 3 columns on "
            f"{', '.join(back['holders'])}, none missing"
        )

    def step_revoke(self) -> str:
        dev, edge = self.dev(), EDGES[0]

        def versions() -> Any:
            return self.status(edge).get("revocation_list_versions")

        before = versions()
        t0 = time.monotonic()
        self.cli("revoke", "--data-dir", str(self.cloud), DEVICE_ID)
        deadline = t0 + 30
        while True:  # the device keeps asking its edge until it is refused
            dev.send("request", to=edge, msg_type="demo.readings", body={}, timeout=2.0)
            try:
                dev.recv("request", timeout=30)
            except DemoFailed as exc:
                if dev.proc.poll() is not None:
                    raise
                refused = str(exc).split("request: ", 1)[-1].split(":")[0]
                break
            if time.monotonic() > deadline:
                raise DemoFailed("the revoked device is still served")
        cut = time.monotonic() - t0
        self.wait(lambda: versions() != before, f"{edge} to hold the new revocation list")
        self.figure = f"cut off in {cut:.2f} s"
        return (
            f"'{DEVICE_ID}' revoked: cut off live after {cut:.2f} s, its next request failed "
            f"({refused}); {edge} holds list {versions()}"
        )

    def _expected(self) -> dict[str, int | None]:
        want: dict[str, int | None] = dict.fromkeys(
            ("edge enrolled", "device enrolled", "renewal audited", "forgery audited",
             "replay audited", "revocation audited", "object.put", "task.placed",
             "he.job.done", "fl.round_finished"),
        )  # fmt: skip
        edge = EDGES[0]
        for idx, origin, kind, subject, details in self.audit_rows():
            reason = json.loads(details).get("reason") if kind == "message.rejected" else None
            if kind == "node.enrolled" and subject == edge and origin == CLOUD_ID:
                want["edge enrolled"] = idx
            elif kind == "node.enrolled" and subject == DEVICE_ID and origin == edge:
                want["device enrolled"] = idx
            elif kind == "cert.renewed" and subject == DEVICE_ID and origin == edge:
                want["renewal audited"] = idx
            elif origin == edge and subject == DEVICE_ID and reason == "bad_auth":
                want["forgery audited"] = idx
            elif origin == edge and subject == DEVICE_ID and reason == "replayed":
                want["replay audited"] = idx
            elif kind == "cert.revoked" and subject == DEVICE_ID and origin == CLOUD_ID:
                want["revocation audited"] = idx
            elif kind in want:
                want[kind] = idx
        return want

    def step_audit(self) -> str:
        def missing() -> list[str]:
            return [k for k, v in self._expected().items() if v is None]

        try:
            self.wait(lambda: not missing(), "the audit events to reach the cloud log")
        except DemoFailed as exc:
            raise DemoFailed(f"{exc}: missing {missing()}") from None
        rows = self.audit_rows()
        origins = sorted({r[1] for r in rows})
        kinds = Counter(r[2].split(".")[0] for r in rows)
        shown = ", ".join(f"{k}.*: {n}" for k, n in sorted(kinds.items()))
        self.figure = f"{len(rows)} events"
        return (
            f"{len(rows)} signed events from {len(origins)} origins ({', '.join(origins[:3])}, "
            f"...) in the log ({shown})"
        )

    def step_verify(self) -> str:
        out = self.cli(
            "audit", "verify", "--db", str(self.cloud / "audit.db"),
            "--log-key-file", str(self.cloud / "audit-log.key"), "--no-state",
        )  # fmt: skip
        if not out.startswith("OK:"):
            raise DemoFailed(f"audit verify: {out}")
        self.figure = out.split(";")[0].removeprefix("OK: ").split(",")[0]
        return out.split(";")[0].removeprefix("OK: ")

    def step_proof(self) -> str:
        index = self._expected()["revocation audited"]
        assert index is not None
        proof = self.root / "revocation-proof.json"
        self.cli(
            "audit", "prove", str(index), "--out", str(proof), "--db",
            str(self.cloud / "audit.db"), "--log-key-file", str(self.cloud / "audit-log.key"),
        )  # fmt: skip
        pub = self.root / "log-key.pub"  # an auditor gets only the public key and the file
        shutil.copy(self.cloud / "audit-log.key.pub", pub)
        out = json.loads(self.cli("audit", "verify-proof", str(proof), "--log-key", str(pub)))
        if not out.get("ok") or out["event"]["kind"] != "cert.revoked":
            raise DemoFailed(f"verify-proof: {out}")
        self.figure = f"entry {out['leaf_index']} of {out['tree_size']}"
        return (
            f"entry {out['leaf_index']} (cert.revoked {DEVICE_ID}) proven in a tree of "
            f"{out['tree_size']} with only the log's public key ({proof.stat().st_size} B file)"
        )

    # ------------------------------------------------------------- --keep

    def keep_instructions(self) -> None:
        """The mesh stays up: say how to look at it and how to stop it."""
        pw = self.root / "passphrase"
        pw.touch(0o600)
        pw.write_text(self.passphrase)  # for the reader's CLI commands; never printed
        running = [n for n, p in self.procs.items() if p.poll() is None]
        (self.root / "pids").write_text("".join(f"{n} {self.procs[n].pid}\n" for n in running))
        r, c = self.root, self.cloud
        dev = r / "devices" / "edge-1.sensor-2"  # enrolled, not revoked
        stops = " && ".join(f"securemesh node stop --data-dir {self.dirs[n]}" for n in running)
        self.say(
            f"\nThe mesh is still running ({', '.join(running)}); its data dirs are in {r}.\n"
            f'  export SECUREMESH_PASSPHRASE="$(cat {pw})"\n'
            f"  securemesh node status --data-dir {c}\n"
            f"  securemesh node list --data-dir {self.dirs[EDGES[0]]}\n"
            f"  securemesh audit query --db {c / 'audit.db'} --kind fl.round_finished\n"
            f"  securemesh audit verify --db {c / 'audit.db'} --log-key-file "
            f"{c / 'audit-log.key'} --no-state\n"
            f"  securemesh store put --data-dir {dev} --index {CLOUD_ID} --k 2 --n 3 hello "
            "/etc/hostname\n"
            f"  securemesh store ls --data-dir {dev} --index {CLOUD_ID}\n"
            f"  securemesh fl status --to {EDGES[0]} --data-dir {dev}\n"
            f"Daemon logs: {self.logs}. Stop the mesh and remove it:\n"
            f"  {stops} && rm -rf {r}"
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the demo stops it like Ctrl-C (cleanup runs), in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_Done = list[tuple[int, str, str, str, float]]  # step, title, result, figure, seconds


def _run_steps(demo: _Demo, steps: list[tuple[str, Callable[[], str]]], done: _Done) -> int:
    """Run the steps in order, one line each; stop at the first failure (1), else 0."""
    for n, (title, fn) in enumerate(steps, 1):
        t0 = time.monotonic()
        demo.figure = ""
        try:
            detail = fn()
        except (SecureMeshError, OSError, AssertionError, ValueError, KeyError) as exc:
            demo.say(f" {demo.bad} {n:2}. {title}: {type(exc).__name__}: {exc}")
            done.append((n, title, "FAILED", type(exc).__name__, time.monotonic() - t0))
            return 1
        took = time.monotonic() - t0
        done.append((n, title, "ok", demo.figure, took))
        demo.say(f" {demo.ok} {n:2}. {title} — {detail} [{took:.1f}s]")
    return 0


def run_demo(*, keep: bool = False, out: IO[str] | None = None) -> int:
    """Run the demo; return 0 only if every step succeeded (see the module doc)."""
    stream = out if out is not None else sys.stdout
    root = Path(tempfile.mkdtemp(prefix="securemesh-demo-"))
    demo = _Demo(root, stream, keep=keep)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("mesh authority and cloud node created", demo.step_init),
        ("cloud daemon running", demo.step_cloud),
        ("three edges enrolled and running", demo.step_edges),
        ("devices enrolled at the edges", demo.step_devices),
        ("sensor readings delivered", demo.step_readings),
        ("routed request answered by the cloud", demo.step_routed),
        ("device certificate renewed over the bus", demo.step_renew),
        ("forged and replayed messages rejected", demo.step_forgery),
        ("file stored sharded across the edges", demo.step_store),
        ("tasks placed by intent", demo.step_tasks),
        ("HE aggregation decrypted", demo.step_he),
        ("federated learning with a dropout", demo.step_fl),
        ("edge killed, file still read", demo.step_kill_edge),
        ("redundancy restored by repair", demo.step_repair),
        ("device revoked and cut off", demo.step_revoke),
        ("audit events in the cloud log", demo.step_audit),
        ("audit log verified", demo.step_verify),
        ("offline inclusion proof verified", demo.step_proof),
    ]
    start = time.monotonic()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    demo.say(
        f"SecureMesh demo — real processes on 127.0.0.1, working directory {root} "
        f"(load average {load:.1f})"
    )
    done: _Done = []
    code = 1
    try:
        with _sigterm_as_interrupt():
            code = _run_steps(demo, steps, done)
    except KeyboardInterrupt:
        demo.say("interrupted: stopping every process the demo started")
        keep = False
        raise
    finally:
        if keep and code == 0:
            demo.stop_devices()  # clients: they go; the daemons stay
        else:
            demo.stop_all()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - start
    width = max((len(t) for _, t, _, _, _ in done), default=4)
    demo.say(f"\n step | {'what':{width}} | result | {'figure':28} | time")
    for n, title, result, figure, took in done:
        demo.say(f" {n:4} | {title:{width}} | {result:6} | {figure:28} | {took:5.1f}s")
    if code == 0:
        demo.say(f"all {len(steps)} steps passed in {total:.1f}s")
        if keep:
            demo.keep_instructions()
    else:
        demo.say(
            f"demo FAILED after {total:.1f}s"
            + (f" (kept: {root}, daemon logs in logs/)" if keep else " (rerun with --keep)")
        )
    return code
