"""Trades: one per fill, with the cash it settled and the P&L it realised."""

from __future__ import annotations

from typing import Annotated, Final
from uuid import UUID

import asyncpg
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from api.queries.paging import (
    PAGE_LIMIT_DEFAULT,
    Cursor,
    From,
    Keyset,
    Limit,
    Order,
    Select,
    SortOrder,
    To,
    UtcTime,
    decode_cursor,
    next_cursor,
    time_range,
)
from api.queries.reading import OWN_ACCOUNTS, READERS, Reader, instrument_of, not_found, query
from api.queries.schemas import TradePage, TradeView, amount, optional_amount
from ledger.domain.side import Side

KEYSET: Final = Keyset(
    name="trades",
    columns=("executed_at", "order_id", "fill_id"),
    key_type=tuple[UtcTime, UUID, str],
)
# A trade row is upserted by its two events (settlement, booking); it is listed once its
# booking, which gives its execution time, is applied. A command's two events are both
# applied by the time its consistency token is.
_SELECT: Final = (
    "SELECT order_id, fill_id, account_id, instrument_id, side, quantity, price, fee, "
    "cash_amount, realised_pnl, executed_at, settled_at FROM read.trades"
)
_BOOKED: Final = "executed_at IS NOT NULL"


def _view(row: asyncpg.Record) -> TradeView:
    return TradeView(
        order_id=row["order_id"],
        fill_id=row["fill_id"],
        account_id=row["account_id"],
        instrument_id=row["instrument_id"],
        side=row["side"],
        quantity=amount(row["quantity"]),
        price=amount(row["price"]),
        fee=amount(row["fee"]),
        cash_amount=optional_amount(row["cash_amount"]),
        realised_pnl=optional_amount(row["realised_pnl"]),
        executed_at=row["executed_at"],
        settled_at=row["settled_at"],
    )


@get(
    "/api/v1/trades",
    tags=["trades"],
    **query(
        *READERS,
        projection="trades",
        owned_through="accounts",
        summary="List trades",
        description="Newest first (by `executed_at`, then order id and fill id). A trader "
        "sees the trades of their own accounts. Filters: account_id, order_id, instrument_id "
        "or symbol, side, from/to (executed_at).",
    ),
)
async def list_trades(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    account_id: FromQuery[UUID | None] = None,
    order_id: FromQuery[UUID | None] = None,
    instrument_id: FromQuery[UUID | None] = None,
    symbol: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
    side: FromQuery[Side | None] = None,
    from_: From = None,
    to: To = None,
) -> TradePage:
    start, end = time_range(from_, to)
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where(_BOOKED)
        .where_given(OWN_ACCOUNTS, reader.owner)
        .where_given("account_id = {}", account_id)
        .where_given("order_id = {}", order_id)
        .where_given("instrument_id = {}", instrument_id)
        .where_given("instrument_id = {}", instrument_of(symbol))
        .where_given("side = {}", None if side is None else side.value)
        .where_given("executed_at >= {}", start)
        .where_given("executed_at < {}", end)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return TradePage(
        trades=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/trades/{order_id:uuid}/{fill_id:str}",
    tags=["trades"],
    **query(
        *READERS,
        projection="trades",
        one=True,
        owned_through="accounts",
        summary="A trade",
        description="By its order and fill id. A trader sees the trades of their own "
        "accounts only (404 for any other).",
    ),
)
async def get_trade(
    reader: NamedDependency[Reader], order_id: FromPath[UUID], fill_id: FromPath[str]
) -> TradeView:
    if "\x00" in fill_id:  # PostgreSQL text cannot hold NUL, so no fill has it
        raise not_found("TRADE_NOT_FOUND", f"trade {order_id}/{fill_id!r}")
    select = (
        Select(_SELECT).where(_BOOKED).where("order_id = {} AND fill_id = {}", order_id, fill_id)
    )
    row = await reader.row(select.where_given(OWN_ACCOUNTS, reader.owner).statement())
    if row is None:
        raise not_found("TRADE_NOT_FOUND", f"trade {order_id}/{fill_id}")
    return _view(row)
