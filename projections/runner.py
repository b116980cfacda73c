"""One projection inside a worker process: its lead, its catch-up from the log, its batches.

The process's consumer (projections/worker.py) fetches and decodes each message once and
hands every batch to the runner of each projection it selected. A runner applies batches
only while it leads its projection: it holds a PostgreSQL advisory lock per projection on
a pooled connection of its own, so processes with different selections split the
projections between them, one applying each at a time. A runner standing by ignores
batches and tries the lock again every standby_retry_s. On taking the lead it first
applies what the log holds past its checkpoint: the consumer's durable went past those
events while another process led the projection, or while it was parked, and is not
going back for them.

The consumer applies a batch for all its leading runners in one transaction
(projections/together.py; ADR 0015's addendum) and tells each runner what it reached
(`applied`). When that transaction fails, each runner applies the batch on its own
(`handle`) with apply_batch (rows and checkpoint in one transaction); events at or below
the checkpoint are skipped, and a batch that starts past checkpoint + 1 is preceded by
the missing events read from the log itself.

Failures: a connection or timeout error gives up the lead (and the connection); the
runner tries again after a capped backoff and catches up from the log. Any other error is
a poison candidate: the batch is re-applied event by event, each with `retries` of
backoff, and the first event that still fails is parked: its checkpoint row gets failing
= true, last_error and parked_sequence, the events before it stay applied, and the runner
gives up its lead for good in this process (the others go on). Nothing is skipped: the
next runner to lead it (a restart) starts from the checkpoint, tries the parked event
again, and clears the failing flag once it applies.

Tracing: a batch is one transaction for all the process's leading projections, but may
hold events of many traces (one per command that appended them). For each trace among
the events this projection handles, the batch gets a span `apply <projection>`: a child
of the message's `traceparent` (the relay's publish span), with links to that trace's
other messages in the batch; a batch of n traces has n such spans over the same
transaction (`ledger.batch.traces` says so, and `ledger.batch.projections` how many
projections shared it). Each ends when its projection's rows are committed (or not: then
with an error status, and `ledger.checkpoint` says how far it got). Messages without a
valid traceparent, and events caught up from the log, get no span. See
docs/adr/0009-tracing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import asyncpg
import msgspec
import nats.errors
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from ledger import tracing
from projections import source
from projections.base import STATEMENT_TIMEOUT_S, LoggedEvent, Projection
from projections.engine import Applied, SequenceGapError, apply_batch, read_checkpoint
from projections.together import closed

if TYPE_CHECKING:
    from projections.worker import WorkerOptions

WORKER_LOCK_CLASS: Final = 0x1ED6E8
LAST_ERROR_LENGTH_MAX: Final = 4_000
FAILURES_COUNTED_MAX: Final = 16
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


class Parked(msgspec.Struct, frozen=True):
    """A projection stopped on a poison event."""

    name: str
    sequence: int
    error: str


class Runner:
    """One projection's lead and batches, fed by its process's consumer."""

    def __init__(
        self,
        projection: Projection,
        pool: asyncpg.Pool,
        options: WorkerOptions,
        tracer: Tracer | None = None,
        *,
        durable: str = "",
    ) -> None:
        self.projection = projection
        self.tracer = trace.get_tracer(__name__) if tracer is None else tracer
        self.name = f"projection-{projection.name}"
        self.durable = durable
        self.pool = pool
        self.options = options
        self.parked: Parked | None = None
        self._connection: asyncpg.Connection | None = None
        self._leading = False
        self._next_try_s = 0.0
        self._failures = 0

    @property
    def leading(self) -> bool:
        """Whether batches handed to it are applied (it holds the lock and is not parked)."""
        return self._leading and self.parked is None

    @property
    def standing_by(self) -> bool:
        """Whether try_lead has anything to try (neither leading nor parked)."""
        return not self._leading and self.parked is None

    async def try_lead(self) -> None:
        """Take the projection's lock if it is free and its time has come; catch up from the
        log on taking it. A no-op while leading or parked, or until the next try is due."""
        now_s = asyncio.get_running_loop().time()
        if not self.standing_by or now_s < self._next_try_s:
            return
        self._next_try_s = now_s + self.options.standby_retry_s
        try:
            if self._connection is None:
                self._connection = await self.pool.acquire(timeout=self.options.connect_timeout_s)
            if await self._connection.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                WORKER_LOCK_CLASS,
                self.projection.name,
                timeout=STATEMENT_TIMEOUT_S,
            ):
                self._leading = True
                await self._catch_up(self._connection)
                if self.parked is not None:
                    await self.stand_down()
        except TRANSIENT as error:
            await self._failed(error)

    async def stand_down(self) -> None:
        """Give up the lead, if held, and the connection (the next try_lead takes them again)."""
        connection, self._connection, self._leading = self._connection, None, False
        if connection is None:
            return
        with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
            await connection.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                WORKER_LOCK_CLASS,
                self.projection.name,
                timeout=2.0,
            )
        # A broken connection is closed by the pool; its session's locks went with it.
        with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
            await self.pool.release(connection, timeout=2.0)

    async def confirm_lead(self) -> bool:
        """Whether it leads, noticing a lock connection that closed meanwhile (it sits idle
        while the consumer's connection applies the batches): then as after any lost
        connection, the lead is given up and tried again after a backoff."""
        connection = self._connection
        if self.leading and connection is not None and closed(connection):
            await self._failed(asyncpg.ConnectionDoesNotExistError("the lock's connection closed"))
        return self.leading

    def start_spans(
        self, messages: Sequence[Msg], events: Sequence[LoggedEvent], projections: int
    ) -> list[tuple[Span, int]]:
        """The batch's apply spans (see _apply_spans), before it is applied together with
        `projections - 1` others in one transaction (projections/together.py)."""
        spans = self._apply_spans(messages, events)
        for span, _ in spans:
            span.set_attribute("ledger.batch.projections", projections)
        return spans

    def applied(self, spans: Sequence[tuple[Span, int]], checkpoint: int) -> int:
        """The batch was applied (together with others) up to `checkpoint`: its spans end."""
        assert self.leading, self.name
        _end_applied(spans, checkpoint)
        self._failures = 0
        return checkpoint

    def failed_together(self, spans: Sequence[tuple[Span, int]], error: BaseException) -> None:
        """The batch's transaction with others failed and is not tried again here."""
        _end_failed(spans, error)

    async def handle(
        self,
        messages: Sequence[Msg],
        events: Sequence[LoggedEvent],
        spans: list[tuple[Span, int]] | None = None,
    ) -> int | None:
        """Apply a batch (events[i] decoded from messages[i]) if leading, in transactions of
        its own; the checkpoint reached, or None when the batch is not this runner's to hold
        back: standing by, parked on it, or the lead lost to a connection error (a later
        lead catches up). `spans`: those start_spans gave, when the batch failed together."""
        if not self.leading:
            if spans:
                _end_failed(spans, RuntimeError(f"{self.name} no longer leads"))
            return None
        connection = self._connection
        assert connection is not None
        spans = self._apply_spans(messages, events) if spans is None else spans
        try:
            checkpoint = await self._apply_isolating(connection, list(events))
        except TRANSIENT as error:
            _end_failed(spans, error)
            await self._failed(error)
            return None
        except BaseException as error:
            _end_failed(spans, error)
            raise
        _end_applied(spans, checkpoint)
        self._failures = 0
        if self.parked is not None:
            await self.stand_down()
            return None
        return checkpoint

    async def _failed(self, error: BaseException) -> None:
        """Give up the lead after a transient error; the next try after a capped backoff."""
        self._failures = min(self._failures + 1, FAILURES_COUNTED_MAX)
        delay_s = self._backoff_s(self._failures)
        log.warning("%s: %r; trying again in %.2fs", self.name, error, delay_s)
        await self.stand_down()
        self._next_try_s = asyncio.get_running_loop().time() + delay_s

    def _backoff_s(self, attempt: int) -> float:
        return min(self.options.backoff_base_s * 2.0**attempt, self.options.backoff_max_s)

    async def _catch_up(self, connection: asyncpg.Connection) -> None:
        """Apply what the log holds past the checkpoint, up to its head when the lead was
        taken (what comes after arrives in batches, or is filled as a gap)."""
        head = await source.head(connection)
        checkpoint = await read_checkpoint(connection, self.projection.name)
        while checkpoint < head and self.parked is None:
            events = await source.read_after(
                connection, checkpoint, up_to=head, limit=self.options.fetch_batch
            )
            reached = await self._apply_isolating(connection, events) if events else checkpoint
            if reached <= checkpoint:
                return  # Parked, or the log ended before its head (nothing to wait for here).
            checkpoint = reached

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
        """Mark the projection failing at `sequence` (in /ready and metrics) and stop it here."""
        await connection.execute(
            "INSERT INTO read.checkpoints AS c (projection, failing, last_error, parked_sequence) "
            "VALUES ($1, true, $2, $3) ON CONFLICT (projection) DO UPDATE SET failing = true, "
            "last_error = $2, parked_sequence = $3, updated_at = now()",
            self.projection.name,
            error[:LAST_ERROR_LENGTH_MAX],
            sequence,
            timeout=STATEMENT_TIMEOUT_S,
        )
        log.error("%s: parked at sequence %s: %s", self.name, sequence, error)
        self.parked = Parked(self.projection.name, sequence, error)


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
