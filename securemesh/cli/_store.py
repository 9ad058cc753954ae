"""``securemesh store``: encrypted edge storage from an enrolled device (docs/storage.md).

Each command connects as the device enrolled in ``--data-dir`` (its
passphrase from ``--passphrase-env``, default ``SECUREMESH_PASSPHRASE``),
drives a :class:`~securemesh.storage.StorageClient` over the device's
requests and closes. ``--index`` names the node that lists the storage nodes
and indexes manifests (the cloud). Objects are the device's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from securemesh.cli._common import (
    CliError,
    Progress,
    data_dir_options,
    format_options,
    iso_utc,
    os_error,
    passphrase_options,
    print_record,
    print_records,
    read_passphrase,
    resolve_data_dir,
)

__all__ = ["register"]

T = TypeVar("T")


def _wait_shipped(dev: Any, timeout: float) -> None:
    """Give the device's audit outbox up to ``timeout`` s to ship (what is left ships on a
    later connect: the outbox is durable)."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while dev.status()["audit"].get("outbox_pending", 0) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def _client(args: argparse.Namespace, *, audited: bool = False, **options: Any) -> Iterator[Any]:
    from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415 - lazy: start-up
    from securemesh.enroll import IDENTITY_FILE  # noqa: PLC0415
    from securemesh.sdk import Device, storage_client  # noqa: PLC0415

    if not args.index:
        raise CliError("name the index node (the cloud) with --index")
    data_dir = resolve_data_dir(args)
    passphrase = read_passphrase(args.passphrase_env, confirm=False)
    identity = NodeIdentity.load(data_dir / IDENTITY_FILE, passphrase)
    with Device.connect(data_dir, passphrase=passphrase, connect_timeout=args.timeout) as dev:
        yield storage_client(dev, identity, index=args.index, timeout=args.timeout, **options)
        if audited:  # share and challenge record events: let them reach the log
            _wait_shipped(dev, min(args.timeout, 10.0))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except TimeoutError as exc:
        raise CliError(f"no answer in time: {exc}") from exc


def _manifest_doc(manifest: Any) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "owner": manifest.owner,
        "object_id": manifest.object_id,
        "size": manifest.size,
        "segments": len(manifest.segments),
        "segment_size": manifest.segment_size,
        "k": manifest.k,
        "n": manifest.n,
        "placement": list(manifest.placement),
        "merkle_root": manifest.merkle_root,
        "readers": sorted(manifest.readers),
        "created": iso_utc(manifest.created_ms / 1000),
    }


def _progress(args: argparse.Namespace, label: str) -> Callable[[int, int], None]:
    return Progress(label, force=args.progress)


def _put(args: argparse.Namespace) -> int:
    options = {"k": args.k, "n": args.n, "segment_size": args.segment_size}
    try:
        source = Path(args.file).open("rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise os_error(exc, "read") from exc
    with source, _client(args, **options) as client:
        progress = _progress(args, f"put {args.name} (segments)")
        manifest = _run(client.put(args.name, source, progress=progress))
    print_record(_manifest_doc(manifest), args.format)
    return 0


def _hex_key(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CliError(f"{what} is 32 bytes in hex (64 characters)")
    return key


def _get(args: argparse.Namespace) -> int:
    owner_key = _hex_key(args.owner_key, "--owner-key")
    if args.owner is not None and owner_key is None:
        raise CliError("reading another node's object needs its verify key: --owner-key HEX")
    out_path = Path(args.file)
    tmp = out_path.with_name(out_path.name + ".part")
    with _client(args) as client:
        try:
            out = tmp.open("wb")
        except OSError as exc:
            raise os_error(exc, "write") from exc
        try:
            with out:
                progress = _progress(args, f"get {args.name} (segments)")
                report = _run(
                    client.get_into(
                        args.name,
                        out.write,
                        owner=args.owner,
                        owner_key=owner_key,
                        progress=progress,
                    )
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(out_path)
    for seg, idx, node, why in report.missing:
        print(f"warning: shard {idx} of segment {seg} from {node}: {why}", file=sys.stderr)
    for seg, idx, node in report.corrupt:
        print(f"warning: shard {idx} of segment {seg} from {node}: corrupt", file=sys.stderr)
    print(f"wrote {report.manifest.size} bytes to {out_path}", file=sys.stderr)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        names = _run(client.list())
    print_records([{"name": name} for name in names], args.format)
    return 0


def _stat(args: argparse.Namespace) -> int:
    with _client(args) as client:
        manifest = _run(client.stat(args.name))
    print_record(_manifest_doc(manifest), args.format)
    return 0


def _rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        manifest = _run(client.delete(args.name))
    print(f"deleted {manifest.name} ({manifest.size} bytes)", file=sys.stderr)
    return 0


def _share(args: argparse.Namespace) -> int:
    if args.unshare:
        with _client(args, audited=True) as client:
            manifest = _run(client.unshare(args.name, args.reader))
    else:
        kx_key = _hex_key(args.kx_key, "--kx-key")
        if kx_key is None:
            raise CliError("name the reader's X25519 key: --kx-key HEX (its 'kx key')")
        with _client(args, audited=True) as client:
            manifest = _run(client.share(args.name, args.reader, kx_key))
    print_record(_manifest_doc(manifest), args.format)
    return 0


def _repair(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = _run(client.repair(args.name))
    rows = [
        {"shard": j, "action": "moved", "from": old, "to": new}
        for j, (old, new) in report.moved.items()
    ] + [{"shard": j, "action": "refilled", "from": n, "to": n} for j, n in report.refilled.items()]
    rows.sort(key=lambda d: d["shard"])
    print_records(rows, args.format, columns=[
        ("SHARD", lambda d: d["shard"]), ("ACTION", lambda d: d["action"]),
        ("FROM", lambda d: d["from"]), ("TO", lambda d: d["to"]),
    ])  # fmt: skip
    return 0


def _challenge(args: argparse.Namespace) -> int:
    """One challenge per placement column, on a segment chosen at random."""
    import secrets  # noqa: PLC0415

    with _client(args, audited=True) as client:
        manifest = _run(client.stat(args.name))
        results = []
        for index, node in enumerate(manifest.placement if manifest.segments else []):
            segment = secrets.randbelow(len(manifest.segments))
            _, why = _run(client.challenge(manifest, segment, index, count=args.blocks))
            results.append({"node": node, "segment": segment, "shard": index, "result": why})
    print_records(results, args.format)
    failed = [r for r in results if r["result"] != "ok"]
    if failed:
        raise CliError(f"{len(failed)} of {len(results)} challenges failed")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store put|get|ls|stat|rm|share|repair|challenge``."""
    common = argparse.ArgumentParser(add_help=False, parents=[data_dir_options()])
    common.add_argument("--index", metavar="NODE", help="the index node (the cloud)")
    common.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="per request (default 30)"
    )
    parents = [common, passphrase_options()]
    store = subparsers.add_parser(
        "store", help="encrypted, erasure-coded objects on the edges (as an enrolled device)"
    )
    sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    put = sub.add_parser(
        "put", parents=[*parents, format_options()], help="encrypt, shard and store a file"
    )
    put.add_argument("name", help="object name ([A-Za-z0-9._/-], up to 255)")
    put.add_argument("file", help="the file to store")
    put.add_argument("--k", type=int, default=4, help="shards needed to read (default 4)")
    put.add_argument("--n", type=int, default=6, help="shards written (default 6)")
    put.add_argument(
        "--segment-size", type=int, default=4 * 1024 * 1024, metavar="BYTES",
        help="plaintext bytes per segment (default 4 MiB)",
    )  # fmt: skip
    put.add_argument("--progress", action="store_true", help="always show progress")
    put.set_defaults(func=_put)

    get = sub.add_parser("get", parents=parents, help="fetch, verify and decrypt into a file")
    get.add_argument("name")
    get.add_argument("file", help="where to write (replaced only when complete)")
    get.add_argument("--progress", action="store_true", help="always show progress")
    get.add_argument("--owner", metavar="NODE", help="read an object another node shared")
    get.add_argument(
        "--owner-key", metavar="HEX", help="the owner's verify key (its certificate's)"
    )
    get.set_defaults(func=_get)

    ls = sub.add_parser("ls", parents=[*parents, format_options()], help="list your objects")
    ls.set_defaults(func=_ls)

    stat = sub.add_parser(
        "stat", parents=[*parents, format_options()], help="show an object's verified manifest"
    )
    stat.add_argument("name")
    stat.set_defaults(func=_stat)

    rm = sub.add_parser("rm", parents=parents, help="delete an object's shards and manifests")
    rm.add_argument("name")
    rm.set_defaults(func=_rm)

    share = sub.add_parser(
        "share", parents=[*parents, format_options()],
        help="let another node read an object (wraps its data key; a new manifest version)",
    )  # fmt: skip
    share.add_argument("name")
    share.add_argument("reader", help="the reader's node id")
    share.add_argument("--kx-key", metavar="HEX", help="the reader's X25519 key ('kx key')")
    share.add_argument(
        "--unshare", action="store_true",
        help="remove the reader from future manifest versions (a key it already "
        "unwrapped still opens the current shards)",
    )  # fmt: skip
    share.set_defaults(func=_share)

    repair = sub.add_parser(
        "repair", parents=[*parents, format_options()],
        help="move lost or corrupt shards onto other nodes",
    )  # fmt: skip
    repair.add_argument("name")
    repair.set_defaults(func=_repair)

    challenge = sub.add_parser(
        "challenge", parents=[*parents, format_options()],
        help="proof-of-storage spot check of each node holding the object",
    )  # fmt: skip
    challenge.add_argument("name")
    challenge.add_argument("--blocks", type=int, default=8, help="blocks per challenge (1..16)")
    challenge.set_defaults(func=_challenge)
