"""Tests for securemesh.audit.checkpoint: Go sumdb/note vectors, C2SP checkpoints, strictness."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit.checkpoint import (
    MAX_CHECKPOINT_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    NoteVerifier,
    format_verifier_key,
    key_id,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
)
from securemesh.audit.merkle import EMPTY_ROOT
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    LocalError,
    RemoteError,
    SizeLimitExceeded,
)

V: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "note_vectors.json").read_text(encoding="utf-8")
)
TEXT: str = V["text"]
PETER_SIG: str = V["peter_sig"]
ENOCH_SIG: str = V["enoch_sig"]
LOG = "log.securemesh.example/audit"
ROOT = bytes(range(32))


def peter_signer() -> Ed25519Signer:
    # PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed); the base64 part may contain '+'.
    blob = base64.b64decode(V["skey"].split("+", 4)[4])
    assert blob[0] == 1
    return Ed25519Signer.from_seed(blob[1:])


def peter_key() -> tuple[str, bytes]:
    return parse_verifier_key(V["vkey"])


@pytest.fixture(scope="module")
def log_signer() -> Ed25519Signer:
    return Ed25519Signer.from_seed(bytes([7]) * 32)


# ------------------------------------------------------------ Go known answers


def test_go_verifier_key_round_trip() -> None:
    signer = peter_signer()
    assert format_verifier_key("PeterNeumann", signer.verify_key) == V["vkey"]
    name, vk = peter_key()
    assert (name, vk) == ("PeterNeumann", signer.verify_key)
    assert key_id(name, vk).hex() == "c74f20a3"
    v = NoteVerifier.from_string(V["vkey"])
    assert v.to_string() == V["vkey"]
    assert v.key_id == bytes.fromhex("c74f20a3")


def test_go_sign_is_byte_identical() -> None:
    note = sign_note(TEXT, key_name="PeterNeumann", signer=peter_signer())
    assert note == (TEXT + "\n" + PETER_SIG).encode()


def test_go_open_ignores_unknown_keys() -> None:
    name, vk = peter_key()
    note = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    assert open_note(note, key_name=name, verify_key=vk) == TEXT
    enoch_name, enoch_vk = parse_verifier_key(V["enoch_vkey"])
    assert open_note(note, key_name=enoch_name, verify_key=enoch_vk) == TEXT
    # Only Enoch's signature present: Peter's key finds nothing it knows.
    with pytest.raises(AuthenticationError):
        open_note((TEXT + "\n" + ENOCH_SIG).encode(), key_name=name, verify_key=vk)
    # Same name, different key (and so a different key ID): ignored, then rejected.
    other = Ed25519Signer.from_seed(bytes(32)).verify_key
    with pytest.raises(AuthenticationError):
        open_note(note, key_name=name, verify_key=other)


def test_go_invalid_signature_and_too_many() -> None:
    name, vk = peter_key()
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(AuthenticationError):
        open_note(bad.encode(), key_name=name, verify_key=vk)
    many = TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1)
    with pytest.raises(DecodeError):
        open_note(many.encode(), key_name=name, verify_key=vk, max_size=1 << 20)
    # A flipped bit in the text: the known key's signature fails.
    with pytest.raises(AuthenticationError):
        open_note(
            (TEXT.replace("cryptography", "cryptographY") + "\n" + PETER_SIG).encode(),
            key_name=name,
            verify_key=vk,
        )


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "\u2014 Bad Name " + PETER_SIG.split(" ")[2],
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("\u2014", "--"),
        TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),  # unpadded base64
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "PeterNeumann  "),
        TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG,
    ],
)
def test_go_malformed_notes(msg: str) -> None:
    name, vk = peter_key()
    with pytest.raises(DecodeError):
        open_note(msg.encode(), key_name=name, verify_key=vk)


def test_invalid_utf8_note() -> None:
    name, vk = peter_key()
    with pytest.raises(DecodeError):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), key_name=name, verify_key=vk)


def test_go_verifier_key_manglings_rejected() -> None:
    vkey: str = V["vkey"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(DecodeError):
                    parse_verifier_key(vkey[i:j])
    for i in range(len(vkey)):
        mangled = vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :]
        with pytest.raises(DecodeError):
            parse_verifier_key(mangled)
    for bad in V["bad_verifier_keys"]:
        with pytest.raises(DecodeError):
            parse_verifier_key(bad)
    with pytest.raises(DecodeError):
        parse_verifier_key(vkey.replace("c74f20a3", "C74F20A3"))


def test_key_name_rules() -> None:
    vk = peter_signer().verify_key
    for bad in ["", "a b", "a+b", "a\u00a0b", "a\tb"]:
        with pytest.raises(LocalError):
            format_verifier_key(bad, vk)
    with pytest.raises(LocalError):
        format_verifier_key("ok", vk[:31])
    with pytest.raises(LocalError):
        sign_note("no newline", key_name="ok", signer=peter_signer())
    with pytest.raises(LocalError):
        sign_note("blank\n\nline\n", key_name="ok", signer=peter_signer())


# ------------------------------------------------------------ checkpoints


def test_c2sp_example_body_round_trips() -> None:
    body: str = V["c2sp_checkpoint_example"]["body"]
    origin, size, root_b64, _ = body.split("\n")
    cp = Checkpoint(origin, int(size), base64.b64decode(root_b64))
    assert cp.body() == body


def test_checkpoint_sign_open(log_signer: Ed25519Signer) -> None:
    cp = Checkpoint(LOG, 1234, ROOT)
    note = sign_checkpoint(cp, key_name=LOG, signer=log_signer)
    text = note.decode()
    assert text.startswith(f"{LOG}\n1234\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {LOG} ")
    assert open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key) == cp
    assert open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key, origin=LOG) == cp
    with pytest.raises(AuthenticationError):
        open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key, origin="other.log")
    other = Ed25519Signer.from_seed(bytes([8]) * 32)
    with pytest.raises(AuthenticationError):
        open_checkpoint(note, key_name=LOG, verify_key=other.verify_key)
    # Tampering with the size or root invalidates the signature.
    forged = text.replace("\n1234\n", "\n1235\n").encode()
    with pytest.raises(AuthenticationError):
        open_checkpoint(forged, key_name=LOG, verify_key=log_signer.verify_key)


def test_empty_tree_and_time_extension(log_signer: Ed25519Signer) -> None:
    cp = Checkpoint(LOG, 0, EMPTY_ROOT, time_ms=1_700_000_000_123, extensions=("witness-hint x",))
    assert cp.body().split("\n")[3:5] == ["securemesh-time-ms 1700000000123", "witness-hint x"]
    note = sign_checkpoint(cp, key_name=LOG, signer=log_signer)
    assert open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key) == cp


def test_witness_cosignature_is_ignored(log_signer: Ed25519Signer) -> None:
    cp = Checkpoint(LOG, 5, ROOT)
    note = sign_checkpoint(cp, key_name=LOG, signer=log_signer)
    cosigned = note + ENOCH_SIG.encode()
    assert open_checkpoint(cosigned, key_name=LOG, verify_key=log_signer.verify_key) == cp


@pytest.mark.parametrize(
    "body",
    [
        f"{LOG}\n01\nROOT\n",  # leading zero
        f"{LOG}\n+1\nROOT\n",
        f"{LOG}\n 1\nROOT\n",
        f"{LOG}\n1 \nROOT\n",
        f"{LOG}\n-1\nROOT\n",
        f"{LOG}\n1.0\nROOT\n",
        f"{LOG}\n\u0661\nROOT\n",  # Arabic-Indic digit one
        f"{LOG}\n9223372036854775808\nROOT\n",  # 2**63
        f"{LOG}\n1\n",
        f"{LOG}\n1\n{base64.b64encode(bytes(31)).decode()}\n",
        f"{LOG}\n1\n{base64.b64encode(bytes(33)).decode()}\n",
        f"{LOG}\n1\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",
        f"{LOG}\n1\n{base64.urlsafe_b64encode(bytes([251]) * 32).decode()}\n",
        f"{LOG}\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=\n",  # non-zero slack bits
        f"{LOG} \n1\nROOT\n",
        "a b\n1\nROOT\n",
        f"{LOG}\n1\nROOT\nsecuremesh-time-ms 01\n",
        f"{LOG}\n1\nROOT\nsecuremesh-time-ms\n",
        f"{LOG}\n1\nROOT\nx\nsecuremesh-time-ms 5\n",
    ],
)
def test_strict_checkpoint_parsing(body: str, log_signer: Ed25519Signer) -> None:
    body = body.replace("ROOT", base64.b64encode(ROOT).decode())
    note = sign_note(body, key_name=LOG, signer=log_signer)
    with pytest.raises(DecodeError):
        open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key)


def test_size_limit_is_checked_first(log_signer: Ed25519Signer) -> None:
    note = b"x" * (MAX_CHECKPOINT_SIZE + 1)
    with pytest.raises(SizeLimitExceeded):
        open_checkpoint(note, key_name=LOG, verify_key=log_signer.verify_key)
    with pytest.raises(LocalError):
        sign_checkpoint(
            Checkpoint(LOG, 1, ROOT, extensions=("e" * MAX_CHECKPOINT_SIZE,)),
            key_name=LOG,
            signer=log_signer,
        )


def test_checkpoint_construction_checks() -> None:
    for args in [
        ("", 1, ROOT),
        ("a b", 1, ROOT),
        (LOG, -1, ROOT),
        (LOG, 1 << 63, ROOT),
        (LOG, True, ROOT),
        (LOG, 1, ROOT[:31]),
    ]:
        with pytest.raises(LocalError):
            Checkpoint(*args)
    with pytest.raises(LocalError):
        Checkpoint(LOG, 1, ROOT, time_ms=-1)
    with pytest.raises(LocalError):
        Checkpoint(LOG, 1, ROOT, extensions=("",))
    with pytest.raises(LocalError):
        Checkpoint(LOG, 1, ROOT, extensions=("securemesh-time-ms 5",))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, (1 << 63) - 1),
    root=st.binary(min_size=32, max_size=32),
    time_ms=st.none() | st.integers(0, (1 << 63) - 1),
    origin=st.text(
        st.characters(
            blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="+"
        ),
        min_size=1,
        max_size=40,
    ).filter(lambda s: not any(c.isspace() for c in s)),
)
def test_checkpoint_round_trip_property(
    size: int, root: bytes, time_ms: int | None, origin: str
) -> None:
    signer = Ed25519Signer.from_seed(bytes([9]) * 32)
    cp = Checkpoint(origin, size, root, time_ms=time_ms)
    note = sign_checkpoint(cp, key_name=LOG, signer=signer)
    assert open_checkpoint(note, key_name=LOG, verify_key=signer.verify_key, origin=origin) == cp


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 599), st.integers(0, 255))
def test_open_never_crashes_on_garbage(junk: bytes, pos: int, byte: int) -> None:
    signer = Ed25519Signer.from_seed(bytes([9]) * 32)
    good = sign_checkpoint(Checkpoint(LOG, 3, ROOT), key_name=LOG, signer=signer)
    mutated = bytearray(good)
    mutated[pos % len(mutated)] = byte
    for data in (junk, bytes(mutated), good + junk):
        try:
            open_checkpoint(data, key_name=LOG, verify_key=signer.verify_key)
        except RemoteError:
            pass
        else:
            assert data == good or bytes(mutated) == good or data.startswith(good)
