"""Encrypted edge storage from a device: put, get and share an object.

The device encrypts on its own side, erasure-codes every segment k-of-n
across the storage edges and signs the manifest; the edges hold ciphertext
only (docs/storage.md). Run it against a mesh whose edges load
``securemesh.storage:make_service`` and whose cloud runs the storage index
(``make_cloud_service``) -- the three-edge deployment of examples/deploy/
does (``examples/deploy/up.sh``), hence the defaults ``--k 2 --n 3``.

Two devices, alice and bob, enrolled at edge-1 (``securemesh token create
--data-dir .../edge-1 --tier end`` twice)::

    export SECUREMESH_PASSPHRASE=...
    python examples/storage_app.py --data-dir ./alice \\
        --token smj1.… --node-id edge-1.alice keys          # enroll once; print keys
    python examples/storage_app.py --data-dir ./bob \\
        --token smj1.… --node-id edge-1.bob keys
    python examples/storage_app.py --data-dir ./alice put notes/today report.pdf
    python examples/storage_app.py --data-dir ./alice get notes/today copy.pdf
    python examples/storage_app.py --data-dir ./alice share notes/today \\
        edge-1.bob BOB_KX_KEY_HEX                                # from bob's `keys`
    python examples/storage_app.py --data-dir ./bob get notes/today bob.pdf \\
        --owner edge-1.alice --owner-key ALICE_VERIFY_KEY_HEX   # from alice's `keys`

``keys`` prints the two public keys others need: the Ed25519 verify key
(a reader checks the owner's manifest signature with it) and the X25519 key
(an owner wraps the object's data key to it when sharing). Hand them over a
channel you trust, or take them from the device's certificate. Every share is
audited (``storage.share`` in the cloud log). Exit 0 on success; one
``error:`` line and exit 1 on any failure (not shared with you, an edge
refused, a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.keystore import KdfParams
from securemesh.enroll import IDENTITY_FILE
from securemesh.errors import SecureMeshError
from securemesh.sdk import Device, storage_client


def _keys(device: Device, identity: NodeIdentity) -> dict[str, str]:
    return {
        "node_id": device.node_id,
        "verify_key": identity.verify_key.hex(),
        "kx_key": identity.kx_public.hex(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SecureMesh storage example (a device)")
    parser.add_argument("--data-dir", required=True, type=Path, help="the device's data dir")
    parser.add_argument("--token", help="enroll first with this join token (smj1.…)")
    parser.add_argument("--node-id", help="node id to enroll as (with --token)")
    parser.add_argument(
        "--kdf-memlimit-mib",
        type=int,
        help="with --token: Argon2id memory for the key file (default 128; small devices: 16)",
    )
    parser.add_argument("--index", default="cloud-1", help="the node running the storage index")
    parser.add_argument("--k", type=int, default=2, help="shards needed to read a segment")
    parser.add_argument("--n", type=int, default=3, help="shards written per segment")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("keys", help="print this device's public keys (JSON)")
    put = sub.add_parser("put", help="store FILE as NAME")
    put.add_argument("name")
    put.add_argument("file", type=Path)
    get = sub.add_parser("get", help="read NAME into OUT")
    get.add_argument("name")
    get.add_argument("out", type=Path)
    get.add_argument("--owner", help="the owner's node id (an object shared with you)")
    get.add_argument("--owner-key", help="the owner's verify key, hex")
    share = sub.add_parser("share", help="let READER read NAME")
    share.add_argument("name")
    share.add_argument("reader")
    share.add_argument("reader_kx_key", help="the reader's X25519 key, hex")
    args = parser.parse_args(argv)
    if args.token and not args.node_id:
        parser.error("--token needs --node-id")
    passphrase = os.environ.get("SECUREMESH_PASSPHRASE")
    if not passphrase:
        print("error: set SECUREMESH_PASSPHRASE (it encrypts the device key)", file=sys.stderr)
        return 2
    try:
        return _run(args, passphrase)
    except (SecureMeshError, TimeoutError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, passphrase: str) -> int:
    if args.token:
        kdf = None
        if args.kdf_memlimit_mib is not None:
            kdf = KdfParams(opslimit=3, memlimit=args.kdf_memlimit_mib * 1024 * 1024)
        info = Device.enroll(
            args.token,
            data_dir=args.data_dir,
            node_id=args.node_id,
            passphrase=passphrase,
            kdf_params=kdf,
        )
        print(f"enrolled {info.node_id} (by {info.issuer})", file=sys.stderr)
    identity = NodeIdentity.load(args.data_dir / IDENTITY_FILE, passphrase)
    with Device.connect(args.data_dir, passphrase=passphrase, connect_timeout=args.timeout) as dev:
        if args.action == "keys":
            print(json.dumps(_keys(dev, identity)))
            return 0
        client = storage_client(
            dev, identity, index=args.index, k=args.k, n=args.n, timeout=args.timeout
        )
        if args.action == "put":
            with args.file.open("rb") as src:
                manifest = asyncio.run(client.put(args.name, src))
            print(
                f"stored {args.name}: {manifest.size} bytes, k={manifest.k} of n={manifest.n} "
                f"on {', '.join(manifest.placement)} (object {manifest.object_id})"
            )
        elif args.action == "get":
            owner_key = bytes.fromhex(args.owner_key) if args.owner_key else None
            tmp = args.out.with_name(args.out.name + ".part")
            try:
                with tmp.open("wb") as out:
                    report = asyncio.run(
                        client.get_into(args.name, out.write, owner=args.owner, owner_key=owner_key)
                    )
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(args.out)  # only a complete, verified object gets the name
            digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
            print(f"read {args.name} of {args.owner or dev.node_id}: sha256 {digest}")
            for segment, shard, node in report.corrupt:
                print(f"  segment {segment} shard {shard} from {node} was corrupt", file=sys.stderr)
            for segment, shard, node, why in report.missing:
                print(f"  segment {segment} shard {shard} from {node}: {why}", file=sys.stderr)
        else:
            manifest = asyncio.run(
                client.share(args.name, args.reader, bytes.fromhex(args.reader_kx_key))
            )
            print(f"shared {args.name}; readers now: {', '.join(sorted(manifest.readers))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
