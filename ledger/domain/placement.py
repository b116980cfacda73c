"""PlaceOrder: validation, the pre-trade risk checks, and the hold.

What is raised and what is recorded:

- A malformed order raises and records nothing: an unknown account or
  instrument, currencies that differ, a quantity off the lot grid, a price off
  the tick grid, more digits than the instrument's precision, prices that do not
  fit the order type, a cited signal that is missing or points elsewhere. The
  client fixes the request; there is nothing worth auditing.
- A well-formed order that fails a pre-trade risk check is recorded:
  ``OrderPlaced`` then ``OrderRejected`` whose ``reason_code`` is the failed
  check's error code (``INSTRUMENT_NOT_TRADABLE``, ``MAX_NOTIONAL_EXCEEDED``,
  ``INSUFFICIENT_FUNDS``, ``INSUFFICIENT_POSITION``). Nothing was held, so
  nothing is released and the account and position streams get no event.
- Otherwise ``OrderPlaced``, ``OrderAccepted`` and the hold: a buy reserves
  ``ceil(quantity x hold_price) + ceil(quantity x hold_price x fee_rate)`` of
  cash (``CashReserved``), a sell reserves its quantity on the position
  (``SellQuantityReserved``).

A buy's ``hold_price`` is its limit price, or for market and stop orders a
collar :data:`MARKET_COLLAR` above the reference (or stop) price, rounded up to
the tick. Fills above it are refused (``fill``), so the hold always covers the
cash of the fills, and the maximum fee covers any fee charged at the account's
fee rate.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final

from ledger.domain import account as account_module
from ledger.domain import order as order_module
from ledger.domain import position as position_module
from ledger.domain.account import HOLD_COUNT_MAX, AccountState, reserve_cash
from ledger.domain.base import Event, StreamEvent, assert_utc
from ledger.domain.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    CurrencyMismatchError,
    InstrumentNotFoundError,
    InstrumentNotTradableError,
    InsufficientFundsError,
    InsufficientPositionError,
    InvalidAmountError,
    InvalidOrderError,
    MaxNotionalExceededError,
    ReferencePriceRequiredError,
    RiskCheckError,
    SignalMismatchError,
    SignalNotFoundError,
    TooManyOpenOrdersError,
)
from ledger.domain.instrument import InstrumentState, check_price, check_quantity
from ledger.domain.money import ZERO, exact, round_up, round_up_to_step
from ledger.domain.order import (
    OrderAccepted,
    OrderPlaced,
    OrderRejected,
    OrderState,
    OrderType,
    PlaceOrder,
    TimeInForce,
)
from ledger.domain.position import (
    RESERVATION_COUNT_MAX,
    PositionState,
    open_position,
    position_stream_id,
    reserve_sell_quantity,
)
from ledger.domain.side import Side
from ledger.domain.signal import SignalAction, SignalState
from ledger.domain.text import LABEL_LENGTH_MAX, REASON_LENGTH_MAX, check_text

MARKET_COLLAR: Final = Decimal("0.05")

_NEEDS_LIMIT: Final = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_NEEDS_STOP: Final = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


def _check_prices(
    command: PlaceOrder, instrument: InstrumentState
) -> tuple[Decimal | None, Decimal | None]:
    order_type = command.order_type
    if (command.limit_price is not None) != (order_type in _NEEDS_LIMIT):
        wording = "needs" if order_type in _NEEDS_LIMIT else "takes no"
        raise InvalidOrderError(f"a {order_type} order {wording} limit price")
    if (command.stop_price is not None) != (order_type in _NEEDS_STOP):
        wording = "needs" if order_type in _NEEDS_STOP else "takes no"
        raise InvalidOrderError(f"a {order_type} order {wording} stop price")
    if order_type is OrderType.MARKET and command.time_in_force is TimeInForce.GTC:
        raise InvalidOrderError("a market order cannot be good-till-cancelled")
    limit_price = (
        None
        if command.limit_price is None
        else check_price(instrument, command.limit_price, field="limit_price")
    )
    stop_price = (
        None
        if command.stop_price is None
        else check_price(instrument, command.stop_price, field="stop_price")
    )
    return limit_price, stop_price


def _check_signal(command: PlaceOrder, signal: SignalState | None) -> None:
    if command.signal_id is None:
        return
    if signal is None:
        raise SignalNotFoundError(f"signal {command.signal_id} does not exist")
    assert signal.signal_id == command.signal_id, "handler loaded the wrong signal"
    if signal.instrument_id != command.instrument_id:
        raise SignalMismatchError("the signal is for another instrument")
    wanted = SignalAction.BUY if command.side is Side.BUY else SignalAction.SELL
    if signal.action is not wanted:
        raise SignalMismatchError(f"a {command.side} order cannot act on a {signal.action} signal")


def _reference(reference_price: Decimal | None) -> Decimal:
    if reference_price is None:
        raise ReferencePriceRequiredError("a market order needs a reference price")
    if not reference_price.is_finite() or reference_price <= ZERO:
        raise InvalidAmountError(f"reference price must be > 0: {reference_price}")
    return reference_price


def _risk_price(limit: Decimal | None, stop: Decimal | None, reference: Decimal | None) -> Decimal:
    if limit is not None:
        return limit
    if stop is not None:
        return stop
    return _reference(reference)


def _hold_price(
    instrument: InstrumentState, limit: Decimal | None, risk_price: Decimal, collar: Decimal
) -> Decimal:
    if limit is not None:
        return limit
    return round_up_to_step(risk_price * (1 + collar), instrument.tick_size)


def hold_amount(account: AccountState, quantity: Decimal, hold_price: Decimal) -> Decimal:
    """Cash held for a buy: its notional at ``hold_price`` plus the maximum fee, rounded up."""
    notional = quantity * hold_price
    return round_up(notional, account.precision) + round_up(
        notional * account.fee_rate, account.precision
    )


def _check_risk(
    command: PlaceOrder,
    quantity: Decimal,
    *,
    instrument: InstrumentState,
    account: AccountState,
    position: PositionState | None,
    risk_price: Decimal,
    held: Decimal,
) -> None:
    """Raise the first failed pre-trade risk check."""
    if not instrument.tradable:
        raise InstrumentNotTradableError(f"{instrument.symbol} is {instrument.status}")
    notional = quantity * risk_price
    limit = account.max_order_notional
    if limit is not None and notional > limit:
        raise MaxNotionalExceededError(f"order notional {notional} exceeds the maximum {limit}")
    if command.side is Side.BUY and len(account.holds) >= HOLD_COUNT_MAX:
        raise TooManyOpenOrdersError(f"the account has {HOLD_COUNT_MAX} open buy orders")
    if (
        command.side is Side.SELL
        and position is not None
        and len(position.reservations) >= RESERVATION_COUNT_MAX
    ):
        raise TooManyOpenOrdersError(f"the position has {RESERVATION_COUNT_MAX} open sell orders")
    if command.side is Side.BUY and held > account.available:
        raise InsufficientFundsError(
            f"order needs {held} {account.currency} including fees; {account.available} available"
        )
    if command.side is Side.SELL and not account.allow_short_selling:
        sellable = ZERO if position is None else position.quantity - position.reserved_quantity
        if quantity > sellable:
            raise InsufficientPositionError(f"selling {quantity} with {sellable} available to sell")


@exact
def decide_place_order(
    state: OrderState | None,
    command: PlaceOrder,
    *,
    now: datetime,
    instrument: InstrumentState | None,
    account: AccountState | None,
    position: PositionState | None,
    reference_price: Decimal | None = None,
    signal: SignalState | None = None,
    collar: Decimal = MARKET_COLLAR,
) -> list[StreamEvent]:
    assert_utc(now)
    assert ZERO <= collar < 1
    if state is not None:
        raise AlreadyExistsError(f"order {command.order_id} already exists")
    if account is None:
        raise AccountNotFoundError(f"account {command.account_id} does not exist")
    if instrument is None:
        raise InstrumentNotFoundError(f"instrument {command.instrument_id} does not exist")
    assert account.account_id == command.account_id, "handler loaded the wrong account"
    assert instrument.instrument_id == command.instrument_id, "handler loaded the wrong instrument"
    assert position is None or position.account_id == account.account_id
    assert position is None or position.instrument_id == instrument.instrument_id
    if account.currency != instrument.currency:
        raise CurrencyMismatchError(
            f"account in {account.currency}, instrument in {instrument.currency}"
        )
    quantity = check_quantity(instrument, command.quantity)
    limit_price, stop_price = _check_prices(command, instrument)
    _check_signal(command, signal)
    client_order_id = (
        None
        if command.client_order_id is None
        else check_text(
            command.client_order_id, field="client_order_id", length_max=LABEL_LENGTH_MAX
        )
    )
    risk_price = _risk_price(limit_price, stop_price, reference_price)
    hold_price = (
        _hold_price(instrument, limit_price, risk_price, collar)
        if command.side is Side.BUY
        else None
    )
    held = ZERO if hold_price is None else hold_amount(account, quantity, hold_price)

    def on_order(event: Event) -> StreamEvent:
        return StreamEvent(command.order_id, order_module.STREAM_TYPE, event)

    placed = on_order(
        OrderPlaced(
            occurred_at=now,
            order_id=command.order_id,
            account_id=command.account_id,
            instrument_id=command.instrument_id,
            side=command.side,
            order_type=command.order_type,
            quantity=quantity,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=command.time_in_force,
            signal_id=command.signal_id,
            client_order_id=client_order_id,
        )
    )
    try:
        _check_risk(
            command,
            quantity,
            instrument=instrument,
            account=account,
            position=position,
            risk_price=risk_price,
            held=held,
        )
    except RiskCheckError as error:
        reason = check_text(str(error), field="reason", length_max=REASON_LENGTH_MAX)
        return [
            placed,
            on_order(OrderRejected(occurred_at=now, reason_code=error.code, reason=reason)),
        ]
    accepted = on_order(
        OrderAccepted(
            occurred_at=now, risk_price=risk_price, hold_price=hold_price, hold_amount=held
        )
    )
    if command.side is Side.BUY:
        reserved = reserve_cash(account, command.order_id, held, now=now)
        return [
            placed,
            accepted,
            StreamEvent(account.account_id, account_module.STREAM_TYPE, reserved),
        ]
    position_id = position_stream_id(account.account_id, instrument.instrument_id)
    opened, current = open_position(position, account.account_id, instrument.instrument_id, now=now)
    position_events = [*opened, reserve_sell_quantity(current, command.order_id, quantity, now=now)]
    return [
        placed,
        accepted,
        *(
            StreamEvent(position_id, position_module.STREAM_TYPE, event)
            for event in position_events
        ),
    ]
