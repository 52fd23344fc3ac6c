"""psycopg 3 through pgrouter in transaction pooling: many clients on few server
connections, server-side prepared statements from the first use
(prepare_threshold=0), pipeline mode, binary results, COPY, LISTEN, errors with the
server's SQLSTATE. Run by tests/drivers.rs; exits non-zero on any surprise."""
import os
import sys
import threading

import psycopg
from psycopg import errors

DSN = os.environ["PGROUTER_DSN"]
CLIENTS = 8
ROUNDS = 30
failures = []


def client(i):
    try:
        with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
            for n in range(ROUNDS):
                conn.execute("INSERT INTO drv_psycopg VALUES (%s, %s)", (i, n))
                # Read-your-writes through a replica-routing, pooling router.
                (count,) = conn.execute(
                    "SELECT count(*) FROM drv_psycopg WHERE client = %s", (i,)
                ).fetchone()
                if count != n + 1:
                    raise AssertionError(f"client {i} saw {count} rows after {n + 1} inserts")
                # Binary results of a prepared statement.
                with conn.cursor(binary=True) as cur:
                    cur.execute("SELECT %s::int8 * 2, %s::text", (n, f"c{i}"))
                    if cur.fetchone() != (n * 2, f"c{i}"):
                        raise AssertionError("binary round trip")
            with conn.transaction():
                conn.execute("INSERT INTO drv_psycopg VALUES (%s, -1)", (i,))
                (count,) = conn.execute(
                    "SELECT count(*) FROM drv_psycopg WHERE client = %s", (i,)
                ).fetchone()
                if count != ROUNDS + 1:
                    raise AssertionError("a read inside a transaction missed its write")
            with conn.pipeline():
                cur = conn.execute("SELECT 1")
                cur2 = conn.execute("SELECT %s::int", (i,))
            if cur.fetchone() != (1,) or cur2.fetchone() != (i,):
                raise AssertionError("pipeline results")
            try:
                conn.execute("INSERT INTO drv_unique VALUES (1)")
                conn.execute("INSERT INTO drv_unique VALUES (1)")
            except errors.UniqueViolation as e:
                if e.sqlstate != "23505":
                    raise AssertionError(f"sqlstate {e.sqlstate}")
            # The session still works after the error.
            conn.execute("SELECT 1").fetchone()
            with conn.cursor() as cur:
                with cur.copy("COPY drv_copy (client, n) FROM STDIN") as copy:
                    for n in range(100):
                        copy.write_row((i, n))
            (count,) = conn.execute(
                "SELECT count(*) FROM drv_copy WHERE client = %s", (i,)
            ).fetchone()
            if count != 100:
                raise AssertionError(f"COPY wrote {count} rows")
    except Exception as e:  # noqa: BLE001 - reported and turned into the exit code
        failures.append(f"client {i}: {type(e).__name__}: {e}")


def check_notifications():
    """LISTEN through the extended protocol, notifications while idle."""
    with psycopg.connect(DSN, autocommit=True) as listener, psycopg.connect(DSN, autocommit=True) as sender:
        listener.execute("LISTEN drv_psycopg_chan")
        sender.execute("NOTIFY drv_psycopg_chan, 'hi'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
        if got != [("drv_psycopg_chan", "hi")]:
            failures.append(f"notifications: {got}")


def check_sql_deallocate():
    """psycopg with a libpq older than 17 (Debian 12 has 15) deallocates with SQL
    `DEALLOCATE name` when its statement cache is full, and sends `DEALLOCATE
    ALL` after every ROLLBACK: the first must work on pgrouter's renamed
    statements, the second must not pin the session to the primary."""
    import time

    from psycopg import _connection_base

    has_close = _connection_base._HAS_SEND_CLOSE
    _connection_base._HAS_SEND_CLOSE = False
    try:
        with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
            conn.prepared_max = 2
            for n in range(20):
                for q in range(4):
                    (value,) = conn.execute(f"SELECT %s::int + {q}", (n,)).fetchone()
                    if value != n + q:
                        raise AssertionError(f"evicting statements: {value} != {n + q}")
            conn.autocommit = False
            for n in range(300):
                conn.execute("SELECT %s::int", (n,)).fetchone()
                conn.rollback()
            conn.autocommit = True
            for _ in range(50):
                (replica,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if replica:
                    return
                time.sleep(0.1)
            raise AssertionError("pinned to the primary after many ROLLBACKs")
    except Exception as e:  # noqa: BLE001 - reported and turned into the exit code
        failures.append(f"SQL DEALLOCATE: {type(e).__name__}: {e}")
    finally:
        _connection_base._HAS_SEND_CLOSE = has_close


def main():
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS drv_psycopg, drv_unique, drv_copy")
        conn.execute("CREATE TABLE drv_psycopg (client int, n int)")
        conn.execute("CREATE TABLE drv_unique (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE drv_copy (client int, n int)")
    check_notifications()
    check_sql_deallocate()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok: {CLIENTS} psycopg {psycopg.__version__} clients x {ROUNDS} rounds")


main()
