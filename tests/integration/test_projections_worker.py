"""Projection workers against real PostgreSQL and NATS JetStream, fed by the relay.

The relay (ledger/relay.py) publishes the log to a stream of the test's own; when it is
not importable, a stand-in publishes the same body and headers from ledger.sequence.
Every stream is named from `stream_prefix` and deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ledger.store import EventStore
from projections import source
from projections.lag import ProjectionLag, lag, metrics_text, ready
from projections.registry import PROJECTIONS
from projections.runner import WORKER_LOCK_CLASS, Parked
from projections.scenario import Scenario
from projections.worker import CONSUMER_LOCK_CLASS, WorkerOptions, run_projections
from tests.integration.test_projections_fold import (
    actual_rows,
    expected_rows,
    read_log,
    sequence_all,
)
from tests.integration.test_relay import TcpProxy
from tests.waiting import eventually

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


class Worker(NamedTuple):
    stop: asyncio.Event
    task: asyncio.Task[list[Parked]]

    async def stopped(self) -> list[Parked]:
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout=30)


class Running:
    """A database with a session in it, the relay and some workers, stopped together."""

    def __init__(self, url: str, pool: asyncpg.Pool, stream: str) -> None:
        self.url, self.pool, self.stream = url, pool, stream
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.stops = [self.stop]

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

    def start_worker(self, nats_url: str, names: Sequence[str] = ("all",)) -> Worker:
        """A worker process (as `ledger project NAMES`) that can be stopped on its own."""
        stop = asyncio.Event()
        self.stops.append(stop)
        task = asyncio.create_task(
            run_projections(
                self.url,
                nats_url,
                names,
                stream_name=self.stream,
                stop=stop,
                options=self.options(),
            )
        )
        self.tasks.append(task)
        return Worker(stop, task)

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
    for stop in opened.stops:
        stop.set()
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
    worker = running.start_worker(nats_url)
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

    # The others go on past it, and the process's one durable is acked past it too: the
    # parked projection does not hold the stream's messages back (the log has them).
    await Scenario(EventStore(running.pool), seed=33, tag="c").run(60)
    lags = {item.name: item for item in await running.caught_up(failing=frozenset({"users"}))}
    assert lags["users"].checkpoint == users.checkpoint
    assert lags["users"].parked_sequence == users.parked_sequence
    await all_acked(running, nats_url, "projection-all")

    # Once what blocked it is gone, the restarted worker takes users' lead again and
    # catches it up from the log, from the parked event on, clearing the flag.
    assert not worker.task.done()
    async with running.pool.acquire() as connection:
        await connection.execute("ALTER TABLE read.users DROP CONSTRAINT users_email_key")
    parked = await worker.stopped()
    assert [(item.name, item.sequence) for item in parked] == [("users", users.parked_sequence)]
    running.start_worker(nats_url)
    await running.caught_up()
    assert ready(await lag(running.pool, PROJECTIONS))
    await assert_equal_to_the_fold(running.pool)


async def all_acked(running: Running, nats_url: str, durable: str) -> None:
    """Wait until `durable` has every message of the stream delivered and acked."""
    client = await nats.connect(nats_url)
    try:
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            while True:
                info = await client.jetstream().consumer_info(running.stream, durable)
                assert info.config.ack_policy == AckPolicy.ALL
                if info.num_ack_pending == 0 and info.num_pending == 0:
                    return
                await asyncio.sleep(0.05)
    finally:
        await client.close()


async def durables(running: Running, nats_url: str) -> list[str]:
    client = await nats.connect(nats_url)
    try:
        names = await client.jetstream().consumers_info(running.stream)
    finally:
        await client.close()
    return sorted(info.name for info in names)


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


async def test_a_worker_process_has_one_durable_and_the_earlier_ones_are_deleted(
    running: Running, nats_url: str
) -> None:
    """Each worker process consumes one durable, named from its selection and acked with
    AckPolicy.ALL (one ack per batch); the per-projection durables of the earlier release
    are deleted, so they keep no messages."""
    await Scenario(EventStore(running.pool), seed=61, tag="a").run(60)
    client = await nats.connect(nats_url)
    try:
        jetstream = client.jetstream()
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            while True:  # The relay has made the stream and published into it.
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    if (await jetstream.stream_info(running.stream)).state.messages > 0:
                        break
                await asyncio.sleep(0.05)
        for name, policy in (("orders", AckPolicy.EXPLICIT), ("users", AckPolicy.ALL)):
            earlier = ConsumerConfig(
                durable_name=f"projection-{name}",
                ack_policy=policy,
                deliver_policy=DeliverPolicy.ALL,
            )
            await jetstream.add_consumer(running.stream, earlier)
    finally:
        await client.close()

    running.start_worker(nats_url)
    running.start_worker(nats_url, ["trades", "orders"])
    await running.caught_up()
    await Scenario(EventStore(running.pool), seed=62, tag="b").run(60)
    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)
    for durable in ("projection-all", "projection-set-orders-trades"):
        await all_acked(running, nats_url, durable)
    assert await durables(running, nats_url) == ["projection-all", "projection-set-orders-trades"]


async def test_a_second_worker_of_the_same_selection_stands_by_and_takes_over(
    running: Running, nats_url: str
) -> None:
    await Scenario(EventStore(running.pool), seed=81, tag="a").run(80)
    first = running.start_worker(nats_url)
    await running.caught_up()
    second = running.start_worker(nats_url)
    await asyncio.sleep(5 * running.options().standby_retry_s)
    assert not second.task.done()  # Standing by: the durable is the first's.
    async with running.pool.acquire() as connection:
        leads = await connection.fetch(
            "SELECT l.classid, count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
            "AND l.classid = ANY($1::oid[]) GROUP BY l.classid ORDER BY l.classid",
            [WORKER_LOCK_CLASS, CONSUMER_LOCK_CLASS],
        )
    assert [(row[0], row[1]) for row in leads] == [
        (WORKER_LOCK_CLASS, len(PROJECTIONS)),
        (CONSUMER_LOCK_CLASS, 1),
    ]

    # The first stops while commands come in: the second takes the durable and every lead
    # over, and nothing is lost or applied twice.
    commands = asyncio.create_task(Scenario(EventStore(running.pool), seed=82, tag="b").run(80))
    await asyncio.sleep(0.5)
    assert await first.stopped() == []
    await commands
    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)
    await all_acked(running, nats_url, "projection-all")
    assert await durables(running, nats_url) == ["projection-all"]
    assert not second.task.done()


async def test_a_worker_cut_off_from_nats_catches_up_when_it_comes_back(
    running: Running, nats_url: str
) -> None:
    proxy = TcpProxy(nats_url)
    await proxy.start()
    await Scenario(EventStore(running.pool), seed=91, tag="a").run(60)
    worker = running.start_worker(proxy.url)
    await running.caught_up()

    await proxy.stop()  # The worker's NATS is gone; the relay's is not.
    await Scenario(EventStore(running.pool), seed=92, tag="b").run(60)
    await asyncio.sleep(5 * running.options().fetch_timeout_s)
    await proxy.start()

    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)
    await all_acked(running, nats_url, "projection-all")
    assert not worker.task.done()


async def test_a_worker_killed_between_its_commit_and_its_ack_applies_nothing_twice(
    running: Running, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies after a batch's transaction commits and before its ack leaves: the
    next worker gets those messages again (unacked) and must skip them, not apply them
    twice; the read models then still equal the fold of the log (balances would not)."""
    await Scenario(EventStore(running.pool), seed=31, tag="k").run(150)
    dead = asyncio.Event()
    first: Worker | None = None

    async def die_instead(message: Msg) -> None:
        assert first is not None
        dead.set()
        first.task.cancel()  # As a kill: nothing after this line runs in the worker.
        await asyncio.sleep(3600)

    real_ack = Msg.ack
    monkeypatch.setattr(Msg, "ack", die_instead)  # At the first batch's ack.
    first = running.start_worker(nats_url)
    await asyncio.wait_for(dead.wait(), timeout=CATCH_UP_TIMEOUT_S)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(first.task, timeout=30)
    monkeypatch.setattr(Msg, "ack", real_ack)
    committed = await running.pool.fetchval("SELECT max(sequence) FROM read.checkpoints")
    assert committed > 0  # The batch before the missing ack was committed.

    await Scenario(EventStore(running.pool), seed=32, tag="l").run(100)
    running.start_worker(nats_url)
    await running.caught_up()
    await assert_equal_to_the_fold(running.pool)


async def lead_holders(connection: asyncpg.Connection) -> dict[int, int]:
    """The backend holding each projection's lead: objid (hashtext of the name) -> pid."""
    rows = await connection.fetch(
        "SELECT l.objid::int, l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
        "AND l.classid = $1",
        WORKER_LOCK_CLASS,
    )
    return {row[0]: row[1] for row in rows}


async def test_a_lead_whose_lock_connection_dies_is_given_up_and_taken_again(
    running: Running, nats_url: str
) -> None:
    """The consumer's connection applies every batch, so a runner's own connection (its
    lock's) sits idle: when it dies, the runner notices at the next batch, gives up the
    lead and takes it again on a new connection (catching up from the log), rather than
    applying on without the lock that keeps other processes off its projection."""
    await Scenario(EventStore(running.pool), seed=41, tag="a").run(60)
    worker = running.start_worker(nats_url)
    await running.caught_up()
    async with running.pool.acquire() as connection:
        orders = await connection.fetchval("SELECT hashtext('orders')")
        before = await lead_holders(connection)
        assert len(before) == len(PROJECTIONS)
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", before[orders])

    await Scenario(EventStore(running.pool), seed=42, tag="b").run(60)
    await running.caught_up()
    async with running.pool.acquire() as connection:

        async def led_again() -> bool:
            return orders in await lead_holders(connection)

        await eventually(led_again, "orders is led again", timeout_s=CATCH_UP_TIMEOUT_S)
        after = await lead_holders(connection)
    assert after[orders] != before[orders]
    assert {objid: pid for objid, pid in after.items() if objid != orders} == {
        objid: pid for objid, pid in before.items() if objid != orders
    }
    await assert_equal_to_the_fold(running.pool)
    assert not worker.task.done()
