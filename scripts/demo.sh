#!/usr/bin/env bash
# The one-command demo (README: "Run it"). It builds the release binaries, then
# starts, on loopback and in a temporary directory:
#   - supd (embedded store, dashboard on HTTP),
#   - AGENTS simulated 8-GPU sup-agents (drills allowed),
#   - the example trainer (examples/trainer/train.py) as a job on AGENTS-1 nodes,
#     so one node is the warm spare,
# prints the dashboard URL and supctl lines to try, and after DRILL_AFTER seconds
# (once the job has a checkpoint) injects Xid 79 ("GPU fallen off the bus") on a
# node of the job: watch the detection, the cordon, the spare swap and the resume
# from the newest checkpoint.
# Ctrl-C stops every process it started (the training ranks too).
#
#   AGENTS=4 GPUS=8 GRPC_PORT=7070 HTTP_PORT=7080 DRILL_AFTER=30 scripts/demo.sh
#   BIN=target/debug NO_BUILD=1 ...   use already built binaries (the tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

AGENTS=${AGENTS:-4}
GPUS=${GPUS:-8}
RANKS_PER_NODE=${RANKS_PER_NODE:-2}   # trainer processes per node (a laptop has few cores)
GRPC_PORT=${GRPC_PORT:-7070}
HTTP_PORT=${HTTP_PORT:-7080}
DRILL_AFTER=${DRILL_AFTER:-30}
BIN=${BIN:-target/release}
WORK=$(mktemp -d -t sup-demo.XXXXXX)
# Every process of this run inherits this marker (ranks too: the agent passes
# its environment on), so the cleanup finds whatever is left.
export SUP_DEMO_RUN="$WORK"

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p supd -p sup-agent -p supctl
fi
for b in supd sup-agent supctl; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b not found (build first, or unset NO_BUILD)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "the example trainer needs python3" >&2; exit 1; }

pids=()
cleaned=
cleanup() {
  [ -n "$cleaned" ] && return
  cleaned=1
  trap - INT TERM
  echo
  echo "stopping the demo..."
  # SIGTERM: agents stop their ranks (SIGTERM to each rank's group) first.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # Anything else of this run (a rank whose agent was killed): by its marker.
  for env in /proc/[0-9]*/environ; do
    p=${env#/proc/}; p=${p%/environ}
    [ "$p" = "$$" ] && continue
    # 2>/dev/null first: a process gone meanwhile fails the < redirection itself.
    if tr '\0' '\n' 2>/dev/null < "$env" | grep -qxF "SUP_DEMO_RUN=$WORK"; then
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  echo "demo stopped; logs and state are in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MASTER_PORT=$(( (RANDOM % 20000) + 30000 ))
cat > "$WORK/supd.toml" <<TOML
[nodes]
telemetry_interval = "1s"
unreachable_after = "15s"
[jobs]
master_port = $MASTER_PORT
stop_grace = "3s"
spares_target = 1
TOML
"$BIN/supd" --config "$WORK/supd.toml" --data-dir "$WORK/supd-data" \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --plaintext >"$WORK/supd.log" 2>&1 &
pids+=($!)

export SUP_SUPERVISOR="http://127.0.0.1:$GRPC_PORT"
ctl() { "$BIN/supctl" "$@"; }
for _ in $(seq 1 100); do
  ctl status >/dev/null 2>&1 && break
  sleep 0.2
done

for i in $(seq 1 "$AGENTS"); do
  "$BIN/sup-agent" --supervisor "$SUP_SUPERVISOR" \
    --node-id "node-$i" --address 127.0.0.1 --gpu-backend "sim:$GPUS" \
    --state-dir "$WORK/agent-$i" --allow-drills --telemetry-interval 1s \
    >"$WORK/agent-$i.log" 2>&1 &
  pids+=($!)
done

ready_nodes() { ctl nodes -o json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin) if n.get("state")=="ready"))' 2>/dev/null || echo 0; }
for _ in $(seq 1 150); do
  [ "$(ready_nodes)" -ge "$AGENTS" ] && break
  sleep 0.2
done

JOB_NODES=$(( AGENTS > 1 ? AGENTS - 1 : 1 ))
mkdir -p "$WORK/checkpoints"
cat > "$WORK/demo-job.toml" <<TOML
name = "demo-llm"
command = ["python3", "$PWD/examples/trainer/train.py", "--steps", "100000", "--checkpoint-every", "10", "--step-time", "0.2", "--params", "4096"]
nodes = $JOB_NODES
min_nodes = 1
gpus_per_node = $RANKS_PER_NODE
checkpoint_dir = "$WORK/checkpoints"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 20
TOML
ctl job submit "$WORK/demo-job.toml"

cat <<TXT

sup demo: supd, $AGENTS simulated ${GPUS}-GPU nodes (one is the spare) and the example
trainer as job demo-llm on $JOB_NODES nodes. Logs and state: $WORK

  Dashboard:  http://127.0.0.1:$HTTP_PORT/
  Try:        SUP_SUPERVISOR=$SUP_SUPERVISOR $BIN/supctl status --watch

In ${DRILL_AFTER}s a drill injects Xid 79 on a node of the job. Ctrl-C stops everything.
TXT

# Sleep in short steps so that Ctrl-C is handled at once.
for _ in $(seq 1 $(( DRILL_AFTER * 5 ))); do sleep 0.2; done
# The drill is there to show a resume from the newest checkpoint, so it waits
# (a minute at most) for the job to be running with one: a slow machine may
# need longer than DRILL_AFTER to get there.
victim=
for _ in $(seq 1 300); do
  victim=$(ctl status -o json 2>/dev/null | python3 -c 'import json,sys
jobs=[j for j in json.load(sys.stdin).get("jobs",[]) if j.get("name")=="demo-llm"]
j=jobs[0] if jobs else {}
print(j["nodes"][0] if j.get("state")=="running" and j.get("nodes") and j.get("checkpoint") else "")' 2>/dev/null || true)
  [ -n "$victim" ] && break
  sleep 0.2
done
if [ -n "$victim" ]; then
  echo
  echo "== drill: Xid 79 on $victim GPU 0 (watch the dashboard)"
  ctl drill xid --node "$victim" --gpu 0 --xid 79 || true
else
  echo "== the job is not running with a checkpoint yet; no drill"
fi
while :; do sleep 0.2; done
