"""Projection workers against real PostgreSQL and NATS JetStream, fed by the relay.

The relay (ledger/relay.py) publishes the log to a stream of the test's own; when it is
not importable, a stand-in publishes the same body and headers from ledger.sequence.
Every stream is named from `stream_prefix` and deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ledger.store import EventStore
from projections import source
from projections.lag import ProjectionLag, lag, metrics_text, ready
from projections.registry import PROJECTIONS
from projections.scenario import Scenario
from projections.worker import WorkerOptions, run_projections
from tests.integration.test_projections_fold import (
    actual_rows,
    expected_rows,
    read_log,
    sequence_all,
)

CATCH_UP_TIMEOUT_S = 60.0
_numbers = itertools.count(1)


async def stand_in_relay(url: str, nats_url: str, stream: str, stop: asyncio.Event) -> None:
    """Number the log and publish it as the relay does: subject, Nats-Msg-Id, sequence."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    connection = await asyncpg.connect(url)
    published = 0
    try:
        while not stop.is_set():
            await sequence_all(connection)
            for event in await source.read_after(connection, published, limit=1_000):
                body = msgspec.json.encode(event)
                headers = {"Nats-Msg-Id": f"{event.stream_id}-{event.version}"}
                headers["Ledger-Sequence"] = str(event.sequence)
                subject = f"{stream}.{event.stream_type}.{event.stream_id}"
                await js.publish(subject, body, stream=stream, headers=headers)
                published = event.sequence
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
    finally:
        await connection.close()
        await client.close()


def relay_runner(
    url: str, nats_url: str, stream: str
) -> Callable[[asyncio.Event], Awaitable[None]]:
    try:
        from ledger.relay import Relay, RelayOptions
    except ImportError:
        return lambda stop: stand_in_relay(url, nats_url, stream, stop)
    options = RelayOptions(stream_name=stream, subject_prefix=stream, digest_every=100)
    return Relay(url, nats_url, options).run


class Running:
    """A database with a session in it, the relay and some workers, stopped together."""

    def __init__(self, url: str, pool: asyncpg.Pool, stream: str) -> None:
        self.url, self.pool, self.stream = url, pool, stream
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    def options(self) -> WorkerOptions:
        return WorkerOptions(
            stream_name=self.stream,
            subject_prefix=self.stream,
            fetch_batch=100,
            fetch_timeout_s=0.2,
            retries=3,
            backoff_base_s=0.01,
            standby_retry_s=0.1,
        )

    def start_workers(self, nats_url: str, count: int) -> list[asyncio.Task[Any]]:
        started = [
            asyncio.create_task(
                run_projections(
                    self.url,
                    nats_url,
                    ["all"],
                    stream_name=self.stream,
                    stop=self.stop,
                    options=self.options(),
                )
            )
            for _ in range(count)
        ]
        self.tasks += started
        return started

    async def caught_up(self, *, failing: frozenset[str] = frozenset()) -> list[ProjectionLag]:
        """Wait until every projection not in `failing` is at the head, those in it failing."""
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            while True:
                async with self.pool.acquire() as connection:
                    head = await connection.fetchval(
                        "SELECT count(*) FROM ledger.events WHERE tx < "
                        "pg_snapshot_xmin(pg_current_snapshot())"
                    )
                lags = await lag(self.pool)
                if all(
                    item.failing if item.name in failing else item.checkpoint == head
                    for item in lags
                ):
                    return lags
                await asyncio.sleep(0.05)


@pytest.fixture
async def running(databases: Any, nats_url: str, stream_prefix: str) -> AsyncIterator[Running]:
    url = await databases.create(f"workers_{next(_numbers)}")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
    stream = f"{stream_prefix}_PROJ{next(_numbers)}"
    opened = Running(url, pool, stream)
    opened.tasks.append(asyncio.create_task(relay_runner(url, nats_url, stream)(opened.stop)))
    yield opened
    opened.stop.set()
    await asyncio.wait_for(asyncio.gather(*opened.tasks, return_exceptions=True), timeout=30)
    await pool.close()
    client = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await client.jetstream().delete_stream(stream)
    await client.close()


async def assert_equal_to_the_fold(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        expected = expected_rows(await read_log(connection))
        actual = await actual_rows(connection)
    for table, rows in actual.items():
        assert rows == expected.get(table, []), table


async def test_two_workers_follow_the_relay_and_equal_the_fold_of_the_log(
    running: Running, nats_url: str
) -> None:
    await Scenario(EventStore(running.pool), seed=21, tag="a").run(250)
    running.start_workers(nats_url, count=2)
    lags = await running.caught_up()
    assert all(item.events_behind == 0 and item.seconds_behind == 0 for item in lags)
    await assert_equal_to_the_fold(running.pool)

    # More commands while the workers run: followed live.
    await Scenario(EventStore(running.pool), seed=22, tag="b").run(150)
    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)
    assert ready(await lag(running.pool))


async def test_a_poison_event_parks_its_projection_and_shows_in_lag(
    running: Running, nats_url: str
) -> None:
    await Scenario(EventStore(running.pool), seed=31).run(60)
    (worker,) = running.start_workers(nats_url, count=1)
    await running.caught_up()
    # Another session registers the same emails: the users read model refuses the row.
    await Scenario(EventStore(running.pool), seed=32).run(60)
    lags = {item.name: item for item in await running.caught_up(failing=frozenset({"users"}))}

    users = lags["users"]
    assert users.failing
    assert "UniqueViolation" in (users.last_error or "")
    assert users.parked_sequence == users.checkpoint + 1  # Stopped at it, nothing skipped.
    async with running.pool.acquire() as connection:
        topic = await connection.fetchval(
            "SELECT e.topic FROM ledger.sequence s JOIN ledger.events e "
            "ON e.notification_id = s.position WHERE s.sequence = $1",
            users.parked_sequence,
        )
    assert topic.endswith(":UserRegistered")
    assert users.events_behind > 0
    assert users.seconds_behind > 0
    assert all(not item.failing for name, item in lags.items() if name != "users")
    assert not ready(lags.values())
    assert 'ledger_projection_failing{projection="users"} 1' in metrics_text(lags.values())

    # Once what blocked it is gone, a restarted worker applies the parked event and clears
    # the flag; the first worker still runs the other projections, so this one stands by
    # for those and takes over users alone.
    assert not worker.done()
    async with running.pool.acquire() as connection:
        await connection.execute("ALTER TABLE read.users DROP CONSTRAINT users_email_key")
    running.start_workers(nats_url, count=1)
    await running.caught_up()
    assert ready(await lag(running.pool, PROJECTIONS))


async def test_workers_started_before_the_relay_wait_for_its_stream(
    databases: Any, nats_url: str, stream_prefix: str
) -> None:
    url = await databases.create(f"workers_{next(_numbers)}")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
    stream = f"{stream_prefix}_PROJ{next(_numbers)}"
    early = Running(url, pool, stream)
    try:
        (worker,) = early.start_workers(nats_url, count=1)
        await Scenario(EventStore(pool), seed=41).run(40)
        # The workers have looked for the stream before it exists, and are still running.
        await asyncio.sleep(3 * early.options().standby_retry_s)
        assert not worker.done()
        early.tasks.append(asyncio.create_task(relay_runner(url, nats_url, stream)(early.stop)))
        await early.caught_up()
        await assert_equal_to_the_fold(pool)
    finally:
        early.stop.set()
        await asyncio.wait_for(asyncio.gather(*early.tasks, return_exceptions=True), timeout=30)
        await pool.close()
        client = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)
        await client.close()


async def test_batches_are_acked_with_one_ack_and_old_durables_are_made_again(
    running: Running, nats_url: str
) -> None:
    """Durables ack with AckPolicy.ALL, one ack per batch; one left by an earlier release,
    acked message by message, is deleted and made again where the checkpoint says."""
    client = await nats.connect(nats_url)
    try:
        jetstream = client.jetstream()
        await Scenario(EventStore(running.pool), seed=61, tag="a").run(60)
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            while True:  # The relay has made the stream and published into it.
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    if (await jetstream.stream_info(running.stream)).state.messages > 0:
                        break
                await asyncio.sleep(0.05)
        old = ConsumerConfig(
            durable_name="projection-orders",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
        )
        await jetstream.add_consumer(running.stream, old)
        running.start_workers(nats_url, count=1)
        await running.caught_up()
        await Scenario(EventStore(running.pool), seed=62, tag="b").run(60)
        await running.caught_up()
        await assert_equal_to_the_fold(running.pool)
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            for name in PROJECTIONS:
                while True:
                    info = await jetstream.consumer_info(running.stream, f"projection-{name}")
                    assert info.config.ack_policy == AckPolicy.ALL
                    if info.num_ack_pending == 0 and info.num_pending == 0:
                        break
                    await asyncio.sleep(0.05)
    finally:
        await client.close()
