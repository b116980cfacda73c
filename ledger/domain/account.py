"""Account aggregate: a trader's cash in one currency, kept as double-entry postings.

One account per (user, currency); its stream id is :func:`account_stream_id`, so
opening a second one for the same pair is a concurrency conflict in the store
as well as an :class:`AlreadyExistsError` here.

Every movement is one balanced :class:`JournalEntry` carried by its event, and
the state's ``available`` and ``reserved`` are nothing but the balances of the
account's two cash ledger accounts (see ``postings``). ``available`` never goes
below zero: every decision that debits it checks first.

Deposits, withdrawals and fees are commands of their own. Holds, their release
and trade settlement are decided by orders (``placement``, ``cancellation``,
``fill``), which call the builders at the end of this module and append the
account's events in the same transaction as the order's.

The account also carries the trading terms the order decisions read: the fee
rate of the maximum fee held for a buy, whether short selling is allowed, and
an optional maximum order notional.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from functools import singledispatch
from typing import Final
from uuid import UUID, uuid5

import msgspec

from ledger.domain.base import Command, Event, assert_utc
from ledger.domain.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    InsufficientFundsError,
    InvalidAmountError,
    UserDisabledError,
    UserNotFoundError,
)
from ledger.domain.money import ZERO, check_amount, currency_precision, exact
from ledger.domain.postings import (
    CLEARING,
    EXTERNAL,
    FEE_REVENUE,
    JournalEntry,
    balance_change,
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
from ledger.domain.text import LABEL_LENGTH_MAX, REASON_LENGTH_MAX, check_text
from ledger.domain.user import UserState

STREAM_TYPE: Final = "account"
ACCOUNT_NAMESPACE: Final = UUID("6f1c2a4e-8f0b-5d43-9a57-2f8e3c1b7a01")
FEE_RATE_PRECISION: Final = 6
FEE_RATE_MAX: Final = Decimal("0.1")
HOLD_COUNT_MAX: Final = 10_000


def account_stream_id(user_id: UUID, currency: str) -> UUID:
    """The one account of ``user_id`` in ``currency``."""
    return uuid5(ACCOUNT_NAMESPACE, f"{user_id}:{currency}")


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """Cash reserved for one open buy order: what is left of it."""

    order_id: UUID
    amount: Decimal


# Events ---------------------------------------------------------------------


class AccountOpened(Event, frozen=True, kw_only=True):
    account_id: UUID
    user_id: UUID
    currency: str
    allow_short_selling: bool
    fee_rate: Decimal
    max_order_notional: Decimal | None


class CashDeposited(Event, frozen=True, kw_only=True):
    amount: Decimal
    reference: str
    entry: JournalEntry


class CashWithdrawn(Event, frozen=True, kw_only=True):
    amount: Decimal
    reference: str
    entry: JournalEntry


class FeeCharged(Event, frozen=True, kw_only=True):
    amount: Decimal
    reason: str
    entry: JournalEntry


class CashReserved(Event, frozen=True, kw_only=True):
    order_id: UUID
    amount: Decimal
    entry: JournalEntry


class HoldReleased(Event, frozen=True, kw_only=True):
    order_id: UUID
    amount: Decimal
    entry: JournalEntry


class TradeSettled(Event, frozen=True, kw_only=True):
    order_id: UUID
    fill_id: str
    instrument_id: UUID
    side: Side
    quantity: Decimal
    price: Decimal
    cash_amount: Decimal
    fee: Decimal
    hold_used: Decimal
    entry: JournalEntry


# Commands -------------------------------------------------------------------


class OpenAccount(Command, frozen=True, kw_only=True):
    user_id: UUID
    currency: str
    allow_short_selling: bool = False
    fee_rate: Decimal = ZERO
    max_order_notional: Decimal | None = None


class Deposit(Command, frozen=True, kw_only=True):
    account_id: UUID
    amount: Decimal
    reference: str = ""


class Withdraw(Command, frozen=True, kw_only=True):
    account_id: UUID
    amount: Decimal
    reference: str = ""


class ChargeFee(Command, frozen=True, kw_only=True):
    account_id: UUID
    amount: Decimal
    reason: str


# State ----------------------------------------------------------------------


class AccountState(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    user_id: UUID
    currency: str
    precision: int
    allow_short_selling: bool
    fee_rate: Decimal
    max_order_notional: Decimal | None
    available: Decimal
    reserved: Decimal
    holds: tuple[Hold, ...]
    opened_at: datetime
    updated_at: datetime

    def hold_for(self, order_id: UUID) -> Hold | None:
        for hold in self.holds:
            if hold.order_id == order_id:
                return hold
        return None


def _existing(state: AccountState | None, account_id: UUID) -> AccountState:
    if state is None:
        raise AccountNotFoundError(f"account {account_id} does not exist")
    assert state.account_id == account_id, "handler loaded the wrong stream"
    return state


def _cash(account: AccountState, amount: Decimal, field: str = "amount") -> Decimal:
    return check_amount(amount, account.precision, field=field)


def _spend(account: AccountState, amount: Decimal, purpose: str) -> None:
    if amount > account.available:
        raise InsufficientFundsError(
            f"{purpose} of {amount} {account.currency} exceeds the available {account.available}"
        )


# Decisions ------------------------------------------------------------------


@exact
def decide_open_account(
    state: AccountState | None, command: OpenAccount, *, now: datetime, owner: UserState | None
) -> list[Event]:
    assert_utc(now)
    account_id = account_stream_id(command.user_id, command.currency)
    if state is not None:
        raise AlreadyExistsError(f"user {command.user_id} already has a {command.currency} account")
    if owner is None:
        raise UserNotFoundError(f"user {command.user_id} does not exist")
    assert owner.user_id == command.user_id, "handler loaded the wrong user"
    if owner.disabled:
        raise UserDisabledError(f"user {command.user_id} is disabled")
    precision = currency_precision(command.currency)
    fee_rate = check_amount(command.fee_rate, FEE_RATE_PRECISION, field="fee_rate", allow_zero=True)
    if fee_rate > FEE_RATE_MAX:
        raise InvalidAmountError(f"fee_rate must be at most {FEE_RATE_MAX}")
    max_notional = command.max_order_notional
    return [
        AccountOpened(
            occurred_at=now,
            account_id=account_id,
            user_id=command.user_id,
            currency=command.currency,
            allow_short_selling=command.allow_short_selling,
            fee_rate=fee_rate,
            max_order_notional=(
                None
                if max_notional is None
                else check_amount(max_notional, precision, field="max_order_notional")
            ),
        )
    ]


@exact
def decide_deposit(state: AccountState | None, command: Deposit, *, now: datetime) -> list[Event]:
    assert_utc(now)
    account = _existing(state, command.account_id)
    amount = _cash(account, command.amount)
    reference = check_text(
        command.reference, field="reference", length_max=LABEL_LENGTH_MAX, allow_empty=True
    )
    entry = journal_entry(
        transfer(EXTERNAL, cash_available(account.account_id), account.currency, amount)
    )
    return [CashDeposited(occurred_at=now, amount=amount, reference=reference, entry=entry)]


@exact
def decide_withdraw(state: AccountState | None, command: Withdraw, *, now: datetime) -> list[Event]:
    assert_utc(now)
    account = _existing(state, command.account_id)
    amount = _cash(account, command.amount)
    reference = check_text(
        command.reference, field="reference", length_max=LABEL_LENGTH_MAX, allow_empty=True
    )
    _spend(account, amount, "withdrawal")
    entry = journal_entry(
        transfer(cash_available(account.account_id), EXTERNAL, account.currency, amount)
    )
    return [CashWithdrawn(occurred_at=now, amount=amount, reference=reference, entry=entry)]


@exact
def decide_charge_fee(
    state: AccountState | None, command: ChargeFee, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    account = _existing(state, command.account_id)
    amount = _cash(account, command.amount)
    reason = check_text(command.reason, field="reason", length_max=REASON_LENGTH_MAX)
    _spend(account, amount, "fee")
    entry = journal_entry(
        transfer(cash_available(account.account_id), FEE_REVENUE, account.currency, amount)
    )
    return [FeeCharged(occurred_at=now, amount=amount, reason=reason, entry=entry)]


# Movements decided by orders --------------------------------------------------


def reserve_cash(
    account: AccountState, order_id: UUID, amount: Decimal, *, now: datetime
) -> CashReserved:
    """Hold ``amount`` of available cash for a buy order; the caller checked it is available."""
    assert account.hold_for(order_id) is None, "an order is held once"
    assert ZERO <= amount <= account.available, "hold exceeds available cash"
    assert len(account.holds) < HOLD_COUNT_MAX, "too many open holds"
    entry = journal_entry(
        transfer(
            cash_available(account.account_id),
            cash_reserved(account.account_id),
            account.currency,
            amount,
        )
    )
    return CashReserved(occurred_at=now, order_id=order_id, amount=amount, entry=entry)


def release_hold(account: AccountState, order_id: UUID, *, now: datetime) -> HoldReleased:
    """Return what is left of an ended buy order's hold to available cash (once)."""
    hold = account.hold_for(order_id)
    assert hold is not None, "released a hold that does not exist"
    entry = journal_entry(
        transfer(
            cash_reserved(account.account_id),
            cash_available(account.account_id),
            account.currency,
            hold.amount,
        )
    )
    return HoldReleased(occurred_at=now, order_id=order_id, amount=hold.amount, entry=entry)


def settle_trade(
    account: AccountState,
    *,
    order_id: UUID,
    fill_id: str,
    instrument_id: UUID,
    side: Side,
    quantity: Decimal,
    price: Decimal,
    cash_amount: Decimal,
    fee: Decimal,
    now: datetime,
) -> TradeSettled:
    """One entry for one fill: cash against clearing, the fee, and the security units.

    A buy pays ``cash_amount + fee`` from the order's hold first and from available
    cash for any excess (a venue fee above the schedule); a sell receives
    ``cash_amount`` and pays the fee out of available cash. Either raises
    :class:`InsufficientFundsError` rather than take available cash below zero.
    """
    currency = account.currency
    available = cash_available(account.account_id)
    position = securities(account.account_id, instrument_id)
    asset = security_asset(instrument_id)
    if side is Side.BUY:
        hold = account.hold_for(order_id)
        assert hold is not None, "a buy order is settled against its hold"
        need = cash_amount + fee
        hold_used = min(need, hold.amount)
        _spend(account, need - hold_used, "settlement beyond the hold")
        entry = journal_entry(
            debit(cash_reserved(account.account_id), currency, hold_used),
            debit(available, currency, need - hold_used),
            credit(CLEARING, currency, cash_amount),
            credit(FEE_REVENUE, currency, fee),
            transfer(CLEARING, position, asset, quantity),
        )
    else:
        hold_used = ZERO
        if fee > account.available + cash_amount:
            raise InsufficientFundsError(
                f"fee of {fee} {currency} exceeds the proceeds and the available cash"
            )
        entry = journal_entry(
            transfer(position, CLEARING, asset, quantity),
            transfer(CLEARING, available, currency, cash_amount),
            transfer(available, FEE_REVENUE, currency, fee),
        )
    return TradeSettled(
        occurred_at=now,
        order_id=order_id,
        fill_id=fill_id,
        instrument_id=instrument_id,
        side=side,
        quantity=quantity,
        price=price,
        cash_amount=cash_amount,
        fee=fee,
        hold_used=hold_used,
        entry=entry,
    )


# Evolution ------------------------------------------------------------------


def _post(state: AccountState | None, entry: JournalEntry, event: Event) -> AccountState:
    """Apply ``entry`` to the account's two cash balances."""
    assert state is not None
    available = state.available + balance_change(
        entry, cash_available(state.account_id), state.currency
    )
    reserved = state.reserved + balance_change(
        entry, cash_reserved(state.account_id), state.currency
    )
    assert available >= ZERO, "available cash went below zero"
    assert reserved >= ZERO, "reserved cash went below zero"
    return msgspec.structs.replace(
        state, available=available, reserved=reserved, updated_at=event.occurred_at
    )


@singledispatch
def _apply(event: Event, state: AccountState | None) -> AccountState:
    raise AssertionError(f"{type(event).__name__} does not belong to an account stream")


@_apply.register
def _(event: AccountOpened, state: AccountState | None) -> AccountState:
    assert state is None, "an account is opened once"
    return AccountState(
        account_id=event.account_id,
        user_id=event.user_id,
        currency=event.currency,
        precision=currency_precision(event.currency),
        allow_short_selling=event.allow_short_selling,
        fee_rate=event.fee_rate,
        max_order_notional=event.max_order_notional,
        available=ZERO,
        reserved=ZERO,
        holds=(),
        opened_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: CashDeposited, state: AccountState | None) -> AccountState:
    return _post(state, event.entry, event)


@_apply.register
def _(event: CashWithdrawn, state: AccountState | None) -> AccountState:
    return _post(state, event.entry, event)


@_apply.register
def _(event: FeeCharged, state: AccountState | None) -> AccountState:
    return _post(state, event.entry, event)


@_apply.register
def _(event: CashReserved, state: AccountState | None) -> AccountState:
    posted = _post(state, event.entry, event)
    hold = Hold(order_id=event.order_id, amount=event.amount)
    return msgspec.structs.replace(posted, holds=(*posted.holds, hold))


@_apply.register
def _(event: HoldReleased, state: AccountState | None) -> AccountState:
    posted = _post(state, event.entry, event)
    holds = tuple(hold for hold in posted.holds if hold.order_id != event.order_id)
    assert len(holds) == len(posted.holds) - 1, "released a hold that does not exist"
    return msgspec.structs.replace(posted, holds=holds)


@_apply.register
def _(event: TradeSettled, state: AccountState | None) -> AccountState:
    posted = _post(state, event.entry, event)
    if event.side is Side.SELL:
        return posted
    holds = tuple(
        Hold(order_id=hold.order_id, amount=hold.amount - event.hold_used)
        if hold.order_id == event.order_id
        else hold
        for hold in posted.holds
    )
    return msgspec.structs.replace(posted, holds=holds)


@exact
def evolve(state: AccountState | None, event: Event) -> AccountState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> AccountState | None:
    state: AccountState | None = None
    for event in events:
        state = evolve(state, event)
    return state
