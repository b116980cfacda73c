"""Following the whole log in commit order never skips or repeats an event.

The interleavings that lose events when a reader follows position order are forced on
purpose with transactions held open on separate connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.store import Checkpoint, EventStore, RecordedEvent
from tests.integration.events import new_stream, noted


class Follower:
    """A reader that keeps its checkpoint and everything it has seen, in order."""

    def __init__(self, store: EventStore, start: Checkpoint) -> None:
        self.store = store
        self.checkpoint = start
        self.seen: list[RecordedEvent] = []

    async def poll(self) -> list[RecordedEvent]:
        batch = await self.store.read_committed(self.checkpoint, limit=500)
        if batch:
            self.checkpoint = batch[-1].checkpoint
            self.seen.extend(batch)
        return batch

    async def drain(self) -> None:
        while await self.poll():
            pass

    def positions(self) -> list[int]:
        return [event.position for event in self.seen]


@pytest.fixture
async def connections(database_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    opened = [await asyncpg.connect(database_url) for _ in range(4)]
    yield opened
    for connection in opened:
        await connection.close()


async def take_xid(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT pg_current_xact_id()"))


async def test_design_inversion_is_not_skipped(
    store: EventStore, connections: list[asyncpg.Connection], log_head: Checkpoint
) -> None:
    """A takes its xid, B inserts position 1, A inserts position 2 and commits, the
    reader reads, then B commits: the reader must still get B's event."""
    a, b = connections[0], connections[1]
    follower = Follower(store, log_head)
    transaction_a, transaction_b = a.transaction(), b.transaction()
    await transaction_a.start()
    await transaction_b.start()
    xid_a = await take_xid(a)
    stream_a, stream_b = new_stream(), new_stream()
    result_b = await store.append([noted(stream_b, 1)], {stream_b: 0}, connection=b)
    result_a = await store.append([noted(stream_a, 2)], {stream_a: 0}, connection=a)
    position_b, position_a = result_b.events[0].position, result_a.events[0].position
    assert position_b < position_a
    assert result_a.events[0].tx == xid_a < result_b.events[0].tx
    await transaction_a.commit()
    await follower.drain()
    assert follower.positions() == [position_a]
    await transaction_b.commit()
    await follower.drain()
    assert follower.positions() == [position_a, position_b]


async def test_lower_position_committing_after_a_higher_one_is_not_skipped(
    store: EventStore, connections: list[asyncpg.Connection], log_head: Checkpoint
) -> None:
    first = connections[0]
    follower = Follower(store, log_head)
    held = first.transaction()
    await held.start()
    low_stream, high_stream = new_stream(), new_stream()
    low = await store.append([noted(low_stream, 1)], {low_stream: 0}, connection=first)
    high = await store.append([noted(high_stream, 2)], {high_stream: 0})
    assert low.events[0].position < high.events[0].position
    await follower.drain()
    assert follower.seen == []  # The committed high event waits behind the open low one.
    await held.commit()
    await follower.drain()
    assert follower.positions() == [low.events[0].position, high.events[0].position]


async def test_rolled_back_events_are_never_seen(
    store: EventStore, connections: list[asyncpg.Connection], log_head: Checkpoint
) -> None:
    follower = Follower(store, log_head)
    doomed = connections[0].transaction()
    await doomed.start()
    stream = new_stream()
    await store.append([noted(stream, 1)], {stream: 0}, connection=connections[0])
    await doomed.rollback()
    other = new_stream()
    committed = await store.append([noted(other, 3)], {other: 0})
    await follower.drain()
    assert follower.positions() == [committed.events[0].position]


async def test_reader_following_many_concurrent_writers_sees_each_event_once(
    store: EventStore, log_head: Checkpoint
) -> None:
    follower = Follower(store, log_head)
    writers_done = asyncio.Event()
    expected: set[UUID] = set()

    async def writer() -> None:
        stream = new_stream()
        for version in range(25):
            batch = [noted(stream, version * 2), noted(stream, version * 2 + 1)]
            await store.append(batch, {stream: version * 2})
            expected.update(event.event_id for event in batch)

    async def reader() -> None:
        while not writers_done.is_set():
            if not await follower.poll():
                await asyncio.sleep(0.001)
        await follower.drain()

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer() for _ in range(16)))
    writers_done.set()
    await reading
    ids = [event.event_id for event in follower.seen]
    assert len(ids) == len(set(ids)) == len(expected) == 16 * 50
    assert set(ids) == expected
    checkpoints = [event.checkpoint for event in follower.seen]
    assert checkpoints == sorted(checkpoints)
    last_version: dict[UUID, int] = {}
    for event in follower.seen:
        assert event.version == last_version.get(event.stream_id, 0) + 1
        last_version[event.stream_id] = event.version


# One step of a schedule: (writer index, action). The writers run on separate connections.
step = st.tuples(st.integers(0, 2), st.sampled_from(["begin", "xid", "append", "end", "read"]))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=st.lists(step, min_size=10, max_size=40),
    commit=st.lists(st.booleans(), min_size=4, max_size=4),
)
async def test_any_interleaving_of_writers_is_followed_without_loss(
    store: EventStore,
    connections: list[asyncpg.Connection],
    schedule: list[tuple[int, str]],
    commit: list[bool],
) -> None:
    follower = Follower(store, await store.last_checkpoint())
    transactions: dict[int, asyncpg.transaction.Transaction] = {}
    pending: dict[int, list[UUID]] = {index: [] for index in range(4)}
    committed: set[UUID] = set()
    for index, action in schedule:
        connection = connections[index]
        if action == "begin" and index not in transactions:
            transactions[index] = connection.transaction()
            await transactions[index].start()
        elif action == "xid" and index in transactions:
            await take_xid(connection)
        elif action == "append":
            stream = new_stream()
            event = noted(stream, index)
            await store.append([event], {stream: 0}, connection=connection)
            if index in transactions:
                pending[index].append(event.event_id)
            else:
                committed.add(event.event_id)
        elif action == "end" and index in transactions:
            if commit[index]:
                await transactions.pop(index).commit()
                committed.update(pending[index])
            else:
                await transactions.pop(index).rollback()
            pending[index].clear()
        elif action == "read":
            await follower.poll()
    for index, transaction in transactions.items():
        await transaction.commit()
        committed.update(pending[index])
    await follower.drain()
    seen = [event.event_id for event in follower.seen]
    assert len(seen) == len(set(seen))
    assert set(seen) == committed
