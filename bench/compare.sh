#!/usr/bin/env bash
# kvstore-server against bare actix-web (the HTTP ceiling: `bench/src/reference.rs`)
# and etcd, under the same wrk loads, in one run, summed up in one table.
#
#   bench/compare.sh                  # 10 s a load, 64 connections
#   DURATION=30 bench/compare.sh
#
# Environment:
#   DURATION=10        seconds of each wrk load
#   CONNECTIONS=64     connections of the concurrent loads (the others use 1)
#   THREADS=1          wrk threads
#   KVSTORE_LOG=warn   RUST_LOG of the kvstore servers ("info" logs every request)
#   SKIP_BUILD=1       use the release binaries already built
#   WATCH=0            skip `kv bench watch` (run when the kv binary has it)
#   WATCH_DURATION=10  seconds of puts of `kv bench watch`
#
# What it does: installs wrk and etcd-server from Debian's packages when missing
# (needs root then), builds the release binaries, starts on 127.0.0.1 only the
# reference, kvstore-server (durable, the default --sync always), a second one with
# --sync none and a one-member etcd (each with a data dir under a temp folder),
# seeds the key `bench-key` with a 100-byte value everywhere, runs the loads one
# after the other, and stops everything it started on exit (also on Ctrl-C).
#
# The loads, all with a 100-byte value:
#   GET   kvstore GET /v1/kv/bench-key (raw value) | reference | etcd POST /v3/kv/range
#   PUT   kvstore PUT /v1/kv/bench-key, durable, at CONNECTIONS and at 1 connection
#         | reference (PUT, same body) | etcd POST /v3/kv/put (fsynced, as etcd does)
#   PUT   kvstore --sync none at CONNECTIONS | reference
#
# On one machine wrk shares the cores with the server it loads: the figures compare
# servers under the same handicap, not their absolute ceilings.
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
KVSTORE_LOG=${KVSTORE_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}
WATCH=${WATCH:-1}
WATCH_DURATION=${WATCH_DURATION:-10}

for n in DURATION CONNECTIONS THREADS WATCH_DURATION; do
    case ${!n} in
        '' | *[!0-9]* | 0) echo "compare.sh: $n must be a positive integer, not '${!n}'" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
KEY=bench-key
KEY_B64=YmVuY2gta2V5 # base64 of bench-key
VALUE=$(printf 'v%.0s' $(seq 1 100)) # the 100 "v"s of put.lua and etcd-put.lua
VALUE_B64=$(printf '%s' "$VALUE" | base64 -w0)

NAME=compare.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

# --- tools -------------------------------------------------------------------------

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root to apt-get install them, or install them"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} (apt-get)"
    # Note: where systemd runs, installing etcd-server also starts the system's own
    # etcd on 127.0.0.1:2379; this script uses ports of its own.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in wrk etcd curl timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not available"
done

# --- build -------------------------------------------------------------------------

cd "$ROOT"
if [ "$SKIP_BUILD" != 1 ]; then
    log "building (release)"
    cargo build --release -p kvstore-server -p kv-cli -p kvstore-bench --bins
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot find cargo's target directory"
SERVER_BIN="$TARGET_DIR/release/kvstore-server"
KV_BIN="$TARGET_DIR/release/kv"
REFERENCE_BIN="$TARGET_DIR/release/reference"
for bin in "$SERVER_BIN" "$KV_BIN" "$REFERENCE_BIN"; do
    [ -x "$bin" ] || die "$bin is missing (build it, or run without SKIP_BUILD=1)"
done

# --- processes ---------------------------------------------------------------------


# start_kvstore NAME ARGS...: a kvstore-server on a port of its choosing; its pid
# into LAST_PID (not in a subshell, so that PIDS keeps it for the cleanup).
start_kvstore() {
    local name=$1
    shift
    mkdir -p "$WORK/$name"
    RUST_LOG=$KVSTORE_LOG "$SERVER_BIN" --listen 127.0.0.1:0 --data-dir "$WORK/$name/data" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

log "starting the servers (work dir $WORK)"
"$REFERENCE_BIN" 127.0.0.1:0 >"$WORK/reference.out" 2>"$WORK/reference.err" &
REF_PID=$!
PIDS+=("$REF_PID")
REF=$(wait_listening reference "$REF_PID" "$WORK/reference.out")
start_kvstore kvstore
KVS_PID=$LAST_PID
KVS=$(wait_listening kvstore "$KVS_PID" "$WORK/kvstore.out")
start_kvstore kvstore-nosync --sync none
NOSYNC=$(wait_listening kvstore-nosync "$LAST_PID" "$WORK/kvstore-nosync.out")

ETCD_PORT=$(free_port) || die "no free port for etcd"
ETCD_PEER_PORT=$(free_port) || die "no free port for etcd"
[ "$ETCD_PORT" != "$ETCD_PEER_PORT" ] || ETCD_PEER_PORT=$((ETCD_PORT + 1))
ETCD=127.0.0.1:$ETCD_PORT
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    --logger zap --log-level warn >"$WORK/etcd.out" 2>"$WORK/etcd.err" &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
tries=0
until curl -sf "http://$ETCD/health" 2>/dev/null | grep -q '"health":"true"'; do
    kill -0 "$ETCD_PID" 2>/dev/null || { tail -n 20 "$WORK/etcd.err" >&2; die "etcd did not start"; }
    [ "$tries" -lt 100 ] || die "etcd not healthy after 10 s"
    sleep 0.1
    tries=$((tries + 1))
done

# --- data and sanity checks --------------------------------------------------------

for address in "$KVS" "$NOSYNC"; do
    curl -sf -X PUT --data-binary "$VALUE" "http://$address/v1/kv/$KEY" >/dev/null ||
        die "cannot put $KEY on $address"
    [ "$(curl -sf "http://$address/v1/kv/$KEY")" = "$VALUE" ] || die "GET $KEY on $address is not the value put"
done
curl -sf -X POST -d "{\"key\":\"$KEY_B64\",\"value\":\"$VALUE_B64\"}" "http://$ETCD/v3/kv/put" >/dev/null ||
    die "cannot put $KEY on etcd"
curl -sf -X POST -d "{\"key\":\"$KEY_B64\"}" "http://$ETCD/v3/kv/range" | grep -q "\"value\":\"$VALUE_B64\"" ||
    die "etcd's range of $KEY is not the value put"
[ "$(curl -sf "http://$REF/")" != "" ] || die "the reference does not answer"

# --- loads -------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d ' ' -f 1 /proc/loadavg)
run_wrk get.reference "$CONNECTIONS" "http://$REF/v1/kv/$KEY"
run_wrk get.kvstore "$CONNECTIONS" "http://$KVS/v1/kv/$KEY"
run_wrk get.etcd "$CONNECTIONS" "http://$ETCD/v3/kv/range" etcd-range.lua
run_wrk put.reference "$CONNECTIONS" "http://$REF/v1/kv/$KEY" put.lua
run_wrk put.kvstore "$CONNECTIONS" "http://$KVS/v1/kv/$KEY" put.lua
run_wrk put.etcd "$CONNECTIONS" "http://$ETCD/v3/kv/put" etcd-put.lua
run_wrk put1.kvstore 1 "http://$KVS/v1/kv/$KEY" put.lua
run_wrk put1.etcd 1 "http://$ETCD/v3/kv/put" etcd-put.lua
run_wrk put.nosync "$CONNECTIONS" "http://$NOSYNC/v1/kv/$KEY" put.lua

WATCH_LINE="watch: skipped (WATCH=0)"
if [ "$WATCH" = 1 ]; then
    if "$KV_BIN" bench watch --help >/dev/null 2>&1; then
        log "kv bench watch --watchers 1 --rate 100 --duration $WATCH_DURATION"
        timeout "$((WATCH_DURATION + 60))" "$KV_BIN" --url "http://$KVS" -o json \
            bench watch --watchers 1 --rate 100 --duration "$WATCH_DURATION" --server-pid "$KVS_PID" \
            >"$WORK/watch.json" 2>"$WORK/watch.err" &
        CHILD=$!
        if wait "$CHILD"; then
            p99=$(grep -o '"delivery_latency_ms":{[^}]*}' "$WORK/watch.json" | sed -n 's/.*"p99":\([0-9.eE+-]*\).*/\1/p')
            missed=$(sed -n 's/.*"missed":\([0-9]*\).*/\1/p' "$WORK/watch.json")
            WATCH_LINE="watch (kv bench watch, 1 watcher, 100 puts/s, ${WATCH_DURATION} s, durable): delivery p99 ${p99:-?} ms from the put's ack, ${missed:-?} missed"
        else
            WATCH_LINE="watch: kv bench watch failed: $(tail -n 1 "$WORK/watch.err")"
        fi
        CHILD=
    else
        WATCH_LINE="watch: skipped (this kv has no 'bench watch')"
    fi
fi

# --- the table ---------------------------------------------------------------------

g_ref=$(ratio "${RPS[get.kvstore]}" "${RPS[get.reference]}")
g_etcd=$(ratio "${RPS[get.kvstore]}" "${RPS[get.etcd]}")
p_ref=$(ratio "${RPS[put.kvstore]}" "${RPS[put.reference]}")
p_etcd=$(ratio "${RPS[put.kvstore]}" "${RPS[put.etcd]}")
p1_etcd=$(ratio "${RPS[put1.kvstore]}" "${RPS[put1.etcd]}")
n_ref=$(ratio "${RPS[put.nosync]}" "${RPS[put.reference]}")
n_etcd=$(ratio "${RPS[put.nosync]}" "${RPS[put.etcd]}")
get_met="$(meets "$g_ref" 0.70)/$(meets "$g_etcd" 8)"

row() { printf '%-22s %5s %9s %9s %9s %9s %7s %8s  %-22s %s\n' "$@"; }
{
    echo
    echo "kvstore compare: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)"
    echo "load average (1 min) $LOAD_BEFORE before the loads, $(cut -d ' ' -f 1 /proc/loadavg) after: other work on the machine skews the figures"
    echo "wrk -t$THREADS -d${DURATION}s; $(wrk -v 2>&1 | head -n 1 | cut -d ' ' -f 1-2); etcd $(etcd --version | sed -n 's/^etcd Version: //p'); kvstore RUST_LOG=$KVSTORE_LOG; 100-byte values"
    echo
    row load conns "kv req/s" "kv p99" "ref req/s" "etcd req/s" "kv/ref" "kv/etcd" target met
    row "GET bench-key" "$CONNECTIONS" "${RPS[get.kvstore]}$(mark get.kvstore)" "${P99[get.kvstore]}" \
        "${RPS[get.reference]}$(mark get.reference)" "${RPS[get.etcd]}$(mark get.etcd)" \
        "$g_ref" "$g_etcd" ">=0.70 ref, >=8x etcd" "$get_met"
    row "PUT durable" "$CONNECTIONS" "${RPS[put.kvstore]}$(mark put.kvstore)" "${P99[put.kvstore]}" \
        "${RPS[put.reference]}$(mark put.reference)" "${RPS[put.etcd]}$(mark put.etcd)" \
        "$p_ref" "$p_etcd" ">=2x etcd" "$(meets "$p_etcd" 2)"
    row "PUT durable" 1 "${RPS[put1.kvstore]}$(mark put1.kvstore)" "${P99[put1.kvstore]}" \
        - "${RPS[put1.etcd]}$(mark put1.etcd)" - "$p1_etcd" ">=1x etcd" "$(meets "$p1_etcd" 1)"
    row "PUT --sync none" "$CONNECTIONS" "${RPS[put.nosync]}$(mark put.nosync)" "${P99[put.nosync]}" \
        "${RPS[put.reference]}$(mark put.reference)" "${RPS[put.etcd]}$(mark put.etcd)" \
        "$n_ref" "$n_etcd" ">=0.50 ref" "$(meets "$n_ref" 0.5)"
    echo
    echo "ref: the reference (bare actix-web, constant 100-byte body) under the same method and body."
    echo "p99: wrk's 99th percentile latency of kvstore. !: some answers were not 2xx (see the wrk output)."
    echo "etcd p99: GET ${P99[get.etcd]}, PUT ${P99[put.etcd]} (@$CONNECTIONS), ${P99[put1.etcd]} (@1); reference p99: GET ${P99[get.reference]}, PUT ${P99[put.reference]}"
    echo "$WATCH_LINE"
}
