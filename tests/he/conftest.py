"""tests/he reuses the in-memory node rig of tests/node (node_testlib)."""

from __future__ import annotations

import sys
from pathlib import Path

_NODE_TESTS = str(Path(__file__).resolve().parents[1] / "node")
if _NODE_TESTS not in sys.path:
    sys.path.append(_NODE_TESTS)
