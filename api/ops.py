"""Liveness and readiness: /health and /ready.

/ready answers 200 only when every part is "ok", else 503 with each part saying what is
wrong: PostgreSQL answers a query; NATS is connected; the relay's oldest unpublished
event has waited less than `ready_relay_lag_s_max`; no projection is parked on a
poison event, and none has an event waiting `ready_projection_lag_s_max` or longer.
Each database query is bounded by `ops_query_timeout_s`, and a query that fails or
times out makes its part say so rather than the route answer 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, TypeVar

import asyncpg
import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from nats.aio.client import Client as NatsClient

from ledger.relay_lag import RelayLag, relay_lag
from ledger.settings import Settings
from projections.lag import ProjectionLag, lag

OK: Final = "ok"
ERROR_LENGTH_MAX: Final = 300
TIMEOUT_TEXT: Final = "no answer within"

T = TypeVar("T")


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """`status` is "ok" only when every part is; each part says what is wrong."""

    status: str
    postgres: str
    nats: str
    relay: str
    projections: str


@get("/health", sync_to_thread=False, tags=["ops"], summary="Liveness")
def health() -> Health:
    """The process answers. Dependencies are checked by /ready."""
    return Health(status=OK)


@get(
    "/ready",
    tags=["ops"],
    summary="Readiness",
    responses={
        HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(
            data_container=Readiness, description='Not ready: the parts not "ok" say why.'
        )
    },
)
async def ready(state: State) -> Response[Readiness]:
    """PostgreSQL, NATS, the relay's lag and every projection's lag, each "ok" or what is
    wrong; 503 unless all are "ok"."""
    settings: Settings = state.settings
    timeout_s = settings.ops_query_timeout_s
    postgres, relay, projections = await asyncio.gather(
        bounded(lambda: _postgres(state.pool, timeout_s), timeout_s),
        bounded(lambda: relay_lag(state.pool, timeout_s), timeout_s),
        bounded(lambda: lag(state.pool), timeout_s),
    )
    parts = {
        "postgres": postgres if isinstance(postgres, str) else OK,
        "nats": nats_status(state.nats),
        "relay": relay if isinstance(relay, str) else relay_status(relay, settings),
        "projections": projections
        if isinstance(projections, str)
        else projections_status(projections, settings),
    }
    is_ready = all(value == OK for value in parts.values())
    return Response(
        Readiness(status=OK if is_ready else "unavailable", **parts),
        status_code=HTTP_200_OK if is_ready else HTTP_503_SERVICE_UNAVAILABLE,
    )


async def _postgres(pool: asyncpg.Pool, timeout_s: float) -> None:
    async with pool.acquire(timeout=timeout_s) as connection:
        await connection.fetchval("SELECT 1", timeout=timeout_s)


async def bounded(query: Callable[[], Awaitable[T]], timeout_s: float) -> T | str:
    """The query's result, or what went wrong (as "error: ...") within `timeout_s`.

    Results are never strings, so a string is always the failure.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await query()
    except TimeoutError:
        return f"error: {TIMEOUT_TEXT} {timeout_s:g} s"
    # Any failure, whatever its type, means "not ready": report it rather than answer 500.
    except Exception as error:
        return f"error: {type(error).__name__}: {error}"[:ERROR_LENGTH_MAX]


def nats_status(client: NatsClient) -> str:
    if client.is_connected:
        return OK
    return "reconnecting" if client.is_reconnecting else "disconnected"


def relay_status(found: RelayLag, settings: Settings) -> str:
    limit = settings.ready_relay_lag_s_max
    if found.events_behind == 0 or found.seconds_behind < limit:
        return OK
    return (
        f"{found.events_behind} events not published (sequenced {found.sequenced}, "
        f"published {found.published}), the oldest waiting "
        f"{found.seconds_behind:.1f} s (max {limit:g} s)"
    )


def projections_status(found: Iterable[ProjectionLag], settings: Settings) -> str:
    limit = settings.ready_projection_lag_s_max
    wrong: list[str] = []
    for item in found:
        if item.failing:
            error = (item.last_error or "no error recorded")[:ERROR_LENGTH_MAX]
            wrong.append(f"{item.name}: parked at sequence {item.parked_sequence}: {error}")
        elif item.events_behind > 0 and item.seconds_behind >= limit:
            wrong.append(
                f"{item.name}: {item.events_behind} events behind, the oldest waiting "
                f"{item.seconds_behind:.1f} s (max {limit:g} s)"
            )
    return "; ".join(wrong) or OK
