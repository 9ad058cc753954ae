"""Lock the public surface of securemesh.wire (httpx's test_exported_members, STYLE.md §6)."""

from __future__ import annotations

import subprocess
import sys

import securemesh.wire

EXPECTED = {
    "DEFAULT_LIMITS",
    "ID_SIZE",
    "MAC_KEY_SIZE",
    "MAC_LABEL",
    "MAC_SIZE",
    "MAGIC",
    "TRANSCRIPT_LABEL",
    "VERSION",
    "ZERO_ID",
    "AuthMode",
    "Envelope",
    "Flags",
    "Frame",
    "Header",
    "Limits",
    "ReplayGuard",
    "ReplayWindow",
    "SequenceCounter",
    "UnverifiedEnvelope",
    "WireFrame",
    "decode",
    "decode_and_verify",
    "decode_packed",
    "dump_body",
    "encode_mac",
    "encode_signed",
    "loads_strict",
    "pack_frames",
    "parse_body",
}


def test_public_names_are_exactly_the_curated_ones() -> None:
    assert set(securemesh.wire.__all__) == EXPECTED
    assert len(securemesh.wire.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert hasattr(securemesh.wire, name), name


def test_public_callables_live_in_private_modules_of_the_package() -> None:
    for name in securemesh.wire.__all__:
        obj = getattr(securemesh.wire, name)
        module = getattr(obj, "__module__", None)
        if callable(obj) and module is not None and not isinstance(obj, type(int | str)):
            assert module.startswith("securemesh.wire._"), (name, module)


def test_import_is_light() -> None:
    """No zmq (transport's job), numpy, sqlalchemy or pydantic at import time."""
    code = (
        "import sys, securemesh.wire\n"
        "bad = [m for m in ('zmq', 'numpy', 'sqlalchemy', 'tenseal', 'pydantic') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
