"""Read model `daily_pnl`: per account and UTC day of execution, realised P&L, fees,
net P&L, trade count and notional bought and sold.

TradeBooked is on the position's stream; `daily_pnl_positions` (from PositionOpened)
maps it to its account inside this projection's own tables.
"""

from __future__ import annotations

from datetime import UTC
from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.position import PositionOpened, TradeBooked
from ledger.domain.side import Side
from projections.base import EventMeta, Handlers, dispatch, execute, expect_one

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


HANDLERS: Final[Handlers] = {PositionOpened: _opened, TradeBooked: _booked}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
