#!/usr/bin/env bash
# Stop the daemons up.sh started: the edges (in parallel), then the cloud. Each
# `node stop` waits until its daemon drained and exited. Data dirs stay.
#   SM_ROOT=/tmp/mesh examples/deploy/down.sh
set -euo pipefail
root=${SM_ROOT:-$PWD/mesh}
pids=()
for node in edge-1 edge-2 edge-3; do
    if [[ -d "$root/$node" ]]; then
        securemesh node stop --data-dir "$root/$node" &
        pids+=($!)
    fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
if [[ -d "$root/cloud-1" ]]; then
    securemesh node stop --data-dir "$root/cloud-1"
fi
