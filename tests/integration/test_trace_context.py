"""The trace context column (migration 0005) on real PostgreSQL: written by every append
statement, read back by the store and the relay's reader, outside the hash chain, and as
append-only as the rest of the row."""

from __future__ import annotations

import asyncpg
import pytest

from ledger import sequencer
from ledger.store import EventStore, verify_stream
from tests.conftest import Databases
from tests.integration.events import new_stream, noted

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def stored(pool: asyncpg.Pool, stream_id: object) -> list[str | None]:
    rows = await pool.fetch(
        "SELECT trace_context FROM ledger.events WHERE originator_id = $1 "
        "ORDER BY originator_version",
        stream_id,
    )
    return [row[0] for row in rows]


async def test_one_event_keeps_its_trace_context(store: EventStore) -> None:
    stream = new_stream()
    await store.append([noted(stream, 1)], {stream: 0}, trace_context=TRACEPARENT)
    (event,) = await store.read_stream(stream)
    assert event.trace_context == TRACEPARENT
    assert (await verify_stream(store, stream)).ok


async def test_every_event_of_an_append_keeps_it(store: EventStore) -> None:
    first, second = new_stream(), new_stream()
    events = [noted(first, 1), noted(first, 2), noted(second, 1)]
    await store.append(events, {first: 0, second: 0}, trace_context=TRACEPARENT)
    assert await stored(store.pool, first) == [TRACEPARENT, TRACEPARENT]
    assert await stored(store.pool, second) == [TRACEPARENT]
    for stream in (first, second):
        assert (await verify_stream(store, stream)).ok


async def test_an_append_with_an_idempotency_key_keeps_it(store: EventStore) -> None:
    stream, key = new_stream(), f"trace-{new_stream()}"
    result = await store.append(
        [noted(stream, 1)], {stream: 0}, idempotency_key=key, trace_context=TRACEPARENT
    )
    again = await store.append(
        [noted(stream, 1)], {stream: 0}, idempotency_key=key, trace_context=None
    )
    assert again.replayed
    assert again.events == result.events
    assert await stored(store.pool, stream) == [TRACEPARENT]


async def test_without_one_the_column_is_null(store: EventStore) -> None:
    stream = new_stream()
    await store.append([noted(stream, 1)], {stream: 0})
    await store.append([noted(stream, 2), noted(stream, 3)], {stream: 1})
    assert await stored(store.pool, stream) == [None, None, None]
    assert [event.trace_context for event in await store.read_stream(stream)] == [None] * 3


async def test_the_relay_reads_it_with_the_event(databases: Databases) -> None:
    pool = await asyncpg.create_pool(
        await databases.create("trace_context"), min_size=1, max_size=2
    )
    try:
        store, stream = EventStore(pool), new_stream()
        await store.append([noted(stream, 1)], {stream: 0}, trace_context=TRACEPARENT)
        await store.append([noted(stream, 2)], {stream: 1})
        async with pool.acquire() as connection:
            cursor = await sequencer.load_cursor(connection)
            unsequenced = await sequencer.read_unsequenced(connection, cursor, limit=10)
            await sequencer.record(
                connection, sequencer.assign(cursor, unsequenced, digest_every=1_000)
            )
            items = await sequencer.read_sequenced(connection, after=0, limit=10)
    finally:
        await pool.close()
    assert [item.event.trace_context for item in items] == [TRACEPARENT, None]


@pytest.mark.parametrize("value", ["", "x" * 513])
async def test_an_empty_or_oversized_value_is_refused(store: EventStore, value: str) -> None:
    stream = new_stream()
    with pytest.raises(asyncpg.CheckViolationError):
        await store.append([noted(stream, 1)], {stream: 0}, trace_context=value)
    assert await stored(store.pool, stream) == []


async def test_it_cannot_be_changed_afterwards(store: EventStore) -> None:
    stream = new_stream()
    await store.append([noted(stream, 1)], {stream: 0})
    with pytest.raises(asyncpg.PostgresError, match="append-only") as raised:
        await store.pool.execute(
            "UPDATE ledger.events SET trace_context = $2 WHERE originator_id = $1",
            stream,
            TRACEPARENT,
        )
    assert raised.value.sqlstate == "LG002"
