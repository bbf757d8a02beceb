#!/usr/bin/env bash
# The etcd store's write rate (a figure, not a test; issue 15): a 3-member etcd on loopback
# (Debian's etcd-server, --heartbeat-interval 100 --election-timeout 500), supd with
# [store] backend = "etcd" started by sup-loadgen, whose simulated nodes report telemetry at
# 1 Hz and take its spare-swap, shrink and vanish faults. etcd's own counters (member 1's
# /metrics: every member applies every write) are sampled once a second; the summary counts
# write transactions (revisions), keys put, delete operations and bytes, per second.
#
#   scripts/bench-etcd-writes.sh                       # 2,048 nodes, 60 s steady window
#   NODES=256 STEADY=20 SWAPS=4 SHRINKS=4 VANISH=5 scripts/bench-etcd-writes.sh
#   NO_BUILD=1 BIN=/some/dir scripts/bench-etcd-writes.sh   # binaries built elsewhere
#   KEEP=/tmp/run scripts/bench-etcd-writes.sh       # keep supd's log and the samples there
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-2048}
STEADY=${STEADY:-60}
SPARES=${SPARES:-20}
SWAPS=${SWAPS:-10}
SHRINKS=${SHRINKS:-10}
VANISH=${VANISH:-20}
BIN=${BIN:-target/release}
PORT_BASE=${PORT_BASE:-23790}

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p supd -p sup-loadgen
fi
command -v etcd >/dev/null || { echo "needs etcd: apt-get install etcd-server etcd-client" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then cp "$work/samples" "$work"/etcd-m*.log "$KEEP/" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cluster="" endpoints=""
for i in 1 2 3; do
  cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT_BASE + 2 * i + 1))"
  endpoints+="${endpoints:+,}http://127.0.0.1:$((PORT_BASE + 2 * i))"
done
for i in 1 2 3; do
  client=http://127.0.0.1:$((PORT_BASE + 2 * i))
  peer=http://127.0.0.1:$((PORT_BASE + 2 * i + 1))
  etcd --name "m$i" --data-dir "$work/m$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$$" \
    --heartbeat-interval 100 --election-timeout 500 --logger zap --log-level warn \
    >"$work/etcd-m$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.3
done
ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health

metrics=http://127.0.0.1:$((PORT_BASE + 2))/metrics
sample() {
  curl -s "$metrics" | awk -v t="$(date +%s.%N)" '
    $1 == "etcd_debugging_mvcc_current_revision" { rev = $2 }
    $1 == "etcd_mvcc_put_total" { put = $2 }
    $1 == "etcd_mvcc_delete_total" { del = $2 }
    $1 == "etcd_debugging_mvcc_total_put_size_in_bytes" { bytes = $2 }
    $1 == "etcd_mvcc_db_total_size_in_bytes" { db = $2 }
    END { printf "%s %d %d %d %d %d\n", t, rev, put, del, bytes, db }'
}
(while true; do sample; sleep 1; done) >"$work/samples" &
pids+=($!)

echo "== sup-loadgen: $NODES nodes on etcd $endpoints"
SUPD_STORE_BACKEND=etcd SUPD_ETCD_ENDPOINTS="$endpoints" \
  "$BIN/sup-loadgen" --supd "$BIN/supd" --nodes "$NODES" --spares "$SPARES" \
  --steady-secs "$STEADY" --swap-faults "$SWAPS" --shrink-faults "$SHRINKS" --vanish "$VANISH" \
  ${KEEP:+--keep-dir "$KEEP"}
sample >>"$work/samples"

echo "== etcd writes (member 1's counters, sampled each second)"
awk '
  NR == 1 { t0 = $1; r0 = $2; p0 = $3; d0 = $4; b0 = $5; pt = $1; pr = $2; pp = $3; next }
  {
    dt = $1 - pt; if (dt <= 0) next
    txn = ($2 - pr) / dt; keys = ($3 - pp) / dt
    if ($2 > pr) { if (!first) first = pt; last = $1 }
    n++; txns[n] = txn; puts[n] = keys
    if (txn > maxt) maxt = txn; if (keys > maxk) maxk = keys
    if (txn == 0) idle++
    pt = $1; pr = $2; pp = $3
    rev = $2; put = $3; del = $4; bytes = $5; db = $6; tn = $1
  }
  function pct(a, n, q,   i, j, x, s) {
    for (i = 1; i <= n; i++) s[i] = a[i]
    for (i = 2; i <= n; i++) { x = s[i]; for (j = i - 1; j >= 1 && s[j] > x; j--) s[j + 1] = s[j]; s[j + 1] = x }
    return s[int((n - 1) * q) + 1]
  }
  END {
    span = last - first; if (span <= 0) span = 1
    printf "run: %.0f s sampled, writes during %.0f s of it (%d one-second samples with none)\n", tn - t0, span, idle
    printf "write transactions: %d in all, %.1f/s over the writing span, %.1f/s over the run; per second p50 %.0f, p99 %.0f, max %.0f\n",
      rev - r0, (rev - r0) / span, (rev - r0) / (tn - t0), pct(txns, n, 0.5), pct(txns, n, 0.99), maxt
    printf "keys put: %d in all, %.1f/s over the writing span; per second p50 %.0f, p99 %.0f, max %.0f\n",
      put - p0, (put - p0) / span, pct(puts, n, 0.5), pct(puts, n, 0.99), maxk
    printf "delete operations (a trim of the event log is one): %d\n", del - d0
    printf "bytes put: %.1f MiB (%.1f KiB/s over the writing span); etcd database now %.1f MiB\n",
      (bytes - b0) / 1048576, (bytes - b0) / 1024 / span, db / 1048576
  }' "$work/samples"
