"""Real ``securemesh node run`` processes for integration tests: start, wait, read, reap.

Shared by the daemon tests in ``tests/node`` and ``tests/sdk`` (``tests/`` is on
``sys.path`` through its conftest). Every wait is bounded and polls a file the
daemon writes itself (``ready``, ``status.json``): no sleep stands in for a
readiness signal. :class:`Daemons` reaps every process it started — SIGTERM,
then SIGKILL after a grace period — also when the test fails.

A mesh is set up the operator way with :func:`init_cloud` (``securemesh init``),
:func:`enroll_edge` (a delegated edge token, ``securemesh enroll``) and
:func:`end_token` (a device's token); each test adds its own ``node.toml`` keys
and tables. :class:`DeviceMesh` holds a mesh's data dirs and connected devices.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from securemesh.sdk import Device

#: ``[*FAST_KDF_CLI, ARGS...]`` runs ``securemesh ARGS`` in a child process whose new key
#: files (identities, authority, the audit log key) get the cheap test Argon2id cost
#: (``_KDF_PARAMS`` of ``securemesh.cli._mesh`` and ``._audit``, as the in-process CLI tests
#: set it); every other step is the real command.
FAST_KDF_CLI = [
    sys.executable,
    "-c",
    "import sys\n"
    "import securemesh.cli._audit as a\n"
    "import securemesh.cli._mesh as m\n"
    "from securemesh.crypto import keystore\n"
    "m._KDF_PARAMS = a._KDF_PARAMS = keystore.UNSAFE_FAST_PARAMS\n"
    "from securemesh.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n",
]
#: Longest a daemon may take to write ``ready`` (slow on a loaded 2-core machine).
READY_TIMEOUT = 60.0
#: Longest a daemon may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0


def poll(predicate: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait for a condition on what the daemons write (bounded polling, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_env(*, pythonpath: Iterable[Path] = (), passphrase: str | None = None) -> dict[str, str]:
    """The environment for a daemon: extra ``PYTHONPATH`` entries (test services) and the
    passphrase in ``SECUREMESH_PASSPHRASE`` (or none, for data dirs with a passphrase_file)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    env.pop("SECUREMESH_PASSPHRASE", None)
    if passphrase is not None:
        env["SECUREMESH_PASSPHRASE"] = passphrase
    return env


def log_path(data_dir: Path) -> Path:
    """Where a daemon's stderr (its structured log) goes: beside its data dir."""
    return data_dir.with_name(data_dir.name + ".log")


def log_tail(data_dir: Path, size: int = 3000) -> str:
    with contextlib.suppress(FileNotFoundError):
        return log_path(data_dir).read_bytes()[-size:].decode("utf-8", "replace")
    return ""


def start_daemon(
    toml: Path, env: Mapping[str, str], data_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m securemesh node run --config toml``; stderr appended to :func:`log_path`
    of ``data_dir`` (default: the config's directory) — a file, not a pipe: a pipe
    nobody reads would block a chatty daemon."""
    with open(log_path(data_dir or toml.parent), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "securemesh", "node", "run", "--config", str(toml)],
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_ready(
    data_dir: Path, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT
) -> dict[str, Any]:
    """Wait for the daemon's ``ready`` file; return its JSON (pid, node id, listen address)."""
    deadline = time.monotonic() + timeout
    path = data_dir / "ready"
    while True:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("pid") == proc.pid:
                return data
        if proc.poll() is not None:
            raise AssertionError(f"daemon {data_dir.name} exited early: {log_tail(data_dir)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"daemon {data_dir.name} not ready in {timeout} s")
        time.sleep(0.02)


def read_status(data_dir: Path) -> dict[str, Any]:
    """The daemon's last ``status.json`` (rewritten atomically every status_interval)."""
    data = json.loads((data_dir / "status.json").read_text())
    assert isinstance(data, dict)
    return data


def wait_status(
    data_dir: Path,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
    what: str = "status condition",
) -> dict[str, Any]:
    """Poll ``status.json`` until ``predicate(status)`` holds; return that status."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while True:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            last = read_status(data_dir)
            if predicate(last):
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{data_dir.name}: {what} not reached in {timeout} s: {last}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait up to ``timeout``, else SIGKILL; return the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code


class Daemons:
    """The daemon processes of one test mesh, by name; :meth:`close` reaps them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.dirs: dict[str, Path] = {}

    def start(self, name: str, data_dir: Path, toml: Path | None = None) -> None:
        """Start ``name`` from ``data_dir/node.toml`` (or ``toml``) without waiting."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise AssertionError(f"daemon {name} is already running")
        self.dirs[name] = data_dir
        self.procs[name] = start_daemon(toml or data_dir / "node.toml", self.env, data_dir)

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        return wait_ready(self.dirs[name], self.procs[name], timeout)

    def run(self, name: str, data_dir: Path, toml: Path | None = None) -> dict[str, Any]:
        """Start ``name`` and wait until it is ready."""
        self.start(name, data_dir, toml)
        return self.wait_ready(name)

    def stop(self, name: str) -> int:
        """Stop ``name`` (SIGTERM; killed if it does not exit in time); its exit status."""
        return stop_process(self.procs[name])

    def status(self, name: str) -> dict[str, Any]:
        return read_status(self.dirs[name])

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop_process(proc)

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cli(*args: str, env: Mapping[str, str] | None = None) -> str:
    """Run ``securemesh ARGS`` in this process (the same code as the command, without
    an interpreter start-up); return its stdout, stripped. Fails on a non-zero exit."""
    from securemesh.cli import main  # imported only when used

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert code == 0, f"securemesh {args[0]} failed ({code}): {err.getvalue()[-2000:]}"
    return out.getvalue().strip()


@contextlib.contextmanager
def reaped(env: Mapping[str, str]) -> Iterator[Daemons]:
    """``with reaped(env) as daemons:`` — every daemon started inside is reaped on exit."""
    daemons = Daemons(env)
    try:
        yield daemons
    finally:
        daemons.close()


def verify_cloud_log(cloud: Path) -> str:
    """``securemesh audit verify`` (a real process) on a cloud daemon's log; its stdout.

    Fails unless it exits 0: tree, signed heads and every origin signature check out.
    """
    verify = subprocess.run(
        [sys.executable, "-m", "securemesh", "audit", "verify", "--db", str(cloud / "audit.db"),
         "--log-key-file", str(cloud / "audit-log.key"), "--no-state"],
        env=daemon_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-2000:]
    return verify.stdout


# ------------------------------------------------- a mesh set up the operator way


def _edit_toml(data_dir: Path, top: str, tables: str) -> None:
    """Put ``top`` (top-level keys) before and ``tables`` after the ``node.toml`` that
    ``init``/``enroll`` wrote in ``data_dir``."""
    toml = data_dir / "node.toml"
    toml.write_text(top + toml.read_text() + tables)


def init_cloud(
    cloud: Path,
    passphrase: str,
    *,
    node_id: str = "cloud-1",
    listen: str | None = None,
    top: str = "",
    tables: str = "",
    cert_lifetime: str = "30d",
) -> str:
    """``securemesh init`` of a cloud node (authority ``root``) in ``cloud``, with ``top``
    and ``tables`` added to its ``node.toml``; returns its listen endpoint."""
    listen = listen or f"tcp://127.0.0.1:{free_port()}"
    cli(
        "init", "--data-dir", str(cloud), "--authority-id", "root",
        "--cloud-node-id", node_id, "--listen", listen, "--cert-lifetime", cert_lifetime,
        env={"SECUREMESH_PASSPHRASE": passphrase},
    )  # fmt: skip
    _edit_toml(cloud, top, tables)
    return listen


def enroll_edge(
    cloud: Path,
    edge: Path,
    node_id: str,
    passphrase: str,
    *,
    listen: str | None = None,
    top: str = "",
    tables: str = "",
    roles: tuple[str, ...] = (),
) -> str:
    """A delegated edge token at ``cloud`` (``token create --tier edge --delegate``, with
    ``roles`` if given), then ``securemesh enroll`` of ``node_id`` into ``edge``, with ``top``
    and ``tables`` added to its ``node.toml``; returns its listen endpoint. The daemon is not
    started."""
    listen = listen or f"tcp://127.0.0.1:{free_port()}"
    token = cli(
        "token", "create", "--data-dir", str(cloud), "--tier", "edge",
        "--delegate", "--ttl", "10m", *(["--roles", ",".join(roles)] if roles else []),
    )  # fmt: skip
    cli(
        "enroll", "--data-dir", str(edge), "--token", token, "--node-id", node_id,
        "--listen", listen, env={"SECUREMESH_PASSPHRASE": passphrase},
    )  # fmt: skip
    _edit_toml(edge, top, tables)
    return listen


def end_token(at: Path, *roles: str) -> str:
    """``securemesh token create --tier end`` at the node whose data dir is ``at`` (roles
    optional). A running daemon admits the token's key on its next status tick."""
    return cli(
        "token", "create", "--data-dir", str(at), "--tier", "end",
        *(["--roles", ",".join(roles)] if roles else []), "--ttl", "10m",
    )  # fmt: skip


class DeviceMesh:
    """A test mesh whose daemons keep their data dirs at ``root/<name>``, and the SDK
    devices the test connected, by node id (:meth:`close_devices` closes them)."""

    def __init__(self, root: Path, daemons: Daemons) -> None:
        self.root = root
        self.daemons = daemons
        self.devices: dict[str, Device] = {}

    def dir(self, name: str) -> Path:
        return self.root / name

    def enroll_devices(
        self,
        edge: str,
        tokens: Mapping[str, str],
        passphrase: str,
        *,
        unconnected: Iterable[str] = (),
        enroll_timeout: float = 20,
        connect_timeout: float = 20,
    ) -> None:
        """Enroll ``tokens`` (node id -> end token made at ``edge``) with the SDK and connect
        each device but ``unconnected`` (e.g. one the CLI connects itself). Waits first for
        the running ``edge`` to write a status after now: it admits new tokens' keys then."""
        from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
        from securemesh.sdk import Device

        created = time.time()
        poll(
            lambda: read_status(self.dir(edge))["written_at"] > created,
            f"{edge} to admit the tokens",
        )
        skip = set(unconnected)
        for name, token in tokens.items():
            Device.enroll(
                token, data_dir=self.root / name, node_id=name, passphrase=passphrase,
                timeout=enroll_timeout, kdf_params=UNSAFE_FAST_PARAMS,
            )  # fmt: skip
            if name not in skip:
                self.devices[name] = Device.connect(
                    self.root / name, passphrase=passphrase, connect_timeout=connect_timeout
                )

    def close_devices(self) -> None:
        for dev in self.devices.values():
            dev.close(drain_timeout=1.0)
