"""Position aggregate: one account's holding of one instrument, at average cost.

One stream per (account, instrument), with the deterministic id
:func:`position_stream_id`. The position is opened by the first event that
needs it: a sell order's reservation or the first fill.

``quantity`` is signed (negative is short) and ``cost_basis`` is signed with
it: the cost of the open quantity at average cost. A trade that adds to the
position (or opens it) adds ``quantity x price`` to the basis. A trade that
reduces it removes the basis pro rata (rounding rule 4 in ``money``) and
realises ``sign x closed x price - removed``; a trade larger than the position
closes it in full and opens the rest on the other side at the trade price (a
flip). Realised P&L is gross of fees; fees are totalled in ``fees_paid``.

Whatever the rounding, ``realised_pnl - cost_basis == -sum(signed quantity x
price)`` over all trades, exactly; the tests hold the aggregate to it.

Sell orders reserve the quantity they may sell (``reservations``), so that two
open sells cannot both count the same units; each sell fill uses up its order's
reservation, and the rest is released when the order ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from functools import singledispatch
from typing import Final, NamedTuple
from uuid import UUID, uuid5

import msgspec

from ledger.domain.base import Event
from ledger.domain.money import AVERAGE_COST_EXTRA_DIGITS, ZERO, divide, exact
from ledger.domain.side import Side

STREAM_TYPE: Final = "position"
POSITION_NAMESPACE: Final = UUID("0b6a8a52-3c7e-5f1d-8e24-9d13f0a6c4b2")
RESERVATION_COUNT_MAX: Final = 10_000


def position_stream_id(account_id: UUID, instrument_id: UUID) -> UUID:
    """The one position of ``account_id`` in ``instrument_id``."""
    return uuid5(POSITION_NAMESPACE, f"{account_id}:{instrument_id}")


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """Quantity an open sell order may still sell."""

    order_id: UUID
    quantity: Decimal


# Events ---------------------------------------------------------------------


class PositionOpened(Event, frozen=True, kw_only=True):
    account_id: UUID
    instrument_id: UUID


class SellQuantityReserved(Event, frozen=True, kw_only=True):
    order_id: UUID
    quantity: Decimal


class SellQuantityReleased(Event, frozen=True, kw_only=True):
    order_id: UUID
    quantity: Decimal


class TradeBooked(Event, frozen=True, kw_only=True):
    order_id: UUID
    fill_id: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    executed_at: datetime
    quantity_change: Decimal
    cost_basis_change: Decimal
    realised_pnl_change: Decimal


# State ----------------------------------------------------------------------


class PositionState(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    instrument_id: UUID
    quantity: Decimal
    cost_basis: Decimal
    realised_pnl: Decimal
    fees_paid: Decimal
    reservations: tuple[Reservation, ...]
    trade_count: int
    opened_at: datetime
    updated_at: datetime

    @property
    def reserved_quantity(self) -> Decimal:
        return sum((reservation.quantity for reservation in self.reservations), ZERO)

    def reservation_for(self, order_id: UUID) -> Reservation | None:
        for reservation in self.reservations:
            if reservation.order_id == order_id:
                return reservation
        return None


class TradeEffect(NamedTuple):
    quantity_change: Decimal
    cost_basis_change: Decimal
    realised_pnl_change: Decimal


@exact
def trade_effect(
    quantity: Decimal,
    cost_basis: Decimal,
    signed_quantity: Decimal,
    price: Decimal,
    *,
    notional_precision: int,
) -> TradeEffect:
    """How a trade of ``signed_quantity`` at ``price`` moves a position, at average cost."""
    assert signed_quantity != ZERO
    assert price > ZERO
    if quantity == ZERO or (quantity > ZERO) == (signed_quantity > ZERO):
        return TradeEffect(signed_quantity, signed_quantity * price, ZERO)
    open_size = abs(quantity)
    closed = min(abs(signed_quantity), open_size)
    if closed == open_size:
        removed = cost_basis  # A full close leaves no rounding residue.
    else:
        removed = divide(cost_basis * closed, open_size, notional_precision)
    position_sign = 1 if quantity > ZERO else -1
    realised = position_sign * closed * price - removed
    opened = abs(signed_quantity) - closed
    opened_cost = -position_sign * opened * price
    return TradeEffect(signed_quantity, opened_cost - removed, realised)


def average_cost(position: PositionState, price_precision: int) -> Decimal | None:
    """Cost basis per unit (rounding rule 5), or None when flat."""
    if position.quantity == ZERO:
        return None
    return divide(
        abs(position.cost_basis),
        abs(position.quantity),
        price_precision + AVERAGE_COST_EXTRA_DIGITS,
    )


# Movements decided by orders --------------------------------------------------


def open_position(
    position: PositionState | None, account_id: UUID, instrument_id: UUID, *, now: datetime
) -> tuple[list[Event], PositionState]:
    """The position, with a :class:`PositionOpened` to record first if it did not exist."""
    if position is not None:
        assert (position.account_id, position.instrument_id) == (account_id, instrument_id)
        return [], position
    opened = PositionOpened(occurred_at=now, account_id=account_id, instrument_id=instrument_id)
    return [opened], evolve(None, opened)


def reserve_sell_quantity(
    position: PositionState, order_id: UUID, quantity: Decimal, *, now: datetime
) -> SellQuantityReserved:
    assert position.reservation_for(order_id) is None, "an order reserves once"
    assert len(position.reservations) < RESERVATION_COUNT_MAX, "too many open sell orders"
    return SellQuantityReserved(occurred_at=now, order_id=order_id, quantity=quantity)


def release_sell_quantity(
    position: PositionState, order_id: UUID, *, now: datetime
) -> SellQuantityReleased | None:
    """Release what an ended sell order did not sell; None if it sold all of it."""
    reservation = position.reservation_for(order_id)
    if reservation is None:
        return None
    return SellQuantityReleased(occurred_at=now, order_id=order_id, quantity=reservation.quantity)


def book_trade(
    position: PositionState,
    *,
    order_id: UUID,
    fill_id: str,
    side: Side,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    executed_at: datetime,
    notional_precision: int,
    now: datetime,
) -> TradeBooked:
    effect = trade_effect(
        position.quantity,
        position.cost_basis,
        side.sign * quantity,
        price,
        notional_precision=notional_precision,
    )
    return TradeBooked(
        occurred_at=now,
        order_id=order_id,
        fill_id=fill_id,
        side=side,
        quantity=quantity,
        price=price,
        fee=fee,
        executed_at=executed_at,
        quantity_change=effect.quantity_change,
        cost_basis_change=effect.cost_basis_change,
        realised_pnl_change=effect.realised_pnl_change,
    )


# Evolution ------------------------------------------------------------------


@singledispatch
def _apply(event: Event, state: PositionState | None) -> PositionState:
    raise AssertionError(f"{type(event).__name__} does not belong to a position stream")


@_apply.register
def _(event: PositionOpened, state: PositionState | None) -> PositionState:
    assert state is None, "a position is opened once"
    return PositionState(
        account_id=event.account_id,
        instrument_id=event.instrument_id,
        quantity=ZERO,
        cost_basis=ZERO,
        realised_pnl=ZERO,
        fees_paid=ZERO,
        reservations=(),
        trade_count=0,
        opened_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: SellQuantityReserved, state: PositionState | None) -> PositionState:
    assert state is not None
    reservation = Reservation(order_id=event.order_id, quantity=event.quantity)
    return msgspec.structs.replace(
        state, reservations=(*state.reservations, reservation), updated_at=event.occurred_at
    )


@_apply.register
def _(event: SellQuantityReleased, state: PositionState | None) -> PositionState:
    assert state is not None
    reservations = tuple(r for r in state.reservations if r.order_id != event.order_id)
    assert len(reservations) == len(state.reservations) - 1, "released a missing reservation"
    return msgspec.structs.replace(state, reservations=reservations, updated_at=event.occurred_at)


def _use_reservation(
    reservations: tuple[Reservation, ...], order_id: UUID, quantity: Decimal
) -> tuple[Reservation, ...]:
    used: list[Reservation] = []
    found = False
    for reservation in reservations:
        if reservation.order_id != order_id:
            used.append(reservation)
            continue
        found = True
        left = reservation.quantity - quantity
        assert left >= ZERO, "sold more than the order reserved"
        if left > ZERO:
            used.append(Reservation(order_id=order_id, quantity=left))
    assert found, "a sell was booked without its reservation"
    return tuple(used)


@_apply.register
def _(event: TradeBooked, state: PositionState | None) -> PositionState:
    assert state is not None
    reservations = state.reservations
    if event.side is Side.SELL:
        reservations = _use_reservation(reservations, event.order_id, event.quantity)
    return msgspec.structs.replace(
        state,
        quantity=state.quantity + event.quantity_change,
        cost_basis=state.cost_basis + event.cost_basis_change,
        realised_pnl=state.realised_pnl + event.realised_pnl_change,
        fees_paid=state.fees_paid + event.fee,
        reservations=reservations,
        trade_count=state.trade_count + 1,
        updated_at=event.occurred_at,
    )


@exact
def evolve(state: PositionState | None, event: Event) -> PositionState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> PositionState | None:
    state: PositionState | None = None
    for event in events:
        state = evolve(state, event)
    return state
