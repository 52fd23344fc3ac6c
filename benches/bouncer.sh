# PgBouncer for the benchmark scripts in benches/, on the demo cluster that
# benches/lib.sh started. Source it after lib.sh (it needs CLUSTER_PORT,
# BOUNCER_PORT, DB_USER, DB_PASSWORD, DIRECT_URL and lib.sh's `die`, `cleanup`
# and $PSQL).
#
# Clients log in to PgBouncer as they log in to pgrouter, so neither proxy is
# spared work the other does: BOUNCER_AUTH=scram-sha-256 (the default, like
# pgrouter's default `auth`) or trust (for scripts that run pgrouter with
# `auth = "trust"`). With SCRAM PgBouncer gets the server's verifier of
# $DB_USER, as pgrouter derives one from its configured password once at
# start-up; with a plain-text password PgBouncer would run PBKDF2 for every
# login, a cost pgrouter does not pay.
# Provides: ensure_pgbouncer, start_bouncer MODE POOL_SIZE [MAX_CLIENTS [SERVER_PORT]],
# stop_bouncer, $bouncer_pid; stops PgBouncer on exit.

# Sets PGBOUNCER, installing Debian's package when missing (its service is not started).
ensure_pgbouncer() {
    local sudo_cmd=""
    PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    [ -x "$PGBOUNCER" ] && return
    echo "installing pgbouncer (Debian package) ..." >&2
    [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq pgbouncer >/dev/null
    $sudo_cmd rm -f /usr/sbin/policy-rc.d
    PGBOUNCER=/usr/sbin/pgbouncer
}

# PgBouncer will not run as root: run it as the cluster's system user then.
bouncer_dir=$(mktemp -d)
chmod 755 "$bouncer_dir"
run_as=()
if [ "$(id -u)" -eq 0 ]; then
    run_as=(runuser -u postgres --)
    chown postgres "$bouncer_dir"
fi
bouncer_pid=
BOUNCER_AUTH=${BOUNCER_AUTH:-scram-sha-256}

stop_bouncer() {
    if [ -n "$bouncer_pid" ]; then
        kill "$bouncer_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$bouncer_pid" 2>/dev/null || break; sleep 0.1; done
        bouncer_pid=
    fi
}
trap 'status=$?; stop_bouncer; rm -rf "$bouncer_dir"; (exit $status); cleanup' EXIT

# Starts PgBouncer in pool mode $1 with pool size $2, for up to $3 clients
# (5000), in front of the server on port $4 (the primary, $CLUSTER_PORT).
start_bouncer() {
    local mode=$1 size=$2 max_clients=${3:-5000} server_port=${4:-$CLUSTER_PORT}
    stop_bouncer
    cat >"$bouncer_dir/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$server_port dbname=postgres user=$DB_USER password=$DB_PASSWORD
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = $BOUNCER_AUTH
auth_file = $bouncer_dir/userlist.txt
pool_mode = $mode
default_pool_size = $size
max_client_conn = $max_clients
max_db_connections = 0
logfile = $bouncer_dir/pgbouncer.log
pidfile = $bouncer_dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
INI
    local secret=$DB_PASSWORD
    if [ "$BOUNCER_AUTH" = scram-sha-256 ]; then
        secret=$("$PSQL" -X -At -d "$DIRECT_URL" -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$DB_USER'") ||
            die "could not read the SCRAM verifier of $DB_USER for PgBouncer"
        case $secret in SCRAM-SHA-256\$*) ;; *) die "$DB_USER has no SCRAM verifier on the primary" ;; esac
    fi
    printf '"%s" "%s"\n' "$DB_USER" "$secret" >"$bouncer_dir/userlist.txt"
    rm -f "$bouncer_dir/pgbouncer.pid"
    # Room for every client's file descriptor.
    "${run_as[@]}" sh -c "ulimit -n $((max_clients + 1000)) 2>/dev/null; exec $PGBOUNCER -d $bouncer_dir/pgbouncer.ini" \
        >/dev/null 2>&1 ||
        die "pgbouncer did not start: $(tail -5 "$bouncer_dir/pgbouncer.log" 2>/dev/null)"
    for _ in $(seq 1 50); do [ -s "$bouncer_dir/pgbouncer.pid" ] && break; sleep 0.1; done
    bouncer_pid=$(cat "$bouncer_dir/pgbouncer.pid")
}
