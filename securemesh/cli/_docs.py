"""docs/cli.md, generated from the argparse parser (so the reference cannot drift).

    python -m securemesh.cli._docs > docs/cli.md      # regenerate
    python -m securemesh.cli._docs --check docs/cli.md   # exit 1 if it differs

One section per command and subcommand, each the parser's own ``--help``
text, formatted at a fixed width of :data:`WIDTH` columns so the file does not
depend on the terminal. ``tests/cli/test_cli_docs.py`` fails when the file and
the parser differ.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from securemesh.cli import build_parser

__all__ = ["WIDTH", "main", "render"]

WIDTH = 100

_HEADER = """\
# `securemesh` command reference

Generated from the CLI's argparse parser by `python -m securemesh.cli._docs`;
`tests/cli/test_cli_docs.py` fails when this file and the parser differ, so
regenerate it after changing a command. How the commands fit together:
[enrollment.md](enrollment.md) (init, token, enroll, revoke),
[node.md](node.md) (node run|status|list|stop), [audit.md](audit.md) (audit).

Conventions: every mistake ends in one `error: ...` line on stderr and a
non-zero exit status; commands that print records take
`--format table|json|jsonl` and print times as ISO 8601 UTC with `Z`; the
data dir comes from `--data-dir DIR` or `$SECUREMESH_DATA_DIR`; passphrases
come from `$SECUREMESH_PASSPHRASE` (or `--passphrase-env VAR`), never from
the command line.
"""


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases share one parser
                    seen.add(id(sub))
                    yield sub


def _walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for sub in _subcommands(parser):
        yield from _walk(sub)


def render() -> str:
    """The whole of docs/cli.md."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse subtracts 2
    try:
        parts = [_HEADER]
        for parser in _walk(build_parser()):
            parts.append(f"\n## `{parser.prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(prog="python -m securemesh.cli._docs", description=__doc__)
    args.add_argument("--check", metavar="PATH", help="compare with PATH instead of printing")
    ns = args.parse_args(argv)
    text = render()
    if ns.check is None:
        sys.stdout.write(text)
        return 0
    try:
        current = Path(ns.check).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot read {ns.check}: {exc.strerror}", file=sys.stderr)
        return 1
    if current != text:
        print(
            f"error: {ns.check} differs from the parser: "
            f"python -m securemesh.cli._docs > {ns.check}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
