"""Users as the users read model has them (admin): role and status, never the hash."""

from __future__ import annotations

from typing import Final
from uuid import UUID

import asyncpg
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

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
from api.queries.reading import Reader, not_found, query
from api.queries.schemas import UserPage, UserView
from ledger.domain.user import Role

KEYSET: Final = Keyset(
    name="users", columns=("registered_at", "user_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT user_id, email, display_name, role, disabled, disabled_reason, registered_at, "
    "updated_at, version FROM read.users"
)


def _view(row: asyncpg.Record) -> UserView:
    return UserView(
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        role=row["role"],
        disabled=row["disabled"],
        disabled_reason=row["disabled_reason"],
        registered_at=row["registered_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


@get(
    "/api/v1/users",
    tags=["users"],
    **query(
        Role.ADMIN,
        projection="users",
        summary="List users",
        description="Newest first (by `registered_at`, then id). Filters: role, disabled.",
    ),
)
async def list_users(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    role: FromQuery[Role | None] = None,
    disabled: FromQuery[bool | None] = None,
) -> UserPage:
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given("role = {}", None if role is None else role.value)
        .where_given("disabled = {}", disabled)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return UserPage(
        users=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/users/{user_id:uuid}",
    tags=["users"],
    **query(Role.ADMIN, projection="users", one=True, summary="A user"),
)
async def get_user(reader: NamedDependency[Reader], user_id: FromPath[UUID]) -> UserView:
    row = await reader.row(Select(_SELECT).where("user_id = {}", user_id).statement())
    if row is None:
        raise not_found("USER_NOT_FOUND", f"user {user_id}")
    return _view(row)
