"""The operator's and the device developer's CLI, run as subprocesses (issue 10).

One mesh for the module, set up as the docs say: ``securemesh init`` and a
cloud daemon, an edge enrolled with a ``--delegate`` token whose ``node.toml``
gets the services line and the policy rule that ``enroll`` wrote into it as
comments (uncommented here, as an operator would), and the edge daemon running
examples/sensor_service.py. Then examples/device_app.py enrolls a device and
must get every reading acknowledged; the guards, the fleet view, ``node
stop``, the default config lookup and a table of bad inputs (one ``error:``
line, non-zero exit, never a traceback) are checked against real processes.

Commands that create key files run through ``daemon_support.FAST_KDF_CLI``,
which lowers the Argon2id cost in the child first; everything else is
``python -m securemesh``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import (
    FAST_KDF_CLI,
    Daemons,
    daemon_env,
    free_port,
    reaped,
    start_daemon,
    wait_ready,
    wait_status,
)
from docs_support import marked_block

from securemesh.cli import COMMANDS, build_parser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PASSPHRASE = "cli-mesh-test-passphrase"
SM = [sys.executable, "-m", "securemesh"]
DEVICE_ID = "edge-1.sensor-7"


def _env(**extra: str) -> dict[str, str]:
    env = daemon_env(pythonpath=[EXAMPLES], passphrase=PASSPHRASE)
    env.pop("SECUREMESH_DATA_DIR", None)
    env.update(extra)
    return env


def run(
    *args: str,
    fast: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(FAST_KDF_CLI if fast else SM), *args],
        env=env if env is not None else _env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str, **kw: object) -> str:
    done = run(*args, **kw)  # type: ignore[arg-type]
    assert done.returncode == 0, f"securemesh {' '.join(args)}: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    return done.stdout


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """Assert a clean failure: non-zero, exactly one ``error:`` line, no traceback."""
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


def create_token(data_dir: Path, *args: str) -> tuple[str, str]:
    """``token create``: (the token, its id from the stderr report)."""
    done = run("token", "create", "--data-dir", str(data_dir), *args)
    assert done.returncode == 0, done.stderr
    found = re.search(r"^token ([0-9a-f]{32}) ", done.stderr, re.M)
    assert found, done.stderr
    return done.stdout.strip(), found.group(1)


def token_states(data_dir: Path) -> dict[str, str]:
    rows = ok("token", "list", "--data-dir", str(data_dir), "--all", "--format", "jsonl")
    return {row["token_id"]: row["state"] for row in map(json.loads, rows.splitlines())}


def device_app(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "device_app.py"), *args],
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def uncomment_documented_policy(toml: Path) -> None:
    """Do what the node.toml that ``enroll`` wrote says: services at the top, the rule below."""
    text = toml.read_text()
    services = re.search(r"^#\s+(services = \[.*?\])", text, re.M)
    assert services, "enroll's node.toml does not show the services line"
    rule = re.search(r"^# (\[\[policy\.allow\]\]\n(?:# \w+ = .*\n)+)", text, re.M)
    assert rule, "enroll's node.toml does not show the policy rule"
    body = re.sub(r"^# ", "", rule.group(1), flags=re.M)
    head = f"{services.group(1)}\nstatus_interval = 0.2\nheartbeat_interval = 0.5\n"
    toml.write_text(f"{head}{text}\n{body}")


@dataclass
class Mesh:
    root: Path
    cloud: Path
    edge: Path
    device: Path
    daemons: Daemons


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("cli-mesh")
    cloud, edge = root / "cloud", root / "edge"
    with reaped(_env()) as daemons:
        ok(
            "init", "--data-dir", str(cloud), "--authority-id", "root",
            "--listen", f"tcp://127.0.0.1:{free_port()}", fast=True,
        )  # fmt: skip
        toml = cloud / "node.toml"
        toml.write_text("status_interval = 0.2\n" + toml.read_text())
        daemons.run("cloud", cloud)
        token = ok(
            "token", "create", "--data-dir", str(cloud), "--tier", "edge", "--delegate"
        ).strip()
        ok(
            "enroll", "--data-dir", str(edge), "--token", token, "--node-id", "edge-1",
            "--listen", f"tcp://127.0.0.1:{free_port()}", fast=True,
        )  # fmt: skip
        uncomment_documented_policy(edge / "node.toml")
        daemons.run("edge", edge)
        yield Mesh(root, cloud, edge, root / "sensor-7", daemons)


# ------------------------------------------------------------- the device path


@pytest.fixture(scope="module")
def first_run(mesh: Mesh) -> subprocess.CompletedProcess[str]:
    """examples/device_app.py enrolling DEVICE_ID at the edge and sending 3 readings."""
    token = ok(
        "token", "create", "--data-dir", str(mesh.edge), "--tier", "end", "--roles", "sensor"
    ).strip()
    return device_app(
        "--data-dir", str(mesh.device), "--token", token, "--node-id", DEVICE_ID,
        "--count", "3", "--interval", "0.05", "--kdf-memlimit-mib", "8",
    )  # fmt: skip


def test_device_app_gets_every_reading_acknowledged(
    first_run: subprocess.CompletedProcess[str],
) -> None:
    done = first_run
    assert done.returncode == 0, done.stderr
    assert re.search(r"^time at edge-1: \d{4}-\d\d-\d\dT[\d:.]+Z", done.stdout, re.M)
    for seq in range(3):
        assert (
            f"acknowledged reading {seq} of temp-0 by edge-1 ({seq + 1} received from this device)"
            in done.stdout
        ), done.stdout
    assert "sent 3 readings, all acknowledged" in done.stderr


def test_device_app_exits_non_zero_when_the_edge_refuses(mesh: Mesh) -> None:
    # a device without the sensor role: the edge's rule does not allow it, so no reply
    token = ok(
        "token", "create", "--data-dir", str(mesh.edge), "--tier", "end", "--roles", "camera"
    ).strip()
    done = device_app(
        "--data-dir", str(mesh.root / "camera-1"), "--token", token,
        "--node-id", "edge-1.camera-1", "--count", "1", "--timeout", "1",
        "--kdf-memlimit-mib", "8",
    )  # fmt: skip
    line = one_error(done)
    assert "no reply from 'edge-1' to 'sensor.time' within 1 s" in line
    assert "a refused request" in line
    assert "acknowledged" not in done.stdout


def test_device_app_explains_the_namespace_rule(mesh: Mesh) -> None:
    token = ok("token", "create", "--data-dir", str(mesh.edge), "--tier", "end").strip()
    done = device_app(
        "--data-dir", str(mesh.root / "bad-id"), "--token", token, "--node-id", "sensor-7",
        "--kdf-memlimit-mib", "8",
    )  # fmt: skip
    line = one_error(done)
    assert "outside the namespace of the edge 'edge-1'" in line
    assert "'edge-1.sensor-7'" in line
    assert not (mesh.root / "bad-id" / "identity.key").exists()  # refused before any key work


def test_the_sdk_snippet_in_the_docs_runs(mesh: Mesh, tmp_path: Path) -> None:
    """docs/sdk.md's example, as written, against the documented edge (``token``, ``pw``
    and ``raw_bytes`` are the application's; the data dir is a temporary one)."""
    code = marked_block("sdk.md", "sdk-device").replace("/var/lib/sensor", str(tmp_path / "s"))
    token = ok(
        "token", "create", "--data-dir", str(mesh.edge), "--tier", "end", "--roles", "sensor"
    ).strip()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(
            compile(code, "docs/sdk.md", "exec"),
            {"token": token, "pw": PASSPHRASE, "raw_bytes": b"\x00\x01"},
        )
    ack, time_reply = out.getvalue().splitlines()
    assert ack.startswith("edge-1 {")
    assert "'ack': 1" in ack
    assert "'received': 2" in ack  # the one-way reading, then this one
    assert time_reply.startswith("edge-1 {'time': ")
    assert time_reply.endswith(", 'by': 'edge-1'}")


# ------------------------------------------------------------ operator guards


def test_enroll_refuses_another_node_id_for_an_enrolled_data_dir(
    mesh: Mesh, first_run: subprocess.CompletedProcess[str]
) -> None:
    token, token_id = create_token(mesh.edge, "--tier", "end")
    assert first_run.returncode == 0, "the device is enrolled"
    line = one_error(
        run(
            "enroll",
            "--data-dir",
            str(mesh.device),
            "--token",
            token,
            "--node-id",
            "edge-1.sensor-8",
            fast=True,
        )
    )
    assert f"belongs to node {DEVICE_ID!r}, not 'edge-1.sensor-8'" in line
    assert "--force" in line
    assert token_states(mesh.edge)[token_id] == "usable"  # refused before it was spent


def test_enroll_refuses_a_data_dir_a_daemon_runs_on(mesh: Mesh) -> None:
    token = ok("token", "create", "--data-dir", str(mesh.cloud), "--tier", "edge").strip()
    pid = mesh.daemons.procs["edge"].pid
    line = one_error(
        run("enroll", "--data-dir", str(mesh.edge), "--token", token, "--node-id", "edge-1")
    )
    assert f"another daemon is already running on this data dir (pid {pid})" in line
    line = one_error(run("node", "run", "--data-dir", str(mesh.edge)))
    assert f"another daemon is already running on this data dir (pid {pid})" in line


def test_enrollment_with_a_refused_token_says_what_it_waits_for(mesh: Mesh) -> None:
    token, token_id = create_token(mesh.cloud, "--tier", "edge")
    ok("token", "withdraw", token_id, "--data-dir", str(mesh.cloud))
    done = run(
        "enroll", "--data-dir", str(mesh.root / "edge-late"), "--token", token,
        "--node-id", "edge-9", "--timeout", "4", fast=True,
    )  # fmt: skip
    line = one_error(done)
    assert "refused this token's key for 4 s" in line
    assert "refuses this token's key; trying again for up to 4 s" in done.stderr


def test_token_list_shows_withdrawn(mesh: Mesh) -> None:
    _, token_id = create_token(mesh.cloud, "--tier", "end")
    rows = json.loads(ok("token", "list", "--data-dir", str(mesh.cloud), "--format", "json"))
    row = next(r for r in rows if r["token_id"] == token_id)
    assert row["state"] == "usable"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["expires_at"])
    ok("token", "withdraw", token_id, "--data-dir", str(mesh.cloud))
    states = token_states(mesh.cloud)
    assert states[token_id] == "withdrawn"
    assert "used" in states.values()  # the edge's token
    table = ok("token", "list", "--data-dir", str(mesh.cloud), "--all")
    assert table.splitlines()[0].split()[:3] == ["TOKEN", "ID", "TIER"]
    assert any(line.startswith(token_id) and "withdrawn" in line for line in table.splitlines())
    usable = ok("token", "list", "--data-dir", str(mesh.cloud), "--format", "jsonl")
    assert token_id not in usable


def test_revoke_refuses_a_node_id_never_issued_unless_forced(mesh: Mesh) -> None:
    line = one_error(run("revoke", "--data-dir", str(mesh.cloud), "edge-l"))  # a typo
    assert "this authority never issued 'edge-l'" in line
    assert "--force" in line
    version = json.loads((mesh.cloud / "status.json").read_text())["revocation_list_versions"]
    forced = run("revoke", "--data-dir", str(mesh.cloud), "edge-l", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"version {version['root'] + 1}" in forced.stderr


# --------------------------------------------------------------- fleet view


def test_node_list_shows_the_children_of_cloud_and_edge(
    mesh: Mesh, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0, "the device is enrolled"
    wait_status(
        mesh.cloud,
        lambda s: any(c["node_id"] == "edge-1" and c["load_1m"] is not None
                      for c in s.get("children", [])),
        what="the cloud to list edge-1 with its load",
    )  # fmt: skip
    cloud = json.loads(ok("node", "list", "--data-dir", str(mesh.cloud), "--format", "json"))
    edge1 = next(row for row in cloud if row["node_id"] == "edge-1")
    assert (edge1["tier"], edge1["status"], edge1["revoked"]) == ("edge", "connected", False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", edge1["cert_expires"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", edge1["last_seen"])
    assert isinstance(edge1["load_1m"], float)
    # the edge lists the device it enrolled (disconnected: the app exited; silence says so)
    wait_status(
        mesh.edge,
        lambda s: any(c["node_id"] == DEVICE_ID and not c["connected"] for c in s["children"]),
        what="the edge to see the device go silent",
    )
    table = ok("node", "list", "--config", str(mesh.edge / "node.toml"))
    header, *rows = table.splitlines()
    assert header.split() == [
        "NODE", "ID", "TIER", "ROLES", "STATUS", "CERT", "EXPIRES", "LAST", "SEEN", "LOAD",
        "1M", "REVOKED",
    ]  # fmt: skip
    device = next(row.split() for row in rows if row.startswith(DEVICE_ID))
    assert device[1:4] == ["end", "sensor", "disconnected"]


def test_a_revoked_device_is_listed_as_revoked_and_told_so_at_connect(
    mesh: Mesh, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0, "the device is enrolled"
    before = json.loads((mesh.edge / "status.json").read_text())["revocation_list_versions"]
    ok("revoke", "--data-dir", str(mesh.cloud), DEVICE_ID)  # in edge-1's namespace: known
    wait_status(
        mesh.edge,
        lambda s: (
            s["revocation_list_versions"]["root"] > before["root"]
            and any(c["node_id"] == DEVICE_ID and c["revoked"] for c in s["children"])
        ),
        what="the edge to install the new list",
    )
    rows = ok("node", "list", "--data-dir", str(mesh.edge), "--format", "jsonl")
    device = next(json.loads(r) for r in rows.splitlines() if DEVICE_ID in r)
    assert (device["status"], device["revoked"]) == ("revoked", True)
    # the device was offline: it learns it only from the edge refusing its key
    done = device_app("--data-dir", str(mesh.device), "--count", "1", "--timeout", "3")
    line = one_error(done)
    assert "refuses this device's key" in line
    assert f"{DEVICE_ID!r} was revoked" in line
    assert "waiting up to 3 s for the edge at tcp://127.0.0.1:" in done.stderr


# ------------------------------------------- node run / stop / default config


@pytest.fixture(scope="module")
def spare_cloud(mesh: Mesh) -> Path:
    """A second cloud data dir (not running), created with the port of the running cloud."""
    listen = json.loads((mesh.cloud / "ready").read_text())["listen"]
    spare = mesh.root / "spare"
    ok("init", "--data-dir", str(spare), "--listen", listen, fast=True)
    return spare


def test_node_run_on_a_port_in_use_leaves_no_status(spare_cloud: Path) -> None:
    line = one_error(run("node", "run", "--data-dir", str(spare_cloud)))
    assert "Address already in use" in line
    assert not (spare_cloud / "status.json").exists()
    assert not (spare_cloud / "ready").exists()


def test_node_stop_and_the_default_config_location(spare_cloud: Path) -> None:
    toml = spare_cloud / "node.toml"
    text = toml.read_text()
    toml.write_text(re.sub(r'listen = ".*"', f'listen = "tcp://127.0.0.1:{free_port()}"', text))
    proc = start_daemon(toml, _env())
    try:
        wait_ready(spare_cloud, proc)
        # $SECUREMESH_DATA_DIR, then ./node.toml: no --config needed
        status = run("node", "status", env=_env(SECUREMESH_DATA_DIR=str(spare_cloud)))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["alive"] is True
        listed = run("node", "list", "--format", "json", cwd=spare_cloud)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        stopped = run("node", "stop", cwd=spare_cloud)
        assert stopped.returncode == 0, stopped.stderr
        assert f"(pid {proc.pid})" in stopped.stderr
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = json.loads((spare_cloud / "status.json").read_text())
    assert (final["state"], final["draining"]) == ("stopped", False)
    again = run("node", "stop", "--data-dir", str(spare_cloud))
    assert again.returncode == 0
    assert "no daemon is running" in again.stderr


# ----------------------------------------------------------- bad inputs table


def _bad_inputs(mesh: Mesh) -> list[tuple[Sequence[str], str, dict[str, str]]]:
    a_file = mesh.root / "a-file"
    a_file.write_text("not a directory\n")
    token = ok("token", "create", "--data-dir", str(mesh.edge), "--tier", "end").strip()
    nowhere = {"cwd": str(mesh.root)}
    return [
        (["enroll", "--token-file", "/nope", "--data-dir", str(mesh.root / "n1"),
          "--node-id", "edge-1.x"], "cannot read the token file /nope", {}),
        (["keys", "generate", "--out", "/nope/dir/k.key"], "/nope/dir", {}),
        (["init", "--data-dir", str(a_file / "sub")], f"{a_file} is a file", {}),
        (["init", "--data-dir", str(a_file)], "is a file, not a directory", {}),
        (["enroll", "--data-dir", str(a_file), "--token", token, "--node-id", "edge-1.y"],
         "is a file, not a directory", {}),
        (["init", "--data-dir", str(mesh.cloud)], "already initialised", {}),
        (["enroll", "--token", "smj1.garbage", "--data-dir", str(mesh.root / "n2"),
          "--node-id", "a"], "token", {}),
        (["enroll", "--data-dir", str(mesh.root / "n3"), "--node-id", "a"],
         "exactly one of --token", {}),
        (["token", "list", "--data-dir", str(mesh.root / "nothing")], "no token store", {}),
        (["token", "list"], "no data dir: pass --data-dir DIR or set SECUREMESH_DATA_DIR", {}),
        (["token", "withdraw", "xyz", "--data-dir", str(mesh.cloud)], "32 hex digits", {}),
        (["revoke", "--data-dir", str(mesh.cloud)], "name at least one NODE", {}),
        (["revoke", "--data-dir", str(mesh.edge), "x"], "holds no mesh authority", {}),
        (["node", "status"], "no node.toml", nowhere),
        (["node", "list", "--config", "/nope.toml"], "cannot read /nope.toml", {}),
        (["node", "stop", "--data-dir", str(mesh.root / "nothing")], "cannot read", {}),
        (["node", "stop", "--data-dir", str(mesh.edge), "--timeout", "abc"], "--timeout", {}),
        (["token", "list", "--data-dir", str(mesh.cloud), "--format", "yaml"], "--format", {}),
    ]  # fmt: skip


def test_bad_inputs_get_one_error_line_and_no_traceback(mesh: Mesh) -> None:
    for args, expected, opts in _bad_inputs(mesh):
        done = run(*args, cwd=Path(opts["cwd"]) if "cwd" in opts else None)
        line = one_error(done)
        assert expected in line, (args, line)
    assert not (mesh.root / "a-file").is_dir()
    assert not (mesh.root / "n1").exists()


# --------------------------------------------------------------- start-up


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from securemesh.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('securemesh')), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))
    assert loaded == ["securemesh", "securemesh.cli", "securemesh.errors"]
    for name in ("keys", "audit", "init", "token", "revoke", "enroll", "node", "demo"):
        assert re.search(rf"^\s+{name}\s+\S", done.stdout, re.M), done.stdout
    # a command imports its own module only
    node_help = subprocess.run(
        [sys.executable, "-c", probe.replace("['--help']", "['node', '--help']")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(node_help.stderr.strip().splitlines()[-1].replace("'", '"'))
    assert "securemesh.cli._node" in loaded
    assert "securemesh.cli._audit" not in loaded
    assert "stop" in node_help.stdout


def test_placeholders_say_what_the_real_commands_say() -> None:
    parser = build_parser()
    assert parser._subparsers is not None
    sub = parser._subparsers._group_actions[0]
    real = {action.dest: action.help for action in sub._choices_actions}
    assert {name: help_text for name, help_text, _ in COMMANDS} == real
