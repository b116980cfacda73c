"""Group commit: concurrent appends that queue up share one statement and one commit.

At most `statements_max` append statements are in flight at once. An append that finds
them all busy waits in a queue; when a statement ends, the queue goes out as one
combined INSERT (up to `events_max` events), one round trip and one WAL flush for all of
them. A lone writer never waits: with a free slot its append runs at once, as its own
statement.

Each append in a shared statement stays all-or-nothing and keeps its own result: the
statement inserts an append's events only if every head it names is still its stream's
last event, so a stale append inserts nothing and the others go in. Two appends to one
stream never share a statement (the later waits for the next). If the shared statement
fails as a whole (a unique violation from a concurrent writer, a duplicate event id),
each of its appends is retried on its own, so each caller gets exactly the outcome, or
the error, it would have had alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Final
from uuid import UUID

import asyncpg

STATEMENTS_MAX_DEFAULT: Final = 4
EVENTS_MAX_DEFAULT: Final = 1_000

logger = logging.getLogger(__name__)

# One row per event: (request, stream_id, stream_type, version, topic, state, event_id,
# schema_version, prev_hash, hash, first_of_stream, recorded_at, actor, correlation_id,
# causation_id, trace_context). An append is refused when a stream it touches does not
# have the head it names (its previous event and hash), or already has the version it
# would write.
_SHARED_APPEND_SQL: Final = """
WITH input AS (
    SELECT * FROM unnest($1::integer[], $2::uuid[], $3::text[], $4::bigint[], $5::text[],
                         $6::bytea[], $7::uuid[], $8::integer[], $9::bytea[], $10::bytea[],
                         $11::boolean[], $12::timestamptz[], $13::text[], $14::uuid[],
                         $15::uuid[], $16::text[]) WITH ORDINALITY
        AS i (request, stream_id, stream_type, version, topic, state, event_id,
              schema_version, prev_hash, hash, first_of_stream, recorded_at, actor,
              correlation_id, causation_id, trace_context, ordinal)
),
refused AS (
    -- LATERAL with LIMIT: one index probe per stream whatever the table's statistics say
    -- (as EXISTS sublinks, a generic plan made while the table was small hashed the whole
    -- table on every execution; measured 11 -> 65 ms per statement as it grew to 14k rows).
    SELECT DISTINCT i.request FROM input i
    LEFT JOIN LATERAL (
        SELECT p.hash FROM ledger.events p
        WHERE p.originator_id = i.stream_id AND p.originator_version = i.version - 1
        LIMIT 1) AS head ON true
    LEFT JOIN LATERAL (
        SELECT 1 AS taken FROM ledger.events n
        WHERE n.originator_id = i.stream_id AND n.originator_version = i.version
        LIMIT 1) AS next ON true
    WHERE i.first_of_stream
      AND ((i.version > 1 AND head.hash IS DISTINCT FROM i.prev_hash) OR next.taken = 1)
)
INSERT INTO ledger.events (
    originator_id, stream_type, originator_version, topic, state, event_id, schema_version,
    prev_hash, hash, recorded_at, actor, correlation_id, causation_id, trace_context)
SELECT i.stream_id, i.stream_type, i.version, i.topic, i.state, i.event_id,
       i.schema_version, i.prev_hash, i.hash, i.recorded_at, i.actor, i.correlation_id,
       i.causation_id, i.trace_context
FROM input i
WHERE NOT EXISTS (SELECT 1 FROM refused r WHERE r.request = i.request)
ORDER BY i.ordinal
RETURNING originator_id, originator_version, notification_id, tx, hash"""

_COLUMNS: Final = 16
# Where the event's hash is in a PendingAppend's row (the statement's columns less
# `request`), and in a row the statement returns.
_HASH: Final = 8
_HASH_RETURNED: Final = 4


class PendingAppend:
    """One append: its own statement, and its rows for a shared one.

    `rows` holds one tuple per event, every column of _SHARED_APPEND_SQL but `request`.
    """

    __slots__ = ("arguments", "future", "rows", "sql", "streams")

    def __init__(
        self, sql: str, arguments: Sequence[Any], rows: list[tuple[Any, ...]], streams: set[UUID]
    ) -> None:
        self.sql, self.arguments, self.rows, self.streams = sql, arguments, rows, streams
        self.future: asyncio.Future[list[asyncpg.Record]] | None = None


class GroupCommit:
    """Runs appends on a pool, at most `statements_max` statements at once, the queue
    of the rest combined into shared statements."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        statements_max: int = STATEMENTS_MAX_DEFAULT,
        events_max: int = EVENTS_MAX_DEFAULT,
    ) -> None:
        if statements_max < 1 or events_max < 1:
            raise ValueError("statements_max and events_max must be at least 1")
        self._pool = pool
        self._statements_max, self._events_max = statements_max, events_max
        self._in_flight = 0
        self._queue: deque[PendingAppend] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, append: PendingAppend) -> list[asyncpg.Record]:
        """The rows the append inserted (none when a head it names is stale).

        Raises what its own statement would raise (asyncpg errors included).
        """
        if self._in_flight < self._statements_max and not self._queue:
            self._in_flight += 1
            try:
                return await self._alone(append)
            finally:
                self._in_flight -= 1
                self._dispatch()
        append.future = asyncio.get_running_loop().create_future()
        self._queue.append(append)
        self._dispatch()
        return await append.future

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._statements_max:
            batch = self._take()
            self._in_flight += 1
            task = asyncio.create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[PendingAppend]:
        """The next appends from the queue that can share a statement, in queue order:
        no two touch one stream, and their events fit in `events_max`."""
        batch: list[PendingAppend] = []
        streams: set[UUID] = set()
        events = 0
        deferred: list[PendingAppend] = []
        while self._queue:
            append = self._queue.popleft()
            fits = events + len(append.rows) <= self._events_max or not batch
            if fits and streams.isdisjoint(append.streams):
                batch.append(append)
                streams |= append.streams
                events += len(append.rows)
            else:
                deferred.append(append)
                if not fits:
                    break
        self._queue.extendleft(reversed(deferred))
        return batch

    async def _run_batch(self, batch: list[PendingAppend]) -> None:
        try:
            if len(batch) == 1:
                await self._settle(batch[0], self._alone(batch[0]))
                return
            try:
                rows = await self._pool.fetch(_SHARED_APPEND_SQL, *_arguments(batch))
            except asyncpg.PostgresError:
                # One append spoilt the statement for all: each tries again on its own.
                await asyncio.gather(*(self._settle(a, self._alone(a)) for a in batch))
                return
            except Exception as error:
                # The connection failed: every caller gets the error it would have had.
                for append in batch:
                    _fail(append, error)
                return
            except asyncio.CancelledError as error:
                for append in batch:
                    _fail(append, error)
                raise
            # Each event's hash names it (sha-256 over its stream, version and body): a
            # dict of bytes, not of asyncpg's UUIDs, whose hashing and comparison with
            # the uuid module's showed in profiles.
            by_hash: dict[bytes, asyncpg.Record] = {row[_HASH_RETURNED]: row for row in rows}
            for append in batch:
                mine = [found for row in append.rows if (found := by_hash.get(row[_HASH]))]
                _succeed(append, mine)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _alone(self, append: PendingAppend) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(append.sql, *append.arguments)
        return rows

    @staticmethod
    async def _settle(append: PendingAppend, outcome: Any) -> None:
        try:
            rows = await outcome
        except BaseException as error:
            _fail(append, error)
            if not isinstance(error, Exception):
                raise
            return
        _succeed(append, rows)


def _succeed(append: PendingAppend, rows: list[asyncpg.Record]) -> None:
    if append.future is not None and not append.future.done():
        append.future.set_result(rows)


def _fail(append: PendingAppend, error: BaseException) -> None:
    if append.future is not None and not append.future.done():
        if isinstance(error, asyncio.CancelledError):
            append.future.cancel()
        else:
            append.future.set_exception(error)


def _arguments(batch: list[PendingAppend]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(_COLUMNS)]
    for request, append in enumerate(batch):
        for row in append.rows:
            columns[0].append(request)
            for column, value in zip(columns[1:], row, strict=True):
                column.append(value)
    return columns
