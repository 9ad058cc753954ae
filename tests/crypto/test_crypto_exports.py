"""Lock the public surface of securemesh.crypto (httpx's test_exported_members idea)."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "securemesh.crypto": {
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
    },
    "securemesh.crypto.aead": {
        "KEY_SIZE",
        "NONCE_SIZE",
        "OVERHEAD",
        "TAG_SIZE",
        "generate_key",
        "open_sealed",
        "seal",
    },
    "securemesh.crypto.kx": {
        "KX_KEY_SIZE",
        "MAX_DERIVED_LENGTH",
        "derive_shared_key",
        "generate_kx_private_key",
        "hkdf_sha256",
        "kx_public_key",
    },
    "securemesh.crypto.boxes": {
        "MAX_WRAPPED_SIZE",
        "SEALED_BOX_OVERHEAD",
        "unwrap_key",
        "wrap_key",
    },
    "securemesh.crypto.keystore": {
        "DEFAULT_PARAMS",
        "HEADER_SIZE",
        "MAGIC",
        "MAX_FILE_SIZE",
        "MAX_SECRET_SIZE",
        "UNSAFE_FAST_PARAMS",
        "KdfParams",
        "kdf_params_of",
        "open_secret",
        "read_secret_file",
        "seal_secret",
        "write_file_atomic",
        "write_secret_file",
    },
    "securemesh.crypto.identity": {"KEY_SIZE", "NodeIdentity", "PublicKeys"},
    "securemesh.crypto.certs": {
        "CERT_DOMAIN",
        "CERT_FORMAT_VERSION",
        "MAX_AUTHORITY_STATE_SIZE",
        "MAX_CERT_SIZE",
        "MAX_REVOCATION_LIST_SIZE",
        "MAX_ROLES",
        "REVOCATION_DOMAIN",
        "Authority",
        "Certificate",
        "DelegatedAuthority",
        "Delegation",
        "RevocationList",
        "SignedCertificate",
        "SignedRevocationList",
        "Tier",
        "TrustStore",
        "validate_name_prefix",
        "validate_node_id",
        "verify_certificate",
        "verify_revocation_list",
    },
    "securemesh.crypto.shamir": {
        "MAX_SECRET_SIZE",
        "MAX_SHARES",
        "PRIME",
        "SHARE_SIZE",
        "Share",
        "combine",
        "interpolate_at_zero",
        "split",
        "split_int",
    },
    "securemesh.crypto.prg": {"MAX_LENGTH", "PRG_DOMAIN", "SEED_SIZE", "expand_mask", "prg_nonce"},
    "securemesh.crypto.z85": {"z85_decode", "z85_encode"},
    "securemesh.crypto.codec": {"U32", "U64", "ByteReader", "str8"},
}


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_public_surface(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPECTED[module_name]
    for name in module.__all__:
        assert hasattr(module, name), name
