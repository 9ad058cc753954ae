"""The authority's files live in the enrollment state (crypto only makes their bytes)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from securemesh.crypto import Authority, keystore
from securemesh.enroll import AUTHORITY_STATE_FILE, load_authority
from securemesh.enroll._state import (
    AUTHORITY_KEY_FILE,
    save_authority,
    save_authority_state,
)
from securemesh.errors import ConfigError, CorruptKeyFile, WrongPassphrase

NOW = 1_800_000_000.0
FAST = keystore.UNSAFE_FAST_PARAMS


def test_save_load_and_state_after_revocation(tmp_path: Path) -> None:
    authority = Authority.create("mesh-root", now=NOW)
    directory = tmp_path / "data" / "authority"
    save_authority(directory, authority, "pw", params=FAST)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in (AUTHORITY_KEY_FILE, AUTHORITY_STATE_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert (directory / AUTHORITY_KEY_FILE).read_bytes().startswith(keystore.MAGIC)
    loaded = load_authority(directory, "pw")
    assert loaded.verify_key == authority.verify_key
    loaded.revoke("gone", now=NOW)
    save_authority_state(directory, loaded)  # no passphrase needed
    again = load_authority(directory, "pw")
    assert again.revocation_list.unverified_list().version == 2
    assert again.revocation_list.unverified_list().node_ids == frozenset({"gone"})
    with pytest.raises(WrongPassphrase):
        load_authority(directory, "wrong")


def test_missing_oversized_and_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_authority(tmp_path / "none", "pw")
    a, b = tmp_path / "a", tmp_path / "b"
    save_authority(a, Authority.create("mesh-root", now=NOW), "pw", params=FAST)
    save_authority(b, Authority.create("mesh-root", now=NOW), "pw", params=FAST)
    (a / AUTHORITY_KEY_FILE).write_bytes((b / AUTHORITY_KEY_FILE).read_bytes())
    with pytest.raises(CorruptKeyFile):
        load_authority(a, "pw")
    (b / AUTHORITY_STATE_FILE).write_bytes(b" " * (4 * 1024 * 1024))
    with pytest.raises(CorruptKeyFile):
        load_authority(b, "pw")
