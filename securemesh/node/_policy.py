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

import inspect
from typing import TYPE_CHECKING

from securemesh.policy import AllOf, AnyOf, Policy

if TYPE_CHECKING:
    from securemesh.node._node import Handler
    from securemesh.node._pipeline import VerifiedMessage

__all__ = ["combine_policies", "guard_handler"]


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


def guard_handler(handler: Handler, policy: Policy, msg_type: str) -> Handler:
    """``handler``, run only for senders ``policy`` allows (AuthorizationError otherwise).

    Used when a type has both a local and a relay policy: the pipeline admitted
    the message under either, and a local delivery must satisfy the local one.
    """

    def check(msg: VerifiedMessage) -> None:
        info = msg.peer_info
        if info is not None:  # None: first contact, only the protocol's rules apply
            policy.authorize(info, msg_type)

    if inspect.iscoroutinefunction(handler):

        async def guarded_async(msg: VerifiedMessage) -> object:
            check(msg)
            return await handler(msg)

        return guarded_async

    def guarded(msg: VerifiedMessage) -> object:
        check(msg)
        return handler(msg)

    return guarded
