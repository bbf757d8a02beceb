#!/usr/bin/env bash
# Failover of supd replicas (issue 15), without agents: a real etcd (one
# member, on loopback), two supd replicas (a leads, b stands by); RUNS times,
# at a random point of the leader's renewal cycle, the leader is SIGKILLed
# and the time until the standby's /readyz answers 200 is printed; the
# killed one is started again (as the next standby).
#
#   scripts/bench-failover.sh [LEASE] [RUNS]     (default 3s, 10)
#
# Needs etcd (Debian etcd-server) and curl; builds supd (release) if needed.
# Uses ports 23791/23801 (etcd) and 17071-17082 (supd) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
lease=${1:-3s}
runs=${2:-10}
[ -x target/release/supd ] || cargo build --release -p supd
supd=$PWD/target/release/supd
dir=$(mktemp -d)
cleanup() {
  pkill -f "supd --config $dir/supd.toml" 2>/dev/null || true
  [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:23791 \
  --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls http://127.0.0.1:23801 \
  --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster default=http://127.0.0.1:23801 > "$dir/etcd.log" 2>&1 &
etcd_pid=$!
until etcdctl --endpoints=http://127.0.0.1:23791 endpoint health >/dev/null 2>&1; do sleep 0.2; done
printf '[store]\nbackend = "etcd"\netcd_endpoints = ["http://127.0.0.1:23791"]\nleader_lease = "%s"\n' \
  "$lease" > "$dir/supd.toml"
start() { # ID N: replica ID on ports 1707N (gRPC) and 1708N (HTTP)
  "$supd" --config "$dir/supd.toml" --plaintext --id "$1" --data-dir "$dir/$1" \
    --grpc-addr "127.0.0.1:1707$2" --http-addr "127.0.0.1:1708$2" >> "$dir/$1.log" 2>&1 &
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:1708$1/readyz")" = 200 ]; }
standing_by() { curl -s "127.0.0.1:1708$1/readyz" | grep -q standby; }
start a 1
until ready 1; do sleep 0.05; done
start b 2
until standing_by 2; do sleep 0.05; done
leader=1
echo "lease $lease, $runs runs: ms from the leader's SIGKILL to the standby's /readyz 200"
for i in $(seq 1 "$runs"); do
  other=$((3 - leader))
  id=$([ "$leader" = 1 ] && echo a || echo b)
  sleep "$((RANDOM % 3)).$((RANDOM % 10))"
  t0=$(date +%s%N)
  pkill -9 -f "supd --config $dir/supd.toml .*--id $id "
  until ready "$other"; do sleep 0.02; done
  t1=$(date +%s%N)
  echo "run $i: $(( (t1 - t0) / 1000000 )) ms"
  start "$id" "$leader"
  until standing_by "$leader"; do sleep 0.05; done
  leader=$other
done
