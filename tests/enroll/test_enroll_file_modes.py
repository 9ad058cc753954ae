"""``tokens.db`` and the files SQLite keeps beside it are owner-only (issue 9, item 8c).

Before, the store chmod-ed ``tokens.db`` after SQLite had created it ``0644``,
and SQLite had already created ``tokens.db-wal`` and ``-shm`` with that mode:
readable by every local user, next to the proof keys of pending tokens.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from securemesh.crypto.certs import Authority, Tier
from securemesh.enroll._store import TokenStore


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: SQLite's own files would be 0644
    try:
        yield
    finally:
        os.umask(old)


def _modes(data_dir: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in data_dir.iterdir()
        if p.name.startswith("tokens.db")
    }


def _token(store: TokenStore) -> None:
    authority = Authority.create("root", now=1_700_000_000)
    store.create(
        authority_id=authority.authority_id,
        root_key=authority.verify_key,
        server_key=b"\x01" * 32,
        server_id="cloud-1",
        endpoint="tcp://127.0.0.1:1",
        issuer="cloud-1",
        tier=Tier.END,
        roles=(),
        ttl_s=600,
    )


@pytest.mark.usefixtures("umask_022")
def test_token_store_and_its_wal_and_shm_files_are_0600(tmp_path: Path) -> None:
    with TokenStore.in_dir(tmp_path) as store:
        _token(store)
        modes = _modes(tmp_path)  # while open: the WAL and shared-memory files exist
    assert {"tokens.db", "tokens.db-wal", "tokens.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


@pytest.mark.usefixtures("umask_022")
def test_side_files_left_world_readable_by_an_older_version_are_tightened(
    tmp_path: Path,
) -> None:
    with TokenStore.in_dir(tmp_path) as store:
        _token(store)
        for name in ("tokens.db", "tokens.db-wal", "tokens.db-shm"):
            os.chmod(tmp_path / name, 0o644)
    for name in ("tokens.db-wal", "tokens.db-shm"):  # as an old version left them
        (tmp_path / name).touch(mode=0o644)
        os.chmod(tmp_path / name, 0o644)
    with TokenStore.in_dir(tmp_path) as store:
        _token(store)
        modes = _modes(tmp_path)
    assert modes == dict.fromkeys(modes, 0o600)
