"""A device that stores objects does not load the node side's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

import securemesh.storage

#: The service and shard store's (SQLAlchemy, Alembic) and the task scheduler's (numpy).
HEAVY = ("sqlalchemy", "alembic", "numpy", "tenseal", "securemesh.storage._store")

PROBE = f"""
import sys
from securemesh.sdk import Device, storage_client
from securemesh.storage import StorageClient, encode_segment, decode_segment
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(",".join(loaded) or "-")
from securemesh.storage import make_service, ShardStore  # the node side still resolves
print(",".join(m for m in ("sqlalchemy", "securemesh.storage._store") if m in sys.modules))
"""


def test_client_import_leaves_node_side_unloaded() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out[0] == "-", f"the storage client loaded {out[0]}"
    assert out[1] == "sqlalchemy,securemesh.storage._store"


def test_lazy_names_resolve_and_unknown_names_raise() -> None:
    from securemesh.storage._service import make_service

    assert securemesh.storage.make_service is make_service
    assert "ShardStore" in securemesh.storage.__all__
    with pytest.raises(AttributeError):
        _ = securemesh.storage.NoSuchName  # type: ignore[attr-defined]
