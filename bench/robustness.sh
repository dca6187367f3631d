#!/usr/bin/env bash
# Long robustness runs: the suite of kvstore-server/tests/robustness/ (recorded
# histories under faults, checked for linearizability and the watch guarantees)
# run again and again with new seeds until the time is up, on a release build.
#
#   bench/robustness.sh [--engine sled|etcd|both] [--minutes N] [--segment SECONDS]
#                       [--seed N] [--faults N] [--mix FAULT,FAULT...] [--clients N]
#
# Each segment is one run of --segment seconds (default 60) with its own seed
# (--seed, then +1 each segment) and --faults faults (default: one per 10 s of the
# segment) picked from --mix (default: every fault the engine has: on sled
# KillServer, StopServer, CrashBeforeFlush, CrashAfterFlush, CrashBetweenLogAndKv,
# FlushError, Compact; on etcd KillLeader, KillFollower, KillServer, StopServer,
# PartitionMember, PartitionReplica, OneWayReplica, DelayReplica, Compact). A segment that finds an
# anomaly prints it with its seed and leaves its history under target/robustness/;
# the run goes on. At the end: segments, requests recorded and checked, faults
# struck, watch changes checked, anomalies, per engine.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=both minutes=30 segment=60 seed=1 faults= mix= clients=6
while [ $# -gt 0 ]; do
    case $1 in
        --engine) engine=$2; shift 2 ;;
        --minutes) minutes=$2; shift 2 ;;
        --segment) segment=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --faults) faults=$2; shift 2 ;;
        --mix) mix=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "robustness.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
faults=${faults:-$(( segment / 10 > 2 ? segment / 10 : 2 ))}
case $engine in
    sled) engines=(Sled) ;;
    etcd) engines=(Etcd) ;;
    both) engines=(Sled Etcd) ;;
    *) echo "robustness.sh: --engine is sled, etcd or both" >&2; exit 2 ;;
esac

cargo build --release -p kvstore-server -p kv-cli --all-features
bin=$(cargo test --release -p kvstore-server --all-features --test robustness --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*robustness[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "robustness.sh: the test binary was not built" >&2; exit 1; }
log=$(mktemp "${TMPDIR:-/tmp}/kvstore-robustness.XXXXXX")
trap 'rm -f "$log"' EXIT

for name in "${engines[@]}"; do
    deadline=$(( $(date +%s) + minutes * 60 ))
    s=$seed
    while [ "$(date +%s)" -lt "$deadline" ]; do
        KVSTORE_REQUIRE_ETCD=1 KVSTORE_ROBUSTNESS_SECONDS=$segment KVSTORE_ROBUSTNESS_SEEDS=$s \
        KVSTORE_ROBUSTNESS_FAULTS=$faults KVSTORE_ROBUSTNESS_CLIENTS=$clients \
        KVSTORE_ROBUSTNESS_FAULT_MIX=$mix \
            "$bin" --exact "recorded_histories_under_faults_keep_every_promise::engine_$([ "$name" = Sled ] && echo 1 || echo 2)_Engine__$name" \
            >"$log.out" 2>&1 || true
        grep -a '^robustness ' "$log.out" | sort -u | tee -a "$log"
        if grep -aq 'anomalies; history' "$log.out"; then
            grep -a -A40 'anomalies; history' "$log.out" | head -60
        fi
        s=$(( s + 1 ))
    done
    rm -f "$log.out"
done

# The totals, from the one line each segment prints.
awk '
    /^robustness [a-z]+ seed [0-9]+: / {
        e = $2; segs[e]++
        for (i = 1; i <= NF; i++) {
            if ($(i+1) == "requests") req[e] += $i
            if ($(i+1) == "faults") flt[e] += $i
            if ($(i+1) == "watch" && $(i+2) == "changes") chg[e] += $i
            if ($(i+1) == "anomalies,") ano[e] += $i
        }
        if ($0 ~ /NOT LINEARIZABLE/) bad[e]++
        if ($0 ~ /NOT DECIDED/) und[e]++
    }
    END {
        for (e in segs)
            printf "%s: %d segments, %d requests recorded and checked, %d faults, %d watch changes checked, %d anomalies, %d not linearizable, %d not decided\n",
                e, segs[e], req[e], flt[e], chg[e], ano[e], bad[e], und[e]
    }' "$log"
