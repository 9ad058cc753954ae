"""The ChaCha20 mask PRG: RFC 8439 layout via an independent implementation, KAT, statistics."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from crypto_support import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto.prg import MAX_LENGTH, PRG_DOMAIN, expand_mask, prg_nonce
from securemesh.errors import LocalError

SEED = bytes(range(32))


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & 0xFFFFFFFF


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 §2.3, written out in plain Python as a second opinion."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += [*struct.unpack("<8I", key), counter, *struct.unpack("<3I", nonce)]
    working = list(state)

    def quarter(a: int, b: int, c: int, d: int) -> None:
        working[a] = (working[a] + working[b]) & 0xFFFFFFFF
        working[d] = _rotl(working[d] ^ working[a], 16)
        working[c] = (working[c] + working[d]) & 0xFFFFFFFF
        working[b] = _rotl(working[b] ^ working[c], 12)
        working[a] = (working[a] + working[b]) & 0xFFFFFFFF
        working[d] = _rotl(working[d] ^ working[a], 8)
        working[c] = (working[c] + working[d]) & 0xFFFFFFFF
        working[b] = _rotl(working[b] ^ working[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return struct.pack("<16I", *[(w + s) & 0xFFFFFFFF for w, s in zip(working, state, strict=True)])


def reference_mask(seed: bytes, length: int, bits: int, label: bytes) -> list[int]:
    """The documented construction, from the reference ChaCha20 and hashlib only."""
    nonce = hashlib.sha256(b"securemesh/prg/v1\x00" + bytes([bits]) + label).digest()[:12]
    width = 4 if bits <= 32 else 8
    stream = b""
    counter = 0
    while len(stream) < length * width:
        stream += chacha20_block(seed, counter, nonce)
        counter += 1
    fmt = "<I" if width == 4 else "<Q"
    words = [struct.unpack_from(fmt, stream, i * width)[0] for i in range(length)]
    return [w & ((1 << bits) - 1) for w in words]


def test_reference_chacha20_matches_rfc8439_section_2_3_2() -> None:
    block = chacha20_block(SEED, 1, bytes.fromhex("000000090000004a00000000"))
    assert block.hex() == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


@pytest.mark.parametrize(
    ("bits", "label", "length"),
    [(32, b"", 40), (64, b"", 20), (20, b"round-1", 33), (1, b"x", 17), (33, b"pair", 9)],
)
def test_matches_the_documented_construction(bits: int, label: bytes, length: int) -> None:
    assert expand_mask(SEED, length, bits=bits, label=label).tolist() == reference_mask(
        SEED, length, bits, label
    )


def test_known_answer_vectors() -> None:
    for vector in load_vectors("prg_vectors.json")["vectors"]:
        out = expand_mask(
            bytes.fromhex(vector["seed"]),
            vector["length"],
            bits=vector["bits"],
            label=bytes.fromhex(vector["label"]),
        )
        assert out.dtype == np.dtype(vector["dtype"])
        assert out.tolist() == vector["output"]


def test_nonce_block_layout() -> None:
    nonce = prg_nonce(32, b"abc")
    assert len(nonce) == 16
    assert nonce[:4] == bytes(4)  # counter starts at 0
    assert nonce[4:] == hashlib.sha256(PRG_DOMAIN + b"\x20abc").digest()[:12]


@settings(max_examples=30)
@given(
    seed=st.binary(min_size=32, max_size=32), bits=st.integers(1, 64), length=st.integers(0, 300)
)
def test_deterministic_typed_and_in_range(seed: bytes, bits: int, length: int) -> None:
    a = expand_mask(seed, length, bits=bits)
    b = expand_mask(seed, length, bits=bits)
    assert np.array_equal(a, b)
    assert a.shape == (length,)
    assert a.dtype == (np.uint32 if bits <= 32 else np.uint64)
    if length:
        assert int(a.max()) < 2**bits
    assert expand_mask(seed, length + 5, bits=bits)[:length].tolist() == a.tolist()  # prefix-stable
    a[:1] = 0  # the result is a writable array the caller owns


def test_differs_across_seeds_labels_and_widths() -> None:
    base = expand_mask(SEED, 64)
    for position in range(0, 256, 17):  # flip single seed bits
        seed = bytearray(SEED)
        seed[position // 8] ^= 1 << (position % 8)
        other = expand_mask(bytes(seed), 64)
        assert np.count_nonzero(base == other) < 4
    assert np.count_nonzero(base == expand_mask(SEED, 64, label=b"x")) < 4
    assert np.count_nonzero(base == expand_mask(SEED, 64, label=b"y")) < 4
    low = expand_mask(SEED, 64, bits=31)
    assert np.count_nonzero((base & 0x7FFFFFFF) == low) < 4  # bits is domain-separated too


def test_rough_uniformity() -> None:
    n = 1 << 18
    out = expand_mask(SEED, n, bits=8, label=b"stats")
    counts = np.bincount(out, minlength=256)
    expected = n / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert 150 < chi2 < 380  # 255 degrees of freedom; ~1e-6 tail on each side
    words = expand_mask(SEED, n, bits=32, label=b"stats32")
    bit_freq = [float(((words >> np.uint32(k)) & np.uint32(1)).mean()) for k in range(32)]
    assert all(abs(f - 0.5) < 0.006 for f in bit_freq)
    big = expand_mask(SEED, n, bits=64)
    assert abs(float((big >> np.uint64(63)).mean()) - 0.5) < 0.006


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), "x" * 32])
def test_rejects_bad_seeds(seed: object) -> None:
    with pytest.raises(LocalError):
        expand_mask(seed, 4)  # type: ignore[arg-type]


def test_rejects_bad_parameters() -> None:
    for kwargs in ({"bits": 0}, {"bits": 65}, {"bits": True}, {"label": "str"}):
        with pytest.raises(LocalError):
            expand_mask(SEED, 4, **kwargs)
    for length in (-1, MAX_LENGTH + 1):
        with pytest.raises(LocalError):
            expand_mask(SEED, length)


def test_crypto_package_import_stays_numpy_free() -> None:
    import subprocess
    import sys

    code = (
        "import sys, securemesh.crypto, securemesh.crypto.shamir, securemesh.crypto.keystore;"
        "print('numpy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
