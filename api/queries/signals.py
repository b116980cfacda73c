"""Signals emitted by strategies, with their reasons and indicators."""

from __future__ import annotations

from typing import Annotated, Final
from uuid import UUID

import asyncpg
import msgspec
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
from api.queries.reading import READERS, Reader, instrument_of, not_found, query
from api.queries.schemas import SignalPage, SignalView, amount
from ledger.domain.signal import SignalAction

KEYSET: Final = Keyset(
    name="signals", columns=("emitted_at", "signal_id"), key_type=tuple[UtcTime, UUID]
)
_SELECT: Final = (
    "SELECT signal_id, strategy_id, instrument_id, action, strength, reasons, indicators, "
    "emitted_at FROM read.signals"
)
_OWN_STRATEGIES: Final = (
    "strategy_id IN (SELECT strategy_id FROM read.strategies WHERE owner_id = {})"
)


def _view(row: asyncpg.Record) -> SignalView:
    return SignalView(
        signal_id=row["signal_id"],
        strategy_id=row["strategy_id"],
        instrument_id=row["instrument_id"],
        action=row["action"],
        strength=amount(row["strength"]),
        reasons=msgspec.json.decode(row["reasons"], type=list[str]),
        indicators=msgspec.json.decode(row["indicators"], type=dict[str, str]),
        emitted_at=row["emitted_at"],
    )


@get(
    "/api/v1/signals",
    tags=["signals"],
    **query(
        *READERS,
        projection="signals",
        owned_through="strategies",
        summary="List signals",
        description="Newest first (by `emitted_at`, then id). A trader sees the signals of "
        "their own strategies. Filters: strategy_id, instrument_id or symbol, action, "
        "from/to (emitted_at).",
    ),
)
async def list_signals(
    reader: NamedDependency[Reader],
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    order: Order = SortOrder.DESC,
    strategy_id: FromQuery[UUID | None] = None,
    instrument_id: FromQuery[UUID | None] = None,
    symbol: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
    action: FromQuery[SignalAction | None] = None,
    from_: From = None,
    to: To = None,
) -> SignalPage:
    start, end = time_range(from_, to)
    after = decode_cursor(KEYSET, order, cursor)
    select = (
        Select(_SELECT)
        .where_given(_OWN_STRATEGIES, reader.owner)
        .where_given("strategy_id = {}", strategy_id)
        .where_given("instrument_id = {}", instrument_id)
        .where_given("instrument_id = {}", instrument_of(symbol))
        .where_given("action = {}", None if action is None else action.value)
        .where_given("emitted_at >= {}", start)
        .where_given("emitted_at < {}", end)
    )
    rows = await reader.rows(select.page(KEYSET, order, after, limit))
    return SignalPage(
        signals=[_view(row) for row in rows[:limit]],
        next_cursor=next_cursor(KEYSET, order, rows, limit),
    )


@get(
    "/api/v1/signals/{signal_id:uuid}",
    tags=["signals"],
    **query(
        *READERS,
        projection="signals",
        one=True,
        owned_through="strategies",
        summary="A signal",
        description="A trader sees the signals of their own strategies only (404 for any other).",
    ),
)
async def get_signal(reader: NamedDependency[Reader], signal_id: FromPath[UUID]) -> SignalView:
    select = Select(_SELECT).where("signal_id = {}", signal_id)
    row = await reader.row(select.where_given(_OWN_STRATEGIES, reader.owner).statement())
    if row is None:
        raise not_found("SIGNAL_NOT_FOUND", f"signal {signal_id}")
    return _view(row)
