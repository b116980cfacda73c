"""The event store against a real PostgreSQL: append, read, concurrency, idempotency, errors."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from uuid import uuid4

import asyncpg
import pytest

from ledger.errors import (
    ConcurrencyError,
    EventEncodingError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidAppendError,
    StreamNotFoundError,
)
from ledger.store import (
    EVENT_SIZE_BYTES_MAX,
    EventStore,
    NewEvent,
    StreamHead,
    fingerprint_of,
    verify_stream,
)
from tests.integration.events import TOPIC, Noted, new_stream, noted


async def count_events(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger.events"))


async def test_append_then_read_stream_returns_events_with_metadata(store: EventStore) -> None:
    stream = new_stream()
    correlation, causation = uuid4(), uuid4()
    result = await store.append(
        [noted(stream, 1, amount=Decimal("10.25")), noted(stream, 2)],
        {stream: 0},
        actor="user-1",
        correlation_id=correlation,
        causation_id=causation,
    )
    assert [event.version for event in result.events] == [1, 2]
    assert not result.replayed
    events = await store.read_stream(stream)
    assert [event.version for event in events] == [1, 2]
    first = events[0]
    assert first.decode(Noted) == Noted(1, Decimal("10.25"))
    assert first.data == b'{"number":1,"amount":"10.25","text":""}'
    assert first.topic == TOPIC
    assert first.stream_type == "test"
    assert first.actor == "user-1"
    assert (first.correlation_id, first.causation_id) == (correlation, causation)
    assert first.recorded_at.tzinfo is not None
    assert first.schema_version == 1
    assert events[1].prev_hash == first.hash
    assert result.token == max(event.checkpoint for event in events)


async def test_read_stream_up_to_version(store: EventStore) -> None:
    stream = new_stream()
    await store.append([noted(stream, n) for n in range(5)], {stream: 0})
    events = await store.read_stream(stream, up_to_version=3)
    assert [event.version for event in events] == [1, 2, 3]


async def test_one_append_touches_several_streams_atomically(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    order, position, account = new_stream(), new_stream(), new_stream()
    await store.append([noted(account, 0)], {account: 0})
    result = await store.append(
        [noted(order, 1), noted(position, 2), noted(account, 3)],
        {order: 0, position: 0, account: 1},
    )
    assert {event.tx for event in result.events} == {result.events[0].tx}
    before = await count_events(pool)
    with pytest.raises(ConcurrencyError) as raised:
        # The account is at version 2 now; the whole batch must fail, the order included.
        await store.append([noted(order, 4), noted(account, 5)], {order: 1, account: 1})
    assert raised.value.stream_id == account
    assert (raised.value.expected_version, raised.value.actual_version) == (1, 2)
    assert await count_events(pool) == before


async def test_fifty_concurrent_appends_with_the_same_expected_version(store: EventStore) -> None:
    stream = new_stream()
    await store.append([noted(stream, 0)], {stream: 0})

    async def attempt(number: int) -> bool:
        try:
            await store.append([noted(stream, number)], {stream: 1})
        except ConcurrencyError:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(n) for n in range(50)))
    assert outcomes.count(True) == 1
    assert outcomes.count(False) == 49
    versions = [event.version for event in await store.read_stream(stream)]
    assert versions == [1, 2]


async def test_concurrent_writers_leave_versions_without_gap_or_duplicate(
    store: EventStore,
) -> None:
    stream = new_stream()

    async def writer() -> int:
        written = 0
        for _ in range(20):
            version = await store.stream_version(stream)
            try:
                await store.append([noted(stream, version)], {stream: version})
                written += 1
            except ConcurrencyError:
                continue
        return written

    written = sum(await asyncio.gather(*(writer() for _ in range(8))))
    versions = [event.version for event in await store.read_stream(stream)]
    assert versions == list(range(1, written + 1))


async def test_expected_version_ahead_of_the_stream_is_a_conflict(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    await store.append([noted(stream, 0)], {stream: 0})
    before = await count_events(pool)
    with pytest.raises(ConcurrencyError) as raised:
        await store.append([noted(stream, 1)], {stream: 5})
    assert (raised.value.expected_version, raised.value.actual_version) == (5, 1)
    with pytest.raises(ConcurrencyError):
        await store.append([noted(stream, 1)], {stream: 0})
    assert await count_events(pool) == before


async def test_same_idempotency_key_twice_appends_once_and_answers_the_same(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    key = f"key-{uuid4()}"
    body = fingerprint_of(b'{"order": 1}')
    first = await store.append(
        [noted(stream, 1), noted(stream, 2)], {stream: 0}, idempotency_key=key, fingerprint=body
    )
    before = await count_events(pool)
    again = await store.append(
        [noted(stream, 1), noted(stream, 2)], {stream: 0}, idempotency_key=key, fingerprint=body
    )
    assert again.replayed
    assert not first.replayed
    assert again.events == first.events
    assert await count_events(pool) == before
    events = await store.read_stream(stream)
    assert [event.idempotency_key for event in events] == [key, key]


async def test_idempotency_key_reused_for_another_request_is_refused(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    key = f"key-{uuid4()}"
    await store.append([noted(stream, 1)], {stream: 0}, idempotency_key=key, fingerprint=b"a")
    before = await count_events(pool)
    with pytest.raises(IdempotencyConflictError):
        await store.append([noted(stream, 9)], {stream: 1}, idempotency_key=key, fingerprint=b"b")
    assert await count_events(pool) == before


async def test_concurrent_retries_with_one_key_append_once(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    key = f"key-{uuid4()}"
    results = await asyncio.gather(
        *(store.append([noted(stream, 1)], {stream: 0}, idempotency_key=key) for _ in range(10))
    )
    assert sum(not result.replayed for result in results) == 1
    assert len({tuple(result.events) for result in results}) == 1
    assert len(await store.read_stream(stream)) == 1


async def test_reading_an_unknown_stream_is_a_typed_error(store: EventStore) -> None:
    with pytest.raises(StreamNotFoundError):
        await store.read_stream(uuid4())


async def test_unencodable_payload_is_refused_and_nothing_written(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    before = await count_events(pool)
    bad = NewEvent(stream_id=stream, stream_type="test", topic=TOPIC, data=object())
    with pytest.raises(EventEncodingError):
        await store.append([noted(stream, 0), bad], {stream: 0})
    assert await count_events(pool) == before


async def test_oversized_payload_is_refused_and_nothing_written(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    before = await count_events(pool)
    with pytest.raises(EventTooLargeError) as raised:
        await store.append([noted(stream, 1, text="x" * EVENT_SIZE_BYTES_MAX)], {stream: 0})
    assert raised.value.size_bytes > EVENT_SIZE_BYTES_MAX
    assert await count_events(pool) == before


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], {}),
        ([noted(new_stream(), 1)], {}),
    ],
    ids=["empty", "no-expected-version"],
)
async def test_malformed_appends_are_typed_errors(
    store: EventStore, events: list, expected: dict
) -> None:
    with pytest.raises(InvalidAppendError):
        await store.append(events, expected)


async def test_appending_from_a_stale_head_is_a_conflict(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    first = await store.append([noted(stream, 1)], {stream: 0})
    head = first.head_of(stream)
    second = await store.append([noted(stream, 2)], {stream: head})
    assert second.head_of(stream).version == 2
    before = await count_events(pool)
    with pytest.raises(ConcurrencyError) as raised:
        await store.append([noted(stream, 3)], {stream: head})  # Version 1 is no longer the head.
    assert (raised.value.expected_version, raised.value.actual_version) == (1, 2)
    forged = StreamHead(2, bytes(32))
    with pytest.raises(ConcurrencyError):
        await store.append([noted(stream, 3)], {stream: forged})  # Right version, wrong hash.
    with pytest.raises(ConcurrencyError):
        await store.append([noted(stream, 3), noted(stream, 4)], {stream: forged})
    assert await count_events(pool) == before
    assert (await verify_stream(store, stream)).ok


async def test_read_streams_after_returns_each_streams_tail_in_one_call(
    store: EventStore,
) -> None:
    streams = [new_stream() for _ in range(3)]
    for stream in streams:
        await store.append([noted(stream, n) for n in range(4)], {stream: 0})
    events = await store.read_streams_after({streams[0]: 0, streams[1]: 2, streams[2]: 4})
    got = [(event.stream_id, event.version) for event in events]
    assert sorted(got) == sorted(
        [(streams[0], v) for v in range(1, 5)] + [(streams[1], 3), (streams[1], 4)]
    )
    for stream in streams:
        versions = [version for stream_id, version in got if stream_id == stream]
        assert versions == sorted(versions)
