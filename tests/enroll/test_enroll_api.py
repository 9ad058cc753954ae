"""Lock the public surface of securemesh.enroll and keep its import light."""

from __future__ import annotations

import subprocess
import sys

from securemesh import enroll

EXPECTED = {
    "AUTHORITY_CERT_FILE",
    "AUTHORITY_STATE_FILE",
    "load_authority",
    "DEFAULT_TOKEN_DB",
    "IDENTITY_FILE",
    "MAX_TOKEN_LENGTH",
    "NODE_CERT_FILE",
    "NODE_TOML",
    "REVOCATION_FILE",
    "SEQUENCE_FILE",
    "TRUST_FILE",
    "InitResult",
    "TokenIssuer",
    "enroll_data_dir",
    "init_authority",
    "load_token_issuer",
    "read_join_token",
    "read_trust",
    "revoke_node",
    "known_node_ids",
    "require_authority",
    "MSG_CERT_RENEW",
    "MSG_ENROLL_REPLY",
    "MSG_ENROLL_REQUEST",
    "TOKEN_PREFIX",
    "CurveKeyPairBytes",
    "EnrollReply",
    "EnrollRequest",
    "EnrollResult",
    "EnrollmentAudit",
    "EnrollmentServer",
    "JoinToken",
    "RenewReply",
    "RenewRequest",
    "TokenKeySync",
    "TokenRecord",
    "TokenStore",
    "accept_enroll_reply",
    "accept_renew_reply",
    "build_enroll_request",
    "build_renew_request",
    "enroll_over_zmq",
    "open_enroll_request",
    "reply_frames",
    "request_frames",
    "verify_reply",
}


def test_public_names_are_locked_and_resolve() -> None:
    assert set(enroll.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(enroll, name) is not None


def test_import_pulls_in_no_heavy_modules() -> None:
    code = (
        "import sys, securemesh.enroll as e; e.JoinToken; e.build_enroll_request;"
        "bad = [m for m in ('sqlalchemy', 'zmq', 'numpy', 'tenseal', 'securemesh.node',"
        " 'securemesh.cli') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
