"""Read model `positions`: quantity, cost basis, average cost, realised P&L and fees of
each (account, instrument), and the quantity reserved by open sell orders.

Average cost follows rounding rule 5 (half-even to price precision + 4), which needs the
instrument's price precision: this projection keeps its own `position_instruments`
rather than read another projection's table, so it can be rebuilt alone.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.instrument import InstrumentListed
from ledger.domain.money import AVERAGE_COST_EXTRA_DIGITS
from ledger.domain.position import (
    PositionOpened,
    SellQuantityReleased,
    SellQuantityReserved,
    TradeBooked,
)
from ledger.domain.side import Side
from projections.base import EventMeta, Handlers, dispatch, execute, expect_one

NAME: Final = "positions"
TABLES: Final = ("positions", "position_instruments")


async def _listed(connection: asyncpg.Connection, event: InstrumentListed, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO position_instruments (instrument_id, price_precision) VALUES ($1, $2)",
        event.instrument_id,
        event.price_precision,
    )


async def _opened(connection: asyncpg.Connection, event: PositionOpened, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO positions (position_id, account_id, instrument_id, quantity, cost_basis, "
        "realised_pnl, fees_paid, reserved_quantity, trade_count, opened_at, updated_at, "
        "version) VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, $4, $4, $5)",
        meta.stream_id,
        event.account_id,
        event.instrument_id,
        event.occurred_at,
        meta.version,
    )


async def _reserve(
    connection: asyncpg.Connection, meta: EventMeta, event: Event, change: object
) -> None:
    await execute(
        connection,
        "UPDATE positions SET reserved_quantity = reserved_quantity + $2, updated_at = $3, "
        "version = $4 WHERE position_id = $1",
        meta.stream_id,
        change,
        event.occurred_at,
        meta.version,
    )


async def _reserved(
    connection: asyncpg.Connection, event: SellQuantityReserved, meta: EventMeta
) -> None:
    await _reserve(connection, meta, event, event.quantity)


async def _released(
    connection: asyncpg.Connection, event: SellQuantityReleased, meta: EventMeta
) -> None:
    await _reserve(connection, meta, event, -event.quantity)


# A sell fill uses up that much of its order's reservation (the domain asserts it had
# enough), so the reserved total drops by the quantity sold.
_BOOK_SQL: Final = f"""
UPDATE positions p SET
    quantity = p.quantity + $2,
    cost_basis = p.cost_basis + $3,
    realised_pnl = p.realised_pnl + $4,
    fees_paid = p.fees_paid + $5,
    reserved_quantity = p.reserved_quantity - $6,
    trade_count = p.trade_count + 1,
    average_cost = CASE WHEN p.quantity + $2 = 0 THEN NULL ELSE read.divide_half_even(
        abs(p.cost_basis + $3), abs(p.quantity + $2),
        i.price_precision + {AVERAGE_COST_EXTRA_DIGITS}) END,
    updated_at = $7,
    version = $8
FROM position_instruments i
WHERE p.position_id = $1 AND i.instrument_id = p.instrument_id"""


async def _booked(connection: asyncpg.Connection, event: TradeBooked, meta: EventMeta) -> None:
    status = await connection.execute(
        _BOOK_SQL,
        meta.stream_id,
        event.quantity_change,
        event.cost_basis_change,
        event.realised_pnl_change,
        event.fee,
        event.quantity if event.side is Side.SELL else 0,
        event.occurred_at,
        meta.version,
        timeout=10.0,
    )
    expect_one(status, "UPDATE", f"trade on position {meta.stream_id} without its position")


HANDLERS: Final[Handlers] = {
    InstrumentListed: _listed,
    PositionOpened: _opened,
    SellQuantityReserved: _reserved,
    SellQuantityReleased: _released,
    TradeBooked: _booked,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
