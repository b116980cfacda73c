"""Read-model queries under /api/v1: list (cursor-paged, filtered) and get-by-id routes for
accounts, orders, trades, positions, daily P&L, signals, strategies, instruments and users,
each able to wait for a command's writes (`consistent_with=TOKEN`).

`route_handlers` are the query routes, with their full paths; they are registered on
the app after the command routers, since Litestar merges a handler into a route of the
same path (GET /api/v1/orders beside POST) but refuses a second Router there (each brings
its own OPTIONS handler). `lifespan` runs the process's ProjectionWatcher (one LISTEN
connection) beside the app's pool, and must come after the lifespan that opens it.
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


route_handlers: Final[list[HTTPRouteHandler]] = [
    accounts.list_accounts,
    accounts.get_account,
    orders.list_orders,
    orders.get_order,
    trades.list_trades,
    trades.get_trade,
    positions.list_positions,
    positions.get_position,
    daily_pnl.list_daily_pnl,
    daily_pnl.get_daily_pnl,
    signals.list_signals,
    signals.get_signal,
    strategies.list_strategies,
    strategies.get_strategy,
    instruments.list_instruments,
    instruments.get_instrument,
    users.list_users,
    users.get_user,
]
