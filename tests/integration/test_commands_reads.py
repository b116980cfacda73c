"""StreamReader: concurrent loads merged into few queries, each answered with exactly
what it asked for, against the real event store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from uuid import UUID, uuid4

import asyncpg
import pytest

from commands.reads import StreamReader
from ledger.store import EventStore, RecordedEvent
from tests.integration.events import noted


class CountingStore(EventStore):
    """The real store, counting its multi-stream reads; it can be told to fail them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.reads = 0
        self.failing = False

    async def read_streams_after(self, after_versions: Mapping[UUID, int]) -> list[RecordedEvent]:
        self.reads += 1
        if self.failing:
            raise ConnectionResetError("the database went away")
        return await super().read_streams_after(after_versions)


async def streams_of(store: EventStore, count: int, length: int) -> list[UUID]:
    created = []
    for _ in range(count):
        stream_id = uuid4()
        await store.append([noted(stream_id, number) for number in range(length)], {stream_id: 0})
        created.append(stream_id)
    return created


def versions(events: list[RecordedEvent]) -> list[tuple[UUID, int]]:
    return [(event.stream_id, event.version) for event in events]


async def test_concurrent_reads_are_merged_and_each_gets_what_it_asked(
    pool: asyncpg.Pool,
) -> None:
    store = CountingStore(pool)
    streams = await streams_of(store, 6, 4)
    reader = StreamReader(store, queries_max=1)
    # Overlapping asks: the same stream from different versions, and a missing stream.
    asks: list[dict[UUID, int]] = [
        {streams[index % 6]: index % 4, streams[(index + 1) % 6]: 0, uuid4(): 0}
        for index in range(20)
    ]
    store.reads = 0
    answers = await asyncio.gather(*(reader.read_after(ask) for ask in asks))
    assert store.reads < len(asks)
    for ask, answer in zip(asks, answers, strict=True):
        assert versions(answer) == versions(await EventStore(pool).read_streams_after(ask))


async def test_a_failed_read_fails_its_waiters_and_not_the_next(pool: asyncpg.Pool) -> None:
    store = CountingStore(pool)
    (stream_id,) = await streams_of(store, 1, 2)
    reader = StreamReader(store, queries_max=1)
    store.failing = True
    outcomes = await asyncio.gather(
        *(reader.read_after({stream_id: 0}) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, ConnectionResetError) for outcome in outcomes)
    store.failing = False
    assert len(await reader.read_after({stream_id: 0})) == 2


async def test_a_cancelled_waiter_leaves_the_others_answered(pool: asyncpg.Pool) -> None:
    store = CountingStore(pool)
    (stream_id,) = await streams_of(store, 1, 3)
    reader = StreamReader(store, queries_max=1)
    first = asyncio.create_task(reader.read_after({stream_id: 0}))
    waiting = [asyncio.create_task(reader.read_after({stream_id: 1})) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()
    assert len(await first) == 3
    assert [len(await task) for task in waiting[1:]] == [2, 2]
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
