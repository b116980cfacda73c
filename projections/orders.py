"""Read model `orders`: each order's terms, status and fill totals, and `order_fills`,
one row per execution. The totals are sums in NUMERIC, exact like the domain's."""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
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
