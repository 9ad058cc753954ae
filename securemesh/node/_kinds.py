"""Which origins may log which audit kinds: the cloud's rule table (``[[audit.kinds]]``).

Audit kinds are open, namespaced strings (:mod:`securemesh.audit.events`). The
cloud appends an event only if its origin may log that kind's namespace:

* **built-in namespaces** (``node``, ``cert``, ``message``, ``task``,
  ``object``, ``storage``, ``fl``, ``he``): any enrolled origin, as before
  kinds were opened;
* a namespace named by one or more ``[[audit.kinds]]`` rules: an origin whose
  certificate matches one of them (tier and, if given, one of the roles);
* any other namespace: origins of tier ``edge`` or ``cloud``
  (:data:`DEFAULT_TIERS`) -- services run on infrastructure nodes; a device
  may log a service's namespace only if the operator says so.

The origin's tier and roles come from its certificate in the cloud's
directory (verified when it was learned), never from the event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from securemesh.audit.events import BUILTIN_NAMESPACES, kind_namespace

if TYPE_CHECKING:
    from securemesh.crypto.certs import Certificate
    from securemesh.node._config import KindRuleConfig

__all__ = ["DEFAULT_TIERS", "KindRules"]

DEFAULT_TIERS: Final = frozenset({"edge", "cloud"})


class KindRules:
    """The compiled ``[[audit.kinds]]`` table."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[KindRuleConfig] = ()) -> None:
        self._rules: dict[str, list[tuple[frozenset[str] | None, frozenset[str] | None]]] = {}
        for rule in rules:
            self._rules.setdefault(rule.namespace, []).append(
                (
                    None if rule.tiers is None else frozenset(rule.tiers),
                    None if rule.roles is None else frozenset(rule.roles),
                )
            )

    @staticmethod
    def needs_certificate(kind: str) -> bool:
        """Whether deciding ``kind`` needs the origin's certificate (not a built-in namespace)."""
        return kind_namespace(kind) not in BUILTIN_NAMESPACES

    def allows(self, kind: str, origin: Certificate | None) -> bool:
        """Whether an origin with certificate ``origin`` may log ``kind``.

        ``origin`` None (not known here) allows only the built-in namespaces.
        """
        namespace = kind_namespace(kind)
        if namespace in BUILTIN_NAMESPACES:
            return True
        if origin is None:
            return False
        tier = origin.tier.value
        rules = self._rules.get(namespace)
        if rules is None:
            return tier in DEFAULT_TIERS
        roles = frozenset(origin.roles)
        return any(
            (tiers is None or tier in tiers) and (need is None or bool(need & roles))
            for tiers, need in rules
        )
