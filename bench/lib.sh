# Shell functions the benchmark scripts share (sourced, not run): log lines, the
# processes a script starts and stops, free ports, wrk loads and their figures.
# A script sets NAME (for its log lines) and BENCH_DIR before sourcing this file.

# The servers a script starts serve HTTP only, unless it asks for etcd's API: several
# of them at once would each want its default port.
export KVSTORE_ETCD_API_LISTEN=${KVSTORE_ETCD_API_LISTEN:-off}

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { log "$*"; exit 1; }

# --- processes ---------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-$NAME.XXXXXX")
PIDS=()
CHILD=

cleanup() {
    local pid tries
    # A load under way (timeout passes the signal on to it).
    [ -z "$CHILD" ] || kill "$CHILD" 2>/dev/null || true
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        tries=0
        while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (5 s at most) for `name`'s "listening on http://ADDRESS" line in its stdout
# file and prints ADDRESS.
wait_listening() {
    local name=$1 pid=$2 out=$3 tries=0 address
    while [ "$tries" -lt 50 ]; do
        address=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$out" | head -n 1)
        if [ -n "$address" ]; then
            printf '%s\n' "$address"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
        tries=$((tries + 1))
    done
    log "$name did not start; its stderr:"
    tail -n 20 "$WORK/$name.err" >&2 || true
    return 1
}

# A TCP port of 127.0.0.1 nothing listens on (for etcd, which takes no port 0).
free_port() {
    local tries=0 port
    while [ "$tries" -lt 100 ]; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
        tries=$((tries + 1))
    done
    return 1
}

# --- etcd --------------------------------------------------------------------------

# find_etcd TARGET_DIR: etcd from the PATH, else Debian's etcd-server unpacked under
# TARGET_DIR/tools (as the tests do); its path into ETCD_BIN.
find_etcd() {
    local target_dir=$1
    ETCD_BIN=$(command -v etcd || true)
    [ -z "$ETCD_BIN" ] || return 0
    ETCD_BIN="$target_dir/tools/etcd-server/usr/bin/etcd"
    [ ! -x "$ETCD_BIN" ] || return 0
    log "unpacking Debian's etcd-server under $target_dir/tools"
    mkdir -p "$target_dir/tools/etcd-server/download"
    (cd "$target_dir/tools/etcd-server/download" && apt-get download etcd-server >/dev/null 2>&1) ||
        die "cannot download etcd-server (apt-get download)"
    dpkg -x "$target_dir"/tools/etcd-server/download/etcd-server_*.deb "$target_dir/tools/etcd-server"
}

# find_etcdctl TARGET_DIR: etcdctl from the PATH, else Debian's etcd-client (the
# etcdctl of the same release as etcd-server) unpacked under TARGET_DIR/tools, as
# find_etcd does; its path into ETCDCTL_BIN, empty (with a log line) when neither
# can be had, for the scripts to whom etcdctl is optional.
find_etcdctl() {
    local target_dir=$1 deb
    ETCDCTL_BIN=$(command -v etcdctl || true)
    [ -z "$ETCDCTL_BIN" ] || return 0
    ETCDCTL_BIN="$target_dir/tools/etcd-client/usr/bin/etcdctl"
    [ ! -x "$ETCDCTL_BIN" ] || return 0
    log "unpacking Debian's etcd-client under $target_dir/tools"
    mkdir -p "$target_dir/tools/etcd-client/download"
    if (cd "$target_dir/tools/etcd-client/download" && apt-get download etcd-client >/dev/null 2>&1); then
        for deb in "$target_dir"/tools/etcd-client/download/etcd-client_*.deb; do
            dpkg -x "$deb" "$target_dir/tools/etcd-client" || true
            break
        done
    fi
    [ -x "$ETCDCTL_BIN" ] || { log "cannot download etcd-client (apt-get download): no etcdctl"; ETCDCTL_BIN=; }
}

# start_etcd N: an N-member etcd cluster on loopback with its data under WORK, waited
# for until every member is healthy; member addresses into ETCD_CLIENTS, the
# --etcd-endpoints value into ETCD_ENDPOINTS, pids into ETCD_PIDS (and PIDS).
start_etcd() {
    local n=$1 i tries initial=""
    local peers=()
    ETCD_CLIENTS=()
    ETCD_PIDS=()
    for ((i = 0; i < n; i++)); do
        ETCD_CLIENTS+=("127.0.0.1:$(free_port)")
        peers+=("127.0.0.1:$(free_port)")
        initial+="${initial:+,}m$i=http://${peers[$i]}"
    done
    for ((i = 0; i < n; i++)); do
        "$ETCD_BIN" --name "m$i" --data-dir "$WORK/etcd-$i" \
            --listen-client-urls "http://${ETCD_CLIENTS[$i]}" --advertise-client-urls "http://${ETCD_CLIENTS[$i]}" \
            --listen-peer-urls "http://${peers[$i]}" --initial-advertise-peer-urls "http://${peers[$i]}" \
            --initial-cluster "$initial" --initial-cluster-token "bench-$$" --initial-cluster-state new \
            --logger zap --log-level warn >"$WORK/etcd-$i.out" 2>"$WORK/etcd-$i.err" &
        PIDS+=("$!")
        ETCD_PIDS+=("$!")
    done
    for ((i = 0; i < n; i++)); do
        tries=0
        until curl -sf "http://${ETCD_CLIENTS[$i]}/health" 2>/dev/null | grep -q '"health":"true"'; do
            if [ "$tries" -ge 200 ]; then
                tail -n 5 "$WORK/etcd-$i.err" >&2
                die "etcd member $i not healthy after 20 s"
            fi
            sleep 0.1
            tries=$((tries + 1))
        done
    done
    ETCD_ENDPOINTS=$(printf 'http://%s,' "${ETCD_CLIENTS[@]}")
    ETCD_ENDPOINTS=${ETCD_ENDPOINTS%,}
}

# --- loads -------------------------------------------------------------------------

declare -A RPS P99 BAD

# run_wrk NAME CONNECTIONS URL [LUA_SCRIPT]: one wrk load; req/s into RPS[NAME], the
# 99th percentile latency into P99[NAME], non-2xx answers and socket errors into BAD[NAME].
run_wrk() {
    local name=$1 connections=$2 url=$3 script=${4:-} threads=$THREADS out
    out="$WORK/wrk-$name.txt"
    [ "$threads" -le "$connections" ] || threads=$connections
    local args=(-t"$threads" -c"$connections" -d"${DURATION}s" --latency)
    [ -z "$script" ] || args+=(-s "$BENCH_DIR/$script")
    log "wrk $name: ${args[*]} $url"
    # In the background and waited for, so that a signal to this script acts at once.
    timeout "$((DURATION + 30))" wrk "${args[@]}" "$url" >"$out" 2>&1 &
    CHILD=$!
    wait "$CHILD" || log "wrk $name failed: $(tail -n 1 "$out")"
    CHILD=
    RPS[$name]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    P99[$name]=$(awk '$1 == "99%" { print $2 }' "$out")
    BAD[$name]=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    : "${RPS[$name]:=0}" "${P99[$name]:=-}"
    sleep 1
}

# --- figures -------------------------------------------------------------------------

# ratio A B: A / B with 2 decimals, "-" when B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }
# meets R MIN: "yes" when R >= MIN.
meets() { awk -v r="$1" -v m="$2" 'BEGIN { print (r != "-" && r + 0 >= m + 0) ? "yes" : "NO" }'; }
# mark NAME...: "!" when one of the loads had non-2xx answers or socket errors.
mark() {
    local name
    for name in "$@"; do
        [ "${BAD[$name]}" = 0 ] || { printf '!'; return; }
    done
}

