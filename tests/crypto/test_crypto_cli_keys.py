"""``securemesh keys generate|show``: in-process through cli.main, and as real processes."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securemesh.cli import main
from securemesh.crypto.identity import NodeIdentity

ENV = "SECUREMESH_PASSPHRASE"


def test_generate_then_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    monkeypatch.setenv(ENV, "correct horse")
    assert main(["keys", "generate", "--out", str(path), "--json"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    node = NodeIdentity.load(path, "correct horse")
    assert generated == node.public().to_dict()
    assert node.curve_secret_z85() not in json.dumps(generated)

    assert main(["keys", "show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == generated

    assert main(["keys", "show", str(path)]) == 0
    text = capsys.readouterr().out
    assert generated["verify_key_hex"] in text
    assert generated["curve_key_z85"] in text
    assert node.curve_secret_z85() not in text


def test_errors_are_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    monkeypatch.setenv("MY_PASS", "one")
    assert main(["keys", "generate", "--out", str(path), "--passphrase-env", "MY_PASS"]) == 0
    capsys.readouterr()
    # Refuses to overwrite unless forced.
    assert main(["keys", "generate", "--out", str(path), "--passphrase-env", "MY_PASS"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    monkeypatch.setenv("MY_PASS", "two")
    assert main(["keys", "show", str(path), "--passphrase-env", "MY_PASS"]) == 1
    assert capsys.readouterr().err == "error: wrong passphrase for this key file\n"
    monkeypatch.setenv("MY_PASS", "")
    assert main(["keys", "show", str(path), "--passphrase-env", "MY_PASS"]) == 1
    assert "is empty" in capsys.readouterr().err
    monkeypatch.delenv("MY_PASS")
    with open(os.devnull) as not_a_terminal:
        monkeypatch.setattr(sys, "stdin", not_a_terminal)
        assert main(["keys", "show", str(path), "--passphrase-env", "MY_PASS"]) == 1
    assert "set the environment variable MY_PASS" in capsys.readouterr().err


def test_cli_as_a_process(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    env = {**os.environ, ENV: "pw"}
    cmd = [sys.executable, "-m", "securemesh", "keys"]
    done = subprocess.run(
        [*cmd, "generate", "--out", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    public = json.loads(done.stdout)
    assert public == NodeIdentity.load(path, "pw").public().to_dict()
    env.pop(ENV)
    done = subprocess.run(
        [*cmd, "show", str(path)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: no passphrase: set the environment variable")


def _read_until(fd: int, marker: bytes, deadline: float) -> bytes:
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_passphrase_prompt_on_a_real_terminal(tmp_path: Path) -> None:
    """No env var and a TTY on stdin: the passphrase is asked for twice (pty, no mocks)."""
    path = tmp_path / "node.key"
    env = {k: v for k, v in os.environ.items() if k != ENV}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "securemesh", "keys", "generate", "--out", str(path), "--json"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        start_new_session=True,  # no controlling tty: getpass falls back to the pty on stdin
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + 60
        _read_until(master, b"passphrase: ", deadline)
        os.write(master, b"typed secret\n")
        _read_until(master, b"Repeat passphrase: ", deadline)
        os.write(master, b"typed secret\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out) == NodeIdentity.load(path, "typed secret").public().to_dict()
