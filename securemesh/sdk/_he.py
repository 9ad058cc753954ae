"""Homomorphic encryption from a device: contribute to an HE job, or own one (docs/he.md).

::

    with Device.connect(data_dir, passphrase=pw) as dev:
        he_contribute(dev, "edge-1", job_id, readings)          # encrypts, sends

Imported lazily by :mod:`securemesh.sdk`, and it imports TenSEAL (through
:mod:`securemesh.he`) only when a function here is called: a device that
never encrypts never loads it. The coroutines of :mod:`securemesh.he` run on
a private event loop (``asyncio.run``) over the device's thread-safe requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from securemesh.sdk._storage import DeviceRequester

if TYPE_CHECKING:
    from securemesh.he import Accepted, KeyOwner
    from securemesh.sdk._device import Device

__all__ = ["he_contribute", "he_key_owner"]


def he_contribute(
    device: Device,
    aggregator: str,
    job_id: str,
    values: Sequence[float],
    *,
    weight: float = 1.0,
    timeout: float = 60.0,
) -> Accepted:
    """Encrypt ``values`` under job ``job_id``'s public context and send them (blocking).

    Raises :class:`~securemesh.errors.RemoteCallError` (``code`` says why) if
    the aggregator refuses the contribution.
    """
    from securemesh.he import contribute  # noqa: PLC0415 - lazy: loads TenSEAL

    return asyncio.run(
        contribute(
            DeviceRequester(device), aggregator, job_id, values, weight=weight, timeout=timeout
        )
    )


def he_key_owner(device: Device, aggregator: str) -> KeyOwner:
    """A :class:`securemesh.he.KeyOwner` acting as ``device`` (which needs ``he-keyholder``)."""
    from securemesh.he import KeyOwner  # noqa: PLC0415 - lazy: loads TenSEAL

    return KeyOwner(DeviceRequester(device), aggregator=aggregator)
