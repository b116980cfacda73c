"""FillOrder: an execution reported by the venue, booked on order, account and position.

One decision returns the events of all three streams, to be appended in one
transaction: the order's ``OrderPartiallyFilled`` / ``OrderFilled``, the
account's ``TradeSettled`` (one balanced entry: cash to clearing, the fee to
fee revenue, the security units to the position, or the reverse for a sell)
and the position's ``TradeBooked`` (preceded by ``PositionOpened`` for a first
buy). When the fill completes a buy, the rest of its hold is released
(``HoldReleased``) in the same decision; a sell's reservation is used up by its
fills.

Rules:
- A fill id the order already has is a no-op: the decision returns ``[]``, so a
  redelivered execution report is harmless. This is checked before anything else.
- Only an open order (accepted or partially filled) takes fills.
- Quantity on the lot grid and at most the open quantity; a fill-or-kill order
  takes exactly one fill of its whole quantity.
- Price on the tick grid; a buy fills at most at its hold price (limit, or the
  market collar), a sell with a limit at least at its limit.
- The fee is in the account's currency at its precision and at least zero.
- ``executed_at`` is timezone-aware and not later than ``now`` plus
  :data:`CLOCK_SKEW_MAX`.
- The fill's cash is rounding rule 2 of ``money`` (cumulative half-even).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

from ledger.domain import account as account_module
from ledger.domain import order as order_module
from ledger.domain import position as position_module
from ledger.domain.account import AccountState, release_hold, settle_trade
from ledger.domain.base import StreamEvent, assert_utc
from ledger.domain.errors import (
    FillLimitExceededError,
    FillOrKillViolationError,
    InvalidFillError,
    InvalidStateTransitionError,
    InvalidTextError,
    InvalidTimestampError,
    OrderNotFoundError,
    OverfillError,
    PriceOutsideLimitError,
)
from ledger.domain.instrument import InstrumentState, check_price, check_quantity
from ledger.domain.money import check_amount, exact, round_half_even
from ledger.domain.order import (
    FILL_COUNT_MAX,
    Fill,
    FillOrder,
    OrderFilled,
    OrderPartiallyFilled,
    OrderState,
    TimeInForce,
)
from ledger.domain.position import PositionState, book_trade, open_position, position_stream_id
from ledger.domain.side import Side
from ledger.domain.text import LABEL_LENGTH_MAX, check_text

CLOCK_SKEW_MAX: Final = timedelta(minutes=5)


def _label(value: str, field: str) -> str:
    try:
        return check_text(value, field=field, length_max=LABEL_LENGTH_MAX)
    except InvalidTextError as error:
        raise InvalidFillError(str(error)) from None


def _check_executed_at(executed_at: datetime, now: datetime) -> datetime:
    if executed_at.tzinfo is None or executed_at.utcoffset() is None:
        raise InvalidTimestampError("executed_at must carry a timezone")
    in_utc = executed_at.astimezone(UTC)
    if in_utc > now + CLOCK_SKEW_MAX:
        raise InvalidTimestampError(f"executed_at {in_utc.isoformat()} is in the future")
    return in_utc


def _check_price_limit(order: OrderState, price: Decimal) -> None:
    if order.side is Side.BUY:
        assert order.hold_price is not None, "an accepted buy order has a hold price"
        if price > order.hold_price:
            raise PriceOutsideLimitError(f"buy filled at {price} above {order.hold_price}")
    elif order.limit_price is not None and price < order.limit_price:
        raise PriceOutsideLimitError(f"sell filled at {price} below the limit {order.limit_price}")


def fill_cash(order: OrderState, quantity: Decimal, price: Decimal, precision: int) -> Decimal:
    """Rounding rule 2: the cash of this fill, from the order's cumulative notional."""
    before = order.filled_notional
    return round_half_even(before + quantity * price, precision) - round_half_even(
        before, precision
    )


@exact
def decide_fill_order(
    state: OrderState | None,
    command: FillOrder,
    *,
    now: datetime,
    instrument: InstrumentState,
    account: AccountState,
    position: PositionState | None,
) -> list[StreamEvent]:
    assert_utc(now)
    if state is None:
        raise OrderNotFoundError(f"order {command.order_id} does not exist")
    order = state
    assert order.order_id == command.order_id, "handler loaded the wrong stream"
    if command.fill_id.strip() in order.fill_ids:
        return []
    if not order.status.open:
        raise InvalidStateTransitionError(f"cannot fill an order that is {order.status}")
    assert instrument.instrument_id == order.instrument_id, "handler loaded the wrong instrument"
    assert account.account_id == order.account_id, "handler loaded the wrong account"
    fill_id = _label(command.fill_id, "fill_id")
    venue = _label(command.venue, "venue")
    quantity = check_quantity(instrument, command.quantity)
    price = check_price(instrument, command.price)
    fee = check_amount(command.fee, account.precision, field="fee", allow_zero=True)
    executed_at = _check_executed_at(command.executed_at, now)
    if len(order.fill_ids) >= FILL_COUNT_MAX:
        raise FillLimitExceededError(f"order {order.order_id} has {FILL_COUNT_MAX} fills")
    if quantity > order.open_quantity:
        raise OverfillError(f"fill of {quantity} exceeds the open quantity {order.open_quantity}")
    if order.time_in_force is TimeInForce.FOK and quantity != order.quantity:
        raise FillOrKillViolationError(
            f"fill-or-kill order of {order.quantity} filled for {quantity}"
        )
    _check_price_limit(order, price)

    cash_amount = fill_cash(order, quantity, price, account.precision)
    fill = Fill(
        fill_id=fill_id,
        quantity=quantity,
        price=price,
        fee=fee,
        venue=venue,
        executed_at=executed_at,
    )
    complete = quantity == order.open_quantity
    filled = (
        OrderFilled(occurred_at=now, fill=fill, cash_amount=cash_amount)
        if complete
        else OrderPartiallyFilled(occurred_at=now, fill=fill, cash_amount=cash_amount)
    )
    settled = settle_trade(
        account,
        order_id=order.order_id,
        fill_id=fill_id,
        instrument_id=order.instrument_id,
        side=order.side,
        quantity=quantity,
        price=price,
        cash_amount=cash_amount,
        fee=fee,
        now=now,
    )
    assert order.side is Side.BUY or position is not None, "a sell order reserved its position"
    opened, current = open_position(position, order.account_id, order.instrument_id, now=now)
    booked = book_trade(
        current,
        order_id=order.order_id,
        fill_id=fill_id,
        side=order.side,
        quantity=quantity,
        price=price,
        fee=fee,
        executed_at=executed_at,
        notional_precision=instrument.notional_precision,
        now=now,
    )
    position_id = position_stream_id(order.account_id, order.instrument_id)
    events = [
        StreamEvent(order.order_id, order_module.STREAM_TYPE, filled),
        StreamEvent(account.account_id, account_module.STREAM_TYPE, settled),
        *(StreamEvent(position_id, position_module.STREAM_TYPE, event) for event in opened),
        StreamEvent(position_id, position_module.STREAM_TYPE, booked),
    ]
    if complete and order.side is Side.BUY:
        released = release_hold(account_module.evolve(account, settled), order.order_id, now=now)
        events.append(StreamEvent(account.account_id, account_module.STREAM_TYPE, released))
    return events
