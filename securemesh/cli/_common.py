"""What several command groups share: how a command gets the key-file passphrase.

The passphrase comes from an environment variable (``--passphrase-env``,
default ``SECUREMESH_PASSPHRASE``); if that is unset and standard input is a
terminal it is asked for (twice when a new key file is being created);
otherwise the command stops with a ConfigError rather than block on input that
will never come. It is never taken from the command line, where other users
could read it in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from securemesh.errors import ConfigError

__all__ = ["DEFAULT_PASSPHRASE_ENV", "passphrase_options", "read_passphrase"]

DEFAULT_PASSPHRASE_ENV = "SECUREMESH_PASSPHRASE"  # noqa: S105 - a variable name


def read_passphrase(env_var: str, *, confirm: bool) -> str:
    """The passphrase from ``$env_var``, else from the terminal (asked twice if ``confirm``)."""
    value = os.environ.get(env_var)
    if value is not None:
        if not value:
            raise ConfigError(f"environment variable {env_var} is empty")
        return value
    if not sys.stdin.isatty():
        raise ConfigError(
            f"no passphrase: set the environment variable {env_var} "
            "(or run from a terminal to be asked)"
        )
    first = getpass.getpass("Key file passphrase: ")
    if not first:
        raise ConfigError("the passphrase must not be empty")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise ConfigError("the passphrases do not match")
    return first


def passphrase_options() -> argparse.ArgumentParser:
    """A parent parser adding ``--passphrase-env VAR`` (read with :func:`read_passphrase`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--passphrase-env",
        default=DEFAULT_PASSPHRASE_ENV,
        metavar="VAR",
        help=f"environment variable holding the passphrase (default {DEFAULT_PASSPHRASE_ENV})",
    )
    return parent
