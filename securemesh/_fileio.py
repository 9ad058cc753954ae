"""Bounded reads of small local files (certificates, trust, state, status).

Theory of operation: every file SecureMesh reads back from its data directory
is small and written by us (atomically, via
:func:`securemesh.crypto.keystore.write_file_atomic`), yet a corrupt or
hostile file must not make us read gigabytes. :func:`read_small_file` reads at
most ``limit + 1`` bytes, so an oversized file is detected without reading it
all, and turns every failure into a :class:`~securemesh.errors.LocalError`
naming the file: missing, unreadable, or too large.

Private leaf module: it imports nothing but :mod:`securemesh.errors`, so the
enrollment state, the SDK and the node daemon can all share it.
"""

from __future__ import annotations

from pathlib import Path

from securemesh.errors import ConfigError, LocalError

__all__ = ["read_small_file"]


def read_small_file(
    path: Path,
    *,
    limit: int,
    what: str,
    hint: str = "",
    too_large: type[LocalError] = ConfigError,
) -> bytes:
    """Return the contents of ``path`` if it holds at most ``limit`` bytes.

    Raises ConfigError ``"{what} not found: {path}{hint}"`` if it is missing,
    ConfigError ``"cannot read {what} {path}: …"`` on any other OSError, and
    ``too_large`` (ConfigError unless told) if it is longer than ``limit``.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}{hint}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    if len(data) > limit:
        raise too_large(f"{what} {path} is too large")
    return data
