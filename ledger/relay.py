"""The relay: follows the committed log, numbers every event, publishes it to JetStream.

One relay leads at a time: the one whose dedicated PostgreSQL connection holds a
session-level advisory lock. The leader numbers events on that same connection, so a
leader whose session ended (and so lost the lock) cannot number anything either; a
standby tries the lock every `standby_retry_s` and, once it has it, continues from the
cursor in ledger.relay_state.

The leader runs two tasks. The sequencer follows ledger.events in (tx, position) order
and writes ledger.sequence (ledger/sequencer.py); it wakes by adaptive polling (1 ms
after a batch, backing off to `poll_idle_s_max` when idle) or at once on a NOTIFY on
WAKE_CHANNEL, which writers may send after their append has committed (AppendNotifier),
never inside it. The publisher reads ledger.sequence past the published cursor and
publishes each event on `<prefix>.<stream_type>.<stream_id>` with Nats-Msg-Id = event id,
a bounded number of acks in flight; the published cursor moves only after every ack of a
batch. NATS being down pauses the publisher alone: numbering and appends go on, and the
publisher catches up when NATS is back. See docs/adr/0004-relay-and-sequencer.md.

An event appended within a trace (its trace_context column) is published in a span
`publish <stream>`, a child of that context, and the message's `traceparent` header is
the publish span's, so the projections' spans continue the same trace; the span ends
once its window's acks are in. Events without a valid trace context are published
without a span or a header, as before. See docs/adr/0009-tracing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from ledger import sequencer, tracing
from ledger.errors import LedgerError
from ledger.sequencer import Batch, SequencedEvent
from ledger.store import RecordedEvent

# An arbitrary constant naming "the relay's leadership" among this database's advisory
# locks (the migrations use 0x1ED6E5). Small enough that pg_locks shows it as objid.
RELAY_LOCK_KEY: Final = 0x1ED6E6
WAKE_CHANNEL: Final = "ledger_appended"
APPLICATION_NAME: Final = "ledger-relay"
# A stream-already-exists-with-another-configuration error from JetStream.
STREAM_NAME_IN_USE: Final = 10058

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT_UNSAFE = re.compile(r"[.*>\s]")

log = logging.getLogger("ledger.relay")


class PublishError(LedgerError):
    """Raised when JetStream cannot be reached or does not ack every message of a batch."""

    code = "PUBLISH_FAILED"


class RelayOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Names and bounds of the relay; the defaults are those of `ledger relay`."""

    stream_name: str = "LEDGER"
    subject_prefix: str = "ledger"
    stream_replicas: int = 1
    duplicate_window_s: float = 120.0
    sequence_batch_max: int = 1_000
    publish_batch_max: int = 1_000
    in_flight_max: int = 256
    ack_timeout_s: float = 5.0
    poll_busy_s: float = 0.001
    poll_idle_s_max: float = 0.05
    standby_retry_s: float = 0.5
    nats_retry_s_max: float = 5.0
    connect_timeout_s: float = 5.0
    digest_every: int = sequencer.DIGEST_EVERY_DEFAULT
    listen: bool = True

    def __post_init__(self) -> None:
        if not _STREAM_NAME.match(self.stream_name):
            raise ValueError(f"stream name {self.stream_name!r} is not a JetStream name")
        if not all(_SUBJECT_TOKEN.match(token) for token in self.subject_prefix.split(".")):
            raise ValueError(f"subject prefix {self.subject_prefix!r} is not dotted tokens")
        assert 1 <= self.sequence_batch_max <= sequencer.SEQUENCE_BATCH_MAX
        assert 1 <= self.publish_batch_max <= sequencer.SEQUENCE_BATCH_MAX
        assert 1 <= self.in_flight_max <= 10_000
        assert 0 < self.poll_busy_s <= self.poll_idle_s_max <= 10.0
        assert self.ack_timeout_s > 0, self.ack_timeout_s
        assert self.standby_retry_s > 0, self.standby_retry_s
        assert self.nats_retry_s_max > 0, self.nats_retry_s_max
        assert self.digest_every >= 1, self.digest_every
        assert 1 <= self.stream_replicas <= 5, self.stream_replicas


class WireEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a JetStream message: a stored event with its global sequence."""

    sequence: int
    position: int
    event_id: UUID
    stream_id: UUID
    stream_type: str
    version: int
    topic: str
    schema_version: int
    recorded_at: datetime
    actor: str | None
    correlation_id: UUID | None
    causation_id: UUID | None
    data: msgspec.Raw
    hash: str


_wire_encoder = msgspec.json.Encoder()


def subject_of(prefix: str, event: RecordedEvent) -> str:
    """`<prefix>.<stream_type>.<stream_id>`; characters a subject token cannot hold become _."""
    return f"{prefix}.{_SUBJECT_UNSAFE.sub('_', event.stream_type)}.{event.stream_id}"


def trace_headers(event: RecordedEvent) -> dict[str, str]:
    """The originating request's trace context as a W3C `traceparent` header: the one
    stored with the event, when it is well formed; none otherwise.

    The relay replaces it with its publish span's context (a child of this one), so that
    the consumer's spans hang below the publish; see `publish_span`.
    """
    if tracing.context_of_traceparent(event.trace_context) is None:
        return {}
    assert event.trace_context is not None
    return {tracing.TRACEPARENT: event.trace_context}


def headers_of(item: SequencedEvent) -> dict[str, str]:
    event = item.event
    """Dedup id, sequence and trace context: what is needed before the body is read.

    The rest (stream type, topic, correlation and causation ids) is in the body, and not
    repeated here: every consumer parses every header of every message in Python (nats-py),
    a fifth of a projection worker's CPU with them repeated."""
    headers = {"Nats-Msg-Id": str(event.event_id), "Ledger-Sequence": str(item.sequence)}
    headers.update(trace_headers(event))
    return headers


def publish_span(
    tracer: Tracer, options: RelayOptions, item: SequencedEvent, headers: dict[str, str]
) -> Span | None:
    """Start the publish span of a traced event and put its context in `headers`; None,
    and `headers` untouched, for an event without a valid trace context."""
    event = item.event
    parent = tracing.context_of_traceparent(event.trace_context)
    if parent is None:
        return None
    span = tracer.start_span(
        f"publish {options.stream_name}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject_of(options.subject_prefix, event),
            "messaging.message.id": str(event.event_id),
            "ledger.sequence": item.sequence,
            "ledger.topic": event.topic,
        },
    )
    headers.update(tracing.headers_of(span))
    return span


def wire_of(item: SequencedEvent) -> bytes:
    event = item.event
    return _wire_encoder.encode(
        WireEvent(
            sequence=item.sequence,
            position=event.position,
            event_id=event.event_id,
            stream_id=event.stream_id,
            stream_type=event.stream_type,
            version=event.version,
            topic=event.topic,
            schema_version=event.schema_version,
            recorded_at=event.recorded_at,
            actor=event.actor,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=msgspec.Raw(event.data),
            hash=event.hash.hex(),
        )
    )


def stream_config(options: RelayOptions) -> StreamConfig:
    return StreamConfig(
        name=options.stream_name,
        subjects=[f"{options.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=options.stream_replicas,
        duplicate_window=options.duplicate_window_s,
    )


class Relay:
    """A relay process's loop: stand by, lead when the lock is free, start over on failure."""

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        options: RelayOptions | None = None,
        *,
        on_sequenced: Callable[[Batch], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.database_url = database_url
        self.nats_servers = [url.strip() for url in nats_url.split(",") if url.strip()]
        self.options = RelayOptions() if options is None else options
        self.on_sequenced = on_sequenced
        self.on_published = on_published
        provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
        self.tracer = provider.get_tracer("ledger.relay")
        self.leading = False
        self._wake = asyncio.Event()  # set by a NOTIFY on WAKE_CHANNEL
        self._sequenced = asyncio.Event()  # set by the sequencer after each batch
        self._publish_failures = 0  # consecutive ones, for the reconnection backoff

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until `stop` is set (or the task is cancelled): lead or stand by."""
        stop = asyncio.Event() if stop is None else stop
        stopping = asyncio.create_task(stop.wait())
        term: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                term = asyncio.create_task(self._term(), name="relay-term")
                await asyncio.wait({stopping, term}, return_when=asyncio.FIRST_COMPLETED)
                if not term.done():
                    break
                # A term only ends by an error: the database went away, or a conflict.
                log.warning("relay lost its connection or leadership: %r", term.exception())
                await asyncio.wait({stopping}, timeout=self.options.standby_retry_s)
        finally:
            stopping.cancel()
            if term is not None and not term.done():
                term.cancel()
                await asyncio.gather(term, return_exceptions=True)

    async def _term(self) -> None:
        """One connection's life: wait for the lock, then lead until something fails."""
        connection = await self._connect()
        try:
            await self._acquire(connection)
            await self._lead(connection)
        finally:
            await _close(connection)

    async def _connect(self) -> asyncpg.Connection:
        # Keepalives let PostgreSQL notice a vanished leader within seconds and release its
        # lock, rather than after the kernel's default of two hours.
        return await asyncpg.connect(
            self.database_url,
            timeout=self.options.connect_timeout_s,
            server_settings={
                "application_name": APPLICATION_NAME,
                "tcp_keepalives_idle": "5",
                "tcp_keepalives_interval": "2",
                "tcp_keepalives_count": "3",
            },
        )

    async def _acquire(self, connection: asyncpg.Connection) -> None:
        """Return once this connection holds the relay lock; until then, stand by."""
        while True:
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)",
                RELAY_LOCK_KEY,
                timeout=sequencer.STATEMENT_TIMEOUT_S,
            )
            if locked:
                return
            await asyncio.sleep(self.options.standby_retry_s)

    async def _lead(self, connection: asyncpg.Connection) -> None:
        """Sequence and publish until either fails; the other is then stopped too."""
        if self.options.listen:
            await connection.add_listener(WAKE_CHANNEL, self._on_notify)
        log.info("relay is leading (backend pid %s)", connection.get_server_pid())
        self.leading = True
        tasks = [
            asyncio.create_task(self._sequence(connection), name="relay-sequencer"),
            asyncio.create_task(self._publish(), name="relay-publisher"),
        ]
        try:
            # Both loops run until cancelled or failed, so this wait ends only by a failure.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self.leading = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _sequence(self, connection: asyncpg.Connection) -> None:
        """Number the committed log on the lock's own connection, batch by batch."""
        options = self.options
        cursor = await sequencer.load_cursor(connection)
        idle_s = 0.0
        while True:
            self._wake.clear()
            events = await sequencer.read_unsequenced(
                connection, cursor, limit=options.sequence_batch_max
            )
            if events:
                batch = sequencer.assign(cursor, events, digest_every=options.digest_every)
                await sequencer.record(connection, batch)
                cursor = batch.after
                self._sequenced.set()
                if self.on_sequenced is not None:
                    self.on_sequenced(batch)
                idle_s = 0.0
                if len(events) < options.sequence_batch_max:
                    # Busy: let the next batch gather for a moment. A wake-up does not cut
                    # this short, or every append would cost a batch of its own.
                    await asyncio.sleep(options.poll_busy_s)
            else:
                # Idle: back off, but a NOTIFY after a commit ends the wait at once.
                idle_s = min(max(idle_s * 2, options.poll_busy_s), options.poll_idle_s_max)
                await _wait(self._wake, idle_s)

    async def _publish(self) -> None:
        """Publish what is sequenced; on a NATS failure back off and reconnect, forever."""
        connection = await self._connect()
        try:
            while True:
                try:
                    await self._publish_over(connection, await self._connect_nats())
                except PublishError as error:
                    _stop_if_cancelled()
                    self._publish_failures = min(self._publish_failures + 1, 16)
                    delay_s = min(0.1 * 2**self._publish_failures, self.options.nats_retry_s_max)
                    log.warning("publishing paused (%s); retrying in %.1f s", error, delay_s)
                    await asyncio.sleep(delay_s)
        finally:
            await _close(connection)

    async def _connect_nats(self) -> NatsClient:
        async def quietly(error: Exception) -> None:
            log.debug("nats: %r", error)

        try:
            # No automatic reconnection: on any failure this loop reconnects by itself,
            # with a fresh JetStream context and nothing half-sent carried over. (In
            # nats-py 0 reconnect attempts means endless ones, even on the first connect;
            # 1 tries each server twice, back to back.)
            return await nats.connect(
                servers=self.nats_servers,
                name=APPLICATION_NAME,
                connect_timeout=max(1, round(self.options.connect_timeout_s)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=quietly,
            )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            raise PublishError(f"NATS is unreachable: {_described(error)}") from error

    async def _publish_over(self, connection: asyncpg.Connection, client: NatsClient) -> None:
        """Publish batches over one NATS connection until it fails (PublishError)."""
        options = self.options
        try:
            stream = client.jetstream(
                timeout=options.ack_timeout_s, publish_async_max_pending=options.in_flight_max
            )
            await _ensure_stream(stream, options)
            published: int = await connection.fetchval(
                "SELECT published FROM ledger.relay_state WHERE singleton",
                timeout=sequencer.STATEMENT_TIMEOUT_S,
            )
            while True:
                self._sequenced.clear()
                items = await sequencer.read_sequenced(
                    connection, after=published, limit=options.publish_batch_max
                )
                if not items:
                    await _wait(self._sequenced, options.poll_idle_s_max * 10)
                    continue
                await self._publish_batch(stream, items)
                published = items[-1].sequence
                await connection.execute(
                    "UPDATE ledger.relay_state SET published = $1, updated_at = now() "
                    "WHERE singleton AND published < $1",
                    published,
                    timeout=sequencer.STATEMENT_TIMEOUT_S,
                )
                self._publish_failures = 0
                if self.on_published is not None:
                    self.on_published(published)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=options.connect_timeout_s)

    async def _publish_batch(self, stream: JetStreamContext, items: list[SequencedEvent]) -> None:
        """Publish a batch, `in_flight_max` messages at a time; return once all are acked."""
        window = self.options.in_flight_max
        for start in range(0, len(items), window):
            await self._publish_window(stream, items[start : start + window])

    async def _publish_window(self, stream: JetStreamContext, items: list[SequencedEvent]) -> None:
        """Publish a window, each traced event in a publish span that ends with the window."""
        messages = [(item, headers_of(item)) for item in items]
        spans = [publish_span(self.tracer, self.options, *message) for message in messages]
        try:
            await self._publish_messages(stream, messages)
        except PublishError as error:
            for span in spans:
                if span is not None:
                    span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
        finally:
            for span in spans:
                if span is not None:
                    span.end()

    async def _publish_messages(
        self, stream: JetStreamContext, messages: list[tuple[SequencedEvent, dict[str, str]]]
    ) -> None:
        """Publish at most `in_flight_max` messages and wait, bounded, for every ack.

        The window never holds more than the context's in-flight maximum and the previous
        window's acks are all done, so publish_async never has to wait for a free slot; it
        then does not yield between messages, and nats-py writes the window to the socket
        in one go rather than once per message (catching up a backlog here: 6,700 events/s,
        against 3,400 with a stall timeout, whose wait_for yields at every message).
        """
        options = self.options
        assert len(messages) <= options.in_flight_max
        acks: list[asyncio.Future[PubAck]] = []
        try:
            # nats-py 2.16 can leave an ack future unresolved (an error reply it fails to
            # deliver), so the wait is bounded and a missing ack fails the whole batch.
            async with asyncio.timeout(options.ack_timeout_s):
                for item, headers in messages:
                    ack = await stream.publish_async(
                        subject_of(options.subject_prefix, item.event),
                        wire_of(item),
                        stream=options.stream_name,
                        headers=headers,
                    )
                    acks.append(ack)
                await asyncio.wait(acks)
            for ack in acks:
                ack.result()
        except TimeoutError as error:
            _stop_if_cancelled()
            missing = sum(not ack.done() for ack in acks) + len(messages) - len(acks)
            raise PublishError(
                f"{missing} of {len(messages)} acks missing after {options.ack_timeout_s} s"
            ) from error
        except (nats.errors.Error, OSError) as error:
            _stop_if_cancelled()
            raise PublishError(
                f"publishing to {options.stream_name} failed: {_described(error)}"
            ) from error
        finally:
            for ack in acks:
                if not ack.done():
                    ack.cancel()
                elif not ack.cancelled():
                    ack.exception()  # Retrieved, so asyncio does not log it as lost.


async def _ensure_stream(stream: JetStreamContext, options: RelayOptions) -> None:
    """Create the JetStream stream, or update it to this configuration if it differs.

    Any failure is a PublishError: JetStream without quorum, or a stream whose subjects
    overlap another's, pauses publishing but never stops the sequencer.
    """
    config = stream_config(options)
    try:
        try:
            await stream.add_stream(config)
        except nats.js.errors.BadRequestError as error:
            if error.err_code != STREAM_NAME_IN_USE:
                raise
            await stream.update_stream(config)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        _stop_if_cancelled()
        raise PublishError(
            f"stream {options.stream_name} cannot be set up: {_described(error)}"
        ) from error


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until the event is set or the timeout passes, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    _stop_if_cancelled()


def _described(error: BaseException) -> str:
    """The error's type and message (nats-py's errors have an empty repr)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _stop_if_cancelled() -> None:
    """Raise CancelledError if this task is being cancelled.

    nats-py's publish_async turns a cancellation into TooManyStalledMsgsError, which a loop
    that retries on errors would otherwise swallow, and the task would never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close(connection: asyncpg.Connection) -> None:
    try:
        await connection.close(timeout=2.0)
    except Exception:  # A connection that will not close in time is cut.
        connection.terminate()


class AppendNotifier:
    """Wakes the relay after appends have committed, without touching the appends.

    `appended()` is called after an append returns; it never blocks. One background
    task sends `NOTIFY ledger_appended` on its own, and appends made while one NOTIFY is
    in flight share the next, so a burst of appends costs a few NOTIFYs, not one each.
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 2.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def appended(self) -> None:
        self._pending.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="append-notifier")

    async def _send(self) -> None:
        while self._pending.is_set():
            self._pending.clear()
            try:
                await self.pool.execute(
                    "SELECT pg_notify($1, '')", WAKE_CHANNEL, timeout=self.timeout_s
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
                # Only a wake-up is lost: the relay's polling finds the events anyway.
                log.debug("relay wake-up not sent: %r", error)
                return

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def run_relay(
    database_url: str,
    nats_url: str,
    *,
    stream_name: str = "LEDGER",
    subject_prefix: str = "ledger",
    stop: asyncio.Event | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """`ledger relay`: lead or stand by until `stop` is set (or the task is cancelled)."""
    options = RelayOptions(stream_name=stream_name, subject_prefix=subject_prefix)
    await Relay(database_url, nats_url, options, tracer_provider=tracer_provider).run(stop)
