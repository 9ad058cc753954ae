"""The daemon and the service manager: sd_notify datagrams (securemesh.node._notify).

The unit tests talk to a real AF_UNIX datagram socket; the daemon test starts
a real cloud daemon with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, as
systemd's ``Type=notify`` + ``WatchdogSec=`` would, and reads what it sends:
``READY=1`` (the readiness signal the test waits on), watchdog pings, status
lines, ``STOPPING=1`` on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import daemon_env, init_cloud, log_tail, reaped

from securemesh.node._daemon import status_line
from securemesh.node._notify import MAX_STATUS, SystemdNotifier

PASSPHRASE = "notify-test-passphrase"


@pytest.fixture
def manager() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for the service manager (a short path:
    a unix socket address has at most 107 bytes, pytest's tmp_path can be longer)."""
    where = tempfile.mkdtemp(prefix="smn-", dir="/tmp")
    path = os.path.join(where, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(where, ignore_errors=True)


def _messages(sock: socket.socket, until: str, timeout: float) -> list[dict[str, str]]:
    """Datagrams (as KEY=VALUE dicts) until one holds ``until`` (KEY=VALUE) or the timeout."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        got.append(fields)
        key, value = until.split("=", 1)
        if fields.get(key) == value:
            return got
    raise AssertionError(f"no {until} in {timeout} s; got {got}")


def test_from_environment_takes_the_variables_out(manager: tuple[str, socket.socket]) -> None:
    path, _ = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242", "X": "1"}
    notifier = SystemdNotifier.from_environment(env, pid=4242)
    assert notifier is not None
    assert notifier.watchdog_interval == 1.5
    assert env == {"X": "1"}  # a child the daemon starts does not inherit them
    notifier.close()


@pytest.mark.parametrize(
    ("env", "watchdog"),
    [
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ],
)
def test_watchdog_only_when_meant_for_this_process(
    manager: tuple[str, socket.socket], env: dict[str, str], watchdog: float | None
) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": manager[0], **env}, pid=7)
    assert notifier is not None
    assert notifier.watchdog_interval == watchdog
    notifier.close()


@pytest.mark.parametrize("address", ["relative/notify", "notify", "@", "/" + "x" * 120])
def test_a_bad_notify_socket_is_refused_not_used(address: str) -> None:
    env = {"NOTIFY_SOCKET": address}
    assert SystemdNotifier.from_environment(env) is None
    assert env == {}


def test_no_notify_socket_no_notifier() -> None:
    assert SystemdNotifier.from_environment({}) is None


def test_datagrams_and_the_status_line(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = SystemdNotifier(path)
    assert notifier.notify(READY=1, STATUS="two\nlines  and   " + "x" * 400)
    fields = _messages(sock, "READY=1", 5)[-1]
    assert fields["STATUS"].startswith("two lines and x")
    assert len(fields["STATUS"]) == MAX_STATUS
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"securemesh-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = SystemdNotifier("@" + name)
        assert notifier.notify(WATCHDOG=1)
        assert _messages(sock, "WATCHDOG=1", 5) == [{"WATCHDOG": "1"}]
        notifier.close()


def test_a_gone_manager_is_counted_not_raised(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = SystemdNotifier(path)
    sock.close()
    os.unlink(path)
    assert notifier.notify(READY=1) is False
    assert notifier.notify(READY=1) is False
    assert notifier.failures == 2
    notifier.close()


def test_status_line_from_a_snapshot() -> None:
    status = {
        "state": "running",
        "children": [{"node_id": "d1"}, {"node_id": "d2"}],
        "parent": {"connected": False},
        "counters": {"accepted": 12, "rejected": 3},
    }
    assert status_line(status) == (
        "running, 2 children, parent unreachable, 12 accepted, 3 rejected"
    )
    assert status_line({}) == "?, 0 children"


def test_daemon_speaks_sd_notify(tmp_path: Path, manager: tuple[str, socket.socket]) -> None:
    """READY=1 once listening, watchdog pings from its loop, STOPPING=1 on SIGTERM."""
    path, sock = manager
    cloud = tmp_path / "cloud-1"
    init_cloud(cloud, PASSPHRASE, top="status_interval = 0.5\n")
    env = daemon_env(passphrase=PASSPHRASE)
    env.update({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    with reaped(env) as daemons:
        daemons.start("cloud-1", cloud)
        proc = daemons.procs["cloud-1"]
        try:
            ready = _messages(sock, "READY=1", 30)[-1]
        except AssertionError:
            raise AssertionError(log_tail(cloud)) from None
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"].startswith("running, 0 children")
        assert (cloud / "ready").exists()  # the file and the datagram say the same
        later = _messages(sock, "WATCHDOG=1", 5)
        later += _messages(sock, "WATCHDOG=1", 5)  # pinged again: every 0.2 s
        assert any("STATUS" in m for m in _messages(sock, "STATUS=" + ready["STATUS"], 5))
        proc.send_signal(signal.SIGTERM)
        _messages(sock, "STOPPING=1", 30)
        assert proc.wait(30) == 0
        assert daemons.status("cloud-1")["state"] == "stopped"
