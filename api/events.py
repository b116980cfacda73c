"""Audit reads straight from the log: one stream's events, and the global log by cursor.

`GET /streams/{id}/events` pages a stream by version. `GET /events` pages the global
log by `sequence`, the gapless number the relay's sequencer gives each committed event
(ledger.sequence), so a reader following `next_cursor` never skips an event; an event
appears there once the relay has numbered it. Filters narrow a page but never bound
the scan by themselves: every page is bounded by `limit` (at most 500).

`GET /events/export` streams a range of the global log as NDJSON, one event a line in
`sequence` order, with the same filters: `after` a sequence (0: from the start) up to
`until` (default and at most the last sequence numbered when the export starts, given
back in `Ledger-Export-Until`), so an export is a fixed prefix of the log whatever is
appended meanwhile, and the next export continues with `after=<that until>`. The range is
read in windows of EXPORT_WINDOW sequences, one bounded statement each however selective
the filters, and sent as it is read: memory stays flat for any range. A failure midway
cuts the response short, before the line of `until`: the last line received says where
to resume.

Payloads are returned as recorded, except secrets: a user event's password hash is
redacted (the hash chain is verified server-side, from the stored bytes).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

import asyncpg
import msgspec
from litestar import Request, Router, get
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from api.errors import ApiProblem
from api.schemas import NO_NUL_PATTERN, EventOut, EventPage
from api.security import Principal, access
from ledger.domain.user import Role

PAGE_LIMIT_MAX: Final = 500
PAGE_LIMIT_DEFAULT: Final = 100
STATEMENT_TIMEOUT_S: Final = 10.0
REDACTED: Final = "[redacted]"
_SECRET_FIELDS: Final = frozenset({"password_hash"})

Limit = Annotated[int, QueryParameter(ge=1, le=PAGE_LIMIT_MAX, description="At most 500.")]

_COLUMNS: Final = (
    "s.sequence, e.notification_id AS position, e.event_id, e.originator_id AS stream_id, "
    "e.stream_type, e.originator_version AS version, e.topic, e.schema_version, "
    "e.recorded_at, e.actor, e.correlation_id, e.causation_id, e.state AS data, "
    "e.prev_hash, e.hash"
)

_STREAM_SQL: Final = (
    f"SELECT {_COLUMNS} FROM ledger.events e "
    "LEFT JOIN ledger.sequence s ON s.position = e.notification_id "
    "WHERE e.originator_id = $1 AND e.originator_version > $2 "
    "ORDER BY e.originator_version LIMIT $3"
)

# NULL filters match everything; each one given narrows the page.
_FILTERS: Final = (
    "AND ($3::uuid IS NULL OR e.originator_id = $3) "
    "AND ($4::text IS NULL OR e.stream_type = $4) "
    "AND ($5::text IS NULL OR e.topic = $5) "
    "AND ($6::text IS NULL OR e.actor = $6) "
    "AND ($7::uuid IS NULL OR e.correlation_id = $7) "
    "AND ($8::timestamptz IS NULL OR e.recorded_at >= $8) "
    "AND ($9::timestamptz IS NULL OR e.recorded_at < $9) "
)

_LOG_SQL: Final = (
    f"SELECT {_COLUMNS} FROM ledger.sequence s "
    "JOIN ledger.events e ON e.notification_id = s.position "
    f"WHERE s.sequence > $1 {_FILTERS}"
    "ORDER BY s.sequence LIMIT $2"
)

_HEAD_SQL: Final = "SELECT coalesce(max(sequence), 0) FROM ledger.sequence"

# A window of the log: sequences in ($1, $2], filtered (also /events/live's source).
_WINDOW_SQL: Final = (
    f"SELECT {_COLUMNS} FROM ledger.sequence s "
    "JOIN ledger.events e ON e.notification_id = s.position "
    f"WHERE s.sequence > $1 AND s.sequence <= $2 {_FILTERS}"
    "ORDER BY s.sequence"
)

EXPORT_WINDOW: Final = 2_000
SEQUENCE_MAX: Final = 2**63 - 1
NDJSON: Final = "application/x-ndjson"

AUDIT_ROLES: Final = (Role.AUDITOR, Role.ANALYST)


@get(
    "/streams/{stream_id:uuid}/events",
    **access(
        *AUDIT_ROLES,
        summary="A stream's events",
        description="In version order, paged by `cursor`; `sequence` is null until the relay "
        "has numbered the event.",
        errors=(404,),
    ),
)
async def stream_events(
    request: Request[Principal, Any, State],
    stream_id: FromPath[UUID],
    cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> EventPage:
    after_version = _decode_cursor(cursor, "v")
    pool: asyncpg.Pool = request.app.state.pool
    rows = await pool.fetch(
        _STREAM_SQL, stream_id, after_version, limit, timeout=STATEMENT_TIMEOUT_S
    )
    if not rows and after_version == 0:
        raise ApiProblem(404, "STREAM_NOT_FOUND", f"stream {stream_id} has no events")
    events = [event_out(row) for row in rows]
    next_cursor = _encode_cursor("v", events[-1].version) if len(events) == limit else None
    return EventPage(events=events, next_cursor=next_cursor)


class LogFilters(msgspec.Struct, frozen=True, kw_only=True):
    """What narrows a read of the global log; None matches everything."""

    stream_id: UUID | None
    stream_type: str | None
    event_type: str | None
    actor: str | None
    correlation_id: UUID | None
    recorded_from: datetime | None
    recorded_before: datetime | None

    def arguments(self) -> tuple[Any, ...]:
        """The statement's arguments $3 to $9."""
        return (
            self.stream_id,
            self.stream_type,
            self.event_type,
            self.actor,
            self.correlation_id,
            self.recorded_from,
            self.recorded_before,
        )


async def log_filters(
    stream_id: FromQuery[UUID | None] = None,
    stream_type: Annotated[
        str | None, QueryParameter(max_length=64, pattern=NO_NUL_PATTERN)
    ] = None,
    event_type: Annotated[
        str | None, QueryParameter(name="type", max_length=255, pattern=NO_NUL_PATTERN)
    ] = None,
    actor: Annotated[str | None, QueryParameter(max_length=255, pattern=NO_NUL_PATTERN)] = None,
    correlation_id: FromQuery[UUID | None] = None,
    recorded_from: FromQuery[datetime | None] = None,
    recorded_before: FromQuery[datetime | None] = None,
) -> LogFilters:
    return LogFilters(
        stream_id=stream_id,
        stream_type=stream_type,
        event_type=event_type,
        actor=actor,
        correlation_id=correlation_id,
        recorded_from=recorded_from,
        recorded_before=recorded_before,
    )


FILTERS_DESCRIPTION: Final = (
    "Filters: stream_id, stream_type, type (topic), actor, correlation_id, recorded_from, "
    "recorded_before."
)


@get(
    "/events",
    **access(
        *AUDIT_ROLES,
        summary="The global log",
        description="Events in global `sequence` order, paged by `cursor` (follow "
        f"`next_cursor`; it is null on a page shorter than `limit`). {FILTERS_DESCRIPTION}",
    ),
    dependencies={"filters": Provide(log_filters)},
)
async def log_events(
    request: Request[Principal, Any, State],
    filters: NamedDependency[LogFilters],
    cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> EventPage:
    after_sequence = _decode_cursor(cursor, "s")
    pool: asyncpg.Pool = request.app.state.pool
    rows = await pool.fetch(
        _LOG_SQL, after_sequence, limit, *filters.arguments(), timeout=STATEMENT_TIMEOUT_S
    )
    events = [event_out(row) for row in rows]
    last = events[-1].sequence if events else None
    next_cursor = _encode_cursor("s", last) if last is not None and len(events) == limit else None
    return EventPage(events=events, next_cursor=next_cursor)


After = Annotated[
    int, QueryParameter(ge=0, le=SEQUENCE_MAX, description="A sequence; 0: the start.")
]
Until = Annotated[
    int | None,
    QueryParameter(ge=0, le=SEQUENCE_MAX, description="A sequence; default: the last one now."),
]


@get(
    "/events/export",
    media_type=NDJSON,
    **access(
        *AUDIT_ROLES,
        summary="Export the global log",
        description="NDJSON, one event a line (as on `/events`), in `sequence` order: the "
        "events after `after` up to `until` (default: the last one numbered now; the bound "
        "used is in the `Ledger-Export-Until` header), streamed. Continue with "
        f"`after=<Ledger-Export-Until>`. {FILTERS_DESCRIPTION}",
    ),
    dependencies={"filters": Provide(log_filters)},
    response_headers=[
        ResponseHeader(
            name="Ledger-Export-After",
            description="The sequence the export starts after.",
            documentation_only=True,
        ),
        ResponseHeader(
            name="Ledger-Export-Until",
            description="The last sequence of the range exported; `after` of the next export.",
            documentation_only=True,
        ),
    ],
)
async def export_events(
    request: Request[Principal, Any, State],
    filters: NamedDependency[LogFilters],
    after: After = 0,
    until: Until = None,
) -> Stream:
    pool: asyncpg.Pool = request.app.state.pool
    last = await head(pool)
    bound = last if until is None else min(until, last)
    return Stream(
        _export(pool, filters, after, bound),
        media_type=NDJSON,
        headers={"Ledger-Export-After": str(after), "Ledger-Export-Until": str(bound)},
    )


async def _export(
    pool: asyncpg.Pool, filters: LogFilters, after: int, until: int
) -> AsyncIterator[bytes]:
    """The events of sequences (after, until], a window of them per chunk sent."""
    encoder = msgspec.json.Encoder()
    buffer = bytearray()
    while after < until:
        upper = min(after + EXPORT_WINDOW, until)
        rows = await window(pool, after, upper, filters)
        if rows:
            buffer.clear()
            for row in rows:
                encoder.encode_into(event_out(row), buffer, -1)
                buffer.extend(b"\n")
            yield bytes(buffer)
        after = upper


async def head(pool: asyncpg.Pool) -> int:
    """The last sequence numbered so far (0 before the first)."""
    last: int = await pool.fetchval(_HEAD_SQL, timeout=STATEMENT_TIMEOUT_S)
    return last


async def window(
    pool: asyncpg.Pool, after: int, up_to: int, filters: LogFilters
) -> list[asyncpg.Record]:
    """The events of sequences (after, up_to] that pass the filters, in sequence order."""
    rows: list[asyncpg.Record] = await pool.fetch(
        _WINDOW_SQL, after, up_to, *filters.arguments(), timeout=STATEMENT_TIMEOUT_S
    )
    return rows


def event_out(row: asyncpg.Record) -> EventOut:
    return EventOut(
        sequence=row["sequence"],
        position=row["position"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        stream_type=row["stream_type"],
        version=row["version"],
        type=row["topic"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        actor=row["actor"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        data=_redacted(bytes(row["data"])),
        prev_hash=bytes(row["prev_hash"]).hex(),
        hash=bytes(row["hash"]).hex(),
    )


def _redacted(data: bytes) -> dict[str, Any]:
    payload = msgspec.json.decode(data)
    if not isinstance(payload, dict):
        return {"value": payload}
    for name in _SECRET_FIELDS & payload.keys():
        payload[name] = REDACTED
    return payload


def _encode_cursor(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None, kind: str) -> int:
    if cursor is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = raw.partition(":")
        number = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        number, found = -1, ""
    if found != kind or number < 0 or len(cursor) > 64:
        raise ApiProblem(400, "INVALID_CURSOR", "the cursor is not one this list gave")
    return number


router = Router(
    path="/api/v1", route_handlers=[stream_events, log_events, export_events], tags=["audit"]
)
