"""Projection figures: rebuild throughput next to a bare scan of the same log, and live lag.

1. A log of real domain events: `--sessions` seeded trading sessions
   (projections/scenario.py) run concurrently, then numbered by the sequencer.
2. Rebuild of every read model from that log (projections/rebuild.py, swap included),
   next to a bare keyset scan of the same rows in the same run, interleaved round by
   round; the figures are medians.
3. Lag: the relay and one worker process run live; deposits are appended one at a time
   and each is timed from its append to the moment the accounts read model shows it
   (append -> sequencer -> JetStream -> worker -> commit).

    python -m benchmarks.bench_projections [--sessions 16] [--steps 500] [--rounds 3]

The last line: projections: lag_p50_ms=.. lag_p99_ms=.. rebuild=.. scan=.. ratio=.. rss_mb=..
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import resource
import statistics
import time
from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import nats
import uvloop

from benchmarks.common import database_server, median, report, scratch_database
from commands.runtime import CommandContext, Repository
from ledger import sequencer
from ledger.domain import StreamEvent, account, user
from ledger.store import EventStore
from projections import source
from projections.lag import lag
from projections.rebuild import rebuild
from projections.scenario import PASSWORD_HASH, START, Scenario
from projections.worker import WorkerOptions, run_projections

SCAN_BATCH = 2_000


async def sequence_all(connection: asyncpg.Connection) -> int:
    cursor = await sequencer.load_cursor(connection)
    while events := await sequencer.read_unsequenced(connection, cursor, limit=5_000):
        batch = sequencer.assign(cursor, events, digest_every=1_000)
        await sequencer.record(connection, batch)
        cursor = batch.after
    return cursor.sequence


async def make_log(url: str, sessions: int, steps: int) -> int:
    pool = await asyncpg.create_pool(url, min_size=sessions, max_size=sessions + 2)
    try:
        store = EventStore(pool)
        await asyncio.gather(
            *(Scenario(store, seed, tag=f"s{seed}").run(steps) for seed in range(sessions))
        )
        async with pool.acquire() as connection:
            return await sequence_all(connection)
    finally:
        await pool.close()


async def scan(url: str) -> int:
    """Read the whole log in sequence order, as the rebuild does, and do nothing with it."""
    connection = await asyncpg.connect(url)
    try:
        after, count = 0, 0
        while events := await source.read_after(connection, after, limit=SCAN_BATCH):
            after, count = events[-1].sequence, count + len(events)
        return count
    finally:
        await connection.close()


async def throughput(url: str, head: int, rounds: int) -> tuple[list[float], list[float]]:
    rebuilds, scans = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        assert await scan(url) == head
        scans.append(head / (time.perf_counter() - started))
        started = time.perf_counter()
        results = await rebuild(url, ["all"], batch=SCAN_BATCH, out=io.StringIO())
        rebuilds.append(head / (time.perf_counter() - started))
        assert all(result.sequence == head for result in results)
    return rebuilds, scans


async def deposit_lags(pool: asyncpg.Pool, deposits: int) -> list[float]:
    """Append deposits one by one; time each until read.accounts has its version."""
    repository = Repository(EventStore(pool))
    user_id = uuid4()
    account_id = account.account_stream_id(user_id, "USD")
    register = user.RegisterUser(
        user_id=user_id,
        email=f"bench{user_id.hex[:8]}@example.com",
        display_name="bench",
        role=user.Role.TRADER,
        password_hash=PASSWORD_HASH,
    )
    loaded = await repository.load({user_id: user.STREAM_TYPE})
    events = user.decide_register_user(None, register, now=START, email_taken=False)
    items = [StreamEvent(user_id, user.STREAM_TYPE, event) for event in events]
    await repository.save(items, loaded, CommandContext())
    loaded = await repository.load({user_id: user.STREAM_TYPE, account_id: account.STREAM_TYPE})
    opened = account.decide_open_account(
        None, account.OpenAccount(user_id=user_id, currency="USD"), now=START,
        owner=loaded[user_id].state,
    )  # fmt: skip
    items = [StreamEvent(account_id, account.STREAM_TYPE, event) for event in opened]
    await repository.save(items, loaded, CommandContext())
    lags = []
    for _ in range(deposits):
        loaded = await repository.load({account_id: account.STREAM_TYPE})
        command = account.Deposit(account_id=account_id, amount=Decimal("1.00"))
        decided = account.decide_deposit(loaded[account_id].state, command, now=START)
        items = [StreamEvent(account_id, account.STREAM_TYPE, event) for event in decided]
        started = time.perf_counter()
        result = await repository.save(items, loaded, CommandContext())
        version = result.events[-1].version
        # Polling is the measurement: the read model is in another process's reach.
        async with asyncio.timeout(30):
            while (  # noqa: ASYNC110
                await pool.fetchval(
                    "SELECT version FROM read.accounts WHERE account_id = $1", account_id
                )
                or 0
            ) < version:
                await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - started) * 1000)
    return lags


async def live_lag(url: str, nats_url: str, deposits: int) -> list[float]:
    try:
        from ledger.relay import Relay, RelayOptions
    except ImportError:
        print("  lag: ledger.relay is not importable; skipped", flush=True)
        return []
    stream = f"BENCH_PROJECTIONS_{uuid4().hex[:8].upper()}"
    stop = asyncio.Event()
    relay = Relay(url, nats_url, RelayOptions(stream_name=stream, subject_prefix=stream))
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(relay.run(stop))]
    await asyncio.sleep(0.5)  # The relay creates the stream before the worker binds to it.
    options = WorkerOptions(subject_prefix=stream, fetch_batch=500, fetch_timeout_s=0.5)
    tasks.append(
        asyncio.create_task(
            run_projections(url, nats_url, ["all"], stream_name=stream, stop=stop, options=options)
        )
    )
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        # Lag is measured on a worker that has caught up with the log made above.
        async with asyncio.timeout(600):
            while any(item.events_behind for item in await lag(pool)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        lags = await deposit_lags(pool, deposits + 1)
        # The first deposit waits while the fresh consumers skip the whole stream (the
        # rebuild left every checkpoint at the head): a catch-up figure, not a lag one.
        print(f"  fresh consumers skipping the stream: {lags[0]:,.0f} ms", flush=True)
        return lags[1:]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        await pool.close()
        client = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)
        await client.close()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(arguments: argparse.Namespace) -> None:
    nats_url = os.environ.get("LEDGER_BENCH_NATS_URL") or os.environ.get(
        "LEDGER_TEST_NATS_URL", "nats://127.0.0.1:4222"
    )
    with database_server() as server:
        async with scratch_database(server) as url:
            started = time.perf_counter()
            head = await make_log(url, arguments.sessions, arguments.steps)
            print(f"  log: {head:,} events in {time.perf_counter() - started:.1f}s", flush=True)
            rebuilds, scans = await throughput(url, head, arguments.rounds)
            report("rebuild all read models", rebuilds)
            report("bare keyset scan (baseline)", scans)
            lags = await live_lag(url, nats_url, arguments.deposits)
            if lags:
                report("append -> read model", lags, unit="ms")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"projections: lag_p50_ms={statistics.median(lags) if lags else float('nan'):.1f} "
        f"lag_p99_ms={percentile(lags, 0.99):.1f} rebuild={median(rebuilds):.0f} "
        f"scan={median(scans):.0f} ratio={median(rebuilds) / median(scans):.3f} "
        f"rss_mb={rss_mb:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deposits", type=int, default=300)
    uvloop.run(main(parser.parse_args()))
