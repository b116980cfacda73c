"""Ending an order without (further) fills: cancel, expire, or a venue's rejection.

Each ends the order and, in the same decision, gives back what it still holds:
the rest of a buy's cash hold (``HoldReleased``, exactly once per order) or the
unsold part of a sell's reservation (``SellQuantityReleased``). Ending an order
that is already in a terminal state is an :class:`InvalidStateTransitionError`.

- Cancel: the trader (or an operator) withdraws an open order.
- Expire: the session ends for a day order, or the venue lets the rest of an
  immediate-or-cancel / fill-or-kill order lapse. Good-till-cancelled orders do
  not expire (:class:`OrderNotExpirableError`).
- Reject: the venue refuses an accepted order before any fill. Recorded as
  ``OrderRejected`` with reason code :data:`VENUE_REJECTED`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from ledger.domain import account as account_module
from ledger.domain import order as order_module
from ledger.domain import position as position_module
from ledger.domain.account import AccountState, release_hold
from ledger.domain.base import Event, StreamEvent, assert_utc
from ledger.domain.errors import (
    InvalidStateTransitionError,
    OrderNotExpirableError,
    OrderNotFoundError,
)
from ledger.domain.money import exact
from ledger.domain.order import (
    CancelOrder,
    ExpireOrder,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderState,
    OrderStatus,
    RejectOrder,
    TimeInForce,
)
from ledger.domain.position import PositionState, position_stream_id, release_sell_quantity
from ledger.domain.side import Side
from ledger.domain.text import REASON_LENGTH_MAX, check_text

VENUE_REJECTED: Final = "VENUE_REJECTED"


def _existing(state: OrderState | None, order_id: object) -> OrderState:
    if state is None:
        raise OrderNotFoundError(f"order {order_id} does not exist")
    assert state.order_id == order_id, "handler loaded the wrong stream"
    return state


def _not_terminal(order: OrderState, action: str) -> None:
    if order.status.terminal:
        raise InvalidStateTransitionError(f"cannot {action} an order that is {order.status}")


def release_order(
    order: OrderState,
    *,
    account: AccountState | None,
    position: PositionState | None,
    now: datetime,
) -> list[StreamEvent]:
    """Give back what an ending order still holds (nothing if it held nothing)."""
    if order.side is Side.BUY:
        assert account is not None
        assert account.account_id == order.account_id
        if account.hold_for(order.order_id) is None:
            assert order.status is OrderStatus.NEW, "an accepted buy order has a hold"
            return []
        released = release_hold(account, order.order_id, now=now)
        return [StreamEvent(account.account_id, account_module.STREAM_TYPE, released)]
    if position is None:
        assert order.status is OrderStatus.NEW, "an accepted sell order has a position"
        return []
    assert (position.account_id, position.instrument_id) == (order.account_id, order.instrument_id)
    event = release_sell_quantity(position, order.order_id, now=now)
    if event is None:
        return []
    position_id = position_stream_id(order.account_id, order.instrument_id)
    return [StreamEvent(position_id, position_module.STREAM_TYPE, event)]


def _end(
    order: OrderState,
    event: Event,
    *,
    account: AccountState | None,
    position: PositionState | None,
    now: datetime,
) -> list[StreamEvent]:
    ended = StreamEvent(order.order_id, order_module.STREAM_TYPE, event)
    return [ended, *release_order(order, account=account, position=position, now=now)]


@exact
def decide_cancel_order(
    state: OrderState | None,
    command: CancelOrder,
    *,
    now: datetime,
    account: AccountState | None,
    position: PositionState | None,
) -> list[StreamEvent]:
    assert_utc(now)
    order = _existing(state, command.order_id)
    _not_terminal(order, "cancel")
    reason = check_text(
        command.reason, field="reason", length_max=REASON_LENGTH_MAX, allow_empty=True
    )
    return _end(
        order,
        OrderCancelled(occurred_at=now, reason=reason),
        account=account,
        position=position,
        now=now,
    )


@exact
def decide_expire_order(
    state: OrderState | None,
    command: ExpireOrder,
    *,
    now: datetime,
    account: AccountState | None,
    position: PositionState | None,
) -> list[StreamEvent]:
    assert_utc(now)
    order = _existing(state, command.order_id)
    _not_terminal(order, "expire")
    if order.time_in_force is TimeInForce.GTC:
        raise OrderNotExpirableError(f"order {order.order_id} is good-till-cancelled")
    return _end(order, OrderExpired(occurred_at=now), account=account, position=position, now=now)


@exact
def decide_reject_order(
    state: OrderState | None,
    command: RejectOrder,
    *,
    now: datetime,
    account: AccountState | None,
    position: PositionState | None,
) -> list[StreamEvent]:
    assert_utc(now)
    order = _existing(state, command.order_id)
    if order.status not in (OrderStatus.NEW, OrderStatus.ACCEPTED):
        raise InvalidStateTransitionError(
            f"the venue cannot reject an order that is {order.status}"
        )
    reason = check_text(command.reason, field="reason", length_max=REASON_LENGTH_MAX)
    rejected = OrderRejected(occurred_at=now, reason_code=VENUE_REJECTED, reason=reason)
    return _end(order, rejected, account=account, position=position, now=now)
