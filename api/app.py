"""The Litestar application: `create_app(settings)` and the lifespan that owns its I/O.

The lifespan opens the asyncpg pool and the NATS connection before the first request
and closes both after the last one, and builds what the routes use on top of them (the
command layer, the password hasher's threads, the token issuer); handlers reach all of
it through `app.state`, never through module globals. The ledger's API is under /api/v1
(routers per area, api/*.py); errors are problem+json (api/errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Final

import asyncpg
import nats
from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag
from nats.aio.client import Client as NatsClient
from opentelemetry.trace import TracerProvider

from api import accounts, auth, events, instruments, orders, signals, strategies, users
from api.access_checks import AccessChecks
from api.audit import router as audit_router
from api.errors import internal_error, problem_details_plugin
from api.housekeeping import Housekeeping
from api.limits import rate_limits
from api.live import end_live_streams
from api.live import router as live_router
from api.logs import log_request, timed
from api.metrics import MetricsController, command_executed, http_metrics
from api.ops import health, ready
from api.passwords import HashCost, Passwords
from api.queries import lifespan as queries_lifespan
from api.queries import route_handlers as query_route_handlers
from api.registration import Registrar
from api.request_id import echo_request_id
from api.security import openapi_components
from api.state import router as state_router
from api.tokens import TokenIssuer
from api.tracing import http_tracing, name_server_span
from commands.bootstrap import bootstrap
from ledger.settings import Settings

POOL_SIZE_MAX: Final = 20
CONNECT_TIMEOUT_S: Final = 10
CLOSE_TIMEOUT_S: Final = 10.0
# Every command body is small; a bigger one is refused (413) before it is read whole.
REQUEST_BODY_BYTES_MAX: Final = 64 * 1024
OPENAPI_TAGS: Final = (
    Tag(name="auth", description="Sign-up, sign-in, token refresh and logout."),
    Tag(name="users", description="The signed-in user."),
    Tag(name="accounts", description="Cash accounts and deposits (admin)."),
    Tag(name="instruments", description="Tradable instruments (admin)."),
    Tag(name="strategies", description="Trading strategies (admin)."),
    Tag(name="signals", description="Strategy signals (trader)."),
    Tag(name="orders", description="Orders (trader) and their fills (execution)."),
    Tag(name="audit", description="The raw event log (auditor, analyst)."),
    Tag(name="trades", description="Trades, one per fill (read model)."),
    Tag(name="positions", description="Positions per account and instrument (read model)."),
    Tag(name="pnl", description="Daily P&L per account (read model)."),
    Tag(name="ops", description="Liveness, readiness and Prometheus metrics."),
)

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> Litestar:
    """The API wired to the PostgreSQL and NATS that `settings` name; its spans go to
    `tracer_provider`, which the caller owns (else to the global provider)."""
    if settings.database_url is None or settings.nats_url is None:
        raise ValueError("create_app needs settings with database_url and nats_url")
    if settings.jwt_secret is None:
        # Replicas must share one key, so none is invented here (`ledger dev` persists one).
        raise ValueError("create_app needs settings with jwt_secret (LEDGER_JWT_SECRET)")
    database_url, nats_url = settings.database_url, settings.nats_url
    tokens = TokenIssuer(settings.jwt_secret)
    tracing = http_tracing(tracer_provider)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            database_url,
            min_size=1,
            max_size=POOL_SIZE_MAX,
            timeout=CONNECT_TIMEOUT_S,
            reset=keep_session,
        )
        try:
            client = await _connect_nats(nats_url)
            passwords = Passwords(HashCost.of(settings))
            try:
                ledger = bootstrap(
                    pool, on_executed=command_executed, tracer_provider=tracer_provider
                )
                app.state.pool, app.state.nats = pool, client
                app.state.tokens, app.state.passwords = tokens, passwords
                app.state.ledger = ledger
                app.state.access_checks = AccessChecks(pool)
                app.state.registrar = Registrar(pool, ledger, passwords)
                async with housekeeping(pool, settings):
                    yield
            finally:
                end_live_streams(app)
                passwords.close()
                await _close_nats(client)
        finally:
            await _close_pool(pool)

    return Litestar(
        route_handlers=[
            health,
            ready,
            MetricsController,
            auth.auth_router,
            users.router,
            accounts.router,
            instruments.router,
            strategies.router,
            signals.router,
            orders.router,
            events.router,
            audit_router,
            state_router,
            live_router,
            # After the routers: GET /api/v1/orders joins their POST route (api/queries).
            *query_route_handlers,
        ],
        lifespan=[lifespan, queries_lifespan],
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(
            title="Ledger",
            version="0.1.0",
            path="/schema",
            components=openapi_components(),
            tags=list(OPENAPI_TAGS),
        ),
        plugins=[problem_details_plugin(), *tracing.plugins],
        exception_handlers={Exception: internal_error},
        # Ops, outermost first: the caller's trace context when no span is recorded (else
        # the plugin's), timing and log context, HTTP metrics, then the limits.
        middleware=[*tracing.middleware, timed, http_metrics().middleware, *rate_limits(settings)],
        before_send=[echo_request_id, log_request, name_server_span],
        request_max_body_size=REQUEST_BODY_BYTES_MAX,
        # Logging is the process's (ledger.logs, set up by the CLI): Litestar's default
        # configuration would replace the root logger's handlers with its own.
        logging_config=None,
    )


@asynccontextmanager
async def housekeeping(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[None]:
    """Housekeeping passes in the background while the app serves (unless turned off)."""
    if settings.housekeeping_interval_s == 0:
        yield
        return
    keeper = Housekeeping(
        pool, idempotency_retention=timedelta(seconds=settings.idempotency_retention_s)
    )
    task = asyncio.create_task(keeper.run(settings.housekeeping_interval_s), name="housekeeping")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def keep_session(connection: asyncpg.Connection) -> None:
    """How the pool resets a connection it takes back: by what asyncpg always does (a
    transaction left open is rolled back, listener callbacks are dropped) and no more.

    asyncpg's default also sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`: one more round trip, and four statements, after every query the API
    makes (docs/adr/0013-api-benchmark.md has what it cost). They undo session state that
    nothing in the API leaves on a pooled connection: no SET, no advisory lock, no cursor
    outside a transaction, and the read-your-writes LISTEN has a connection of its own
    (api/queries/waiting.py). Code that needs session state must take a connection of its
    own too, never one from this pool."""


async def _connect_nats(url: str) -> NatsClient:
    # After the first connection, reconnect forever: /ready reports the outage meanwhile.
    return await nats.connect(
        url,
        name="ledger-api",
        connect_timeout=CONNECT_TIMEOUT_S,
        max_reconnect_attempts=-1,
    )


async def _close_nats(client: NatsClient) -> None:
    try:
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        logger.warning("NATS connection not closed after %.0f s", CLOSE_TIMEOUT_S)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        # Connections still busy after the timeout are cut rather than waited on forever.
        pool.terminate()
