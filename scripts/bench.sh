#!/usr/bin/env bash
# Benchmarks (figures, not pass/fail): the load generator against a real supd,
# the agent's own cost, and the goodput simulator. See BENCHMARKS.md.
#
#   scripts/bench.sh                 # 2,048 nodes × 8 GPUs at 1 Hz, 60 s steady window
#   NODES=50 STEADY=5 scripts/bench.sh smoke
#   RATE=10 scripts/bench.sh         # stress: 10 reports/s per agent
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-2048}
RATE=${RATE:-1}
STEADY=${STEADY:-60}
SPARES=${SPARES:-20}
what=${1:-all}

cargo build --release -p supd -p sup-agent -p sup-loadgen -p fake-nvml --bins --examples

# One socket per simulated agent in the load generator and one in supd.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

case "$what" in
  smoke)
    target/release/sup-loadgen --nodes "$NODES" --spares 3 --steady-secs "$STEADY" \
      --swap-faults 3 --shrink-faults 3 --vanish 5 --rate "$RATE"
    ;;
  all|load)
    target/release/sup-loadgen --nodes "$NODES" --spares "$SPARES" --steady-secs "$STEADY" --rate "$RATE"
    ;;&
  all|agent)
    target/release/examples/probe_cost --agent target/release/sup-agent \
      --lib target/release/libfake_nvml.so --seconds "${AGENT_SECONDS:-180}"
    ;;&
  all|sim)
    target/release/supd simulate
    ;;
esac
