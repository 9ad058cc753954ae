"""Fixtures of the storage tests: PostgreSQL (tests/pg_support.py); the in-memory node rig.

``tests/node/node_testlib.py`` builds real ``MeshNode``s over the in-memory
transport; the storage service's seam tests reuse it rather than copy it.
"""

import sys
from pathlib import Path

from pg_support import audit_pg_base_url, audit_pg_url  # noqa: F401 - fixtures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))
