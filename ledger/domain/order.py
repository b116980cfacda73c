"""Order aggregate: the vocabulary, the state machine and its evolution.

States: ``new -> accepted -> partially_filled -> filled``, or ``rejected`` /
``cancelled`` / ``expired``. ``filled``, ``rejected``, ``cancelled`` and
``expired`` are terminal: no event follows them (the evolution asserts it).

The decisions live beside this module: ``placement`` (PlaceOrder and the
pre-trade risk checks), ``fill`` (FillOrder) and ``cancellation`` (CancelOrder,
ExpireOrder, RejectOrder). Each returns :class:`StreamEvent` items for every
stream it touches: the order, the account (holds, settlement) and the position
(sell reservations, trades), to be appended in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import singledispatch
from typing import Final
from uuid import UUID

import msgspec

from ledger.domain.base import Command, Event
from ledger.domain.money import ZERO, exact
from ledger.domain.side import Side

STREAM_TYPE: Final = "order"
FILL_COUNT_MAX: Final = 1_000


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(StrEnum):
    NEW = "new"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def open(self) -> bool:
        """Accepted and not ended: it may be filled, cancelled or expired."""
        return self in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


_TERMINAL: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED}
)


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """An execution reported by the venue."""

    fill_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    venue: str
    executed_at: datetime


# Events ---------------------------------------------------------------------


class OrderPlaced(Event, frozen=True, kw_only=True):
    order_id: UUID
    account_id: UUID
    instrument_id: UUID
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce
    signal_id: UUID | None
    client_order_id: str | None


class OrderAccepted(Event, frozen=True, kw_only=True):
    """The order passed the risk checks.

    ``risk_price`` is the price its notional was checked at (limit, stop or the
    reference price); ``hold_price`` is the worst price a buy may fill at (limit,
    or the collar above the reference or stop price) and ``hold_amount`` the cash
    held for it, fee included. Sells hold no cash (``hold_amount`` 0).
    """

    risk_price: Decimal
    hold_price: Decimal | None
    hold_amount: Decimal


class OrderRejected(Event, frozen=True, kw_only=True):
    """The order failed a risk check (``reason_code`` is its error code) or the venue refused it."""

    reason_code: str
    reason: str


class OrderPartiallyFilled(Event, frozen=True, kw_only=True):
    fill: Fill
    cash_amount: Decimal


class OrderFilled(Event, frozen=True, kw_only=True):
    fill: Fill
    cash_amount: Decimal


class OrderCancelled(Event, frozen=True, kw_only=True):
    reason: str


class OrderExpired(Event, frozen=True, kw_only=True):
    pass


# Commands -------------------------------------------------------------------


class PlaceOrder(Command, frozen=True, kw_only=True):
    order_id: UUID
    account_id: UUID
    instrument_id: UUID
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    signal_id: UUID | None = None
    client_order_id: str | None = None


class FillOrder(Command, frozen=True, kw_only=True):
    order_id: UUID
    fill_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    venue: str
    executed_at: datetime


class CancelOrder(Command, frozen=True, kw_only=True):
    order_id: UUID
    reason: str = ""


class ExpireOrder(Command, frozen=True, kw_only=True):
    order_id: UUID


class RejectOrder(Command, frozen=True, kw_only=True):
    """The venue refused an accepted order before any fill."""

    order_id: UUID
    reason: str


# State ----------------------------------------------------------------------


class OrderState(msgspec.Struct, frozen=True, kw_only=True):
    order_id: UUID
    account_id: UUID
    instrument_id: UUID
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce
    signal_id: UUID | None
    client_order_id: str | None
    status: OrderStatus
    risk_price: Decimal | None
    hold_price: Decimal | None
    hold_amount: Decimal
    filled_quantity: Decimal
    filled_notional: Decimal
    cash_amount: Decimal
    fees: Decimal
    fill_ids: tuple[str, ...]
    reason_code: str | None
    reason: str | None
    placed_at: datetime
    updated_at: datetime

    @property
    def open_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity


# Evolution ------------------------------------------------------------------


@singledispatch
def _apply(event: Event, state: OrderState | None) -> OrderState:
    raise AssertionError(f"{type(event).__name__} does not belong to an order stream")


@_apply.register
def _(event: OrderPlaced, state: OrderState | None) -> OrderState:
    assert state is None, "an order is placed once"
    return OrderState(
        order_id=event.order_id,
        account_id=event.account_id,
        instrument_id=event.instrument_id,
        side=event.side,
        order_type=event.order_type,
        quantity=event.quantity,
        limit_price=event.limit_price,
        stop_price=event.stop_price,
        time_in_force=event.time_in_force,
        signal_id=event.signal_id,
        client_order_id=event.client_order_id,
        status=OrderStatus.NEW,
        risk_price=None,
        hold_price=None,
        hold_amount=ZERO,
        filled_quantity=ZERO,
        filled_notional=ZERO,
        cash_amount=ZERO,
        fees=ZERO,
        fill_ids=(),
        reason_code=None,
        reason=None,
        placed_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _live(state: OrderState | None, allowed: Iterable[OrderStatus]) -> OrderState:
    assert state is not None
    assert state.status in allowed, f"no such transition out of {state.status}"
    return state


@_apply.register
def _(event: OrderAccepted, state: OrderState | None) -> OrderState:
    order = _live(state, (OrderStatus.NEW,))
    return msgspec.structs.replace(
        order,
        status=OrderStatus.ACCEPTED,
        risk_price=event.risk_price,
        hold_price=event.hold_price,
        hold_amount=event.hold_amount,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: OrderRejected, state: OrderState | None) -> OrderState:
    order = _live(state, (OrderStatus.NEW, OrderStatus.ACCEPTED))
    return msgspec.structs.replace(
        order,
        status=OrderStatus.REJECTED,
        reason_code=event.reason_code,
        reason=event.reason,
        updated_at=event.occurred_at,
    )


def _filled(state: OrderState | None, event: OrderPartiallyFilled | OrderFilled) -> OrderState:
    order = _live(state, (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))
    fill = event.fill
    filled_quantity = order.filled_quantity + fill.quantity
    assert filled_quantity <= order.quantity, "filled more than the order quantity"
    complete = filled_quantity == order.quantity
    assert complete == isinstance(event, OrderFilled), "fill event does not match the quantity"
    return msgspec.structs.replace(
        order,
        status=OrderStatus.FILLED if complete else OrderStatus.PARTIALLY_FILLED,
        filled_quantity=filled_quantity,
        filled_notional=order.filled_notional + fill.quantity * fill.price,
        cash_amount=order.cash_amount + event.cash_amount,
        fees=order.fees + fill.fee,
        fill_ids=(*order.fill_ids, fill.fill_id),
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: OrderPartiallyFilled, state: OrderState | None) -> OrderState:
    return _filled(state, event)


@_apply.register
def _(event: OrderFilled, state: OrderState | None) -> OrderState:
    return _filled(state, event)


@_apply.register
def _(event: OrderCancelled, state: OrderState | None) -> OrderState:
    order = _live(state, (OrderStatus.NEW, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))
    return msgspec.structs.replace(
        order, status=OrderStatus.CANCELLED, reason=event.reason, updated_at=event.occurred_at
    )


@_apply.register
def _(event: OrderExpired, state: OrderState | None) -> OrderState:
    order = _live(state, (OrderStatus.NEW, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))
    return msgspec.structs.replace(order, status=OrderStatus.EXPIRED, updated_at=event.occurred_at)


@exact
def evolve(state: OrderState | None, event: Event) -> OrderState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> OrderState | None:
    state: OrderState | None = None
    for event in events:
        state = evolve(state, event)
    return state
