"""``securemesh node run`` and ``securemesh node status``: a thin shell over the daemon module.

``run`` blocks until SIGTERM/SIGINT and exits 0 after a graceful stop.
``status`` prints the JSON the daemon last wrote to ``<data_dir>/status.json``
(peers, sessions, counters, rejections by reason, parent link, certificate
expiry) plus ``alive`` and ``age_s``; it exits 0 when the daemon is alive and
3 when the status file is left over from a stopped daemon.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from securemesh.node._daemon import run_daemon  # noqa: PLC0415 - lazy: loads zmq

    return run_daemon(args.config, passphrase_file=args.passphrase_file)


def _status(args: argparse.Namespace) -> int:
    from securemesh.node._config import load_config  # noqa: PLC0415
    from securemesh.node._daemon import read_status  # noqa: PLC0415

    status = read_status(load_config(args.config))
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0 if status.get("alive") else 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``node run`` and ``node status``."""
    node = subparsers.add_parser("node", help="run a mesh node daemon or inspect it")
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    run = node_sub.add_parser("run", help="run the node daemon until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, metavar="PATH", help="node.toml")
    run.add_argument(
        "--passphrase-file",
        metavar="PATH",
        help="file holding the identity passphrase (else passphrase_file in node.toml, the "
        "systemd credential securemesh-passphrase, or $SECUREMESH_PASSPHRASE)",
    )
    run.set_defaults(func=_run)
    status = node_sub.add_parser("status", help="print the running daemon's status as JSON")
    status.add_argument("--config", required=True, metavar="PATH", help="node.toml")
    status.set_defaults(func=_status)
