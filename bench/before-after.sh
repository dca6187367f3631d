#!/usr/bin/env bash
# Two builds of kvstore-server side by side in one run, under the same loads: the
# way a change's speed is judged on a noisy machine (ratios, not absolute figures).
#
#   bench/before-after.sh BEFORE_RELEASE_DIR [AFTER_RELEASE_DIR]
#
# e.g. `git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build
# --release --bins)`, then `bench/before-after.sh
# /tmp/before/target/release`. AFTER defaults to this tree's target/release (built
# first unless SKIP_BUILD=1). The reference (bare actix-web, the HTTP ceiling) comes
# from AFTER.
#
# The loads, each on both builds with their default settings, one after the other:
#   GET  /v1/kv/bench-key (100-byte value) at CONNECTIONS
#   PUT  the same key, durable, at CONNECTIONS
#   kv bench watch --watchers WATCHERS --rate 100: delivery p99 from the put's ack
#
# Environment: DURATION=10, CONNECTIONS=64, THREADS=1, WATCHERS=1000,
# WATCH_DURATION=10, SKIP_BUILD=0 (as in compare.sh), KVSTORE_LOG: RUST_LOG of both
# servers (unset: each build's own default, which is what its users get).
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WATCHERS=${WATCHERS:-1000}
WATCH_DURATION=${WATCH_DURATION:-10}
KVSTORE_LOG=${KVSTORE_LOG:-}
SKIP_BUILD=${SKIP_BUILD:-0}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
KEY=bench-key
VALUE=$(printf 'v%.0s' $(seq 1 100))
NAME=before-after.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

[ $# -ge 1 ] || die "usage: $NAME BEFORE_RELEASE_DIR [AFTER_RELEASE_DIR]"
BEFORE=$(cd "$1" && pwd)
AFTER=${2:-$ROOT/target/release}
if [ $# -lt 2 ] && [ "$SKIP_BUILD" != 1 ]; then
    log "building the release binaries"
    (cd "$ROOT" && cargo build --release -p kvstore-server -p kv-cli -p kvstore-bench --bins)
fi
AFTER=$(cd "$AFTER" && pwd)
for bin in "$BEFORE/kvstore-server" "$AFTER/kvstore-server" "$AFTER/kv" "$AFTER/reference"; do
    [ -x "$bin" ] || die "$bin is missing"
done
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"

# start NAME BIN: a server on a port of its choosing; its address into ADDR[NAME],
# its pid into PID[NAME].
declare -A ADDR PID
start() {
    local name=$1 bin=$2
    mkdir -p "$WORK/$name"
    env ${KVSTORE_LOG:+RUST_LOG=$KVSTORE_LOG} "$bin" --listen 127.0.0.1:0 --data-dir "$WORK/$name/data" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    ADDR[$name]=$(wait_listening "$name" "${PID[$name]}" "$WORK/$name.out")
    curl -sf -X PUT --data-binary "$VALUE" "http://${ADDR[$name]}/v1/kv/$KEY" >/dev/null ||
        die "cannot put $KEY on $name"
}

"$AFTER/reference" 127.0.0.1:0 >"$WORK/reference.out" 2>"$WORK/reference.err" &
PIDS+=("$!")
REF=$(wait_listening reference "$!" "$WORK/reference.out")
start before "$BEFORE/kvstore-server"
start after "$AFTER/kvstore-server"

declare -A WATCH_P99 WATCH_MISSED
watch_load() {
    local name=$1 out="$WORK/watch-$1.json"
    log "kv bench watch on $name: $WATCHERS watchers, 100 puts/s, $WATCH_DURATION s"
    timeout "$((WATCH_DURATION + 120))" "$AFTER/kv" --url "http://${ADDR[$name]}" -o json \
        bench watch --watchers "$WATCHERS" --rate 100 --duration "$WATCH_DURATION" \
        --server-pid "${PID[$name]}" >"$out" 2>"$WORK/watch-$name.err" &
    CHILD=$!
    wait "$CHILD" || log "kv bench watch on $name failed: $(tail -n 1 "$WORK/watch-$name.err")"
    CHILD=
    WATCH_P99[$name]=$(grep -o '"delivery_latency_ms":{[^}]*}' "$out" | sed -n 's/.*"p99":\([0-9.eE+-]*\).*/\1/p')
    WATCH_MISSED[$name]=$(sed -n 's/.*"missed":\([0-9]*\).*/\1/p' "$out")
}

LOAD_BEFORE=$(cut -d ' ' -f 1 /proc/loadavg)
run_wrk get.reference "$CONNECTIONS" "http://$REF/v1/kv/$KEY"
for name in before after; do run_wrk "get.$name" "$CONNECTIONS" "http://${ADDR[$name]}/v1/kv/$KEY"; done
for name in before after; do run_wrk "put.$name" "$CONNECTIONS" "http://${ADDR[$name]}/v1/kv/$KEY" put.lua; done
for name in before after; do watch_load "$name"; done
LOAD_AFTER=$(cut -d ' ' -f 1 /proc/loadavg)

row() { printf '%-30s %12s %12s %8s\n' "$@"; }
{
    echo
    row "load" "before" "after" "after/before"
    row "GET @$CONNECTIONS (req/s)" "${RPS[get.before]}$(mark get.before)" "${RPS[get.after]}$(mark get.after)" \
        "$(ratio "${RPS[get.after]}" "${RPS[get.before]}")"
    row "PUT @$CONNECTIONS durable (req/s)" "${RPS[put.before]}$(mark put.before)" "${RPS[put.after]}$(mark put.after)" \
        "$(ratio "${RPS[put.after]}" "${RPS[put.before]}")"
    row "watch p99 (ms), $WATCHERS watchers" "${WATCH_P99[before]:-?}" "${WATCH_P99[after]:-?}" ""
    row "watch missed" "${WATCH_MISSED[before]:-?}" "${WATCH_MISSED[after]:-?}" ""
    echo
    echo "GET vs the reference (${RPS[get.reference]} req/s): before $(ratio "${RPS[get.before]}" "${RPS[get.reference]}"), after $(ratio "${RPS[get.after]}" "${RPS[get.reference]}")"
    echo "p99 latency: GET ${P99[get.before]} / ${P99[get.after]}, PUT ${P99[put.before]} / ${P99[put.after]} (before / after)"
    echo "load average: $LOAD_BEFORE before the loads, $LOAD_AFTER after; '!' marks a load with errors"
}
