"""``securemesh.he``: homomorphic encryption (CKKS, TenSEAL) on the mesh (docs/he.md).

Sums, means, statistics and linear scores computed on ciphertexts: a key owner
(``he-keyholder`` role) keeps the secret key and publishes a public context;
contributors encrypt under it; the aggregator or scorer (:class:`HeService`)
computes with the public context only; only the key owner decrypts, and only
results.

* parameters: :class:`Preset` / :data:`PRESETS` / :func:`get_preset` (≥128-bit
  security per the HomomorphicEncryption.org standard, stated error bounds);
* structure checks before TenSEAL: :func:`check_ciphertext`,
  :func:`check_public_context`, :func:`context_has_secret_key`;
* bus bodies: :class:`JobSpec`, :class:`JobInfo`, :class:`Contribution`, ...;
* CKKS (loads TenSEAL): :class:`SecretContext`, :func:`load_public_context`,
  :func:`encrypt_vector`, :func:`load_chunk`, :class:`EncryptedSum`, :func:`score`;
* the library API (loads TenSEAL): :class:`KeyOwner`, :func:`contribute`,
  :func:`encrypted_weighted_sum` (the FL aggregation mode), :func:`score_remote`;
* the service (``services = ["securemesh.he:make_service"]``): :class:`HeService`.

Importing this package does not load TenSEAL; the names marked above load it
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.he._frames import (
    CiphertextShape,
    ForeignCiphertext,
    check_ciphertext,
    check_public_context,
    context_has_secret_key,
)
from securemesh.he._messages import (
    HE_TYPES,
    Accepted,
    Contribution,
    JobInfo,
    JobResult,
    JobSpec,
    ResultRequest,
)
from securemesh.he._params import HE_STANDARD_128, PRESETS, Preset, get_preset

if TYPE_CHECKING:
    from securemesh.he._ckks import (
        EncryptedSum,
        PublicContext,
        SecretContext,
        chunk_lengths,
        encrypt_vector,
        load_chunk,
        load_public_context,
        score,
    )
    from securemesh.he._client import (
        HeJob,
        HeResult,
        KeyOwner,
        Requester,
        contribute,
        encrypted_weighted_sum,
        fetch_job,
        score_remote,
        send_chunks,
    )
    from securemesh.he._service import (
        KEYHOLDER_ROLE,
        HeService,
        LinearModel,
        load_models,
        make_service,
    )

__all__ = [
    "HE_STANDARD_128",
    "HE_TYPES",
    "KEYHOLDER_ROLE",
    "PRESETS",
    "Accepted",
    "CiphertextShape",
    "Contribution",
    "EncryptedSum",
    "ForeignCiphertext",
    "HeJob",
    "HeResult",
    "HeService",
    "JobInfo",
    "JobResult",
    "JobSpec",
    "KeyOwner",
    "LinearModel",
    "Preset",
    "PublicContext",
    "Requester",
    "ResultRequest",
    "SecretContext",
    "check_ciphertext",
    "check_public_context",
    "chunk_lengths",
    "context_has_secret_key",
    "contribute",
    "encrypt_vector",
    "encrypted_weighted_sum",
    "fetch_job",
    "get_preset",
    "load_chunk",
    "load_models",
    "load_public_context",
    "make_service",
    "score",
    "score_remote",
    "send_chunks",
]

_CKKS = {
    "EncryptedSum",
    "PublicContext",
    "SecretContext",
    "chunk_lengths",
    "encrypt_vector",
    "load_chunk",
    "load_public_context",
    "score",
}
_CLIENT = {
    "HeJob",
    "HeResult",
    "KeyOwner",
    "Requester",
    "contribute",
    "encrypted_weighted_sum",
    "fetch_job",
    "score_remote",
    "send_chunks",
}
_SERVICE = {"KEYHOLDER_ROLE", "HeService", "LinearModel", "load_models", "make_service"}


def __getattr__(name: str) -> object:
    if name in _CKKS:
        from securemesh.he import _ckks  # noqa: PLC0415 - lazy: loads TenSEAL

        return getattr(_ckks, name)
    if name in _CLIENT:
        from securemesh.he import _client  # noqa: PLC0415 - lazy: loads TenSEAL

        return getattr(_client, name)
    if name in _SERVICE:
        from securemesh.he import _service  # noqa: PLC0415 - lazy: loads TenSEAL

        return getattr(_service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
