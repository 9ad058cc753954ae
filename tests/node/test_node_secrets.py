"""Where the daemon's passphrase comes from, and that it leaves no trace in the environment.

(Issue 9, item 8d.) ``--passphrase-file``, ``passphrase_file``, a systemd
credential (``$CREDENTIALS_DIRECTORY/securemesh-passphrase``) or
``SECUREMESH_PASSPHRASE``; and after reading it the variable is gone from
``os.environ``, from what children inherit, and from ``/proc/<pid>/environ``
— which ``os.environ`` changes alone do not touch (checked here first).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from securemesh.errors import ConfigError
from securemesh.node import NodeConfig
from securemesh.node._secrets import read_passphrase

SECRET = "correct horse battery staple"


def test_sources_in_order(tmp_path: Path) -> None:
    (tmp_path / "cli").write_text("from-cli\n")
    (tmp_path / "toml").write_text("from-toml\r\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "securemesh-passphrase").write_text("from-systemd")
    (creds / "other").write_text("from-other-credential\n")
    env = {"SECUREMESH_PASSPHRASE": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    with_file = NodeConfig(node_id="a", tier="edge", passphrase_file=str(tmp_path / "toml"))
    plain = NodeConfig(node_id="a", tier="edge")
    named = NodeConfig(node_id="a", tier="edge", passphrase_credential="other")
    assert read_passphrase(with_file, passphrase_file=tmp_path / "cli", environ=env) == "from-cli"
    assert read_passphrase(with_file, environ=env) == "from-toml"
    assert read_passphrase(plain, environ=env) == "from-systemd"
    assert read_passphrase(named, environ=env) == "from-other-credential"
    (creds / "securemesh-passphrase").unlink()  # no such credential: the environment
    assert read_passphrase(plain, environ=env) == "from-env"
    with pytest.raises(ConfigError, match="no passphrase"):
        read_passphrase(plain, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_passphrase(plain, passphrase_file=tmp_path / "empty", environ=env)
    with pytest.raises(ConfigError, match="not found"):
        read_passphrase(plain, passphrase_file=tmp_path / "missing", environ=env)
    with pytest.raises(ValueError, match="passphrase_credential"):
        NodeConfig(node_id="a", tier="edge", passphrase_credential="../etc/shadow")


_CHILD = """
import json, os, subprocess, sys
from pathlib import Path
def environ(): return Path("/proc/self/environ").read_bytes()
before = b"SECUREMESH_PASSPHRASE=" in environ()
os.environ.pop("SECUREMESH_PASSPHRASE")            # what os.environ alone does
after_pop = b"SECUREMESH_PASSPHRASE=" in environ()
os.environ["SECUREMESH_PASSPHRASE"] = "x"
from securemesh.node._secrets import scrub_environment
done = scrub_environment()
probe = "import os; print(os.environ.get('SECUREMESH_PASSPHRASE'))"
child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
child = child.stdout.strip()
print(json.dumps({"before": before, "after_pop": after_pop, "done": done,
                  "after": sys.argv[1].encode() in environ(), "child": child,
                  "others": b"KEEP_ME=1" in environ()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/environ is Linux")
def test_scrub_removes_the_variable_from_proc_environ_and_children() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, SECRET],
        env={"SECUREMESH_PASSPHRASE": SECRET, "KEEP_ME": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(done.stdout)
    # os.environ changes do not change /proc/<pid>/environ: the kernel's copy stays
    assert got["before"] is True
    assert got["after_pop"] is True
    # the scrub does
    assert got == {
        "before": True,
        "after_pop": True,
        "done": True,
        "after": False,
        "child": "None",
        "others": True,
    }


def test_node_run_takes_the_passphrase_from_passphrase_file(tmp_path: Path) -> None:
    """``securemesh node run --passphrase-file``: a real daemon, no passphrase anywhere else."""
    from daemon_support import daemon_env, log_path, stop_process, wait_ready
    from node_testlib import Fixture, write_data_dir

    fx = Fixture()
    data = tmp_path / "cloud"
    toml = write_data_dir(fx, fx.member("cloud-1", "cloud"), data, listen="tcp://127.0.0.1:0")
    lines = [ln for ln in toml.read_text().splitlines() if not ln.startswith("passphrase_file")]
    toml.write_text("\n".join(lines) + "\n")
    secret = tmp_path / "secret"
    secret.write_text((data / "passphrase").read_text())
    (data / "passphrase").unlink()
    cmd = [sys.executable, "-m", "securemesh", "node", "run", "--config", str(toml)]
    missing = subprocess.run(
        [*cmd, "--passphrase-file", str(tmp_path / "nope")],
        env=daemon_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    (line,) = missing.stderr.strip().splitlines()  # one error line, no traceback
    assert line.startswith("error: ")
    assert "passphrase file not found" in line
    with open(log_path(data), "ab") as log:
        proc = subprocess.Popen(
            [*cmd, "--passphrase-file", str(secret)],
            env=daemon_env(), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        assert wait_ready(data, proc)["node_id"] == "cloud-1"
    finally:
        assert stop_process(proc) == 0
