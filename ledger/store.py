"""The event store on asyncpg: append, read a stream, follow the whole log in commit order.

Appends are one round trip: a single call of ledger.append_events, which runs as its
own transaction. There is no table lock and no NOTIFY in the append path; readers of
the whole log get commit order from the writing transaction id instead (read_committed).
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

EVENT_SIZE_BYTES_MAX: Final = 256 * 1024
APPEND_EVENTS_MAX: Final = 1_000
READ_BATCH_MAX: Final = 10_000
STREAM_READ_BATCH: Final = 1_000

SQLSTATE_STREAM_BEHIND: Final = "LG001"
SQLSTATE_IDEMPOTENCY_CONFLICT: Final = "LG003"

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


class AppendResult(msgspec.Struct, frozen=True):
    """What an append wrote; `replayed` when an idempotency key returned a first result."""

    events: list[AppendedEvent]
    replayed: bool

    @property
    def token(self) -> Checkpoint:
        """The consistency token of the append: its last event's (tx, position)."""
        return max(Checkpoint(event.tx, event.position) for event in self.events)

    def version_of(self, stream_id: UUID) -> int:
        return max(event.version for event in self.events if event.stream_id == stream_id)


_EVENT_COLUMNS: Final = (
    "notification_id AS position, tx, event_id, originator_id AS stream_id, stream_type, "
    "originator_version AS version, topic, schema_version, recorded_at, actor, "
    "correlation_id, causation_id, idempotency_key, state AS data, prev_hash, hash"
)

_APPEND_SQL: Final = (
    "SELECT event_position, event_tx, event_stream_id, event_version, replayed "
    "FROM ledger.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)

_READ_STREAM_SQL: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM ledger.events "
    "WHERE originator_id = $1 AND originator_version > $2 AND originator_version <= $3 "
    "ORDER BY originator_version LIMIT $4"
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
    )


class EventStore:
    """Append to and read from ledger.events through an asyncpg pool the caller owns."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def append(
        self,
        events: Sequence[NewEvent],
        expected_versions: Mapping[UUID, int],
        *,
        actor: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
        idempotency_key: str | None = None,
        fingerprint: bytes | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append events to one or more streams in one transaction.

        expected_versions names, for every stream touched, the version it must be at
        now (0 for a new stream). All or nothing: any conflict appends no event.
        On its own the append is one statement and so its own transaction; given a
        connection inside a transaction, it joins that transaction instead.
        """
        arguments = _append_arguments(
            events, expected_versions, actor, correlation_id, causation_id, idempotency_key
        )
        try:
            executor = self.pool if connection is None else connection
            rows = await executor.fetch(_APPEND_SQL, *arguments, idempotency_key, fingerprint)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "events_event_id_key":
                raise DuplicateEventError(str(error)) from error
            raise await self._conflict(events, expected_versions) from error
        except asyncpg.PostgresError as error:
            if error.sqlstate == SQLSTATE_STREAM_BEHIND:
                raise await self._conflict(events, expected_versions) from error
            if error.sqlstate == SQLSTATE_IDEMPOTENCY_CONFLICT:
                assert idempotency_key is not None
                raise IdempotencyConflictError(idempotency_key) from error
            raise
        appended = [AppendedEvent(row[2], row[3], row[0], row[1]) for row in rows]
        replayed = bool(rows) and bool(rows[0][4])
        return AppendResult(appended, replayed)

    async def _conflict(
        self, events: Sequence[NewEvent], expected_versions: Mapping[UUID, int]
    ) -> ConcurrencyError:
        """Name the first stream whose version is not the one expected, with both values."""
        for stream_id in dict.fromkeys(event.stream_id for event in events):
            actual = await self.stream_version(stream_id)
            if actual != expected_versions[stream_id]:
                return ConcurrencyError(stream_id, expected_versions[stream_id], actual)
        first = events[0].stream_id
        return ConcurrencyError(first, expected_versions[first], None)

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


def _append_arguments(
    events: Sequence[NewEvent],
    expected_versions: Mapping[UUID, int],
    actor: str | None,
    correlation_id: UUID | None,
    causation_id: UUID | None,
    idempotency_key: str | None,
) -> list[Any]:
    """The arrays ledger.append_events takes: versions numbered, payloads encoded, digests."""
    if not events:
        raise InvalidAppendError("an append needs at least one event")
    if len(events) > APPEND_EVENTS_MAX:
        raise InvalidAppendError(
            f"{len(events)} events in one append; the cap is {APPEND_EVENTS_MAX}"
        )
    missing = {event.stream_id for event in events} - expected_versions.keys()
    if missing:
        raise InvalidAppendError(f"no expected version for streams {sorted(map(str, missing))}")
    next_version = dict(expected_versions)
    recorded_at = datetime.now(UTC)
    columns: list[list[Any]] = [[] for _ in range(8)]
    for event in events:
        if next_version[event.stream_id] < 0:
            raise InvalidAppendError(f"expected version of {event.stream_id} is negative")
        next_version[event.stream_id] += 1
        version = next_version[event.stream_id]
        state = encode(event.data, event.topic)
        digest = chain.content_digest(
            event_id=event.event_id,
            stream_id=event.stream_id,
            stream_type=event.stream_type,
            version=version,
            topic=event.topic,
            schema_version=event.schema_version,
            recorded_at=recorded_at,
            actor=actor,
            correlation_id=correlation_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
            state=state,
        )
        values = (
            event.stream_id,
            event.stream_type,
            version,
            event.topic,
            state,
            event.event_id,
            event.schema_version,
            digest,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return [*columns, recorded_at, actor, correlation_id, causation_id]


def fingerprint_of(body: bytes) -> bytes:
    """A request fingerprint for idempotency: same key and same body replay, else conflict."""
    return hashlib.sha256(body).digest()


async def verify_stream(store: EventStore, stream_id: UUID) -> chain.Verification:
    """Recompute a stream's hash chain from the stored bytes; report the first break."""
    return chain.verify_chain(stream_id, await store.read_stream(stream_id))
