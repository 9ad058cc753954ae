"""The ``securemesh`` command: a thin shell over library calls.

Each command group lives in its own module exposing
``register(subparsers) -> None``; the parser it adds sets ``func`` to a
callable taking the parsed namespace and returning an exit code. Errors are
caught in exactly one place, :func:`main`, which prints
:meth:`SecureMeshError.diagnostics` and exits non-zero (sigstore's ``_cli.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from securemesh import __version__
from securemesh.errors import SecureMeshError

__all__ = ["build_parser", "main"]

# Command-group modules, imported only when the CLI runs.
_COMMAND_MODULES: tuple[str, ...] = (
    "securemesh.cli._keys",
    "securemesh.cli._audit",
    "securemesh.cli._mesh",
    "securemesh.cli._node",
    "securemesh.cli._demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securemesh",
        description="SecureMesh: zero-trust middleware for cloud-edge-end computing.",
    )
    parser.add_argument("--version", action="version", version=f"securemesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast("Callable[[argparse.Namespace], int] | None", getattr(args, "func", None))
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except SecureMeshError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
