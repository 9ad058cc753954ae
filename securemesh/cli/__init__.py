"""The ``securemesh`` command: a thin shell over library calls.

Each command group lives in its own module exposing
``register(subparsers) -> None``; the parser it adds sets ``func`` to a
callable taking the parsed namespace and returning an exit code. Errors are
caught in exactly one place, :func:`main`, which prints
:meth:`SecureMeshError.diagnostics` and exits non-zero (sigstore's ``_cli.py``).

Start-up is lazy: :data:`COMMANDS` names every top-level command, its one-line
help and the module that registers it. ``securemesh --help`` (or no command)
imports none of them: each command is a placeholder parser with that help.
``securemesh COMMAND ...`` imports only COMMAND's module, so ``node status``
never pays for SQLAlchemy and the audit log. :func:`build_parser` (no
argument) registers everything, for ``docs/cli.md`` (``python -m
securemesh.cli._docs``) and the tests, which also check that each placeholder's
help is the real parser's (``tests/cli/test_cli_mesh.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from securemesh import __version__
from securemesh.errors import SecureMeshError

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``(command, one-line help, module that registers it)``, in ``--help`` order.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("keys", "create and inspect node key files", "securemesh.cli._keys"),
    ("audit", "query, verify and prove the audit log", "securemesh.cli._audit"),
    (
        "init",
        "create the mesh authority and the cloud node's keys, certificate and config",
        "securemesh.cli._mesh",
    ),
    ("token", "create and list one-time join tokens", "securemesh.cli._mesh"),
    (
        "revoke",
        "revoke nodes: write a new signed revocation list",
        "securemesh.cli._mesh",
    ),
    (
        "enroll",
        "enroll this node with a join token (keys are generated or kept locally)",
        "securemesh.cli._mesh",
    ),
    (
        "node",
        "run, stop, inspect a mesh node daemon; list its children",
        "securemesh.cli._node",
    ),
    (
        "task",
        "submit tasks with intent, follow or cancel them, verify results, simulate policies",
        "securemesh.cli._task",
    ),
    (
        "fl",
        "start secure-aggregation FL rounds and read their progress (as an enrolled device)",
        "securemesh.cli._fl",
    ),
    (
        "store",
        "encrypted, erasure-coded objects on the edges (as an enrolled device)",
        "securemesh.cli._store",
    ),
    (
        "he",
        "homomorphic-encryption jobs: aggregate encrypted vectors (CKKS)",
        "securemesh.cli._he",
    ),
    (
        "demo",
        "run the whole system on 127.0.0.1: a cloud, three edges and twelve devices "
        "(real processes, about a minute)",
        "securemesh.cli._demo",
    ),
)


def _requested(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not an option), if known."""
    names = {name for name, _, _ in COMMANDS}
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in names else None
    return None


def build_parser(command: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``securemesh`` parser.

    With ``lazy`` only the module of ``command`` (if any) is imported; every
    other command is a placeholder with its one-line help. Without it, every
    command module is imported and registered.
    """
    parser = argparse.ArgumentParser(
        prog="securemesh",
        description="SecureMesh: zero-trust middleware for cloud-edge-end computing.",
    )
    parser.add_argument("--version", action="version", version=f"securemesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [module for name, _, module in COMMANDS if not lazy or name == command]
    for module in dict.fromkeys(wanted):
        importlib.import_module(module).register(sub)
    for name, help_text, _ in COMMANDS:
        if name not in sub.choices:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested(args_in), lazy=True)
    args = parser.parse_args(args_in)
    func = cast("Callable[[argparse.Namespace], int] | None", getattr(args, "func", None))
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except SecureMeshError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command could not use: still one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
