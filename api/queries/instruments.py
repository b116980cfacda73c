"""Instruments: what can be traded, its price and quantity grid, and its status."""

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
    decode_cursor,
    next_cursor,
)
from api.queries.reading import Reader, instrument_of, not_found, query
from api.queries.schemas import InstrumentPage, InstrumentView, amount
from ledger.domain.instrument import InstrumentStatus
from ledger.domain.user import Role

KEYSET: Final = Keyset(
    name="instruments", columns=("symbol", "instrument_id"), key_type=tuple[str, UUID]
)
_SELECT: Final = (
    "SELECT instrument_id, symbol, currency, tick_size, lot_size, price_precision, "
    "quantity_precision, status, status_reason, listed_at, updated_at, version "
    "FROM read.instruments"
)


def _view(row: asyncpg.Record) -> InstrumentView:
    return InstrumentView(
        instrument_id=row["instrument_id"],
        symbol=row["symbol"],
        currency=row["currency"],
        tick_size=amount(row["tick_size"]),
        lot_size=amount(row["lot_size"]),
        price_precision=row["price_precision"],
        quantity_precision=row["quantity_precision"],
        status=row["status"],
        status_reason=row["status_reason"],
        listed_at=row["listed_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


@get(
    "/api/v1/instruments",
    tags=["instruments"],
    **query(
        *Role,
        projection="instruments",
        summary="List instruments",
        description="By symbol (`order=asc`, the default here). Filters: status, currency, symbol.",
    ),
)
async def list_instruments(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.ASC,
    status: FromQuery[InstrumentStatus | None] = None,
    currency: Annotated[str | None, QueryParameter(pattern=r"^[A-Z]{3,4}$")] = None,
    symbol: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
) -> InstrumentPage:
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given("status = {}", None if status is None else status.value)
        .where_given("currency = {}", currency)
        .where_given("instrument_id = {}", instrument_of(symbol))
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return InstrumentPage(
        instruments=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/instruments/{instrument_id:uuid}",
    tags=["instruments"],
    **query(*Role, projection="instruments", one=True, summary="An instrument"),
)
async def get_instrument(
    reader: NamedDependency[Reader], instrument_id: FromPath[UUID]
) -> InstrumentView:
    row = await reader.row(Select(_SELECT).where("instrument_id = {}", instrument_id).statement())
    if row is None:
        raise not_found("INSTRUMENT_NOT_FOUND", f"instrument {instrument_id}")
    return _view(row)
