"""`ledger project`: one durable JetStream pull consumer per worker process, feeding every
projection the process leads.

The process binds one durable on the relay's stream (every subject, so sequences arrive
gapless), named from consumer_prefix and the projections selected (`projection-all` for
`ledger project all`, so it is the same across restarts), and loops: fetch a bounded batch,
decode each message once, hand the batch to the runner of each projection it selected
(projections/runner.py), then ack with one ack (AckPolicy.ALL: the last message applied
acknowledges every one before it). Each event is thus fetched, decoded and acked once per
process, not once per projection: with a consumer per projection, the worker spent most
of its CPU on nine fetches, decodes and acks of each event (ADR 0015).

A batch that some leading projection handles is applied for all of them in one
transaction on the consumer's connection (projections/together.py): one BEGIN and
COMMIT, every checkpoint locked and moved in one statement each. If that transaction
fails (a gap, a poison event, a timeout), nothing of it stays, and each leading runner
applies the batch in transactions of its own, as before: gaps filled from the log, a
poison event parking only its projection. A batch none of them handles only moves their
checkpoints, in one statement (engine.skip_unhandled).

Two locks, both PostgreSQL advisory locks on connections of their own:
- the durable's: one process consumes it at a time; another process with the same
  selection stands by, holding no projection, and takes over when it can;
- each projection's (held by its runner): processes with different selections split the
  projections between them, one applying each at a time.

The ack never passes a message whose event a leading runner has not applied. Runners that
do not hold it back: those standing by, those parked on a poison event and those that
just lost their lead to a connection error; each catches up from the log (the source of
truth) when it next takes the lead, so the durable need not keep their messages. A message
whose body cannot be decoded is left to the log as well: it is not handed to the runners,
who find its event missing before the next one and read it from the log (SequenceGapError).

A new durable starts at the stream message of the smallest checkpoint among the selected
projections that are not parked, not at the stream's start; the per-projection durables
of the earlier release (`<prefix>-<name>`) are deleted so the stream does not keep
messages for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg
import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from projections import source
from projections.base import STATEMENT_TIMEOUT_S, LoggedEvent, Projection
from projections.engine import skip_unhandled
from projections.registry import NAMES, select
from projections.runner import FAILURES_COUNTED_MAX, TRANSIENT, Parked, Runner
from projections.together import apply_together, closed

CONSUMER_LOCK_CLASS: Final = 0x1ED6E9

log = logging.getLogger("projections.worker")


class WorkerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Names and bounds of the projection workers; the defaults are `ledger project`'s."""

    stream_name: str = "LEDGER"
    subject_prefix: str = "ledger"
    consumer_prefix: str = "projection"
    fetch_batch: int = 500
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0
    max_ack_pending: int = 5_000
    retries: int = 5
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    standby_retry_s: float = 1.0
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        assert 1 <= self.fetch_batch <= source.READ_BATCH_MAX, self.fetch_batch
        assert self.fetch_batch <= self.max_ack_pending, self.max_ack_pending
        assert 0 < self.fetch_timeout_s < self.ack_wait_s
        assert 1 <= self.retries <= 100, self.retries
        assert 0 < self.backoff_base_s <= self.backoff_max_s


def durable_name(consumer_prefix: str, projections: Sequence[Projection]) -> str:
    """The process's durable: `<prefix>-all` for every projection, else `<prefix>-set-`
    and the names in registry order (never an earlier release's `<prefix>-<name>`)."""
    names = [projection.name for projection in projections]
    assert names, "no projection selected"
    if set(names) == set(NAMES):
        return f"{consumer_prefix}-all"
    return f"{consumer_prefix}-set-{'-'.join(names)}"


async def run_projections(
    database_url: str,
    nats_url: str,
    names: Iterable[str] = ("all",),
    *,
    stream_name: str = "LEDGER",
    stop: asyncio.Event | None = None,
    options: WorkerOptions | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[Parked]:
    """Run the projections named until `stop` is set, or every one is parked; return those
    parked on a poison event.

    Spans go to `tracer_provider` (else to the global provider, a no-op unless set)."""
    options = msgspec.structs.replace(options or WorkerOptions(), stream_name=stream_name)
    stop = asyncio.Event() if stop is None else stop
    projections = select(names)
    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    client = await nats.connect(
        servers=servers,
        name="ledger-projections",
        connect_timeout=max(1, round(options.connect_timeout_s)),
        max_reconnect_attempts=-1,
    )
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        # A connection per runner (its lock, its batches) and the consumer's (its lock).
        max_size=len(projections) + 1,
        timeout=options.connect_timeout_s,
        # As apply_batch's transactions: a lost commit is a gap filled from the log.
        server_settings={"synchronous_commit": "off"},
    )
    provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    tracer = provider.get_tracer("projections.worker")
    durable = durable_name(options.consumer_prefix, projections)
    runners = [Runner(item, pool, options, tracer, durable=durable) for item in projections]
    consumer = Consumer(runners, pool, client, options, durable)
    consuming = asyncio.create_task(consumer.run(stop), name=durable)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopping, consuming}, return_when=asyncio.FIRST_COMPLETED)
        if consuming.done():
            consuming.result()  # An unexpected error is the caller's to see.
    finally:
        stopping.cancel()
        consuming.cancel()
        await asyncio.gather(consuming, stopping, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.drain(), timeout=options.connect_timeout_s)
        await asyncio.wait_for(pool.close(), timeout=options.connect_timeout_s)
    return [runner.parked for runner in runners if runner.parked is not None]


class Consumer:
    """The process's durable: fetched, decoded and acked once for all its runners."""

    def __init__(
        self,
        runners: Sequence[Runner],
        pool: asyncpg.Pool,
        client: NatsClient,
        options: WorkerOptions,
        durable: str,
    ) -> None:
        self.runners = runners
        self.pool = pool
        self.client = client
        self.options = options
        self.durable = durable

    def _unparked(self) -> bool:
        return any(runner.parked is None for runner in self.runners)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set or every runner is parked; standing by while another
        process consumes the durable, retrying connection errors with capped backoff."""
        failures = 0
        while not stop.is_set() and self._unparked():
            try:
                async with self.pool.acquire(timeout=self.options.connect_timeout_s) as connection:
                    await self._lead(connection, stop)
                failures = 0
            except TRANSIENT as error:
                failures = min(failures + 1, FAILURES_COUNTED_MAX)
                delay_s = min(
                    self.options.backoff_base_s * 2.0**failures, self.options.backoff_max_s
                )
                log.warning("%s: %r; retrying in %.2fs", self.durable, error, delay_s)
                await _wait(stop, delay_s)

    async def _lead(self, connection: asyncpg.Connection, stop: asyncio.Event) -> None:
        """Stand by until this connection holds the durable's lock, then consume; the
        runners' leads are given up with it (only a consuming process feeds them)."""
        lock = (CONSUMER_LOCK_CLASS, self.durable)
        while not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", *lock, timeout=STATEMENT_TIMEOUT_S
        ):
            await _wait(stop, self.options.standby_retry_s)
            if stop.is_set():
                return
        try:
            await self._consume(connection, stop)
        finally:
            await asyncio.gather(*(runner.stand_down() for runner in self.runners))
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
                await connection.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", *lock, timeout=2.0
                )

    async def _consume(self, connection: asyncpg.Connection, stop: asyncio.Event) -> None:
        options = self.options
        stream = self.client.jetstream(timeout=options.connect_timeout_s)
        try:
            subscription = await self._subscribe(stream, connection)
        except nats.js.errors.NotFoundError:
            # The relay creates the stream; a worker started first waits for it.
            log.info("%s: stream %s not found yet; waiting", self.durable, options.stream_name)
            await _wait(stop, options.standby_retry_s)
            return
        try:
            while not stop.is_set() and self._unparked():
                # Only those standing by: a task per runner per batch is not free.
                await asyncio.gather(*(r.try_lead() for r in self.runners if r.standing_by))
                try:
                    messages = await subscription.fetch(
                        options.fetch_batch, timeout=options.fetch_timeout_s
                    )
                # An idle fetch: nats-py raises its own TimeoutError or asyncio's (both are
                # TimeoutError). Left to run(), it was a "failure" that grew the backoff to
                # backoff_max_s while idle, delaying the next event by seconds.
                except TimeoutError:
                    continue
                await self._handle(connection, messages)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.unsubscribe(), timeout=2.0)

    async def _subscribe(
        self, stream: JetStreamContext, connection: asyncpg.Connection
    ) -> JetStreamContext.PullSubscription:
        """Bind the durable, made where the selected checkpoints say if it is new."""
        options = self.options
        await self._delete_earlier_durables(stream)
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=options.ack_wait_s,
            max_ack_pending=options.max_ack_pending,
        )
        start = await self._start_of_new_consumer(stream, connection)
        if start is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
        return await stream.pull_subscribe(
            f"{options.subject_prefix}.>",
            durable=self.durable,
            stream=options.stream_name,
            config=config,
        )

    async def _delete_earlier_durables(self, stream: JetStreamContext) -> None:
        """Delete the earlier release's durable of each runner's projection, which would
        otherwise keep every message it has not acked."""
        for runner in self.runners:
            earlier = f"{self.options.consumer_prefix}-{runner.projection.name}"
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await stream.delete_consumer(self.options.stream_name, earlier)
                log.info("%s: deleted the earlier durable %s", self.durable, earlier)

    async def _start_of_new_consumer(
        self, stream: JetStreamContext, connection: asyncpg.Connection
    ) -> int | None:
        """Where a durable not yet created starts: at the message of checkpoint + 1, for the
        smallest checkpoint of the selected projections not parked (a parked one, and any
        projection taken over later, catches up from the log).

        A projection rebuilt from the log, or deployed with its checkpoint already far
        along, would otherwise receive, skip and ack the whole stream. The stream's first
        message gives the offset between stream and ledger sequences; republished
        duplicates only make it grow further on, so the start is never past checkpoint + 1
        (at worst a few messages early, and those are skipped). None (deliver everything)
        for an existing durable, or when in doubt."""
        name = self.options.stream_name
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await stream.consumer_info(name, self.durable)
            return None
        checkpoint = await self._smallest_checkpoint(connection)
        info = await stream.stream_info(name)
        first, last = info.state.first_seq, info.state.last_seq
        if checkpoint == 0 or info.state.messages == 0:
            return None
        try:
            message = await stream.get_msg(name, seq=first)
            sequence = int((message.headers or {})["Ledger-Sequence"])
        except (nats.js.errors.APIError, KeyError, ValueError):
            return None  # Trimmed meanwhile, or not the relay's: deliver everything.
        return min(max(first + checkpoint + 1 - sequence, first), last + 1)

    async def _smallest_checkpoint(self, connection: asyncpg.Connection) -> int:
        """The smallest checkpoint of the runners' projections that are not failing (0 for
        one without a checkpoint yet); of all of them when every one is failing."""
        names = [runner.projection.name for runner in self.runners]
        rows = await connection.fetch(
            "SELECT projection, sequence, failing FROM read.checkpoints "
            "WHERE projection = ANY($1::text[])",
            names,
            timeout=STATEMENT_TIMEOUT_S,
        )
        found = {row["projection"]: (int(row["sequence"]), bool(row["failing"])) for row in rows}
        checkpoints = [found.get(name, (0, False)) for name in names]
        healthy = [sequence for sequence, failing in checkpoints if not failing]
        return min(healthy or [sequence for sequence, _ in checkpoints])

    async def _handle(self, connection: asyncpg.Connection, messages: Sequence[Msg]) -> None:
        """Apply a fetched batch for the leading runners, then ack what all of them applied.

        A batch none of them handles only moves their checkpoints, in one statement (a
        process leading a few projections, say users, sees most batches go by so)."""
        decoded = [(message, _decoded(message)) for message in messages]
        readable = [(message, event) for message, event in decoded if event is not None]
        batch = [message for message, _ in readable], [event for _, event in readable]
        # A batch of unreadable bodies alone is nobody's to apply, so acked whole.
        leading = [runner for runner in self.runners if await runner.confirm_lead()]
        leading = leading if readable else []
        topics = {event.topic for event in batch[1]}
        if any(not runner.projection.topics.isdisjoint(topics) for runner in leading):
            skipped = {}  # Moved in the transaction that applies the others' rows.
        else:
            skipped = await skip_unhandled(
                connection, [runner.projection for runner in leading], batch[1]
            )
        applying = [runner for runner in leading if runner.projection.name not in skipped]
        reached = await self._apply(connection, applying, *batch)
        checkpoints = [applied.after for applied in skipped.values()]
        checkpoints += [checkpoint for checkpoint in reached if checkpoint is not None]
        last = _last_applied(decoded, min(checkpoints, default=None))
        if last is not None:
            await last.ack()  # AckPolicy.ALL: and every message delivered before it

    async def _apply(
        self,
        connection: asyncpg.Connection,
        runners: Sequence[Runner],
        messages: Sequence[Msg],
        events: Sequence[LoggedEvent],
    ) -> list[int | None]:
        """Apply the batch for `runners` in one transaction on the consumer's connection
        (projections/together.py); if that fails, projection by projection, each runner in
        transactions of its own, where gaps are filled and poison events parked. What each
        reached, as Runner.handle says. A lost connection is run()'s to retry (the
        runners stand down with it, and catch up from the log when they lead again)."""
        if not runners:
            return []
        spans = [runner.start_spans(messages, events, len(runners)) for runner in runners]
        try:
            applied = await apply_together(
                connection, [runner.projection for runner in runners], events
            )
        except Exception as error:
            if closed(connection) or isinstance(error, asyncpg.PostgresConnectionError):
                for runner, started in zip(runners, spans, strict=True):
                    runner.failed_together(started, error)
                raise
            log.warning(
                "%s: batch failed in one transaction (%r); applying projection by projection",
                self.durable,
                error,
            )
            return list(
                await asyncio.gather(
                    *(
                        runner.handle(messages, events, started)
                        for runner, started in zip(runners, spans, strict=True)
                    )
                )
            )
        except BaseException as error:  # Cancelled (stopping): rolled back, spans ended.
            for runner, started in zip(runners, spans, strict=True):
                runner.failed_together(started, error)
            raise
        return [
            runner.applied(started, applied[runner.projection.name].after)
            for runner, started in zip(runners, spans, strict=True)
        ]


def _decoded(message: Msg) -> LoggedEvent | None:
    """The message's event; None when its body is not one (left to the log: see above)."""
    try:
        return msgspec.json.decode(message.data, type=LoggedEvent)
    except msgspec.DecodeError as error:
        log.error("unreadable message %s on %s: %r", message.reply, message.subject, error)
        return None


def _last_applied(
    decoded: Sequence[tuple[Msg, LoggedEvent | None]], checkpoint: int | None
) -> Msg | None:
    """The last message of the batch's applied prefix (messages come in stream order; one
    ack acknowledges every message before it, so it must not pass an unapplied one). With
    no checkpoint (no runner holds the batch back), the batch's last message."""
    last = None
    for message, event in decoded:
        if checkpoint is not None and event is not None and event.sequence > checkpoint:
            break
        last = message
    return last


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
