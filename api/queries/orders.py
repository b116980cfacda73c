"""Orders with their fills."""

from __future__ import annotations

from typing import Annotated, Any, Final
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
from api.queries.schemas import (
    FillView,
    OrderDetail,
    OrderPage,
    OrderView,
    amount,
    optional_amount,
)
from ledger.domain.order import OrderStatus
from ledger.domain.side import Side

FILLS_MAX: Final = 500
KEYSET: Final = Keyset(
    name="orders", columns=("placed_at", "order_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT order_id, account_id, instrument_id, side, order_type, quantity, limit_price, "
    "stop_price, time_in_force, signal_id, client_order_id, status, hold_amount, "
    "filled_quantity, filled_notional, cash_amount, fees, fill_count, reason_code, reason, "
    "placed_at, updated_at, version FROM read.orders"
)
_FILLS_SQL: Final = (
    "SELECT fill_id, quantity, price, fee, cash_amount, venue, executed_at FROM read.order_fills "
    "WHERE order_id = $1 ORDER BY executed_at, fill_id LIMIT $2"
)


def _fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "order_id": row["order_id"],
        "account_id": row["account_id"],
        "instrument_id": row["instrument_id"],
        "side": row["side"],
        "order_type": row["order_type"],
        "quantity": amount(row["quantity"]),
        "limit_price": optional_amount(row["limit_price"]),
        "stop_price": optional_amount(row["stop_price"]),
        "time_in_force": row["time_in_force"],
        "signal_id": row["signal_id"],
        "client_order_id": row["client_order_id"],
        "status": row["status"],
        "hold_amount": amount(row["hold_amount"]),
        "filled_quantity": amount(row["filled_quantity"]),
        "filled_notional": amount(row["filled_notional"]),
        "cash_amount": amount(row["cash_amount"]),
        "fees": amount(row["fees"]),
        "fill_count": row["fill_count"],
        "reason_code": row["reason_code"],
        "reason": row["reason"],
        "placed_at": row["placed_at"],
        "updated_at": row["updated_at"],
        "version": row["version"],
    }


def _fill(row: asyncpg.Record) -> FillView:
    return FillView(
        fill_id=row["fill_id"],
        quantity=amount(row["quantity"]),
        price=amount(row["price"]),
        fee=amount(row["fee"]),
        cash_amount=amount(row["cash_amount"]),
        venue=row["venue"],
        executed_at=row["executed_at"],
    )


@get(
    "/api/v1/orders",
    tags=["orders"],
    **query(
        *READERS,
        projection="orders",
        owned_through="accounts",
        summary="List orders",
        description="Newest first (by `placed_at`, then id). A trader sees the orders of "
        "their own accounts. Filters: account_id, instrument_id or symbol, status, side, "
        "signal_id, from/to (placed_at).",
    ),
)
async def list_orders(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    account_id: FromQuery[UUID | None] = None,
    instrument_id: FromQuery[UUID | None] = None,
    symbol: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
    status: FromQuery[OrderStatus | None] = None,
    side: FromQuery[Side | None] = None,
    signal_id: FromQuery[UUID | None] = None,
    from_: From = None,
    to: To = None,
) -> OrderPage:
    start, end = time_range(from_, to)
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given(OWN_ACCOUNTS, reader.owner)
        .where_given("account_id = {}", account_id)
        .where_given("instrument_id = {}", instrument_id)
        .where_given("instrument_id = {}", instrument_of(symbol))
        .where_given("status = {}", None if status is None else status.value)
        .where_given("side = {}", None if side is None else side.value)
        .where_given("signal_id = {}", signal_id)
        .where_given("placed_at >= {}", start)
        .where_given("placed_at < {}", end)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return OrderPage(
        orders=[OrderView(**_fields(row)) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/orders/{order_id:uuid}",
    tags=["orders"],
    **query(
        *READERS,
        projection="orders",
        one=True,
        owned_through="accounts",
        summary="An order and its fills",
        description=f"Fills in execution order, at most {FILLS_MAX} (the trades list, "
        "filtered by order_id, pages through any number). A trader sees the orders of their "
        "own accounts only (404 for any other).",
    ),
)
async def get_order(reader: NamedDependency[Reader], order_id: FromPath[UUID]) -> OrderDetail:
    select = Select(_SELECT).where("order_id = {}", order_id)
    row = await reader.row(select.where_given(OWN_ACCOUNTS, reader.owner).statement())
    if row is None:
        raise not_found("ORDER_NOT_FOUND", f"order {order_id}")
    fills = await reader.rows((_FILLS_SQL, [order_id, FILLS_MAX]))
    return OrderDetail(**_fields(row), fills=[_fill(fill) for fill in fills])
