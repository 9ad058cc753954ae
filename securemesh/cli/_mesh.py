"""``securemesh init | token | revoke | enroll``: the mesh authority and enrollment, from a shell.

A thin shell over :mod:`securemesh.enroll` (its ``_state`` module documents
the data-directory layout). Only what a script must capture goes to standard
output: ``token create`` prints the token and nothing else; everything else
(what was written where) goes to standard error.

The passphrase protecting ``identity.key`` and the root key comes from the
environment variable named by ``--passphrase-env`` (default
``SECUREMESH_PASSPHRASE``) or, on a terminal, a prompt (twice when creating a
key). ``token create`` and ``token list`` need no passphrase: tokens carry
only public data of the server and their own fresh secret.

Every command takes the data dir from ``--data-dir`` or
``$SECUREMESH_DATA_DIR``; ``token list`` prints a table (``--format json`` /
``jsonl`` for scripts, ISO 8601 ``Z`` times; states usable, used, withdrawn,
expired). Operator mistakes stop with one ``error:`` line before anything is
written: ``revoke`` of a node id this authority has no record of
(:func:`~securemesh.enroll._state.known_node_ids`; ``--force`` overrides),
``enroll`` of an enrolled data dir under another ``--node-id`` (``--force``)
or of one a running daemon holds, ``init`` or ``enroll`` on a path that is a
file (or under one). ``enroll`` prints what it waits for once a wait passes a second.

Revocation reaches a running cloud daemon through the file system:
``revoke`` replaces ``DATA_DIR/revocation.list`` atomically; the daemon
watches that file (mtime), verifies the new list (rollbacks refused) and
broadcasts ``mesh.revocation``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from securemesh.cli._common import passphrase_options
from securemesh.cli._common import read_passphrase as _passphrase
from securemesh.cli._records import (
    daemon_pid,
    data_dir_of,
    data_dir_options,
    format_options,
    iso_time,
    print_records,
    usable_dir,
)
from securemesh.crypto import keystore
from securemesh.crypto.certs import Tier
from securemesh.errors import ConfigError

if TYPE_CHECKING:
    from securemesh.enroll import TokenRecord, TokenStore

__all__ = ["parse_duration", "register"]

#: Argon2id cost for new key files (tests lower it to keystore.UNSAFE_FAST_PARAMS).
_KDF_PARAMS: keystore.KdfParams = keystore.DEFAULT_PARAMS

_DURATION_RE = re.compile(r"([0-9]{1,9})([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d``, ``2w`` -> seconds (positive)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 90s, 30m, 1h, 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _roles(text: str) -> list[str]:
    return [r for r in (part.strip() for part in text.split(",")) if r]


def _data_dir(args: argparse.Namespace) -> Path:
    return data_dir_of(args)


def _not_running(data_dir: Path, doing: str) -> None:
    """ConfigError if a daemon runs on ``data_dir`` (it holds the counter and the keys)."""
    pid = daemon_pid(data_dir)
    if pid is not None:
        raise ConfigError(
            f"another daemon is already running on this data dir (pid {pid}): "
            f"stop it (securemesh node stop --data-dir {data_dir}) before {doing}"
        )


# --------------------------------------------------------------------- commands


def _init(args: argparse.Namespace) -> int:
    from securemesh.enroll import init_authority  # noqa: PLC0415 - lazy

    data_dir = usable_dir(_data_dir(args))
    passphrase = _passphrase(args.passphrase_env, confirm=True)
    result = init_authority(
        data_dir,
        passphrase,
        authority_id=args.authority_id,
        cloud_node_id=args.cloud_node_id,
        listen=args.listen,
        now=time.time(),
        cert_lifetime_s=parse_duration(args.cert_lifetime),
        roles=_roles(args.roles),
        kdf_params=_KDF_PARAMS,
    )
    from securemesh.audit.admin import create_log_key  # noqa: PLC0415 - lazy

    log_key = data_dir / "audit-log.key"  # the cloud daemon's default ([audit] log_key)
    verifier = (
        None
        if log_key.exists()
        else create_log_key(log_key, passphrase=passphrase, params=_KDF_PARAMS).verifier
    )
    print(
        f"mesh authority {result.authority.authority_id!r} created in {data_dir}\n"
        f"cloud node {args.cloud_node_id!r}: config {result.config_path}\n"
        f"root key (base64url): {_b64(result.authority.verify_key)}"
        + (
            ""
            if verifier is None
            else f"\naudit log key {log_key}; give auditors {log_key}.pub: {verifier}"
        ),
        file=sys.stderr,
    )
    return 0


def _b64(data: bytes) -> str:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token_create(args: argparse.Namespace) -> int:
    from securemesh.enroll import TokenStore, load_token_issuer  # noqa: PLC0415 - sqlalchemy

    data_dir = _data_dir(args)
    issuer = load_token_issuer(data_dir)
    tier = Tier(args.tier)
    if tier not in issuer.tiers:
        allowed = ", ".join(sorted(t.value for t in issuer.tiers))
        raise ConfigError(f"this node's delegated authority may only enroll: {allowed}")
    if args.delegate and (issuer.delegated or tier is not Tier.EDGE):
        raise ConfigError("--delegate is for edge tokens created by the mesh authority")
    endpoint = args.endpoint or issuer.endpoint
    if endpoint is None:
        raise ConfigError(
            "no endpoint: pass --endpoint tcp://HOST:PORT (node.toml has no connectable listen)"
        )
    with TokenStore.in_dir(data_dir) as store:
        token = store.create(
            authority_id=issuer.authority_id,
            root_key=issuer.root_key,
            server_key=issuer.server_key,
            server_id=issuer.server_id,
            endpoint=endpoint,
            issuer=issuer.issuer,
            tier=tier,
            roles=_roles(args.roles),
            ttl_s=parse_duration(args.ttl),
            delegate=args.delegate,
            name_prefix=issuer.name_prefix,
        )
    print(token.encode())
    print(
        f"token {token.token_id.hex()} ({tier.value}, roles={','.join(token.roles) or '-'}) "
        f"valid until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(token.expires_at))}"
        + (
            ""
            if token.name_prefix is None
            else f"; the node id must start with {token.name_prefix!r}"
        ),
        file=sys.stderr,
    )
    return 0


def _existing_token_store(args: argparse.Namespace) -> TokenStore:
    """The data dir's token store; ConfigError (not a new empty store) if it has none."""
    from securemesh.enroll import DEFAULT_TOKEN_DB, TokenStore  # noqa: PLC0415 - sqlalchemy

    data_dir = _data_dir(args)
    if not (data_dir / DEFAULT_TOKEN_DB).exists():
        raise ConfigError(f"{data_dir} has no token store")
    return TokenStore.in_dir(data_dir)


def _token_state(rec: TokenRecord, now: float) -> str:
    if rec.usable_at(now):
        return "usable"
    if rec.withdrawn:
        return "withdrawn"
    return "used" if rec.used else "expired"


def _token_list(args: argparse.Namespace) -> int:
    now = time.time()
    with _existing_token_store(args) as store:
        records = store.list_tokens(include_used=args.all, include_expired=args.all)
    rows = [
        {
            "token_id": rec.token_id.hex(),
            "tier": rec.tier.value,
            "roles": list(rec.roles),
            "issuer": rec.issuer,
            "delegate": rec.delegate,
            "created_at": iso_time(rec.created_at),
            "expires_at": iso_time(rec.expires_at),
            "state": _token_state(rec, now),
            "used_by": rec.used_by,
        }
        for rec in records
    ]
    print_records(
        rows,
        args.format,
        columns=("token_id", "tier", "roles", "state", "expires_at", "used_by", "delegate"),
        empty="no tokens" + ("" if args.all else " usable (--all lists used, withdrawn, expired)"),
    )
    return 0


def _token_withdraw(args: argparse.Namespace) -> int:
    with _existing_token_store(args) as store:
        try:
            token_id = bytes.fromhex(args.token_id)
        except ValueError as exc:
            raise ConfigError("a token id is 32 hex digits (see `token list`)") from exc
        withdrawn = store.revoke(token_id)
    print(
        f"token {args.token_id} "
        + ("withdrawn" if withdrawn else "was not usable (unknown, used or expired)"),
        file=sys.stderr,
    )
    return 0 if withdrawn else 1


def _token_prune(args: argparse.Namespace) -> int:
    with _existing_token_store(args) as store:
        keep = 0 if args.keep_used.strip() in {"0", "0s"} else parse_duration(args.keep_used)
        removed = store.prune_expired(keep_used_s=keep)
    print(f"removed {removed} expired token record(s)", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from securemesh.enroll import (  # noqa: PLC0415
        REVOCATION_FILE,
        known_node_ids,
        require_authority,
        revoke_node,
    )

    data_dir = _data_dir(args)
    if not args.nodes and not args.serial:
        raise ConfigError("name at least one NODE (or --serial) to revoke")
    require_authority(data_dir)
    if not args.force:
        ids, prefixes = known_node_ids(data_dir)
        unknown = [
            n for n in args.nodes if n not in ids and not any(n.startswith(p) for p in prefixes)
        ]
        if unknown:
            raise ConfigError(
                f"this authority never issued {', '.join(map(repr, unknown))} (not in peers/, "
                "tokens.db or an edge's namespace): check the spelling, or pass --force to "
                "revoke it anyway"
            )
    passphrase = _passphrase(args.passphrase_env, confirm=False)
    signed = revoke_node(
        data_dir, passphrase, node_ids=args.nodes, serials=args.serial, now=time.time()
    )
    rl = signed.unverified_list()
    print(
        f"revocation list version {rl.version} written to {data_dir / REVOCATION_FILE} "
        f"({len(rl.node_ids)} node(s), {len(rl.serials)} serial(s) revoked)",
        file=sys.stderr,
    )
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from securemesh.enroll import enroll_data_dir, read_join_token  # noqa: PLC0415 - lazy

    if (args.token is None) == (args.token_file is None):
        raise ConfigError("give exactly one of --token TOKEN and --token-file PATH")
    text = args.token if args.token_file is None else _read_token_file(Path(args.token_file))
    token = read_join_token(text, time.time())
    data_dir = usable_dir(_data_dir(args))
    _not_running(data_dir, "enrolling again")
    passphrase = _passphrase(args.passphrase_env, confirm=not (data_dir / "identity.key").exists())
    done = enroll_data_dir(
        token,
        data_dir,
        node_id=args.node_id,
        passphrase=passphrase,
        kdf_params=_KDF_PARAMS,
        timeout=args.timeout,
        listen=args.listen,
        in_use_error=ConfigError,
        in_use_hint="another daemon is using this data dir: stop it before enrolling again",
        on_wait=lambda text: print(f"{text} ...", file=sys.stderr, flush=True),
        rename=args.force,
        rename_hint=" (or pass --force to give these keys the new id)",
    )
    result, files, created = done.result, done.files, done.new_keys
    cert = result.cert
    print(
        f"enrolled {cert.node_id!r} as {cert.tier.value} (serial {cert.serial}, issuer "
        f"{cert.issuer!r}, valid until "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cert.not_after))}); "
        f"{'new' if created else 'existing'} keys in {data_dir}"
        + ("; delegated authority for end devices" if result.authority_certificate else "")
        + (f"; wrote {files.config_path}" if files.config_written else "; kept node.toml"),
        file=sys.stderr,
    )
    return 0


def _read_token_file(path: Path) -> str:
    """The token text of ``--token-file`` (at most 4 KiB read); ConfigError if unreadable."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
    return raw.decode("ascii", errors="replace")


# ---------------------------------------------------------------------- parsers


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``init``, ``token create|list|withdraw|prune``, ``revoke`` and ``enroll``."""
    common = data_dir_options()
    secret = passphrase_options()

    init = subparsers.add_parser(
        "init",
        parents=[common, secret],
        help="create the mesh authority and the cloud node's keys, certificate and config",
    )
    init.add_argument("--authority-id", default="mesh", metavar="ID")
    init.add_argument("--cloud-node-id", default="cloud-1", metavar="ID")
    init.add_argument("--listen", default="tcp://127.0.0.1:7100", metavar="tcp://HOST:PORT")
    init.add_argument("--roles", default="", metavar="A,B", help="roles of the cloud node")
    init.add_argument(
        "--cert-lifetime", default="30d", metavar="DURATION", help="cloud certificate lifetime"
    )
    init.set_defaults(func=_init)

    token = subparsers.add_parser("token", help="create and list one-time join tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser(
        "create", parents=[common], help="print a new join token (only the token, on stdout)"
    )
    create.add_argument("--tier", required=True, choices=["end", "edge", "cloud"])
    create.add_argument("--roles", default="", metavar="A,B")
    create.add_argument("--ttl", default="1h", metavar="DURATION", help="e.g. 15m, 1h, 2d")
    create.add_argument(
        "--endpoint", default=None, metavar="tcp://HOST:PORT", help="where the node connects"
    )
    create.add_argument(
        "--delegate",
        action="store_true",
        help="edge tokens only: also give the edge a delegated authority for end devices",
    )
    create.set_defaults(func=_token_create)
    listing = token_sub.add_parser(
        "list", parents=[common, format_options()], help="list usable tokens (never secrets)"
    )
    listing.add_argument("--all", action="store_true", help="include used and expired tokens")
    listing.set_defaults(func=_token_list)
    withdraw = token_sub.add_parser(
        "withdraw", parents=[common], help="make an unused token unusable at once"
    )
    withdraw.add_argument("token_id", metavar="TOKEN_ID", help="hex id from `token list`")
    withdraw.set_defaults(func=_token_withdraw)
    prune = token_sub.add_parser("prune", parents=[common], help="delete records of expired tokens")
    prune.add_argument(
        "--keep-used",
        default="30d",
        metavar="DURATION",
        help="keep used tokens' records this long after expiry (who enrolled with what)",
    )
    prune.set_defaults(func=_token_prune)

    revoke = subparsers.add_parser(
        "revoke", parents=[common, secret], help="revoke nodes: write a new signed revocation list"
    )
    revoke.add_argument("nodes", nargs="*", metavar="NODE", help="node ids to revoke")
    revoke.add_argument(
        "--serial", action="append", type=int, default=[], help="also revoke a serial"
    )
    revoke.add_argument(
        "--force", action="store_true", help="revoke node ids this authority has no record of"
    )
    revoke.set_defaults(func=_revoke)

    enroll = subparsers.add_parser(
        "enroll",
        parents=[common, secret],
        help="enroll this node with a join token (keys are generated or kept locally)",
    )
    enroll.add_argument("--token", default=None, metavar="TOKEN", help="the join token (smj1.…)")
    enroll.add_argument(
        "--token-file", default=None, metavar="PATH", help="read the join token from PATH"
    )
    enroll.add_argument(
        "--node-id",
        required=True,
        metavar="ID",
        help="this node's id (at a delegated edge: the edge's id, a dot and a name)",
    )
    enroll.add_argument(
        "--listen", default=None, metavar="tcp://HOST:PORT", help="edge: where to listen"
    )
    enroll.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the enrolling server (default 10)",
    )
    enroll.add_argument(
        "--force",
        action="store_true",
        help="enroll even if the data dir is enrolled under another node id (keeps its keys)",
    )
    enroll.set_defaults(func=_enroll)
