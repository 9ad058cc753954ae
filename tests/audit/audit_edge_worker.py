"""An edge process for the fault test: write events to a durable outbox while shipping them.

Run as ``python audit_edge_worker.py --outbox PATH --node-id ID --seed HEX --count N
--endpoint-file PATH --server-key-file PATH --client-secret-file PATH`` (the service
must list ``PATH.pub``). Exits 0 once all ``N`` events
were produced and the outbox is empty (every event acknowledged by the cloud).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_log_helpers import make_events

from securemesh.audit.ingest import IngestClient, load_or_create_curve_key
from securemesh.audit.outbox import Outbox, ship_once
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import TransportError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outbox", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--seed", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--endpoint-file", required=True)
    ap.add_argument("--server-key-file", required=True)
    ap.add_argument("--client-secret-file", required=True)
    ap.add_argument("--batch", type=int, default=25)
    args = ap.parse_args()

    signer = Ed25519Signer.from_seed(bytes.fromhex(args.seed))
    events = make_events(signer, args.node_id, args.count)
    endpoint = Path(args.endpoint_file).read_text().strip()
    server_public = Path(args.server_key_file).read_bytes().strip()
    keypair = load_or_create_curve_key(args.client_secret_file)
    client = IngestClient(endpoint, server_public=server_public, keypair=keypair, timeout_ms=500)
    outbox = Outbox(args.outbox, keep_receipts=True)
    produced = 0
    while produced < len(events) or outbox.pending_count():
        for event in events[produced : produced + 10]:
            outbox.put(event)  # durable before the event "happened" for the edge
        produced = min(produced + 10, len(events))
        with contextlib.suppress(TransportError):  # the cloud is away: events wait
            ship_once(outbox, client.send_batch, limit=args.batch)
    client.close()
    outbox.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
