"""A large, valid log, fast: trading sessions decided in memory and written with COPY.

The sessions are projections/scenario.py's (real commands, real domain decisions), with
weights for a venue that has been running a while: few registrations and listings, many
orders, fills and deposits, and an order forgotten once it has ended. Loads come from
the Repository's cache (this process wrote every stream), so a step costs no query.

Each decision's events are numbered and hash-chained by the event store's own column
builder (`ledger.store._columns`, the one `EventStore.append` uses), so a row here is the
row `append` would have written, recorded_at and actor included. Rows go to ledger.events
with COPY, CHUNK_EVENTS at a time, each COPY its own transaction (its own tx), then the
relay's sequencer numbers them exactly as the leader does. `verify_stream` accepts every
stream and `sequencer.verify_range` the global chain: the benchmark checks a sample.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import asyncpg

from commands.reads import StreamReader
from commands.runtime import Repository, StreamCache
from ledger import sequencer, store
from ledger.domain import order
from ledger.store import (
    AppendedEvent,
    AppendResult,
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamHead,
)
from projections.scenario import Scenario

CHUNK_EVENTS: Final = 20_000
SEQUENCE_BATCH: Final = 10_000
DIGEST_EVERY: Final = 1_000
# Streams a long session keeps: every user, account, instrument, strategy and position,
# and the orders still open. Far more than a 1M-event session has.
STREAMS_MAX: Final = 2_000_000
SWEEP_EVERY_STEPS: Final = 1_000
YIELD_EVERY_STEPS: Final = 50

_COLUMNS: Final = (
    "originator_id", "stream_type", "originator_version", "topic", "state", "event_id",
    "schema_version", "prev_hash", "hash", "recorded_at", "actor", "correlation_id",
    "causation_id", "idempotency_key",
)  # fmt: skip


class MemoryLog(EventStore):
    """An EventStore whose append chains and buffers the rows instead of inserting them.

    Only what the Repository calls is supported: append with every stream's StreamHead.
    Other details of the request (a trace context) are not kept: these rows are appends
    made outside any traced request.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.appended = 0

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[UUID, Any],
        *,
        actor: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
        idempotency_key: str | None = None,
        fingerprint: bytes | None = None,
        connection: asyncpg.Connection | None = None,
        **context: Any,  # Whatever else a caller passes about the request (trace context).
    ) -> AppendResult:
        assert idempotency_key is None
        assert connection is None
        heads = dict(expected)
        assert all(isinstance(head, StreamHead) for head in heads.values())
        recorded_at = datetime.now(UTC)
        metadata = [recorded_at, actor, correlation_id, causation_id, None]
        columns = store._columns(events, heads, metadata)
        appended = []
        for index in range(len(events)):
            stream_id, stream_type, version, topic, state, event_id, schema, prev, hash_ = (
                column[index] for column in columns[:9]
            )
            self.rows.append(
                (stream_id, stream_type, version, topic, state, event_id, schema, prev, hash_,
                 recorded_at, actor, correlation_id, causation_id, None)
            )  # fmt: skip
            self.appended += 1
            appended.append(AppendedEvent(stream_id, version, self.appended, 0, hash_))
        return AppendResult(appended, replayed=False)


class _CacheOnly(StreamReader):
    """Nothing to read: every stream's state is in the Repository's cache."""

    async def read_after(self, after: Mapping[UUID, int]) -> list[RecordedEvent]:
        return []


class LongSession(Scenario):
    """A session weighed like a venue in its stride; ended orders are forgotten."""

    WEIGHTS = (
        (0.6, "register_user"), (0.8, "open_account"), (6, "deposit"), (1, "withdraw"),
        (1, "charge_fee"), (0.08, "list_instrument"), (0.3, "halt_or_resume"),
        (0.5, "user_change"), (1, "strategy_change"), (4, "emit_signal"),
        (16, "place_order"), (16, "fill_order"), (3, "end_order"),
    )  # fmt: skip

    def __init__(self, log: MemoryLog, seed: int) -> None:
        cache = StreamCache(STREAMS_MAX)
        repository = Repository(log, cache, _CacheOnly(log))
        super().__init__(log, seed, tag=f"bulk{seed}", repository=repository)
        self.cache = cache
        self.steps = 0

    async def step(self) -> None:
        await super().step()
        self.steps += 1
        if self.steps % SWEEP_EVERY_STEPS == 0:
            self._forget_ended()

    def _forget_ended(self) -> None:
        ended = [
            order_id
            for order_id in self.orders
            if not self.repository.cached_state(order_id, order.STREAM_TYPE).status.open
        ]
        for order_id in ended:
            del self.orders[order_id]
        self.cache.forget(ended)


async def generate(url: str, events: int, *, processes: int = 2, seed: int = 1) -> int:
    """Append at least `events` events to the database's log, from `processes` sessions
    decided in parallel (each its own seed and tag), then sequence them; return the head."""
    assert processes >= 1, processes
    shares = [events // processes + (1 if index < events % processes else 0)
              for index in range(processes)]  # fmt: skip
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, _generate_part, url, share, seed + index)
                for index, share in enumerate(shares)
            )
        )
    connection = await asyncpg.connect(url)
    try:
        return await sequence_all(connection)
    finally:
        await connection.close()


def _generate_part(url: str, events: int, seed: int) -> int:
    return asyncio.run(append_session(url, events, seed))


async def append_session(url: str, events: int, seed: int) -> int:
    """Append `events` events of one session (not sequenced); return how many."""
    log = MemoryLog()
    session = LongSession(log, seed)
    connection = await asyncpg.connect(url)
    try:
        writing: asyncio.Task[None] | None = None
        written = 0
        while written < events:
            while len(log.rows) < CHUNK_EVENTS and written + len(log.rows) < events:
                await session.step()
                if session.steps % YIELD_EVERY_STEPS == 0:
                    await asyncio.sleep(0)  # The previous chunk's COPY runs meanwhile.
            chunk, log.rows = log.rows, []
            if writing is not None:
                await writing
            writing = asyncio.create_task(_copy(connection, chunk))
            written += len(chunk)
        if writing is not None:
            await writing
        return written
    finally:
        await connection.close()


async def _copy(connection: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    await connection.copy_records_to_table(
        "events", schema_name="ledger", records=rows, columns=_COLUMNS
    )


async def sequence_all(connection: asyncpg.Connection) -> int:
    """Number every committed event as the relay's leader does; return the head."""
    cursor = await sequencer.load_cursor(connection)
    while events := await sequencer.read_unsequenced(connection, cursor, limit=SEQUENCE_BATCH):
        batch = sequencer.assign(cursor, events, digest_every=DIGEST_EVERY)
        await sequencer.record(connection, batch)
        cursor = batch.after
    return cursor.sequence
