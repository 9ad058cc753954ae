"""Task messages: every request/reply body model, and signed task results under mutation.

Already fuzzed elsewhere (not repeated): random JSON as a request's ``args``
(tests/tasks/test_tasks_model.py). Here: schema-shaped, structurally broken
and byte-mutated bodies of every task model the executor, the scheduler or
a device parses; a signed result whose JSON was mutated in transit never
verifies as a different outcome under the executor's certificate.
"""

from __future__ import annotations

import json

from fuzz_support import body_inputs, fuzz, json_mutated, mutated, run
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from securemesh.crypto.certs import Authority, Tier
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import DecodeError, RemoteError
from securemesh.node._service import statement_message
from securemesh.tasks import _model as task_model
from securemesh.tasks import _service as task_service
from securemesh.tasks._service import SERVICE_NAME, verify_result
from securemesh.wire._json import parse_body

NOW = 1_700_000_000
EXECUTOR = NodeIdentity.from_seeds(bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32)
CERT = (
    Authority.create("mesh-root", now=NOW, signer=Ed25519Signer.from_seed(bytes(32)))
    .issue("edge-1", Tier.EDGE, ["tasks"], EXECUTOR.public(), lifetime_s=86_400, now=NOW)
    .unverified_certificate()
)
OUTCOME = task_model.TaskOutcome(
    task_id="ab" * 16,
    task_type="stats.mean",
    executor="edge-1",
    submitter="dev-1",
    request_sha256="cd" * 32,
    ok=True,
    result={"mean": 2.5, "n": [1, 2, {"x": None}]},
    started_ms=1,
    finished_ms=2,
)
_statement = task_model.canonical_json(OUTCOME.model_dump(mode="json"))
SIGNED = task_model.SignedTaskResult(
    outcome=OUTCOME,
    signature=EXECUTOR.signer.sign(statement_message(SERVICE_NAME, _statement)).hex(),
)
SIGNED_JSON = SIGNED.model_dump_json().encode()


def _models(module: object) -> list[type[BaseModel]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == module.__name__  # type: ignore[attr-defined]
        and not value.__name__.startswith("_")
    ]


BODY_MODELS = sorted(_models(task_model) + _models(task_service), key=lambda m: m.__name__)


@fuzz(60)
@given(st.sampled_from(BODY_MODELS).flatmap(lambda m: st.tuples(st.just(m), body_inputs(m))))
def test_task_bodies_parse_strictly(case: tuple[type[BaseModel], bytes]) -> None:
    model, data = case
    value = run(f"tasks.body.{model.__name__}", lambda: parse_body(model, data), DecodeError)
    if value is not None:
        assert parse_body(model, value.model_dump_json().encode()) == value


@fuzz(100)
@given(
    st.one_of(
        mutated(SIGNED_JSON),
        st.sampled_from(["mean", "n", "task_id", "executor", "ok", "signature", "attempts"]).map(
            lambda key: SIGNED_JSON.replace(
                f'"{key}":'.encode(), f'"{key}":"x","{key}":'.encode(), 1
            )
        ),
        st.sampled_from([b'{"outcome":' * 2000, b"[" * 5000]),
        json_mutated(json.loads(SIGNED_JSON)["outcome"]).map(
            lambda o: json.dumps({**json.loads(SIGNED_JSON), "outcome": o}).encode()
        ),
    )
)
def test_a_mutated_signed_result_never_verifies_as_another_outcome(data: bytes) -> None:
    result = run(
        "tasks.SignedTaskResult",
        lambda: parse_body(task_model.SignedTaskResult, data),
        DecodeError,
    )
    if result is None:
        return
    outcome = run("tasks.verify_result", lambda: verify_result(result, CERT), RemoteError)
    if outcome is not None:
        # what verifies is the signed statement (the canonical dump): only JSON
        # spelling, a default spelled out or left out, or the unsigned scheduler
        # hint ``attempts`` may differ from what the executor sent
        assert outcome == OUTCOME
