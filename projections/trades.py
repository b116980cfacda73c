"""Read model `trades`: one row per fill, from both sides of its booking.

The account's TradeSettled gives the account, the instrument and the cash; the
position's TradeBooked gives the execution time and the realised P&L. Each is an upsert
by (order_id, fill_id), so the row is right whichever comes first (the fill decision
appends the settlement first, but nothing here depends on it).
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.account import TradeSettled
from ledger.domain.position import TradeBooked
from projections import batch
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "trades"
TABLES: Final = ("trades",)


async def _settled(connection: asyncpg.Connection, event: TradeSettled, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO trades (order_id, fill_id, account_id, instrument_id, side, quantity, "
        "price, fee, cash_amount, settled_at, sequence) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "ON CONFLICT (order_id, fill_id) DO UPDATE SET account_id = EXCLUDED.account_id, "
        "instrument_id = EXCLUDED.instrument_id, cash_amount = EXCLUDED.cash_amount, "
        "settled_at = EXCLUDED.settled_at",
        event.order_id,
        event.fill_id,
        meta.stream_id,
        event.instrument_id,
        event.side.value,
        event.quantity,
        event.price,
        event.fee,
        event.cash_amount,
        event.occurred_at,
        meta.sequence,
    )


async def _booked(connection: asyncpg.Connection, event: TradeBooked, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO trades (order_id, fill_id, side, quantity, price, fee, realised_pnl, "
        "executed_at, sequence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (order_id, fill_id) DO UPDATE SET realised_pnl = EXCLUDED.realised_pnl, "
        "executed_at = EXCLUDED.executed_at",
        event.order_id,
        event.fill_id,
        event.side.value,
        event.quantity,
        event.price,
        event.fee,
        event.realised_pnl_change,
        event.executed_at,
        meta.sequence,
    )


# Page fold (projections/batch.py): the same upserts, each row written once per page.

COLUMNS: Final = (
    "order_id", "fill_id", "account_id", "instrument_id", "side", "quantity", "price", "fee",
    "cash_amount", "realised_pnl", "executed_at", "settled_at", "sequence",
)  # fmt: skip
_SETTLED_ON_CONFLICT: Final = tuple(
    COLUMNS.index(name) for name in ("account_id", "instrument_id", "cash_amount", "settled_at")
)
_BOOKED_ON_CONFLICT: Final = tuple(COLUMNS.index(name) for name in ("realised_pnl", "executed_at"))


class Page(batch.Page):
    def __init__(self) -> None:
        self.trades = batch.Upserts(
            "trades", COLUMNS, ("order_id", "fill_id"), free_text=("fill_id",)
        )

    def taken(self) -> Any:
        return self.trades.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.trades.write(connection, schema, staging, taken)


def _fold_settled(page: Page, event: TradeSettled, meta: batch.Meta) -> None:
    page.trades.upsert(
        (event.order_id, event.fill_id),
        [event.order_id, event.fill_id, meta.stream_id, event.instrument_id, event.side.value,
         event.quantity, event.price, event.fee, event.cash_amount, None, None,
         event.occurred_at, meta.sequence],
        _SETTLED_ON_CONFLICT,
    )  # fmt: skip


def _fold_booked(page: Page, event: TradeBooked, meta: batch.Meta) -> None:
    page.trades.upsert(
        (event.order_id, event.fill_id),
        [event.order_id, event.fill_id, None, None, event.side.value, event.quantity,
         event.price, event.fee, None, event.realised_pnl_change, event.executed_at, None,
         meta.sequence],
        _BOOKED_ON_CONFLICT,
    )  # fmt: skip


Page.FOLDS = {TradeSettled: _fold_settled, TradeBooked: _fold_booked}

HANDLERS: Final[Handlers] = {TradeSettled: _settled, TradeBooked: _booked}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
