"""Strategies: name, owner, parameters and whether they are active."""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec
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
from api.queries.reading import READERS, Reader, not_found, query
from api.queries.schemas import StrategyPage, StrategyView

KEYSET: Final = Keyset(
    name="strategies", columns=("created_at", "strategy_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT strategy_id, name, owner_id, parameters, active, created_at, updated_at, version "
    "FROM read.strategies"
)


def _view(row: asyncpg.Record) -> StrategyView:
    return StrategyView(
        strategy_id=row["strategy_id"],
        name=row["name"],
        owner_id=row["owner_id"],
        parameters=msgspec.json.decode(row["parameters"], type=dict[str, Any]),
        active=row["active"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


@get(
    "/api/v1/strategies",
    tags=["strategies"],
    **query(
        *READERS,
        projection="strategies",
        summary="List strategies",
        description="Newest first (by `created_at`, then id). A trader sees the strategies "
        "they own. Filters: owner_id, active.",
    ),
)
async def list_strategies(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    owner_id: FromQuery[UUID | None] = None,
    active: FromQuery[bool | None] = None,
) -> StrategyPage:
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given("owner_id = {}", reader.owner)
        .where_given("owner_id = {}", owner_id)
        .where_given("active = {}", active)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return StrategyPage(
        strategies=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/strategies/{strategy_id:uuid}",
    tags=["strategies"],
    **query(
        *READERS,
        projection="strategies",
        one=True,
        summary="A strategy",
        description="A trader sees the strategies they own only (404 for any other).",
    ),
)
async def get_strategy(
    reader: NamedDependency[Reader], strategy_id: FromPath[UUID]
) -> StrategyView:
    select = Select(_SELECT).where("strategy_id = {}", strategy_id)
    row = await reader.row(select.where_given("owner_id = {}", reader.owner).statement())
    if row is None:
        raise not_found("STRATEGY_NOT_FOUND", f"strategy {strategy_id}")
    return _view(row)
