#!/usr/bin/env bash
# Bring up the three-edge deployment of this directory on ONE host, as a trial:
# cloud-1 and edge-1..3 as background daemons from cloud.toml and edge-N.toml,
# data dirs under $SM_ROOT. On real servers the same steps run one per host
# (README.md, docs/operations.md). Idempotent: a node already initialised or
# enrolled keeps its keys; a node already running is left alone.
#
#   export SECUREMESH_PASSPHRASE=...   # encrypts every node's keys
#   SM_ROOT=/tmp/mesh examples/deploy/up.sh
#   SM_ROOT=/tmp/mesh examples/deploy/down.sh
#
# SM_ROOT   data dirs, configs and logs (default ./mesh)
# SM_HOST   the address the daemons listen on (default 127.0.0.1)
# SM_PORT   the cloud's port; edge-N listens on SM_PORT+N (default 7100)
# SM_WAIT   seconds to wait for each step (default 60)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=${SM_ROOT:-$PWD/mesh}
host=${SM_HOST:-127.0.0.1}
base=${SM_PORT:-7100}
wait_s=${SM_WAIT:-60}
: "${SECUREMESH_PASSPHRASE:?set SECUREMESH_PASSPHRASE (it encrypts every node key)}"
mkdir -p "$root"
root=$(cd "$root" && pwd)

say() { printf 'up.sh: %s\n' "$*" >&2; }

# render NAME PORT CURVE_KEY: NAME.toml with this host's paths, addresses and the
# cloud's CURVE key (a Z85 key has no quote or backslash: safe in awk -v)
render() {
    sed -e "s#/var/lib/securemesh#$root#" \
        -e "s#tcp://0.0.0.0:[0-9]*#tcp://$host:$2#" \
        -e "s#tcp://cloud.example.net:7100#tcp://$host:$base#" "$here/$1.toml" |
        awk -v key="$3" '/^curve_key = / && key != "" { print "curve_key = \"" key "\""; next } { print }'
}

# start NAME: `securemesh node run` in the background, log appended to NAME.log
start() {
    if securemesh node status --data-dir "$root/$1" >/dev/null 2>&1; then
        say "$1 is already running"
        return
    fi
    nohup securemesh node run --data-dir "$root/$1" </dev/null >/dev/null 2>>"$root/$1.log" &
    say "started $1 (pid $!, log $root/$1.log)"
}

# wait_for WHAT COMMAND...: run COMMAND until it succeeds, at most $wait_s seconds
wait_for() {
    local what=$1 deadline=$((SECONDS + wait_s))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            say "timed out waiting for $what"
            exit 1
        fi
        sleep 0.25
    done
}

# 1. the cloud: the mesh authority, the audit log key, the storage index
if [[ ! -e "$root/cloud-1/identity.key" ]]; then
    securemesh init --data-dir "$root/cloud-1" --authority-id mesh \
        --cloud-node-id cloud-1 --listen "tcp://$host:$base"
fi
render cloud "$base" "" >"$root/cloud-1/node.toml"
start cloud-1
# alive: it wrote `ready` (once it listens) and `node status` exits 0
cloud_alive() { test -e "$root/cloud-1/ready" && securemesh node status --data-dir "$root/cloud-1"; }
wait_for "cloud-1 to be alive" cloud_alive

# 2. each edge: a delegated edge token from the cloud, enrollment, its config
tokens=()
for n in 1 2 3; do
    if [[ ! -e "$root/edge-$n/node.cert" ]]; then
        tokens[n]=$(securemesh token create --data-dir "$root/cloud-1" --tier edge --delegate --ttl 10m)
    fi
done
for n in 1 2 3; do
    edge=edge-$n
    if [[ -n "${tokens[n]:-}" ]]; then
        # the running cloud admits the tokens' keys on its next status tick
        securemesh enroll --data-dir "$root/$edge" --token "${tokens[n]}" --node-id "$edge" \
            --listen "tcp://$host:$((base + n))" --timeout 30
    fi
    key=$(sed -n 's/^curve_key = "\(.*\)"$/\1/p' "$root/$edge/node.toml")
    (umask 077 && render "$edge" "$((base + n))" "$key" >"$root/$edge/node.toml.new")
    mv "$root/$edge/node.toml.new" "$root/$edge/node.toml"   # 0600, as enroll wrote it
    start "$edge"
done

# 3. every edge connected to the cloud: the cloud's fleet view (its status.json,
# what `securemesh node list` prints) lists it connected with a first heartbeat
# (node.report, which the storage index reads to place shards; it comes
# heartbeat_interval after the edge connected), and the edge's own status says
# its parent link is up. Read straight from the files: cheap to poll.
edges_connected() {
    python3 - "$root" <<'EOF'
import json, sys
root = sys.argv[1]
def status(node):
    with open(f"{root}/{node}/status.json") as f:
        return json.load(f)
up = {c["node_id"] for c in status("cloud-1")["children"]
      if c["connected"] and c["load_1m"] is not None}
edges = ("edge-1", "edge-2", "edge-3")
ok = set(edges) <= up and all((status(e).get("parent") or {}).get("connected") for e in edges)
sys.exit(0 if ok else 1)
EOF
}
wait_for "edge-1..3 to connect to cloud-1 and report" edges_connected
securemesh node list --data-dir "$root/cloud-1"
say "up: cloud-1 on tcp://$host:$base, edge-1..3 on ports $((base + 1))..$((base + 3))"
