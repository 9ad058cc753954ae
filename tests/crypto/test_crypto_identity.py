"""NodeIdentity: key generation, agreement, persistence, and no secrets in repr."""

from __future__ import annotations

import pickle
import stat
from pathlib import Path

import nacl.bindings
import pytest
from crypto_support import identity_from_byte

from securemesh.crypto import boxes, keystore
from securemesh.crypto.identity import NodeIdentity, PublicKeys
from securemesh.crypto.signing import verify_signature
from securemesh.crypto.z85 import z85_decode
from securemesh.errors import CorruptKeyFile, LocalError, WrongPassphrase

FAST = keystore.UNSAFE_FAST_PARAMS


def test_generate_gives_distinct_consistent_keys() -> None:
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    assert a.verify_key != b.verify_key
    assert len({a.verify_key, a.kx_public, a.curve_public}) == 3
    pub = a.public()
    assert pub == PublicKeys(verify_key=a.verify_key, kx_key=a.kx_public, curve_key=a.curve_public)
    assert len(a.curve_public_z85) == 40
    assert z85_decode(a.curve_public_z85) == a.curve_public
    secret = z85_decode(a.curve_secret_z85())
    assert nacl.bindings.crypto_scalarmult_base(secret) == a.curve_public


def test_sign_and_agree() -> None:
    a, b = identity_from_byte(1), identity_from_byte(7)
    assert verify_signature(a.verify_key, b"msg", a.sign(b"msg")) == b"msg"
    k1 = a.agree(b.kx_public, info=b"securemesh/test", salt=b"s")
    k2 = b.agree(a.kx_public, info=b"securemesh/test", salt=b"s")
    assert k1 == k2
    assert len(k1) == 32
    assert k1 != a.agree(b.kx_public, info=b"securemesh/other", salt=b"s")


def test_sealed_box_to_identity() -> None:
    node = identity_from_byte(3)
    blob = boxes.wrap_key(node.kx_public, b"data key")
    assert boxes.unwrap_key(node.kx_secret(), blob) == b"data key"


def test_save_load_roundtrip(tmp_path: Path) -> None:
    node = NodeIdentity.generate()
    path = tmp_path / "node.key"
    node.save(path, "pw", params=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = NodeIdentity.load(path, "pw")
    assert loaded.public() == node.public()
    assert loaded.curve_secret_z85() == node.curve_secret_z85()
    assert loaded.to_payload() == node.to_payload()
    with pytest.raises(WrongPassphrase):
        NodeIdentity.load(path, "not it")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptKeyFile):
        NodeIdentity.load(path, "pw")


def test_payload_layout_is_strict(tmp_path: Path) -> None:
    node = identity_from_byte(5)
    payload = node.to_payload()
    assert payload == b"SMID\x01" + bytes([5]) * 32 + bytes([6]) * 32 + bytes([7]) * 32
    assert NodeIdentity.from_payload(payload).public() == node.public()
    for bad in (payload[:-1], payload + b"\x00", b"SMIX" + payload[4:], b"SMID\x02" + payload[5:]):
        with pytest.raises(CorruptKeyFile):
            NodeIdentity.from_payload(bad)
    # A key file holding something else (e.g. an authority key) is refused.
    other = tmp_path / "other.key"
    keystore.write_secret_file(other, b"SMAK\x01" + bytes(32), "pw", params=FAST)
    with pytest.raises(CorruptKeyFile):
        NodeIdentity.load(other, "pw")


def test_no_secrets_in_repr_or_pickle() -> None:
    node = identity_from_byte(9)
    text = repr(node) + str(node) + repr(node.signer) + repr(node.public())
    for secret in (bytes([9]) * 32, bytes([10]) * 32, bytes([11]) * 32):
        assert secret.hex()[:8] not in text
    assert node.curve_secret_z85() not in text
    with pytest.raises(TypeError):
        pickle.dumps(node)


def test_public_keys_validation() -> None:
    with pytest.raises(LocalError):
        PublicKeys(verify_key=b"short", kx_key=bytes(32), curve_key=bytes(32))
    with pytest.raises(LocalError):
        NodeIdentity.from_seeds(bytes(32), bytes(31), bytes(32))
    keys = identity_from_byte(1).public().to_dict()
    assert set(keys) == {
        "verify_key_hex",
        "verify_key_b64",
        "kx_key_hex",
        "curve_key_hex",
        "curve_key_z85",
    }
