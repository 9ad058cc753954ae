"""Every snippet in docs/ runs under test (issue 10).

``test_every_runnable_snippet_is_tested`` fails for a program or command
block in docs/*.md that no test runs (see :mod:`docs_support`); configuration
and data blocks must parse. The shell snippets of enrollment.md and node.md
run here as written, in ``bash -eu -o pipefail``, with only their paths and
listen addresses replaced by temporary ones; the audit and SDK snippets run in
``tests/audit/test_audit_docs.py`` and ``tests/cli/test_cli_mesh.py``, and
operations.md's on the example deployment in ``tests/test_examples.py`` (its
PostgreSQL block here). Relative links in the docs must resolve.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from daemon_support import FAST_KDF_CLI, free_port
from docs_support import RUNNABLE, TESTED, all_blocks, marked_block, stop_group
from pg_support import audit_pg_base_url, audit_pg_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]


def test_every_runnable_snippet_is_tested() -> None:
    blocks = all_blocks()
    assert len(blocks) > 20
    untested = [
        f"docs/{b.doc}:{b.line} ({b.lang})"
        for b in blocks
        if b.lang in RUNNABLE and (b.name is None or b.name not in TESTED)
    ]
    assert not untested, f"snippets no test runs (add <!-- tested-block: NAME -->): {untested}"
    named = {b.name for b in blocks if b.name is not None}
    assert named == set(TESTED), named ^ set(TESTED)
    for b in blocks:
        if b.lang == "toml":
            tomllib.loads(b.text)  # every configuration sample parses
        elif b.lang == "json":
            json.loads(b.text)
        elif b.lang == "python":
            # top-level await: an async recipe's body (its test runs it in a coroutine)
            compile(b.text, f"docs/{b.doc}:{b.line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def run_shell_block(
    script: str, replace: Mapping[str, str], cwd: Path, *, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a doc's shell block with ``replace`` applied; reap whatever it left running."""
    for old, new in replace.items():
        assert old in script, f"the snippet no longer mentions {old!r}"
        script = script.replace(old, new)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("SECUREMESH_DATA_DIR", "SECUREMESH_PASSPHRASE"):
        env.pop(name, None)
    proc = subprocess.Popen(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its background daemons share its process group
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_enrollment_quick_start_runs(tmp_path: Path) -> None:
    script = marked_block("enrollment.md", "enrollment-quick-start")
    done = run_shell_block(
        script,
        {
            "/var/lib/sm": str(tmp_path / "sm"),
            "tcp://10.0.0.1:7100": f"tcp://127.0.0.1:{free_port()}",
            "tcp://10.0.1.1:7101": f"tcp://127.0.0.1:{free_port()}",
        },
        tmp_path,
    )
    (tmp_path / "sm").mkdir(exist_ok=True)
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "sm").glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert "Traceback" not in done.stderr
    assert "enrolled 'edge-1.dev-1' as end" in done.stderr
    assert "revocation list version 2" in done.stderr
    assert "withdrawn" in done.stderr
    assert "edge-1.dev-1" in done.stdout  # the edge's node list
    assert "stopped the daemon" in done.stderr


def _init(data_dir: Path) -> None:
    """``securemesh init`` (cheap key-file KDF) in a real process, passphrase ``...``."""
    init = subprocess.run(
        [*FAST_KDF_CLI, "init", "--data-dir", str(data_dir),
         "--listen", f"tcp://127.0.0.1:{free_port()}"],
        env={**os.environ, "SECUREMESH_PASSPHRASE": "..."},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr


@pytest.mark.slow
def test_node_operations_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "edge-1"
    _init(data_dir)
    done = run_shell_block(
        marked_block("node.md", "node-ops"),
        {
            "/var/lib/securemesh/edge-1": str(data_dir),
            "/var/log/securemesh-edge-1.log": str(tmp_path / "edge-1.log"),
        },
        tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"alive": true' in done.stdout
    assert "stopped the daemon" in done.stderr
    final = json.loads((data_dir / "status.json").read_text())
    assert final["state"] == "stopped"
    assert not (data_dir / "ready").exists()


@pytest.mark.slow
@pytest.mark.postgres
def test_operations_postgres_audit_log(
    tmp_path: Path,
    audit_pg_url: str,  # noqa: F811
) -> None:
    """docs/operations.md §7: a cloud daemon with ``[audit] log_db`` in PostgreSQL creates
    the schema itself (Alembic), and ``audit info`` finds that log through node.toml
    (4-15 s; skipped, by the fixture, only on a machine without PostgreSQL)."""
    data_dir = tmp_path / "cloud-1"
    _init(data_dir)
    done = run_shell_block(
        "export SECUREMESH_PASSPHRASE=...\n" + marked_block("operations.md", "ops-postgres"),
        {
            "/var/lib/securemesh/cloud-1": str(data_dir),
            "/var/log/securemesh/cloud-1.log": str(tmp_path / "cloud-1.log"),
            "postgresql+psycopg://securemesh@db.example.net/securemesh_audit": audit_pg_url,
        },
        tmp_path,
        timeout=120,
    )
    logs = (
        (tmp_path / "cloud-1.log").read_text()[-2000:]
        if (tmp_path / "cloud-1.log").exists()
        else ""
    )
    assert done.returncode == 0, done.stdout + done.stderr + logs
    info = json.loads(done.stdout)
    assert "postgresql" in json.dumps(info)
    assert not (data_dir / "audit.db").exists()  # the log is not in SQLite
    assert "stopped the daemon" in done.stderr


#: Pages other branches write; a link to one is checked once it exists.
PENDING = {ROOT / "docs" / "reliability.md"}
_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(?:#[^)\s]*)?\)")


def test_relative_links_resolve() -> None:
    """Every relative link in README.md, docs/*.md and examples/**/README.md names a file
    or directory of the repository (docs/index.md links every page)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "examples").rglob("README.md"))]  # fmt: skip
    broken = []
    for page in pages:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            path = (page.parent / target).resolve()
            if not path.exists() and path not in PENDING:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in (ROOT / "docs").glob("*.md")
                if p.name != "index.md" and f"]({p.name})" not in index]  # fmt: skip
    assert not unlisted, f"docs/index.md does not link {unlisted}"
