#!/usr/bin/env bash
# A soak of one kvstore-server: `kv bench soak` (mixed requests, watchers coming and
# going, slow watchers, connections opened and dropped) while the server's RSS, open
# files and threads are sampled from /proc; optionally with /metrics scraped too.
#
#   bench/soak.sh                         # 10 minutes, nothing reading /metrics
#   SCRAPE=2 bench/soak.sh                # the same with /metrics fetched every 2 s
#   DURATION=120 bench/soak.sh --keys 10000 --clients 16   # more `kv bench soak` flags
#
# Environment:
#   DURATION=600        seconds of load (the first minute is the warm-up)
#   SCRAPE=0            seconds between fetches of /metrics (0: never)
#   SERVER_FLAGS="--cache-mb 16 --retain-revisions 20000"
#                       flags of kvstore-server (besides --listen, --data-dir). The
#                       change history is data the server holds: it grows until it
#                       keeps --retain-revisions changes, which takes the default
#                       100,000 about 90 s at this load on 2 cores, past the warm-up.
#   KVSTORE_LOG=warn    RUST_LOG of the server
#   ENGINE=sled         sled (a data dir in the temp folder) or etcd (a 3-member etcd
#                       cluster on loopback that the script starts, etcd from the
#                       PATH or Debian's package as in etcd.sh; a build with the etcd
#                       engine). On etcd, --retain-revisions is sled's only: the
#                       cluster's history grows until etcd compacts it, outside the
#                       server's RSS.
#   SKIP_BUILD=1        use the release binaries already built
#
# It builds the release binaries, starts kvstore-server on 127.0.0.1 with a data dir
# in a temp folder, runs `kv bench soak --server-pid PID` against it with the flags
# given, and stops everything it started on exit (also on Ctrl-C). The exit status
# is kv's: 0 when the soak passed, 3 when it found errors or growth.
set -euo pipefail

DURATION=${DURATION:-600}
SCRAPE=${SCRAPE:-0}
SERVER_FLAGS=${SERVER_FLAGS:---cache-mb 16 --retain-revisions 20000}
KVSTORE_LOG=${KVSTORE_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}
ENGINE=${ENGINE:-sled}

for n in DURATION SCRAPE; do
    case ${!n} in
        '' | *[!0-9]*) echo "soak.sh: $n must be a whole number of seconds, not '${!n}'" >&2; exit 2 ;;
    esac
done
[ "$DURATION" -gt 0 ] || { echo "soak.sh: DURATION must be above 0" >&2; exit 2; }
case $ENGINE in sled | etcd) ;; *) echo "soak.sh: ENGINE is sled or etcd, not '$ENGINE'" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$ROOT/bench"
NAME=soak.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

command -v curl >/dev/null 2>&1 || [ "$SCRAPE" -eq 0 ] || die "SCRAPE needs curl"

cd "$ROOT"
FEATURES=()
[ "$ENGINE" = sled ] || FEATURES=(--features kvstore-server/etcd)
if [ "$SKIP_BUILD" != 1 ]; then
    log "building (release)"
    cargo build --release -p kvstore-server -p kv-cli --bins "${FEATURES[@]}"
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot find cargo's target directory"
SERVER_BIN="$TARGET_DIR/release/kvstore-server"
KV_BIN="$TARGET_DIR/release/kv"
for bin in "$SERVER_BIN" "$KV_BIN"; do
    [ -x "$bin" ] || die "$bin is missing (build it, or run without SKIP_BUILD=1)"
done

STORE=(--data-dir "$WORK/data")
if [ "$ENGINE" = etcd ]; then
    find_etcd "$TARGET_DIR"
    log "starting a 3-member etcd (work dir $WORK)"
    start_etcd 3
    STORE=(--etcd-endpoints "$ETCD_ENDPOINTS")
fi

# shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
RUST_LOG=$KVSTORE_LOG "$SERVER_BIN" --listen 127.0.0.1:0 "${STORE[@]}" $SERVER_FLAGS \
    >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
ADDRESS=$(wait_listening server "$SERVER_PID" "$WORK/server.out")
log "kvstore-server on $ENGINE $SERVER_FLAGS on $ADDRESS (pid $SERVER_PID)"

if [ "$SCRAPE" -gt 0 ]; then
    log "fetching /metrics every $SCRAPE s"
    (
        while kill -0 "$SERVER_PID" 2>/dev/null; do
            curl -sf -o /dev/null "http://$ADDRESS/metrics" || true
            sleep "$SCRAPE"
        done
    ) &
    PIDS+=("$!")
fi

status=0
KV_URL="http://$ADDRESS" "$KV_BIN" bench soak --duration "$DURATION" --server-pid "$SERVER_PID" "$@" || status=$?
if [ -s "$WORK/server.err" ]; then
    log "the server's log:"
    tail -n 20 "$WORK/server.err" >&2
fi
exit "$status"
