# Shared by the benchmark scripts in benches/: finds the client programs,
# builds the router, starts the demo cluster with the router in front, loads
# pgbench data and waits for the replicas. Source it after setting:
#   DURATION SCALE ROUTER_PORT CLUSTER_PORT BENCH_DIR MAX_THREADS DB_USER DB_PASSWORD
#   DIRECT_URL ROUTER_URL
# and optionally DEMO_ARGS (extra `pgrouter demo` arguments, e.g. --config).
# Provides: $PGBENCH $PSQL $PGROUTER $work, tps_of, write_one_replica_config,
# and cleanup on exit.
export LC_ALL=C # pgbench and printf agree on the decimal point

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
"$PGROUTER" demo ${DEMO_ARGS:-} --port "$ROUTER_PORT" --cluster-port "$CLUSTER_PORT" --dir "$BENCH_DIR" \
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

# Writes to $1 the config of a router listening on port $2 in front of the
# demo's primary and its first replica only (a second router beside the demo's).
write_one_replica_config() {
    cat >"$1" <<TOML
listen = "127.0.0.1:$2"
[[users]]
name = "$DB_USER"
password = "$DB_PASSWORD"
[[nodes]]
name = "primary"
host = "127.0.0.1"
port = $CLUSTER_PORT
role = "primary"
[[nodes]]
name = "replica0"
host = "127.0.0.1"
port = $((CLUSTER_PORT + 1))
role = "replica"
TOML
}

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

