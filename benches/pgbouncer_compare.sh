#!/usr/bin/env bash
# pgbench straight against the primary vs. through PgBouncer vs. through
# pgrouter (transaction pooling, pool_size 20 per node), on the local demo
# cluster, in one run: select-only and TPC-B-like, -M simple and -M prepared,
# 1 / 16 / 500 clients. Each cell is the median of REPEAT runs; targets
# alternate within each repetition so drift hits all three alike.
#
#   benches/pgbouncer_compare.sh
#   DURATION=5 REPEAT=3 CLIENTS="16 500" benches/pgbouncer_compare.sh
#
# Prints, per cell: TPS and mean latency of each target, the proxy's CPU time
# per transaction (user+system from /proc/<pid>/stat; pgrouter's figure is the
# whole `pgrouter demo` process: router, lag monitor and status line), and
# pgrouter's TPS as a ratio to PgBouncer's and to direct.
#
# PgBouncer comes from Debian's package (installed when missing), 1.18 there:
# it has no protocol-level prepared statements in transaction mode, so the
# -M prepared cells use PgBouncer in *session* mode with a pool as large as the
# client count (a session pool of 20 would leave 480 of 500 clients waiting for
# the whole run); the table marks them "session". pgrouter stays in transaction
# mode with 20 connections per node in every cell.
# pgbench logs in with SCRAM-SHA-256 to every target (to PgBouncer as set up
# in benches/bouncer.sh; the demo cluster's servers ask for it too), so each
# pays the same per-connection cost.
#
# Environment (all optional): DURATION (10), REPEAT (3), CLIENTS ("1 16 500"),
# WORKLOADS ("select-only tpcb-like"), MODES ("simple prepared"), SCALE (10),
# POOL_SIZE (20), ROUTER_PORT (16432), CLUSTER_PORT (25432), BOUNCER_PORT
# (16543), BENCH_DIR, MAX_THREADS, PGBENCH, PSQL.
set -euo pipefail

DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-"1 16 500"}
WORKLOADS=${WORKLOADS:-"select-only tpcb-like"}
MODES=${MODES:-"simple prepared"}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
ROUTER_PORT=${ROUTER_PORT:-16432}
CLUSTER_PORT=${CLUSTER_PORT:-25432}
BOUNCER_PORT=${BOUNCER_PORT:-16543}
BENCH_DIR=${BENCH_DIR:-/tmp/pgrouter-bench}
MAX_THREADS=${MAX_THREADS:-$(nproc 2>/dev/null || echo 2)}
DB_USER=pgrouter
DB_PASSWORD=pgrouter
ROUTER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER_PORT/postgres"
DIRECT_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$CLUSTER_PORT/postgres"
BOUNCER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$BOUNCER_PORT/postgres"

cd "$(dirname "$0")/.."

# shellcheck source=benches/lib.sh
. benches/lib.sh

# shellcheck source=benches/bouncer.sh
. benches/bouncer.sh
ensure_pgbouncer

# user+system CPU ticks of a process.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Runs pgbench once: prints "tps latency_ms transactions" or FAIL.
run_once() {
    local url=$1 workload=$2 mode=$3 clients=$4 threads args out
    threads=$((clients < MAX_THREADS ? clients : MAX_THREADS))
    args=(-n -M "$mode" -T "$DURATION" -c "$clients" -j "$threads")
    [ "$workload" = select-only ] && args+=(-S)
    if ! "$PGBENCH" "${args[@]}" "$url" >"$work/run.out" 2>"$work/run.err"; then
        { echo "pgbench ${args[*]} $url failed:"; tail -5 "$work/run.err"; } >&2
        echo FAIL
        return
    fi
    out=$(awk '
        /^tps = /                          { tps = $3 }
        /^latency average = /              { lat = $4 }
        /^number of transactions actually processed:/ { n = $6 }
        /^number of failed transactions: / { failed = $5 }
        END { if (tps == "" || (failed != "" && failed != 0)) print "FAIL"; else print tps, lat, n }' "$work/run.out")
    [ "$out" = FAIL ] && { echo "pgbench ${args[*]} $url: failed transactions" >&2; tail -3 "$work/run.out" >&2; }
    echo "$out"
}

# Median of the numbers on stdin (FAIL when none).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "FAIL"; else print v[int((NR + 1) / 2)] }'; }

demo_pid_router=$demo_pid
rows=()
for workload in $WORKLOADS; do
    for mode in $MODES; do
        for clients in $CLIENTS; do
            if [ "$mode" = prepared ]; then
                bouncer_mode=session
                bouncer_size=$clients
            else
                bouncer_mode=transaction
                bouncer_size=$POOL_SIZE
            fi
            declare -A tps=() lat=() cpu=()
            for _ in $(seq 1 "$REPEAT"); do
                for target in direct bouncer router; do
                    # PgBouncer runs only for its own runs: a session pool keeps
                    # its server connections, which direct runs need.
                    case $target in
                        direct) url=$DIRECT_URL pid= ;;
                        bouncer)
                            start_bouncer "$bouncer_mode" "$bouncer_size"
                            url=$BOUNCER_URL pid=$bouncer_pid
                            # Unmeasured warm-up: a fresh session pool would
                            # otherwise open its server connections during the run.
                            DURATION=2 run_once "$url" select-only "$mode" "$clients" >/dev/null
                            ;;
                        router)
                            stop_bouncer
                            url=$ROUTER_URL pid=$demo_pid_router
                            ;;
                    esac
                    echo "$workload -M $mode -c $clients: $target ..." >&2
                    before=0
                    [ -n "$pid" ] && before=$(cpu_ticks "$pid")
                    result=$(run_once "$url" "$workload" "$mode" "$clients")
                    [ "$result" = FAIL ] && continue
                    read -r t l n <<<"$result"
                    tps[$target]+="$t"$'\n'
                    lat[$target]+="$l"$'\n'
                    if [ -n "$pid" ]; then
                        used=$(($(cpu_ticks "$pid") - before))
                        cpu[$target]+="$(awk -v u="$used" -v n="$n" -v k="$TICK_US" 'BEGIN { printf "%.1f", u * k / n }')"$'\n'
                    fi
                done
            done
            m() { printf '%s' "${1:-}" | median; }
            td=$(m "${tps[direct]:-}") tb=$(m "${tps[bouncer]:-}") tr=$(m "${tps[router]:-}")
            ld=$(m "${lat[direct]:-}") lb=$(m "${lat[bouncer]:-}") lr=$(m "${lat[router]:-}")
            cb=$(m "${cpu[bouncer]:-}") cr=$(m "${cpu[router]:-}")
            ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
            rows+=("$(printf '%-11s %-8s %5s %-11s | %9s %9s %9s | %7s %7s %7s | %7s %7s | %6s %6s' \
                "$workload" "$mode" "$clients" "$bouncer_mode" "$td" "$tb" "$tr" "$ld" "$lb" "$lr" \
                "$cb" "$cr" "$(ratio "$tr" "$tb")" "$(ratio "$tr" "$td")")")
            echo "${rows[-1]}" >&2
            unset tps lat cpu
        done
    done
done
stop_bouncer

echo
echo "pgbench, scale $SCALE, $DURATION s per run, median of $REPEAT, pool_size $POOL_SIZE," \
    "pgbench -j <= $MAX_THREADS, $(nproc 2>/dev/null || echo '?') CPUs, $("$PGBOUNCER" --version 2>/dev/null | head -1)"
printf '%-11s %-8s %5s %-11s | %9s %9s %9s | %7s %7s %7s | %7s %7s | %6s %6s\n' \
    workload mode clients bouncer "TPS dir" "TPS bnc" "TPS rtr" "ms dir" "ms bnc" "ms rtr" \
    "us/t bnc" "us/t rtr" "r/bnc" "r/dir"
printf '%s\n' "${rows[@]}"
