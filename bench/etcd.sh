#!/usr/bin/env bash
# kvstore-server on the etcd engine against etcd's own JSON gateway, on the same
# 3-member etcd cluster on loopback, under the same wrk loads, in one run; then
# `kv bench watch` with many watchers through the replica.
#
#   bench/etcd.sh                     # 10 s a load, 64 connections, 1000 watchers
#   DURATION=30 WATCHERS=200 bench/etcd.sh
#
# Environment:
#   DURATION=10        seconds of each wrk load, in each round
#   ROUNDS=3           rounds: each runs every load once, replica and gateway in turn
#   CONNECTIONS=64     connections of each load
#   THREADS=1          wrk threads
#   WATCHERS=1000      watchers of `kv bench watch` (0: skip it)
#   WATCH_RATE=100     puts per second of `kv bench watch`
#   WATCH_DURATION=20  seconds of puts of `kv bench watch`
#   KVSTORE_LOG=warn   RUST_LOG of the replica
#   SKIP_BUILD=1       use the release binaries already built (with --features etcd)
#
# It installs wrk from Debian when missing (as root), takes etcd from the PATH or
# unpacks Debian's etcd-server under target/tools (as the tests do), builds the
# release binaries with the etcd engine, starts three etcd members and one
# kvstore-server replica on all three, seeds `bench-key` with a 100-byte value both
# through the replica and through the gateway, runs the loads, and stops everything
# it started on exit.
#
# The loads (100-byte values, both linearizable, both durable):
#   GET  replica GET /v1/kv/bench-key | gateway POST /v3/kv/range of the leader
#   PUT  replica PUT /v1/kv/bench-key | gateway POST /v3/kv/put of the leader
# The gateway is the leader's, its best place: a follower's forwards each write to
# the leader and answers once it has applied it too. wrk, the replica and the three
# members share the machine's cores, and the disk's sync times vary from second to
# second: so the loads alternate, replica then gateway, for ROUNDS rounds, and the
# table gives the mean of the rounds (req/s) and their worst p99, with each round's
# ratio below it, and the loads during which etcd's members logged an apply of over
# 100 ms (a stall of the cluster's own, which shows in that load's p99).
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WATCHERS=${WATCHERS:-1000}
WATCH_RATE=${WATCH_RATE:-100}
WATCH_DURATION=${WATCH_DURATION:-20}
KVSTORE_LOG=${KVSTORE_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
KEY=bench-key
KEY_B64=YmVuY2gta2V5
VALUE=$(printf 'v%.0s' $(seq 1 100))
VALUE_B64=$(printf '%s' "$VALUE" | base64 -w0)

NAME=etcd.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

# --- tools -------------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "wrk is missing: run as root to apt-get install it, or install it"
    log "installing wrk (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cd "$ROOT"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot find cargo's target directory"
find_etcd "$TARGET_DIR"

if [ "$SKIP_BUILD" != 1 ]; then
    log "building (release, with the etcd engine)"
    cargo build --release -p kvstore-server -p kv-cli --bins --features kvstore-server/etcd
fi
SERVER_BIN="$TARGET_DIR/release/kvstore-server"
KV_BIN="$TARGET_DIR/release/kv"
for bin in "$SERVER_BIN" "$KV_BIN"; do
    [ -x "$bin" ] || die "$bin is missing (build it, or run without SKIP_BUILD=1)"
done

# --- the cluster and the replica ---------------------------------------------------

log "starting a 3-member etcd and a replica (work dir $WORK)"
start_etcd 3
ENDPOINTS=$ETCD_ENDPOINTS
# The member whose status names itself as the leader.
GATEWAY=
for client in "${ETCD_CLIENTS[@]}"; do
    status=$(curl -sf -X POST -d '{}' "http://$client/v3/maintenance/status") || continue
    member=$(printf '%s' "$status" | sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p')
    leader=$(printf '%s' "$status" | sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p')
    [ -n "$member" ] && [ "$member" = "$leader" ] && GATEWAY=$client
done
[ -n "$GATEWAY" ] || die "no etcd member says it leads"
RUST_LOG=$KVSTORE_LOG "$SERVER_BIN" --listen 127.0.0.1:0 --etcd-endpoints "$ENDPOINTS" \
    >"$WORK/replica.out" 2>"$WORK/replica.err" &
REPLICA_PID=$!
PIDS+=("$REPLICA_PID")
REPLICA=$(wait_listening replica "$REPLICA_PID" "$WORK/replica.out")

curl -sf -X PUT --data-binary "$VALUE" "http://$REPLICA/v1/kv/$KEY" >/dev/null || die "cannot put $KEY through the replica"
[ "$(curl -sf "http://$REPLICA/v1/kv/$KEY")" = "$VALUE" ] || die "GET $KEY through the replica is not the value put"
curl -sf -X POST -d "{\"key\":\"$KEY_B64\",\"value\":\"$VALUE_B64\"}" "http://$GATEWAY/v3/kv/put" >/dev/null ||
    die "cannot put $KEY through the gateway"

# --- loads -------------------------------------------------------------------------

# etcd's own stalls: the members log each apply over 100 ms (a slow disk sync, a
# pause), whoever sent the request; counted per load, so that a load's worst p99
# can be told apart from the cluster's.
slow_applies() { cat "$WORK"/etcd-*.err | grep -c 'apply request took too long' || true; }
declare -A SLOW
load() {
    local name=$1 before
    before=$(slow_applies)
    run_wrk "$@"
    SLOW[$name]=$(($(slow_applies) - before))
}

LOAD_BEFORE=$(cut -d ' ' -f 1 /proc/loadavg)
declare -A ROUND_RATIOS
for ((round = 1; round <= ROUNDS; round++)); do
    load "get.replica.$round" "$CONNECTIONS" "http://$REPLICA/v1/kv/$KEY"
    load "get.gateway.$round" "$CONNECTIONS" "http://$GATEWAY/v3/kv/range" etcd-range.lua
    load "put.replica.$round" "$CONNECTIONS" "http://$REPLICA/v1/kv/$KEY" put.lua
    load "put.gateway.$round" "$CONNECTIONS" "http://$GATEWAY/v3/kv/put" etcd-put.lua
    for load in get put; do
        ROUND_RATIOS[$load]+="${ROUND_RATIOS[$load]:+ }$(ratio "${RPS[$load.replica.$round]}" "${RPS[$load.gateway.$round]}")"
    done
done
# The rounds of NAME into RPS[NAME] (mean), P99[NAME] (worst) and BAD[NAME] (sum).
combine() {
    local name=$1 round sum=0 bad=0 worst=- p99
    for ((round = 1; round <= ROUNDS; round++)); do
        sum=$((sum + RPS[$name.$round]))
        bad=$((bad + BAD[$name.$round]))
        p99=${P99[$name.$round]}
        worst=$(awk -v a="$worst" -v b="$p99" 'function ms(x) { if (x ~ /us$/) return x / 1000; if (x ~ /ms$/) return x + 0; if (x ~ /s$/) return x * 1000; return -1 }
            BEGIN { print (ms(b) > ms(a)) ? b : a }')
    done
    RPS[$name]=$((sum / ROUNDS))
    BAD[$name]=$bad
    P99[$name]=$worst
}
for name in get.replica get.gateway put.replica put.gateway; do combine "$name"; done

rss_mb() { awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
WATCH_LINE="watch: skipped (WATCHERS=0)"
if [ "$WATCHERS" -gt 0 ]; then
    log "kv bench watch --watchers $WATCHERS --rate $WATCH_RATE --duration $WATCH_DURATION"
    (ulimit -n 65536 2>/dev/null || true
        exec timeout "$((WATCH_DURATION + 120))" "$KV_BIN" --url "http://$REPLICA" -o json \
            bench watch --watchers "$WATCHERS" --rate "$WATCH_RATE" --duration "$WATCH_DURATION" \
            --server-pid "$REPLICA_PID") >"$WORK/watch.json" 2>"$WORK/watch.err" &
    CHILD=$!
    # The memory figures at the height of the watch.
    sleep "$((WATCH_DURATION / 2 + 5))"
    REPLICA_RSS=$(rss_mb "$REPLICA_PID")
    ETCD_RSS=$(for pid in "${ETCD_PIDS[@]}"; do rss_mb "$pid"; done | paste -sd/)
    if wait "$CHILD"; then
        p50=$(grep -o '"delivery_latency_ms":{[^}]*}' "$WORK/watch.json" | sed -n 's/.*"p50":\([0-9.eE+-]*\).*/\1/p')
        p99=$(grep -o '"delivery_latency_ms":{[^}]*}' "$WORK/watch.json" | sed -n 's/.*"p99":\([0-9.eE+-]*\).*/\1/p')
        missed=$(sed -n 's/.*"missed":\([0-9]*\).*/\1/p' "$WORK/watch.json")
        delivered=$(sed -n 's/.*"delivered":\([0-9]*\).*/\1/p' "$WORK/watch.json")
        WATCH_LINE="watch ($WATCHERS watchers, $WATCH_RATE puts/s, ${WATCH_DURATION} s): ${delivered:-?} delivered, ${missed:-?} missed, delivery p50 ${p50:-?} / p99 ${p99:-?} ms from the put's ack; RSS replica ${REPLICA_RSS} MB, etcd members ${ETCD_RSS} MB"
    else
        WATCH_LINE="watch: kv bench watch failed: $(tail -n 1 "$WORK/watch.err")"
    fi
    CHILD=
fi

# --- the table ---------------------------------------------------------------------

g=$(ratio "${RPS[get.replica]}" "${RPS[get.gateway]}")
p=$(ratio "${RPS[put.replica]}" "${RPS[put.gateway]}")
row() { printf '%-14s %5s %11s %9s %11s %9s %8s  %-20s %s\n' "$@"; }
{
    echo
    echo "kvstore on etcd: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)"
    echo "load average (1 min) $LOAD_BEFORE before the loads, $(cut -d ' ' -f 1 /proc/loadavg) after"
    echo "wrk -t$THREADS -d${DURATION}s, $ROUNDS rounds; etcd $("$ETCD_BIN" --version | sed -n 's/^etcd Version: //p'), 3 members on loopback, the leader's gateway; 100-byte values"
    echo
    row load conns "replica/s" "p99" "gateway/s" "p99" ratio target met
    row "GET bench-key" "$CONNECTIONS" "${RPS[get.replica]}$(mark get.replica)" "${P99[get.replica]}" \
        "${RPS[get.gateway]}$(mark get.gateway)" "${P99[get.gateway]}" "$g" ">=3x (floor 1x)" "$(meets "$g" 3)"
    row "PUT durable" "$CONNECTIONS" "${RPS[put.replica]}$(mark put.replica)" "${P99[put.replica]}" \
        "${RPS[put.gateway]}$(mark put.gateway)" "${P99[put.gateway]}" "$p" ">=1x (floor)" "$(meets "$p" 1)"
    echo
    echo "ratio in each round: GET ${ROUND_RATIOS[get]}; PUT ${ROUND_RATIOS[put]}"
    stalls=$(for name in "${!SLOW[@]}"; do [ "${SLOW[$name]}" = 0 ] || echo "$name ${SLOW[$name]}"; done | sort | paste -sd, | sed 's/,/, /g')
    echo "etcd's slow applies (over 100 ms, from its members' logs) during the loads: ${stalls:-none}"
    echo "!: some answers were not 2xx (see the wrk output)."
    echo "$WATCH_LINE"
}
