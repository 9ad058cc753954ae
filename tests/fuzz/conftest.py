"""Print how many inputs each decoder saw (and write them to $SECUREMESH_FUZZ_REPORT)."""

from __future__ import annotations

import os

import pytest
from fuzz_support import COUNTS, report, write_report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("fuzz inputs per decoder")
    for name, row in report().items():
        terminalreporter.write_line(
            f"{name:44} {row['inputs']:>9} inputs "
            f"{row['decoder_seconds']:>8.2f} s  {row['outcomes']}"
        )
    path = os.environ.get("SECUREMESH_FUZZ_REPORT")
    if path:
        write_report(path)
