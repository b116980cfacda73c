"""The sequencer numbers every committed event once, gapless, in (tx, position) order, and
the global hash chain it extends finds any altered row at its sequence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from ledger import sequencer
from ledger.sequencer import GENESIS, Cursor, SequencerConflictError, Unsequenced
from ledger.store import EventStore
from tests.conftest import Databases
from tests.integration.events import new_stream, noted


class Ledger:
    """A fresh database of the test's own: its relay cursor starts at zero."""

    def __init__(self, url: str, pool: asyncpg.Pool, connections: list[asyncpg.Connection]):
        self.url = url
        self.pool = pool
        self.store = EventStore(pool)
        self.connections = connections

    async def sequence_all(self, *, limit: int = 100, digest_every: int = 10) -> int:
        """Number everything committed so far, as the relay's leader does; return the count."""
        connection = self.connections[-1]
        cursor = await sequencer.load_cursor(connection)
        numbered = 0
        while events := await sequencer.read_unsequenced(connection, cursor, limit=limit):
            batch = sequencer.assign(cursor, events, digest_every=digest_every)
            await sequencer.record(connection, batch)
            cursor = batch.after
            numbered += len(events)
        return numbered

    async def sequence_rows(self) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT s.sequence, s.position, s.tx, e.event_id FROM ledger.sequence s "
            "JOIN ledger.events e ON e.notification_id = s.position ORDER BY s.sequence"
        )
        return rows

    async def verify(self) -> sequencer.GlobalVerification:
        last = await self.pool.fetchval("SELECT max(sequence) FROM ledger.sequence")
        return await sequencer.verify_range(self.connections[-1], 1, last)


@pytest.fixture
async def ledger(databases: Databases) -> AsyncIterator[Ledger]:
    url = await databases.create("sequencer")
    pool = await asyncpg.create_pool(url, min_size=2, max_size=20)
    connections = [await asyncpg.connect(url) for _ in range(3)]
    yield Ledger(url, pool, connections)
    for connection in connections:
        await connection.close()
    await pool.close()


async def append_one(store: EventStore, number: int = 0) -> UUID:
    stream = new_stream()
    event = noted(stream, number)
    await store.append([event], {stream: 0})
    return event.event_id


def test_assign_numbers_consecutively_and_closes_digests() -> None:
    events = [Unsequenced(10, position, bytes([position]) * 32) for position in range(1, 8)]
    start = Cursor(4, 9, 99, b"\x01" * 32, 0)
    batch = sequencer.assign(start, events, digest_every=3)
    assert [row.sequence for row in batch.rows] == [5, 6, 7, 8, 9, 10, 11]
    expected = start.global_hash
    for row, event in zip(batch.rows, events, strict=True):
        expected = sequencer.link(expected, event.hash)
        assert row.global_hash == expected
    assert [(d.first_sequence, d.last_sequence) for d in batch.digests] == [(1, 6), (7, 9)]
    assert batch.digests[1].global_hash == batch.rows[4].global_hash
    assert batch.after == Cursor(11, 10, 7, batch.rows[-1].global_hash, 9)


def test_assign_refuses_events_out_of_commit_order() -> None:
    with pytest.raises(AssertionError):
        sequencer.assign(Cursor(1, 5, 5, GENESIS, 0), [Unsequenced(5, 4, GENESIS)], digest_every=10)
    with pytest.raises(AssertionError):
        sequencer.assign(
            sequencer.START,
            [Unsequenced(5, 9, GENESIS), Unsequenced(4, 10, GENESIS)],
            digest_every=10,
        )


async def test_concurrent_appends_get_one_gapless_sequence_each_in_commit_order(
    ledger: Ledger,
) -> None:
    appended: list[UUID] = []

    async def writer() -> None:
        for number in range(20):
            appended.append(await append_one(ledger.store, number))

    async def sequencer_loop(done: asyncio.Event) -> None:
        while not done.is_set():
            await ledger.sequence_all(limit=7)
            await asyncio.sleep(0.001)
        await ledger.sequence_all(limit=7)

    done = asyncio.Event()
    numbering = asyncio.create_task(sequencer_loop(done))
    await asyncio.gather(*(writer() for _ in range(12)))
    done.set()
    await numbering
    rows = await ledger.sequence_rows()
    assert [row["sequence"] for row in rows] == list(range(1, len(appended) + 1))
    assert sorted(row["event_id"] for row in rows) == sorted(appended)
    order = [(row["tx"], row["position"]) for row in rows]
    assert order == sorted(order)
    assert (await ledger.verify()).ok


async def test_the_design_inversion_is_numbered_in_commit_order(ledger: Ledger) -> None:
    """A takes its xid, B inserts position p, A inserts p+1 and commits, the sequencer
    runs, then B commits: B's event is numbered next, not skipped."""
    a, b = ledger.connections[0], ledger.connections[1]
    transaction_a, transaction_b = a.transaction(), b.transaction()
    await transaction_a.start()
    await transaction_b.start()
    await a.fetchval("SELECT pg_current_xact_id()")
    stream_a, stream_b = new_stream(), new_stream()
    result_b = await ledger.store.append([noted(stream_b, 1)], {stream_b: 0}, connection=b)
    result_a = await ledger.store.append([noted(stream_a, 2)], {stream_a: 0}, connection=a)
    position_b, position_a = result_b.events[0].position, result_a.events[0].position
    assert position_b < position_a
    await transaction_a.commit()
    assert await ledger.sequence_all() == 1
    await transaction_b.commit()
    assert await ledger.sequence_all() == 1
    rows = await ledger.sequence_rows()
    assert [(row["sequence"], row["position"]) for row in rows] == [
        (1, position_a),
        (2, position_b),
    ]
    assert (await ledger.verify()).ok


async def test_a_held_open_transaction_holds_back_later_commits(ledger: Ledger) -> None:
    held = ledger.connections[0].transaction()
    await held.start()
    low_stream = new_stream()
    await ledger.store.append(
        [noted(low_stream, 1)], {low_stream: 0}, connection=ledger.connections[0]
    )
    await append_one(ledger.store)
    assert await ledger.sequence_all() == 0
    await held.commit()
    assert await ledger.sequence_all() == 2
    positions = [row["position"] for row in await ledger.sequence_rows()]
    assert positions == sorted(positions)


async def test_a_second_writer_from_a_stale_cursor_is_refused(ledger: Ledger) -> None:
    for number in range(3):
        await append_one(ledger.store, number)
    first, second = ledger.connections[0], ledger.connections[1]
    cursor = await sequencer.load_cursor(first)
    events = await sequencer.read_unsequenced(first, cursor, limit=10)
    await sequencer.record(first, sequencer.assign(cursor, events, digest_every=10))
    with pytest.raises(SequencerConflictError):
        await sequencer.record(second, sequencer.assign(cursor, events, digest_every=10))
    assert [row["sequence"] for row in await ledger.sequence_rows()] == [1, 2, 3]


async def test_digests_are_recorded_and_checked(ledger: Ledger) -> None:
    for number in range(25):
        await append_one(ledger.store, number)
    await ledger.sequence_all(limit=4, digest_every=10)
    digests = await ledger.pool.fetch(
        "SELECT first_sequence, last_sequence, global_hash FROM ledger.digests "
        "ORDER BY last_sequence"
    )
    assert [(d[0], d[1]) for d in digests] == [(1, 10), (11, 20)]
    at_20 = await ledger.pool.fetchval("SELECT global_hash FROM ledger.sequence WHERE sequence=20")
    assert digests[1][2] == at_20
    # An auditor holding the digest at 10 verifies 11..25 from it alone.
    resumed = await sequencer.verify_range(
        ledger.connections[0], 11, 25, previous_global_hash=bytes(digests[0][2])
    )
    assert resumed.ok
    assert resumed.checked == 15
    wrong = await sequencer.verify_range(
        ledger.connections[0], 11, 25, previous_global_hash=GENESIS
    )
    assert wrong.broken is not None
    assert wrong.broken.sequence == 11


async def tamper(ledger: Ledger, table: str, statement: str, *arguments: object) -> None:
    """Change a row behind the append-only trigger's back, as a superuser could."""
    connection = ledger.connections[2]
    async with connection.transaction():
        await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        await connection.execute(statement, *arguments)
        await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    ("table", "statement", "broken_at", "reason"),
    [
        (
            "ledger.sequence",
            "UPDATE ledger.sequence SET global_hash = $1 WHERE sequence = 7",
            7,
            "global_hash",
        ),
        (
            "ledger.sequence",
            "UPDATE ledger.sequence s SET position = e.notification_id, tx = e.tx "
            "FROM (SELECT notification_id, tx FROM ledger.events "
            "      ORDER BY notification_id DESC LIMIT 1) AS e "
            "WHERE s.sequence = 5 AND $1::bytea IS NOT NULL",
            5,
            "global_hash",
        ),
        (
            "ledger.events",
            "UPDATE ledger.events SET state = convert_to('{\"number\":666}', 'UTF8') "
            "WHERE notification_id = (SELECT position FROM ledger.sequence WHERE sequence = 9) "
            "AND $1::bytea IS NOT NULL",
            9,
            "content",
        ),
        (
            "ledger.digests",
            "UPDATE ledger.digests SET global_hash = $1 WHERE last_sequence = 10",
            10,
            "digest",
        ),
    ],
    ids=["global-hash", "substituted-event", "event-content", "digest"],
)
async def test_an_altered_row_is_found_at_its_sequence(
    ledger: Ledger, table: str, statement: str, broken_at: int, reason: str
) -> None:
    for number in range(12):
        await append_one(ledger.store, number)
    await ledger.sequence_all(limit=5, digest_every=10)
    assert (await ledger.verify()).ok
    await append_one(ledger.store)  # Not numbered: a substitute for a numbered one.
    await tamper(ledger, table, statement, b"\x07" * 32)
    verification = await ledger.verify()
    assert verification.broken is not None
    assert verification.broken.sequence == broken_at
    assert reason in verification.broken.reason
    assert verification.checked == broken_at - 1


async def test_a_missing_sequence_is_found(ledger: Ledger) -> None:
    for number in range(6):
        await append_one(ledger.store, number)
    await ledger.sequence_all()
    await tamper(ledger, "ledger.sequence", "DELETE FROM ledger.sequence WHERE sequence = $1", 4)
    verification = await ledger.verify()
    assert verification.broken is not None
    assert verification.broken.sequence == 4
    assert "missing" in verification.broken.reason


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.sequence SET recorded_at = now()",
        "DELETE FROM ledger.sequence",
        "TRUNCATE ledger.sequence CASCADE",
        "UPDATE ledger.digests SET recorded_at = now()",
        "DELETE FROM ledger.digests",
        "TRUNCATE ledger.digests",
    ],
)
async def test_sequence_and_digests_are_append_only(ledger: Ledger, statement: str) -> None:
    for number in range(10):
        await append_one(ledger.store, number)
    await ledger.sequence_all(digest_every=5)
    with pytest.raises(asyncpg.PostgresError, match="append-only") as raised:
        await ledger.pool.execute(statement)
    assert raised.value.sqlstate == "LG002"
    assert await ledger.pool.fetchval("SELECT count(*) FROM ledger.sequence") == 10


async def test_the_application_role_may_only_insert_and_select(ledger: Ledger) -> None:
    connection = ledger.connections[2]
    async with connection.transaction():
        await connection.execute("SET LOCAL ROLE ledger_app")
        await connection.fetchval("SELECT count(*) FROM ledger.sequence")
        await connection.fetchval("SELECT count(*) FROM ledger.digests")
        await connection.execute("UPDATE ledger.relay_state SET updated_at = now()")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("DELETE FROM ledger.relay_state")
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger.pool.execute("UPDATE ledger.relay_state SET published = sequenced + 1")
