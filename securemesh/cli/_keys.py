"""``securemesh keys``: create and inspect a node's encrypted key file.

Only public keys are ever printed. The passphrase comes from an environment
variable (``--passphrase-env``, default ``SECUREMESH_PASSPHRASE``); if that is
unset and standard input is a terminal it is asked for (twice when creating a
key file); otherwise the command stops with a ConfigError rather than block.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from securemesh.cli._common import DEFAULT_PASSPHRASE_ENV, passphrase_options
from securemesh.cli._common import read_passphrase as _passphrase
from securemesh.crypto.identity import NodeIdentity, PublicKeys
from securemesh.errors import ConfigError

__all__ = ["DEFAULT_PASSPHRASE_ENV", "register"]


def _print_public(keys: PublicKeys, *, as_json: bool) -> None:
    fields = keys.to_dict()
    if as_json:
        print(json.dumps(fields, sort_keys=True))
        return
    print(f"verify key (hex):    {fields['verify_key_hex']}")
    print(f"verify key (base64): {fields['verify_key_b64']}")
    print(f"kx key (hex):        {fields['kx_key_hex']}")
    print(f"curve key (z85):     {fields['curve_key_z85']}")


def _generate(args: argparse.Namespace) -> int:
    parent = Path(args.out).expanduser().parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {args.out}: the directory {parent} does not exist")
    passphrase = _passphrase(args.passphrase_env, confirm=True)
    identity = NodeIdentity.generate()
    identity.save(args.out, passphrase, overwrite=args.force)
    print(f"wrote {args.out}", file=sys.stderr)
    _print_public(identity.public(), as_json=args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env, confirm=False)
    identity = NodeIdentity.load(args.path, passphrase)
    _print_public(identity.public(), as_json=args.json)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys generate`` and ``keys show``."""
    keys = subparsers.add_parser("keys", help="create and inspect node key files")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    common = passphrase_options()
    common.add_argument("--json", action="store_true", help="print the public keys as JSON")

    gen = keys_sub.add_parser(
        "generate", parents=[common], help="create a new node identity key file"
    )
    gen.add_argument("--out", required=True, metavar="PATH", help="key file to create (0600)")
    gen.add_argument("--force", action="store_true", help="replace an existing file")
    gen.set_defaults(func=_generate)

    show = keys_sub.add_parser("show", parents=[common], help="print a key file's public keys")
    show.add_argument("path", metavar="PATH")
    show.set_defaults(func=_show)
