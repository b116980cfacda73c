"""Cancel, expire and venue rejection: the order ends and gives back what it holds, once."""

from __future__ import annotations

from uuid import UUID

import pytest

from ledger.domain.account import HoldReleased
from ledger.domain.cancellation import VENUE_REJECTED
from ledger.domain.errors import (
    InvalidStateTransitionError,
    InvalidTextError,
    OrderNotExpirableError,
    OrderNotFoundError,
)
from ledger.domain.order import (
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderStatus,
    TimeInForce,
)
from ledger.domain.position import SellQuantityReleased
from ledger.domain.postings import cash_available, cash_reserved, journal_entry, transfer
from tests.unit.support import (
    NOW,
    ORDER_ID,
    OTHER_ORDER_ID,
    Ledger,
    buy_limit,
    d,
    fill_of,
    sell_limit,
    types_of,
)


def with_buy(time_in_force: TimeInForce = TimeInForce.DAY) -> tuple[Ledger, UUID]:
    ledger = Ledger()
    ledger.list_instrument()
    account_id = ledger.open_account(cash="1000").account_id
    ledger.place(buy_limit(account_id, "10", "50", time_in_force=time_in_force))
    return ledger, account_id


def test_cancel_an_accepted_buy_releases_its_whole_hold() -> None:
    ledger, account_id = with_buy()
    decision = ledger.cancel(ORDER_ID, reason=" changed my mind ")
    assert [item.event for item in decision] == [
        OrderCancelled(occurred_at=NOW, reason="changed my mind"),
        HoldReleased(
            occurred_at=NOW,
            order_id=ORDER_ID,
            amount=d("500.00"),
            entry=journal_entry(
                transfer(cash_reserved(account_id), cash_available(account_id), "USD", d("500.00"))
            ),
        ),
    ]
    account = ledger.account(account_id)
    assert (account.available, account.reserved, account.holds) == (d("1000.00"), 0, ())


def test_cancel_a_partially_filled_buy_releases_the_rest() -> None:
    ledger, account_id = with_buy()
    ledger.fill(fill_of("4", "49"))
    decision = ledger.cancel(ORDER_ID)
    released = decision[1].event
    assert isinstance(released, HoldReleased)
    assert released.amount == d("304.00")
    assert ledger.account(account_id).available == d("804.00")
    assert ledger.order(ORDER_ID).status is OrderStatus.CANCELLED


def test_cancel_a_sell_releases_its_unsold_reservation() -> None:
    ledger, account_id = with_buy()
    ledger.fill(fill_of("10", "50"))
    ledger.place(sell_limit(account_id, "8", "60", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("3", "60", order_id=OTHER_ORDER_ID, fill_id="S1"))
    decision = ledger.cancel(OTHER_ORDER_ID)
    assert decision[1].event == SellQuantityReleased(
        occurred_at=NOW, order_id=OTHER_ORDER_ID, quantity=d("5")
    )
    position = ledger.position(account_id, ledger.order(OTHER_ORDER_ID).instrument_id)
    assert position is not None
    assert (position.quantity, position.reservations) == (7, ())


def test_nothing_leaves_a_terminal_state() -> None:
    ledger, account_id = with_buy()
    ledger.cancel(ORDER_ID)
    for end in (ledger.cancel, ledger.expire, ledger.reject):
        with pytest.raises(InvalidStateTransitionError):
            end(ORDER_ID)
    ledger.place(buy_limit(account_id, "10", "50", order_id=OTHER_ORDER_ID))
    ledger.fill(fill_of("10", "50", order_id=OTHER_ORDER_ID))
    with pytest.raises(InvalidStateTransitionError):
        ledger.cancel(OTHER_ORDER_ID)


def test_a_recorded_rejection_is_terminal_and_released_nothing() -> None:
    ledger, account_id = with_buy()
    ledger.place(buy_limit(account_id, "100", "50", order_id=OTHER_ORDER_ID))
    assert ledger.order(OTHER_ORDER_ID).status is OrderStatus.REJECTED
    with pytest.raises(InvalidStateTransitionError):
        ledger.cancel(OTHER_ORDER_ID)


def test_ending_an_unknown_order_is_refused() -> None:
    ledger, _ = with_buy()
    for end in (ledger.cancel, ledger.expire, ledger.reject):
        with pytest.raises(OrderNotFoundError):
            end(OTHER_ORDER_ID)


def test_expire_a_day_order() -> None:
    ledger, account_id = with_buy()
    decision = ledger.expire(ORDER_ID)
    assert types_of(decision) == [("order", "OrderExpired"), ("account", "HoldReleased")]
    assert decision[0].event == OrderExpired(occurred_at=NOW)
    assert ledger.account(account_id).reserved == 0


def test_a_gtc_order_does_not_expire() -> None:
    ledger, _ = with_buy(TimeInForce.GTC)
    with pytest.raises(OrderNotExpirableError):
        ledger.expire(ORDER_ID)


def test_the_venue_rejects_an_accepted_order_before_any_fill() -> None:
    ledger, account_id = with_buy()
    decision = ledger.reject(ORDER_ID, reason="unknown symbol at venue")
    assert decision[0].event == OrderRejected(
        occurred_at=NOW, reason_code=VENUE_REJECTED, reason="unknown symbol at venue"
    )
    assert types_of(decision)[1] == ("account", "HoldReleased")
    assert ledger.account(account_id).available == d("1000.00")


def test_the_venue_cannot_reject_a_partially_filled_order_and_needs_a_reason() -> None:
    ledger, _ = with_buy()
    with pytest.raises(InvalidTextError):
        ledger.reject(ORDER_ID, reason=" ")
    ledger.fill(fill_of("1", "50"))
    with pytest.raises(InvalidStateTransitionError):
        ledger.reject(ORDER_ID)
