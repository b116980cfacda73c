"""Read-model queries under /api/v1: list (cursor-paged, filtered) and get-by-id routes for
accounts, orders, trades, positions, daily P&L, signals, strategies, instruments and users,
each able to wait for a command's writes (`consistent_with=TOKEN`).

Each read model is declared once, in its module (`MODEL`, a ReadModel), and its list and
get routes are built from that (api/queries/routes.py). `route_handlers` are the query
routes, with their full paths; they are registered on the app after the command routers,
since Litestar merges a handler into a route of the same path (GET /api/v1/orders beside
POST) but refuses a second Router there (each brings its own OPTIONS handler).
`lifespan` runs the process's ProjectionWatcher (one LISTEN connection) beside the app's
pool, and must come after the lifespan that opens it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from api.queries import (
    accounts,
    daily_pnl,
    instruments,
    orders,
    positions,
    signals,
    strategies,
    trades,
    users,
)
from api.queries.model import ReadModel
from api.queries.routes import routes
from api.queries.waiting import ProjectionWatcher
from ledger.settings import Settings


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    assert settings.database_url is not None
    watcher = ProjectionWatcher(settings.database_url, app.state.pool)
    await watcher.start()
    app.state.projection_watcher = watcher
    try:
        yield
    finally:
        await watcher.close()


# The read models, each declared once (api/queries/model.py); the order of their routes.
MODELS: Final[tuple[ReadModel, ...]] = (
    accounts.MODEL,
    orders.MODEL,
    trades.MODEL,
    positions.MODEL,
    daily_pnl.MODEL,
    signals.MODEL,
    strategies.MODEL,
    instruments.MODEL,
    users.MODEL,
)

route_handlers: Final[list[HTTPRouteHandler]] = [
    handler for model in MODELS for handler in routes(model)
]
