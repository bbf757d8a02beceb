#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) and
# prints each target's execution count. Not part of CI: it needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh            # every target, 60 s each
#   SECONDS_EACH=300 scripts/fuzz.sh jobspec xid_line
#
# A crash leaves its input under fuzz/artifacts/<target>/; fix the bug and
# keep the input as a regression test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
each="${SECONDS_EACH:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$each" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    if [ -z "$execs" ]; then
        execs="$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')"
    fi
    printf '%-16s %-6s %12s executions in %ss\n' "$t" "$result" "${execs:-?}" "$each"
    [ "$result" = ok ] || tail -40 "$log"
    rm -f "$log"
done
exit $status
