"""Readiness waits and the stop the daemon benches share (he, storage, load)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["stop_all", "wait_file", "wait_status_tick"]


def wait_file(path: Path, what: str, timeout: float = 90.0) -> None:
    """Until ``path`` exists (a daemon's ready file); SystemExit after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_status_tick(data_dir: Path, after: float, timeout: float = 30.0) -> None:
    """Until the daemon in ``data_dir`` writes a ``status.json`` newer than ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads((data_dir / "status.json").read_text())["written_at"] > after:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{data_dir.name} wrote no status")
        time.sleep(0.05)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM every daemon, then wait for each (SIGKILL after ``timeout``)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
