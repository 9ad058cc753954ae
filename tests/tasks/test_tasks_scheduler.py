"""The pure scheduler: hard constraints (hypothesis invariants), the cost model, policies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import LocalError
from securemesh.messages import NodeReport
from securemesh.tasks import (
    AlwaysTier,
    Candidate,
    CandidateTable,
    CarbonAware,
    CostAware,
    EnergyAware,
    IntentAware,
    LatencyFirst,
    Locality,
    NoPlacement,
    ObjectRef,
    RandomPolicy,
    RoundRobin,
    Scheduler,
    TaskIntent,
    Weighted,
    candidate_from_report,
    estimate,
    new_request,
)

TYPES = ("a.x", "a.y", "b.z")

candidates_st = st.lists(
    st.builds(
        Candidate,
        node_id=st.from_regex(r"n[0-9]{1,3}", fullmatch=True),
        tier=st.sampled_from(("end", "edge", "cloud")),
        task_types=st.frozensets(st.sampled_from(TYPES), max_size=3),
        capacity=st.integers(1, 8),
        inflight=st.integers(0, 20),
        queue_length=st.integers(0, 20),
        speed=st.floats(0.5, 1e4),
        rtt_ms=st.floats(0, 500),
        energy_per_unit=st.floats(0, 10),
        carbon_intensity=st.floats(0, 800),
        price=st.floats(0, 1),
        bandwidth_mbps=st.floats(0.1, 1e4),
        wait_s=st.none() | st.floats(0, 50),
    ),
    max_size=12,
    unique_by=lambda c: c.node_id,
)
intent_st = st.builds(
    TaskIntent,
    deadline_s=st.floats(0.01, 100),
    budget=st.none() | st.floats(0, 50),
    privacy=st.sampled_from(("any", "edge-only", "device-only")),
    time_weight=st.floats(0, 10),
    energy_weight=st.floats(0, 10),
    carbon_weight=st.floats(0, 10),
    cost_weight=st.floats(0, 10),
)
policies = [
    IntentAware(),
    LatencyFirst(),
    EnergyAware(),
    CarbonAware(),
    CostAware(),
    Locality(),
    RoundRobin(),
    RandomPolicy(),
    AlwaysTier("cloud"),
]


@settings(max_examples=300, deadline=None)
@given(
    cands=candidates_st,
    intent=intent_st,
    task_type=st.sampled_from(TYPES),
    work=st.floats(0.01, 1e4),
    policy=st.sampled_from(policies),
    exclude=st.frozensets(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), max_size=3),
)
def test_placement_never_breaks_a_hard_constraint(  # noqa: PLR0917
    cands: list[Candidate],
    intent: TaskIntent,
    task_type: str,
    work: float,
    policy: LatencyFirst,
    exclude: frozenset[str],
) -> None:
    request, _ = new_request(task_type, intent=intent, work=work)
    try:
        ranked = Scheduler(policy).rank(request, cands, exclude=exclude)
    except NoPlacement as exc:
        refused = exc.reasons
        ranked = []
    else:
        refused = {}
    if not ranked:  # every candidate was ruled out, each for one counted reason
        assert sum(refused.values()) == max(1, len(cands))
        return
    for est in ranked:
        c = est.candidate
        assert task_type in c.task_types  # a node lacking the type is never chosen
        if intent.privacy == "edge-only":
            assert c.tier != "cloud"  # never on the cloud
        if intent.privacy == "device-only":
            assert c.tier == "end"
        assert c.node_id not in exclude
        if intent.budget is not None:
            assert est.cost <= intent.budget  # never over the budget
        assert est.time_s <= intent.deadline_s
    ids = [e.candidate.node_id for e in ranked]
    assert len(ids) == len(set(ids))


def test_refusal_reasons_name_the_constraint_and_deadline_gets_its_own_code() -> None:
    req, _ = new_request("a.x", intent=TaskIntent(deadline_s=0.1), work=1000)
    slow = Candidate("e1", "edge", frozenset({"a.x"}), speed=10)
    with pytest.raises(NoPlacement) as exc:
        Scheduler().rank(req, [slow])
    assert exc.value.reason == "deadline"
    assert exc.value.public_detail == "deadline=1"
    cloud = Candidate("c1", "cloud", frozenset({"a.x"}))
    req2, _ = new_request("a.x", intent=TaskIntent(deadline_s=9, privacy="edge-only"))
    with pytest.raises(NoPlacement) as exc2:
        Scheduler().rank(req2, [cloud, Candidate("e2", "edge", frozenset({"b.z"}))])
    assert exc2.value.reason == "no_placement"
    assert exc2.value.reasons == {"privacy": 1, "no_type": 1}
    with pytest.raises(NoPlacement) as exc3:
        Scheduler().rank(req2, [])
    assert exc3.value.reasons == {"no_candidates": 1}


def test_the_cost_model_adds_transfer_queue_and_compute() -> None:
    blob = b"x" * 1_000_000
    req, _ = new_request("a.x", intent=TaskIntent(deadline_s=60), work=50, inline=[blob])
    c = Candidate(
        "e1", "edge", frozenset({"a.x"}), capacity=2, inflight=2, queue_length=1, speed=100,
        rtt_ms=20, bandwidth_mbps=80, energy_per_unit=2, carbon_intensity=360, price=0.1,
    )  # fmt: skip
    est = estimate(req, c)
    assert est.transfer_s == pytest.approx(0.02 + 8e6 / 80e6)
    assert est.compute_s == pytest.approx(0.5)
    # 3 ahead on 2 slots: 2 of them must finish first, like this one: 2 * 50 / (100 * 2)
    assert est.queue_s == pytest.approx(0.5)
    assert est.energy_j == pytest.approx(100)
    assert est.carbon_g == pytest.approx(100 / 3.6e6 * 360)
    assert est.cost == pytest.approx(5)
    assert est.moved_mb == pytest.approx(1.0)
    # at the submitter nothing moves and there is no link
    local = estimate(req, c, origin="e1")
    assert local.transfer_s == 0
    assert local.moved_mb == 0


def test_locality_prefers_the_holder_of_an_objects_shards() -> None:
    ref = ObjectRef(object_id="ab" * 32, size=50_000_000, holders=["e2"])
    req, _ = new_request(
        "a.x", intent=TaskIntent(deadline_s=60, locality_weight=1.0), work=1, objects=[ref]
    )
    near = Candidate("e2", "edge", frozenset({"a.x"}), speed=50)
    far = Candidate("e1", "edge", frozenset({"a.x"}), speed=500)
    ranked = Scheduler().rank(req, [far, near])
    assert ranked[0].candidate.node_id == "e2"
    assert ranked[0].moved_mb == 0
    # a storage layer's hook overrides the hint
    hooked = Scheduler(locality=lambda r: {"e1": 1.0}).rank(req, [far, near])
    assert hooked[0].candidate.node_id == "e1"


def test_policies_pick_by_their_objective_and_compose() -> None:
    req, _ = new_request("a.x", intent=TaskIntent(deadline_s=60), work=100)
    fast_dirty = Candidate(
        "c1", "cloud", frozenset({"a.x"}), speed=1000, energy_per_unit=1, carbon_intensity=700
    )
    slow_green = Candidate(
        "e1", "edge", frozenset({"a.x"}), speed=100, energy_per_unit=3, carbon_intensity=10
    )
    pick = {
        p.name: Scheduler(p).rank(req, [fast_dirty, slow_green])[0].candidate.node_id
        for p in (LatencyFirst(), EnergyAware(), CarbonAware(), AlwaysTier("edge"))
    }
    assert pick == {
        "latency-first": "c1",
        "energy-aware": "c1",
        "carbon-aware": "e1",
        "always-tier": "e1",
    }
    green_req, _ = new_request(
        "a.x", intent=TaskIntent(deadline_s=60, carbon_weight=100.0), work=100
    )
    assert Scheduler().rank(green_req, [fast_dirty, slow_green])[0].candidate.node_id == "e1"
    mix = Weighted(((1.0, LatencyFirst()), (100.0, CarbonAware())))
    assert Scheduler(mix).rank(req, [fast_dirty, slow_green])[0].candidate.node_id == "e1"
    with pytest.raises(LocalError):
        Weighted(())
    with pytest.raises(LocalError):
        Weighted(((math.nan, LatencyFirst()),))


def test_round_robin_takes_turns() -> None:
    req, _ = new_request("a.x", intent=TaskIntent(deadline_s=60))
    cands = [Candidate(f"e{i}", "edge", frozenset({"a.x"})) for i in range(3)]
    sched = Scheduler(RoundRobin())
    firsts = [sched.rank(req, cands)[0].candidate.node_id for _ in range(6)]
    assert sorted(firsts[:3]) == ["e0", "e1", "e2"]
    assert firsts[:3] == firsts[3:]


def test_a_candidate_from_a_report_reads_its_labels() -> None:
    report = NodeReport(
        load_1m=0.1, load_5m=0.1, load_15m=0.1, queue_length=3, capacity=4, inflight=1,
        rtt_ms=12.5, uptime_s=10.0, energy_per_unit=0.7, carbon_intensity=90.0,
        failure_domain="rack-1", labels={"speed": "250", "price": "0.02", "bandwidth_mbps": "x"},
        services=["tasks"],
    )  # fmt: skip
    c = candidate_from_report("e1", "edge", report, ["a.x"])
    assert (c.speed, c.price, c.bandwidth_mbps) == (250.0, 0.02, 100.0)  # a bad label: default
    assert (c.capacity, c.inflight, c.queue_length, c.rtt_ms) == (4, 1, 3, 12.5)
    assert c.failure_domain == "rack-1"
    assert c.task_types == frozenset({"a.x"})
    with pytest.raises(LocalError):
        Candidate("x", "moon", frozenset())


@settings(max_examples=300, deadline=None)
@given(
    cands=candidates_st,
    intent=intent_st,
    task_type=st.sampled_from(TYPES),
    work=st.floats(0.01, 1e4),
    exclude=st.frozensets(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), max_size=3),
    inline=st.lists(st.binary(max_size=64), max_size=2),
    holders=st.lists(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), max_size=3),
    locality=st.floats(0, 10),
    origin=st.none() | st.from_regex(r"n[0-9]{1,3}", fullmatch=True),
)
def test_the_vectorized_table_makes_the_schedulers_decision(  # noqa: PLR0917
    cands: list[Candidate],
    intent: TaskIntent,
    task_type: str,
    work: float,
    exclude: frozenset[str],
    inline: list[bytes],
    holders: list[str],
    locality: float,
    origin: str | None,
) -> None:
    intent = intent.model_copy(update={"locality_weight": locality})
    ref = ObjectRef(object_id="ef" * 32, size=5_000_000, holders=holders)
    request, _ = new_request(
        task_type, intent=intent, work=work, inline=inline, objects=[ref] if holders else []
    )
    try:
        expected = Scheduler().rank(request, cands, exclude=exclude, origin=origin)[0]
    except NoPlacement as exc:
        reasons = exc.reasons
    else:
        reasons = None
    if reasons is not None:
        with pytest.raises(NoPlacement) as again:
            CandidateTable(cands).best(request, exclude=exclude, origin=origin)
        assert again.value.reasons == reasons
        return
    got = CandidateTable(cands).best(request, exclude=exclude, origin=origin)
    assert got.node_id == expected.candidate.node_id


def test_the_table_breaks_ties_and_meets_the_deadline_exactly_as_the_scheduler() -> None:
    # 300 identical nodes but for their ids, and a deadline exactly at their predicted
    # time: the product's rounding must neither refuse them nor change the tie-break
    cands = [
        Candidate(f"n{i:03d}", "edge", frozenset({"a.x"}), speed=3.0, rtt_ms=7.0, price=0.1)
        for i in reversed(range(300))
    ]
    ref = ObjectRef(object_id="ef" * 32, size=3_333_333, holders=["n250"])
    for objects, origin in (([], None), ([ref], None), ([ref], "n250"), ([], "n299")):
        request, _ = new_request(
            "a.x", intent=TaskIntent(deadline_s=60, cost_weight=0.3), work=0.7, objects=objects
        )
        expected = Scheduler().rank(request, cands, origin=origin)[0]
        tight = request.model_copy(
            update={"intent": request.intent.model_copy(update={"deadline_s": expected.time_s})}
        )
        for req in (request, tight):
            got = CandidateTable(cands).best(req, origin=origin)
            assert got.node_id == Scheduler().rank(req, cands, origin=origin)[0].candidate.node_id


def test_the_adaptive_policy_learns_a_node_slower_than_it_reports() -> None:
    from securemesh.tasks import Adaptive

    req, _ = new_request("a.x", intent=TaskIntent(deadline_s=60), work=10.0)
    # "liar" reports twice the speed of "honest" but really runs 4x slower than it says
    cands = [
        Candidate("honest", "edge", frozenset({"a.x"}), speed=50.0),
        Candidate("liar", "edge", frozenset({"a.x"}), speed=100.0),
    ]
    policy = Adaptive()
    sched = Scheduler(policy)
    assert sched.rank(req, cands)[0].candidate.node_id == "liar"  # believed at first
    picks = []
    for _ in range(30):
        best = sched.rank(req, cands)[0]
        real = best.compute_s * (4.0 if best.candidate.node_id == "liar" else 1.0)
        policy.observe(best, real)
        picks.append(best.candidate.node_id)
    assert picks[-10:] == ["honest"] * 10  # learned
    assert policy.observed == 30
    liar = next(e for e in sched.rank(req, cands) if e.candidate.node_id == "liar")
    assert policy.predicted_time(liar) > liar.time_s * 1.5  # no longer believed
    policy.observe(best, math.nan)  # ignored
    assert policy.observed == 30
    with pytest.raises(LocalError):
        Adaptive(alpha=-1.0)


def test_intent_default_prefers_less_energy_among_deadline_meeting_nodes() -> None:
    """Issue 12: a time-only intent pays for a near-tie in time with energy (ENERGY_FLOOR),
    the deadline stays hard, and a carbon-weighted request keeps its own weights."""
    fast_hungry = Candidate(
        "e1", "edge", frozenset({"a.x"}), speed=60, energy_per_unit=1.2, carbon_intensity=10
    )
    slower_frugal = Candidate(
        "c1",
        "cloud",
        frozenset({"a.x"}),
        speed=50,
        rtt_ms=60,
        energy_per_unit=0.4,
        carbon_intensity=700,
    )
    cands = [fast_hungry, slower_frugal]
    roomy, _ = new_request("a.x", intent=TaskIntent(deadline_s=2.0), work=20)
    tight, _ = new_request("a.x", intent=TaskIntent(deadline_s=0.40), work=20)
    green, _ = new_request("a.x", intent=TaskIntent(deadline_s=2.0, carbon_weight=100.0), work=20)
    expected = {id(roomy): "c1", id(tight): "e1", id(green): "e1"}
    for req in (roomy, tight, green):
        assert Scheduler().rank(req, cands)[0].candidate.node_id == expected[id(req)]
        assert CandidateTable(cands).best(req).node_id == expected[id(req)]
    # without the floor, the time-only request takes the faster, hungrier node
    assert Scheduler(IntentAware(energy_floor=0.0)).rank(roomy, cands)[0].candidate.node_id == "e1"
    with pytest.raises(LocalError):
        IntentAware(energy_floor=math.nan)
