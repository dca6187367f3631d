#!/usr/bin/env bash
# kvstore-server's etcd API (--etcd-api-listen) against a one-member etcd, under the
# same gRPC loads from the same client (`bench/src/etcd_load.rs`, etcd-client), in
# one run; then `etcdctl check perf` against both when etcdctl can be had.
#
#   bench/etcd-api.sh                     # 10 s a load, 1/16/64 clients, check perf s
#   DURATION=30 CLIENTS="16 64" CHECK_PERF="s m l" bench/etcd-api.sh
#
# Environment:
#   DURATION=10         seconds counted of each load (after a 1 s warm-up)
#   CLIENTS="1 16 64"   the loads' client counts (a connection each)
#   OPS="put range"     the loads' operations
#   VALUE_BYTES=100     bytes of each value
#   KEYS=1000           keys of the key space
#   CHECK_PERF=s        `etcdctl check perf` loads to run against both (s, m, l,
#                       xl; about 60 s each), "" to skip them
#   KVSTORE_LOG=warn    RUST_LOG of kvstore-server
#   SKIP_BUILD=1        use the release binaries already built
#
# What it does: takes etcd from the PATH or unpacks Debian's etcd-server under the
# target dir (as the tests do), and likewise etcdctl from Debian's etcd-client;
# builds the release kvstore-server and etcd_load; starts on 127.0.0.1
# only kvstore-server (sled, every setting its default: durable, --sync always; its
# own data dir; the etcd API and HTTP each on a port of its choosing) and a
# one-member etcd (its own data dir, every setting its default); runs each load
# against both, one after the other, the first of the two alternating from load to
# load; prints a Markdown table; and stops everything it started on exit (also on
# Ctrl-C).
#
# The loads (etcd_load, closed loops, one etcd-client connection per client):
#   put    a plain put of a random key of the key space, KEYS keys, VALUE_BYTES
#          bytes: durable on both (kvstore fsyncs each write group, etcd its WAL)
#   range  a linearizable read of one random key, from the key space filled first
# Beside each figure, the CPU time per request of the server and of the load tool
# (from /proc, over the counted seconds): where the cores are shared, as here, their
# sum is what bounds the throughput.
# The load tool, kvstore-server and etcd share the machine's cores, and the disk's
# sync times vary from second to second: compare the figures of one run, and mind
# the load average printed with them.
#
# `etcdctl check perf` puts keys of random bytes: kvstore keeps keys that are not
# UTF-8 through the etcd API (docs/etcd-clients.md), so both verdicts measure.
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1 16 64}
OPS=${OPS:-put range}
VALUE_BYTES=${VALUE_BYTES:-100}
KEYS=${KEYS:-1000}
CHECK_PERF=${CHECK_PERF-s}
KVSTORE_LOG=${KVSTORE_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}

for n in DURATION VALUE_BYTES KEYS; do
    case ${!n} in
        '' | *[!0-9]* | 0) echo "etcd-api.sh: $n must be a positive integer, not '${!n}'" >&2; exit 2 ;;
    esac
done
for c in $CLIENTS; do
    case $c in
        '' | *[!0-9]* | 0) echo "etcd-api.sh: CLIENTS must be positive integers, not '$CLIENTS'" >&2; exit 2 ;;
    esac
done
for op in $OPS; do
    case $op in
        put | range) ;;
        *) echo "etcd-api.sh: OPS must be put and/or range, not '$OPS'" >&2; exit 2 ;;
    esac
done
for load in $CHECK_PERF; do
    case $load in
        s | m | l | xl) ;;
        *) echo "etcd-api.sh: CHECK_PERF must be loads of s, m, l and xl, not '$CHECK_PERF'" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"

NAME=etcd-api.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

# --- tools and build ---------------------------------------------------------------

for tool in curl timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not available"
done
cd "$ROOT"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot find cargo's target directory"
find_etcd "$TARGET_DIR"
ETCDCTL_BIN=
[ -z "$CHECK_PERF" ] || find_etcdctl "$TARGET_DIR"

if [ "$SKIP_BUILD" != 1 ]; then
    log "building (release)"
    cargo build --release -p kvstore-server -p kvstore-bench --bins
fi
SERVER_BIN="$TARGET_DIR/release/kvstore-server"
LOAD_BIN="$TARGET_DIR/release/etcd_load"
for bin in "$SERVER_BIN" "$LOAD_BIN"; do
    [ -x "$bin" ] || die "$bin is missing (build it, or run without SKIP_BUILD=1)"
done

# --- the servers -------------------------------------------------------------------

log "starting kvstore-server and a one-member etcd (work dir $WORK)"
mkdir -p "$WORK/kvstore"
KVSTORE_ARGS=(--listen 127.0.0.1:0 --etcd-api-listen 127.0.0.1:0 --data-dir "$WORK/kvstore/data")
RUST_LOG=$KVSTORE_LOG "$SERVER_BIN" "${KVSTORE_ARGS[@]}" >"$WORK/kvstore.out" 2>"$WORK/kvstore.err" &
KVS_PID=$!
PIDS+=("$KVS_PID")
KVS_HTTP=$(wait_listening kvstore "$KVS_PID" "$WORK/kvstore.out")
# Printed before the HTTP line, so there once that is.
KVS=$(sed -n 's/.*etcd API on http:\/\/\([0-9.:]*\).*/\1/p' "$WORK/kvstore.out" | head -n 1)
[ -n "$KVS" ] || die "kvstore-server did not say where its etcd API is (HTTP on $KVS_HTTP)"

start_etcd 1
ETCD=${ETCD_CLIENTS[0]}
ETCD_PID=${ETCD_PIDS[0]}
ETCD_VERSION=$("$ETCD_BIN" --version | sed -n 's/^etcd Version: //p')

# --- loads -------------------------------------------------------------------------

declare -A ERRORS P50 MAX SLOW SERVER_CPU LOAD_CPU
# etcd's own stalls: it logs each apply over 100 ms (a slow disk sync, a pause).
slow_applies() { grep -c 'apply request took too long' "$WORK/etcd-0.err" || true; }
# field FILE NAME: the number NAME of etcd_load's JSON line in FILE.
field() { sed -n "s/.*\"$2\":\([0-9.eE+-]*\).*/\1/p" "$1"; }

# load NAME ADDRESS PID OP CLIENTS: one etcd_load run on the server PID; req/s into
# RPS[NAME], latencies (ms) into P50, P99 and MAX, CPU microseconds per request into
# SERVER_CPU and LOAD_CPU, failed requests into ERRORS (and BAD, for `mark`).
load() {
    local name=$1 address=$2 pid=$3 op=$4 clients=$5 out before
    out="$WORK/load-$name.json"
    before=$(slow_applies)
    log "etcd_load $name: --op $op --clients $clients --duration $DURATION http://$address"
    # In the background and waited for, so that a signal to this script acts at once.
    timeout "$((DURATION + 120))" "$LOAD_BIN" --endpoint "http://$address" --op "$op" \
        --clients "$clients" --duration "$DURATION" --value-bytes "$VALUE_BYTES" --keys "$KEYS" \
        --server-pid "$pid" >"$out" 2>"$WORK/load-$name.err" &
    CHILD=$!
    wait "$CHILD" || log "etcd_load $name failed: $(tail -n 1 "$WORK/load-$name.err")"
    CHILD=
    [ ! -s "$WORK/load-$name.err" ] || log "etcd_load $name: $(tail -n 1 "$WORK/load-$name.err")"
    RPS[$name]=$(field "$out" rps | awk '{ printf "%.0f", $1 }')
    P50[$name]=$(field "$out" p50_ms)
    P99[$name]=$(field "$out" p99_ms)
    MAX[$name]=$(field "$out" max_ms)
    SERVER_CPU[$name]=$(field "$out" server_cpu_us)
    LOAD_CPU[$name]=$(field "$out" load_cpu_us)
    ERRORS[$name]=$(field "$out" errors)
    : "${RPS[$name]:=0}" "${P50[$name]:=-}" "${P99[$name]:=-}" "${MAX[$name]:=-}" "${ERRORS[$name]:=?}"
    : "${SERVER_CPU[$name]:=-}" "${LOAD_CPU[$name]:=-}"
    BAD[$name]=${ERRORS[$name]/\?/1}
    SLOW[$name]=$(($(slow_applies) - before))
    sleep 1
}

LOAD_BEFORE=$(cut -d ' ' -f 1 /proc/loadavg)
declare -A LOADAVG
turn=0
for op in $OPS; do
    for clients in $CLIENTS; do
        LOADAVG[$op.$clients]=$(cut -d ' ' -f 1 /proc/loadavg)
        if ((turn % 2 == 0)); then
            load "$op.$clients.kvstore" "$KVS" "$KVS_PID" "$op" "$clients"
            load "$op.$clients.etcd" "$ETCD" "$ETCD_PID" "$op" "$clients"
        else
            load "$op.$clients.etcd" "$ETCD" "$ETCD_PID" "$op" "$clients"
            load "$op.$clients.kvstore" "$KVS" "$KVS_PID" "$op" "$clients"
        fi
        turn=$((turn + 1))
    done
done
LOAD_AFTER=$(cut -d ' ' -f 1 /proc/loadavg)

# --- etcdctl check perf ------------------------------------------------------------

# check_perf NAME ADDRESS LOAD: `etcdctl check perf --load=LOAD`; its verdict lines
# (the progress bar left out) into "$WORK/perf-NAME-LOAD.txt".
check_perf() {
    local name=$1 address=$2 load=$3 out="$WORK/perf-$1-$3.txt" status=0
    log "etcdctl check perf --load=$load against $name"
    ETCDCTL_API=3 timeout 300 "$ETCDCTL_BIN" --endpoints "http://$address" check perf --load="$load" \
        >"$out.raw" 2>"$out.err" &
    CHILD=$!
    wait "$CHILD" || status=$?
    CHILD=
    # The progress bar ends with no newline: the first verdict follows it on its line.
    tr '\r' '\n' <"$out.raw" | sed -E 's/^ *[0-9]+ \/ [0-9]+ .*%//' |
        grep -E 'PASS|FAIL|Slowest|Stddev|Throughput|[Ee]rror' >"$out" || true
    [ -s "$out" ] || tail -n 3 "$out.raw" >"$out"
    # The client logs each failed request on stderr: each message once, with its count.
    sed -n 's/.*"error":"\([^"]*\)".*/\1/p' "$out.err" | sort | uniq -c | sed 's/^ */stderr: /' >>"$out"
    grep -v '"error":"' "$out.err" | tail -n 3 | sed 's/^/stderr: /' >>"$out" || true
    echo "(etcdctl exit status $status, load average $(cut -d ' ' -f 1 /proc/loadavg))" >>"$out"
}
PERF_LOADS=()
if [ -n "$CHECK_PERF" ] && [ -n "$ETCDCTL_BIN" ]; then
    turn=0
    for load in $CHECK_PERF; do
        PERF_LOADS+=("$load")
        if ((turn % 2 == 0)); then
            check_perf kvstore "$KVS" "$load"
            check_perf etcd "$ETCD" "$load"
        else
            check_perf etcd "$ETCD" "$load"
            check_perf kvstore "$KVS" "$load"
        fi
        turn=$((turn + 1))
    done
fi

# --- the table ---------------------------------------------------------------------

{
    echo
    echo "kvstore etcd API: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)"
    echo "load average (1 min) $LOAD_BEFORE before the loads, $LOAD_AFTER after: other work on the machine skews the figures"
    echo "kvstore-server ${KVSTORE_ARGS[*]} (sled; defaults otherwise: --sync always, RUST_LOG=$KVSTORE_LOG)"
    echo "etcd $ETCD_VERSION ($ETCD_BIN), one member on loopback, default settings (--logger zap --log-level warn)"
    [ -z "$ETCDCTL_BIN" ] || echo "etcdctl $("$ETCDCTL_BIN" version | sed -n 's/^etcdctl version: //p') ($ETCDCTL_BIN)"
    echo "etcd_load: ${DURATION} s counted after 1 s of warm-up, one connection per client, $KEYS keys, $VALUE_BYTES-byte values; put: plain put of a random key; range: linearizable read of one key"
    echo
    echo "CPU per request: microseconds of the server's and of the load tool's CPU time, in the counted seconds"
    echo
    echo "| op | clients | kvstore req/s (p99 ms) | etcd req/s (p99 ms) | kvstore/etcd | server CPU kvstore / etcd | load tool CPU kvstore / etcd | load avg |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for op in $OPS; do
        for clients in $CLIENTS; do
            k=$op.$clients.kvstore
            e=$op.$clients.etcd
            echo "| $op | $clients | ${RPS[$k]}$(mark "$k") (${P99[$k]}) | ${RPS[$e]}$(mark "$e") (${P99[$e]}) | $(ratio "${RPS[$k]}" "${RPS[$e]}") | ${SERVER_CPU[$k]} / ${SERVER_CPU[$e]} | ${LOAD_CPU[$k]} / ${LOAD_CPU[$e]} | ${LOADAVG[$op.$clients]} |"
        done
    done
    echo
    echo "p50 / max ms:"
    for op in $OPS; do
        for clients in $CLIENTS; do
            k=$op.$clients.kvstore
            e=$op.$clients.etcd
            echo "  $op @$clients: kvstore ${P50[$k]} / ${MAX[$k]}, etcd ${P50[$e]} / ${MAX[$e]}"
        done
    done
    stalls=$(for name in "${!SLOW[@]}"; do [ "${SLOW[$name]}" = 0 ] || echo "$name ${SLOW[$name]}"; done | sort | paste -sd, | sed 's/,/, /g')
    echo "etcd's slow applies (over 100 ms, from its log) during the loads: ${stalls:-none}"
    failed=$(for name in "${!ERRORS[@]}"; do [ "${ERRORS[$name]}" = 0 ] || echo "$name ${ERRORS[$name]}"; done | sort | paste -sd, | sed 's/,/, /g')
    echo "!: some requests failed (etcd_load's stderr): ${failed:-none}"
    if ((${#PERF_LOADS[@]})); then
        for load in "${PERF_LOADS[@]}"; do
            for name in kvstore etcd; do
                echo
                echo "etcdctl check perf --load=$load against $name:"
                sed 's/^/  /' "$WORK/perf-$name-$load.txt"
            done
        done
    elif [ -n "$CHECK_PERF" ]; then
        echo "etcdctl check perf: skipped (no etcdctl)"
    fi
}
