"""``securemesh demo``: run a whole mesh end to end on this machine (see :mod:`securemesh.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _demo(args: argparse.Namespace) -> int:
    from securemesh.demo import run_demo  # noqa: PLC0415 - lazy: keeps the CLI start fast

    return run_demo(keep=args.keep)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser(
        "demo",
        help="run cloud, edge and device end to end on 127.0.0.1 (real processes, ~10 s)",
        description="Creates a mesh in a temporary directory, starts a cloud and an edge "
        "daemon, enrolls a device, sends readings and a routed request, rejects a forged "
        "and a replayed message, revokes the device and verifies the audit log and an "
        "offline proof. Exit status 0 only if every step succeeded.",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.set_defaults(func=_demo)
