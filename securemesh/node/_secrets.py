"""Where a node daemon gets its identity passphrase, and how it forgets where it came from.

Sources, first match wins (:func:`read_passphrase`):

1. ``--passphrase-file PATH`` on ``securemesh node run``;
2. ``passphrase_file`` in ``node.toml``;
3. a systemd credential: ``$CREDENTIALS_DIRECTORY/<passphrase_credential>``
   (default name ``securemesh-passphrase``; ``LoadCredential=`` or
   ``LoadCredentialEncrypted=`` in the unit, see systemd.exec(5)
   "Credentials"), used when that file exists;
4. the environment variable ``SECUREMESH_PASSPHRASE``.

A file is read with a size bound and trailing newlines removed.

**The environment.** Whatever the source, the daemon then removes
``SECUREMESH_PASSPHRASE`` from its environment (:func:`scrub_environment`):

* from ``os.environ`` and, through it, libc's ``environ`` (``unsetenv``), so no
  child process (audit signature workers, verify workers, services' helpers)
  inherits it;
* from ``/proc/<pid>/environ``. That file is *not* the current environment: it
  is the memory range the kernel filled at ``execve`` (``env_start`` ..
  ``env_end``, fields 50 and 51 of ``/proc/<pid>/stat``, proc(5)), and
  ``unsetenv`` only drops the pointer to it. The daemon overwrites the
  variable's ``NAME=value`` bytes in that range with zero bytes (the range is
  its own, writable memory; this is what ``setproctitle`` does with the
  argument area), so a reader of ``/proc/<pid>/environ`` — the same user or
  root — sees no passphrase from then on. Linux only; elsewhere only step 1
  happens.

What this does not do, honestly: the passphrase was in the environment from
``execve`` until the scrub (a few milliseconds at start), it stays in the
environment of whatever *started* the daemon (a shell, a service manager's
unit file ``Environment=``), and the daemon's memory holds the passphrase and
the decrypted keys for as long as it runs (anyone who can ptrace or read
``/proc/<pid>/mem`` — the same user or root — can read them). A passphrase
file or a systemd credential (a non-swappable, per-service directory that
disappears with the service) avoids the environment altogether.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from securemesh._fileio import read_small_file
from securemesh.errors import ConfigError

if TYPE_CHECKING:
    from securemesh.node._config import NodeConfig

__all__ = [
    "CREDENTIAL_NAME",
    "CREDENTIALS_DIRECTORY_ENV",
    "PASSPHRASE_ENV",
    "read_passphrase",
    "scrub_environment",
]

PASSPHRASE_ENV: Final = "SECUREMESH_PASSPHRASE"  # noqa: S105 - a variable name
CREDENTIALS_DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"
CREDENTIAL_NAME: Final = "securemesh-passphrase"
_MAX_PASSPHRASE_FILE: Final = 64 * 1024


def _from_file(path: Path, what: str) -> str:
    raw = read_small_file(path, limit=_MAX_PASSPHRASE_FILE, what=what)
    try:
        text = raw.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8") from exc
    return text.rstrip("\r\n")


def read_passphrase(
    config: NodeConfig,
    *,
    passphrase_file: str | os.PathLike[str] | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> str:
    """The identity passphrase from the first source that has one (module doc)."""
    env = os.environ if environ is None else environ
    if passphrase_file is not None:
        value = _from_file(Path(passphrase_file), "passphrase file")
    elif config.passphrase_file is not None:
        value = _from_file(Path(config.passphrase_file), "passphrase file")
    elif (cred := _credential(config, env)) is not None:
        value = _from_file(cred, "systemd credential")
    else:
        value = env.get(PASSPHRASE_ENV, "")
        if not value:
            raise ConfigError(
                f"no passphrase: use --passphrase-file, passphrase_file in node.toml, "
                f"the systemd credential {config.passphrase_credential!r} "
                f"(${CREDENTIALS_DIRECTORY_ENV}), or set {PASSPHRASE_ENV}"
            )
    if not value:
        raise ConfigError("the passphrase is empty")
    return value


def _credential(config: NodeConfig, env: MutableMapping[str, str]) -> Path | None:
    directory = env.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        return None
    path = Path(directory) / config.passphrase_credential
    return path if path.is_file() else None


def scrub_environment(name: str = PASSPHRASE_ENV) -> bool:
    """Remove ``name`` from this process's environment, also from ``/proc/self/environ``.

    Returns whether anything was overwritten in the initial environment block
    (see the module doc for what this does and does not protect).
    """
    os.environ.pop(name, None)  # and unsetenv(): children do not inherit it
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _overwrite_initial_environment(name.encode())
    except (OSError, ValueError, IndexError):
        return False


def _overwrite_initial_environment(name: bytes) -> bool:
    """Zero every ``name=value`` in the kernel's copy of the initial environment (proc(5))."""
    stat = Path("/proc/self/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()  # field 3 (state) onwards
    env_start, env_end = int(fields[50 - 3]), int(fields[51 - 3])
    if not 0 < env_start < env_end:
        return False
    block = ctypes.string_at(env_start, env_end - env_start)
    prefix = name + b"="
    done = False
    at = 0
    while at < len(block):
        end = block.find(b"\0", at)
        end = len(block) if end < 0 else end
        if block.startswith(prefix, at):
            ctypes.memset(env_start + at, 0, end - at)
            done = True
        at = end + 1
    with contextlib.suppress(OSError):  # check what a reader of /proc/<pid>/environ sees
        seen = Path("/proc/self/environ").read_bytes().split(b"\0")
        done = done and not any(entry.startswith(prefix) for entry in seen)
    return done
