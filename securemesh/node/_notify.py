"""The service manager's readiness and watchdog protocol (systemd's ``sd_notify``).

Theory of operation
-------------------
Under systemd with ``Type=notify`` the manager passes ``NOTIFY_SOCKET`` (an
``AF_UNIX`` datagram socket: a path, or ``@name`` in the abstract namespace)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the
process the watchdog is meant for). The daemon sends newline-separated
``KEY=VALUE`` datagrams (sd_notify(3), systemd.service(5)):

* ``READY=1`` (with ``MAINPID`` and a ``STATUS`` line) once it listens — the
  moment it writes its ``ready`` file;
* ``STATUS=...`` on every status tick (``systemctl status`` shows it);
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, sent *from the event loop*: a
  wedged loop stops the pings and the manager restarts the daemon;
* ``STOPPING=1`` when SIGTERM/SIGINT starts the drain.

:meth:`SystemdNotifier.from_environment` reads the variables once and removes
them from ``os.environ`` (sd_notify's ``unset_environment``), so a process
the daemon starts does not talk to the manager in its name. Sending never
blocks and never raises: the datagram socket is non-blocking, and a failure
(no listener, a full queue) is counted and logged once — the manager's
absence must not stop the node. Without ``NOTIFY_SOCKET`` nothing is sent.
A ``NOTIFY_SOCKET`` that is neither an absolute path nor ``@name`` is refused
with a warning, never connected to.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

__all__ = ["SystemdNotifier"]

log = logging.getLogger("securemesh.node.daemon")

#: the longest ``STATUS=`` text sent (systemctl shows one line)
MAX_STATUS = 200
_MAX_ADDRESS = 107  # sun_path is 108 bytes with its terminating NUL
_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """Datagrams to the service manager's ``NOTIFY_SOCKET`` (module doc)."""

    def __init__(self, address: str, *, watchdog_usec: int | None = None) -> None:
        if len(address) < 2:
            raise ValueError("NOTIFY_SOCKET names no socket")
        if address.startswith("@"):
            self._address: str | bytes = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        else:
            raise ValueError("NOTIFY_SOCKET is neither an absolute path nor @name")
        if len(address.encode()) > _MAX_ADDRESS:
            raise ValueError("NOTIFY_SOCKET is longer than a unix socket address")
        self.watchdog_usec = watchdog_usec
        self.failures = 0
        self.sent = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, env: MutableMapping[str, str] | None = None, *, pid: int | None = None
    ) -> SystemdNotifier | None:
        """The notifier ``env`` (default ``os.environ``) asks for, or None; the variables
        are removed from ``env`` either way. The watchdog is on only if ``WATCHDOG_USEC``
        is a positive integer and ``WATCHDOG_PID``, when set, is this process (``pid``)."""
        env = os.environ if env is None else env
        address, usec, wpid = (env.pop(name, None) for name in _ENV)
        if not address:
            return None
        watchdog: int | None = None
        if usec is not None and usec.isdigit() and int(usec) > 0:
            me = os.getpid() if pid is None else pid
            if wpid is None or (wpid.isdigit() and int(wpid) == me):
                watchdog = int(usec)
        try:
            return cls(address, watchdog_usec=watchdog)
        except ValueError as exc:
            log.warning(
                "not notifying the service manager",
                extra={"event": "notify_refused", "error": str(exc)},
            )
            return None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the manager's timeout), or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (a ``STATUS`` is cut to one line of MAX_STATUS);
        True if the manager's socket took the datagram."""
        lines = []
        for key, value in fields.items():
            text = str(value)
            if key == "STATUS":
                text = " ".join(text.split())[:MAX_STATUS]
            lines.append(f"{key}={text}")
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning(
                    "the service manager's notify socket refused a message",
                    extra={"event": "notify_failed", "error": str(exc)},
                )
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()
