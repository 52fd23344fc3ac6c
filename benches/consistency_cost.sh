#!/usr/bin/env bash
# What read-your-writes costs writers: TPC-B-like pgbench through pgrouter with
# `consistency = none` vs `causal` (the default, which learns each commit's
# WAL position) vs `pin`, on the local demo cluster, in one run. Modes are
# chosen per connection with PGOPTIONS="-c pgrouter.consistency=...". Runs
# alternate between modes and each cell is the median of REPEAT runs.
#
#   benches/consistency_cost.sh
#   DURATION=5 REPEAT=5 CLIENTS="1 16" benches/consistency_cost.sh
#
# Environment (all optional): DURATION (10), REPEAT (3), CLIENTS ("1 16"),
# MODES ("simple prepared"), SCALE (10), ROUTER_PORT (16432), CLUSTER_PORT
# (25432), BENCH_DIR (/tmp/pgrouter-bench), MAX_THREADS (CPUs), PGBENCH, PSQL.
set -euo pipefail

DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-"1 16"}
MODES=${MODES:-"simple prepared"}
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

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "FAIL"; else print v[int((NR + 1) / 2)] }'; }

rows=()
for mode in $MODES; do
    for clients in $CLIENTS; do
        declare -A runs=([none]="" [causal]="" [pin]="")
        for _ in $(seq 1 "$REPEAT"); do
            for consistency in none causal pin; do
                echo "tpcb-like -M $mode -c $clients consistency=$consistency ..." >&2
                tps=$(PGOPTIONS="-c pgrouter.consistency=$consistency" \
                    tps_of "$ROUTER_URL" tpcb-like "$mode" "$clients")
                [ "$tps" = FAIL ] || runs[$consistency]+="$tps"$'\n'
            done
        done
        none=$(printf '%s' "${runs[none]}" | median)
        causal=$(printf '%s' "${runs[causal]}" | median)
        pin=$(printf '%s' "${runs[pin]}" | median)
        ratio=$(awk -v n="$none" -v c="$causal" 'BEGIN { if (n + 0 > 0 && c + 0 > 0) printf "%.3f", c / n; else print "-" }')
        echo "runs -M $mode -c $clients: none [$(echo ${runs[none]})] causal [$(echo ${runs[causal]})] pin [$(echo ${runs[pin]})]" >&2
        rows+=("$(printf '%-9s %7s %12s %12s %12s %14s' "$mode" "$clients" "$none" "$causal" "$pin" "$ratio")")
    done
done

echo
echo "tpcb-like through pgrouter, scale $SCALE, $DURATION s per run, median of $REPEAT, $(nproc 2>/dev/null || echo '?') CPUs"
printf '%-9s %7s %12s %12s %12s %14s\n' mode clients "TPS none" "TPS causal" "TPS pin" "causal/none"
printf '%s\n' "${rows[@]}"
