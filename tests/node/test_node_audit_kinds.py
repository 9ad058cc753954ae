"""The cloud's audit kind rules (``[[audit.kinds]]``): who may log which namespace."""

from __future__ import annotations

import pytest
from node_testlib import Fixture

from securemesh.errors import ConfigError
from securemesh.node import NodeConfig
from securemesh.node._config import KindRuleConfig
from securemesh.node._kinds import KindRules


def _cert(fx: Fixture, node_id: str, tier: str, roles: tuple[str, ...] = ()) -> object:
    return fx.member(node_id, tier, roles).cert.unverified_certificate()


def test_builtin_namespaces_keep_todays_rule_and_others_default_to_infrastructure() -> None:
    fx = Fixture()
    rules = KindRules()
    dev, edge, cloud = (_cert(fx, "d", "end"), _cert(fx, "e", "edge"), _cert(fx, "c", "cloud"))
    for kind in ("message.rejected", "storage.put", "task.finished", "fl.round_started"):
        assert rules.allows(kind, dev)  # type: ignore[arg-type]
        assert rules.allows(kind, None)  # built in: no certificate needed
        assert not rules.needs_certificate(kind)
    assert rules.needs_certificate("counter.tick")
    assert not rules.allows("counter.tick", dev)  # type: ignore[arg-type]
    assert rules.allows("counter.tick", edge)  # type: ignore[arg-type]
    assert rules.allows("counter.tick", cloud)  # type: ignore[arg-type]
    assert not rules.allows("counter.tick", None)  # unknown origin: not decided here


def test_a_rule_names_tiers_and_roles_for_a_namespace() -> None:
    fx = Fixture()
    rules = KindRules(
        [
            KindRuleConfig(namespace="meter", tiers=["end"], roles=["meter"]),
            KindRuleConfig(namespace="meter", tiers=["cloud"]),
        ]
    )
    assert rules.allows("meter.reading", _cert(fx, "m", "end", ("meter",)))  # type: ignore[arg-type]
    assert not rules.allows("meter.reading", _cert(fx, "s", "end", ("sensor",)))  # type: ignore[arg-type]
    assert not rules.allows("meter.reading", _cert(fx, "e", "edge"))  # type: ignore[arg-type]
    assert rules.allows("meter.reading", _cert(fx, "c", "cloud"))  # type: ignore[arg-type]


def test_the_rule_table_is_strict_and_cannot_reopen_a_builtin_namespace() -> None:
    base = {"node_id": "cloud-1", "tier": "cloud"}
    cfg = NodeConfig.model_validate(
        {**base, "audit": {"kinds": [{"namespace": "counter", "tiers": ["edge", "end"]}]}}
    )
    assert cfg.audit.kinds[0].tiers == ["edge", "end"]
    for bad in (
        {"namespace": "message"},  # built in: fixed
        {"namespace": "Counter"},
        {"namespace": "counter.tick"},
        {"namespace": "counter", "tiers": ["fog"]},
        {"namespace": "counter", "tiers": []},
        {"namespace": "counter", "extra": 1},
    ):
        with pytest.raises((ValueError, ConfigError)):
            NodeConfig.model_validate({**base, "audit": {"kinds": [bad]}})
