"""Authorization policies (securemesh.policy)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.errors import AuthorizationError, ConfigError
from securemesh.policy import (
    AllOf,
    AllowTypes,
    AnyOf,
    DenyAll,
    PeerInfo,
    Policy,
    PolicyConfig,
    UnsafeAllowAll,
    policy_from_config,
)

SENSOR = PeerInfo("dev-1", "end", frozenset({"sensor"}))
CAMERA = PeerInfo("dev-2", "end", frozenset({"camera"}))
EDGE = PeerInfo("edge-1", "edge", frozenset({"storage", "scheduler"}))
CLOUD = PeerInfo("cloud-1", "cloud", frozenset())


def allowed(policy: Policy, peer: PeerInfo, msg_type: str) -> bool:
    try:
        policy.authorize(peer, msg_type)
    except AuthorizationError:
        return False
    return True


def test_deny_all_denies_everything() -> None:
    with pytest.raises(AuthorizationError) as info:
        DenyAll().authorize(CLOUD, "audit.append")
    assert info.value.reason == "unauthorized"
    assert isinstance(info.value, PermissionError)


def test_unsafe_allow_all_is_named_and_allows() -> None:
    assert allowed(UnsafeAllowAll(), SENSOR, "anything.at.all")
    assert "UNSAFE" in (UnsafeAllowAll.__doc__ or "")


def test_allow_types_globs_tiers_and_roles() -> None:
    rule = AllowTypes(types=["storage.*", "audit.append"], tiers=["edge", "cloud"])
    assert allowed(rule, EDGE, "storage.put")
    assert allowed(rule, EDGE, "storage.shard.get")
    assert allowed(rule, CLOUD, "audit.append")
    assert not allowed(rule, EDGE, "audit.append.x")
    assert not allowed(rule, EDGE, "storagex")
    assert not allowed(rule, SENSOR, "storage.put")  # tier
    by_role = AllowTypes(types=["sensor.reading"], roles=["sensor", "gateway"])
    assert allowed(by_role, SENSOR, "sensor.reading")
    assert not allowed(by_role, CAMERA, "sensor.reading")
    assert not allowed(by_role, SENSOR, "Sensor.reading")  # case-sensitive
    assert not allowed(by_role, SENSOR, "sensor.reading" + "x" * 200)


def test_combinators() -> None:
    edge_only = AllowTypes(types=["*"], tiers=["edge"])
    storage_types = AllowTypes(types=["storage.*"])
    both = AllOf(edge_only, storage_types)
    assert allowed(both, EDGE, "storage.put")
    assert not allowed(both, EDGE, "task.submit")
    assert not allowed(both, CLOUD, "storage.put")
    either = AnyOf(AllowTypes(types=["sensor.*"], tiers=["end"]), both)
    assert allowed(either, SENSOR, "sensor.reading")
    assert allowed(either, EDGE, "storage.get")
    assert not allowed(either, CLOUD, "sensor.reading")


def test_empty_combinators_and_bad_rules_are_refused() -> None:
    with pytest.raises(ConfigError):
        AllOf()
    with pytest.raises(ConfigError):
        AnyOf()
    with pytest.raises(ConfigError):
        AllowTypes(types=[])
    with pytest.raises(ConfigError):
        AllowTypes(types="storage.*")  # a bare string is a likely mistake
    with pytest.raises(ConfigError):
        AllowTypes(types=["storage put"])
    with pytest.raises(ConfigError):
        AllowTypes(types=["x"], tiers=["fog"])
    with pytest.raises(ConfigError):
        AllowTypes(types=["x"], tiers=[])
    with pytest.raises(ConfigError):
        AllowTypes(types=["x"], roles=[])


CONFIG = """
[policy]
default = "deny"

[[policy.allow]]
types = ["sensor.reading", "task.submit"]
tiers = ["end"]

[[policy.allow]]
types = ["storage.*", "audit.*"]
tiers = ["edge", "cloud"]
roles = ["storage"]
"""


def test_policy_from_toml() -> None:
    policy = policy_from_config(tomllib.loads(CONFIG)["policy"])
    assert allowed(policy, SENSOR, "task.submit")
    assert allowed(policy, EDGE, "storage.put")
    assert not allowed(policy, CLOUD, "storage.put")  # lacks the storage role
    assert not allowed(policy, SENSOR, "storage.put")
    assert isinstance(policy_from_config({}), DenyAll)


@pytest.mark.parametrize(
    "data",
    [
        {"default": "allow"},
        {"allow": [{"types": []}]},
        {"allow": [{"types": ["x"], "tiers": ["fog"]}]},
        {"allow": [{"types": ["x"], "extra": 1}]},
        {"allow": [{"types": "x"}]},
        {"allow": [{"types": [1]}]},
        {"allow": [{"types": ["bad type"]}]},
        {"allow": {"types": ["x"]}},
        {"surprise": True},
    ],
)
def test_invalid_policy_config_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        policy_from_config(data)


def test_config_model_is_strict() -> None:
    assert PolicyConfig.model_config.get("strict") is True


@given(st.text(max_size=40), st.sampled_from([SENSOR, CAMERA, EDGE, CLOUD]))
def test_deny_all_and_rules_never_crash_on_odd_types(msg_type: str, peer: PeerInfo) -> None:
    policy = AnyOf(AllowTypes(types=["a.*"]), AllowTypes(types=["b?"], tiers=["end"]))
    expected = msg_type.startswith("a.") or (
        peer.tier == "end" and len(msg_type) == 2 and msg_type[0] == "b"
    )
    assert allowed(policy, peer, msg_type) == expected
