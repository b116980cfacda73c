"""Accounts with their balances: one account per user and currency."""

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
from api.queries.reading import READERS, Reader, not_found, query
from api.queries.schemas import AccountPage, AccountView, amount, optional_amount

KEYSET: Final = Keyset(
    name="accounts", columns=("opened_at", "account_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT account_id, user_id, currency, available, reserved, allow_short_selling, fee_rate, "
    "max_order_notional, opened_at, updated_at, version FROM read.accounts"
)


def _view(row: asyncpg.Record) -> AccountView:
    return AccountView(
        account_id=row["account_id"],
        user_id=row["user_id"],
        currency=row["currency"],
        available=amount(row["available"]),
        reserved=amount(row["reserved"]),
        total=amount(row["available"] + row["reserved"]),
        allow_short_selling=row["allow_short_selling"],
        fee_rate=amount(row["fee_rate"]),
        max_order_notional=optional_amount(row["max_order_notional"]),
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


@get(
    "/api/v1/accounts",
    tags=["accounts"],
    **query(
        *READERS,
        projection="accounts",
        summary="List accounts and balances",
        description="Newest first (by `opened_at`, then id). A trader sees their own accounts. "
        "Filters: user_id, currency.",
    ),
)
async def list_accounts(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    user_id: FromQuery[UUID | None] = None,
    currency: Annotated[str | None, QueryParameter(pattern=r"^[A-Z]{3,4}$")] = None,
) -> AccountPage:
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given("user_id = {}", reader.owner)
        .where_given("user_id = {}", user_id)
        .where_given("currency = {}", currency)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return AccountPage(
        accounts=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/accounts/{account_id:uuid}",
    tags=["accounts"],
    **query(
        *READERS,
        projection="accounts",
        one=True,
        summary="An account and its balances",
        description="A trader sees their own accounts only (404 for any other).",
    ),
)
async def get_account(reader: NamedDependency[Reader], account_id: FromPath[UUID]) -> AccountView:
    select = Select(_SELECT).where("account_id = {}", account_id)
    row = await reader.row(select.where_given("user_id = {}", reader.owner).statement())
    if row is None:
        raise not_found("ACCOUNT_NOT_FOUND", f"account {account_id}")
    return _view(row)
