"""FillOrder: one decision books the order, settles the account and moves the position."""

from __future__ import annotations

from datetime import timedelta, timezone
from uuid import UUID

import msgspec
import pytest

from ledger.domain.account import HoldReleased, TradeSettled
from ledger.domain.errors import (
    FillLimitExceededError,
    FillOrKillViolationError,
    InsufficientFundsError,
    InvalidFillError,
    InvalidStateTransitionError,
    InvalidTimestampError,
    LotSizeViolationError,
    OrderNotFoundError,
    OverfillError,
    PrecisionExceededError,
    PriceOutsideLimitError,
    TickSizeViolationError,
)
from ledger.domain.fill import decide_fill_order
from ledger.domain.order import (
    FILL_COUNT_MAX,
    Fill,
    OrderFilled,
    OrderPartiallyFilled,
    OrderStatus,
    OrderType,
    PlaceOrder,
    TimeInForce,
)
from ledger.domain.position import PositionOpened, TradeBooked, position_stream_id
from ledger.domain.postings import (
    CLEARING,
    FEE_REVENUE,
    cash_available,
    cash_reserved,
    credit,
    debit,
    journal_entry,
    securities,
    security_asset,
    transfer,
)
from ledger.domain.side import Side
from tests.unit.support import (
    INSTRUMENT_ID,
    NOW,
    ORDER_ID,
    OTHER_ORDER_ID,
    Ledger,
    buy_limit,
    d,
    events_of,
    fill_of,
    sell_limit,
    types_of,
)


def bought(cash: str = "1000", fee_rate: str = "0.001", **order: object) -> tuple[Ledger, UUID]:
    ledger = Ledger()
    ledger.list_instrument()
    account_id = ledger.open_account(cash=cash, fee_rate=fee_rate).account_id
    ledger.place(buy_limit(account_id, "10", "50", **order))  # type: ignore[arg-type]
    return ledger, account_id


def test_a_partial_buy_fill_posts_one_entry_and_opens_the_position() -> None:
    ledger, account_id = bought()
    decision = ledger.decide_fill(fill_of("4", "49.50", fee="0.20"))
    fill = Fill(
        fill_id="F1",
        quantity=d("4"),
        price=d("49.50"),
        fee=d("0.20"),
        venue="XNAS",
        executed_at=NOW,
    )
    position_id = position_stream_id(account_id, INSTRUMENT_ID)
    assert [(item.stream_id, item.event) for item in decision] == [
        (ORDER_ID, OrderPartiallyFilled(occurred_at=NOW, fill=fill, cash_amount=d("198.00"))),
        (
            account_id,
            TradeSettled(
                occurred_at=NOW,
                order_id=ORDER_ID,
                fill_id="F1",
                instrument_id=INSTRUMENT_ID,
                side=Side.BUY,
                quantity=d("4"),
                price=d("49.50"),
                cash_amount=d("198.00"),
                fee=d("0.20"),
                hold_used=d("198.20"),
                entry=journal_entry(
                    debit(cash_reserved(account_id), "USD", d("198.20")),
                    credit(CLEARING, "USD", d("198.00")),
                    credit(FEE_REVENUE, "USD", d("0.20")),
                    transfer(
                        CLEARING,
                        securities(account_id, INSTRUMENT_ID),
                        security_asset(INSTRUMENT_ID),
                        d("4"),
                    ),
                ),
            ),
        ),
        (
            position_id,
            PositionOpened(occurred_at=NOW, account_id=account_id, instrument_id=INSTRUMENT_ID),
        ),
        (
            position_id,
            TradeBooked(
                occurred_at=NOW,
                order_id=ORDER_ID,
                fill_id="F1",
                side=Side.BUY,
                quantity=d("4"),
                price=d("49.50"),
                fee=d("0.20"),
                executed_at=NOW,
                quantity_change=d("4"),
                cost_basis_change=d("198.00"),
                realised_pnl_change=d("0"),
            ),
        ),
    ]
    ledger.apply(decision)
    order = ledger.order(ORDER_ID)
    assert (order.status, order.filled_quantity, order.open_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        4,
        6,
    )
    account = ledger.account(account_id)
    assert (account.available, account.reserved) == (d("499.50"), d("302.30"))


def test_the_fill_that_completes_a_buy_releases_the_rest_of_its_hold() -> None:
    ledger, account_id = bought()
    ledger.fill(fill_of("4", "49.50", fee="0.20"))
    decision = ledger.fill(fill_of("6", "50.00", fee="0.30", fill_id="F2"))
    assert types_of(decision) == [
        ("order", "OrderFilled"),
        ("account", "TradeSettled"),
        ("position", "TradeBooked"),
        ("account", "HoldReleased"),
    ]
    assert decision[-1].event == HoldReleased(
        occurred_at=NOW,
        order_id=ORDER_ID,
        amount=d("2.00"),
        entry=journal_entry(
            transfer(cash_reserved(account_id), cash_available(account_id), "USD", d("2.00"))
        ),
    )
    account = ledger.account(account_id)
    assert (account.available, account.reserved, account.holds) == (d("501.50"), 0, ())
    position = ledger.position(account_id, INSTRUMENT_ID)
    assert position is not None
    assert (position.quantity, position.cost_basis, position.fees_paid) == (
        10,
        d("498.00"),
        d("0.50"),
    )


def test_a_repeated_fill_id_is_a_no_op_even_after_the_order_is_filled() -> None:
    ledger, _ = bought()
    ledger.fill(fill_of("4", "49.50"))
    assert ledger.decide_fill(fill_of("4", "49.50")) == []
    assert ledger.decide_fill(fill_of("999", "1.00")) == []
    ledger.fill(fill_of("6", "50", fill_id="F2"))
    assert ledger.decide_fill(fill_of("6", "50", fill_id="F2")) == []
    assert ledger.order(ORDER_ID).status is OrderStatus.FILLED


def test_a_sell_fill_moves_units_to_clearing_and_cash_less_fee_to_the_trader() -> None:
    ledger, account_id = bought(fee_rate="0")
    ledger.fill(fill_of("10", "50"))
    ledger.place(sell_limit(account_id, "10", "55", order_id=OTHER_ORDER_ID))
    decision = ledger.fill(fill_of("4", "56", fee="1.00", order_id=OTHER_ORDER_ID, fill_id="S1"))
    settled = events_of(decision, "account")[0]
    assert isinstance(settled, TradeSettled)
    assert settled.entry == journal_entry(
        transfer(
            securities(account_id, INSTRUMENT_ID), CLEARING, security_asset(INSTRUMENT_ID), d("4")
        ),
        transfer(CLEARING, cash_available(account_id), "USD", d("224.00")),
        transfer(cash_available(account_id), FEE_REVENUE, "USD", d("1.00")),
    )
    booked = events_of(decision, "position")[0]
    assert isinstance(booked, TradeBooked)
    assert (booked.quantity_change, booked.cost_basis_change, booked.realised_pnl_change) == (
        -4,
        -200,
        24,
    )
    position = ledger.position(account_id, INSTRUMENT_ID)
    assert position is not None
    assert (position.quantity, position.reserved_quantity, position.realised_pnl) == (6, 6, 24)
    assert ledger.account(account_id).available == d("723.00")
    ledger.fill(fill_of("6", "55", order_id=OTHER_ORDER_ID, fill_id="S2"))
    position = ledger.position(account_id, INSTRUMENT_ID)
    assert position is not None
    assert (position.quantity, position.reservations, position.cost_basis) == (0, (), 0)


def test_a_fill_never_exceeds_the_open_quantity() -> None:
    ledger, _ = bought()
    ledger.fill(fill_of("4", "50"))
    with pytest.raises(OverfillError):
        ledger.fill(fill_of("7", "50", fill_id="F2"))


def test_a_fill_or_kill_order_takes_one_whole_fill() -> None:
    ledger, _ = bought(time_in_force=TimeInForce.FOK)
    with pytest.raises(FillOrKillViolationError):
        ledger.fill(fill_of("4", "50"))
    ledger.fill(fill_of("10", "50"))
    assert ledger.order(ORDER_ID).status is OrderStatus.FILLED


def test_fill_prices_respect_the_limit_and_the_collar() -> None:
    ledger, account_id = bought()
    with pytest.raises(PriceOutsideLimitError):
        ledger.fill(fill_of("1", "50.01"))
    market = PlaceOrder(
        order_id=OTHER_ORDER_ID,
        account_id=account_id,
        instrument_id=INSTRUMENT_ID,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=d("1"),
    )
    ledger.place(market, reference_price=d("40"))
    with pytest.raises(PriceOutsideLimitError):
        ledger.fill(fill_of("1", "42.01", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("1", "42.00", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("10", "50"))
    ledger.place(sell_limit(account_id, "5", "60", order_id=UUID(int=3)))
    with pytest.raises(PriceOutsideLimitError):
        ledger.fill(fill_of("5", "59.99", order_id=UUID(int=3)))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"price": d("49.999")}, PrecisionExceededError),
        ({"quantity": d("0.5")}, PrecisionExceededError),
        ({"fee": d("0.001")}, PrecisionExceededError),
        ({"fill_id": " "}, InvalidFillError),
        ({"venue": "v" * 65}, InvalidFillError),
        ({"executed_at": NOW.replace(tzinfo=None)}, InvalidTimestampError),
        ({"executed_at": NOW + timedelta(minutes=6)}, InvalidTimestampError),
    ],
)
def test_a_malformed_fill_is_refused_and_changes_nothing(
    changes: dict[str, object], error: type[Exception]
) -> None:
    ledger, _ = bought()
    command = msgspec.structs.replace(fill_of("1", "49"), **changes)
    before = ledger.snapshot()
    with pytest.raises(error):
        ledger.fill(command)
    assert ledger.snapshot() == before


def test_prices_and_quantities_on_the_grid() -> None:
    ledger = Ledger()
    ledger.list_instrument(tick_size="0.05", lot_size="5")
    account_id = ledger.open_account(cash="1000").account_id
    ledger.place(buy_limit(account_id, "10", "50"))
    with pytest.raises(TickSizeViolationError):
        ledger.fill(fill_of("5", "49.99"))
    with pytest.raises(LotSizeViolationError):
        ledger.fill(fill_of("4", "49.95"))


def test_executed_at_is_stored_in_utc() -> None:
    ledger, _ = bought()
    eastern = NOW.astimezone(timezone(timedelta(hours=-5)))
    ledger.fill(fill_of("1", "50", executed_at=eastern))
    (fill_event,) = [e for e in ledger.streams[ORDER_ID] if isinstance(e, OrderPartiallyFilled)]
    assert fill_event.fill.executed_at == NOW
    assert fill_event.fill.executed_at.utcoffset() == timedelta(0)


def test_only_open_orders_take_fills() -> None:
    ledger, account_id = bought()
    with pytest.raises(OrderNotFoundError):
        ledger.fill(fill_of("1", "50", order_id=OTHER_ORDER_ID))
    ledger.cancel(ORDER_ID)
    with pytest.raises(InvalidStateTransitionError):
        ledger.fill(fill_of("1", "50"))
    ledger.place(buy_limit(account_id, "1000", "50", order_id=OTHER_ORDER_ID))
    assert ledger.order(OTHER_ORDER_ID).status is OrderStatus.REJECTED
    with pytest.raises(InvalidStateTransitionError):
        ledger.fill(fill_of("1", "50", order_id=OTHER_ORDER_ID))


def test_a_fee_beyond_the_hold_comes_from_available_cash_and_never_below_zero() -> None:
    ledger, account_id = bought(cash="501.00")
    ledger.fill(fill_of("10", "50", fee="1.00"))
    account = ledger.account(account_id)
    assert (account.available, account.reserved) == (0, 0)
    ledger2, _ = bought(cash="500.60")
    before = ledger2.snapshot()
    with pytest.raises(InsufficientFundsError):
        ledger2.fill(fill_of("10", "50", fee="1.00"))
    assert ledger2.snapshot() == before


def test_a_sell_fee_beyond_the_proceeds_and_the_cash_is_refused() -> None:
    ledger, account_id = bought(cash="500", fee_rate="0")
    ledger.fill(fill_of("10", "50"))
    ledger.place(sell_limit(account_id, "1", "1", order_id=OTHER_ORDER_ID))
    with pytest.raises(InsufficientFundsError):
        ledger.fill(fill_of("1", "1", fee="1.01", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("1", "1", fee="1.00", order_id=OTHER_ORDER_ID))
    assert ledger.account(account_id).available == 0


def test_trade_cash_rounds_on_the_cumulative_notional() -> None:
    ledger = Ledger()
    ledger.list_instrument(tick_size="0.005", price_precision=3)
    account_id = ledger.open_account(cash="10").account_id
    ledger.place(buy_limit(account_id, "3", "0.005"))
    cash = []
    for number in range(3):
        decision = ledger.fill(fill_of("1", "0.005", fill_id=f"F{number}"))
        filled = decision[0].event
        assert isinstance(filled, OrderPartiallyFilled | OrderFilled)
        cash.append(filled.cash_amount)
    # 0.005, 0.010, 0.015 rounded half-even: 0.00, 0.01, 0.02.
    assert cash == [d("0.00"), d("0.01"), d("0.01")]
    assert ledger.account(account_id).available == d("9.98")


def test_an_order_has_a_bounded_number_of_fills() -> None:
    ledger, account_id = bought()
    order = ledger.order(ORDER_ID)
    crowded = msgspec.structs.replace(order, fill_ids=tuple(f"X{i}" for i in range(FILL_COUNT_MAX)))
    with pytest.raises(FillLimitExceededError):
        decide_fill_order(
            crowded,
            fill_of("1", "50"),
            now=NOW,
            instrument=ledger.instrument(INSTRUMENT_ID),
            account=ledger.account(account_id),
            position=None,
        )
