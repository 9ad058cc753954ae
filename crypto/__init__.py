"""``securemesh.crypto``: identities, certificates, signatures, AEAD, key agreement,
Shamir sharing and the mask PRG.

Pure functions and small classes: no I/O except the explicit key-file helpers,
and every clock reading or random draw can be injected by the caller.
Heavy dependencies (numpy, TenSEAL) are imported lazily by the modules that
need them, so ``import securemesh.crypto`` stays cheap for the device SDK.
"""

from securemesh.crypto.signing import (
    SIGNATURE_SIZE,
    VERIFY_KEY_SIZE,
    Ed25519Signer,
    Signer,
    verify_signature,
)

__all__ = [
    "SIGNATURE_SIZE",
    "VERIFY_KEY_SIZE",
    "Ed25519Signer",
    "Signer",
    "verify_signature",
]
