#!/usr/bin/env bash
# Disk per retained change: the same durable puts on two builds of kvstore-server
# (before and after a change to what a write stores), each on a fresh data dir,
# stopped gracefully, then `du` of the data dir over the store's revision.
#
#   bench/history-size.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR
#
# AFTER_RELEASE_DIR's `kv bench put` writes REQUESTS puts of VALUE_SIZE bytes over
# KEYS keys in turn, with CLIENTS clients (every put its own revision; none is
# compacted: the default --retain-revisions keeps 100,000).
#
# Environment: REQUESTS=50000, KEYS=1000, VALUE_SIZE=100, CLIENTS=16.
set -euo pipefail

REQUESTS=${REQUESTS:-50000}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-100}
CLIENTS=${CLIENTS:-16}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
NAME=history-size.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

[ $# -eq 2 ] || die "usage: $NAME BEFORE_RELEASE_DIR AFTER_RELEASE_DIR"
BEFORE=$(cd "$1" && pwd)
AFTER=$(cd "$2" && pwd)
for bin in "$BEFORE/kvstore-server" "$AFTER/kvstore-server" "$AFTER/kv"; do
    [ -x "$bin" ] || die "$bin is missing"
done

declare -A BYTES REVISION
measure() {
    local name=$1 bin=$2 pid addr
    mkdir -p "$WORK/$name"
    "$bin" --listen 127.0.0.1:0 --data-dir "$WORK/$name/data" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    pid=$!
    PIDS+=("$pid")
    addr=$(wait_listening "$name" "$pid" "$WORK/$name.out")
    log "$name: $REQUESTS puts of $VALUE_SIZE bytes over $KEYS keys"
    "$AFTER/kv" --url "http://$addr" bench put --clients "$CLIENTS" --requests "$REQUESTS" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" >"$WORK/$name.bench" 2>&1 ||
        die "kv bench put on $name failed: $(tail -n 3 "$WORK/$name.bench")"
    REVISION[$name]=$(curl -sf "http://$addr/healthz" | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
    # A graceful stop flushes everything.
    kill -TERM "$pid"
    wait "$pid" || true
    BYTES[$name]=$(du -sb "$WORK/$name/data" | cut -f 1)
}

measure before "$BEFORE/kvstore-server"
measure after "$AFTER/kvstore-server"

per() { awk -v b="$1" -v r="$2" 'BEGIN { if (r > 0) printf "%.0f", b / r; else print "-" }'; }
row() { printf '%-10s %12s %12s %16s\n' "$@"; }
{
    echo
    row "build" "revision" "bytes" "bytes/revision"
    for name in before after; do
        row "$name" "${REVISION[$name]}" "${BYTES[$name]}" "$(per "${BYTES[$name]}" "${REVISION[$name]}")"
    done
    echo
    echo "after - before: $(awk -v a="${BYTES[after]}" -v b="${BYTES[before]}" -v r="${REVISION[after]}" \
        'BEGIN { printf "%.0f bytes per retained change", (a - b) / r }') ($VALUE_SIZE-byte values, $KEYS keys)"
}
