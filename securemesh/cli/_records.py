"""Printing records and finding the data dir for the mesh and node commands.

The CLI's conventions live in :mod:`securemesh.cli._common` (``--format
table|json|jsonl``, ISO 8601 UTC times with ``Z`` and milliseconds, the
aligned table); this module adapts them to the mesh and node commands, whose
``--data-dir`` is *required* (else ``$SECUREMESH_DATA_DIR``) rather than
defaulting to the audit commands' ``~/.local/share/securemesh``, and adds the
daemon's pid lookup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from securemesh.cli._common import FORMATS, format_options, iso_utc
from securemesh.cli._common import print_records as _print_records
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


def iso_time(epoch: float | None) -> str | None:
    """Unix seconds -> the CLI's one time format (:func:`~securemesh.cli._common.iso_utc`)."""
    return None if epoch is None else iso_utc(epoch)


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


def _field(name: str) -> Callable[[Mapping[str, Any]], object]:
    def get(record: Mapping[str, Any]) -> object:
        return record.get(name)

    return get


def print_records(
    records: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    columns: Sequence[str],
    empty: str,
) -> None:
    """Print ``records`` in ``fmt``; the table shows ``columns`` (JSON shows every field),
    and no records at all is ``empty`` on stderr."""
    if fmt == "table" and not records:
        print(empty, file=sys.stderr)
        return
    headers = [(c.upper().replace("_", " "), _field(c)) for c in columns]
    _print_records(records, fmt, columns=headers)


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
