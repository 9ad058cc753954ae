"""Lock the public surface of the bus's lower layers (httpx test_exported_members style)."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "securemesh.session": {
        "ACCEPT_SIZE",
        "ENVELOPE_MAC_LABEL",
        "FINISH_SIZE",
        "MAX_HANDSHAKE_MESSAGE_SIZE",
        "MAX_HELLO_SIZE",
        "MAX_NODE_ID_SIZE",
        "PROTOCOL_VERSION",
        "TRANSITIONS",
        "Accept",
        "Event",
        "Finish",
        "Handshake",
        "HandshakeMessage",
        "Hello",
        "MessageType",
        "PeerResolver",
        "Role",
        "Session",
        "SessionLimits",
        "State",
        "decode_handshake_message",
    },
    "securemesh.policy": {
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
    },
    "securemesh.transport": {
        "CURVE_KEY_SIZE",
        "Admission",
        "AllowKeys",
        "Channel",
        "Connection",
        "CurveKeyPair",
        "KeyAuthenticator",
        "Listener",
        "MemoryNetwork",
        "MemoryTransport",
        "RejectHook",
        "SyncRequester",
        "Transport",
        "TransportOptions",
        "TransportStats",
        "ZmqTransport",
        "curve_admission",
        "deny_all_keys",
    },
    "securemesh.crypto.kem": {
        "COMBINER_LABEL",
        "HYBRID_CIPHERTEXT_SIZE",
        "HYBRID_PUBLIC_KEY_SIZE",
        "MLKEM768_CIPHERTEXT_SIZE",
        "MLKEM768_PUBLIC_KEY_SIZE",
        "MLKEM768_SEED_SIZE",
        "SESSION_ID_SIZE",
        "SHARED_SECRET_SIZE",
        "X25519_KEY_SIZE",
        "HybridCiphertext",
        "HybridPrivateKey",
        "HybridPublicKey",
        "SessionKeys",
        "combine",
        "derive_session_keys",
        "encapsulate",
        "next_traffic_key",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_public_surface_is_locked(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPECTED[module_name]
    for name in module.__all__:
        assert getattr(module, name) is not None
