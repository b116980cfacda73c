"""PlaceOrder: validation raises, risk-check failures are recorded, acceptance holds."""

from __future__ import annotations

from uuid import UUID

import pytest

from ledger.domain import placement
from ledger.domain.account import CashReserved
from ledger.domain.base import StreamEvent
from ledger.domain.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    CurrencyMismatchError,
    InstrumentNotFoundError,
    InvalidAmountError,
    InvalidOrderError,
    InvalidTextError,
    LotSizeViolationError,
    PrecisionExceededError,
    ReferencePriceRequiredError,
    SignalMismatchError,
    SignalNotFoundError,
    TickSizeViolationError,
)
from ledger.domain.instrument import HaltInstrument, decide_halt_instrument
from ledger.domain.order import (
    OrderAccepted,
    OrderPlaced,
    OrderRejected,
    OrderStatus,
    OrderType,
    PlaceOrder,
    TimeInForce,
)
from ledger.domain.position import PositionOpened, SellQuantityReserved
from ledger.domain.postings import cash_available, cash_reserved, journal_entry, transfer
from ledger.domain.side import Side
from ledger.domain.signal import SignalAction
from tests.unit.support import (
    INSTRUMENT_ID,
    NOW,
    ORDER_ID,
    OTHER_ORDER_ID,
    SIGNAL_ID,
    Ledger,
    buy_limit,
    d,
    events_of,
    fill_of,
    sell_limit,
    types_of,
)

OTHER_INSTRUMENT_ID = UUID("00000000-0000-4000-8000-0000000000a2")


def setup(cash: str = "1000", **terms: object) -> tuple[Ledger, UUID]:
    ledger = Ledger()
    ledger.list_instrument()
    account = ledger.open_account(cash=cash, **terms)  # type: ignore[arg-type]
    return ledger, account.account_id


def order(
    account_id: UUID, side: Side, order_type: OrderType, quantity: str, **prices: str
) -> PlaceOrder:
    return PlaceOrder(
        order_id=ORDER_ID,
        account_id=account_id,
        instrument_id=INSTRUMENT_ID,
        side=side,
        order_type=order_type,
        quantity=d(quantity),
        **{name: d(value) for name, value in prices.items()},  # type: ignore[arg-type]
    )


def test_an_accepted_buy_holds_its_notional_and_its_maximum_fee() -> None:
    ledger, account_id = setup(fee_rate="0.001")
    decision = ledger.decide_place(buy_limit(account_id, "10", "50"))
    hold = d("500.50")
    assert [item.event for item in decision] == [
        OrderPlaced(
            occurred_at=NOW,
            order_id=ORDER_ID,
            account_id=account_id,
            instrument_id=INSTRUMENT_ID,
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=d("10"),
            limit_price=d("50.00"),
            stop_price=None,
            time_in_force=TimeInForce.DAY,
            signal_id=None,
            client_order_id=None,
        ),
        OrderAccepted(
            occurred_at=NOW, risk_price=d("50.00"), hold_price=d("50.00"), hold_amount=hold
        ),
        CashReserved(
            occurred_at=NOW,
            order_id=ORDER_ID,
            amount=hold,
            entry=journal_entry(
                transfer(cash_available(account_id), cash_reserved(account_id), "USD", hold)
            ),
        ),
    ]
    assert [item.stream_id for item in decision] == [ORDER_ID, ORDER_ID, account_id]
    ledger.apply(decision)
    account = ledger.account(account_id)
    assert (account.available, account.reserved) == (d("499.50"), hold)
    assert ledger.order(ORDER_ID).status is OrderStatus.ACCEPTED


def test_the_hold_rounds_up() -> None:
    ledger, account_id = setup(fee_rate="0.0005")
    ledger.place(buy_limit(account_id, "3", "111.11"))
    # 333.33 of cash and 0.166665 of fee, rounded up to 0.17.
    assert ledger.order(ORDER_ID).hold_amount == d("333.50")


def test_a_market_buy_holds_at_a_collar_above_the_reference_price_rounded_up_to_the_tick() -> None:
    ledger = Ledger()
    ledger.list_instrument(tick_size="0.05")
    account_id = ledger.open_account(cash="1000").account_id
    ledger.place(order(account_id, Side.BUY, OrderType.MARKET, "10"), reference_price=d("10.01"))
    placed = ledger.order(ORDER_ID)
    assert (placed.risk_price, placed.hold_price, placed.hold_amount) == (
        d("10.01"),
        d("10.55"),
        d("105.50"),
    )


def test_stop_orders_hold_at_the_collar_of_the_stop_and_stop_limits_at_the_limit() -> None:
    ledger, account_id = setup()
    ledger.place(order(account_id, Side.BUY, OrderType.STOP, "1", stop_price="100"))
    assert ledger.order(ORDER_ID).hold_price == d("105.00")
    stop_limit = order(
        account_id, Side.BUY, OrderType.STOP_LIMIT, "1", stop_price="100", limit_price="101"
    )
    ledger.place(PlaceOrder(**{**_fields(stop_limit), "order_id": OTHER_ORDER_ID}))
    assert ledger.order(OTHER_ORDER_ID).hold_price == d("101.00")


def _fields(command: PlaceOrder) -> dict[str, object]:
    return {name: getattr(command, name) for name in command.__struct_fields__}


def test_an_accepted_sell_reserves_its_quantity_on_the_position() -> None:
    ledger, account_id = setup()
    ledger.place(buy_limit(account_id, "10", "50", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("10", "50", order_id=OTHER_ORDER_ID))
    decision = ledger.place(sell_limit(account_id, "4", "55"))
    assert types_of(decision) == [
        ("order", "OrderPlaced"),
        ("order", "OrderAccepted"),
        ("position", "SellQuantityReserved"),
    ]
    assert events_of(decision, "position") == [
        SellQuantityReserved(occurred_at=NOW, order_id=ORDER_ID, quantity=d("4"))
    ]
    position = ledger.position(account_id, INSTRUMENT_ID)
    assert position is not None
    assert position.reserved_quantity == d("4")
    assert ledger.order(ORDER_ID).hold_amount == 0


def test_a_short_sale_opens_the_position_when_shorting_is_allowed() -> None:
    ledger, account_id = setup(allow_short_selling=True)
    decision = ledger.place(sell_limit(account_id, "5", "20"))
    assert [type(event) for event in events_of(decision, "position")] == [
        PositionOpened,
        SellQuantityReserved,
    ]
    assert ledger.order(ORDER_ID).status is OrderStatus.ACCEPTED


def rejected_with(decision: list[StreamEvent], code: str) -> None:
    assert types_of(decision) == [("order", "OrderPlaced"), ("order", "OrderRejected")]
    rejection = decision[1].event
    assert isinstance(rejection, OrderRejected)
    assert rejection.reason_code == code


def test_an_order_on_a_halted_instrument_is_recorded_as_rejected_and_holds_nothing() -> None:
    ledger, account_id = setup()
    ledger.append(
        INSTRUMENT_ID,
        "instrument",
        decide_halt_instrument(
            ledger.instrument(INSTRUMENT_ID), HaltInstrument(instrument_id=INSTRUMENT_ID), now=NOW
        ),
    )
    before = ledger.snapshot()
    decision = ledger.place(buy_limit(account_id, "1", "10"))
    rejected_with(decision, "INSTRUMENT_NOT_TRADABLE")
    after = ledger.snapshot()
    assert after[account_id] == before[account_id]
    assert ledger.order(ORDER_ID).status is OrderStatus.REJECTED


def test_max_notional_is_checked_at_the_risk_price() -> None:
    ledger, account_id = setup(cash="10000", max_order_notional="1000")
    rejected_with(ledger.decide_place(buy_limit(account_id, "11", "91")), "MAX_NOTIONAL_EXCEEDED")
    assert len(ledger.decide_place(buy_limit(account_id, "10", "100"))) == 3


def test_buying_power_includes_the_maximum_fee() -> None:
    ledger, account_id = setup(cash="100.10", fee_rate="0.001")
    assert len(ledger.decide_place(buy_limit(account_id, "1", "100"))) == 3
    rejected_with(ledger.decide_place(buy_limit(account_id, "1", "100.01")), "INSUFFICIENT_FUNDS")


def test_a_sell_needs_an_unreserved_position_unless_shorting_is_allowed() -> None:
    ledger, account_id = setup()
    rejected_with(ledger.decide_place(sell_limit(account_id, "1", "10")), "INSUFFICIENT_POSITION")
    ledger.place(buy_limit(account_id, "10", "50", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("10", "50", order_id=OTHER_ORDER_ID))
    ledger.place(sell_limit(account_id, "6", "55", order_id=UUID(int=7)))
    rejected_with(ledger.decide_place(sell_limit(account_id, "5", "55")), "INSUFFICIENT_POSITION")
    assert len(ledger.decide_place(sell_limit(account_id, "4", "55"))) == 3


def test_open_orders_are_capped_per_account_and_per_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the cap an order is a recorded rejection, not a broken invariant (lowered to 2)."""
    monkeypatch.setattr(placement, "HOLD_COUNT_MAX", 2)
    monkeypatch.setattr(placement, "RESERVATION_COUNT_MAX", 2)
    ledger, account_id = setup(cash="10000")
    ledger.place(buy_limit(account_id, "10", "50", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("10", "50", order_id=OTHER_ORDER_ID))
    for number in (11, 12):
        ledger.place(buy_limit(account_id, "1", "10", order_id=UUID(int=number)))
        ledger.place(sell_limit(account_id, "1", "60", order_id=UUID(int=number + 10)))
    rejected_with(ledger.decide_place(buy_limit(account_id, "1", "10")), "TOO_MANY_OPEN_ORDERS")
    rejected_with(ledger.decide_place(sell_limit(account_id, "1", "60")), "TOO_MANY_OPEN_ORDERS")


@pytest.mark.parametrize(
    ("command_changes", "error"),
    [
        ({"quantity": d("0.5")}, PrecisionExceededError),
        ({"limit_price": d("10.001")}, PrecisionExceededError),
        ({"limit_price": d("0")}, InvalidAmountError),
        ({"order_type": OrderType.MARKET}, InvalidOrderError),
        ({"order_type": OrderType.STOP}, InvalidOrderError),
        ({"order_type": OrderType.STOP_LIMIT}, InvalidOrderError),
        ({"client_order_id": "x" * 65}, InvalidTextError),
    ],
)
def test_a_malformed_order_raises_and_records_nothing(
    command_changes: dict[str, object], error: type[Exception]
) -> None:
    ledger, account_id = setup()
    command = PlaceOrder(**(_fields(buy_limit(account_id, "1", "10")) | command_changes))  # type: ignore[arg-type]
    before = ledger.snapshot()
    with pytest.raises(error):
        ledger.place(command)
    assert ledger.snapshot() == before


def test_prices_and_quantities_off_the_grid_are_refused() -> None:
    ledger = Ledger()
    ledger.list_instrument(tick_size="0.05", lot_size="10")
    account_id = ledger.open_account(cash="1000").account_id
    with pytest.raises(TickSizeViolationError):
        ledger.place(buy_limit(account_id, "10", "10.01"))
    with pytest.raises(LotSizeViolationError):
        ledger.place(buy_limit(account_id, "15", "10.05"))


def test_a_market_order_needs_a_reference_price_and_no_gtc() -> None:
    ledger, account_id = setup()
    with pytest.raises(ReferencePriceRequiredError):
        ledger.place(order(account_id, Side.SELL, OrderType.MARKET, "1"))
    gtc = PlaceOrder(
        **(
            _fields(order(account_id, Side.BUY, OrderType.MARKET, "1"))
            | {"time_in_force": TimeInForce.GTC}
        )
    )
    with pytest.raises(InvalidOrderError):
        ledger.place(gtc, reference_price=d("10"))


def test_missing_aggregates_currency_mismatch_and_duplicates_are_refused() -> None:
    ledger, account_id = setup()
    with pytest.raises(InstrumentNotFoundError):
        ledger.place(buy_limit(account_id, "1", "10", instrument_id=OTHER_INSTRUMENT_ID))
    with pytest.raises(AccountNotFoundError):
        ledger.place(buy_limit(UUID(int=99), "1", "10"))
    ledger.list_instrument(OTHER_INSTRUMENT_ID, symbol="EURO", currency="EUR")
    with pytest.raises(CurrencyMismatchError):
        ledger.place(buy_limit(account_id, "1", "10", instrument_id=OTHER_INSTRUMENT_ID))
    ledger.place(buy_limit(account_id, "1", "10"))
    with pytest.raises(AlreadyExistsError):
        ledger.place(buy_limit(account_id, "1", "10"))


def test_an_order_may_cite_a_signal_in_its_direction_for_its_instrument() -> None:
    ledger, account_id = setup()
    ledger.create_active_strategy()
    buy_signal = ledger.emit_signal(SignalAction.BUY)
    cites = PlaceOrder(**(_fields(buy_limit(account_id, "1", "10")) | {"signal_id": SIGNAL_ID}))
    with pytest.raises(SignalNotFoundError):
        ledger.place(cites)
    sell = PlaceOrder(**(_fields(sell_limit(account_id, "1", "10")) | {"signal_id": SIGNAL_ID}))
    with pytest.raises(SignalMismatchError):
        ledger.place(sell, signal_state=buy_signal)
    ledger.list_instrument(OTHER_INSTRUMENT_ID, symbol="OTHER")
    elsewhere = ledger.emit_signal(
        SignalAction.BUY, signal_id=UUID(int=5), instrument_id=OTHER_INSTRUMENT_ID
    )
    with pytest.raises(SignalMismatchError):
        ledger.place(
            PlaceOrder(**(_fields(cites) | {"signal_id": UUID(int=5)})), signal_state=elsewhere
        )
    hold = ledger.emit_signal(SignalAction.HOLD, signal_id=UUID(int=6))
    with pytest.raises(SignalMismatchError):
        ledger.place(PlaceOrder(**(_fields(cites) | {"signal_id": UUID(int=6)})), signal_state=hold)
    ledger.place(cites, signal_state=buy_signal)
    assert ledger.order(ORDER_ID).signal_id == SIGNAL_ID
