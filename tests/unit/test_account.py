"""Account: opening, deposits, withdrawals and fees, each one balanced entry."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.domain.account import (
    AccountOpened,
    CashDeposited,
    CashWithdrawn,
    ChargeFee,
    Deposit,
    FeeCharged,
    OpenAccount,
    Withdraw,
    account_stream_id,
    decide_charge_fee,
    decide_deposit,
    decide_open_account,
    decide_withdraw,
    fold,
)
from ledger.domain.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidTextError,
    PrecisionExceededError,
    UnknownCurrencyError,
    UserDisabledError,
    UserNotFoundError,
)
from ledger.domain.postings import EXTERNAL, FEE_REVENUE, cash_available, journal_entry, transfer
from ledger.domain.user import UserDisabled
from ledger.domain.user import evolve as evolve_user
from tests.unit.support import LATER, NOW, OTHER_USER_ID, USER_ID, Ledger, encoded

ACCOUNT_ID = account_stream_id(USER_ID, "USD")
OPENED = AccountOpened(
    occurred_at=NOW,
    account_id=ACCOUNT_ID,
    user_id=USER_ID,
    currency="USD",
    allow_short_selling=False,
    fee_rate=Decimal("0.000500"),
    max_order_notional=Decimal("100000.00"),
)


def deposited(amount: str) -> CashDeposited:
    value = Decimal(amount)
    entry = journal_entry(transfer(EXTERNAL, cash_available(ACCOUNT_ID), "USD", value))
    return CashDeposited(occurred_at=NOW, amount=value, reference="", entry=entry)


def test_account_ids_are_one_per_user_and_currency() -> None:
    assert account_stream_id(USER_ID, "USD") == ACCOUNT_ID
    assert account_stream_id(USER_ID, "EUR") != ACCOUNT_ID
    assert account_stream_id(OTHER_USER_ID, "USD") != ACCOUNT_ID


def test_open_account() -> None:
    owner = Ledger().register_user()
    command = OpenAccount(
        user_id=USER_ID,
        currency="USD",
        fee_rate=Decimal("0.0005"),
        max_order_notional=Decimal("100000"),
    )
    assert decide_open_account(None, command, now=NOW, owner=owner) == [OPENED]
    state = fold([OPENED])
    assert state is not None
    assert (state.available, state.reserved, state.holds, state.precision) == (0, 0, (), 2)


def test_open_account_is_refused_for_a_missing_or_disabled_owner_or_twice() -> None:
    owner = Ledger().register_user()
    command = OpenAccount(user_id=USER_ID, currency="USD")
    with pytest.raises(UserNotFoundError):
        decide_open_account(None, command, now=NOW, owner=None)
    disabled = evolve_user(owner, UserDisabled(occurred_at=NOW, reason="", token_version=2))
    with pytest.raises(UserDisabledError):
        decide_open_account(None, command, now=NOW, owner=disabled)
    with pytest.raises(AlreadyExistsError):
        decide_open_account(fold([OPENED]), command, now=NOW, owner=owner)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"currency": "XXX"}, UnknownCurrencyError),
        ({"fee_rate": Decimal("0.2")}, InvalidAmountError),
        ({"fee_rate": Decimal("0.0000001")}, PrecisionExceededError),
        ({"max_order_notional": Decimal("0.001")}, PrecisionExceededError),
    ],
)
def test_open_account_refuses_bad_terms(changes: dict[str, object], error: type[Exception]) -> None:
    owner = Ledger().register_user()
    command = OpenAccount(**({"user_id": USER_ID, "currency": "USD"} | changes))  # type: ignore[arg-type]
    with pytest.raises(error):
        decide_open_account(None, command, now=NOW, owner=owner)


def test_deposit_posts_from_external_to_available() -> None:
    command = Deposit(account_id=ACCOUNT_ID, amount=Decimal("250.5"), reference=" wire 42 ")
    events = decide_deposit(fold([OPENED]), command, now=NOW)
    assert events == [
        CashDeposited(
            occurred_at=NOW,
            amount=Decimal("250.50"),
            reference="wire 42",
            entry=journal_entry(
                transfer(EXTERNAL, cash_available(ACCOUNT_ID), "USD", Decimal("250.50"))
            ),
        )
    ]
    state = fold([OPENED, *events])
    assert state is not None
    assert state.available == Decimal("250.50")


@pytest.mark.parametrize(
    ("amount", "error"),
    [("0", InvalidAmountError), ("-5", InvalidAmountError), ("1.001", PrecisionExceededError)],
)
def test_deposit_refuses_bad_amounts(amount: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decide_deposit(
            fold([OPENED]), Deposit(account_id=ACCOUNT_ID, amount=Decimal(amount)), now=NOW
        )


def test_deposit_to_a_missing_account_is_refused() -> None:
    with pytest.raises(AccountNotFoundError):
        decide_deposit(None, Deposit(account_id=ACCOUNT_ID, amount=Decimal(1)), now=NOW)


def test_deposit_refuses_an_overlong_reference() -> None:
    with pytest.raises(InvalidTextError):
        decide_deposit(
            fold([OPENED]),
            Deposit(account_id=ACCOUNT_ID, amount=Decimal(1), reference="x" * 65),
            now=NOW,
        )


def test_withdraw_up_to_the_available_balance() -> None:
    state = fold([OPENED, deposited("100")])
    events = decide_withdraw(
        state, Withdraw(account_id=ACCOUNT_ID, amount=Decimal("100")), now=LATER
    )
    assert events == [
        CashWithdrawn(
            occurred_at=LATER,
            amount=Decimal("100.00"),
            reference="",
            entry=journal_entry(
                transfer(cash_available(ACCOUNT_ID), EXTERNAL, "USD", Decimal("100.00"))
            ),
        )
    ]
    after = fold([OPENED, deposited("100"), *events])
    assert after is not None
    assert after.available == 0


def test_withdraw_more_than_available_is_refused_and_changes_nothing() -> None:
    state = fold([OPENED, deposited("100")])
    before = encoded(state)
    with pytest.raises(InsufficientFundsError):
        decide_withdraw(state, Withdraw(account_id=ACCOUNT_ID, amount=Decimal("100.01")), now=LATER)
    assert encoded(state) == before


def test_charge_fee_posts_to_fee_revenue() -> None:
    state = fold([OPENED, deposited("10")])
    events = decide_charge_fee(
        state, ChargeFee(account_id=ACCOUNT_ID, amount=Decimal("2.5"), reason="data"), now=NOW
    )
    assert events == [
        FeeCharged(
            occurred_at=NOW,
            amount=Decimal("2.50"),
            reason="data",
            entry=journal_entry(
                transfer(cash_available(ACCOUNT_ID), FEE_REVENUE, "USD", Decimal("2.50"))
            ),
        )
    ]
    with pytest.raises(InsufficientFundsError):
        decide_charge_fee(
            state, ChargeFee(account_id=ACCOUNT_ID, amount=Decimal("10.01"), reason="x"), now=NOW
        )
    with pytest.raises(InvalidTextError):
        decide_charge_fee(
            state, ChargeFee(account_id=ACCOUNT_ID, amount=Decimal("1"), reason=" "), now=NOW
        )


def test_a_jpy_account_has_no_minor_units() -> None:
    ledger = Ledger()
    account = ledger.open_account(currency="JPY", cash="1000")
    assert account.available == Decimal("1000")
    with pytest.raises(PrecisionExceededError):
        ledger.deposit(account.account_id, "0.5")
