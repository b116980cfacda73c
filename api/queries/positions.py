"""Positions: quantity, average cost and realised P&L per account and instrument."""

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
    Keyset,
    Limit,
    Order,
    Select,
    SortOrder,
    UtcTime,
    decode_cursor,
    next_cursor,
)
from api.queries.reading import OWN_ACCOUNTS, READERS, Reader, instrument_of, not_found, query
from api.queries.schemas import PositionPage, PositionView, amount, optional_amount

KEYSET: Final = Keyset(
    name="positions", columns=("opened_at", "position_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT position_id, account_id, instrument_id, quantity, average_cost, cost_basis, "
    "realised_pnl, fees_paid, reserved_quantity, trade_count, opened_at, updated_at, version "
    "FROM read.positions"
)


def _view(row: asyncpg.Record) -> PositionView:
    return PositionView(
        position_id=row["position_id"],
        account_id=row["account_id"],
        instrument_id=row["instrument_id"],
        quantity=amount(row["quantity"]),
        average_cost=optional_amount(row["average_cost"]),
        cost_basis=amount(row["cost_basis"]),
        realised_pnl=amount(row["realised_pnl"]),
        fees_paid=amount(row["fees_paid"]),
        reserved_quantity=amount(row["reserved_quantity"]),
        trade_count=row["trade_count"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


@get(
    "/api/v1/positions",
    tags=["positions"],
    **query(
        *READERS,
        projection="positions",
        owned_through="accounts",
        summary="List positions",
        description="Newest first (by `opened_at`, then id). A trader sees the positions of "
        "their own accounts. Filters: account_id, instrument_id or symbol, open (true: "
        "quantity is not zero; false: flat).",
    ),
)
async def list_positions(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    account_id: FromQuery[UUID | None] = None,
    instrument_id: FromQuery[UUID | None] = None,
    symbol: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
    open: FromQuery[bool | None] = None,
) -> PositionPage:
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given(OWN_ACCOUNTS, reader.owner)
        .where_given("account_id = {}", account_id)
        .where_given("instrument_id = {}", instrument_id)
        .where_given("instrument_id = {}", instrument_of(symbol))
    )
    if open is not None:
        select.where("quantity <> 0" if open else "quantity = 0")
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return PositionPage(
        positions=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/positions/{position_id:uuid}",
    tags=["positions"],
    **query(
        *READERS,
        projection="positions",
        one=True,
        owned_through="accounts",
        summary="A position",
        description="A trader sees the positions of their own accounts only (404 for any other).",
    ),
)
async def get_position(
    reader: NamedDependency[Reader], position_id: FromPath[UUID]
) -> PositionView:
    select = Select(_SELECT).where("position_id = {}", position_id)
    row = await reader.row(select.where_given(OWN_ACCOUNTS, reader.owner).statement())
    if row is None:
        raise not_found("POSITION_NOT_FOUND", f"position {position_id}")
    return _view(row)
