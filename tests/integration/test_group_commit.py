"""Group commit: appends queued behind a busy statement share one, each keeping its outcome.

With `statements_max=1`, appends started together go out as: the first alone, then the
rest as one shared statement (one transaction: they share a `tx`). Each append stays
all-or-nothing and gets exactly the result or the error it would have had alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID, uuid4

import asyncpg
import pytest

from ledger.errors import ConcurrencyError, DuplicateEventError
from ledger.store import (
    GROUP_EVENTS_MAX,
    AppendResult,
    EventStore,
    NewEvent,
    StreamHead,
    verify_stream,
)
from tests.integration.events import noted


@pytest.fixture
def shared(pool: asyncpg.Pool) -> EventStore:
    """A store that lets one statement run at a time, so the others queue and share."""
    return EventStore(pool, statements_max=1)


async def append_all(
    store: EventStore, appends: Sequence[tuple[list[NewEvent], dict[UUID, StreamHead | int]]]
) -> list[AppendResult | BaseException]:
    return await asyncio.gather(
        *(store.append(events, expected, actor="tester") for events, expected in appends),
        return_exceptions=True,
    )


def traceparent(stream: UUID) -> str:
    return f"00-{stream.hex}-{stream.hex[:16]}-01"


def transactions(results: Sequence[AppendResult | BaseException]) -> set[int]:
    appended = [result for result in results if isinstance(result, AppendResult)]
    return {event.tx for result in appended for event in result.events}


async def test_queued_appends_share_one_transaction_and_each_gets_its_own_events(
    shared: EventStore,
) -> None:
    streams = [uuid4() for _ in range(12)]
    results = await asyncio.gather(
        *(
            shared.append(
                [noted(stream, 1), noted(stream, 2)],
                {stream: 0},
                actor="tester",
                trace_context=traceparent(stream),
            )
            for stream in streams
        )
    )
    assert all(isinstance(result, AppendResult) for result in results)
    # The first went alone, the eleven others together.
    assert len(transactions(results)) == 2
    for stream, result in zip(streams, results, strict=True):
        assert isinstance(result, AppendResult)
        assert [(event.stream_id, event.version) for event in result.events] == [
            (stream, 1),
            (stream, 2),
        ]
        stored = await shared.read_stream(stream)
        assert [event.hash for event in stored] == [event.hash for event in result.events]
        assert [event.actor for event in stored] == ["tester", "tester"]
        assert [event.trace_context for event in stored] == [traceparent(stream)] * 2
        assert stored[0].position < stored[1].position
        assert (await verify_stream(shared, stream)).ok


async def test_a_stale_append_in_a_shared_statement_writes_nothing_and_the_others_go_in(
    shared: EventStore,
) -> None:
    stale, fresh = uuid4(), [uuid4() for _ in range(4)]
    first = await shared.append([noted(stale, 1)], {stale: 0})
    forged = StreamHead(1, bytes(32))
    appends = [([noted(stream, 1)], {stream: 0}) for stream in fresh[:2]]
    # Two streams in one append: one head is forged, so neither stream gets an event.
    both = uuid4()
    appends.append(([noted(both, 1), noted(stale, 2)], {both: 0, stale: forged}))
    appends += [([noted(stream, 1)], {stream: 0}) for stream in fresh[2:]]
    results = await append_all(shared, appends)
    assert isinstance(results[2], ConcurrencyError)
    assert [isinstance(result, AppendResult) for result in results] == [
        True,
        True,
        False,
        True,
        True,
    ]
    assert await shared.stream_version(both) == 0
    assert [event.hash for event in await shared.read_stream(stale)] == [first.events[0].hash]
    for stream in fresh:
        assert await shared.stream_version(stream) == 1


async def test_an_append_whose_version_exists_already_is_refused_in_a_shared_statement(
    shared: EventStore,
) -> None:
    stream = uuid4()
    await shared.append([noted(stream, 1)], {stream: 0})
    others = [uuid4() for _ in range(3)]
    # A writer that missed version 1 believes the stream is new.
    appends = [([noted(other, 1)], {other: 0}) for other in others]
    appends.insert(1, ([noted(stream, 1)], {stream: 0}))
    results = await append_all(shared, appends)
    assert isinstance(results[1], ConcurrencyError)
    assert results[1].actual_version == 1
    others = results[:1] + results[2:]
    assert all(isinstance(result, AppendResult) for result in others)
    assert await shared.stream_version(stream) == 1


async def test_appends_to_one_stream_never_share_a_statement(shared: EventStore) -> None:
    stream = uuid4()
    results = await append_all(shared, [([noted(stream, n)], {stream: 0}) for n in range(20)])
    winners = [result for result in results if isinstance(result, AppendResult)]
    assert len(winners) == 1
    assert all(isinstance(result, ConcurrencyError) for result in results if result not in winners)
    assert [event.version for event in await shared.read_stream(stream)] == [1]


async def test_a_duplicate_event_id_fails_only_its_own_append(shared: EventStore) -> None:
    taken = noted(uuid4(), 1)
    await shared.append([taken], {taken.stream_id: 0})
    duplicate = NewEvent(
        stream_id=uuid4(),
        stream_type=taken.stream_type,
        topic=taken.topic,
        data=taken.data,
        event_id=taken.event_id,
    )
    streams = [uuid4() for _ in range(4)]
    appends = [([noted(stream, 1)], {stream: 0}) for stream in streams]
    appends.insert(2, ([duplicate], {duplicate.stream_id: 0}))
    results = await append_all(shared, appends)
    assert isinstance(results[2], DuplicateEventError)
    assert sum(isinstance(result, AppendResult) for result in results) == 4
    assert await shared.stream_version(duplicate.stream_id) == 0
    for stream in streams:
        assert await shared.stream_version(stream) == 1


async def test_many_writers_on_many_streams_lose_nothing(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, statements_max=2)
    streams = [uuid4() for _ in range(16)]
    heads: dict[UUID, StreamHead | int] = dict.fromkeys(streams, 0)

    async def writer(stream: UUID) -> None:
        for number in range(1, 16):
            result = await store.append([noted(stream, number)], {stream: heads[stream]})
            heads[stream] = result.head_of(stream)

    await asyncio.gather(*(writer(stream) for stream in streams))
    for stream in streams:
        events = await store.read_stream(stream)
        assert [event.version for event in events] == list(range(1, 16))
        assert (await verify_stream(store, stream)).ok


async def test_large_appends_never_share_a_statement(shared: EventStore) -> None:
    streams = [uuid4() for _ in range(4)]
    size = GROUP_EVENTS_MAX + 1
    results = await append_all(
        shared, [([noted(stream, n) for n in range(size)], {stream: 0}) for stream in streams]
    )
    assert len(transactions(results)) == len(streams)
