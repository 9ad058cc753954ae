"""The HE core without a network: presets, structure checks, CKKS sums and scores (real TenSEAL).

Small presets (``fast-4096``) where the property does not depend on size.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import ConfigError, DecodeError, SizeLimitExceeded
from securemesh.he import (
    HE_STANDARD_128,
    PRESETS,
    EncryptedSum,
    ForeignCiphertext,
    Preset,
    SecretContext,
    check_ciphertext,
    check_public_context,
    chunk_lengths,
    context_has_secret_key,
    encrypt_vector,
    get_preset,
    load_chunk,
    load_public_context,
    score,
)

FAST = get_preset("fast-4096")


@pytest.fixture(scope="module")
def owner() -> SecretContext:
    return SecretContext(FAST)


def test_every_preset_is_128_bit_secure_and_insecure_ones_are_refused() -> None:
    for preset in PRESETS.values():
        assert preset.total_bits <= HE_STANDARD_128[preset.poly_modulus_degree]
    with pytest.raises(ConfigError, match="128-bit"):
        Preset("weak", 4096, (60, 40, 40), 40).validate()  # 140 > 109
    with pytest.raises(ConfigError, match="poly modulus degree"):
        Preset("odd", 3000, (40, 20, 40), 20).validate()
    with pytest.raises(ConfigError, match="scale"):
        Preset("scale", 8192, (60, 30, 60), 40).validate()


def test_a_job_asking_more_precision_or_range_than_the_preset_gives_is_refused() -> None:
    with pytest.raises(ConfigError, match="error up to"):
        FAST.check_job(precision=1e-6, max_contributors=10, max_abs_value=1, max_weight=None)
    with pytest.raises(ConfigError, match="can hold"):
        FAST.check_job(precision=1e3, max_contributors=1000, max_abs_value=1e3, max_weight=None)
    with pytest.raises(ConfigError, match="no level"):
        Preset("flat", 4096, (50, 50), 30).validate().check_job(
            precision=1, max_contributors=2, max_abs_value=1, max_weight=2.0
        )


def test_the_public_context_has_no_secret_key_and_a_secret_one_is_refused(
    owner: SecretContext,
) -> None:
    blob = owner.public_bytes()
    assert not context_has_secret_key(blob)
    assert not ts.context_from(blob).has_secret_key()
    assert not ts.context_from(blob).has_galois_keys()  # only when a job needs rotations
    assert not ts.context_from(blob).has_relin_keys()  # no job multiplies ciphertexts
    secret_blob = owner._ctx.serialize(save_secret_key=True)
    assert context_has_secret_key(secret_blob)
    with pytest.raises(DecodeError, match="secret key"):
        load_public_context(secret_blob, FAST)
    with pytest.raises(DecodeError, match="preset"):
        load_public_context(blob, get_preset("standard-8192"))


def test_weighted_sums_of_chunked_vectors_match_plaintext_within_the_bound(
    owner: SecretContext,
) -> None:
    rng = np.random.default_rng(7)
    length = FAST.slots * 2 + 17  # three chunks, the last one short
    lengths = chunk_lengths(length, FAST.slots)
    assert lengths == [FAST.slots, FAST.slots, 17]
    xs = [rng.uniform(-1, 1, length) for _ in range(4)]
    ws = [1.0, 2.5, 0.5, 3.0]
    acc = EncryptedSum(owner.public, lengths, weighted=True)
    for x, w in zip(xs, ws, strict=True):
        frames = encrypt_vector(owner.public, x)
        assert len(frames) == 3
        acc.add(acc.load(frames), w)
    got = owner.decrypt(acc.result_frames(), lengths)
    want = sum(w * x for x, w in zip(xs, ws, strict=True))
    bound = FAST.error_bound(4, sum(ws))
    assert np.max(np.abs(got - want)) <= bound
    assert bound < 1.5  # fast-4096 is for tests; standard-8192 is ~1e-6 for the same job


def test_linear_scoring_returns_the_dot_product_plus_bias() -> None:
    preset = get_preset("score-4096")
    owner = SecretContext(preset, galois_keys=True)
    public = load_public_context(owner.public_bytes(), preset)
    x = np.linspace(-1, 1, 100)
    w = np.linspace(0.5, -0.5, 100)
    frames = encrypt_vector(public, x)
    result = score(public, frames, [100], w, 0.25)
    got = float(owner.decrypt([result], [1])[0])
    assert abs(got - (x @ w + 0.25)) <= preset.score_error_bound(float(np.abs(w).sum()))


def test_malformed_truncated_and_foreign_ciphertexts_are_refused(owner: SecretContext) -> None:
    frame = encrypt_vector(owner.public, [1.0, 2.0])[0]
    with pytest.raises(DecodeError):
        load_chunk(owner.public.ts, FAST, frame[: len(frame) // 2], 2)
    with pytest.raises(DecodeError):
        load_chunk(owner.public.ts, FAST, b"\x00" * len(frame), 2)
    with pytest.raises(SizeLimitExceeded):
        load_chunk(owner.public.ts, FAST, frame + b"\x00" * FAST.max_ciphertext_bytes, 2)
    with pytest.raises(DecodeError, match="expects 3"):
        load_chunk(owner.public.ts, FAST, frame, 3)
    # a ciphertext of other parameters at the same scale: SEAL's load refuses it
    other = Preset("other-4096", 4096, (40, 20, 20, 20), 20).validate()
    foreign = encrypt_vector(SecretContext(other).public, [1.0, 2.0])[0]
    with pytest.raises(ForeignCiphertext):
        load_chunk(owner.public.ts, FAST, foreign, 2)
    # a ciphertext of the job's own key but at a lower level (multiplied, rescaled)
    lower = (ts.ckks_vector(owner.public.ts, [1.0, 2.0]) * 1.0).serialize()
    with pytest.raises(ForeignCiphertext):
        load_chunk(owner.public.ts, FAST, lower, 2)
    # another preset's scale is refused by the structure check already
    big = encrypt_vector(SecretContext(get_preset("standard-8192")).public, [1.0])[0]
    with pytest.raises(DecodeError):
        load_chunk(owner.public.ts, FAST, big, 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_the_structure_checks_never_fail_other_than_decode_error(data: bytes) -> None:
    for check in (
        lambda: check_ciphertext(data, slots=2048, scale=2.0**20, min_size=0, max_size=1 << 20),
        lambda: check_public_context(data, max_size=1 << 20),
    ):
        with contextlib.suppress(DecodeError):
            check()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=40_000), st.integers(min_value=0, max_value=255))
def test_a_corrupted_real_ciphertext_is_refused_or_loads_never_crashes(
    owner: SecretContext, pos: int, byte: int
) -> None:
    frame = bytearray(encrypt_vector(owner.public, [0.5] * 8)[0])
    frame[pos % len(frame)] = byte
    with contextlib.suppress(DecodeError):
        load_chunk(owner.public.ts, FAST, bytes(frame), 8)


def test_importing_the_sdk_does_not_import_tenseal() -> None:
    code = (
        "import sys, securemesh.sdk, securemesh.he\n"
        "from securemesh.sdk import he_contribute\n"
        "assert 'tenseal' not in sys.modules, 'tenseal loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_docs_core_example_runs() -> None:
    from docs_support import marked_block

    exec(compile(marked_block("he.md", "he-core"), "docs/he.md", "exec"), {"__name__": "he_doc"})


def test_the_cli_lists_presets_and_inspects_contexts(
    owner: SecretContext, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from securemesh.cli import main

    assert main(["he", "presets", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(PRESETS)
    assert all(r["total_bits"] <= r["max_bits_128"] for r in rows)
    public = tmp_path / "public.context"
    public.write_bytes(owner.public_bytes())
    assert main(["he", "inspect", str(public), "--preset", "fast-4096", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["secret_key"] is False
    assert doc["sha256"] == owner.public.digest
    secret = tmp_path / "secret.context"
    secret.write_bytes(owner._ctx.serialize(save_secret_key=True))
    assert main(["he", "inspect", str(secret), "--preset", "fast-4096"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "secret key" in err
