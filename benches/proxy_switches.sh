#!/usr/bin/env bash
# Why a proxy costs what it costs: during `pgbench -S -c 16` through PgBouncer
# (transaction pooling, pool 20) and through pgrouter, prints per transaction
# the proxy's CPU time (and its user and system parts), its voluntary (blocked)
# and involuntary (preempted) context switches, and the whole machine's busy
# CPU time split by who spent it: pgbench, the PostgreSQL servers (every
# `postgres` process, and through each postmaster the backends that exited
# during the run), the proxy, and the rest (kernel threads, interrupts). On this machine the servers and pgbench share the CPUs
# with the proxy, so TPS follows the machine's total, not the proxy's alone.
#
# Targets:
#   primary, replica   pgbench straight to the primary / the first replica
#   bouncer            PgBouncer in front of the primary (as in pgbouncer_compare.sh)
#   bouncer-replica    PgBouncer in front of the first replica
#   router             pgrouter (the demo) reading from both replicas
#   router1            a second pgrouter reading from the first replica only
#   null-relay         benches/null_relay.rs: a tokio byte relay to the first
#                      replica, one server connection per client, no other work
# bouncer-replica against router1 compares the two proxies on the same server;
# null-relay is the floor for a relay built on tokio: what router1 spends above
# it is pgrouter's own work (framing, routing, pooling);
# router1 against router shows what spreading reads over two replicas costs
# when every replica runs on this same machine.
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
TARGETS=${TARGETS:-"primary replica bouncer bouncer-replica null-relay router1 router bouncer bouncer-replica null-relay router1 router"}
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
REPLICA_PORT=$((CLUSTER_PORT + 1))
ROUTER1_PORT=$((ROUTER_PORT + 1))
ROUTER1_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER1_PORT/postgres"

# PgBouncer in front of the server on port $1, restarted only when that changes.
bouncer_server=
bouncer_for() {
    [ "$bouncer_server" = "$1" ] && return
    start_bouncer transaction 20 5000 "$1"
    bouncer_server=$1
    # Unmeasured: PgBouncer opens its server connections.
    "$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T 2 "$BOUNCER_URL" >/dev/null 2>&1 || true
}

# A second router with the primary and the first replica only.
router1_pid=
stop_router1() {
    [ -n "$router1_pid" ] && kill -INT "$router1_pid" 2>/dev/null && wait "$router1_pid" 2>/dev/null
    router1_pid=
}
trap 'status=$?; stop_router1; stop_null_relay; stop_bouncer; rm -rf "$bouncer_dir"; (exit $status); cleanup' EXIT
# Waits up to 10 s until URL $1 answers; else dies naming $3 and its log $2.
wait_answering() {
    for _ in $(seq 1 100); do
        "$PSQL" -X -At -d "$1" -c "SELECT 1" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "$3 did not start: $(tail -5 "$2")"
}
start_router1() {
    write_one_replica_config "$work/router1.toml" "$ROUTER1_PORT"
    "$PGROUTER" run --config "$work/router1.toml" >"$work/router1.log" 2>&1 &
    router1_pid=$!
    wait_answering "$ROUTER1_URL" "$work/router1.log" "the one-replica router"
}
case " $TARGETS " in *" router1 "*) start_router1 ;; esac

# The floor: a relay that does nothing but copy bytes (benches/null_relay.rs).
NULL_RELAY_PORT=$((ROUTER_PORT + 2))
NULL_RELAY_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$NULL_RELAY_PORT/postgres"
null_relay_pid=
stop_null_relay() {
    if [ -n "$null_relay_pid" ]; then
        kill "$null_relay_pid" 2>/dev/null || true
        wait "$null_relay_pid" 2>/dev/null || true
    fi
    null_relay_pid=
}
start_null_relay() {
    cargo build --release --example null_relay
    "${target_dir:-${CARGO_TARGET_DIR:-target}}/release/examples/null_relay" \
        "127.0.0.1:$NULL_RELAY_PORT" "127.0.0.1:$REPLICA_PORT" >"$work/null_relay.log" 2>&1 &
    null_relay_pid=$!
    wait_answering "$NULL_RELAY_URL" "$work/null_relay.log" "the null relay"
}
case " $TARGETS " in *" null-relay "*) start_null_relay ;; esac

# "voluntary involuntary" context switches over all threads of a process.
switches() {
    cat /proc/"$1"/task/*/status | awk '/^voluntary/ {v += $2} /^nonvoluntary/ {n += $2} END {print v + 0, n + 0}'
}
# "user system" CPU ticks of a process.
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
# CPU ticks of the PostgreSQL servers: every live `postgres` process's own
# (user + system) and its reaped children's, so a backend that exited during
# the run still counts, in its postmaster's children time (direct runs and the
# null relay open and close backends with each pgbench run).
server_ticks() {
    local pid sum=0
    for pid in $(pgrep -x postgres); do
        sum=$((sum + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
# CPU ticks of this shell's finished children (pgbench runs here).
children_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

if [ -n "${RENICE:-}" ]; then
    # Experiment: every thread of the router at another nice level.
    for task in /proc/"$demo_pid"/task/*; do renice -n "$RENICE" -p "${task##*/}" >/dev/null; done
fi

if [ "${WARMUP:-10}" -gt 0 ]; then
    # Unmeasured: the replicas' first reads after `pgbench -i` are slower.
    "$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T "${WARMUP:-10}" "$ROUTER_URL" >/dev/null 2>&1 || true
    if [ -n "$router1_pid" ]; then
        "$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T "${WARMUP:-10}" "$ROUTER1_URL" >/dev/null 2>&1 || true
    fi
fi

printf '%-15s %7s | per transaction: %7s %6s %6s %6s %6s | machine us: %6s %7s %7s %6s %6s\n' \
    target tps "proxy" user system volunt preemp total pgbench servers proxy rest
for target in $TARGETS; do
    case $target in
    bouncer) bouncer_for "$CLUSTER_PORT" && pid=$bouncer_pid url=$BOUNCER_URL ;;
    bouncer-replica) bouncer_for "$REPLICA_PORT" && pid=$bouncer_pid url=$BOUNCER_URL ;;
    router) pid=$demo_pid url=$ROUTER_URL ;;
    router1) pid=$router1_pid url=$ROUTER1_URL ;;
    null-relay) pid=$null_relay_pid url=$NULL_RELAY_URL ;;
    primary) pid= url=$DIRECT_URL ;;
    replica) pid= url=$REPLICA_URL ;;
    *) die "unknown target $target" ;;
    esac
    [ -n "$url" ] || die "target $target is not running"
    read -r v0 n0 <<<"$( [ -n "$pid" ] && switches "$pid" || echo 0 0)"
    read -r u0 s0 <<<"$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)"
    m0=$(machine_ticks) srv0=$(server_ticks) c0=$(children_ticks)
    recorder=
    if [ -n "${RECORD:-}" ] && [ -n "$pid" ]; then
        perf record -F 2000 -g -p "$pid" -o "$out/$target.data" -- sleep "$DURATION" 2>/dev/null &
        recorder=$!
    fi
    txns=$("$PGBENCH" -n -S -c "$CLIENTS" -j 2 -T "$DURATION" "$url" 2>&1 |
        sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    # Before waiting for the recorder, whose CPU would count as pgbench's.
    c1=$(children_ticks)
    [ -n "$recorder" ] && wait "$recorder"
    read -r v1 n1 <<<"$( [ -n "$pid" ] && switches "$pid" || echo 0 0)"
    read -r u1 s1 <<<"$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)"
    m1=$(machine_ticks) srv1=$(server_ticks)
    [ -n "$txns" ] && [ "$txns" -gt 0 ] || die "pgbench through $target failed"
    awk -v t="$target" -v x="$txns" -v d="$DURATION" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v m=$((m1 - m0)) \
        -v v=$((v1 - v0)) -v n=$((n1 - n0)) -v us="$TICK_US" -v b=$((c1 - c0)) -v srv=$((srv1 - srv0)) \
        'BEGIN {
            k = us / x
            printf "%-15s %7.0f | per transaction: %7.1f %6.1f %6.1f %6.2f %6.2f | machine us: %6.1f %7.1f %7.1f %6.1f %6.1f\n",
                t, x / d, (u + s) * k, u * k, s * k, v / x, n / x, m * k, b * k, srv * k, (u + s) * k, (m - b - srv - u - s) * k
        }'
done
stop_bouncer
