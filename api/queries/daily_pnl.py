"""Daily P&L: per account and UTC day of execution, realised P&L, fees and notionals."""

from __future__ import annotations

from datetime import date
from typing import Final
from uuid import UUID

import asyncpg
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from api.queries.paging import (
    PAGE_LIMIT_DEFAULT,
    Cursor,
    FromDay,
    Keyset,
    Limit,
    Order,
    Select,
    SortOrder,
    ToDay,
    day_range,
    decode_cursor,
    next_cursor,
)
from api.queries.reading import OWN_ACCOUNTS, READERS, Reader, not_found, query
from api.queries.schemas import DailyPnlPage, DailyPnlView, amount

KEYSET: Final = Keyset(name="daily_pnl", columns=("day", "account_id"), key_type=tuple[date, UUID])
_SELECT: Final = (
    "SELECT account_id, day, realised_pnl, fees, net_pnl, trade_count, bought_notional, "
    "sold_notional FROM read.daily_pnl"
)


def _view(row: asyncpg.Record) -> DailyPnlView:
    return DailyPnlView(
        account_id=row["account_id"],
        day=row["day"],
        realised_pnl=amount(row["realised_pnl"]),
        fees=amount(row["fees"]),
        net_pnl=amount(row["net_pnl"]),
        trade_count=row["trade_count"],
        bought_notional=amount(row["bought_notional"]),
        sold_notional=amount(row["sold_notional"]),
    )


@get(
    "/api/v1/daily-pnl",
    tags=["pnl"],
    **query(
        *READERS,
        projection="daily_pnl",
        owned_through="accounts",
        summary="List daily P&L",
        description="Latest day first (then account id); days with trades only. A trader "
        "sees their own accounts. Filters: account_id, from/to (days, `to` exclusive).",
    ),
)
async def list_daily_pnl(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    account_id: FromQuery[UUID | None] = None,
    from_: FromDay = None,
    to: ToDay = None,
) -> DailyPnlPage:
    start, end = day_range(from_, to)
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given(OWN_ACCOUNTS, reader.owner)
        .where_given("account_id = {}", account_id)
        .where_given("day >= {}", start)
        .where_given("day < {}", end)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return DailyPnlPage(
        days=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/daily-pnl/{account_id:uuid}/{day:date}",
    tags=["pnl"],
    **query(
        *READERS,
        projection="daily_pnl",
        one=True,
        owned_through="accounts",
        summary="One account's P&L on one day",
        description="404 on a day without trades, and for a trader on another's account.",
    ),
)
async def get_daily_pnl(
    reader: NamedDependency[Reader], account_id: FromPath[UUID], day: FromPath[date]
) -> DailyPnlView:
    select = Select(_SELECT).where("account_id = {} AND day = {}", account_id, day)
    row = await reader.row(select.where_given(OWN_ACCOUNTS, reader.owner).statement())
    if row is None:
        raise not_found("DAILY_PNL_NOT_FOUND", f"P&L of account {account_id} on {day}")
    return _view(row)
