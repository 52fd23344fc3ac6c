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
# shellcheck source=benches/lib.sh
. benches/lib.sh

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
