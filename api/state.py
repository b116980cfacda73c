"""A stream's state as of a version or a moment, folded from its events (analysts, auditors).

`GET /streams/{id}/state?as_of=` reads the stream's events in version order up to
`as_of` — a version number, or a UTC time, meaning every event recorded at or before it
(the longest such prefix: a fold cannot skip an event) — and folds them with the
aggregate's own `evolve`, found by the stream's type in the domain registry. The state
is returned as a JSON document in the domain's own field names; secrets are redacted as
on `/events`. A fold reads at most 10,000 events; a longer stream is for the
eventsourcing library in a notebook, or a replay.

Traders are not admitted, even to their own streams: their read models answer them,
and a raw state would show them internals (a user's token version, an account's holds)
that each aggregate would first need an audience rule for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter

from api.errors import ApiProblem
from api.events import AUDIT_ROLES, REDACTED
from api.schemas import NO_NUL_PATTERN
from api.security import Principal, access
from ledger.domain.base import decode_event
from ledger.domain.registry import EVOLVERS, fold_stream
from ledger.errors import StreamNotFoundError
from ledger.store import EventStore, RecordedEvent

STATE_EVENTS_MAX: Final = 10_000
AS_OF_LENGTH_MAX: Final = 64
_SECRET_FIELDS: Final = frozenset({"password_hash"})


class StreamStateOut(msgspec.Struct, frozen=True, kw_only=True):
    """The state after `version` (0 and a null state: the stream had no event by then)."""

    stream_id: UUID
    stream_type: str
    version: int
    recorded_at: datetime | None
    head_version: int
    state: dict[str, Any] | None


class AsOf(msgspec.Struct, frozen=True):
    """Up to which event to fold: a version, or the last event recorded at or before a time."""

    version: int | None = None
    moment: datetime | None = None


def parse_as_of(text: str | None) -> AsOf:
    """`as_of` as given: a version number (>= 1) or an ISO 8601 time with its UTC offset."""
    if text is None:
        return AsOf()
    if text.isascii() and text.isdigit():
        version = int(text)
        if version < 1:
            raise _bad_as_of("a version as_of starts at 1")
        return AsOf(version=version)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_as_of("as_of is neither a version nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise _bad_as_of("an as_of time needs its UTC offset (e.g. 2026-01-02T03:04:05Z)")
    return AsOf(moment=moment.astimezone(UTC))


def _bad_as_of(detail: str) -> ApiProblem:
    return ApiProblem(400, "INVALID_AS_OF", detail)


def prefix_as_of(events: list[RecordedEvent], as_of: AsOf) -> list[RecordedEvent]:
    """The events a fold as of `as_of` takes: a prefix in version order."""
    if as_of.version is not None:
        return [event for event in events if event.version <= as_of.version]
    if as_of.moment is None:
        return events
    for index, event in enumerate(events):
        if event.recorded_at > as_of.moment:
            return events[:index]
    return events


@get(
    "/streams/{stream_id:uuid}/state",
    **access(
        *AUDIT_ROLES,
        summary="A stream's state as of a version or a time",
        description="The aggregate's state folded from its events up to `as_of`: a version "
        "(e.g. `3`) or a UTC time (e.g. `2026-01-02T03:04:05Z`: the events recorded at or "
        "before it); the current state without it. At most 10,000 events are folded "
        "(422 STREAM_TOO_LONG beyond).",
        errors=(404, 422),
    ),
)
async def stream_state(
    request: Request[Principal, Any, State],
    stream_id: FromPath[UUID],
    as_of: Annotated[
        str | None, QueryParameter(max_length=AS_OF_LENGTH_MAX, pattern=NO_NUL_PATTERN)
    ] = None,
) -> StreamStateOut:
    wanted = parse_as_of(as_of)
    store = EventStore(request.app.state.pool)
    up_to = STATE_EVENTS_MAX + 1
    if wanted.version is not None:
        up_to = min(wanted.version, up_to)
    try:
        events = await store.read_stream(stream_id, up_to_version=up_to)
    except StreamNotFoundError:
        raise ApiProblem(404, "STREAM_NOT_FOUND", f"stream {stream_id} has no events") from None
    folded = prefix_as_of(events, wanted)
    if len(folded) > STATE_EVENTS_MAX:
        raise ApiProblem(
            422,
            "STREAM_TOO_LONG",
            f"a state is folded from at most {STATE_EVENTS_MAX} events here; use a replay",
        )
    stream_type = events[0].stream_type
    if stream_type not in EVOLVERS:
        raise ApiProblem(422, "UNKNOWN_STREAM_TYPE", f"no aggregate folds {stream_type!r}")
    state = fold_stream(stream_type, (decode_event(e.topic, e.data) for e in folded))
    head = await store.stream_version(stream_id)
    last = folded[-1] if folded else None
    return StreamStateOut(
        stream_id=stream_id,
        stream_type=stream_type,
        version=0 if last is None else last.version,
        recorded_at=None if last is None else last.recorded_at,
        head_version=head,
        state=None if state is None else _document(state),
    )


def _document(state: msgspec.Struct) -> dict[str, Any]:
    document = msgspec.to_builtins(state, str_keys=True)
    assert isinstance(document, dict), type(document)
    for name in _SECRET_FIELDS & document.keys():
        document[name] = REDACTED
    return document


router = Router(path="/api/v1", route_handlers=[stream_state], tags=["audit"])
