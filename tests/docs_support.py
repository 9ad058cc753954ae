"""The fenced code blocks of docs/*.md, for the tests that run them.

A block a reader would run (``python``, ``sh``, ``bash``, ``console``) must
follow a marker line ``<!-- tested-block: NAME -->``; the test that runs it
finds it with :func:`marked_block` and :data:`TESTED` says where that test
is, so ``tests/test_docs.py`` fails for a runnable snippet no test runs.
Configuration and data blocks (``toml``, ``json``) must parse.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: Languages of blocks that are programs or commands (each must be tested).
RUNNABLE = frozenset({"python", "sh", "bash", "console", "shell"})

#: tested-block name -> the test that runs it.
TESTED = {
    "audit-cli": "tests/audit/test_audit_docs.py",
    "enrollment-quick-start": "tests/test_docs.py",
    "he-core": "tests/he/test_he_core.py",
    "fl-secagg-round": "tests/fl/test_fl_secagg.py",
    "fl-he-round": "tests/fl/test_fl_he.py",
    "node-ops": "tests/test_docs.py",
    "ops-add-edge": "tests/test_examples.py",
    "ops-backup": "tests/test_examples.py",
    "ops-health": "tests/test_examples.py",
    "ops-postgres": "tests/test_docs.py",
    "ops-reenroll-edge": "tests/test_examples.py",
    "ops-revoke": "tests/test_examples.py",
    "sdk-device": "tests/cli/test_cli_mesh.py",
    "tasks-sim": "tests/tasks/test_tasks_model.py",
    "tasks-type": "tests/tasks/test_tasks_model.py",
    "service-shape": "tests/node/test_node_service_seam.py",
    "service-testing": "tests/node/test_node_service_seam.py",
}

_FENCE = re.compile(
    r"(?:<!-- tested-block: (?P<name>[\w-]+) -->\s*\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
    re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    name: str | None
    text: str


def blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc``, with the tested-block name just above it (if any)."""
    source = doc.read_text(encoding="utf-8")
    return [
        Block(
            doc.name,
            source.count("\n", 0, m.start("lang")) + 1,
            m.group("lang"),
            m.group("name"),
            m.group("body"),
        )
        for m in _FENCE.finditer(source)
    ]


def all_blocks() -> list[Block]:
    return [b for doc in sorted(DOCS.glob("*.md")) for b in blocks(doc)]


def marked_block(doc: str, name: str) -> str:
    """The text of the block marked ``<!-- tested-block: name -->`` in ``docs/doc``."""
    found = [b for b in blocks(DOCS / doc) if b.name == name]
    assert len(found) == 1, f"expected one tested block {name!r} in docs/{doc}, got {len(found)}"
    return found[0].text


def stop_group(pgid: int, timeout: float = 20.0) -> None:
    """SIGTERM a process group (a script and the daemons it started), wait until it is
    gone, SIGKILL what is left (and wait again)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
