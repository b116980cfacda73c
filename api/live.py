"""Live events as Server-Sent Events: the global log in `sequence` order, then as it grows.

`GET /events/live` starts after a sequence (the `Last-Event-ID` header, which a
reconnecting client sends by itself, else `after=`, else 0) and sends each event as an
SSE message whose `id:` is its sequence and whose data is the event as `/events` shows it,
narrowed by the same filters (api/events.py's, read by the same windowed statement). A
reconnect with the last id it saw resumes at the next event: nothing skipped, nothing twice.

The source is `ledger.sequence` itself, polled (ADR 0011): when a poll finds the log's
head past the stream's position, the stream reads the next window of at most
`WINDOW_SEQUENCES` sequences (filtered) and moves to its end, so a narrow filter costs
bounded work per poll too; when it finds nothing new, it waits, doubling the wait from
50 ms up to 500 ms, and sends a comment as a heartbeat every 15 s of silence.

A stream ends when the client goes away (Litestar cancels it), when its access token
expires (the client reconnects with a new one, which is how revocation reaches a live
stream), or when the server shuts down (`end_live_streams`, called before the server
waits for its connections to drain). Each process serves at most `STREAMS_MAX` at once;
one more is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

import asyncpg
import msgspec
from litestar import Litestar, Request, Router, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.errors import ApiProblem
from api.events import (
    AUDIT_ROLES,
    FILTERS_DESCRIPTION,
    LogFilters,
    event_out,
    head,
    log_filters,
    window,
)
from api.security import Principal, access, principal_of

STREAMS_MAX: Final = 64
WINDOW_SEQUENCES: Final = 500
POLL_WAIT_MIN_S: Final = 0.05
POLL_WAIT_MAX_S: Final = 0.5
HEARTBEAT_S: Final = 15.0
RETRY_MS: Final = 1_000
BUSY_RETRY_AFTER_S: Final = 5
STATE_KEY: Final = "live_streams"

_encoder = msgspec.json.Encoder()


class LiveStreams:
    """The live streams of one app: how many are open, and the signal that ends them all."""

    def __init__(
        self,
        *,
        streams_max: int = STREAMS_MAX,
        heartbeat_s: float = HEARTBEAT_S,
        poll_wait_max_s: float = POLL_WAIT_MAX_S,
    ) -> None:
        assert streams_max >= 1, streams_max
        self.streams_max = streams_max
        self.heartbeat_s = heartbeat_s
        self.poll_wait_max_s = poll_wait_max_s
        self.open = 0
        self.closing = asyncio.Event()

    def claim(self) -> _Slot:
        if self.closing.is_set():
            raise _unavailable("the server is shutting down")
        if self.open >= self.streams_max:
            raise _unavailable(f"{self.streams_max} live streams are open on this server")
        self.open += 1
        return _Slot(self)

    def close(self) -> None:
        """End every live stream (they finish their current step and return)."""
        self.closing.set()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the streams are closed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)


class _Slot:
    """One stream's place among the open ones, given back exactly once."""

    def __init__(self, streams: LiveStreams) -> None:
        self._streams: LiveStreams | None = streams

    def release(self) -> None:
        if self._streams is not None:
            self._streams.open -= 1
            self._streams = None


def _unavailable(detail: str) -> ApiProblem:
    return ApiProblem(
        503, "LIVE_STREAMS_BUSY", detail, headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}
    )


def live_streams_of(app: Litestar) -> LiveStreams:
    streams = app.state.get(STATE_KEY)
    if streams is None:
        streams = app.state[STATE_KEY] = LiveStreams()
    assert isinstance(streams, LiveStreams), type(streams)
    return streams


def end_live_streams(app: object) -> None:
    """End the live streams of `app` (a server calls this as its shutdown begins)."""
    if isinstance(app, Litestar):
        live_streams_of(app).close()


async def follow(
    pool: asyncpg.Pool,
    streams: LiveStreams,
    slot: _Slot,
    *,
    after: int,
    filters: LogFilters,
    deadline: float,
) -> AsyncIterator[ServerSentEventMessage]:
    """The SSE messages of one live stream, from the sequence after `after` on."""
    try:
        yield ServerSentEventMessage(comment="ledger live events", retry=RETRY_MS)
        wait_s, quiet_since = POLL_WAIT_MIN_S, time.monotonic()
        while not streams.closing.is_set():
            if time.monotonic() >= deadline:
                yield ServerSentEventMessage(comment="the access token expired; reconnect")
                return
            last = await head(pool)
            if last > after:
                up_to = min(last, after + WINDOW_SEQUENCES)
                for row in await window(pool, after, up_to, filters):
                    data = _encoder.encode(event_out(row)).decode()
                    yield ServerSentEventMessage(data=data, id=row["sequence"])
                    quiet_since = time.monotonic()
                after, wait_s = up_to, POLL_WAIT_MIN_S
                continue
            if time.monotonic() - quiet_since >= streams.heartbeat_s:
                yield ServerSentEventMessage(comment="heartbeat")
                quiet_since = time.monotonic()
            await streams.pause(min(wait_s, max(deadline - time.monotonic(), 0.0)))
            wait_s = min(wait_s * 2, streams.poll_wait_max_s)
        yield ServerSentEventMessage(comment="the server is shutting down; reconnect")
    finally:
        slot.release()


@get(
    "/events/live",
    **access(
        *AUDIT_ROLES,
        summary="Live events (Server-Sent Events)",
        description="The global log in `sequence` order from the sequence after "
        "`Last-Event-ID` (or `after`, else from the start), then new events as the relay "
        "numbers them; each message's `id` is the event's sequence and its data the event as "
        f"`/events` shows it. {FILTERS_DESCRIPTION} "
        "A comment every 15 s of silence; the stream ends when the access token expires or "
        "the server stops (reconnect with `Last-Event-ID`). 503 when the server has too "
        "many live streams open.",
        errors=(503,),
    ),
    dependencies={"filters": Provide(log_filters)},
)
async def live_events(
    request: Request[Principal, Any, State],
    filters: NamedDependency[LogFilters],
    last_event_id: Annotated[
        int | None, HeaderParameter(name="Last-Event-ID", ge=0, le=2**62, required=False)
    ] = None,
    after: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
) -> ServerSentEvent:
    principal = principal_of(request)
    streams = live_streams_of(request.app)
    slot = streams.claim()
    # Time left on the token, on this process's monotonic clock.
    deadline = time.monotonic() + max(principal.claims.exp - time.time(), 0.0)
    messages = follow(
        request.app.state.pool,
        streams,
        slot,
        after=after if last_event_id is None else last_event_id,
        filters=filters,
        deadline=deadline,
    )
    # A response that is never sent never starts the generator, whose `finally` would
    # give the slot back: give it back when the generator is dropped instead.
    weakref.finalize(messages, slot.release)
    return ServerSentEvent(messages)


router = Router(path="/api/v1", route_handlers=[live_events], tags=["audit"])
