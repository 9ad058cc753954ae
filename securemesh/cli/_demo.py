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
        help="run the whole system on 127.0.0.1: a cloud, three edges and twelve devices "
        "(real processes, about a minute)",
        description="Creates a mesh in a temporary directory: a cloud daemon, three edge "
        "daemons and twelve device processes that enroll and stream readings; shows routing, "
        "renewal, forged and replayed messages rejected; stores a file 2-of-3 across the "
        "edges, kills an edge, reads it back and repairs it; places tasks by intent; runs an "
        "HE aggregation and secure-aggregation FL rounds with a dropout; revokes a device; "
        "verifies the audit log and an offline proof; prints a summary table. Every process "
        "is stopped at the end (also on failure or Ctrl-C). Exit status 0 only if every "
        "step succeeded.",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the mesh running after a successful run (and print the commands to use "
        "and stop it); after a failure, keep the directory and its logs",
    )
    p.set_defaults(func=_demo)
