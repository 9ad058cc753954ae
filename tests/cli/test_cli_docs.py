"""docs/cli.md is the parser's own help, command by command: it fails when the two differ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from securemesh.cli._docs import render

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_md_is_generated_from_the_parser() -> None:
    assert CLI_MD.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: python -m securemesh.cli._docs > docs/cli.md"
    )


def test_every_command_has_a_section() -> None:
    text = render()
    for command in (
        "securemesh node list", "securemesh node stop", "securemesh token list",
        "securemesh enroll", "securemesh revoke", "securemesh init", "securemesh keys generate",
    ):  # fmt: skip
        assert f"\n## `{command}`\n" in text


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securemesh.cli._docs", "--check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_mode_exits_non_zero_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(render().replace("node stop", "node halt"), encoding="utf-8")
    done = _check(stale)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    fresh = _check(CLI_MD)
    assert fresh.returncode == 0, fresh.stderr
