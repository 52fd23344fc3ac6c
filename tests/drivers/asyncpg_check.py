"""asyncpg through pgrouter in transaction pooling. asyncpg names every
statement (`__asyncpg_stmt_N__`, the same names in every connection), caches
them per connection, introspects types with Describe, and uses binary formats
throughout, and LISTENs with a simple query. Run by tests/drivers.rs; exits
non-zero on any surprise."""
import asyncio
import os
import sys

import asyncpg

DSN = os.environ["PGROUTER_DSN"]
CLIENTS = 8
ROUNDS = 30


async def client(i):
    conn = await asyncpg.connect(DSN)
    try:
        for n in range(ROUNDS):
            await conn.execute("INSERT INTO drv_asyncpg VALUES ($1, $2)", i, n)
            count = await conn.fetchval("SELECT count(*) FROM drv_asyncpg WHERE client = $1", i)
            if count != n + 1:
                raise AssertionError(f"client {i} saw {count} rows after {n + 1} inserts")
            row = await conn.fetchrow(
                "SELECT $1::int8 * 2 AS twice, $2::text AS name, now() AS at, '{1,2}'::int[] AS arr",
                n,
                f"c{i}",
            )
            if (row["twice"], row["name"], row["arr"]) != (n * 2, f"c{i}", [1, 2]):
                raise AssertionError(f"binary round trip gave {row}")
        stmt = await conn.prepare("SELECT n FROM drv_asyncpg WHERE client = $1 ORDER BY n")
        if [r["n"] for r in await stmt.fetch(i)] != list(range(ROUNDS)):
            raise AssertionError("explicit prepared statement")
        async with conn.transaction():
            await conn.execute("INSERT INTO drv_asyncpg VALUES ($1, -1)", i)
            count = await conn.fetchval("SELECT count(*) FROM drv_asyncpg WHERE client = $1", i)
            if count != ROUNDS + 1:
                raise AssertionError("a read inside a transaction missed its write")
        await conn.executemany("INSERT INTO drv_asyncpg VALUES ($1, $2)", [(i, 1000 + k) for k in range(20)])
        await conn.copy_records_to_table("drv_asyncpg", records=[(i, 2000 + k) for k in range(50)])
        count = await conn.fetchval("SELECT count(*) FROM drv_asyncpg WHERE client = $1", i)
        if count != ROUNDS + 1 + 20 + 50:
            raise AssertionError(f"executemany + COPY left {count} rows")
        try:
            await conn.execute("SELECT 1/0")
            raise AssertionError("division by zero passed")
        except asyncpg.exceptions.DivisionByZeroError as e:
            if e.sqlstate != "22012":
                raise AssertionError(f"sqlstate {e.sqlstate}")
        if await conn.fetchval("SELECT $1::int + 1", 41) != 42:
            raise AssertionError("session broken after an error")
    finally:
        await conn.close()


async def check_notifications():
    listener = await asyncpg.connect(DSN)
    sender = await asyncpg.connect(DSN)
    got = asyncio.get_running_loop().create_future()
    await listener.add_listener("drv_asyncpg_chan", lambda _c, _pid, ch, payload: got.done() or got.set_result((ch, payload)))
    await sender.execute("NOTIFY drv_asyncpg_chan, 'hi'")
    result = await asyncio.wait_for(got, 5)
    await listener.close()
    await sender.close()
    if result != ("drv_asyncpg_chan", "hi"):
        raise AssertionError(f"notification {result}")


async def main():
    conn = await asyncpg.connect(DSN)
    await conn.execute("DROP TABLE IF EXISTS drv_asyncpg; CREATE TABLE drv_asyncpg (client int, n int)")
    await conn.close()
    await check_notifications()
    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)), return_exceptions=True)
    failures = [f"client {i}: {type(r).__name__}: {r}" for i, r in enumerate(results) if r is not None]
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok: {CLIENTS} asyncpg {asyncpg.__version__} clients x {ROUNDS} rounds")


asyncio.run(main())
