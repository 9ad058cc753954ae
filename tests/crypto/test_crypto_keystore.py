"""Passphrase-encrypted key files: format, wrong passphrase vs corruption, permissions."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

import nacl.bindings
import nacl.pwhash.argon2id
import pytest
from crypto_support import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto import keystore
from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS, KdfParams
from securemesh.errors import CorruptKeyFile, KeyStoreError, LocalError, WrongPassphrase

FAST = UNSAFE_FAST_PARAMS


def reference_seal(
    data: bytes, passphrase: bytes, salt: bytes, nonce: bytes, *, ops: int, mem: int
) -> bytes:
    """The file layout exactly as the keystore module docstring documents it."""
    okm = nacl.pwhash.argon2id.kdf(64, passphrase, salt, opslimit=ops, memlimit=mem)
    key, check_key = okm[:32], okm[32:]
    fixed = b"SMKEYF\x00\x01" + bytes([1, 1]) + struct.pack(">II", ops, mem) + salt + nonce
    verifier = hashlib.blake2b(fixed, digest_size=32, key=check_key, person=b"securemesh-kfchk")
    with_verifier = fixed + verifier.digest()
    header = (
        with_verifier
        + hashlib.blake2b(with_verifier, digest_size=16, person=b"securemesh-kfhdr").digest()
    )
    body = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(data, header, nonce, key)
    return header + body


def test_known_answer_vector_and_documented_layout() -> None:
    vector = load_vectors("keystore_vectors.json")["vectors"][0]
    salt, nonce = bytes.fromhex(vector["salt"]), bytes.fromhex(vector["nonce"])
    params = KdfParams(opslimit=vector["opslimit"], memlimit=vector["memlimit"])
    data = bytes.fromhex(vector["secret"])
    blob = keystore.seal_secret(data, vector["passphrase"], params=params, salt=salt, nonce=nonce)
    assert blob.hex() == vector["file"]
    assert blob == reference_seal(
        data,
        vector["passphrase"].encode(),
        salt,
        nonce,
        ops=params.opslimit,
        mem=params.memlimit,
    )
    assert keystore.open_secret(bytes.fromhex(vector["file"]), vector["passphrase"]) == data
    assert len(blob) == keystore.HEADER_SIZE + len(data) + 16


@settings(max_examples=20)
@given(data=st.binary(max_size=300), passphrase=st.text(min_size=1, max_size=20))
def test_roundtrip(data: bytes, passphrase: str) -> None:
    blob = keystore.seal_secret(data, passphrase, params=FAST)
    assert keystore.open_secret(blob, passphrase) == data


def test_passphrase_is_nfc_normalized_and_bytes_accepted() -> None:
    blob = keystore.seal_secret(b"x", "caf\u00e9", params=FAST)
    assert keystore.open_secret(blob, "cafe\u0301") == b"x"
    assert keystore.open_secret(blob, "caf\u00e9".encode()) == b"x"


def test_wrong_passphrase() -> None:
    blob = keystore.seal_secret(b"secret", "right", params=FAST)
    with pytest.raises(WrongPassphrase):
        keystore.open_secret(blob, "wrong")
    with pytest.raises(LocalError):
        keystore.open_secret(blob, "")


def test_every_flipped_bit_is_corruption_not_wrong_passphrase() -> None:
    blob = keystore.seal_secret(b"0123456789abcdef" * 2, "pw", params=FAST)
    for position in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[position // 8] ^= 1 << (position % 8)
        with pytest.raises(CorruptKeyFile):
            keystore.open_secret(bytes(tampered), "pw")


def test_truncated_garbage_and_oversize() -> None:
    blob = keystore.seal_secret(b"secret", "pw", params=FAST)
    for length in range(len(blob)):
        with pytest.raises(CorruptKeyFile):
            keystore.open_secret(blob[:length], "pw")
    with pytest.raises(CorruptKeyFile):
        keystore.open_secret(blob + b"\x00", "pw")
    with pytest.raises(CorruptKeyFile):
        keystore.open_secret(os.urandom(200), "pw")
    with pytest.raises(CorruptKeyFile):
        keystore.open_secret(blob + bytes(keystore.MAX_FILE_SIZE), "pw")
    with pytest.raises(LocalError):
        keystore.seal_secret(bytes(keystore.MAX_SECRET_SIZE + 1), "pw", params=FAST)


def test_crafted_expensive_parameters_are_refused_before_the_kdf() -> None:
    blob = bytearray(keystore.seal_secret(b"secret", "pw", params=FAST))
    struct.pack_into(">I", blob, 14, 0xFFFFFFFF)  # 4 GiB memlimit
    with pytest.raises(CorruptKeyFile, match="out of bounds"):
        keystore.open_secret(bytes(blob), "pw")


def test_kdf_params_of_reads_the_header_without_the_passphrase() -> None:
    other = KdfParams(opslimit=FAST.opslimit + 1, memlimit=FAST.memlimit * 2)
    for params in (FAST, other):
        assert keystore.kdf_params_of(keystore.seal_secret(b"s", "pw", params=params)) == params
    blob = bytearray(keystore.seal_secret(b"s", "pw", params=FAST))
    struct.pack_into(">I", blob, 14, 0xFFFFFFFF)
    with pytest.raises(CorruptKeyFile, match="out of bounds"):
        keystore.kdf_params_of(bytes(blob))
    for bad in (b"", b'{"seed": "00"}', bytes(blob[:50])):
        with pytest.raises(CorruptKeyFile):
            keystore.kdf_params_of(bad)


def test_kdf_params_bounds() -> None:
    with pytest.raises(LocalError):
        KdfParams(opslimit=0, memlimit=FAST.memlimit)
    with pytest.raises(LocalError):
        KdfParams(opslimit=1, memlimit=KdfParams.MAX_MEMLIMIT + 1)
    assert keystore.DEFAULT_PARAMS.memlimit >= 64 * 1024 * 1024


def test_file_is_0600_atomic_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        keystore.write_secret_file(path, b"secret", "pw", params=FAST)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keystore.read_secret_file(path, "pw") == b"secret"
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        keystore.write_secret_file(path, b"other", "pw", params=FAST)
    assert keystore.read_secret_file(path, "pw") == b"secret"
    keystore.write_secret_file(path, b"other", "pw", params=FAST, overwrite=True)
    assert keystore.read_secret_file(path, "pw") == b"other"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temp files left


def test_durable_writes_fsync_and_snapshots_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys, certificates and counters are fsynced (file and directory); a snapshot
    written with durable=False (a daemon's status.json) is still atomic, never fsynced."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "status.json"
    keystore.write_file_atomic(path, b"one", mode=0o644)
    assert len(synced) == 2  # the file, then its directory
    synced.clear()
    keystore.write_file_atomic(path, b"two", mode=0o644, durable=False)
    assert synced == []
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # replaced, no temp left


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="not found"):
        keystore.read_secret_file(tmp_path / "missing.key", "pw")
    big = tmp_path / "big.key"
    big.write_bytes(bytes(keystore.MAX_FILE_SIZE + 1))
    with pytest.raises(CorruptKeyFile):
        keystore.read_secret_file(big, "pw")
    with pytest.raises(CorruptKeyFile):
        keystore.read_secret_file(tmp_path, "pw")  # a directory is not a key file
    link = tmp_path / "link.key"
    target = tmp_path / "target.key"
    keystore.write_secret_file(target, b"s", "pw", params=FAST)
    link.symlink_to(target)
    with pytest.raises(KeyStoreError):
        keystore.read_secret_file(link, "pw")  # O_NOFOLLOW: key files are never symlinks


def test_default_parameters_cost() -> None:
    """The default profile is memory-hard but stays usable (well under a second here)."""
    import time

    start = time.perf_counter()
    blob = keystore.seal_secret(b"x", "pw")
    elapsed = time.perf_counter() - start
    assert keystore.open_secret(blob, "pw") == b"x"
    assert elapsed < 3.0
