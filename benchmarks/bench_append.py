"""Append throughput of the event store next to a bare INSERT and the eventsourcing recorder.

The store (with and without group commit, ledger/group_commit.py), the bare INSERT and
the recorder write the same rows into one database in the same run, interleaved round by
round so that the machine's noise falls on each alike; the figures are medians.

    python -m benchmarks.bench_append [--rounds 3] [--seconds 3] [--writers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import uvloop
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from benchmarks.common import CpuMeter, database_server, median, report, scratch_database
from ledger.compat import eventsourcing_datastore
from ledger.store import NEW_STREAM, EventStore, NewEvent, StreamHead, encode


class OrderPlaced(msgspec.Struct, frozen=True):
    """A payload of realistic size for a trading event (about 200 bytes)."""

    order_id: str
    account_id: str
    symbol: str
    side: str
    quantity: str
    limit_price: str
    time_in_force: str


TOPIC = "benchmarks.bench_append:OrderPlaced"
PAYLOAD = OrderPlaced(str(uuid4()), str(uuid4()), "ACME", "buy", "100", "123.45", "day")
STATE = encode(PAYLOAD, TOPIC)

BARE_TABLE = """
CREATE TABLE bench_bare_events (
    notification_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx                 xid8 NOT NULL DEFAULT pg_current_xact_id(),
    originator_id      uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic              text NOT NULL,
    state              bytea NOT NULL,
    event_id           uuid NOT NULL,
    stream_type        text NOT NULL,
    schema_version     integer NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
)
"""
BARE_INSERT = (
    "INSERT INTO bench_bare_events (originator_id, originator_version, topic, state, event_id,"
    " stream_type, schema_version) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
BARE_INSERT_MANY = (
    "INSERT INTO bench_bare_events (originator_id, originator_version, topic, state, event_id,"
    " stream_type, schema_version) SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[],"
    " $4::bytea[], $5::uuid[], $6::text[], $7::int[])"
)


class Writers:
    """Runs `writers` loops, each appending batches of `size` events to a stream of its own,
    for a fixed time; counts events."""

    def __init__(self, writers: int, size: int, seconds: float) -> None:
        self.writers, self.size, self.seconds = writers, size, seconds
        self.events = 0

    async def run(self, append: Callable[[UUID, int], Any]) -> float:
        deadline = time.perf_counter() + self.seconds
        counts = [0] * self.writers

        async def loop(index: int) -> None:
            stream, version = uuid4(), 0
            while time.perf_counter() < deadline:
                await append(stream, version)
                version += self.size
                counts[index] += self.size

        started = time.perf_counter()
        await asyncio.gather(*(loop(index) for index in range(self.writers)))
        self.events = sum(counts)
        return self.events / (time.perf_counter() - started)


def store_append(store: EventStore, size: int) -> Callable[[UUID, int], Any]:
    # Like a command handler that has just loaded the stream, each writer knows its head.
    heads: dict[UUID, StreamHead] = {}

    async def append(stream: UUID, version: int) -> None:
        events = [
            NewEvent(stream_id=stream, stream_type="order", topic=TOPIC, data=PAYLOAD)
            for _ in range(size)
        ]
        head = heads.get(stream, NEW_STREAM)
        assert head.version == version
        result = await store.append(events, {stream: head}, actor="bench")
        heads[stream] = result.head_of(stream)

    return append


def bare_insert(pool: asyncpg.Pool, size: int) -> Callable[[UUID, int], Any]:
    async def insert(stream: UUID, version: int) -> None:
        if size == 1:
            await pool.execute(BARE_INSERT, stream, version + 1, TOPIC, STATE, uuid4(), "order", 1)
            return
        await pool.execute(
            BARE_INSERT_MANY,
            [stream] * size,
            list(range(version + 1, version + size + 1)),
            [TOPIC] * size,
            [STATE] * size,
            [uuid4() for _ in range(size)],
            ["order"] * size,
            [1] * size,
        )

    return insert


def eventsourcing_recorder(database_url: str, writers: int) -> PostgresApplicationRecorder:
    datastore = eventsourcing_datastore(
        database_url, schema="public", pool_size=writers, max_overflow=0
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name="es_events")
    recorder.create_table()
    return recorder


def eventsourcing_append(
    recorder: PostgresApplicationRecorder,
    executor: concurrent.futures.ThreadPoolExecutor,
    size: int,
) -> Callable[[UUID, int], Any]:
    def insert(stream: UUID, version: int) -> None:
        recorder.insert_events(
            [StoredEvent(stream, version + n + 1, TOPIC, STATE) for n in range(size)]
        )

    async def append(stream: UUID, version: int) -> None:
        await asyncio.get_running_loop().run_in_executor(executor, insert, stream, version)

    return append


async def follow_rates(store: EventStore, pool: asyncpg.Pool) -> tuple[float, float]:
    """Events/s following the whole log in commit order, and a bare keyset scan of it."""
    started = time.perf_counter()
    followed = 0
    async for batch in store.follow(batch=1_000):
        followed += len(batch)
    follow_rate = followed / (time.perf_counter() - started)
    started, scanned, after = time.perf_counter(), 0, 0
    while True:
        # The same columns as the follower reads, in position order, without the
        # commit-order filter: what a naive reader would do.
        rows = await pool.fetch(
            "SELECT notification_id, tx, event_id, originator_id, stream_type, "
            "originator_version, topic, schema_version, recorded_at, actor, correlation_id, "
            "causation_id, idempotency_key, state, prev_hash, hash "
            "FROM ledger.events WHERE notification_id > $1 ORDER BY notification_id LIMIT 1000",
            after,
        )
        if not rows:
            break
        scanned += len(rows)
        after = rows[-1][0]
    return follow_rate, scanned / (time.perf_counter() - started)


async def main(arguments: argparse.Namespace) -> None:
    with database_server() as server_url:
        async with scratch_database(server_url) as url:
            await measure(url, arguments)


async def measure(url: str, arguments: argparse.Namespace) -> None:
    writers, seconds = arguments.writers, arguments.seconds
    pool = await asyncpg.create_pool(url, min_size=writers, max_size=writers)
    await pool.execute(BARE_TABLE)
    store = EventStore(pool)
    alone = EventStore(pool, group_commit=False)
    recorder = eventsourcing_recorder(url, writers)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=writers)
    figures: dict[str, list[float]] = {}
    meter = CpuMeter(pool)

    async def timed(name: str, size: int, append: Callable[[UUID, int], Any]) -> None:
        writers_run = Writers(writers, size, seconds)
        before = await meter.sample()
        figures.setdefault(f"{name} {size}", []).append(await writers_run.run(append))
        used = CpuMeter.between(before, await meter.sample())
        if used is not None and writers_run.events:
            figures.setdefault(f"cpu {name} {size}", []).append(1e6 * used / writers_run.events)

    print(f"append benchmark: {writers} writers, {arguments.rounds} rounds of {seconds}s each")
    try:
        for _ in range(arguments.rounds):
            for size in (1, 100):
                await timed("store", size, store_append(store, size))
                await timed("alone", size, store_append(alone, size))
                await timed("insert", size, bare_insert(pool, size))
                await timed("eventsourcing", size, eventsourcing_append(recorder, executor, size))
        for _ in range(arguments.rounds):
            follow, scan = await follow_rates(store, pool)
            figures.setdefault("follow", []).append(follow)
            figures.setdefault("scan", []).append(scan)
    finally:
        executor.shutdown()
        recorder.datastore.close()
        await pool.close()
    print_figures(figures)


LABELS = {
    "store": "store (group commit)",
    "alone": "store, a statement per append",
    "insert": "bare INSERT",
    "eventsourcing": "eventsourcing recorder",
}


def print_figures(figures: dict[str, list[float]]) -> None:
    for size in (1, 100):
        print(f"{size} event(s) per append:")
        for name, label in LABELS.items():
            report(label, figures[f"{name} {size}"])
        ratio = median(figures[f"store {size}"]) / median(figures[f"insert {size}"])
        versus = median(figures[f"store {size}"]) / median(figures[f"eventsourcing {size}"])
        alone = median(figures[f"alone {size}"]) / median(figures[f"insert {size}"])
        print(
            f"  store/insert={ratio:.2f}  store/eventsourcing={versus:.2f}  "
            f"(without group commit: store/insert={alone:.2f})"
        )
        if f"cpu store {size}" in figures:
            used = {name: median(figures[f"cpu {name} {size}"]) for name in LABELS}
            shown = "  ".join(f"{name}={value:,.0f}" for name, value in used.items())
            print(f"  CPU us/event (client + server backends): {shown}")
            print(f"  insert/store CPU={used['insert'] / used['store']:.2f}")
    print("following the whole log:")
    report("committed-order follow", figures["follow"])
    report("bare keyset scan", figures["scan"])
    print(f"  follow/scan={median(figures['follow']) / median(figures['scan']):.2f}")
    store, insert = median(figures["store 1"]), median(figures["insert 1"])
    eventsourcing = median(figures["eventsourcing 1"])
    print(
        f"append: store={store:.0f} insert={insert:.0f} ratio={store / insert:.2f} "
        f"eventsourcing={eventsourcing:.0f} vs_eventsourcing={store / eventsourcing:.2f}"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, default=16)
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_arguments()))
