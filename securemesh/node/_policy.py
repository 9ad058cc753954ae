"""How a service's policy meets the operator's: they combine with AND, never replace.

The operator's ``[policy]`` in ``node.toml`` is the outer bound of what a node
accepts. A service (or an application calling :meth:`MeshNode.on`) may narrow
it for its message types -- e.g. "only the ``scheduler`` role may send
``task.submit``" -- but never widen it: the effective rule for a type is
``operator AND service``. Relaying uses the same combination
(``relay_policy``). The result is computed once, at registration; the
pipeline's per-message authorization (and its cache of positive decisions) is
unchanged, so this costs nothing per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.policy import AllOf, AnyOf, Policy

if TYPE_CHECKING:
    pass

__all__ = ["combine_policies"]


def combine_policies(
    operator: Policy, policy: Policy | None, relay_policy: Policy | None = None
) -> Policy | None:
    """The pipeline policy for a type: ``operator AND (policy OR relay_policy)``.

    None when neither is given (the operator's rule applies as it is).
    """
    service = [p for p in (policy, relay_policy) if p is not None]
    if not service:
        return None
    if len(service) == 1:
        return AllOf(operator, service[0])
    return AllOf(operator, AnyOf(*service))
