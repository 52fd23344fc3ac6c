#!/usr/bin/env bash
# pgbench straight against the primary vs. through pgrouter, on the local demo
# cluster (a primary + 2 streaming replicas from the local PostgreSQL binaries).
#
#   benches/pgbench_compare.sh                 # 10 s per run
#   DURATION=5 benches/pgbench_compare.sh
#
# Environment (all optional):
#   DURATION      seconds per pgbench run (10)
#   SCALE         pgbench -i scale factor (10)
#   ROUTER_PORT   port the router listens on (16432)
#   CLUSTER_PORT  port of the primary; the replicas use the next two (25432)
#   BENCH_DIR     cluster data dir, wiped on start (/tmp/pgrouter-bench)
#   MAX_THREADS   upper bound for pgbench -j (number of CPUs)
#   PGBENCH, PSQL paths of the client programs (PATH, then /usr/lib/postgresql/*/bin)
#
# Through the router, select-only reads go to the replicas; TPC-B-like
# transactions go to the primary. Router, pgbench and all three servers share
# this machine's CPUs, so ratios are a lower bound for a deployment with the
# router on its own host.
set -euo pipefail
export LC_ALL=C # pgbench and printf agree on the decimal point

DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
ROUTER_PORT=${ROUTER_PORT:-16432}
CLUSTER_PORT=${CLUSTER_PORT:-25432}
BENCH_DIR=${BENCH_DIR:-/tmp/pgrouter-bench}
MAX_THREADS=${MAX_THREADS:-$(nproc 2>/dev/null || echo 2)}
DB_USER=pgrouter
DB_PASSWORD=pgrouter

ROUTER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER_PORT/postgres"
DIRECT_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$CLUSTER_PORT/postgres"

cd "$(dirname "$0")/.."

die() {
    echo "pgbench_compare: $*" >&2
    exit 1
}

# A PostgreSQL client program: $2 if set, else PATH, else the newest
# /usr/lib/postgresql/*/bin.
find_client() {
    local name=$1 given=$2 dir
    if [ -n "$given" ]; then
        echo "$given"
        return
    fi
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return
        fi
    done
    die "$name not found on PATH nor in /usr/lib/postgresql/*/bin (install postgresql-client)"
}

PGBENCH=$(find_client pgbench "${PGBENCH:-}")
PSQL=$(find_client psql "${PSQL:-}")

echo "building the router (release) ..." >&2
cargo build --release --bin pgrouter
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
PGROUTER=${target_dir:-${CARGO_TARGET_DIR:-target}}/release/pgrouter
[ -x "$PGROUTER" ] || die "no router binary at $PGROUTER"

work=$(mktemp -d)
demo_log=$work/demo.log
demo_pid=

# Stops the demo with SIGINT (its graceful shutdown also stops the cluster);
# SIGTERM and then SIGKILL if it does not go away.
cleanup() {
    local status=$? i
    if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
        echo "stopping the demo (pid $demo_pid) ..." >&2
        kill -INT "$demo_pid" 2>/dev/null || true
        for i in $(seq 1 60); do
            kill -0 "$demo_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$demo_pid" 2>/dev/null; then
            echo "demo ignored SIGINT for 30 s; sending SIGTERM" >&2
            kill -TERM "$demo_pid" 2>/dev/null || true
            sleep 5
            kill -KILL "$demo_pid" 2>/dev/null || true
        fi
        wait "$demo_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$demo_log" ]; then
        echo "--- last lines of the demo log ($demo_log) ---" >&2
        tail -n 30 "$demo_log" >&2 || true
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "starting the demo: router on $ROUTER_PORT, primary on $CLUSTER_PORT, replicas on $((CLUSTER_PORT + 1)) and $((CLUSTER_PORT + 2)) ..." >&2
"$PGROUTER" demo --port "$ROUTER_PORT" --cluster-port "$CLUSTER_PORT" --dir "$BENCH_DIR" \
    >"$demo_log" 2>&1 &
demo_pid=$!

for i in $(seq 1 240); do
    grep -q '^ready: ' "$demo_log" && break
    kill -0 "$demo_pid" 2>/dev/null || die "the demo exited before it was ready"
    sleep 0.5
done
grep -q '^ready: ' "$demo_log" || die "the demo was not ready within 120 s"

echo "pgbench -i -s $SCALE against the primary ..." >&2
"$PGBENCH" -i -q -s "$SCALE" "$DIRECT_URL" >"$work/init.out" 2>&1 ||
    { cat "$work/init.out" >&2; die "pgbench -i failed"; }

# Both replicas have replayed everything the primary wrote.
caught_up=
for i in $(seq 1 120); do
    caught_up=$("$PSQL" -X -At -d "$DIRECT_URL" -c \
        "SELECT count(*) = 2 AND bool_and(replay_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication" ||
        true)
    [ "$caught_up" = t ] && break
    sleep 0.5
done
[ "$caught_up" = t ] || die "the replicas did not catch up within 60 s"

# Runs pgbench once and prints its tps, or FAIL (with pgbench's output on stderr).
tps_of() {
    local url=$1 workload=$2 mode=$3 clients=$4 threads args failed tps
    threads=$((clients < MAX_THREADS ? clients : MAX_THREADS))
    args=(-M "$mode" -T "$DURATION" -c "$clients" -j "$threads")
    [ "$workload" = select-only ] && args+=(-S)
    if ! "$PGBENCH" "${args[@]}" "$url" >"$work/run.out" 2>"$work/run.err"; then
        {
            echo "pgbench ${args[*]} $url failed:"
            cat "$work/run.out" "$work/run.err"
        } >&2
        echo FAIL
        return
    fi
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/run.out")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/run.out")
    if [ -z "$tps" ] || { [ -n "$failed" ] && [ "$failed" != 0 ]; }; then
        {
            echo "pgbench ${args[*]} $url: $failed failed transactions or no tps:"
            cat "$work/run.out" "$work/run.err"
        } >&2
        echo FAIL
        return
    fi
    printf '%.1f\n' "$tps"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
failures=0
rows=()
for workload in select-only tpcb-like; do
    for mode in simple prepared; do
        for clients in 1 16; do
            echo "$workload -M $mode -c $clients: direct ..." >&2
            direct=$(tps_of "$DIRECT_URL" "$workload" "$mode" "$clients")
            echo "$workload -M $mode -c $clients: router ..." >&2
            routed=$(tps_of "$ROUTER_URL" "$workload" "$mode" "$clients")
            [ "$direct" != FAIL ] || failures=$((failures + 1))
            [ "$routed" != FAIL ] || failures=$((failures + 1))
            ratio=$(awk -v d="$direct" -v r="$routed" \
                'BEGIN { if (d + 0 > 0 && r ~ /^[0-9.]+$/) printf "%.2f", r / d; else print "-" }')
            rows+=("$(printf '%-12s %-9s %7s %12s %12s %6s' \
                "$workload" "$mode" "$clients" "$direct" "$routed" "$ratio")")
        done
    done
done

echo
echo "pgbench, scale $SCALE, $DURATION s per run, pgbench -j <= $MAX_THREADS, $(nproc 2>/dev/null || echo '?') CPUs," \
    "load average before/after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
printf '%-12s %-9s %7s %12s %12s %6s\n' workload mode clients "TPS direct" "TPS router" ratio
printf '%s\n' "${rows[@]}"

[ "$failures" -eq 0 ] || die "$failures pgbench run(s) failed"
