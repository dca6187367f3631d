#!/usr/bin/env bash
# What an export costs the server in memory: restores KEYS keys of 100 bytes into a
# fresh kvstore-server, restarts it (a cold cache, as after a deploy), then runs
# `kv export > /dev/null` with and without concurrent puts while sampling the
# server's VmRSS every 50 ms, and prints the rise over the RSS just before.
#
#   bench/export.sh                 # 1,000,000 keys
#   KEYS=100000 bench/export.sh
#
# Environment: KEYS=1000000, KVSTORE_LOG=warn, SKIP_BUILD=0, SERVER_FLAGS="" (flags
# of kvstore-server besides --listen and --data-dir; the defaults otherwise).
set -euo pipefail

KEYS=${KEYS:-1000000}
KVSTORE_LOG=${KVSTORE_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}
SERVER_FLAGS=${SERVER_FLAGS:-}
case $KEYS in '' | *[!0-9]* | 0) echo "export.sh: KEYS must be a positive integer" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
NAME=export.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

cd "$ROOT"
if [ "$SKIP_BUILD" != 1 ]; then
    log "building the release binaries"
    cargo build --release -p kvstore-server -p kv-cli --bins
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN="$TARGET_DIR/release/kvstore-server"
KV_BIN="$TARGET_DIR/release/kv"

# start: the server on the work dir's data; its pid into SERVER_PID, address into URL.
start() {
    # shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
    RUST_LOG=$KVSTORE_LOG "$SERVER_BIN" --listen 127.0.0.1:0 --data-dir "$WORK/data" $SERVER_FLAGS \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    URL="http://$(wait_listening server "$SERVER_PID" "$WORK/server.out")"
}
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status"; }

# export_peak: runs `kv export` and prints "BEFORE PEAK" (kB) of the server's RSS.
export_peak() {
    local before peak r
    before=$(rss)
    peak=$before
    "$KV_BIN" --url "$URL" export >/dev/null &
    CHILD=$!
    while kill -0 "$CHILD" 2>/dev/null; do
        r=$(rss)
        [ "$r" -le "$peak" ] || peak=$r
        sleep 0.05
    done
    wait "$CHILD" || die "kv export failed"
    CHILD=
    echo "$before $peak"
}

log "writing a snapshot of $KEYS keys"
VALUE=$(printf 'v%.0s' $(seq 1 100))
awk -v n="$KEYS" -v v="$VALUE" 'BEGIN {
    printf "{\"format\":\"kvstore.snapshot.v1\",\"revision\":%d}\n", n
    for (i = 1; i <= n; i++)
        printf "{\"key\":\"k/%08d\",\"value\":\"%s\",\"create_revision\":%d,\"mod_revision\":%d,\"version\":1}\n", i, v, i, i
}' >"$WORK/snapshot.ndjson"

start
log "restoring it"
"$KV_BIN" --url "$URL" import <"$WORK/snapshot.ndjson" >&2
rm -f "$WORK/snapshot.ndjson"
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
start

read -r quiet_before quiet_peak < <(export_peak)
"$KV_BIN" --url "$URL" bench put --keys 1000 --clients 4 --duration 30 >"$WORK/puts.out" 2>&1 &
PUTS=$!
PIDS+=("$PUTS")
read -r busy_before busy_peak < <(export_peak)
kill "$PUTS" 2>/dev/null || true

mb() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1024 }'; }
echo
printf '%-34s %12s %12s %10s\n' "export of $KEYS keys" "RSS before" "RSS peak" "rise (MB)"
printf '%-34s %12s %12s %10s\n' "quiet" "${quiet_before} kB" "${quiet_peak} kB" "$(mb "$quiet_before" "$quiet_peak")"
printf '%-34s %12s %12s %10s\n' "with puts (4 clients)" "${busy_before} kB" "${busy_peak} kB" "$(mb "$busy_before" "$busy_peak")"
