"""Task wire models (strict, bounded), the registry, and the simulation harness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from securemesh.errors import ConfigError, DecodeError, LocalError
from securemesh.tasks import (
    MSG_SUBMIT,
    ObjectRef,
    TaskIntent,
    TaskRegistry,
    TaskRequest,
    load_task_types,
    new_request,
)
from securemesh.tasks.sim import CONSTRAINED, compare, generate, simulate


def _valid() -> dict[str, object]:
    request, _ = new_request(
        "img.resize", {"w": 3}, intent=TaskIntent(deadline_s=2.0), inline=[b"abc"]
    )
    return json.loads(request.model_dump_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("task_id",), "XYZ"),
        (("task_type",), "../etc"),
        (("work",), 0),
        (("work",), "1"),  # strict: no coercion
        (("intent", "deadline_s"), 0),
        (("intent", "deadline_s"), 1e9),
        (("intent", "privacy"), "cloud-only"),
        (("intent", "energy_weight"), -1),
        (("intent", "budget"), -5),
        (("intent", "extra"), 1),  # unknown keys are refused
        (("inputs",), [{"kind": "inline", "frame": 1, "size": 1, "sha256": "0" * 64}]),
        (("inputs",), [{"kind": "object", "object_id": "0" * 64, "size": -1}]),
        (("inputs",), [{"kind": "inline", "frame": 0, "size": 1, "sha256": "0" * 64}] * 17),
        (("args",), {"blob": "x" * 70_000}),
    ],
)
def test_requests_are_strict_and_bounded(path: tuple[str, ...], value: object) -> None:
    data = _valid()
    target = data
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        TaskRequest.model_validate_json(json.dumps(data))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_the_decoder_accepts_or_refuses_cleanly(value: object) -> None:
    data = _valid()
    data["args"] = {"v": value}
    blob = json.dumps(data)
    try:
        parsed = TaskRequest.model_validate_json(blob)
    except ValidationError:
        return
    assert parsed.args == {"v": value}


def test_new_request_declares_inline_inputs_by_hash() -> None:
    ref = ObjectRef(object_id="cd" * 32, size=10, holders=["edge-a"])
    request, frames = new_request(
        "t.x", intent=TaskIntent(deadline_s=1), inline=[b"a", b"bc"], objects=[ref]
    )
    assert frames == [b"a", b"bc"]
    assert [i.kind for i in request.inputs] == ["inline", "inline", "object"]
    assert request.inputs[1].sha256 == hashlib.sha256(b"bc").hexdigest()  # type: ignore[union-attr]
    assert request.inline_bytes == 3
    assert request.stored_objects == []  # a locality hint only: nothing to fetch
    assert MSG_SUBMIT == "task.submit"


def test_a_stored_object_reference_names_a_storage_object_and_may_pin_the_executor() -> None:
    ref = ObjectRef(object_id="ab" * 16, size=3, holders=["edge-b"], name="in/data.bin")
    request, _ = new_request(
        "t.x", intent=TaskIntent(deadline_s=1), objects=[ref], executor="edge-b"
    )
    assert request.stored_objects == [ref]
    assert request.executor == "edge-b"
    again = TaskRequest.model_validate_json(request.model_dump_json())
    assert again == request
    for bad in (
        {"object_id": "ab" * 20},  # neither a storage id (16 bytes) nor a digest (32)
        {"object_id": "AB" * 16},
        {"name": ""},
        {"name": "a b"},
        {"name": "x" * 256},
    ):
        with pytest.raises(ValidationError):
            ObjectRef.model_validate({**ref.model_dump(), **bad})
    with pytest.raises(ValidationError):
        new_request("t.x", intent=TaskIntent(deadline_s=1), executor="no spaces")


class Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    n: int = Field(ge=0, le=10)


class Out(BaseModel):
    doubled: int


REG = TaskRegistry()


@REG.task("math.double", work=2.0)
def double(args: Args, inputs: Sequence[bytes]) -> Out:
    return Out(doubled=2 * args.n)


def test_the_registry_types_args_and_results() -> None:
    t = REG.get("math.double")
    assert t is not None
    assert t.work == 2.0
    assert t.args_model is Args
    assert t.result_model is Out
    assert REG.names() == ["math.double"]
    assert t.func(t.parse_args({"n": 4}), []) == Out(doubled=8)
    with pytest.raises(DecodeError) as bad:
        t.parse_args({"n": "4"})  # strict
    assert bad.value.public_detail == "n: int_type"
    with pytest.raises(DecodeError):
        t.parse_args({"n": 11})
    with pytest.raises(TypeError):
        t.check_result({"doubled": 1})
    with pytest.raises(ConfigError):
        REG.task("math.double")(double)  # twice
    with pytest.raises(ConfigError):
        TaskRegistry().task("Bad Name")(double)

    def untyped(args, inputs):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ConfigError):
        TaskRegistry().task("x.untyped")(untyped)


def test_task_types_load_from_configuration() -> None:
    loaded = load_task_types([f"{__name__}:REG"])
    assert loaded.names() == ["math.double"]
    with pytest.raises(ConfigError):
        load_task_types(["no_such_module_xyz:REG"])
    with pytest.raises(ConfigError):
        load_task_types([f"{__name__}:double"])


def test_the_simulation_is_deterministic_and_intent_wins() -> None:
    first = [r.row() for r in compare(7, tasks=300)]
    assert first == [r.row() for r in compare(7, tasks=300)]
    by = {r["policy"]: r for r in first}
    assert set(by) >= {"intent", "random", "round-robin", "always-cloud", "always-local"}
    baselines = [r for name, r in by.items() if name not in CONSTRAINED]
    best_miss = min(float(r["miss_rate"]) for r in baselines)  # type: ignore[arg-type]
    assert float(by["intent"]["miss_rate"]) <= best_miss  # type: ignore[arg-type]
    assert float(by["intent"]["energy_j"]) < float(by["random"]["energy_j"])  # type: ignore[arg-type]
    # edge-only and device-only tasks: never on the cloud, whatever the policy
    wl = generate(3, tasks=200)
    from securemesh.tasks import AlwaysTier

    res = simulate(wl, AlwaysTier("cloud", name="always-cloud"))
    private = sum(1 for t in wl.tasks if t.request.intent.privacy != "any")
    assert res.placed.get("cloud", 0) <= len(wl.tasks) - private


def test_the_simulation_table_in_the_docs_is_what_the_code_prints() -> None:
    from docs_support import marked_block

    code = marked_block("tasks.md", "tasks-sim")
    printed: list[object] = []
    exec(compile(code, "docs/tasks.md", "exec"), {"print": printed.append})
    assert len(printed) == 8
    doc = (Path(__file__).resolve().parents[2] / "docs" / "tasks.md").read_text()
    for r in compare(seed=1):
        row = (
            f"| {r.policy} | {r.mean_latency_s:.2f} | {r.p95_latency_s:.2f} | "
            f"{r.miss_rate:.3f} | {r.energy_j:,.0f} | {r.carbon_g:.2f} | {r.cost:.0f} |"
        )
        assert row in doc, row


def test_the_task_type_in_the_docs_registers_and_runs() -> None:
    from docs_support import marked_block

    scope: dict[str, object] = {"__name__": "tasks_doc"}
    exec(compile(marked_block("tasks.md", "tasks-type"), "docs/tasks.md", "exec"), scope)
    registry = scope["registry"]
    assert isinstance(registry, TaskRegistry)
    resize = registry.get("image.resize")
    assert resize is not None
    assert resize.func(resize.parse_args({"width": 5}), [b"abc"]).size == 3  # type: ignore[attr-defined]
    with pytest.raises(DecodeError):
        resize.parse_args({"width": 0})


def test_the_exhaustive_optimum_bounds_every_policy() -> None:
    from securemesh.tasks.sim import (
        baseline_policies,
        objective,
        optimality_gap,
        optimum,
        policy_runs,
    )

    for seed in (2, 5):
        wl = generate(seed, devices=2, edges=2, clouds=1, tasks=4)
        best = optimum(wl)
        scores = {p.name: objective(wl, policy_runs(wl, p)) for p in baseline_policies(seed)}
        assert all(score >= best - 1e-9 for score in scores.values()), (best, scores)
        assert best < max(scores.values())  # the search finds better than the worst baseline
    assert 0.0 <= optimality_gap([2], tasks=4) < 1.0
    with pytest.raises(LocalError):
        optimum(generate(1, tasks=40))  # far too many assignments to search


def test_the_standard_workload_carries_inputs_and_the_light_one_none(tmp_path: Path) -> None:
    from securemesh.tasks.sim import chart

    light = generate(4, tasks=60, rate=10.0, data=0.0)
    standard = generate(4, tasks=60)
    assert all(t.request.inline_bytes == 0 for t in light.tasks)
    interactive = [t for t in standard.tasks if t.request.inline_bytes]
    assert 10 < len(interactive) < 50  # about half
    assert all(
        t.request.intent.deadline_s <= 1.0
        for t in interactive
        if t.request.intent.privacy != "device-only"
    )
    # the same arrivals, origins and privacy: the inputs come from a stream of their own
    assert [(t.origin, t.request.intent.privacy) for t in light.tasks] == [
        (t.origin, t.request.intent.privacy) for t in standard.tasks
    ]
    with pytest.raises(LocalError):
        generate(1, rate=0.0)
    png = tmp_path / "sim.png"
    chart(compare(4, tasks=60), str(png), title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_from_the_command_line_writes_the_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from securemesh.cli import main

    png = tmp_path / "c.png"
    assert main(["task", "simulate", "--tasks", "40", "--chart", str(png), "-o", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["policy"] for r in rows][:2] == ["intent", "latency-first"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    for bad in (["--rate", "0"], ["--data", "2"], ["--chart", str(tmp_path / "no" / "c.png")]):
        assert main(["task", "simulate", "--tasks", "20", *bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        assert err.count("\n") == 1, err
