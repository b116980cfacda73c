"""Read model `orders`: each order's terms, status and fill totals, and `order_fills`,
one row per execution. The totals are sums in NUMERIC, exact like the domain's."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.money import ZERO
from ledger.domain.order import (
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderPlaced,
    OrderRejected,
    OrderStatus,
)
from projections import batch
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "orders"
TABLES: Final = ("orders", "order_fills")


async def _placed(connection: asyncpg.Connection, event: OrderPlaced, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO orders (order_id, account_id, instrument_id, side, order_type, quantity, "
        "limit_price, stop_price, time_in_force, signal_id, client_order_id, status, "
        "hold_amount, filled_quantity, filled_notional, cash_amount, fees, fill_count, "
        "placed_at, updated_at, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, 0, 0, 0, 0, 0, "
        "$13, $13, $14)",
        event.order_id,
        event.account_id,
        event.instrument_id,
        event.side.value,
        event.order_type.value,
        event.quantity,
        event.limit_price,
        event.stop_price,
        event.time_in_force.value,
        event.signal_id,
        event.client_order_id,
        OrderStatus.NEW.value,
        event.occurred_at,
        meta.version,
    )


async def _accepted(connection: asyncpg.Connection, event: OrderAccepted, meta: EventMeta) -> None:
    await execute(
        connection,
        "UPDATE orders SET status = $2, risk_price = $3, hold_price = $4, hold_amount = $5, "
        "updated_at = $6, version = $7 WHERE order_id = $1",
        meta.stream_id,
        OrderStatus.ACCEPTED.value,
        event.risk_price,
        event.hold_price,
        event.hold_amount,
        event.occurred_at,
        meta.version,
    )


async def _ended(
    connection: asyncpg.Connection,
    meta: EventMeta,
    event: Event,
    status: OrderStatus,
    reason_code: str | None,
    reason: str | None,
) -> None:
    # COALESCE keeps a reason already recorded when an event carries none (expiry).
    await execute(
        connection,
        "UPDATE orders SET status = $2, reason_code = COALESCE($3, reason_code), "
        "reason = COALESCE($4, reason), updated_at = $5, version = $6 WHERE order_id = $1",
        meta.stream_id,
        status.value,
        reason_code,
        reason,
        event.occurred_at,
        meta.version,
    )


async def _rejected(connection: asyncpg.Connection, event: OrderRejected, meta: EventMeta) -> None:
    await _ended(connection, meta, event, OrderStatus.REJECTED, event.reason_code, event.reason)


async def _cancelled(
    connection: asyncpg.Connection, event: OrderCancelled, meta: EventMeta
) -> None:
    await _ended(connection, meta, event, OrderStatus.CANCELLED, None, event.reason)


async def _expired(connection: asyncpg.Connection, event: OrderExpired, meta: EventMeta) -> None:
    await _ended(connection, meta, event, OrderStatus.EXPIRED, None, None)


async def _filled(
    connection: asyncpg.Connection, event: OrderPartiallyFilled | OrderFilled, meta: EventMeta
) -> None:
    fill = event.fill
    status = OrderStatus.FILLED if isinstance(event, OrderFilled) else OrderStatus.PARTIALLY_FILLED
    await execute(
        connection,
        "UPDATE orders SET status = $2, filled_quantity = filled_quantity + $3, "
        "filled_notional = filled_notional + $3::numeric * $4::numeric, "
        "cash_amount = cash_amount + $5, fees = fees + $6, fill_count = fill_count + 1, "
        "updated_at = $7, version = $8 WHERE order_id = $1",
        meta.stream_id,
        status.value,
        fill.quantity,
        fill.price,
        event.cash_amount,
        fill.fee,
        event.occurred_at,
        meta.version,
    )
    await execute(
        connection,
        "INSERT INTO order_fills (order_id, fill_id, quantity, price, fee, cash_amount, venue, "
        "executed_at, sequence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        meta.stream_id,
        fill.fill_id,
        fill.quantity,
        fill.price,
        fill.fee,
        event.cash_amount,
        fill.venue,
        fill.executed_at,
        meta.sequence,
    )


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "order_id", "account_id", "instrument_id", "side", "order_type", "quantity",
    "limit_price", "stop_price", "time_in_force", "signal_id", "client_order_id", "status",
    "risk_price", "hold_price", "hold_amount", "filled_quantity", "filled_notional",
    "cash_amount", "fees", "fill_count", "reason_code", "reason", "placed_at", "updated_at",
    "version",
)  # fmt: skip
(
    _STATUS, _RISK_PRICE, _HOLD_PRICE, _HOLD_AMOUNT, _FILLED_QUANTITY, _FILLED_NOTIONAL,
    _CASH_AMOUNT, _FEES, _FILL_COUNT, _REASON_CODE, _REASON, _UPDATED_AT, _VERSION,
) = (
    COLUMNS.index(name)
    for name in ("status", "risk_price", "hold_price", "hold_amount", "filled_quantity",
                 "filled_notional", "cash_amount", "fees", "fill_count", "reason_code",
                 "reason", "updated_at", "version")
)  # fmt: skip
FILL_COLUMNS: Final = (
    "order_id", "fill_id", "quantity", "price", "fee", "cash_amount", "venue", "executed_at",
    "sequence",
)  # fmt: skip
_ADDS: Final = {
    "filled_quantity": ZERO, "filled_notional": ZERO, "cash_amount": ZERO, "fees": ZERO,
    "fill_count": 0,
}  # fmt: skip
_NEW, _ACCEPTED, _FILLED, _PARTIALLY_FILLED = (
    status.value
    for status in (OrderStatus.NEW, OrderStatus.ACCEPTED, OrderStatus.FILLED,
                   OrderStatus.PARTIALLY_FILLED)
)  # fmt: skip


class Page(batch.Page):
    def __init__(self) -> None:
        self.orders = batch.Rows(
            "orders",
            COLUMNS,
            "order_id",
            _ADDS,
            free_text=("client_order_id", "reason_code", "reason"),
        )
        self.fills = batch.Rows(
            "order_fills", FILL_COLUMNS, ("order_id", "fill_id"), free_text=("fill_id", "venue")
        )

    def taken(self) -> Any:
        return self.orders.take(), self.fills.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        orders, fills = taken
        await self.orders.write(connection, schema, staging, orders)
        await self.fills.write(connection, schema, staging, fills)


def _fold_placed(page: Page, event: OrderPlaced, meta: batch.Meta) -> None:
    page.orders.insert(
        event.order_id,
        [event.order_id, event.account_id, event.instrument_id, event.side.value,
         event.order_type.value, event.quantity, event.limit_price, event.stop_price,
         event.time_in_force.value, event.signal_id, event.client_order_id, _NEW, None, None,
         ZERO, ZERO, ZERO, ZERO, ZERO, 0, None, None, event.occurred_at, event.occurred_at,
         meta.version],
    )  # fmt: skip


def _changed(page: Page, event: Event, meta: batch.Meta, status: str) -> list[Any]:
    row = page.orders.row(meta.stream_id)
    row[_STATUS] = status
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version
    return row


def _fold_accepted(page: Page, event: OrderAccepted, meta: batch.Meta) -> None:
    row = _changed(page, event, meta, _ACCEPTED)
    row[_RISK_PRICE] = event.risk_price
    row[_HOLD_PRICE] = event.hold_price
    row[_HOLD_AMOUNT] = event.hold_amount


def _fold_ended(
    page: Page,
    meta: batch.Meta,
    event: Event,
    status: OrderStatus,
    reason_code: str | None,
    reason: str | None,
) -> None:
    row = _changed(page, event, meta, status.value)
    # As COALESCE in the live statement: an event without a reason keeps the one recorded.
    if reason_code is not None:
        row[_REASON_CODE] = reason_code
    if reason is not None:
        row[_REASON] = reason


def _fold_rejected(page: Page, event: OrderRejected, meta: batch.Meta) -> None:
    _fold_ended(page, meta, event, OrderStatus.REJECTED, event.reason_code, event.reason)


def _fold_cancelled(page: Page, event: OrderCancelled, meta: batch.Meta) -> None:
    _fold_ended(page, meta, event, OrderStatus.CANCELLED, None, event.reason)


def _fold_expired(page: Page, event: OrderExpired, meta: batch.Meta) -> None:
    _fold_ended(page, meta, event, OrderStatus.EXPIRED, None, None)


def _fold_filled(page: Page, event: OrderPartiallyFilled | OrderFilled, meta: batch.Meta) -> None:
    fill = event.fill
    status = _FILLED if isinstance(event, OrderFilled) else _PARTIALLY_FILLED
    row = _changed(page, event, meta, status)
    row[_FILLED_QUANTITY] += fill.quantity
    row[_FILLED_NOTIONAL] += batch.product(fill.quantity, fill.price)
    row[_CASH_AMOUNT] += event.cash_amount
    row[_FEES] += fill.fee
    row[_FILL_COUNT] += 1
    page.fills.insert(
        (meta.stream_id, fill.fill_id),
        [meta.stream_id, fill.fill_id, fill.quantity, fill.price, fill.fee, event.cash_amount,
         fill.venue, fill.executed_at, meta.sequence],
    )  # fmt: skip


Page.COMPUTED = {
    OrderPartiallyFilled: frozenset({"cash_amount"}),
    OrderFilled: frozenset({"cash_amount"}),
}
Page.FOLDS = {
    OrderPlaced: _fold_placed,
    OrderAccepted: _fold_accepted,
    OrderRejected: _fold_rejected,
    OrderPartiallyFilled: _fold_filled,
    OrderFilled: _fold_filled,
    OrderCancelled: _fold_cancelled,
    OrderExpired: _fold_expired,
}

HANDLERS: Final[Handlers] = {
    OrderPlaced: _placed,
    OrderAccepted: _accepted,
    OrderRejected: _rejected,
    OrderPartiallyFilled: _filled,
    OrderFilled: _filled,
    OrderCancelled: _cancelled,
    OrderExpired: _expired,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
