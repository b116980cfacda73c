"""The relay against real PostgreSQL and NATS: one leader numbers and publishes every event
once, in order; a standby takes over; NATS or PostgreSQL going away loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg

from ledger import relay as relay_module
from ledger import sequencer
from ledger.relay import AppendNotifier, Relay, RelayOptions, WireEvent, run_relay
from ledger.sequencer import Batch
from ledger.store import EventStore
from tests.conftest import Databases
from tests.integration.events import new_stream, noted
from tests.waiting import eventually

WAIT_S_MAX = 15.0
_names = itertools.count()


class Setup:
    """A database and a JetStream stream of the test's own, and relays to run on them."""

    def __init__(self, url: str, pool: asyncpg.Pool, nats_url: str, stream_name: str) -> None:
        self.url = url
        self.pool = pool
        self.store = EventStore(pool)
        self.nats_url = nats_url
        self.options = RelayOptions(
            stream_name=stream_name,
            subject_prefix=stream_name.lower(),
            ack_timeout_s=1.0,
            standby_retry_s=0.2,
            nats_retry_s_max=0.3,
            connect_timeout_s=1.0,
            digest_every=50,
        )
        self.tasks: list[asyncio.Task[None]] = []

    def start(
        self, nats_url: str | None = None, *, on_sequenced: Callable[[Batch], None] | None = None
    ) -> Relay:
        relay = Relay(self.url, nats_url or self.nats_url, self.options, on_sequenced=on_sequenced)
        self.tasks.append(asyncio.create_task(relay.run()))
        return relay

    async def append(self, count: int, *, writers: int = 1) -> list[UUID]:
        appended: list[UUID] = []

        async def writer(share: int) -> None:
            stream = new_stream()
            for version in range(share):
                event = noted(stream, version)
                await self.store.append([event], {stream: version})
                appended.append(event.event_id)

        await asyncio.gather(*(writer(count // writers) for _ in range(writers)))
        return appended

    async def state(self) -> tuple[int, int]:
        row = await self.pool.fetchrow("SELECT sequenced, published FROM ledger.relay_state")
        assert row is not None
        return row[0], row[1]

    async def sequenced_ids(self) -> list[UUID]:
        """Event ids in sequence order, after checking the numbers are 1..n."""
        rows = await self.pool.fetch(
            "SELECT s.sequence, s.tx, s.position, e.event_id FROM ledger.sequence s "
            "JOIN ledger.events e ON e.notification_id = s.position ORDER BY s.sequence"
        )
        assert [row["sequence"] for row in rows] == list(range(1, len(rows) + 1))
        order = [(row["tx"], row["position"]) for row in rows]
        assert order == sorted(order)
        return [row["event_id"] for row in rows]


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def setup(
    databases: Databases, nats_url: str, nats_client: NatsClient, stream_prefix: str
) -> AsyncIterator[Setup]:
    url = await databases.create("relay")
    pool = await asyncpg.create_pool(url, min_size=2, max_size=20)
    ready = Setup(url, pool, nats_url, f"{stream_prefix}_RELAY_{next(_names)}")
    yield ready
    for task in ready.tasks:
        task.cancel()
    await asyncio.gather(*ready.tasks, return_exceptions=True)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nats_client.jetstream().delete_stream(ready.options.stream_name)
    await pool.close()


def header(message: RawStreamMsg, name: str) -> str:
    assert message.headers is not None
    value: str = message.headers[name]
    return value


def body_of(message: RawStreamMsg) -> WireEvent:
    assert message.data is not None
    return msgspec.json.decode(message.data, type=WireEvent)


async def published_messages(client: NatsClient, stream_name: str) -> list[RawStreamMsg]:
    stream = client.jetstream()
    info = await stream.stream_info(stream_name)
    if info.state.messages == 0:
        return []
    first, last = info.state.first_seq, info.state.last_seq
    return [await stream.get_msg(stream_name, seq) for seq in range(first, last + 1)]


async def all_published(setup: Setup, client: NatsClient, expected: list[UUID]) -> None:
    """Wait until everything is numbered and published; check NATS holds each event once,
    in sequence order, and that the global chain verifies."""

    async def caught_up() -> bool:
        return await setup.state() == (len(expected), len(expected))

    await eventually(
        caught_up, f"{len(expected)} events are sequenced and published", timeout_s=WAIT_S_MAX
    )
    ids = await setup.sequenced_ids()
    assert sorted(ids) == sorted(expected)
    messages = await published_messages(client, setup.options.stream_name)
    assert [UUID(header(message, "Nats-Msg-Id")) for message in messages] == ids
    sequences = [int(header(message, "Ledger-Sequence")) for message in messages]
    assert sequences == list(range(1, len(ids) + 1))
    async with setup.pool.acquire() as connection:
        assert (await sequencer.verify_range(connection, 1, len(ids))).ok


async def test_every_event_is_published_once_in_sequence_order(
    setup: Setup, nats_client: NatsClient
) -> None:
    relay = setup.start()
    appended = await setup.append(200, writers=8)
    await all_published(setup, nats_client, appended)
    assert relay.leading
    message = (await published_messages(nats_client, setup.options.stream_name))[0]
    body = body_of(message)
    stored = (await setup.store.read_stream(body.stream_id))[0]
    assert message.subject == f"{setup.options.subject_prefix}.test.{body.stream_id}"
    assert body.event_id == stored.event_id == UUID(header(message, "Nats-Msg-Id"))
    assert bytes(body.data) == stored.data
    assert body.hash == stored.hash.hex()
    assert body.topic == stored.topic
    assert body.stream_type == "test"
    assert set(message.headers or {}) <= {"Nats-Msg-Id", "Ledger-Sequence", "Nats-Expected-Stream"}
    info = await nats_client.jetstream().stream_info(setup.options.stream_name)
    assert info.config.duplicate_window == setup.options.duplicate_window_s


async def test_correlation_id_travels_in_the_body(setup: Setup, nats_client: NatsClient) -> None:
    setup.start()
    stream, correlation_id = new_stream(), UUID(int=7)
    event = noted(stream, 1)
    await setup.store.append([event], {stream: 0}, correlation_id=correlation_id, actor="u1")
    await all_published(setup, nats_client, [event.event_id])
    message = (await published_messages(nats_client, setup.options.stream_name))[0]
    assert body_of(message).correlation_id == correlation_id
    assert body_of(message).actor == "u1"


async def test_the_design_inversion_is_published_in_commit_order(
    setup: Setup, nats_client: NatsClient
) -> None:
    relay = setup.start()
    a, b = await asyncpg.connect(setup.url), await asyncpg.connect(setup.url)
    try:
        transaction_a, transaction_b = a.transaction(), b.transaction()
        await transaction_a.start()
        await transaction_b.start()
        await a.fetchval("SELECT pg_current_xact_id()")
        stream_a, stream_b = new_stream(), new_stream()
        event_b, event_a = noted(stream_b, 1), noted(stream_a, 2)
        await setup.store.append([event_b], {stream_b: 0}, connection=b)
        await setup.store.append([event_a], {stream_a: 0}, connection=a)
        await transaction_a.commit()

        async def a_is_published() -> bool:
            return await setup.state() == (1, 1)

        await eventually(
            a_is_published, "A's event is numbered and published", timeout_s=WAIT_S_MAX
        )
        await asyncio.sleep(0.2)  # The relay polls meanwhile and must not move past B.
        assert relay.leading
        assert await setup.state() == (1, 1)
        await transaction_b.commit()
    finally:
        await a.close()
        await b.close()
    await all_published(setup, nats_client, [event_a.event_id, event_b.event_id])
    assert await setup.sequenced_ids() == [event_a.event_id, event_b.event_id]


async def leader_of(relays: list[Relay]) -> Relay:
    async def one_leads() -> bool:
        return sum(relay.leading for relay in relays) == 1

    await eventually(one_leads, "exactly one relay leads", timeout_s=WAIT_S_MAX)
    return next(relay for relay in relays if relay.leading)


async def test_one_relay_leads_and_a_standby_takes_over_when_it_dies(
    setup: Setup, nats_client: NatsClient
) -> None:
    relays = [setup.start(), setup.start()]
    first = await leader_of(relays)
    writing = asyncio.create_task(setup.append(300, writers=3))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    dying = setup.tasks[relays.index(first)]
    dying.cancel()  # The leader's process dies mid-stream.
    await asyncio.gather(dying, return_exceptions=True)
    assert not first.leading
    second = await leader_of(relays)
    takeover_s = time.monotonic() - started
    assert second is not first
    assert takeover_s < 3.0, takeover_s
    appended = await writing
    await all_published(setup, nats_client, appended)


async def test_a_leader_whose_session_is_killed_loses_the_lead_without_gap_or_duplicate(
    setup: Setup, nats_client: NatsClient
) -> None:
    relays = [setup.start(), setup.start()]
    await leader_of(relays)
    writing = asyncio.create_task(setup.append(300, writers=3))
    for _ in range(3):
        await asyncio.sleep(0.1)
        await leader_of(relays)
        # As a PostgreSQL restart or a lost network would: every relay session ends.
        killed = await setup.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            relay_module.APPLICATION_NAME,
        )
        assert killed >= 1
    appended = await writing
    await leader_of(relays)
    await all_published(setup, nats_client, appended)


async def test_the_leader_is_visible_in_pg_locks(setup: Setup) -> None:
    relays = [setup.start(), setup.start()]
    await leader_of(relays)
    holders = await setup.pool.fetch(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.objid = $1 AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        relay_module.RELAY_LOCK_KEY,
    )
    assert [row[0] for row in holders] == [relay_module.APPLICATION_NAME]


class TcpProxy:
    """A TCP forwarder in front of the real NATS server, to cut the network and restore it."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.target = (parts.hostname, parts.port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


async def test_nats_down_does_not_stop_appends_or_sequencing_and_publishing_catches_up(
    setup: Setup, nats_client: NatsClient
) -> None:
    proxy = TcpProxy(setup.nats_url)
    await proxy.start()
    relay = setup.start(proxy.url)
    first = await setup.append(20)
    await all_published(setup, nats_client, first)
    await proxy.stop()
    second = await setup.append(100, writers=4)  # Commands keep succeeding.

    async def sequenced() -> bool:
        return (await setup.state())[0] == 120

    await eventually(sequenced, "the relay numbers events while NATS is down", timeout_s=WAIT_S_MAX)
    assert relay.leading
    assert (await setup.state())[1] == 20
    await proxy.start()
    await all_published(setup, nats_client, first + second)


async def test_publishing_from_a_relay_that_never_reached_nats_catches_up(
    setup: Setup, nats_client: NatsClient
) -> None:
    proxy = TcpProxy(setup.nats_url)
    await proxy.start()
    await proxy.stop()  # Closed before the relay's first connection.
    setup.start(proxy.url)
    appended = await setup.append(30, writers=3)

    async def sequenced() -> bool:
        return await setup.state() == (30, 0)

    await eventually(
        sequenced, "the relay numbers events without ever reaching NATS", timeout_s=WAIT_S_MAX
    )
    await proxy.start()
    await all_published(setup, nats_client, appended)


async def test_a_relay_restarted_mid_stream_leaves_no_gap_and_no_duplicate_in_nats(
    setup: Setup, nats_client: NatsClient
) -> None:
    setup.start()
    writing = asyncio.create_task(setup.append(300, writers=3))
    await asyncio.sleep(0.15)
    setup.tasks[0].cancel()
    await asyncio.gather(setup.tasks[0], return_exceptions=True)
    setup.start()
    appended = await writing
    await all_published(setup, nats_client, appended)
    # A relay that died after its acks but before recording them publishes again: the
    # cursor goes back, as if never moved, and JetStream drops the repeats by Nats-Msg-Id.
    setup.tasks[1].cancel()
    await asyncio.gather(setup.tasks[1], return_exceptions=True)
    await setup.pool.execute("UPDATE ledger.relay_state SET published = published - 120")
    setup.start()
    await all_published(setup, nats_client, appended)


async def test_run_relay_stops_when_asked(setup: Setup, nats_client: NatsClient) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_relay(
            setup.url,
            setup.nats_url,
            stream_name=setup.options.stream_name,
            subject_prefix=setup.options.subject_prefix,
            stop=stop,
        )
    )
    appended = await setup.append(10)
    await all_published(setup, nats_client, appended)
    stop.set()
    await asyncio.wait_for(running, timeout=5.0)
    idle = await setup.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()",
        relay_module.APPLICATION_NAME,
    )
    assert idle == 0


async def commit_to_sequenced_ms(setup: Setup, *, notify: bool) -> list[float]:
    """Latency from an append's return to its number being committed, appends spaced out so
    that the relay is idle before each (its slowest case)."""
    sequenced_at: dict[int, float] = {}

    def seen(batch: Batch) -> None:
        now = time.perf_counter()
        for row in batch.rows:
            sequenced_at[row.position] = now

    setup.start(on_sequenced=seen)
    notifier = AppendNotifier(setup.pool)
    await setup.append(1)
    await asyncio.sleep(0.3)
    committed_at: dict[int, float] = {}
    for number in range(40):
        stream = new_stream()
        result = await setup.store.append([noted(stream, number)], {stream: 0})
        committed_at[result.events[0].position] = time.perf_counter()
        if notify:
            notifier.appended()
        await asyncio.sleep(0.06 + 0.001 * (number % 7))

    async def all_seen() -> bool:
        return committed_at.keys() <= sequenced_at.keys()

    await eventually(all_seen, "every append is sequenced", timeout_s=WAIT_S_MAX)
    await notifier.close()
    return [max(0.0, sequenced_at[p] - committed_at[p]) * 1000 for p in committed_at]


@pytest.mark.parametrize("notify", [False, True], ids=["polling", "notify-after-commit"])
async def test_an_idle_relay_wakes_within_milliseconds_of_a_commit(
    setup: Setup, notify: bool
) -> None:
    latencies_ms = sorted(await commit_to_sequenced_ms(setup, notify=notify))
    median_ms = statistics.median(latencies_ms)
    p95_ms = latencies_ms[int(len(latencies_ms) * 0.95)]
    print(
        f"commit -> sequenced ({'notify' if notify else 'polling'}): "
        f"median {median_ms:.1f} ms, p95 {p95_ms:.1f} ms, max {latencies_ms[-1]:.1f} ms"
    )
    bound_ms = 10.0 if notify else setup.options.poll_idle_s_max * 1000 + 20
    assert median_ms < bound_ms


async def test_a_stream_that_cannot_be_created_pauses_publishing_only(
    setup: Setup, nats_client: NatsClient
) -> None:
    """Another stream already owns the relay's subjects: JetStream refuses the relay's
    stream, numbering goes on, and publishing starts once the way is clear."""
    stream = nats_client.jetstream()
    squatter = f"{setup.options.stream_name}_SQUATTER"
    await stream.add_stream(name=squatter, subjects=[f"{setup.options.subject_prefix}.>"])
    try:
        relay = setup.start()
        appended = await setup.append(20)

        async def sequenced() -> bool:
            return await setup.state() == (20, 0)

        await eventually(
            sequenced, "the relay numbers events without its stream", timeout_s=WAIT_S_MAX
        )
        assert relay.leading
    finally:
        await stream.delete_stream(squatter)
    await all_published(setup, nats_client, appended)
