"""A worker process's batch applied to all its projections in one transaction
(projections/together.py), against real PostgreSQL: the same rows and checkpoints as
each projection applying it alone, events at or below each checkpoint skipped, and any
failure writing nothing at all, so the worker can apply the batch projection by
projection instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from projections import source
from projections.engine import Applied, SequenceGapError, apply_batch, read_checkpoint
from projections.notify import CHANNEL
from projections.registry import PROJECTIONS
from projections.together import CheckpointMissingError, apply_together
from tests.integration.test_projections import Session, open_session
from tests.integration.test_projections_fold import actual_rows, expected_rows, read_log, snapshot

EVERY = list(PROJECTIONS.values())


@pytest.fixture
async def session(databases: Any) -> AsyncIterator[Session]:
    opened = await open_session(databases, seed=11, steps=250)
    yield opened
    await opened.pool.close()


async def made_checkpoints(connection: asyncpg.Connection) -> None:
    """Every projection's checkpoint row, at 0 (apply_batch makes it on first use)."""
    for projection in EVERY:
        await apply_batch(connection, projection, [])


async def test_batches_applied_together_equal_the_fold_of_the_log(session: Session) -> None:
    heard: list[str] = []
    last_heard = asyncio.Event()

    def hear(*args: Any) -> None:
        heard.append(args[3])
        if args[3] == f"daily_pnl:{session.head}":
            last_heard.set()

    async with session.pool.acquire() as connection, session.pool.acquire() as listener:
        await listener.add_listener(CHANNEL, hear)
        log = await source.read_after(connection, 0, limit=session.head)
        await made_checkpoints(connection)
        # Two projections start ahead of the others: their share of the first batches
        # is a redelivery, skipped, while the others apply it.
        await apply_batch(connection, PROJECTIONS["orders"], log[:40])
        await apply_batch(connection, PROJECTIONS["users"], log[:3])
        start, sizes = 0, [1, 2, 5, 13, 40, 7, 120]
        for turn in range(len(log)):
            if start >= len(log):
                break
            size = sizes[turn % len(sizes)]
            # Redelivered events and reversed order are allowed, as for apply_batch.
            batch = list(reversed(log[start : start + size])) + log[max(0, start - 3) : start]
            before = {p.name: await read_checkpoint(connection, p.name) for p in EVERY}
            applied = await apply_together(connection, EVERY, batch)
            last = log[min(start + size, len(log)) - 1].sequence
            for name, item in applied.items():
                assert item.before == before[name]
                assert item.after == max(last, before[name])
                assert await read_checkpoint(connection, name) == item.after
            start += size
        async with asyncio.timeout(10):
            await last_heard.wait()
        expected = expected_rows(await read_log(connection))
        for table, rows in (await actual_rows(connection)).items():
            assert rows == expected.get(table, []), table
        for projection in EVERY:
            assert await read_checkpoint(connection, projection.name) == session.head
            assert f"{projection.name}:{session.head}" in heard
        # Everything again: nothing to apply, nothing moves, nothing announced.
        announced = len(heard)
        again = await apply_together(connection, EVERY, log[-50:])
        assert again == {p.name: Applied(session.head, session.head, 0) for p in EVERY}
        await asyncio.sleep(0.2)
        assert len(heard) == announced
        assert not connection.is_in_transaction()
        await listener.remove_listener(CHANNEL, hear)


async def test_a_failure_together_writes_nothing_for_any_projection(session: Session) -> None:
    async with session.pool.acquire() as connection:
        log = await source.read_after(connection, 0, limit=session.head)
        await made_checkpoints(connection)
        await apply_together(connection, EVERY, log[:30])
        await apply_batch(connection, PROJECTIONS["orders"], log[30:60])
        before = await snapshot(connection)
        checkpoints = {p.name: await read_checkpoint(connection, p.name) for p in EVERY}

        # A gap for most (orders is past it): refused before anything is written.
        with pytest.raises(SequenceGapError) as raised:
            await apply_together(connection, EVERY, log[60:90])
        assert (raised.value.expected, raised.value.found) == (31, 61)
        assert not connection.is_in_transaction()

        # A projection that fails on an event it handles: the others' rows, written
        # before and after it in the same transaction, are rolled back with it.
        handled = {event.topic for event in log[30:120]}
        poisoned = next(p for p in EVERY[1:-1] if not p.topics.isdisjoint(handled))
        table = poisoned.tables[0]
        await connection.execute(f"ALTER TABLE read.{table} RENAME TO {table}_away")
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await apply_together(connection, EVERY, log[30:120])
        finally:
            await connection.execute(f"ALTER TABLE read.{table}_away RENAME TO {table}")
        assert not connection.is_in_transaction()

        # A projection without a checkpoint row: refused as a whole, too.
        moved_away = "UPDATE read.checkpoints SET projection = $2 WHERE projection = $1"
        await connection.execute(moved_away, "signals", "signals_away")
        try:
            with pytest.raises(CheckpointMissingError):
                await apply_together(connection, EVERY, log[30:120])
        finally:
            await connection.execute(moved_away, "signals_away", "signals")

        assert await snapshot(connection) == before
        for projection in EVERY:
            assert (
                await read_checkpoint(connection, projection.name) == checkpoints[projection.name]
            )
        # The same connection goes on: the batch applies once nothing stands in its way.
        applied = await apply_together(connection, EVERY, log[30:120])
        assert {item.after for item in applied.values()} == {log[119].sequence}
        assert applied["orders"].before == 60
