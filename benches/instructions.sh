#!/usr/bin/env bash
# How many instructions pgrouter's own process executes per transaction (user
# space only), counted by callgrind: unlike CPU time on a shared VM, the count
# barely moves from run to run, so it shows what a change to the hot path saved.
# Runs `pgbench -S` (simple protocol, select-only, transaction pooling) through a
# second router, started under valgrind, that reads from the demo cluster's
# first replica; prints the total per transaction and the functions that
# execute the most instructions themselves (exclusive).
#
#   bash benches/instructions.sh
#   CLIENTS=16 TXNS=2000 TOP=25 bash benches/instructions.sh
#
# The count says nothing about cache misses and kernel time, which dominate
# a proxy's CPU time (see proxy_switches.sh): fewer instructions is necessary,
# not sufficient, for a faster router.
set -euo pipefail
CLIENTS=${CLIENTS:-16}
TXNS=${TXNS:-2000} # per client
TOP=${TOP:-20}
DURATION=5 SCALE=${SCALE:-10} ROUTER_PORT=${ROUTER_PORT:-16432} CLUSTER_PORT=${CLUSTER_PORT:-25432}
BENCH_DIR=${BENCH_DIR:-/tmp/pgrouter-bench} MAX_THREADS=2
DB_USER=pgrouter DB_PASSWORD=pgrouter
ROUTER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER_PORT/postgres"
DIRECT_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$CLUSTER_PORT/postgres"
COUNTED_PORT=$((ROUTER_PORT + 3))
COUNTED_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$COUNTED_PORT/postgres"

if ! command -v valgrind >/dev/null 2>&1; then
    echo "installing valgrind ..." >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq valgrind >/dev/null
fi

# shellcheck source=benches/lib.sh
. benches/lib.sh

counted_pid=
stop_counted() {
    if [ -n "$counted_pid" ]; then
        kill -INT "$counted_pid" 2>/dev/null || true
        wait "$counted_pid" 2>/dev/null || true
        counted_pid=
    fi
}
trap 'status=$?; stop_counted; (exit $status); cleanup' EXIT

write_one_replica_config "$work/counted.toml" "$COUNTED_PORT"
echo "starting a router under callgrind on $COUNTED_PORT ..." >&2
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
    "$PGROUTER" run --config "$work/counted.toml" >"$work/counted.log" 2>&1 &
counted_pid=$!
# Ready when it answers (valgrind runs it some 50 times slower).
ready=
for _ in $(seq 1 240); do
    kill -0 "$counted_pid" 2>/dev/null || die "the router under valgrind exited: $(tail -5 "$work/counted.log")"
    "$PSQL" -X -At -d "$COUNTED_URL" -c "SELECT 1" >/dev/null 2>&1 && ready=1 && break
    sleep 0.5
done
[ -n "$ready" ] || die "the router under valgrind did not answer within 120 s: $(tail -5 "$work/counted.log")"

# Unmeasured: server connections open and the classification cache fills.
"$PGBENCH" -n -S -c "$CLIENTS" -j 2 -t 200 "$COUNTED_URL" >/dev/null 2>&1 ||
    die "pgbench through the counted router failed"
callgrind_control -z "$counted_pid" >/dev/null 2>&1 || die "callgrind_control could not reset the counters"
"$PGBENCH" -n -S -c "$CLIENTS" -j 2 -t "$TXNS" "$COUNTED_URL" >"$work/run.out" 2>&1 ||
    { cat "$work/run.out" >&2; die "pgbench through the counted router failed"; }
callgrind_control -d "$counted_pid" >/dev/null 2>&1 || die "callgrind_control could not dump the counters"
stop_counted

txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/run.out")
[ -n "$txns" ] && [ "$txns" -gt 0 ] || die "pgbench reported no transactions: $(cat "$work/run.out")"
dump=$(ls -t "$work"/callgrind.*.1 2>/dev/null | head -1 || true)
[ -n "$dump" ] || die "callgrind wrote no dump in $work"
# Every number below is divided by the transactions run (the window also holds
# the $CLIENTS logins, a few hundred instructions per transaction at the defaults).
callgrind_annotate --threshold=100 --auto=no "$dump" 2>/dev/null | sed 's/,//g; s/([ 0-9.%]*)//' |
    awk -v tx="$txns" -v top="$TOP" -v c="$CLIENTS" '
        /PROGRAM TOTALS/ {
            total = $1
            printf "pgbench -S -c %d: %d transactions, %.0f instructions per transaction in pgrouter (user space)\n", c, tx, $1 / tx
            printf "\nexclusive instructions per transaction, by function:\n"
            next
        }
        # Even in this exclusive view callgrind_annotate lists the threads'"'"' entry
        # points with (nearly) everything: skip entries holding over half.
        total && $1 ~ /^[0-9]+$/ && $1 < total / 2 && $2 ~ /:/ && n < top {
            name = $2
            for (i = 3; i <= NF; i++) name = name " " $i
            sub(/ \[[^]]*\]$/, "", name)
            sub(/.*\/(src|library)\//, "", name)
            printf "%8.0f  %s\n", $1 / tx, substr(name, 1, 150)
            n++
        }'
