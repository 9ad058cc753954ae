"""``securemesh node run|status|metrics|list|stop``: a thin shell over the daemon module.

``run`` blocks until SIGTERM/SIGINT and exits 0 after a graceful stop.
``status`` prints the JSON the daemon last wrote to ``<data_dir>/status.json``
(peers, sessions, counters, rejections by reason, parent link, certificate
expiry) plus ``alive`` and ``age_s``; it exits 0 when the daemon is alive and
3 when the status file is left over from a stopped daemon. ``metrics`` prints
the same snapshot in the Prometheus text format (same exit statuses;
:mod:`securemesh.node._exposition`). ``list`` shows the
node's children from the same file (tier, roles, certificate expiry, last
seen, load, revocation; :mod:`securemesh.node._fleet`). ``stop`` sends SIGTERM
to the pid in ``<data_dir>/ready`` and waits until the daemon has exited.

Which ``node.toml``: the first of

1. ``--config PATH``;
2. ``--data-dir DIR``: ``DIR/node.toml``;
3. ``$SECUREMESH_DATA_DIR/node.toml``;
4. ``./node.toml``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securemesh.cli._records import (
    DATA_DIR_ENV,
    daemon_pid,
    data_dir_options,
    format_options,
    iso_time,
    print_records,
)
from securemesh.errors import ConfigError

if TYPE_CHECKING:
    from securemesh.node import NodeConfig

__all__ = ["config_path", "register"]

CONFIG_NAME = "node.toml"
#: ``node stop``: how long to wait for the daemon to exit (it drains in-flight handlers).
STOP_TIMEOUT = 60.0


def config_path(args: argparse.Namespace) -> Path:
    """The node.toml to use (module docstring: the lookup order); ConfigError if none."""
    if args.config is not None:
        return Path(args.config).expanduser()
    if args.data_dir is not None:
        return Path(args.data_dir).expanduser() / CONFIG_NAME
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser() / CONFIG_NAME
    local = Path(CONFIG_NAME)
    if local.is_file():
        return local
    raise ConfigError(
        f"no node.toml: pass --config PATH or --data-dir DIR, set {DATA_DIR_ENV}, "
        "or run in the directory that holds node.toml"
    )


def _config(args: argparse.Namespace) -> NodeConfig:
    from securemesh.node import load_config  # noqa: PLC0415 - lazy: pydantic

    return load_config(config_path(args))


def _data_dir(config: NodeConfig) -> Path:
    if config.data_dir is None:
        raise ConfigError("node.toml has no data_dir")
    return Path(config.data_dir)


def _run(args: argparse.Namespace) -> int:
    from securemesh.node import run_daemon  # noqa: PLC0415 - lazy: loads zmq

    path = config_path(args)
    config = _config(args)
    if config.data_dir is not None:
        pid = daemon_pid(Path(config.data_dir))
        if pid is not None:
            raise ConfigError(
                f"another daemon is already running on this data dir (pid {pid}): "
                f"securemesh node stop --config {path}"
            )
    return run_daemon(path, passphrase_file=args.passphrase_file)


def _status(args: argparse.Namespace) -> int:
    from securemesh.node import read_status  # noqa: PLC0415

    status = read_status(_config(args))
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0 if status.get("alive") else 3


def _metrics(args: argparse.Namespace) -> int:
    from securemesh.node import read_status, render_metrics  # noqa: PLC0415

    status = read_status(_config(args))
    sys.stdout.write(render_metrics(status))
    return 0 if status.get("alive") else 3


_LIST_COLUMNS = (
    "node_id",
    "tier",
    "roles",
    "status",
    "cert_expires",
    "last_seen",
    "load_1m",
    "revoked",
)


def _list(args: argparse.Namespace) -> int:
    from securemesh.node import read_status  # noqa: PLC0415

    status = read_status(_config(args))
    if not status.get("alive"):
        print(
            f"note: the daemon is not running; as of {iso_time(status.get('written_at'))}",
            file=sys.stderr,
        )
    children = status.get("children")
    if not isinstance(children, list):
        raise ConfigError("status.json has no children list (a daemon older than this CLI?)")
    rows = [_row(child) for child in children if isinstance(child, dict)]
    print_records(rows, args.format, columns=_LIST_COLUMNS, empty="no children")
    return 0


def _row(child: dict[str, Any]) -> dict[str, Any]:
    if child.get("revoked"):
        state = "revoked"
    else:
        state = "connected" if child.get("connected") else "disconnected"
    last_seen = child.get("last_seen")
    not_after = child.get("not_after")
    return {
        "node_id": child.get("node_id"),
        "tier": child.get("tier"),
        "roles": child.get("roles") or [],
        "status": state,
        "cert_expires": iso_time(not_after) if isinstance(not_after, int | float) else None,
        "last_seen": iso_time(last_seen) if isinstance(last_seen, int | float) else None,
        "load_1m": child.get("load_1m"),
        "inflight": child.get("inflight"),
        "serial": child.get("serial"),
        "revoked": bool(child.get("revoked")),
        "connected": bool(child.get("connected")),
    }


def _stop(args: argparse.Namespace) -> int:
    data_dir = _data_dir(_config(args))
    pid = daemon_pid(data_dir)
    if pid is None:
        print(f"no daemon is running on {data_dir}", file=sys.stderr)
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"no daemon is running on {data_dir}", file=sys.stderr)
        return 0
    except PermissionError as exc:
        raise ConfigError(f"not allowed to signal the daemon (pid {pid}): {exc}") from exc
    deadline = time.monotonic() + args.timeout
    announce_at: float | None = time.monotonic() + 1.0
    while not _exited(pid, data_dir):
        now = time.monotonic()
        if now >= deadline:
            raise ConfigError(
                f"the daemon (pid {pid}) did not exit within {args.timeout:g} s of SIGTERM"
            )
        if announce_at is not None and now >= announce_at:
            print(
                f"waiting for the daemon (pid {pid}) to drain and exit "
                f"(up to {args.timeout:g} s) ...",
                file=sys.stderr,
                flush=True,
            )
            announce_at = None
        time.sleep(0.05)
    print(f"stopped the daemon on {data_dir} (pid {pid})", file=sys.stderr)
    return 0


def _exited(pid: int, data_dir: Path) -> bool:
    """The process is gone (or a zombie), or it wrote its final ``stopped`` status."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            if handle.read(512).rsplit(b")", 1)[-1].split()[:1] == [b"Z"]:
                return True
    except OSError:
        pass
    try:
        status = json.loads((data_dir / "status.json").read_bytes()[: 4 * 1024 * 1024])
    except (OSError, ValueError):
        return False
    return (
        isinstance(status, dict) and status.get("pid") == pid and status.get("state") == "stopped"
    )


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("between 0 and 3600 seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``node run``, ``node status``, ``node metrics``, ``node list`` and ``node stop``."""
    node = subparsers.add_parser(
        "node", help="run, stop, inspect a mesh node daemon; list its children"
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    where = data_dir_options()
    where.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help=f"node.toml (default: DIR/node.toml of --data-dir or ${DATA_DIR_ENV}, "
        "else ./node.toml)",
    )
    run = node_sub.add_parser(
        "run", parents=[where], help="run the node daemon until SIGTERM/SIGINT"
    )
    run.add_argument(
        "--passphrase-file",
        metavar="PATH",
        help="file holding the identity passphrase (else passphrase_file in node.toml, the "
        "systemd credential securemesh-passphrase, or $SECUREMESH_PASSPHRASE)",
    )
    run.set_defaults(func=_run)
    status = node_sub.add_parser(
        "status", parents=[where], help="print the running daemon's status as JSON"
    )
    status.set_defaults(func=_status)
    metrics = node_sub.add_parser(
        "metrics",
        parents=[where],
        help="print the running daemon's status in the Prometheus text format",
    )
    metrics.set_defaults(func=_metrics)
    listing = node_sub.add_parser(
        "list",
        parents=[where, format_options()],
        help="list this node's children: tier, certificate expiry, last seen, load, revocation",
    )
    listing.set_defaults(func=_list)
    stop = node_sub.add_parser(
        "stop", parents=[where], help="stop the daemon (SIGTERM) and wait until it has exited"
    )
    stop.add_argument(
        "--timeout",
        type=_timeout,
        default=STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {STOP_TIMEOUT:g})",
    )
    stop.set_defaults(func=_stop)
