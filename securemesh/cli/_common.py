"""What several command groups share: the passphrase, and the CLI's conventions.

**Passphrase.**
The passphrase comes from an environment variable (``--passphrase-env``,
default ``SECUREMESH_PASSPHRASE``); if that is unset and standard input is a
terminal it is asked for (twice when a new key file is being created);
otherwise the command stops with a ConfigError rather than block on input that
will never come. It is never taken from the command line, where other users
could read it in the process list.

**Conventions** (the block comment below lists them): ``error:`` lines,
``--format``, ``--data-dir``, ISO 8601 UTC times with ``Z``, ``-S/-U`` time
ranges and progress on standard error. Light imports only: every command
module imports this one, and ``securemesh --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from securemesh.errors import ConfigError

__all__ = [
    "DEFAULT_PASSPHRASE_ENV",
    "FORMATS",
    "TIME_HELP",
    "CliError",
    "Progress",
    "accept_relative_times",
    "data_dir_given",
    "data_dir_options",
    "format_options",
    "iso_utc",
    "os_error",
    "read_input_file",
    "parse_time_arg",
    "passphrase_options",
    "print_record",
    "print_records",
    "print_table",
    "read_passphrase",
    "resolve_data_dir",
    "time_range_options",
]

DEFAULT_PASSPHRASE_ENV = "SECUREMESH_PASSPHRASE"  # noqa: S105 - a variable name


def read_passphrase(env_var: str, *, confirm: bool) -> str:
    """The passphrase from ``$env_var``, else from the terminal (asked twice if ``confirm``)."""
    value = os.environ.get(env_var)
    if value is not None:
        if not value:
            raise ConfigError(f"environment variable {env_var} is empty")
        return value
    if not sys.stdin.isatty():
        raise ConfigError(
            f"no passphrase: set the environment variable {env_var} "
            "(or run from a terminal to be asked)"
        )
    first = getpass.getpass("Key file passphrase: ")
    if not first:
        raise ConfigError("the passphrase must not be empty")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise ConfigError("the passphrases do not match")
    return first


def passphrase_options() -> argparse.ArgumentParser:
    """A parent parser adding ``--passphrase-env VAR`` (read with :func:`read_passphrase`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--passphrase-env",
        default=DEFAULT_PASSPHRASE_ENV,
        metavar="VAR",
        help=f"environment variable holding the passphrase (default {DEFAULT_PASSPHRASE_ENV})",
    )
    return parent


# =====================================================================================
# Shared CLI conventions (every command group uses these; docs/cli.md lists them)
#
# * Errors: a command raises a SecureMeshError; ``main`` prints ONE ``error: …`` line and
#   exits 1. :class:`CliError` is for mistakes a person made on the command line or with
#   a file, printed as the bare message. :func:`os_error` words an OSError.
# * ``--format table|json|jsonl`` on every command that prints records
#   (:func:`format_options`, :func:`print_records`, :func:`print_record`).
# * ``--data-dir DIR`` (default ``$SECUREMESH_DATA_DIR``, else
#   ``$XDG_DATA_HOME/securemesh`` = ``~/.local/share/securemesh``) on every command group
#   (:func:`data_dir_options`, :func:`resolve_data_dir`).
# * One time format for output: ISO 8601 UTC with ``Z`` and milliseconds (:func:`iso_utc`).
# * Time input: ``-S/--since`` and ``-U/--until`` (:func:`time_range_options`) take ISO 8601,
#   ``now``, ``today``, ``yesterday`` (UTC midnight) or ``-30m``, ``-1h``, ``-2d``
#   (:func:`parse_time_arg`; the clock is a parameter).
# * Long operations show progress on stderr after a second when it is a terminal, or
#   always with ``--progress`` (:class:`Progress`).
# =====================================================================================

FORMATS: Final = ("table", "json", "jsonl")


class CliError(ConfigError):
    """A mistake in a command's arguments or files: printed as ``error: <message>``."""

    def diagnostics(self) -> str:
        return str(self)


def os_error(exc: OSError, verb: str = "use") -> CliError:
    """``cannot <verb> PATH: <reason>`` for an OSError (the filename when it has one)."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CliError(f"cannot {verb} {where}: {reason}")


def read_input_file(path: str, what: str, limit: int) -> bytes:
    """A file the user named as input, whole; CliError if unreadable or over ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise os_error(exc, "read") from exc
    if len(data) > limit:
        raise CliError(f"{what} {path} is larger than {limit} bytes")
    return data


# ------------------------------------------------------------------ --format


def format_options(
    default: str = "table", choices: tuple[str, ...] = FORMATS
) -> argparse.ArgumentParser:
    """A parent parser adding ``--format {table,json,jsonl}`` (``-o`` for short)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-o",
        "--format",
        choices=choices,
        default=default,
        help=f"output format (default {default}): a table for people, JSON for programs",
    )
    return parent


def _json_line(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def print_records(
    docs: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], object]]] = (),
    file: TextIO | None = None,
) -> None:
    """Records as a JSON array, JSON lines, or a plain aligned table (kubectl style).

    ``columns`` are ``(HEADER, cell(doc))`` for the table; without them every
    top-level key is a column.
    """
    out = file if file is not None else sys.stdout
    if fmt == "json":
        print(json.dumps(list(docs), indent=2, sort_keys=True), file=out)
        return
    if fmt == "jsonl":
        for doc in docs:
            print(_json_line(doc), file=out)
        return
    cols = list(columns) or [(key.upper(), _getter(key)) for key in (docs[0] if docs else {})]
    rows = [[_cell(get(doc)) for _, get in cols] for doc in docs]
    print_table([h for h, _ in cols], rows, file=out)


def print_record(
    doc: Mapping[str, Any],
    fmt: str,
    *,
    fields: Sequence[tuple[str, Callable[[Mapping[str, Any]], object]]] = (),
    file: TextIO | None = None,
) -> None:
    """One record: ``json`` indented, ``jsonl`` one line, ``table`` as ``name: value`` lines."""
    out = file if file is not None else sys.stdout
    if fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True), file=out)
        return
    if fmt == "jsonl":
        print(_json_line(doc), file=out)
        return
    items = [(name, get(doc)) for name, get in fields] or list(doc.items())
    width = max((len(name) for name, _ in items), default=0)
    for name, value in items:
        text = _cell(value)
        pad = " " * (width + 2)
        print(f"{name + ':':<{width + 1}} " + text.replace("\n", "\n" + pad), file=out)


def _getter(key: str) -> Callable[[Mapping[str, Any]], object]:
    def get(doc: Mapping[str, Any]) -> object:
        return doc.get(key)

    return get


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, file: TextIO | None = None
) -> None:
    """Columns left-aligned and separated by two spaces, headers first (kubectl get)."""
    out = file if file is not None else sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for line in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(line, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


# ------------------------------------------------------------------ --data-dir


def data_dir_options() -> argparse.ArgumentParser:
    """A parent parser adding an optional ``--data-dir DIR`` (see :func:`resolve_data_dir`).

    The default is SUPPRESS so that the option may be given on a command group
    *and* on its subcommands (``securemesh audit --data-dir D query`` and
    ``securemesh audit query --data-dir D``) without one resetting the other.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the node's data dir (default $SECUREMESH_DATA_DIR, else ~/.local/share/securemesh)",
    )
    return parent


def data_dir_given(args: argparse.Namespace) -> bool:
    """True if ``--data-dir`` was on the command line (not taken from the environment)."""
    return getattr(args, "data_dir", None) is not None


def resolve_data_dir(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``$SECUREMESH_DATA_DIR``, else ``$XDG_DATA_HOME/securemesh``."""
    given = getattr(args, "data_dir", None)
    if given is not None:
        if not str(given):
            raise CliError("--data-dir is empty")
        return Path(given).expanduser()
    # securemesh.audit's package import is slow; keep `securemesh --help` fast
    from securemesh.audit.paths import default_data_dir  # noqa: PLC0415

    return default_data_dir()


# ------------------------------------------------------------------ time


def iso_utc(seconds: float) -> str:
    """The CLI's one time format: ``2026-12-07T13:08:00.123Z`` (ISO 8601, UTC)."""
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


_RELATIVE: Final = re.compile(r"-?\s*([0-9]{1,9})\s*([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP: Final = "ISO 8601 (2026-12-07T13:00:00Z), now, today, yesterday, or -30m, -1h, -2d"


def parse_time_arg(text: str, *, now: float) -> float:
    """A time given on the command line, as Unix seconds (``now`` is the clock's reading).

    ISO 8601 (a date alone is its UTC midnight; no zone means UTC), ``now``,
    ``today`` / ``yesterday`` (UTC midnight), or a duration before ``now``:
    ``-30m``, ``-1h``, ``-2d`` (``1h`` without the minus reads the same).
    """
    t = text.strip().lower()
    if t == "now":
        return now
    if t in {"today", "yesterday"}:
        day = dt.datetime.fromtimestamp(now, tz=dt.UTC).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if t == "yesterday":
            day -= dt.timedelta(days=1)
        return day.timestamp()
    m = _RELATIVE.fullmatch(t)
    if m:
        return now - int(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        parsed = dt.datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text.strip()))
    except ValueError:
        raise CliError(f"cannot read time {text!r}: use {TIME_HELP}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


# ``-S -1h``: argparse reads an argument that starts with "-" as an option unless it
# looks like a negative number; widen that test on the parsers that take times.
# (Python 3.13's argparse already treats anything starting "-<digit>" so.)
_NEGATIVE_OR_RELATIVE: Final = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d{1,9}[smhdw]$")


def accept_relative_times(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let ``parser`` take ``-30m``/``-1h``/``-2d`` as option values (``-S -1h``)."""
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = _NEGATIVE_OR_RELATIVE  # see above
    return parser


def time_range_options() -> argparse.ArgumentParser:
    """A parent parser adding ``-S/--since`` and ``-U/--until`` (journalctl's letters).

    Pass each parser built on it to :func:`accept_relative_times`.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-S", "--since", metavar="TIME", help=f"from TIME on: {TIME_HELP}")
    parent.add_argument("-U", "--until", metavar="TIME", help="before TIME (same forms)")
    return parent


# ------------------------------------------------------------------ progress


class Progress:
    """``done/total`` on standard error for an operation that may take long.

    Nothing is shown for the first ``delay`` seconds, nor ever when the stream
    is not a terminal — unless ``force`` (``--progress``), which shows every
    update at once, as a bar on a terminal and as plain lines elsewhere (at
    most one a second, and the last one). ``clock`` is injected for tests.
    """

    def __init__(
        self,
        label: str,
        *,
        force: bool = False,
        stream: TextIO | None = None,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._force = force
        self._clock = clock
        self._start = clock()
        self._delay = 0.0 if force else delay
        self._interval = 0.1 if self._tty else 1.0
        self._last: float | None = None
        self._open_line = False

    @property
    def enabled(self) -> bool:
        return self._force or self._tty

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now - self._start < self._delay:
            return
        final = done >= total
        if not final and self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        text = f"{self._label}: {done:,}/{total:,} entries ({pct}%)"
        if self._tty:
            bar = "#" * (pct // 4)
            self._stream.write(f"\r[{bar:<25}] {text}")
            self._open_line = True
            if final:
                self.close()
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the terminal line (if a bar was drawn)."""
        if self._open_line:
            self._stream.write("\n")
            self._stream.flush()
            self._open_line = False
