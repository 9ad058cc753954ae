"""Authorization policies: which sender (tier, roles) may send which message type.

Theory of operation
-------------------
Authorization is the last check before a handler runs (ARCHITECTURE.md §3:
size → well-formed → certificate → tag/signature → replay → **authorization**
→ dispatch). By then the sender's identity is verified, so a policy only looks
at :class:`PeerInfo` (node id, tier and roles taken from the verified
certificate) and the message type string.

Policies are small composable objects, after sigstore-python's
``verify/policy.py``: each has one method, :meth:`Policy.authorize`, that
returns ``None`` when the message is allowed and raises
:class:`~securemesh.errors.AuthorizationError` otherwise (never a bool).

* :class:`AllowTypes` — the building block: senders of some tiers and/or roles
  may send message types matching some glob patterns (``"storage.*"``,
  ``"task.result"``, ``"fl.round.*"``; ``*`` and ``?`` as in :mod:`fnmatch`,
  case-sensitive).
* :class:`AllOf`, :class:`AnyOf` — combinators. Empty ones are refused at
  construction: an empty ``AllOf`` would allow everything and an empty
  ``AnyOf`` nothing, and either is almost certainly a configuration mistake.
* :class:`DenyAll` — the default: deny by default, allow by rule.
* :class:`UnsafeAllowAll` — **allows every sender to send every message type;
  it disables authorization entirely and must never be used outside tests.**

:class:`PolicyConfig` is the strict pydantic model of the ``[policy]`` table of
a node's TOML; :meth:`PolicyConfig.build` turns it into a policy (``AnyOf`` of
its ``allow`` rules, or ``DenyAll`` when there are none)::

    [[policy.allow]]
    types = ["sensor.reading", "task.submit"]
    tiers = ["end"]

    [[policy.allow]]
    types = ["storage.*", "audit.*"]
    tiers = ["edge", "cloud"]
    roles = ["storage"]
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from securemesh.errors import AuthorizationError, ConfigError

__all__ = [
    "MAX_MESSAGE_TYPE_SIZE",
    "TIERS",
    "AllOf",
    "AllowTypes",
    "AnyOf",
    "DenyAll",
    "PeerInfo",
    "Policy",
    "PolicyConfig",
    "RuleConfig",
    "Tier",
    "UnsafeAllowAll",
    "policy_from_config",
]

Tier = Literal["end", "edge", "cloud"]
TIERS: frozenset[str] = frozenset({"end", "edge", "cloud"})
MAX_MESSAGE_TYPE_SIZE = 128
_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.*?\-]{1,128}")
_ROLE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """The verified facts about a sender that policies may use."""

    node_id: str
    tier: Tier
    roles: frozenset[str] = field(default_factory=frozenset)


@runtime_checkable
class Policy(Protocol):
    """Return ``None`` if ``sender`` may send ``msg_type``; raise AuthorizationError if not."""

    def authorize(self, sender: PeerInfo, msg_type: str) -> None: ...


def _deny(sender: PeerInfo, msg_type: str, why: str) -> AuthorizationError:
    return AuthorizationError(
        f"{sender.node_id} ({sender.tier}) may not send {msg_type[:MAX_MESSAGE_TYPE_SIZE]!r}: {why}"
    )


class DenyAll:
    """Denies everything. The default policy: nothing is allowed unless a rule says so."""

    __slots__ = ()

    def authorize(self, sender: PeerInfo, msg_type: str) -> None:
        raise _deny(sender, msg_type, "no rule allows it (deny by default)")

    def __repr__(self) -> str:
        return "DenyAll()"


class UnsafeAllowAll:
    """**UNSAFE: allows every sender to send every message type.**

    **This turns authorization off. It exists for tests and local experiments
    only; a node configured with it lets any enrolled device call any service.**
    """

    __slots__ = ()

    def authorize(self, sender: PeerInfo, msg_type: str) -> None:
        return None

    def __repr__(self) -> str:
        return "UnsafeAllowAll()"


class AllowTypes:
    """Allow message types matching ``types`` from senders in ``tiers`` with one of ``roles``.

    ``tiers=None`` means any tier; ``roles=None`` means any roles (including
    none); otherwise the sender needs at least one of the listed roles.
    ``types`` must not be empty.
    """

    __slots__ = ("_regex", "roles", "tiers", "types")

    def __init__(
        self,
        *,
        types: Iterable[str],
        tiers: Iterable[str] | None = None,
        roles: Iterable[str] | None = None,
    ) -> None:
        self.types = tuple(types)
        if isinstance(types, str) or not self.types:
            raise ConfigError("AllowTypes needs a non-empty list of message-type patterns")
        for pattern in self.types:
            if not _TYPE_PATTERN.fullmatch(pattern):
                raise ConfigError(f"invalid message-type pattern {pattern!r}")
        self.tiers: frozenset[str] | None = None
        if tiers is not None:
            self.tiers = frozenset(tiers)
            if isinstance(tiers, str) or not self.tiers or not self.tiers <= TIERS:
                raise ConfigError(f"tiers must be a non-empty subset of {sorted(TIERS)}")
        self.roles: frozenset[str] | None = None
        if roles is not None:
            self.roles = frozenset(roles)
            if isinstance(roles, str) or not self.roles:
                raise ConfigError("roles, when given, must be a non-empty list")
            for role in self.roles:
                if not _ROLE.fullmatch(role):
                    raise ConfigError(f"invalid role {role!r}")
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in self.types))

    def authorize(self, sender: PeerInfo, msg_type: str) -> None:
        if len(msg_type) > MAX_MESSAGE_TYPE_SIZE or not self._regex.fullmatch(msg_type):
            raise _deny(sender, msg_type, "message type not allowed by this rule")
        if self.tiers is not None and sender.tier not in self.tiers:
            raise _deny(sender, msg_type, "tier not allowed by this rule")
        if self.roles is not None and self.roles.isdisjoint(sender.roles):
            raise _deny(sender, msg_type, "sender lacks every role this rule requires")

    def __repr__(self) -> str:
        return f"AllowTypes(types={list(self.types)!r}, tiers={self.tiers!r}, roles={self.roles!r})"


class AllOf:
    """Allowed only if every child policy allows. Refuses to be empty."""

    __slots__ = ("children",)

    def __init__(self, *children: Policy) -> None:
        if not children:
            raise ConfigError("AllOf() with no policies would allow everything: refused")
        self.children = children

    def authorize(self, sender: PeerInfo, msg_type: str) -> None:
        for child in self.children:
            child.authorize(sender, msg_type)

    def __repr__(self) -> str:
        return f"AllOf{self.children!r}"


class AnyOf:
    """Allowed if at least one child policy allows. Refuses to be empty."""

    __slots__ = ("children",)

    def __init__(self, *children: Policy) -> None:
        if not children:
            raise ConfigError("AnyOf() with no policies would deny everything: refused")
        self.children = children

    def authorize(self, sender: PeerInfo, msg_type: str) -> None:
        for child in self.children:
            try:
                child.authorize(sender, msg_type)
            except AuthorizationError:
                continue
            return
        raise _deny(sender, msg_type, "no rule allows it")

    def __repr__(self) -> str:
        return f"AnyOf{self.children!r}"


# ------------------------------------------------------------------ config


class RuleConfig(BaseModel):
    """One ``[[policy.allow]]`` rule (strict: no coercion, no unknown keys)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    types: list[str] = Field(min_length=1, max_length=256)
    tiers: list[Tier] | None = Field(default=None, min_length=1)
    roles: list[str] | None = Field(default=None, min_length=1, max_length=256)

    def build(self) -> AllowTypes:
        return AllowTypes(types=self.types, tiers=self.tiers, roles=self.roles)


class PolicyConfig(BaseModel):
    """The ``[policy]`` table: allow rules; everything else is denied."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    default: Literal["deny"] = "deny"
    allow: list[RuleConfig] = Field(default_factory=list, max_length=4096)

    def build(self) -> Policy:
        if not self.allow:
            return DenyAll()
        return AnyOf(*(rule.build() for rule in self.allow))


def policy_from_config(data: Mapping[str, Any]) -> Policy:
    """Validate a ``[policy]`` mapping (e.g. from ``tomllib``) and build the policy.

    Raises :class:`~securemesh.errors.ConfigError` on any invalid input.
    """
    try:
        config = PolicyConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid policy configuration: {exc}") from exc
    return config.build()
