"""The CLI examples in docs/audit.md run as written (a security team copies them)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from audit_log_helpers import make_events
from docs_support import marked_block

from securemesh.crypto.signing import Ed25519Signer


def test_cli_examples_in_docs_run(tmp_path: Path) -> None:
    script = marked_block("audit.md", "audit-cli")
    signer = Ed25519Signer.from_seed(b"1" * 32)
    events = make_events(signer, "edge-1", 30)
    (tmp_path / "events.b64").write_text(
        "".join(base64.b64encode(e.to_bytes()).decode() + "\n" for e in events)
    )
    bindir = Path(sys.executable).parent
    if shutil.which("securemesh", path=str(bindir)) is None:
        pytest.fail("the securemesh console script is not installed next to this Python")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "EDGE1_VERIFY_KEY_HEX": signer.verify_key.hex(),
        "COLUMNS": "160",
    }
    env.pop("SECUREMESH_AUDIT_DB", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: 30 entries" in done.stdout
    assert '"leaf_index": 5' in done.stdout
    assert len((tmp_path / "audit-export.jsonl").read_text().splitlines()) == 30
