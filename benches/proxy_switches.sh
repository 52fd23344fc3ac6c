#!/usr/bin/env bash
# Why a proxy costs what it costs: during `pgbench -S -c 16` through PgBouncer
# (transaction pooling, pool 20) and through pgrouter, prints per transaction
# the proxy's CPU time (and its user and system parts), its voluntary (blocked) and involuntary (preempted)
# context switches, and the whole machine's busy CPU time (all processes:
# pgbench, proxy, servers). Direct runs against the primary and a replica
# give the baseline without a proxy.
#
#   bash benches/proxy_switches.sh
#   TARGETS="bouncer router" CLIENTS=16 DURATION=5 bash benches/proxy_switches.sh
#   WARMUP=0 bash benches/proxy_switches.sh   # skip the 10 s unmeasured warm-up through the router
#   RENICE=-5 bash benches/proxy_switches.sh   # experiment: the router's threads at nice -5
#   RECORD=1 TARGETS=router bash benches/proxy_switches.sh   # perf record -g, then:
#   perf report -i /tmp/proxy-switches/router.data --no-children --sort sym
set -euo pipefail
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-16}
TARGETS=${TARGETS:-"primary replica bouncer router bouncer router"}
SCALE=${SCALE:-10} ROUTER_PORT=${ROUTER_PORT:-16432} CLUSTER_PORT=${CLUSTER_PORT:-25432}
BOUNCER_PORT=${BOUNCER_PORT:-16543} BENCH_DIR=${BENCH_DIR:-/tmp/pgrouter-bench} MAX_THREADS=2
DB_USER=pgrouter DB_PASSWORD=pgrouter
ROUTER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER_PORT/postgres"
DIRECT_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$CLUSTER_PORT/postgres"
REPLICA_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$((CLUSTER_PORT + 1))/postgres"
BOUNCER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$BOUNCER_PORT/postgres"
out=/tmp/proxy-switches
mkdir -p "$out"

# shellcheck source=benches/lib.sh
. benches/lib.sh
# shellcheck source=benches/bouncer.sh
. benches/bouncer.sh
ensure_pgbouncer
start_bouncer transaction 20

# "voluntary involuntary" context switches over all threads of a process.
switches() {
    cat /proc/"$1"/task/*/status | awk '/^voluntary/ {v += $2} /^nonvoluntary/ {n += $2} END {print v + 0, n + 0}'
}
# "user system" CPU ticks of a process.
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

if [ -n "${RENICE:-}" ]; then
    # Experiment: every thread of the router at another nice level.
    for task in /proc/"$demo_pid"/task/*; do renice -n "$RENICE" -p "${task##*/}" >/dev/null; done
fi

if [ "${WARMUP:-10}" -gt 0 ]; then
    # Unmeasured: the replicas' first reads after `pgbench -i` are slower.
    "$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T "${WARMUP:-10}" "$ROUTER_URL" >/dev/null 2>&1 || true
fi

printf '%-8s %9s | per transaction: %10s %8s %8s %10s %10s %12s\n' target tps "proxy us" "user" "system" "voluntary" "preempted" "machine us"
for target in $TARGETS; do
    case $target in
    bouncer) pid=$bouncer_pid url=$BOUNCER_URL ;;
    router) pid=$demo_pid url=$ROUTER_URL ;;
    primary) pid= url=$DIRECT_URL ;;
    replica) pid= url=$REPLICA_URL ;;
    *) die "unknown target $target" ;;
    esac
    read -r v0 n0 <<<"$( [ -n "$pid" ] && switches "$pid" || echo 0 0)"
    read -r u0 s0 <<<"$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)"
    m0=$(machine_ticks)
    recorder=
    if [ -n "${RECORD:-}" ] && [ -n "$pid" ]; then
        perf record -F 2000 -g -p "$pid" -o "$out/$target.data" -- sleep "$DURATION" 2>/dev/null &
        recorder=$!
    fi
    txns=$("$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T "$DURATION" "$url" 2>&1 |
        sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    [ -n "$recorder" ] && wait "$recorder"
    read -r v1 n1 <<<"$( [ -n "$pid" ] && switches "$pid" || echo 0 0)"
    read -r u1 s1 <<<"$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)"
    m1=$(machine_ticks)
    [ -n "$txns" ] && [ "$txns" -gt 0 ] || die "pgbench through $target failed"
    awk -v t="$target" -v x="$txns" -v d="$DURATION" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v m=$((m1 - m0)) \
        -v v=$((v1 - v0)) -v n=$((n1 - n0)) -v us="$TICK_US" \
        'BEGIN { printf "%-8s %9.0f | per transaction: %10.1f %8.1f %8.1f %10.2f %10.2f %12.1f\n", t, x / d, (u + s) * us / x, u * us / x, s * us / x, v / x, n / x, m * us / x }'
done
stop_bouncer
