"""``securemesh.crypto``: identities, certificates, signatures, AEAD, key agreement,
Shamir sharing and the mask PRG.

Pure functions and small classes: no I/O except the explicit key-file helpers,
and every clock reading or random draw can be injected by the caller.
Heavy dependencies (numpy, TenSEAL) are imported lazily by the modules that
need them, so ``import securemesh.crypto`` stays cheap for the device SDK.

Re-exported here: identities and certificates (the everyday API). Primitives
live in their own modules and are imported from there: ``aead``, ``kx``,
``boxes``, ``keystore``, ``shamir``, ``z85`` and ``prg`` (numpy; never
imported by this package).
"""

from securemesh.crypto.certs import (
    Authority,
    Certificate,
    DelegatedAuthority,
    Delegation,
    RevocationList,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
    verify_certificate,
    verify_revocation_list,
)
from securemesh.crypto.identity import NodeIdentity, PublicKeys
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
    "Authority",
    "Certificate",
    "DelegatedAuthority",
    "Delegation",
    "Ed25519Signer",
    "NodeIdentity",
    "PublicKeys",
    "RevocationList",
    "SignedCertificate",
    "SignedRevocationList",
    "Signer",
    "Tier",
    "TrustStore",
    "verify_certificate",
    "verify_revocation_list",
    "verify_signature",
]
