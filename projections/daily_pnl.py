"""Read model `daily_pnl`: per account and UTC day of execution, realised P&L, fees,
net P&L, trade count and notional bought and sold.

TradeBooked is on the position's stream; `daily_pnl_positions` (from PositionOpened)
maps it to its account inside this projection's own tables.
"""

from __future__ import annotations

from datetime import UTC, date
from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.money import ZERO
from ledger.domain.position import PositionOpened, TradeBooked
from ledger.domain.side import Side
from projections import batch
from projections.base import (
    STATEMENT_TIMEOUT_S,
    EventMeta,
    Handlers,
    ReadModelError,
    dispatch,
    execute,
    expect_one,
)

NAME: Final = "daily_pnl"
TABLES: Final = ("daily_pnl", "daily_pnl_positions")


async def _opened(connection: asyncpg.Connection, event: PositionOpened, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO daily_pnl_positions (position_id, account_id) VALUES ($1, $2)",
        meta.stream_id,
        event.account_id,
    )


_BOOK_SQL: Final = """
INSERT INTO daily_pnl AS d (account_id, day, realised_pnl, fees, trade_count,
                            bought_notional, sold_notional)
SELECT p.account_id, $2, $3, $4, 1,
       CASE WHEN $5 THEN $6::numeric * $7::numeric ELSE 0 END,
       CASE WHEN $5 THEN 0 ELSE $6::numeric * $7::numeric END
FROM daily_pnl_positions p WHERE p.position_id = $1
ON CONFLICT (account_id, day) DO UPDATE SET
    realised_pnl = d.realised_pnl + EXCLUDED.realised_pnl,
    fees = d.fees + EXCLUDED.fees,
    trade_count = d.trade_count + 1,
    bought_notional = d.bought_notional + EXCLUDED.bought_notional,
    sold_notional = d.sold_notional + EXCLUDED.sold_notional"""


async def _booked(connection: asyncpg.Connection, event: TradeBooked, meta: EventMeta) -> None:
    status = await connection.execute(
        _BOOK_SQL,
        meta.stream_id,
        event.executed_at.astimezone(UTC).date(),
        event.realised_pnl_change,
        event.fee,
        event.side is Side.BUY,
        event.quantity,
        event.price,
        timeout=10.0,
    )
    expect_one(status, "INSERT", f"trade on position {meta.stream_id} without its account")


# Page fold (projections/batch.py): a page's trades summed per (position, day), then per
# (account, day) in one upsert joined to the page's and older position -> account rows.

_SUMS_COLUMNS: Final = (
    "position_id", "day", "realised_pnl", "fees", "trade_count", "bought_notional",
    "sold_notional",
)  # fmt: skip
_STAGED_SUMS: Final = """(position_id uuid, day date, realised_pnl numeric, fees numeric,
    trade_count integer, bought_notional numeric, sold_notional numeric)"""
_SUMS_SQL: Final = """
WITH s AS (
    DELETE FROM {staged} RETURNING position_id, day, realised_pnl, fees, trade_count,
        bought_notional, sold_notional
), joined AS (
    SELECT p.account_id, s.* FROM s JOIN {schema}.daily_pnl_positions p USING (position_id)
), upserted AS (
    INSERT INTO {schema}.daily_pnl AS d (account_id, day, realised_pnl, fees, trade_count,
                                         bought_notional, sold_notional)
    SELECT account_id, day, sum(realised_pnl), sum(fees), sum(trade_count),
           sum(bought_notional), sum(sold_notional)
    FROM joined GROUP BY account_id, day
    ON CONFLICT (account_id, day) DO UPDATE SET
        realised_pnl = d.realised_pnl + EXCLUDED.realised_pnl,
        fees = d.fees + EXCLUDED.fees,
        trade_count = d.trade_count + EXCLUDED.trade_count,
        bought_notional = d.bought_notional + EXCLUDED.bought_notional,
        sold_notional = d.sold_notional + EXCLUDED.sold_notional
)
SELECT count(*) FROM joined"""


class Page(batch.Page):
    def __init__(self) -> None:
        self.positions = batch.Rows(
            "daily_pnl_positions", ("position_id", "account_id"), "position_id"
        )
        # (position, day) -> [realised_pnl, fees, trade_count, bought, sold]
        self.sums: dict[tuple[str, date], list[Any]] = {}

    def taken(self) -> Any:
        sums, self.sums = self.sums, {}
        return self.positions.take(), sums

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        positions, sums = taken
        await self.positions.write(connection, schema, staging, positions)
        if not sums:
            return
        staged = await staging.made(connection, "staged_daily_sums", _STAGED_SUMS)
        rows = [[position_id, day, *values] for (position_id, day), values in sums.items()]
        await batch.copy_rows(connection, None, staged, _SUMS_COLUMNS, rows)
        sql = _SUMS_SQL.format(schema=schema, staged=staged)
        joined = await connection.fetchval(sql, timeout=STATEMENT_TIMEOUT_S)
        if joined != len(rows):
            raise ReadModelError(f"{len(rows) - joined} trades on positions without an account")


def _fold_opened(page: Page, event: PositionOpened, meta: batch.Meta) -> None:
    page.positions.insert(meta.stream_id, [meta.stream_id, event.account_id])


def _fold_booked(page: Page, event: TradeBooked, meta: batch.Meta) -> None:
    key = (meta.stream_id, event.executed_at.astimezone(UTC).date())
    sums = page.sums.get(key)
    if sums is None:
        sums = page.sums[key] = [ZERO, ZERO, 0, ZERO, ZERO]
    sums[0] += event.realised_pnl_change
    sums[1] += event.fee
    sums[2] += 1
    sums[3 if event.side is Side.BUY else 4] += batch.product(event.quantity, event.price)


Page.COMPUTED = {
    TradeBooked: frozenset({"realised_pnl_change", "fee", "quantity", "price", "executed_at"})
}
Page.FOLDS = {PositionOpened: _fold_opened, TradeBooked: _fold_booked}

HANDLERS: Final[Handlers] = {PositionOpened: _opened, TradeBooked: _booked}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
