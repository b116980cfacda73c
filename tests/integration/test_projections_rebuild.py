"""Rebuild against the live path, digit for digit, and the live worker after a rebuild.

The rebuild folds pages of the log in memory (projections/batch.py), and so does the live
path with a batch of FOLD_FROM events or more; a smaller live batch runs one statement per
event (projections/engine.py). All must leave the same rows, compared here as PostgreSQL
prints them (`row::text`), so a NUMERIC of another scale ("3.0" for "3.00") or a JSON value
written otherwise fails. Then the worker: events appended while a
rebuild runs reach the rebuilt tables exactly once, whether the worker ran meanwhile or
starts after, and a new durable consumer starts near its checkpoint, not at the start of
the stream.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.store import EventStore
from projections import batch, scratch, source
from projections.base import Projection
from projections.engine import FOLD_FROM, apply_batch
from projections.folding import WRITES_IN_FLIGHT, Folder, PageGapError, replay
from projections.lag import lag
from projections.rebuild import rebuild
from projections.registry import NAMES, PROJECTIONS
from projections.scenario import Scenario
from tests.integration.test_projections_fold import sequence_all
from tests.integration.test_projections_worker import Running, assert_equal_to_the_fold

# The relay-and-workers fixture, re-exported so that pytest finds it here too.
from tests.integration.test_projections_worker import running as running

Text = dict[str, list[str]]
# What asyncpg raises on a connection the server has terminated, by where it was caught.
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


class Busy(Scenario):
    """A session with more fills, cancels and cash per step: long accounts and positions."""

    WEIGHTS = (
        (1, "register_user"), (1, "open_account"), (6, "deposit"), (1, "withdraw"),
        (1, "charge_fee"), (1, "list_instrument"), (1, "halt_or_resume"), (1, "user_change"),
        (2, "strategy_change"), (2, "emit_signal"), (14, "place_order"), (20, "fill_order"),
        (4, "end_order"),
    )  # fmt: skip


async def text_rows(
    connection: asyncpg.Connection, names: list[str] | None = None, schema: str = "read"
) -> Text:
    """Every row of the projections' tables as PostgreSQL prints it, sorted."""
    found: Text = {}
    for name in names or list(NAMES):
        for table in PROJECTIONS[name].tables:
            rows = await connection.fetch(f"SELECT t::text FROM {schema}.{table} t")
            found[table] = sorted(row[0] for row in rows)
    return found


async def project(
    connection: asyncpg.Connection, projection: Projection, sizes: range, seed: int, schema: str
) -> None:
    """The live path, apply_batch, over the whole log in batches of random sizes."""
    rng, after = random.Random(seed), 0
    while batch := await source.read_after(connection, after, limit=rng.choice(sizes)):
        after = (await apply_batch(connection, projection, batch, schema=schema)).after


async def append_sessions(pool: asyncpg.Pool, seed: int, steps: int) -> None:
    """Two sessions at once, so their commits interleave in the log."""
    store = EventStore(pool)
    await asyncio.gather(
        Scenario(store, seed, tag=f"a{seed}").run(steps),
        Busy(store, seed + 1000, tag=f"b{seed}").run(steps),
    )


@pytest.mark.parametrize(("seed", "page"), [(41, 13), (42, 101), (43, 1_000)])
async def test_rebuild_and_folded_batches_equal_statements_per_event_digit_for_digit(
    databases: Any, seed: int, page: int
) -> None:
    """Three ways to the same rows: one statement per event (live batches smaller than
    FOLD_FROM), live batches folded in memory, and a rebuild."""
    url = await databases.create(f"rebuild_{seed}")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=12)
    try:
        await append_sessions(pool, seed, 300)
        async with pool.acquire() as connection:
            head = await sequence_all(connection)
            for projection in PROJECTIONS.values():
                await project(connection, projection, range(1, FOLD_FROM), seed, "read")
            per_event = await text_rows(connection)
            for projection in PROJECTIONS.values():
                schema = f"folded_{projection.name}"
                await scratch.prepare(connection, projection, schema)
                await project(connection, projection, range(FOLD_FROM, 400), seed, schema)
                folded = await text_rows(connection, [projection.name], schema)
                assert folded == {table: per_event[table] for table in folded}
        assert all(per_event[table] for table in ("orders", "trades", "positions", "daily_pnl"))
        results = await rebuild(url, ["all"], batch=page, out=io.StringIO())
        assert {result.sequence for result in results} == {head}
        async with pool.acquire() as connection:
            assert await text_rows(connection) == per_event
    finally:
        await pool.close()


class Prepared:
    def __init__(self, url: str, pool: asyncpg.Pool, live: Text) -> None:
        self.url, self.pool, self.live = url, pool, live


@pytest.fixture(scope="module")
async def prepared(databases: Any) -> AsyncIterator[Prepared]:
    url = await databases.create("rebuild_property")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=12)
    await append_sessions(pool, 51, 250)
    async with pool.acquire() as connection:
        await sequence_all(connection)
        for projection in PROJECTIONS.values():
            await project(connection, projection, range(1, FOLD_FROM), 51, "read")
        live = await text_rows(connection)
    yield Prepared(url, pool, live)
    await pool.close()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page=st.integers(1, 700),
    names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True),
)
async def test_any_page_and_any_projections_rebuild_to_the_live_rows(
    prepared: Prepared, page: int, names: list[str]
) -> None:
    await rebuild(prepared.url, names, batch=page, out=io.StringIO())
    async with prepared.pool.acquire() as connection:
        rebuilt = await text_rows(connection, names)
    assert rebuilt == {table: prepared.live[table] for table in rebuilt}


@pytest.mark.parametrize("pages_read", [0, 2])
async def test_a_page_that_cannot_be_read_fails_the_replay(
    prepared: Prepared, pages_read: int
) -> None:
    """The reader reads ahead in a task of its own; when it fails (here its connection is
    terminated by the server, after `pages_read` pages), the replay raises that error
    instead of waiting for the page for ever."""
    projection, schema = PROJECTIONS["orders"], "replay_unreadable"
    reader = await asyncpg.connect(prepared.url)
    writer = await asyncpg.connect(prepared.url)
    try:
        await scratch.prepare(writer, projection, schema)
        folder = Folder([projection], [writer], lambda name: schema, after=0)
        head = await source.head(writer)
        pid = reader.get_server_pid()
        pages: list[int] = []
        killing: list[asyncio.Future[Any]] = []

        def advance(count: int) -> None:
            pages.append(count)
            if len(pages) == pages_read:
                kill = prepared.pool.execute("SELECT pg_terminate_backend($1)", pid)
                killing.append(asyncio.ensure_future(kill))

        if pages_read == 0:
            await prepared.pool.execute("SELECT pg_terminate_backend($1)", pid)
        async with asyncio.timeout(30):  # a TimeoutError here is the bug: a replay that hangs
            with pytest.raises(CONNECTION_LOST):
                await replay(reader, folder, head, page=5, advance=advance)
        await asyncio.gather(*killing)
        assert len(pages) >= pages_read
        assert folder.folded < head
    finally:
        writer.terminate()
        reader.terminate()
        await prepared.pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_a_page_that_cannot_be_written_fails_the_replay_and_stops_its_projection(
    prepared: Prepared,
) -> None:
    """Pages are written while later ones are folded (WRITES_IN_FLIGHT of them at once);
    when one fails (here its scratch checkpoint was moved far ahead behind its back), the replay
    raises that error once every write begun has ended, and no later page of that
    projection is written over it."""
    assert WRITES_IN_FLIGHT >= 2
    projection, schema = PROJECTIONS["orders"], "replay_unwritable"
    reader = await asyncpg.connect(prepared.url)
    writer = await asyncpg.connect(prepared.url)
    try:
        await scratch.prepare(writer, projection, schema)
        folder = Folder([projection], [writer], lambda name: schema, after=0)
        head = await source.head(reader)
        pages: list[int] = []
        moving: list[asyncio.Future[Any]] = []

        def advance(count: int) -> None:
            pages.append(count)
            if len(pages) == 3:
                moved = prepared.pool.execute(f"UPDATE {schema}.checkpoints SET sequence = 1e9")
                moving.append(asyncio.ensure_future(moved))

        async with asyncio.timeout(30):  # a TimeoutError here is the bug: a replay that hangs
            with pytest.raises(PageGapError):
                await replay(reader, folder, head, page=5, advance=advance)
        await asyncio.gather(*moving)
        assert not writer.is_in_transaction()
        assert await writer.fetchval(f"SELECT sequence FROM {schema}.checkpoints") == 10**9
        assert len(pages) < head // 5
    finally:
        writer.terminate()
        reader.terminate()
        await prepared.pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def keep_appending(pool: asyncpg.Pool, stop: asyncio.Event, seed: int) -> int:
    """Sessions of a few steps each until told to stop; return how many there were."""
    sessions = 0
    while not stop.is_set():
        await Scenario(EventStore(pool), seed + sessions, tag=f"during{seed}x{sessions}").run(8)
        sessions += 1
    return sessions


async def appended_during_a_rebuild(running: Running, seed: int) -> tuple[int, int]:
    """Rebuild every projection while sessions append; return the heads when the rebuild
    started and ended (the relay numbers the log meanwhile)."""
    async with running.pool.acquire() as connection:
        before = await source.head(connection)
    stop = asyncio.Event()
    appending = asyncio.create_task(keep_appending(running.pool, stop, seed))
    await asyncio.sleep(0.2)
    try:
        await rebuild(running.url, ["all"], batch=50, out=io.StringIO())
    finally:
        stop.set()
        await appending
    async with running.pool.acquire() as connection:
        after = await source.head(connection)
    return before, after


async def published_everything(pool: asyncpg.Pool) -> None:
    """Until the relay has numbered and published every committed event."""
    async with asyncio.timeout(60):
        while True:
            committed = await pool.fetchval(
                "SELECT count(*) FROM ledger.events "
                "WHERE tx < pg_snapshot_xmin(pg_current_snapshot())"
            )
            if committed == await pool.fetchval("SELECT published FROM ledger.relay_state"):
                return
            await asyncio.sleep(0.05)


async def test_events_appended_during_a_rebuild_reach_the_rebuilt_tables_once(
    running: Running, nats_url: str
) -> None:
    await Scenario(EventStore(running.pool), seed=61, tag="a").run(200)
    running.start_workers(nats_url, count=1)
    await running.caught_up()

    before, after = await appended_during_a_rebuild(running, seed=62)

    assert after > before  # The rebuild did have company.
    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)
    for item in await lag(running.pool):
        assert item.checkpoint == item.head >= after
        assert not item.failing


async def test_a_worker_started_after_a_rebuild_starts_near_its_checkpoint(
    running: Running, nats_url: str
) -> None:
    await Scenario(EventStore(running.pool), seed=71, tag="a").run(200)
    await published_everything(running.pool)
    before, after = await appended_during_a_rebuild(running, seed=72)
    assert after > before
    async with running.pool.acquire() as connection:
        # The process's durable starts at the smallest checkpoint of its projections.
        rebuilt = await connection.fetchval("SELECT min(sequence) FROM read.checkpoints")
    await Scenario(EventStore(running.pool), seed=73, tag="c").run(40)

    running.start_workers(nats_url, count=1)
    await running.caught_up()

    await assert_equal_to_the_fold(running.pool)
    client = await nats.connect(nats_url)
    try:
        info = await client.jetstream().consumer_info(running.stream, "projection-all")
    finally:
        await client.close()
    async with running.pool.acquire() as connection:
        head = await source.head(connection)
    # Started at its checkpoint's message: it was handed what came after, not the stream.
    assert info.delivered.consumer_seq <= head - rebuilt
    assert rebuilt > head - rebuilt


async def test_the_rebuilt_tables_are_logged(prepared: Prepared) -> None:
    """What is swapped in is as durable as what it replaces: crash recovery empties an
    unlogged table (scratch tables loaded unlogged, then set logged, measured slower)."""
    persistence = (
        "SELECT c.relname, c.relpersistence::text FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'read' AND c.relname = ANY($1::text[])"
    )
    await rebuild(prepared.url, ["all"], batch=97, out=io.StringIO())
    tables = [table for name in NAMES for table in PROJECTIONS[name].tables]
    async with prepared.pool.acquire() as connection:
        rows = await connection.fetch(persistence, tables)
        assert dict(list(rows)) == dict.fromkeys(tables, "p")
        assert await text_rows(connection) == prepared.live


async def test_upserts_copy_new_keys_and_upsert_a_key_an_older_page_wrote(
    prepared: Prepared,
) -> None:
    """A page whose keys the previous page did not have is COPYed; when one of them was
    written pages before, the COPY fails in its savepoint and the page is upserted: the
    rows are those of one INSERT ... ON CONFLICT per upsert either way."""
    schema = "upserts_pages"
    table = batch.Upserts("kept", ("k", "a", "b"), ("k",))
    staging = batch.Staging()
    pages: list[list[tuple[str, list[Any], tuple[int, ...]]]] = [
        [("x", ["x", 1, None], (1,)), ("y", ["y", 2, None], (1,))],  # first page: staged
        [("y", ["y", None, 3], (2,)), ("z", ["z", 4, None], (1,))],  # y staged, z copied
        [("w", ["w", 5, None], (1,)), ("t", ["t", 6, 6], ())],  # copied
        [("x", ["x", None, 7], (2,)), ("v", ["v", 8, None], (1,))],  # x is older: upserted
    ]
    async with prepared.pool.acquire() as connection:
        try:
            await connection.execute(f"CREATE SCHEMA {schema}")
            await connection.execute(
                f"CREATE TABLE {schema}.kept (k text PRIMARY KEY, a integer, b integer)"
            )
            for page in pages:
                for key, row, on_conflict in page:
                    table.upsert(key, row, on_conflict)
                async with connection.transaction():
                    await table.write(connection, schema, staging, table.take())
            rows = await connection.fetch(f"SELECT k, a, b FROM {schema}.kept ORDER BY k")
        finally:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert [tuple(row) for row in rows] == [
        ("t", 6, 6), ("v", 8, None), ("w", 5, None), ("x", 1, 7), ("y", 2, 3), ("z", 4, None),
    ]  # fmt: skip
    assert (table.copied, table.staged) == (3, 5)
