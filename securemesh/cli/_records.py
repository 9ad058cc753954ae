"""Printing records and finding the data dir, the way every command group does it.

The CLI's conventions (those operators know from kubectl, journalctl and rekor-cli):

* ``--format table|json|jsonl`` on every command that prints records: an
  aligned table with an upper-case header (the default; nothing on stdout and
  a note on stderr when there are no records), one JSON array, or one JSON
  object per line;
* times are ISO 8601 UTC with ``Z`` (``2026-12-07T13:08:00Z``), in every format;
* ``--data-dir DIR``, else ``$SECUREMESH_DATA_DIR``.

Local helpers of the mesh and node commands (a teammate's ``_common`` module
defines the same conventions for the audit commands; they fold at merge).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securemesh.errors import ConfigError

__all__ = [
    "DATA_DIR_ENV",
    "FORMATS",
    "daemon_pid",
    "data_dir_of",
    "data_dir_options",
    "format_options",
    "iso_time",
    "print_records",
    "usable_dir",
]

DATA_DIR_ENV = "SECUREMESH_DATA_DIR"
FORMATS = ("table", "json", "jsonl")


def iso_time(epoch: float | None) -> str | None:
    """Unix seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (None stays None)."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def data_dir_options() -> argparse.ArgumentParser:
    """A parent parser adding ``--data-dir DIR`` (default ``$SECUREMESH_DATA_DIR``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"the node's data dir (default ${DATA_DIR_ENV})",
    )
    return parent


def data_dir_of(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``$SECUREMESH_DATA_DIR``; ConfigError naming both if neither."""
    text = args.data_dir if args.data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not text:
        raise ConfigError(f"no data dir: pass --data-dir DIR or set {DATA_DIR_ENV}")
    return Path(text).expanduser()


def format_options(default: str = "table") -> argparse.ArgumentParser:
    """A parent parser adding ``--format table|json|jsonl``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--format",
        choices=FORMATS,
        default=default,
        help=f"output format (default {default})",
    )
    return parent


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_records(
    records: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    columns: Sequence[str],
    empty: str,
) -> None:
    """Print ``records`` in ``fmt``; the table shows ``columns`` (JSON shows every field)."""
    if fmt == "json":
        print(json.dumps(list(records), indent=2, sort_keys=True))
        return
    if fmt == "jsonl":
        for record in records:
            print(json.dumps(record, sort_keys=True))
        return
    if not records:
        print(empty, file=sys.stderr)
        return
    rows = [[c.upper().replace("_", " ") for c in columns]]
    rows += [[_cell(record.get(c)) for c in columns] for record in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def usable_dir(path: Path, *, what: str = "data dir") -> Path:
    """``path`` if it is a directory or can be created as one; ConfigError saying why not."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the {what} {path} is a file, not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create the {what} {path}: {parent} is a file")
            break
    return path


def daemon_pid(data_dir: Path) -> int | None:
    """The pid of a live daemon on ``data_dir`` (from its ``ready`` file), else None."""
    try:
        ready = json.loads((data_dir / "ready").read_bytes()[:4096])
    except (OSError, ValueError):
        return None
    pid = ready.get("pid") if isinstance(ready, dict) else None
    if type(pid) is not int or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
