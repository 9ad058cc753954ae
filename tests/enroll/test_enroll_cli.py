"""The CLI end to end on temp dirs, enrolling over real ZeroMQ (loopback, CURVE + ZAP).

The enrolling servers here are :class:`enroll_support.EnrollEndpoint`: the
library's EnrollmentServer behind a real ZmqTransport listener, fed from the
same data dirs the CLI wrote.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
from enroll_support import running_endpoint

from securemesh.cli import main
from securemesh.crypto import (
    DelegatedAuthority,
    NodeIdentity,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    keystore,
    verify_certificate,
)
from securemesh.enroll import EnrollmentServer, JoinToken, load_authority
from securemesh.enroll._state import read_trust
from securemesh.enroll._store import TokenStore
from securemesh.errors import ConfigError

PASS = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    import securemesh.cli._mesh as mesh_cli

    monkeypatch.setattr(mesh_cli, "_KDF_PARAMS", keystore.UNSAFE_FAST_PARAMS)
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", PASS)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _cloud_server(cloud: Path) -> tuple[EnrollmentServer, TokenStore, NodeIdentity]:
    # Argon2id at the default cost only for these two loads (the files were written fast).
    authority = load_authority(cloud / "authority", PASS)
    identity = NodeIdentity.load(cloud / "identity.key", PASS)
    store = TokenStore.in_dir(cloud)
    server = EnrollmentServer(
        authority,
        store,
        server_certificate=(cloud / "node.cert").read_bytes(),
        revocation_list=lambda: SignedRevocationList.from_bytes(
            (cloud / "revocation.list").read_bytes()
        ),
    )
    return server, store, identity


def _edge_server(edge: Path) -> tuple[EnrollmentServer, TokenStore, NodeIdentity]:
    identity = NodeIdentity.load(edge / "identity.key", PASS)
    delegated = DelegatedAuthority((edge / "delegation.cert").read_bytes(), identity.signer)
    store = TokenStore.in_dir(edge)
    server = EnrollmentServer(
        delegated,
        store,
        server_certificate=(edge / "node.cert").read_bytes(),
        trust=read_trust(edge),
        revocation_list=lambda: SignedRevocationList.from_bytes(
            (edge / "revocation.list").read_bytes()
        ),
    )
    return server, store, identity


@pytest.fixture
def cloud(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    data = tmp_path / "cloud"
    code, out, err = _run(
        capsys, "init", "--data-dir", str(data), "--authority-id", "acme", "--cloud-node-id", "c1"
    )
    assert code == 0, err
    assert out == ""
    return data


def test_init_writes_a_loadable_cloud(cloud: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("identity.key", "node.cert", "trust.json", "revocation.list", "node.toml"):
        assert (cloud / name).is_file(), name
        assert (cloud / name).stat().st_mode & 0o077 == 0
    assert (cloud / "authority" / "authority.key").is_file()
    trust = read_trust(cloud)
    cert = verify_certificate((cloud / "node.cert").read_bytes(), trust=trust, now=_now())
    assert (cert.node_id, cert.tier, cert.issuer) == ("c1", Tier.CLOUD, "acme")
    identity = NodeIdentity.load(cloud / "identity.key", PASS)
    assert cert.public_keys() == identity.public()
    from securemesh.node._config import load_config

    config = load_config(cloud / "node.toml")
    assert (config.node_id, config.tier, config.listen) == ("c1", "cloud", "tcp://127.0.0.1:7100")
    # Refuses to clobber an existing authority.
    code, _, err = _run(capsys, "init", "--data-dir", str(cloud))
    assert code == 1
    assert "already initialised" in err


def _now() -> float:
    import time

    return time.time()


def test_token_create_prints_only_the_token(
    cloud: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys, "token", "create", "--data-dir", str(cloud), "--tier", "end", "--roles",
        "sensor,camera", "--ttl", "15m",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    token = JoinToken.decode(lines[0])
    assert (token.tier, token.roles, token.authority_id) == (Tier.END, ("camera", "sensor"), "acme")
    assert token.endpoint == "tcp://127.0.0.1:7100"  # from node.toml
    assert token.server_key == NodeIdentity.load(cloud / "identity.key", PASS).curve_public
    assert 14 * 60 <= token.expires_at - _now() <= 15 * 60
    assert token.secret.hex() not in err
    code, out, _ = _run(capsys, "token", "list", "--data-dir", str(cloud), "--format", "jsonl")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(t["token_id"], t["state"]) for t in listed] == [(token.token_id.hex(), "usable")]
    assert token.secret.hex() not in out


def test_token_create_errors(
    cloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "token", "create", "--data-dir", str(tmp_path), "--tier", "end")
    assert code == 1
    assert "error:" in err
    code, _, err = _run(
        capsys, "token", "create", "--data-dir", str(cloud), "--tier", "end", "--delegate"
    )
    assert code == 1
    assert "--delegate" in err
    code, _, err = _run(
        capsys, "token", "create", "--data-dir", str(cloud), "--tier", "end", "--ttl", "soon"
    )
    assert code == 1
    assert "duration" in err


def test_enroll_edge_then_device_through_the_edge_while_cloud_is_down(
    cloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge, device, intruder = tmp_path / "edge", tmp_path / "device", tmp_path / "intruder"
    with ExitStack() as stack:
        server, store, identity = _cloud_server(cloud)
        stack.callback(store.close)
        endpoint = stack.enter_context(running_endpoint(server, store, identity, "c1"))
        code, out, err = _run(
            capsys, "token", "create", "--data-dir", str(cloud), "--tier", "edge", "--roles",
            "gateway", "--endpoint", endpoint.address, "--delegate",
        )  # fmt: skip
        assert code == 0, err
        token = out.strip()
        code, out, err = _run(
            capsys, "enroll", "--token", token, "--data-dir", str(edge), "--node-id", "edge-1",
            "--listen", "tcp://127.0.0.1:7101",
        )  # fmt: skip
        assert code == 0, err
        assert out == ""
        assert "delegated authority" in err
        # The same token never works twice.
        code, _, err = _run(
            capsys, "enroll", "--token", token, "--data-dir", str(intruder), "--node-id", "edge-2",
            "--timeout", "1",
        )  # fmt: skip
        assert code == 1
        assert "refused" in err or "no enrollment reply" in err
        assert not (intruder / "node.cert").exists()
    # --- the cloud endpoint is gone now ---
    trust = read_trust(edge)
    edge_cert = verify_certificate((edge / "node.cert").read_bytes(), trust=trust, now=_now())
    assert (edge_cert.node_id, edge_cert.tier, edge_cert.roles) == (
        "edge-1",
        Tier.EDGE,
        ("gateway",),
    )
    from securemesh.node._config import load_config

    config = load_config(edge / "node.toml")
    assert config.parent is not None
    assert config.listen == "tcp://127.0.0.1:7101"
    # The edge may create only `end` tokens.
    code, _, err = _run(capsys, "token", "create", "--data-dir", str(edge), "--tier", "edge")
    assert code == 1
    assert "may only enroll: end" in err
    with ExitStack() as stack:
        server, store, identity = _edge_server(edge)
        stack.callback(store.close)
        endpoint = stack.enter_context(running_endpoint(server, store, identity, "edge-1"))
        code, out, err = _run(
            capsys, "token", "create", "--data-dir", str(edge), "--tier", "end", "--roles",
            "sensor", "--endpoint", endpoint.address,
        )  # fmt: skip
        assert code == 0, err
        assert "the node id must start with 'edge-1.'" in err
        token_path = tmp_path / "token.txt"
        token_path.write_text(out)
        # An id outside the edge's namespace is refused before any connection.
        code, _, err = _run(
            capsys, "enroll", "--token-file", str(token_path), "--data-dir", str(device),
            "--node-id", "dev-1",
        )  # fmt: skip
        assert code == 1
        assert "choose an id starting with 'edge-1.'" in err
        code, _, err = _run(
            capsys, "enroll", "--token-file", str(token_path), "--data-dir", str(device),
            "--node-id", "edge-1.dev-1",
        )  # fmt: skip
        assert code == 0, err
    device_cert = SignedCertificate.from_bytes((device / "node.cert").read_bytes())
    chain = [(device / "authority.cert").read_bytes()]
    cert = verify_certificate(
        device_cert, trust=read_trust(device), now=_now(), intermediates=chain
    )
    assert (cert.node_id, cert.tier, cert.issuer, cert.roles) == (
        "edge-1.dev-1",
        Tier.END,
        "edge-1",
        ("sensor",),
    )
    # The whole mesh (trusting only the root) accepts the device.
    verify_certificate(device_cert, trust=read_trust(cloud), now=_now(), intermediates=chain)
    config = load_config(device / "node.toml")
    assert (config.tier, config.listen) == ("end", None)
    assert config.parent is not None
    assert (
        config.parent.curve_key_bytes == NodeIdentity.load(edge / "identity.key", PASS).curve_public
    )

    # Revoking the device at the root: a new signed list, version 2, that every node verifies.
    code, _, err = _run(capsys, "revoke", "edge-1.dev-1", "--data-dir", str(cloud))
    assert code == 0, err
    rl = read_trust(cloud).revocation_list("acme")
    assert rl is not None
    assert (rl.version, rl.node_ids) == (2, frozenset({"edge-1.dev-1"}))
    device_trust = read_trust(device)
    device_trust.update_revocation_list((cloud / "revocation.list").read_bytes())
    from securemesh.errors import CertificateRevoked

    with pytest.raises(CertificateRevoked):
        verify_certificate(device_cert, trust=device_trust, now=_now(), intermediates=chain)
    # Revocation is the root's job, not an edge's.
    code, _, err = _run(capsys, "revoke", "edge-1.dev-1", "--data-dir", str(edge))
    assert code == 1
    assert "no mesh authority" in err


def test_reenroll_keeps_the_identity(
    cloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "dev"
    with ExitStack() as stack:
        server, store, identity = _cloud_server(cloud)
        stack.callback(store.close)
        endpoint = stack.enter_context(running_endpoint(server, store, identity, "c1"))
        serials = []
        for _ in range(2):
            code, out, err = _run(
                capsys, "token", "create", "--data-dir", str(cloud), "--tier", "end",
                "--endpoint", endpoint.address,
            )  # fmt: skip
            assert code == 0, err
            code, _, err = _run(
                capsys, "enroll", "--token", out.strip(), "--data-dir", str(node), "--node-id", "d"
            )
            assert code == 0, err
            cert = SignedCertificate.from_bytes((node / "node.cert").read_bytes())
            serials.append(cert.unverified_certificate().serial)
        assert "existing keys" in err
        assert "kept node.toml" in err
    assert serials[0] != serials[1]
    identity = NodeIdentity.load(node / "identity.key", PASS)
    assert cert.unverified_certificate().public_keys() == identity.public()


def test_enroll_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "enroll", "--data-dir", str(tmp_path), "--node-id", "x")
    assert code == 1
    assert "exactly one" in err
    code, _, err = _run(
        capsys, "enroll", "--token", "smj1.garbage", "--data-dir", str(tmp_path), "--node-id", "x"
    )
    assert code == 1
    assert "DecodeError" in err


def test_parse_duration() -> None:
    from securemesh.cli._mesh import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "1h", "7d", "2w")] == [
        90, 90, 1800, 3600, 7 * 86400, 14 * 86400,
    ]  # fmt: skip
    for bad in ("", "0", "1y", "-1h", "h"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_real_process_token_capture(tmp_path: Path) -> None:
    """As a shell script uses it: `TOKEN=$(securemesh token create ...)` captures only the token."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SECUREMESH_PASSPHRASE": PASS}
    data = tmp_path / "cloud"
    init = subprocess.run(
        [sys.executable, "-m", "securemesh", "init", "--data-dir", str(data)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert init.stdout == ""
    created = subprocess.run(
        [sys.executable, "-m", "securemesh", "token", "create", "--data-dir", str(data),
         "--tier", "end", "--ttl", "10m"],
        capture_output=True, text=True, env={k: v for k, v in env.items()
                                             if k != "SECUREMESH_PASSPHRASE"},
        timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr  # no passphrase needed
    assert created.stdout.count("\n") == 1
    token = JoinToken.decode(created.stdout)
    assert token.server_id == "cloud-1"
    assert token.token_id.hex() in created.stderr


def test_token_withdraw_and_prune(cloud: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "token", "create", "--data-dir", str(cloud), "--tier", "end")
    assert code == 0
    tid = JoinToken.decode(out).token_id.hex()
    code, _, err = _run(capsys, "token", "withdraw", tid, "--data-dir", str(cloud))
    assert code == 0, err
    assert "withdrawn" in err
    code, _, err = _run(capsys, "token", "withdraw", tid, "--data-dir", str(cloud))
    assert code == 1
    code, out, _ = _run(capsys, "token", "list", "--data-dir", str(cloud))
    assert out == ""  # no usable tokens
    code, out, _ = _run(
        capsys, "token", "list", "--data-dir", str(cloud), "--all", "--format", "jsonl"
    )
    assert json.loads(out)["state"] == "withdrawn"
    code, _, err = _run(capsys, "token", "prune", "--data-dir", str(cloud), "--keep-used", "0")
    assert code == 0
    assert "removed 1" in err
    code, out, _ = _run(capsys, "token", "list", "--data-dir", str(cloud), "--all")
    assert out == ""
    code, _, err = _run(capsys, "token", "withdraw", "xyz", "--data-dir", str(cloud))
    assert code == 1
    assert "hex" in err
