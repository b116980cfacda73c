"""`ledger project`: one durable JetStream pull consumer per projection, applied in order.

Per projection, a runner takes a PostgreSQL advisory lock on a connection of its own
(several worker processes can run; one applies a projection at a time, the others stand
by), binds the durable pull consumer `<consumer_prefix>-<name>` on the relay's stream
(every subject, so sequences arrive gapless), and loops: fetch a bounded batch, apply it
with apply_batch (rows and checkpoint in one transaction), then ack it with one ack
(AckPolicy.ALL: the last message applied acknowledges every one before it; an ack per
message cost a tenth of a worker's CPU). Redeliveries at or
below the checkpoint are skipped by the engine. A batch that starts past checkpoint + 1
(messages redelivered late, or trimmed from the stream) is preceded by the missing events
read from the log itself.

Failures: connection and timeout errors are transient, retried with capped backoff for as
long as it takes. Any other error is a poison candidate: the batch is re-applied event by
event, each with RETRIES of backoff, and the first event that still fails is parked: its
checkpoint row gets failing = true, last_error and parked_sequence, the events before it
stay applied and acked, it and the rest are not acked, and the projection stops (the
others go on). Nothing is skipped. A restart tries the parked event again; once it
applies, the failing flag is cleared with the checkpoint.

Tracing: a batch is one transaction, but may hold events of many traces (one per command
that appended them). For each trace among the events this projection handles, the batch
gets a span `apply <projection>`: a child of the message's `traceparent` (the relay's
publish span), with links to that trace's other messages in the batch. A trace's spans
then end with the update of each read model it reached; a batch of n traces has n such
spans over the same transaction (`ledger.batch.traces` says so). Messages without a
valid traceparent get no span. See docs/adr/0009-tracing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final

import asyncpg
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from ledger import tracing
from projections import source
from projections.base import STATEMENT_TIMEOUT_S, LoggedEvent, Projection
from projections.engine import Applied, SequenceGapError, apply_batch, read_checkpoint
from projections.registry import select

WORKER_LOCK_CLASS: Final = 0x1ED6E8
LAST_ERROR_LENGTH_MAX: Final = 4_000
TRANSIENT: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.InvalidCachedStatementError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)

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


class Parked(msgspec.Struct, frozen=True):
    """A projection stopped on a poison event."""

    name: str
    sequence: int
    error: str


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
    """Run the projections named until `stop` is set; return those parked on a poison event.

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
        max_size=len(projections) + 1,
        timeout=options.connect_timeout_s,
        # As apply_batch's transactions: a lost commit is a gap filled from the log.
        server_settings={"synchronous_commit": "off"},
    )
    provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    tracer = provider.get_tracer("projections.worker")
    runners = [Runner(projection, pool, client, options, tracer) for projection in projections]
    tasks = [asyncio.create_task(runner.run(stop), name=runner.name) for runner in runners]
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    everything: asyncio.Future[Any] = asyncio.gather(*tasks)
    try:
        await asyncio.wait({stopping, everything}, return_when=asyncio.FIRST_COMPLETED)
        if everything.done():
            everything.result()  # A runner's unexpected error is the caller's to see.
    finally:
        stopping.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if everything.done() and not everything.cancelled():
            everything.exception()  # Retrieved, so asyncio does not log it as lost.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.drain(), timeout=options.connect_timeout_s)
        await asyncio.wait_for(pool.close(), timeout=options.connect_timeout_s)
    return [runner.parked for runner in runners if runner.parked is not None]


class Runner:
    """One projection's consumer loop."""

    def __init__(
        self,
        projection: Projection,
        pool: asyncpg.Pool,
        client: NatsClient,
        options: WorkerOptions,
        tracer: Tracer | None = None,
    ) -> None:
        self.projection = projection
        self.tracer = trace.get_tracer(__name__) if tracer is None else tracer
        self.name = f"projection-{projection.name}"
        self.durable = f"{options.consumer_prefix}-{projection.name}"
        self.pool = pool
        self.client = client
        self.options = options
        self.parked: Parked | None = None

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set() and self.parked is None:
            try:
                async with self.pool.acquire(timeout=self.options.connect_timeout_s) as connection:
                    await self._lead(connection, stop)
                failures = 0
            except TRANSIENT as error:
                failures = min(failures + 1, 16)
                delay_s = self._backoff_s(failures)
                log.warning("%s: %r; retrying in %.2fs", self.name, error, delay_s)
                await _wait(stop, delay_s)

    def _backoff_s(self, attempt: int) -> float:
        return min(self.options.backoff_base_s * 2.0**attempt, self.options.backoff_max_s)

    async def _lead(self, connection: asyncpg.Connection, stop: asyncio.Event) -> None:
        """Stand by until this connection holds the projection's lock, then consume."""
        lock = (WORKER_LOCK_CLASS, self.projection.name)
        while not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", *lock, timeout=STATEMENT_TIMEOUT_S
        ):
            await _wait(stop, self.options.standby_retry_s)
            if stop.is_set():
                return
        try:
            await self._consume(connection, stop)
        finally:
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
                await connection.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", *lock, timeout=2.0
                )

    async def _consume(self, connection: asyncpg.Connection, stop: asyncio.Event) -> None:
        options = self.options
        durable = self.durable
        stream = self.client.jetstream(timeout=options.connect_timeout_s)
        try:
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=options.ack_wait_s,
                max_ack_pending=options.max_ack_pending,
            )
            start = await self._start_of_new_consumer(stream, durable, connection)
            if start is not None:
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = start
            subscription = await stream.pull_subscribe(
                f"{options.subject_prefix}.>",
                durable=durable,
                stream=options.stream_name,
                config=config,
            )
        except nats.js.errors.NotFoundError:
            # The relay creates the stream; a worker started first waits for it.
            log.info("%s: stream %s not found yet; waiting", self.name, options.stream_name)
            await _wait(stop, options.standby_retry_s)
            return
        try:
            while not stop.is_set() and self.parked is None:
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

    async def _start_of_new_consumer(
        self, stream: JetStreamContext, durable: str, connection: asyncpg.Connection
    ) -> int | None:
        """Where a durable not yet created starts: at the message of checkpoint + 1.

        A projection rebuilt from the log, or deployed with its checkpoint already far
        along, would otherwise receive, skip and ack the whole stream one message at a
        time. The stream's first message gives the offset between stream and ledger
        sequences; republished duplicates only make it grow further on, so the start is
        never past checkpoint + 1 (at worst a few messages early, and those are skipped).
        None (deliver everything) for an existing durable, or when in doubt."""
        name = self.options.stream_name
        try:
            existing = await stream.consumer_info(name, durable)
        except nats.js.errors.NotFoundError:
            existing = None
        if existing is not None:
            if existing.config.ack_policy == AckPolicy.ALL:
                return None
            # A durable of an earlier release, acked message by message: a consumer's ack
            # policy cannot be changed, and the checkpoint, not the durable, says where the
            # projection is, so it is made again.
            log.info("%s: recreating durable %s to ack batches", self.name, durable)
            await stream.delete_consumer(name, durable)
        checkpoint = await read_checkpoint(connection, self.projection.name)
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

    async def _handle(self, connection: asyncpg.Connection, messages: Sequence[Msg]) -> None:
        """Apply a fetched batch and ack what is applied; park on a poison event."""
        events: list[LoggedEvent] = []
        for message in messages:
            try:
                events.append(msgspec.json.decode(message.data, type=LoggedEvent))
            except msgspec.DecodeError as error:
                # Unreadable: cannot even be ordered; applied past it would skip it.
                await self._park(connection, _header_sequence(message), repr(error))
                return
        spans = self._apply_spans(messages, events)
        try:
            applied = await self._apply_isolating(connection, events)
        except BaseException as error:
            _end_failed(spans, error)
            raise
        _end_applied(spans, applied)
        last = _last_applied(messages, events, applied)
        if last is not None:
            await last.ack()  # AckPolicy.ALL: and every message delivered before it

    def _apply_spans(
        self, messages: Sequence[Msg], events: Sequence[LoggedEvent]
    ) -> list[tuple[Span, int]]:
        """Start an apply span per trace among the events this projection handles; each
        with the last sequence of its trace in the batch."""
        topics = self.projection.topics
        traces: dict[int, list[tuple[Context, LoggedEvent]]] = {}
        for message, event in zip(messages, events, strict=True):
            if event.topic not in topics:
                continue
            parent = tracing.context_of(message.headers)
            if parent is not None:
                trace_id = tracing.span_context_of(parent).trace_id
                traces.setdefault(trace_id, []).append((parent, event))
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": self.durable,
            "messaging.batch.message_count": len(messages),
            "ledger.projection": self.projection.name,
            "ledger.batch.traces": len(traces),
        }
        spans: list[tuple[Span, int]] = []
        for traced in traces.values():
            sequences = [event.sequence for _, event in traced]
            span = self.tracer.start_span(
                f"apply {self.projection.name}",
                context=traced[0][0],
                kind=SpanKind.CONSUMER,
                links=[Link(tracing.span_context_of(context)) for context, _ in traced[1:]],
                attributes={
                    **attributes,
                    "ledger.events": len(traced),
                    "ledger.sequence.first": sequences[0],
                    "ledger.sequence.last": sequences[-1],
                },
            )
            spans.append((span, max(sequences)))
        return spans

    async def _apply_isolating(
        self, connection: asyncpg.Connection, events: list[LoggedEvent]
    ) -> int:
        """Apply the batch; on a non-transient error, one event at a time to find the poison.

        Returns the checkpoint reached."""
        try:
            return (await self._apply(connection, events)).after
        except TRANSIENT:
            raise
        except Exception as error:
            log.warning("%s: batch failed (%r); applying event by event", self.name, error)
        checkpoint = 0
        for event in sorted(events, key=lambda item: item.sequence):
            for attempt in range(1, self.options.retries + 1):
                try:
                    checkpoint = (await self._apply(connection, [event])).after
                    break
                except TRANSIENT:
                    raise
                except Exception as error:
                    if attempt == self.options.retries:
                        await self._park(connection, event.sequence, repr(error))
                        return checkpoint
                    await asyncio.sleep(self._backoff_s(attempt))
        return checkpoint

    async def _apply(self, connection: asyncpg.Connection, events: list[LoggedEvent]) -> Applied:
        """apply_batch, first filling from the log any gap before the batch."""
        try:
            return await apply_batch(connection, self.projection, events, announce=True)
        except SequenceGapError as gap:
            after = gap.expected - 1
            while after < gap.found - 1:
                missing = await source.read_after(
                    connection, after, up_to=gap.found - 1, limit=self.options.fetch_batch
                )
                if not missing:
                    raise
                applied = await apply_batch(connection, self.projection, missing, announce=True)
                after = applied.after
            return await apply_batch(connection, self.projection, events, announce=True)

    async def _park(self, connection: asyncpg.Connection, sequence: int, error: str) -> None:
        log.error("%s: parked at sequence %s: %s", self.name, sequence, error)
        self.parked = Parked(self.projection.name, sequence, error)
        await connection.execute(
            "INSERT INTO read.checkpoints AS c (projection, failing, last_error, parked_sequence) "
            "VALUES ($1, true, $2, $3) ON CONFLICT (projection) DO UPDATE SET failing = true, "
            "last_error = $2, parked_sequence = $3, updated_at = now()",
            self.projection.name,
            error[:LAST_ERROR_LENGTH_MAX],
            sequence if sequence >= 1 else None,
            timeout=STATEMENT_TIMEOUT_S,
        )


def _last_applied(
    messages: Sequence[Msg], events: Sequence[LoggedEvent], checkpoint: int
) -> Msg | None:
    """The last message of the batch's applied prefix (messages come in stream order; one
    ack acknowledges every message before it, so it must not pass an unapplied one)."""
    last = None
    for message, event in zip(messages, events, strict=True):
        if event.sequence > checkpoint:
            break
        last = message
    return last


def _end_applied(spans: Sequence[tuple[Span, int]], checkpoint: int) -> None:
    """End apply spans after their batch; one whose events were not all applied (the
    projection parked before its last) failed."""
    for span, last in spans:
        span.set_attribute("ledger.checkpoint", checkpoint)
        if last > checkpoint:
            span.set_status(Status(StatusCode.ERROR, f"not applied past sequence {checkpoint}"))
        span.end()


def _end_failed(spans: Sequence[tuple[Span, int]], error: BaseException) -> None:
    for span, _ in spans:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


def _header_sequence(message: Msg) -> int:
    headers: dict[str, Any] = message.headers or {}
    try:
        return int(headers.get("Ledger-Sequence", 0))
    except ValueError:
        return 0


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
