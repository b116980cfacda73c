"""The event store on asyncpg: append, read a stream, follow the whole log in commit order.

An append is one INSERT statement, and so one round trip and its own transaction. The
caller names each stream's head (version and hash, known from loading it); the store
extends each stream's hash chain in Python and the statement inserts only if every head
is still the stream's last event. There is no table lock and no NOTIFY in the append
path; readers of the whole log get commit order from the writing transaction id
instead (read_committed). See docs/adr/0002-append-path.md for the measurements.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg
import msgspec

from ledger import chain
from ledger.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventEncodingError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidAppendError,
    StreamNotFoundError,
)
from ledger.group_commit import STATEMENTS_MAX_DEFAULT, GroupCommit, PendingAppend

EVENT_SIZE_BYTES_MAX: Final = 256 * 1024
APPEND_EVENTS_MAX: Final = 1_000
READ_BATCH_MAX: Final = 10_000
STREAM_READ_BATCH: Final = 1_000
# Appends of more events than this never share a statement: their own is already a
# batch, and sharing measured more CPU per event (docs/adr/0012-group-commit.md).
GROUP_EVENTS_MAX: Final = 10


_encoder = msgspec.json.Encoder(decimal_format="string")


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append: its payload is any msgspec-encodable value (usually a Struct)."""

    stream_id: UUID
    stream_type: str
    topic: str
    data: Any
    schema_version: int = 1
    event_id: UUID = msgspec.field(default_factory=uuid4)


class Checkpoint(msgspec.Struct, frozen=True, order=True):
    """A place in the committed log: (writing transaction id, position). Start at ZERO."""

    tx: int
    position: int


ZERO = Checkpoint(0, 0)


class StreamHead(msgspec.Struct, frozen=True):
    """A stream's last event as a writer saw it: its version and its chain hash."""

    version: int
    hash: bytes


NEW_STREAM = StreamHead(0, chain.GENESIS)

# What an append expects of each stream: its head, or only its version (0 = new stream),
# in which case the store reads the head hash first, at the cost of one more round trip.
Expected = StreamHead | int


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as stored, with all its metadata and its link in the stream's hash chain."""

    position: int
    tx: int
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
    idempotency_key: str | None
    data: bytes
    prev_hash: bytes
    hash: bytes
    # The W3C traceparent of the request that appended it (migration 0005); not chained.
    trace_context: str | None = None

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tx, self.position)

    def decode(self, type_: type[Any]) -> Any:
        return msgspec.json.decode(self.data, type=type_)


class AppendedEvent(msgspec.Struct, frozen=True):
    stream_id: UUID
    version: int
    position: int
    tx: int
    hash: bytes


class AppendResult(msgspec.Struct, frozen=True):
    """What an append wrote; `replayed` when an idempotency key returned a first result."""

    events: list[AppendedEvent]
    replayed: bool

    @property
    def token(self) -> Checkpoint:
        """The consistency token of the append: its last event's (tx, position)."""
        return max(Checkpoint(event.tx, event.position) for event in self.events)

    def head_of(self, stream_id: UUID) -> StreamHead:
        """The stream's head after this append, for the writer's next append."""
        last = max(
            (event for event in self.events if event.stream_id == stream_id),
            key=lambda event: event.version,
        )
        return StreamHead(last.version, last.hash)


_EVENT_COLUMNS: Final = (
    "notification_id AS position, tx, event_id, originator_id AS stream_id, stream_type, "
    "originator_version AS version, topic, schema_version, recorded_at, actor, "
    "correlation_id, causation_id, idempotency_key, state AS data, prev_hash, hash, trace_context"
)

_INPUT_CTE: Final = """
input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[],
                         $6::uuid[], $7::integer[], $8::bytea[], $9::bytea[], $10::boolean[])
        AS i (stream_id, stream_type, version, topic, state, event_id, schema_version,
              prev_hash, hash, first_of_stream)
),
-- A stream whose head is not the one the writer named: the whole append is off.
-- LATERAL with LIMIT keeps it one index probe per stream whatever the statistics say
-- (see ledger/group_commit.py: a join planned on a small table hashed all of it).
stale AS (
    SELECT 1 FROM input i
    LEFT JOIN LATERAL (
        SELECT p.hash FROM ledger.events p
        WHERE p.originator_id = i.stream_id AND p.originator_version = i.version - 1
        LIMIT 1) AS p ON true
    WHERE i.first_of_stream AND i.version > 1 AND p.hash IS DISTINCT FROM i.prev_hash
    LIMIT 1
)"""

_INSERT: Final = """
INSERT INTO ledger.events (
    originator_id, stream_type, originator_version, topic, state, event_id, schema_version,
    prev_hash, hash, recorded_at, actor, correlation_id, causation_id, idempotency_key,
    trace_context)
SELECT i.stream_id, i.stream_type, i.version, i.topic, i.state, i.event_id, i.schema_version,
       i.prev_hash, i.hash, $11, $12, $13, $14, $15, $16
FROM input i"""

_RETURNING: Final = " RETURNING originator_id, originator_version, notification_id, tx, hash"

_APPEND_SQL: Final = (
    f"WITH {_INPUT_CTE} {_INSERT} WHERE NOT EXISTS (SELECT 1 FROM stale) {_RETURNING}"
)

# With an idempotency key the key row is claimed first; a concurrent claim of the same key
# waits for the first to end. The events go in only if this statement claimed the key.
_APPEND_WITH_KEY_SQL: Final = f"""
WITH {_INPUT_CTE},
claimed AS (
    INSERT INTO ledger.idempotency_keys (key, fingerprint, recorded_at)
    SELECT $15, $17, $11 WHERE NOT EXISTS (SELECT 1 FROM stale)
    ON CONFLICT (key) DO NOTHING
    RETURNING key
)
{_INSERT} WHERE EXISTS (SELECT 1 FROM claimed) {_RETURNING}"""

# The common case, one event without an idempotency key, as a plain single-row INSERT:
# measured 1.6x the throughput of the unnest statement above at 16 writers.
_APPEND_ONE_SQL: Final = """
INSERT INTO ledger.events (
    originator_id, stream_type, originator_version, topic, state, event_id, schema_version,
    prev_hash, hash, recorded_at, actor, correlation_id, causation_id, trace_context)
SELECT $1::uuid, $2, $3::bigint, $4, $5, $6, $7, $8::bytea, $9, $10, $11, $12, $13, $14
WHERE $3::bigint = 1 OR EXISTS (
    SELECT 1 FROM ledger.events p
    WHERE p.originator_id = $1::uuid AND p.originator_version = $3::bigint - 1
      AND p.hash = $8::bytea)
RETURNING originator_id, originator_version, notification_id, tx, hash"""

_REPLAY_SQL: Final = (
    "SELECT originator_id, originator_version, notification_id, tx, hash FROM ledger.events "
    "WHERE idempotency_key = $1 ORDER BY notification_id"
)

_HEADS_SQL: Final = (
    "SELECT originator_id, hash FROM ledger.events "
    "WHERE (originator_id, originator_version) IN "
    "(SELECT * FROM unnest($1::uuid[], $2::bigint[]))"
)

_READ_STREAM_SQL: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM ledger.events "
    "WHERE originator_id = $1 AND originator_version > $2 AND originator_version <= $3 "
    "ORDER BY originator_version LIMIT $4"
)

# LATERAL makes it one index range scan per stream whatever the statistics say: as a
# plain join ordered by (stream, version), a generic plan made while the table was small
# merge-joined the whole index, and every load grew with the log (3 ms at 14k events).
_READ_STREAMS_AFTER_SQL: Final = (
    "SELECT e.* FROM unnest($1::uuid[], $2::bigint[]) AS w (id, after) "
    f"CROSS JOIN LATERAL (SELECT {_EVENT_COLUMNS} FROM ledger.events "
    "WHERE originator_id = w.id AND originator_version > w.after "
    "ORDER BY originator_version LIMIT $3) AS e "
    "ORDER BY e.stream_id, e.version LIMIT $3"
)

# Only transactions below the snapshot's xmin have all ended, so no row can still
# appear among them: following (tx, position) from a checkpoint never skips one.
_READ_COMMITTED_SQL: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM ledger.events "
    "WHERE (tx, notification_id) > ($1::xid8, $2) "
    "AND tx < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY tx, notification_id LIMIT $3"
)


def encode(data: Any, topic: str) -> bytes:
    """The stored form of a payload: compact JSON, decimals as strings."""
    try:
        state = _encoder.encode(data)
    except (TypeError, ValueError, OverflowError) as error:
        raise EventEncodingError(f"{topic} payload cannot be encoded: {error}") from error
    if len(state) > EVENT_SIZE_BYTES_MAX:
        raise EventTooLargeError(topic, len(state), EVENT_SIZE_BYTES_MAX)
    return state


def _record(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        tx=row["tx"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        stream_type=row["stream_type"],
        version=row["version"],
        topic=row["topic"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        actor=row["actor"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        idempotency_key=row["idempotency_key"],
        data=bytes(row["data"]),
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
        trace_context=row["trace_context"],
    )


class EventStore:
    """Append to and read from ledger.events through an asyncpg pool the caller owns."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        group_commit: bool = True,
        statements_max: int = STATEMENTS_MAX_DEFAULT,
    ) -> None:
        """`group_commit`: appends made while `statements_max` others are in flight share
        statements (ledger/group_commit.py); off, every append is a statement of its own."""
        self.pool = pool
        self._group = GroupCommit(pool, statements_max=statements_max) if group_commit else None

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[UUID, Expected],
        *,
        actor: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
        idempotency_key: str | None = None,
        fingerprint: bytes | None = None,
        connection: asyncpg.Connection | None = None,
        trace_context: str | None = None,
    ) -> AppendResult:
        """Append events to one or more streams in one transaction.

        `expected` names, for every stream touched, the head it must have now: a
        StreamHead, or a version alone (0 for a new stream). All or nothing: any
        conflict appends no event. On its own the append is one statement and so its
        own transaction; given a connection inside a transaction, it joins that one.
        `trace_context` (a W3C traceparent) is stored on every event, outside the chain.
        """
        executor = self.pool if connection is None else connection
        heads = await self._heads(executor, events, expected)
        recorded_at = datetime.now(UTC)
        metadata = [recorded_at, actor, correlation_id, causation_id, idempotency_key]
        columns = _columns(events, heads, metadata)
        arguments: list[Any]
        if idempotency_key is not None:
            sql, arguments = _APPEND_WITH_KEY_SQL, [*columns, *metadata, trace_context, fingerprint]
        elif len(events) == 1:
            # One event is the first of its stream's batch: no $10 column.
            sql, arguments = _APPEND_ONE_SQL, [column[0] for column in columns[:9]]
            arguments += [*metadata[:4], trace_context]
        else:
            sql, arguments = _APPEND_SQL, [*columns, *metadata, trace_context]
        try:
            if (
                self._group is not None
                and connection is None
                and idempotency_key is None
                and len(events) <= GROUP_EVENTS_MAX
            ):
                pending = PendingAppend(
                    sql, arguments, _rows(columns, metadata, trace_context), set(heads)
                )
                rows = await self._group.run(pending)
            else:
                rows = await executor.fetch(sql, *arguments)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "events_event_id_key":
                raise DuplicateEventError(str(error)) from error
            raise await self._conflict(events, heads) from error
        if rows:
            return AppendResult(_appended(rows), replayed=False)
        if idempotency_key is not None:
            replayed = await self._replay(executor, idempotency_key, fingerprint)
            if replayed is not None:
                return replayed
        raise await self._conflict(events, heads)

    async def _heads(
        self,
        executor: asyncpg.Pool | asyncpg.Connection,
        events: Sequence[NewEvent],
        expected: Mapping[UUID, Expected],
    ) -> dict[UUID, StreamHead]:
        """Every touched stream's head; the hashes not given are read in one query."""
        if not events:
            raise InvalidAppendError("an append needs at least one event")
        if len(events) > APPEND_EVENTS_MAX:
            raise InvalidAppendError(
                f"{len(events)} events in one append; the cap is {APPEND_EVENTS_MAX}"
            )
        touched = dict.fromkeys(event.stream_id for event in events)
        missing = touched.keys() - expected.keys()
        if missing:
            raise InvalidAppendError(f"no expected version for streams {sorted(map(str, missing))}")
        heads: dict[UUID, StreamHead] = {}
        unknown: dict[UUID, int] = {}
        for stream_id in touched:
            given = expected[stream_id]
            if isinstance(given, StreamHead):
                heads[stream_id] = given
            elif given == 0:
                heads[stream_id] = NEW_STREAM
            elif given > 0:
                unknown[stream_id] = given
            else:
                raise InvalidAppendError(f"expected version of {stream_id} is negative")
        if unknown:
            rows = await executor.fetch(_HEADS_SQL, list(unknown), list(unknown.values()))
            found = {row[0]: bytes(row[1]) for row in rows}
            for stream_id, version in unknown.items():
                if stream_id not in found:
                    raise ConcurrencyError(stream_id, version, await self.stream_version(stream_id))
                heads[stream_id] = StreamHead(version, found[stream_id])
        return heads

    async def replay(self, idempotency_key: str, fingerprint: bytes | None) -> AppendResult | None:
        """The first result of an idempotency key, for a retry that has nothing to append
        (its decision is now refused or empty); None if the key was never used.

        Raises IdempotencyConflictError when the key was used with another fingerprint.
        """
        return await self._replay(self.pool, idempotency_key, fingerprint)

    async def _replay(
        self,
        executor: asyncpg.Pool | asyncpg.Connection,
        idempotency_key: str,
        fingerprint: bytes | None,
    ) -> AppendResult | None:
        """The first result for a key seen before; None if the key is unknown."""
        known = await executor.fetchrow(
            "SELECT fingerprint FROM ledger.idempotency_keys WHERE key = $1", idempotency_key
        )
        if known is None:
            return None
        if (None if known[0] is None else bytes(known[0])) != fingerprint:
            raise IdempotencyConflictError(idempotency_key)
        rows = await executor.fetch(_REPLAY_SQL, idempotency_key)
        return AppendResult(_appended(rows), replayed=True)

    async def _conflict(
        self, events: Sequence[NewEvent], heads: Mapping[UUID, StreamHead]
    ) -> ConcurrencyError:
        """Name the first stream whose version is not the one expected, with both values."""
        for stream_id in dict.fromkeys(event.stream_id for event in events):
            actual = await self.stream_version(stream_id)
            if actual != heads[stream_id].version:
                return ConcurrencyError(stream_id, heads[stream_id].version, actual)
        # Versions match but a named head hash does not: the writer's head is not this one.
        first = events[0].stream_id
        return ConcurrencyError(first, heads[first].version, heads[first].version)

    async def stream_version(self, stream_id: UUID) -> int:
        """The stream's current version; 0 when it has no events."""
        version = await self.pool.fetchval(
            "SELECT coalesce(max(originator_version), 0) FROM ledger.events "
            "WHERE originator_id = $1",
            stream_id,
        )
        return int(version)

    async def read_stream(
        self, stream_id: UUID, *, up_to_version: int | None = None, after_version: int = 0
    ) -> list[RecordedEvent]:
        """The stream's events in version order, up to a version if given.

        Raises StreamNotFoundError when the stream has no events at all.
        """
        last = up_to_version if up_to_version is not None else 2**62
        found: list[RecordedEvent] = []
        while True:
            rows = await self.pool.fetch(
                _READ_STREAM_SQL, stream_id, after_version, last, STREAM_READ_BATCH
            )
            found.extend(_record(row) for row in rows)
            if len(rows) < STREAM_READ_BATCH:
                break
            after_version = found[-1].version
        if not found and await self.stream_version(stream_id) == 0:
            raise StreamNotFoundError(stream_id)
        return found

    async def read_streams_after(self, after_versions: Mapping[UUID, int]) -> list[RecordedEvent]:
        """The events of several streams past the versions given, in one query per batch,
        grouped by stream in version order. A stream with no such events yields none."""
        found: list[RecordedEvent] = []
        wanted = dict(after_versions)
        while wanted:
            rows = await self.pool.fetch(
                _READ_STREAMS_AFTER_SQL, list(wanted), list(wanted.values()), READ_BATCH_MAX
            )
            batch = [_record(row) for row in rows]
            found.extend(batch)
            if len(rows) < READ_BATCH_MAX:
                break
            # Streams the batch reached the end of are done; the last one may have more.
            last = batch[-1]
            wanted = {
                stream_id: version
                for stream_id, version in wanted.items()
                if stream_id.bytes >= last.stream_id.bytes
            }
            wanted[last.stream_id] = last.version
        return found

    async def read_committed(
        self, after: Checkpoint = ZERO, *, limit: int = 1_000
    ) -> list[RecordedEvent]:
        """The next events of the whole log in commit order, after a checkpoint.

        Rows of transactions still running, or that started before one still running,
        are held back until it ends, so a reader that moves its checkpoint to the last
        event returned never skips an event that commits later.
        """
        assert 1 <= limit <= READ_BATCH_MAX, limit
        rows = await self.pool.fetch(_READ_COMMITTED_SQL, after.tx, after.position, limit)
        return [_record(row) for row in rows]

    async def last_checkpoint(self) -> Checkpoint:
        """The checkpoint of the last event a committed-order reader can see now."""
        row = await self.pool.fetchrow(
            "SELECT tx, notification_id FROM ledger.events "
            "WHERE tx < pg_snapshot_xmin(pg_current_snapshot()) "
            "ORDER BY tx DESC, notification_id DESC LIMIT 1"
        )
        return ZERO if row is None else Checkpoint(row[0], row[1])

    async def follow(
        self, after: Checkpoint = ZERO, *, batch: int = 1_000
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Batches of the committed log from a checkpoint until the reader has caught up."""
        while True:
            events = await self.read_committed(after, limit=batch)
            if not events:
                return
            yield events
            after = events[-1].checkpoint


def _columns(
    events: Sequence[NewEvent], heads: Mapping[UUID, StreamHead], metadata: list[Any]
) -> list[list[Any]]:
    """The arrays the append statement unnests: versions numbered, payloads encoded, and
    each stream's chain extended from its head."""
    recorded_at, actor, correlation_id, causation_id, idempotency_key = metadata
    tips = dict(heads)
    columns: list[list[Any]] = [[] for _ in range(10)]
    digester = chain.Digester(recorded_at, actor, correlation_id, causation_id, idempotency_key)
    for event in events:
        tip = tips[event.stream_id]
        version = tip.version + 1
        state = encode(event.data, event.topic)
        digest = digester.digest(
            event.event_id,
            event.stream_id,
            event.stream_type,
            version,
            event.topic,
            event.schema_version,
            state,
        )
        event_hash = chain.link(tip.hash, digest)
        values = (
            event.stream_id,
            event.stream_type,
            version,
            event.topic,
            state,
            event.event_id,
            event.schema_version,
            tip.hash,
            event_hash,
            tip is heads[event.stream_id],
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        tips[event.stream_id] = StreamHead(version, event_hash)
    return columns


def _rows(
    columns: list[list[Any]], metadata: list[Any], trace_context: str | None
) -> list[tuple[Any, ...]]:
    """Per event, the columns of a shared append statement (ledger/group_commit.py)."""
    recorded_at, actor, correlation_id, causation_id, _ = metadata
    return [
        (*event, recorded_at, actor, correlation_id, causation_id, trace_context)
        for event in zip(*columns, strict=True)
    ]


def _appended(rows: list[asyncpg.Record]) -> list[AppendedEvent]:
    appended = [AppendedEvent(row[0], row[1], row[2], row[3], bytes(row[4])) for row in rows]
    appended.sort(key=lambda event: event.position)
    return appended


def fingerprint_of(body: bytes) -> bytes:
    """A request fingerprint for idempotency: same key and same body replay, else conflict."""
    return hashlib.sha256(body).digest()


async def verify_stream(store: EventStore, stream_id: UUID) -> chain.Verification:
    """Recompute a stream's hash chain from the stored bytes; report the first break."""
    return chain.verify_chain(stream_id, await store.read_stream(stream_id))


async def verify_stream_range(
    store: EventStore, stream_id: UUID, *, first_version: int, limit: int
) -> chain.Verification:
    """Recompute versions first_version .. first_version + limit - 1 of a stream's chain.

    The stored hash of version first_version - 1 is the starting point (see
    `chain.verify_chain`). Raises StreamNotFoundError when the stream has no events.
    """
    assert first_version >= 1, first_version
    assert 1 <= limit <= READ_BATCH_MAX, limit
    anchor_version = first_version - 1
    events = await store.read_stream(
        stream_id,
        after_version=max(anchor_version - 1, 0),
        up_to_version=anchor_version + limit,
    )
    if anchor_version == 0:
        return chain.verify_chain(stream_id, events)
    if not events:
        return chain.Verification(stream_id, 0, None)  # The stream ends before the range.
    anchor, rest = events[0], events[1:]
    if anchor.version != anchor_version:
        missing = chain.Break(
            anchor_version, anchor.position, f"version {anchor_version} is missing"
        )
        return chain.Verification(stream_id, 0, missing)
    return chain.verify_chain(
        stream_id, rest, first_version=first_version, previous_hash=anchor.hash
    )
