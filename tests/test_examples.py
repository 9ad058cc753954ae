"""examples/deploy/, examples/storage_app.py and examples/audit_investigation.py, for real.

``examples/deploy/up.sh`` brings up the three-edge deployment from
``cloud.toml`` and ``edge-1..3.toml`` (``securemesh init``, delegated edge
tokens, ``securemesh enroll``, ``securemesh node run`` in the background) on
loopback ports; the test sees the cloud's fleet view list the three edges
connected. On that mesh two devices run ``storage_app.py`` (put, get, a read
refused before the owner shares, share, the reader's get) and
``audit_investigation.py`` collects the share's proof from the cloud log and
verifies it offline from a copy of the case directory (a tampered proof is
refused). docs/operations.md's health, revocation and backup blocks run on the
same mesh, and so do its re-enrollment and add-edge blocks and a second up.sh.
``down.sh`` stops everything; whatever is left is killed with
the scripts' process groups. The systemd unit passes ``systemd-analyze verify``.

Wall time (2026-12-07, the shared 2-core machine at load average 7-12): the
default tests 39-78 s, most of it up.sh (24-34 s: four daemons, three
enrollments, the edges' first heartbeat); the re-enrollment and add-edge test
9-21 s of it.

The other examples run in: device_app.py (tests/sdk/test_sdk_examples.py,
tests/cli/test_cli_mesh.py), task_service.py (tests/tasks/test_tasks_daemons.py),
he_aggregate.py (tests/he/test_he_daemons.py), federated_digits.py
(tests/fl/test_fl_example.py), counter_service.py (tests/node/test_node_services.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import FAST_KDF_CLI, cli, free_port, log_tail, poll, read_status
from docs_support import blocks, marked_block, stop_group

from securemesh.node import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
DEPLOY = EXAMPLES / "deploy"
PASSPHRASE = "examples-test-passphrase"
NODES = ("cloud-1", "edge-1", "edge-2", "edge-3")


def _env(shim: Path) -> dict[str, str]:
    """The scripts' environment: ``securemesh`` on PATH is a shim that runs the real command
    but gives the key files it creates the cheap test Argon2id cost (FAST_KDF_CLI), so the
    daemons, ``token create`` and the examples unlock them quickly; this interpreter next."""
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "securemesh").write_text(f"#!{sys.executable}\n{FAST_KDF_CLI[2]}")
    (shim / "securemesh").chmod(0o755)
    bindir = Path(sys.executable).parent
    path = os.pathsep.join([str(shim), str(bindir), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    env.pop("SECUREMESH_DATA_DIR", None)
    env.pop("SECUREMESH_AUDIT_DB", None)
    env["SECUREMESH_PASSPHRASE"] = PASSPHRASE
    return env


def _free_base_port() -> int:
    """A port P with P..P+3 free a moment ago (the cloud and edge-1..3)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + 3 > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + 4):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError("no four consecutive free ports")


class Mesh:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        #: process groups of doc blocks that left daemons running (reaped at teardown)
        self.groups: list[int] = []
        #: devices enrolled at edge-1 by storage_app.py: name -> its public keys
        self.devices: dict[str, dict[str, Any]] = {}

    def enroll(self, *names: str) -> dict[str, dict[str, Any]]:
        """``edge-1.<name>`` for each name, enrolled with storage_app.py (once); their public
        keys. The tokens are made first, so one status tick of edge-1 admits them all."""
        edge = self.root / "edge-1"
        new = [name for name in names if name not in self.devices]
        env = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
        create = ["token", "create", "--data-dir", str(edge), "--tier", "end", "--ttl", "10m"]
        tokens = {name: cli(*create, env=env) for name in new}
        created = time.time()
        if tokens:
            poll(lambda: read_status(edge)["written_at"] > created, "edge-1 to admit the tokens")
        for name, token in tokens.items():
            enroll = ["--token", token, "--node-id", f"edge-1.{name}", "--kdf-memlimit-mib", "8"]
            done = self.storage_app(name, *enroll, "keys")
            assert done.returncode == 0, done.stderr
            self.devices[name] = json.loads(done.stdout)
            assert self.devices[name]["node_id"] == f"edge-1.{name}"
        return {name: self.devices[name] for name in names}

    def block(self, name: str, replace: dict[str, str], work: Path) -> str:
        """Run docs/operations.md's block ``name`` in ``bash -eu -o pipefail`` with its
        server paths and addresses replaced; its stdout + stderr (fails on non-zero exit).
        Daemons it starts in the background stay up until the mesh is torn down."""
        script = marked_block("operations.md", name)
        replace = {
            "/var/lib/securemesh": str(self.root),
            "/var/log/securemesh": str(self.root),
            "tcp://cloud.example.net:7100": f"tcp://127.0.0.1:{self.env['SM_PORT']}",
            **replace,
        }
        for old, new in replace.items():
            if old in script:
                script = script.replace(old, new)
        env = {k: v for k, v in self.env.items() if k != "SECUREMESH_DATA_DIR"}
        work.mkdir(parents=True, exist_ok=True)
        out = work / f"{name}.out"
        with out.open("w") as sink:  # a file: a daemon it leaves running holds it open
            proc = subprocess.Popen(
                ["bash", "-eu", "-o", "pipefail", "-c", script], cwd=work, env=env,
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            self.groups.append(proc.pid)
            code = proc.wait(timeout=180)
        text = out.read_text()
        assert code == 0, f"{name} exited {code}: {text[-3000:]}"
        assert "Traceback" not in text, text
        return text

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), cwd=self.root, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def storage_app(self, device: str, *args: str) -> subprocess.CompletedProcess[str]:
        data_dir = str(self.root / device)
        return self.run(sys.executable, str(EXAMPLES / "storage_app.py"), "--data-dir", data_dir,
                        *args)  # fmt: skip

    def investigation(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, str(EXAMPLES / "audit_investigation.py"), *args)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("deploy")
    mesh_groups: list[int] = []
    env = {**_env(root / "bin"), "SM_ROOT": str(root / "mesh"), "SM_PORT": str(_free_base_port())}
    up = subprocess.Popen(
        ["bash", str(DEPLOY / "up.sh")], cwd=root, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the daemons it starts stay in its process group
    )  # fmt: skip
    try:
        out, err = up.communicate(timeout=180)
        logs = "".join(log_tail(root / "mesh" / node) for node in NODES)
        assert up.returncode == 0, out + err + logs
        assert "Traceback" not in err
        mesh = Mesh(root / "mesh", env)
        mesh_groups = mesh.groups
        yield mesh
        down = subprocess.run(
            ["bash", str(DEPLOY / "down.sh")], cwd=root, env=env, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        for node in NODES:
            assert read_status(root / "mesh" / node)["state"] == "stopped", node
            assert not (root / "mesh" / node / "ready").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        stop_group(up.pid)
        for group in mesh_groups:
            stop_group(group)


def test_deploy_configs_load() -> None:
    files = {"cloud-1": "cloud.toml", **{f"edge-{n}": f"edge-{n}.toml" for n in (1, 2, 3)}}
    configs = {name: load_config(DEPLOY / file) for name, file in files.items()}
    assert configs["cloud-1"].tier == "cloud"
    assert configs["cloud-1"].services == ["securemesh.storage:make_cloud_service"]
    for n in (1, 2, 3):
        edge = configs[f"edge-{n}"]
        assert (edge.node_id, edge.tier) == (f"edge-{n}", "edge")
        assert edge.parent is not None
        assert edge.report.failure_domain == f"rack-{n}"
        assert edge.data_dir == f"/var/lib/securemesh/edge-{n}"
    for config in configs.values():
        assert config.policy.build() is not None


def test_up_sh_brings_up_three_edges_connected_to_the_cloud(mesh: Mesh) -> None:
    children = json.loads(cli("node", "list", "--data-dir", str(mesh.root / "cloud-1"), "-o",
                              "json"))  # fmt: skip
    connected = {c["node_id"] for c in children if c["connected"]}
    assert connected == {"edge-1", "edge-2", "edge-3"}
    for n in (1, 2, 3):
        status = read_status(mesh.root / f"edge-{n}")
        assert status["state"] == "running"
        assert status["parent"]["node_id"] == "cloud-1"
        assert status["parent"]["connected"] is True
        # the daemon runs the rendered example config, not the one enroll wrote
        text = (mesh.root / f"edge-{n}" / "node.toml").read_text()
        assert f'failure_domain = "rack-{n}"' in text
        assert "0000000000000000" not in text  # the enrolled cloud key replaced the placeholder
        assert (mesh.root / f"edge-{n}" / "node.toml").stat().st_mode & 0o777 == 0o600


def test_storage_app_puts_gets_and_shares(mesh: Mesh, tmp_path: Path) -> None:
    keys = mesh.enroll("alice", "bob")
    src = tmp_path / "report.bin"
    src.write_bytes(b"quarterly report " * 4000 + os.urandom(70_000))
    put = mesh.storage_app("alice", "put", "notes/today", str(src))
    assert put.returncode == 0, put.stderr
    assert "k=2 of n=3" in put.stdout
    assert all(e in put.stdout for e in ("edge-1", "edge-2", "edge-3"))
    back = tmp_path / "back.bin"
    get = mesh.storage_app("alice", "get", "notes/today", str(back))
    assert get.returncode == 0, get.stderr
    assert back.read_bytes() == src.read_bytes()
    # bob cannot read alice's object until she shares it: one error line, exit 1
    as_bob = ["--owner", "edge-1.alice", "--owner-key", keys["alice"]["verify_key"]]
    bobs = tmp_path / "bob.bin"
    refused = mesh.storage_app("bob", "get", "notes/today", str(bobs), *as_bob)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ")
    assert refused.stderr.count("\n") == 1
    assert not bobs.exists()
    assert not bobs.with_name("bob.bin.part").exists()
    share = mesh.storage_app("alice", "share", "notes/today", "edge-1.bob", keys["bob"]["kx_key"])
    assert share.returncode == 0, share.stderr
    assert "readers now: edge-1.alice, edge-1.bob" in share.stdout
    got = mesh.storage_app("bob", "get", "notes/today", str(bobs), *as_bob)
    assert got.returncode == 0, got.stderr
    assert bobs.read_bytes() == src.read_bytes()


def test_audit_investigation_proves_the_share_offline(mesh: Mesh, tmp_path: Path) -> None:
    cloud = str(mesh.root / "cloud-1")
    case = tmp_path / "case-42"
    args = ["collect", "--data-dir", cloud, "--node", "edge-1.alice", "--since=-1h",
            "--kind", "storage.share", "reader=edge-1.bob", "--case", str(case)]  # fmt: skip
    # the share event ships from alice's outbox to the cloud log asynchronously
    query = ["audit", "query", "--data-dir", cloud, "--kind", "storage.share", "-o", "json"]
    poll(lambda: json.loads(cli(*query)) != [], "the storage.share event in the cloud log")
    done = mesh.investigation(*args)
    assert done.returncode == 0, done.stderr
    assert "storage.share" in done.stdout
    proofs = sorted(case.glob("entry-*.proof.json"))
    assert len(proofs) == 1
    timeline = json.loads((case / "timeline.json").read_text())
    assert {row["origin"] for row in timeline} == {"edge-1.alice"}
    # offline: a copy of the case directory, no database in reach
    elsewhere = tmp_path / "reviewer" / "case-42"
    shutil.copytree(case, elsewhere)
    ok = mesh.investigation("verify", str(elsewhere))
    assert ok.returncode == 0, ok.stderr
    assert "OK: 1 proofs verified" in ok.stdout
    assert '"reader": "edge-1.bob"' in ok.stdout
    # with the log key the reviewer already holds (the cloud's .pub), not the case's copy
    pinned = mesh.investigation("verify", str(elsewhere), "--log-key",
                                str(mesh.root / "cloud-1" / "audit-log.key.pub"))  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    # a tampered event (one detail changed) is refused, one error line
    bundle = json.loads(proofs[0].read_text())
    entry = base64.b64decode(bundle["entry"])
    bundle["entry"] = base64.b64encode(entry.replace(b"edge-1.bob", b"edge-1.eve")).decode()
    (elsewhere / proofs[0].name).write_text(json.dumps(bundle))
    bad = mesh.investigation("verify", str(elsewhere))
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ")
    assert "does NOT verify" in bad.stderr
    # nothing suspicious: exit 3, no case written
    empty = ["--kind", "object.delete", "--case", str(tmp_path / "empty")]
    none = mesh.investigation("collect", "--data-dir", cloud, "--node", "edge-1.alice", *empty)
    assert none.returncode == 3, none.stderr
    assert not (tmp_path / "empty").exists()


def test_operations_guide_health_revoke_backup(mesh: Mesh, tmp_path: Path) -> None:
    """docs/operations.md's health, revocation and backup blocks on the up.sh mesh."""
    health = mesh.block("ops-health", {}, tmp_path)
    assert "edge-1 is alive" in health
    assert "parent_connected=True rejected=" in health
    assert 'securemesh_up{node="edge-1"} 1' in health
    assert 'securemesh_parent_connected{node="edge-1",parent="cloud-1"} 1' in health
    assert "edge-3" in health  # the cloud's fleet view
    # revoke a device: edge-1 installs the list and lists it revoked
    mesh.enroll("bob")
    revoked = mesh.block("ops-revoke", {}, tmp_path)
    assert "revocation list version" in revoked
    poll(
        lambda: any(c["node_id"] == "edge-1.bob" and c["revoked"]
                    for c in read_status(mesh.root / "edge-1")["children"]),
        "edge-1 to list edge-1.bob revoked",
    )  # fmt: skip
    # back up the authority and check the backup
    backups = tmp_path / "backup"
    backups.mkdir()
    backup = mesh.block("ops-backup", {"/srv/backup": str(backups)}, tmp_path)
    assert "backup OK: root 'mesh' opens and matches trust.json" in backup
    assert len(list(backups.glob("securemesh-cloud-1-*.tgz"))) == 1


def test_operations_guide_reenroll_and_add_edge(mesh: Mesh, tmp_path: Path) -> None:
    """docs/operations.md's re-enrollment and add-edge blocks, and up.sh run again
    (three more daemon starts and enrollments: 9-21 s)."""
    # idempotent: a second run keeps every key and finds the daemons running
    again = mesh.run("bash", str(DEPLOY / "up.sh"))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("is already running") == 4
    # re-enroll edge-2: a new delegation and certificate, same keys, connected again
    before = {f: (mesh.root / "edge-2" / f).read_bytes() for f in ("delegation.cert",
              "node.cert", "identity.key", "node.toml")}  # fmt: skip
    mesh.block("ops-reenroll-edge", {}, tmp_path)
    after = {f: (mesh.root / "edge-2" / f).read_bytes() for f in before}
    assert after["delegation.cert"] != before["delegation.cert"]
    assert after["node.cert"] != before["node.cert"]
    assert after["identity.key"] == before["identity.key"]
    assert after["node.toml"] == before["node.toml"]
    poll(
        lambda: read_status(mesh.root / "edge-2")["parent"]["connected"] is True,
        "edge-2 to reconnect to the cloud",
    )
    # add edge-4: enrolled, configured, running, connected to the cloud
    listen = f"tcp://127.0.0.1:{free_port()}"
    mesh.block("ops-add-edge", {"tcp://0.0.0.0:7104": listen}, tmp_path)
    try:
        config = load_config(mesh.root / "edge-4" / "node.toml")
        assert config.services == ["securemesh.storage:make_service"]
        assert config.report.failure_domain == "rack-4"

        def edge4_connected() -> bool:
            children = read_status(mesh.root / "cloud-1")["children"]
            return any(c["node_id"] == "edge-4" and c["connected"] for c in children)

        poll(edge4_connected, "the cloud to list edge-4 connected")
    finally:
        cli("node", "stop", "--data-dir", str(mesh.root / "edge-4"))
    assert read_status(mesh.root / "edge-4")["state"] == "stopped"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "securemesh-node@.service").read_text()
    for line in ("User=securemesh", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "LoadCredential=securemesh-passphrase:/etc/securemesh/%i.pass",
                 "StateDirectory=securemesh/%i", "CapabilityBoundingSet=\n"):  # fmt: skip
        assert line in text, line
    assert "SECUREMESH_PASSPHRASE" not in text  # never in the unit's environment
    # the unit lines docs/operations.md shows are the file's
    (shown,) = [b.text for b in blocks(DOCS / "operations.md") if b.lang == "ini"]
    for line in shown.splitlines():
        assert line in text.splitlines(), line
    securemesh = shutil.which("securemesh", path=str(Path(sys.executable).parent))
    assert securemesh is not None
    assert "ExecStart=/opt/securemesh/bin/securemesh node run --data-dir" in text
    unit = tmp_path / "securemesh-node@edge-1.service"
    unit.write_text(text.replace("/opt/securemesh/bin/securemesh", securemesh))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # systemd only warns about bad lines
    broken = tmp_path / "broken@edge-1.service"
    broken.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    warned = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert "stricter" in warned.stderr
