#!/usr/bin/env bash
# Failover of supd replicas with simulated agents (issue 15; BENCHMARKS.md
# §4): sup-loadgen starts a 3-member etcd and two supd replicas on loopback,
# registers NODES simulated agents (each given both URLs, sup-agent's
# rotation and backoff), runs a job, and SIGKILLs the leader RUNS times,
# measuring the leader's kill → every agent registered with the new leader
# and an Xid fault decided. Four settings: leader_lease 3 s and 2 s, each
# with sup-agent's default reconnect_max_backoff (10 s) and with 1 s.
#
#   scripts/bench-failover-loadgen.sh [NODES] [RUNS]     (default 2048, 8)
#
# Needs etcd (Debian etcd-server). Builds supd and sup-loadgen (release)
# unless SUPD / LOADGEN name the binaries. Each setting runs under
# `flock /tmp/sup-bench.lock`, so benchmarks never overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-2048}
runs=${2:-8}
supd=${SUPD:-target/release/supd}
loadgen=${LOADGEN:-target/release/sup-loadgen}
if [ -z "${SUPD:-}${LOADGEN:-}" ]; then
  cargo build --release -p supd -p sup-loadgen
fi
ulimit -n $((nodes + 4096))
for lease in 3 2; do
  for max_backoff in 10000 1000; do
    echo "### leader_lease ${lease} s, agents' reconnect_max_backoff ${max_backoff} ms"
    flock /tmp/sup-bench.lock "$loadgen" --supd "$supd" --nodes "$nodes" --spares 20 \
      --replicas 2 --failover-runs "$runs" --leader-lease-secs "$lease" \
      --reconnect-max-backoff-ms "$max_backoff"
  done
done
