#!/usr/bin/env bash
# Memory per idle client connection: opens N client connections (logged in,
# then idle) to pgrouter (transaction pooling) and to PgBouncer (transaction
# mode) on the local demo cluster, and prints each proxy's resident memory
# before and after, and the difference per connection. Needs python3 (the
# client side: one asyncio process holding all connections) and PgBouncer
# (installed from Debian's package when missing).
#
#   benches/idle_clients.sh              # 10,000 connections
#   N=2000 benches/idle_clients.sh
set -euo pipefail

N=${N:-10000}
ROUTER_PORT=${ROUTER_PORT:-16432}
CLUSTER_PORT=${CLUSTER_PORT:-25432}
BOUNCER_PORT=${BOUNCER_PORT:-16543}
BENCH_DIR=${BENCH_DIR:-/tmp/pgrouter-bench}
DURATION=1 SCALE=1 MAX_THREADS=1
DB_USER=pgrouter
DB_PASSWORD=pgrouter
ROUTER_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$ROUTER_PORT/postgres"
DIRECT_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$CLUSTER_PORT/postgres"
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

cd "$(dirname "$0")/.."
config=$(mktemp)
cat >"$config" <<TOML
auth = "trust"
[[users]]
name = "$DB_USER"
password = "$DB_PASSWORD"
[[nodes]]
host = "127.0.0.1"
port = 1
role = "primary"
TOML
DEMO_ARGS="--config $config"
# shellcheck source=benches/lib.sh
. benches/lib.sh

rm -f "$config" # read by the demo at start-up
# shellcheck source=benches/bouncer.sh
. benches/bouncer.sh
ensure_pgbouncer
BOUNCER_AUTH=trust # as the router above
start_bouncer transaction 20 "$((N + 100))"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Logs N connections in (startup packet, trust), checks each reaches
# ReadyForQuery, then holds them until stdin closes.
# (The script is an argument: stdin is the coprocess pipe that says when to stop.)
IDLE_CLIENTS_PY=$(cat <<'PY'
import asyncio, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
def startup():
    body = struct.pack("!i", 196608) + b"user\0pgrouter\0database\0postgres\0\0"
    return struct.pack("!i", len(body) + 4) + body
async def login():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(startup())
    while True:
        tag = await r.readexactly(1)
        size = struct.unpack("!i", await r.readexactly(4))[0]
        await r.readexactly(size - 4)
        if tag == b"E":
            raise RuntimeError("login refused")
        if tag == b"Z":
            return r, w
async def main():
    conns = []
    for start in range(0, n, 250):
        conns += await asyncio.gather(*(login() for _ in range(start, min(n, start + 250))))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
PY
)
hold_idle() {
    python3 -c "$IDLE_CLIENTS_PY" "$1" "$N"
}

measure() {
    local name=$1 port=$2 pid=$3 before after
    before=$(rss "$pid")
    coproc HOLD { hold_idle "$port"; }
    read -r line <&"${HOLD[0]}"
    [ "$line" = ready ] || die "$name: the clients did not all log in"
    sleep 1
    after=$(rss "$pid")
    eval "exec ${HOLD[1]}>&-"
    wait "$HOLD_PID" 2>/dev/null || true
    printf '%-9s %10s %10s %10s %14s\n' "$name" "$N" "$before" "$after" \
        "$(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')"
}

# Warm both up (pools, catalog) with one connection each.
"$PSQL" -X -q -d "$ROUTER_URL" -c 'select 1' >/dev/null
"$PSQL" -X -q -d "postgres://$DB_USER@127.0.0.1:$BOUNCER_PORT/postgres" -c 'select 1' >/dev/null
echo
printf '%-9s %10s %10s %10s %14s\n' proxy clients "RSS before" "RSS after" "bytes/client"
measure pgrouter "$ROUTER_PORT" "$demo_pid"
measure pgbouncer "$BOUNCER_PORT" "$bouncer_pid"
echo "(RSS in KiB; pgrouter's is the whole demo process; $("$PGBOUNCER" --version | head -1))"
