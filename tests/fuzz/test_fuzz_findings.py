"""Regression tests for what the fuzzers found (docs/reliability.md, "Fuzzing").

Each was an exception other than the decoder's documented error on input a
peer controls; each decoder now refuses it with its documented error.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from securemesh.audit import ingest
from securemesh.audit._entry import event_fields
from securemesh.errors import DecodeError
from securemesh.fl._bus import RoundBody
from securemesh.fl._participant import Participant
from securemesh.storage import peek_owner_unverified

DEEP = [b"[" * 5000, b'{"a":' * 5000, b"[" * 100_000]


@pytest.mark.parametrize("body", DEEP)
def test_a_deeply_nested_manifest_body_is_a_decode_error(body: bytes) -> None:
    """peek_owner_unverified raised RecursionError (json.loads on 5,000 nested arrays)."""
    blob = struct.pack(">4sI", b"SMM1", len(body)) + body + bytes(64)
    with pytest.raises(DecodeError):
        peek_owner_unverified(blob)


@pytest.mark.parametrize("body", DEEP)
def test_a_deeply_nested_cloud_acknowledgement_is_a_decode_error(body: bytes) -> None:
    """The edge's decoder of the cloud's audit acknowledgement raised RecursionError."""
    with pytest.raises(DecodeError):
        ingest._decode_acks(body)


@pytest.mark.parametrize("body", DEEP)
def test_a_deeply_nested_stored_event_reads_as_undecodable(body: bytes) -> None:
    """``audit verify`` reads rows of a possibly tampered database: RecursionError before."""
    assert event_fields(body) is None


def _round(**changes: object) -> RoundBody:
    cohort = ["dev-0", "dev-1", "dev-2"]
    fields: dict[str, object] = {
        "round": 1,
        "round_id": "ab" * 16,
        "graph_seed": "cd" * 32,
        "cohort": cohort,
        "keys": dict.fromkeys(cohort, "ee" * 32),
        "length": 3,
        "bits": 32,
        "degree": 2,
        "threshold": 2,
        "stage_timeout": 5.0,
        "clip": 1.0,
        "levels": 100,
        "max_clients": 10,
        "max_weight": 10,
    }
    fields.update(changes)
    if "cohort" in changes:
        fields["keys"] = dict.fromkeys(changes["cohort"], "ee" * 32)  # type: ignore[union-attr]
    return RoundBody.model_validate(fields)


@pytest.mark.parametrize(
    "changes",
    [
        {"cohort": ["dev-0", "dev-0", "dev-1"]},  # a duplicate member
        {"threshold": 1},  # a threshold no secure round may use
        {"levels": 2**40, "max_clients": 2**20, "max_weight": 2**40},  # the quantizer overflows
    ],
)
def test_a_coordinators_bad_round_parameters_are_a_decode_error(changes: dict[str, object]) -> None:
    """The participant raised LocalError (our-side misuse) for the coordinator's parameters."""
    sent: list[object] = []
    participant = Participant(
        "dev-0", lambda p: (np.asarray(p) + 1.0, 5), lambda *a: sent.append(a), samples=5
    )
    with pytest.raises(DecodeError, match=r"fl\.round parameters refused"):
        participant.on_round(_round(**changes), [bytes(16)])
    assert not sent
