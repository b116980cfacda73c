"""Projections against real PostgreSQL: the engine, the fold of the log, rebuild, the worker.

Every test that compares whole read models works in a fresh database of its own, filled
with a seeded session of real domain events (projections/scenario.py) and numbered by
the relay's sequencer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ledger.store import EventStore
from projections import source
from projections.base import LoggedEvent
from projections.engine import (
    Applied,
    SequenceGapError,
    apply_batch,
    read_checkpoint,
    skip_unhandled,
)
from projections.notify import CHANNEL
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS
from projections.scenario import Scenario
from tests.integration.test_projections_fold import (
    actual_rows,
    expected_rows,
    project_all,
    read_log,
    sequence_all,
    snapshot,
)

STEPS = 400


class Session:
    """A fresh migrated database holding one seeded session, sequenced."""

    def __init__(self, url: str, pool: asyncpg.Pool, head: int, recorded: int) -> None:
        self.url = url
        self.pool = pool
        self.head = head
        self.recorded = recorded


async def open_session(databases: Any, seed: int, steps: int = STEPS) -> Session:
    url = await databases.create(f"projections_{seed}")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=12)
    recorded = await Scenario(EventStore(pool), seed).run(steps)
    async with pool.acquire() as connection:
        head = await sequence_all(connection)
    return Session(url, pool, head, recorded)


@pytest.fixture
async def session(databases: Any) -> AsyncIterator[Session]:
    opened = await open_session(databases, seed=7)
    yield opened
    await opened.pool.close()


async def test_scenario_records_every_kind_of_event(session: Session) -> None:
    async with session.pool.acquire() as connection:
        topics = {
            row[0] for row in await connection.fetch("SELECT DISTINCT topic FROM ledger.events")
        }
    names = {topic.rsplit(":", 1)[1] for topic in topics}
    wanted = {
        "UserRegistered",
        "AccountOpened",
        "CashDeposited",
        "InstrumentListed",
        "SignalEmitted",
        "OrderPlaced",
        "OrderAccepted",
        "OrderPartiallyFilled",
        "OrderFilled",
        "OrderCancelled",
        "TradeSettled",
        "TradeBooked",
        "HoldReleased",
        "SellQuantityReserved",
        "PositionOpened",
    }
    assert wanted <= names, wanted - names
    assert session.head > 300


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_read_models_equal_the_fold_of_the_log(databases: Any, seed: int) -> None:
    opened = await open_session(databases, seed)
    try:
        async with opened.pool.acquire() as connection:
            await project_all(connection, seed)
            expected = expected_rows(await read_log(connection))
            actual = await actual_rows(connection)
            for table in actual:
                assert actual[table] == expected.get(table, []), table
            assert all(actual[table] for table in ("trades", "positions", "daily_pnl", "signals"))
            for name in PROJECTIONS:
                assert await read_checkpoint(connection, name) == opened.head
    finally:
        await opened.pool.close()


async def test_applying_the_same_batch_twice_changes_nothing(session: Session) -> None:
    async with session.pool.acquire() as connection:
        batch = await source.read_after(connection, 0, limit=session.head)
        first = {}
        for projection in PROJECTIONS.values():
            first[projection.name] = await apply_batch(connection, projection, batch)
        before = await snapshot(connection)
        for projection in PROJECTIONS.values():
            again = await apply_batch(connection, projection, batch)
            assert again.applied == 0
            assert again.before == again.after == first[projection.name].after == session.head
            # Redelivered out of order and mixed with duplicates: still nothing.
            shuffled = list(reversed(batch[: len(batch) // 2])) + batch[:10]
            assert (await apply_batch(connection, projection, shuffled)).applied == 0
        assert await snapshot(connection) == before


async def test_a_batch_past_a_gap_is_refused_and_writes_nothing(session: Session) -> None:
    projection = PROJECTIONS["orders"]
    async with session.pool.acquire() as connection:
        batch = await source.read_after(connection, 0, limit=200)
        await apply_batch(connection, projection, batch[:50])
        before = await snapshot(connection)
        with pytest.raises(SequenceGapError) as raised:
            await apply_batch(connection, projection, batch[60:])
        assert (raised.value.expected, raised.value.found) == (51, 61)
        assert await read_checkpoint(connection, "orders") == 50
        assert await snapshot(connection) == before
        # The gap filled, the same events apply.
        assert (await apply_batch(connection, projection, batch[50:])).after == 200


async def test_a_batch_the_projection_does_not_handle_moves_only_its_checkpoint(
    session: Session,
) -> None:
    """Such a batch is one statement (apply_batch's skip): exact before and after, the
    same refusals past a gap, and with `announce` the new checkpoint sent to listeners."""
    projection = PROJECTIONS["users"]
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with session.pool.acquire() as connection, session.pool.acquire() as listener:

        def hear(*args: Any) -> None:
            heard.put_nowait(args[3])

        await listener.add_listener(CHANNEL, hear)
        batch = await source.read_after(connection, 0, limit=session.head)
        unhandled = [event for event in batch if event.topic not in projection.topics]
        runs = _contiguous_runs(unhandled)
        assert len(runs) >= 3
        assert len(runs[1]) >= 2
        first, second = runs[0], runs[1]
        # Up to the first run: the whole way.
        upto = [event for event in batch if event.sequence <= first[-1].sequence]
        await apply_batch(connection, projection, upto)
        before = await snapshot(connection)
        # The first run again: redelivered, nothing moves.
        again = await apply_batch(connection, projection, first, announce=True)
        assert (again.before, again.after, again.applied) == (first[-1].sequence,) * 2 + (0,)
        # Past a gap (what lies between the runs is missing): refused, nothing written.
        with pytest.raises(SequenceGapError):
            await apply_batch(connection, projection, second, announce=True)
        assert await read_checkpoint(connection, "users") == first[-1].sequence
        assert await snapshot(connection) == before
        # What lies between, then the second run: its half overlapping, half new.
        between = [e for e in batch if first[-1].sequence < e.sequence < second[0].sequence]
        await apply_batch(connection, projection, between)
        middle = second[0].sequence
        await apply_batch(connection, projection, second[:1])
        skipped = await apply_batch(connection, projection, second, announce=True)
        assert (skipped.before, skipped.after, skipped.applied) == (middle, second[-1].sequence, 0)
        assert await read_checkpoint(connection, "users") == second[-1].sequence
        async with asyncio.timeout(10):
            assert await heard.get() == f"users:{second[-1].sequence}"
        assert heard.empty()  # the redelivery and the refused batch announced nothing
        await listener.remove_listener(CHANNEL, hear)


async def test_projections_that_handle_none_of_a_batch_move_in_one_statement(
    session: Session,
) -> None:
    """skip_unhandled (the worker's shared batch) moves every projection it can, as
    apply_batch's skip would, in one statement, announced; it leaves alone one behind the
    batch (a gap), one that handles an event of it, and a redelivery."""
    users, instruments, orders = (PROJECTIONS[name] for name in ("users", "instruments", "orders"))
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with session.pool.acquire() as connection, session.pool.acquire() as listener:

        def hear(*args: Any) -> None:
            heard.put_nowait(args[3])

        await listener.add_listener(CHANNEL, hear)
        batch = await source.read_after(connection, 0, limit=session.head)
        runs = _contiguous_runs(
            [event for event in batch if event.topic not in users.topics | instruments.topics]
        )
        run = next(
            run
            for run in runs[1:]
            if len(run) >= 2 and any(event.topic in orders.topics for event in run)
        )
        first, last = run[0].sequence, run[-1].sequence
        for projection, upto in ((users, first - 1), (instruments, first - 2), (orders, first - 1)):
            await apply_batch(connection, projection, [e for e in batch if e.sequence <= upto])

        moved = await skip_unhandled(connection, [users, instruments, orders], run)

        assert moved == {"users": Applied(first - 1, last, 0)}
        checkpoints = [
            await read_checkpoint(connection, p.name) for p in (users, instruments, orders)
        ]
        assert checkpoints == [last, first - 2, first - 1]
        async with asyncio.timeout(10):
            assert await heard.get() == f"users:{last}"
        assert await skip_unhandled(connection, [users], run) == {}  # Redelivered.
        assert heard.empty()
        await listener.remove_listener(CHANNEL, hear)


def _contiguous_runs(events: list[LoggedEvent]) -> list[list[LoggedEvent]]:
    runs: list[list[LoggedEvent]] = []
    for event in events:
        if runs and runs[-1][-1].sequence + 1 == event.sequence:
            runs[-1].append(event)
        else:
            runs.append([event])
    return runs


async def read_indexes(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await connection.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'read' ORDER BY 1"
    )
    return [(row[0], row[1]) for row in rows]


async def read_grants(connection: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await connection.fetch(
        "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = 'read' AND grantee = 'ledger_app' ORDER BY 1, 3"
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def test_rebuilt_read_models_equal_the_incremental_ones_row_for_row(
    session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    async with session.pool.acquire() as connection:
        await project_all(connection, seed=11)
        incremental = await snapshot(connection)
        indexes, grants = await read_indexes(connection), await read_grants(connection)
        # Damage the live rows: a rebuild reads the log, never the tables it replaces.
        await connection.execute("UPDATE read.accounts SET available = 0")
        await connection.execute("DELETE FROM read.trades")

    results = await rebuild(session.url, ["all"], batch=97)

    assert {result.name for result in results} == set(PROJECTIONS)
    assert all(result.sequence == session.head for result in results)
    async with session.pool.acquire() as connection:
        assert await snapshot(connection) == incremental
        assert await read_indexes(connection) == indexes
        assert await read_grants(connection) == grants
        for name in PROJECTIONS:
            assert await read_checkpoint(connection, name) == session.head
        leftovers = await connection.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'read\\_%'"
        )
        assert leftovers == 0
    progress = capsys.readouterr().err
    assert "events/s" in progress
    assert f"{session.head:,}/{session.head:,} events" in progress


async def test_rebuild_of_one_projection_keeps_serving_the_old_table_until_the_swap(
    session: Session,
) -> None:
    async with session.pool.acquire() as connection:
        await project_all(connection, seed=5, up_to=session.head // 2)
        half = await connection.fetchval("SELECT count(*) FROM read.orders")
    reader = await session.pool.acquire()
    try:
        # An API query holds its snapshot of the old table while the rebuild runs.
        transaction = reader.transaction(isolation="repeatable_read")
        await transaction.start()
        assert await reader.fetchval("SELECT count(*) FROM read.orders") == half
        task = asyncio.create_task(rebuild(session.url, ["orders"], batch=50))
        await asyncio.sleep(0.5)
        assert not task.done()  # The swap waits for the reader's lock on the old table...
        assert await reader.fetchval("SELECT count(*) FROM read.orders") == half
        await transaction.commit()
        (result,) = await asyncio.wait_for(task, timeout=30)  # ...and then goes in.
    finally:
        await session.pool.release(reader)
    async with session.pool.acquire() as connection:
        total = await connection.fetchval("SELECT count(*) FROM read.orders")
        assert total > half
        assert result.sequence == session.head
        assert await read_checkpoint(connection, "orders") == session.head
        # The other projections were not touched.
        assert await read_checkpoint(connection, "users") == session.head // 2
