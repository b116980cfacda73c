"""The read-your-writes wait (api/queries/waiting.py) against a real PostgreSQL.

The relay's numbering is done here with the sequencer's own functions, and a projection's
progress is a checkpoint row moved by hand, with or without its NOTIFY, so each path of
the watcher is taken on purpose: a notice alone (the poll set to an hour), the poll alone
(no notice), a listener connection killed under it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from api.queries.waiting import ProjectionWatcher, UnknownEventError, settle
from ledger import sequencer
from ledger.store import Checkpoint, EventStore
from projections.notify import notify_projected, parse
from tests.conftest import Databases
from tests.integration.events import new_stream, noted

HOUR_S = 3600.0
WAIT_S = 30.0  # generous: a test that passes never waits this long
SPIN_MAX = 2_000  # 5 ms apart: bounded loops waiting for the watcher's state


@pytest.fixture
async def database(databases: Databases) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    url = await databases.create("watcher")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    yield url, pool
    await pool.close()


@contextlib.asynccontextmanager
async def watching(
    url: str, pool: asyncpg.Pool, poll_interval_s: float
) -> AsyncIterator[ProjectionWatcher]:
    watcher = ProjectionWatcher(url, pool, poll_interval_s=poll_interval_s)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.close()


async def append(pool: asyncpg.Pool) -> Checkpoint:
    stream = new_stream()
    result = await EventStore(pool).append([noted(stream, 1)], {stream: 0})
    return result.token


async def sequence_all(pool: asyncpg.Pool) -> int:
    """Number every event committed so far as the relay's leader would; return the head.

    The sequencer takes only transactions below the snapshot's xmin, which any open
    transaction on the server holds back (other runs share it): try again until the
    log's last event has its number."""
    async with pool.acquire() as connection:
        last = await connection.fetchval("SELECT max(notification_id) FROM ledger.events")
        for _ in range(SPIN_MAX):
            cursor = await sequencer.load_cursor(connection)
            pending = await sequencer.read_unsequenced(connection, cursor, limit=1_000)
            if pending:
                batch = sequencer.assign(cursor, pending, digest_every=100)
                await sequencer.record(connection, batch)
                continue
            if await connection.fetchval(
                "SELECT count(*) FROM ledger.sequence WHERE position = $1", last
            ):
                return int(await connection.fetchval("SELECT max(sequence) FROM ledger.sequence"))
            await asyncio.sleep(0.005)
    raise AssertionError("the log's last event was never numbered")


async def move(pool: asyncpg.Pool, projection: str, sequence: int, *, notify: bool) -> None:
    async with pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO read.checkpoints (projection, sequence) VALUES ($1, $2) "
            "ON CONFLICT (projection) DO UPDATE SET sequence = EXCLUDED.sequence",
            projection,
            sequence,
        )
        if notify:
            await notify_projected(connection, projection, sequence)


async def until(condition: object) -> None:
    """Yield to the loop until `condition()` holds (bounded)."""
    assert callable(condition)
    for _ in range(SPIN_MAX):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the watcher never got there")


async def test_an_applied_event_passes_at_once(database: tuple[str, asyncpg.Pool]) -> None:
    url, pool = database
    token = await append(pool)
    head = await sequence_all(pool)
    await move(pool, "accounts", head, notify=False)
    async with watching(url, pool, HOUR_S) as watcher:
        assert await settle(watcher, token, ("accounts",), WAIT_S)
        assert watcher.waiters == set()


async def test_a_notice_wakes_a_waiter_whose_event_was_not_numbered(
    database: tuple[str, asyncpg.Pool],
) -> None:
    url, pool = database
    async with watching(url, pool, HOUR_S) as watcher:  # no poll: only notices wake it
        token = await append(pool)
        waiting = asyncio.create_task(settle(watcher, token, ("orders",), WAIT_S))
        await until(lambda: len(watcher.waiters) == 1)
        assert next(iter(watcher.waiters)).sequence is None
        head = await sequence_all(pool)
        await move(pool, "orders", head, notify=True)
        assert await waiting


async def test_a_notice_handled_while_the_sequence_was_read_is_not_lost(
    database: tuple[str, asyncpg.Pool],
) -> None:
    """The event was numbered, applied and announced between the request's read of its
    sequence (none yet) and its wait: no further notice will come, the poll is an hour."""
    url, pool = database
    async with watching(url, pool, HOUR_S) as watcher:
        token = await append(pool)
        seen = watcher.notices
        head = await sequence_all(pool)
        await move(pool, "orders", head, notify=True)
        await until(lambda: watcher.checkpoints.get("orders") == head)
        assert await watcher.wait(token.position, None, ("orders",), WAIT_S, notices_seen=seen)


async def test_every_projection_named_must_reach_the_event(
    database: tuple[str, asyncpg.Pool],
) -> None:
    url, pool = database
    async with watching(url, pool, HOUR_S) as watcher:
        await append(pool)
        token = await append(pool)
        head = await sequence_all(pool)
        assert head >= 2
        waiting = asyncio.create_task(settle(watcher, token, ("orders", "accounts"), WAIT_S))
        await until(lambda: len(watcher.waiters) == 1)
        await move(pool, "accounts", head, notify=True)
        # Notices arrive in order: once a later one is known, the first was handled.
        await move(pool, "signals", head, notify=True)
        await until(lambda: watcher.checkpoints.get("signals") == head)
        assert watcher.checkpoints["accounts"] == head
        assert not waiting.done()
        await move(pool, "orders", head - 1, notify=True)  # not far enough
        await move(pool, "signals", head + 1, notify=True)
        await until(lambda: watcher.checkpoints.get("signals") == head + 1)
        assert not waiting.done()
        await move(pool, "orders", head, notify=True)
        assert await waiting


async def test_the_poll_finds_a_checkpoint_moved_without_a_notice(
    database: tuple[str, asyncpg.Pool],
) -> None:
    url, pool = database
    async with watching(url, pool, 0.05) as watcher:
        token = await append(pool)
        waiting = asyncio.create_task(settle(watcher, token, ("trades",), WAIT_S))
        await until(lambda: len(watcher.waiters) == 1)
        head = await sequence_all(pool)
        await move(pool, "trades", head, notify=False)
        assert await waiting


async def test_a_wait_that_runs_out_is_false(database: tuple[str, asyncpg.Pool]) -> None:
    url, pool = database
    async with watching(url, pool, 0.05) as watcher:
        token = await append(pool)
        await sequence_all(pool)
        assert not await settle(watcher, token, ("positions",), 0.2)
        assert watcher.waiters == set()


async def test_a_token_of_no_event_is_refused(database: tuple[str, asyncpg.Pool]) -> None:
    url, pool = database
    token = await append(pool)
    async with watching(url, pool, HOUR_S) as watcher:
        with pytest.raises(UnknownEventError):
            await settle(watcher, Checkpoint(token.tx, token.position + 1_000), ("users",), 1.0)
        with pytest.raises(UnknownEventError):  # the right position in another transaction
            await settle(watcher, Checkpoint(token.tx + 1, token.position), ("users",), 1.0)


async def test_the_listener_comes_back_after_its_connection_is_killed(
    database: tuple[str, asyncpg.Pool],
) -> None:
    url, pool = database
    async with watching(url, pool, 0.05) as watcher:
        first = watcher._listener
        assert first is not None
        await pool.execute("SELECT pg_terminate_backend($1)", first.get_server_pid())
        await until(lambda: watcher._listener is not None and watcher._listener is not first)
        token = await append(pool)
        waiting = asyncio.create_task(settle(watcher, token, ("daily_pnl",), WAIT_S))
        await until(lambda: len(watcher.waiters) == 1)
        head = await sequence_all(pool)
        await move(pool, "daily_pnl", head, notify=True)
        assert await waiting
        await until(lambda: watcher.checkpoints.get("daily_pnl") == head)  # by notice or poll


async def test_closing_the_watcher_answers_its_waiters(database: tuple[str, asyncpg.Pool]) -> None:
    url, pool = database
    watcher = ProjectionWatcher(url, pool, poll_interval_s=HOUR_S)
    await watcher.start()
    token = await append(pool)
    waiting = asyncio.create_task(settle(watcher, token, ("strategies",), WAIT_S))
    await until(lambda: len(watcher.waiters) == 1)
    await watcher.close()
    assert not await waiting
    assert not await settle(watcher, token, ("strategies",), WAIT_S)  # closed: no new waits


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        ("orders:12", ("orders", 12)),
        ("daily_pnl:1", ("daily_pnl", 1)),
        ("a:b:3", ("a:b", 3)),
        ("orders", None),
        ("orders:", None),
        (":5", None),
        ("orders:-1", None),
        ("orders:1.5", None),
        ("orders:²", None),
        ("x" * 200 + ":1", None),
    ],
)
def test_notices_are_parsed_strictly(payload: str, parsed: tuple[str, int] | None) -> None:
    assert parse(payload) == parsed
