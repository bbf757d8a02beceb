#!/usr/bin/env bash
# The demo (README: "Run it"): builds the release binaries, starts supd and a few
# simulated sup-agents on loopback, shows `supctl status`, and keeps them running
# until Ctrl-C. Everything it starts is stopped when it exits.
#
#   AGENTS=3 GPUS=8 GRPC_PORT=7070 HTTP_PORT=7080 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

AGENTS=${AGENTS:-3}
GPUS=${GPUS:-8}
GRPC_PORT=${GRPC_PORT:-7070}
HTTP_PORT=${HTTP_PORT:-7080}
WORK=$(mktemp -d -t sup-demo.XXXXXX)
BIN=target/release

cargo build --release --bins

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped; logs and state in $WORK"
}
trap cleanup EXIT INT TERM

"$BIN/supd" --data-dir "$WORK/supd-data" \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  >"$WORK/supd.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

for i in $(seq 1 "$AGENTS"); do
  "$BIN/sup-agent" --supervisor "http://127.0.0.1:$GRPC_PORT" \
    --node-id "node-$i" --address 127.0.0.1 --gpu-backend "sim:$GPUS" \
    >"$WORK/agent-$i.log" 2>&1 &
  pids+=($!)
done

export SUP_SUPERVISOR="http://127.0.0.1:$GRPC_PORT"
sleep 7   # first telemetry turns nodes from joining to ready
"$BIN/supctl" status
cat <<TXT

supd and $AGENTS simulated agents are running (logs in $WORK).
Try, in another terminal:
  export SUP_SUPERVISOR=$SUP_SUPERVISOR
  $BIN/supctl nodes
  $BIN/supctl cordon node-2 --reason "game day"
  $BIN/supctl events
  curl -s http://127.0.0.1:$HTTP_PORT/metrics
Ctrl-C stops everything.
TXT
wait
