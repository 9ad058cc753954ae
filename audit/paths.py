"""Default locations of the audit database and client files (no heavy imports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["DATA_DIR_ENV", "DB_ENV", "default_data_dir", "default_db_url"]

DB_ENV: Final = "SECUREMESH_AUDIT_DB"
DATA_DIR_ENV: Final = "SECUREMESH_DATA_DIR"


def default_data_dir() -> Path:
    """``$SECUREMESH_DATA_DIR``, else ``$XDG_DATA_HOME/securemesh`` (``~/.local/share``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "securemesh"


def default_db_url() -> str:
    """``$SECUREMESH_AUDIT_DB``, else ``<data dir>/audit.db``."""
    return os.environ.get(DB_ENV) or str(default_data_dir() / "audit.db")
